using System.Runtime.CompilerServices;
using Kiln.Kernels.MatMul;
using Kiln.Threading;

namespace Kiln.Kernels.Recurrent;

/// <summary>
/// <see cref="Ops.Gru"/> as a parallel work struct over a packed step: one item per sequence, each running its own
/// tokens in order from its own state slot. The input half of the gates came from one batched matmul over all the
/// step's tokens; what is left per token is the recurrent matrix–vector product (<see cref="VectorMath.Dot"/> per
/// gate row, on the active kernel path) and the gate update. The 3H recurrent pre-activations live on the stack.
/// </summary>
public unsafe struct GruRecurrence : IParallelWork
{
    /// <summary>[T, 3H] input gates; [T, H] hidden output, which also holds h between a sequence's tokens.</summary>
    public FloatBuffer Gates, Output;

    /// <summary>W_hh, [3H, H] row-major; b_hh, [3H].</summary>
    public float[] Recurrent, RecurrentBias;

    public int Hidden;
    public AttentionContext Context;

    /// <summary>The layer's <see cref="Ops.GruHidden"/> tensor in the context's state.</summary>
    public int HiddenTensor;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end)
    {
        var state = Context.State;
        var starts = Context.QueryIndptr;
        int hidden = Hidden, rows = 3 * hidden;
        Span<float> previous = stackalloc float[hidden];
        Span<float> u = stackalloc float[rows];
        for (int s = start; s < end; s++)
        {
            int first = starts[s], last = starts[s + 1] - 1, slot = Context.StateSlot(s);
            if (Context.Positions[first] == 0) previous.Clear();
            else state.Read(HiddenTensor, slot, previous);
            for (int t = first; t <= last; t++)
            {
                ReadOnlySpan<float> h = t == first ? previous : new ReadOnlySpan<float>(Output.Pointer + (long)(t - 1) * hidden, hidden);
                for (int r = 0; r < rows; r++) u[r] = RecurrentBias[r] + VectorMath.Dot(Recurrent.AsSpan(r * hidden, hidden), h);
                var gates = new ReadOnlySpan<float>(Gates.Pointer + (long)t * rows, rows);
                var output = new Span<float>(Output.Pointer + (long)t * hidden, hidden);
                for (int j = 0; j < hidden; j++)
                {
                    float reset = Logistic(gates[j] + u[j]), update = Logistic(gates[hidden + j] + u[hidden + j]);
                    float candidate = MathF.Tanh(gates[2 * hidden + j] + reset * u[2 * hidden + j]);
                    output[j] = (1 - update) * candidate + update * h[j];
                }
            }
            state.Write(HiddenTensor, slot, new ReadOnlySpan<float>(Output.Pointer + (long)last * hidden, hidden));
        }
    }

    private static float Logistic(float x) => 1f / (1f + MathF.Exp(-x));
}
