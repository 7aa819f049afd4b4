using System.Runtime.CompilerServices;
using Kiln.Kernels.MatMul;
using Kiln.Threading;

namespace Kiln.Kernels.Recurrent;

/// <summary>
/// <see cref="Ops.Lstm"/> as a parallel work struct over a packed step: one item per sequence, each running its own
/// tokens in order from its own state slot (the time loop lives here, never in a [Forward]). The input half of the
/// gates came from one batched matmul over all the step's tokens; what is left per token is the recurrent
/// matrix–vector product (<see cref="VectorMath.Dot"/> per gate row, on the active kernel path) and the cell update.
/// Sequences of different lengths cost what their tokens cost: none waits for, or is padded to, another.
/// </summary>
public unsafe struct LstmRecurrence : IParallelWork
{
    /// <summary>[T, 4H] input gates; [T, H] hidden output, which also holds h between a sequence's tokens.</summary>
    public FloatBuffer Gates, Output;

    /// <summary>W_hh, [4H, H] row-major.</summary>
    public float[] Recurrent;

    public int Hidden;
    public AttentionContext Context;

    /// <summary>The layer's hidden and cell tensors in the context's state.</summary>
    public int HiddenTensor, CellTensor;

    /// <summary>Per sequence, 6H floats: the starting h, c and the 4H gate pre-activations.</summary>
    public FloatBuffer Scratch;

    /// <summary>Floats of <see cref="Scratch"/> a step of <paramref name="maxSequences"/> sequences needs.</summary>
    public static long ScratchFloats(int maxSequences, int hidden) => 6L * maxSequences * hidden;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end)
    {
        var state = Context.State;
        var starts = Context.QueryIndptr;
        var positions = Context.Positions;
        int hidden = Hidden, rows = 4 * hidden;
        for (int s = start; s < end; s++)
        {
            var scratch = new Span<float>(Scratch.Pointer + 6L * s * hidden, 6 * hidden);
            var previous = scratch[..hidden];
            var c = scratch.Slice(hidden, hidden);
            var z = scratch.Slice(2 * hidden, rows);
            int first = starts[s], last = starts[s + 1] - 1, slot = Context.StateSlot(s);
            if (positions[first] == 0)
            {
                previous.Clear();
                c.Clear();
            }
            else
            {
                state.Read(HiddenTensor, slot, previous);
                state.Read(CellTensor, slot, c);
            }
            for (int t = first; t <= last; t++)
            {
                ReadOnlySpan<float> h = t == first ? previous : new ReadOnlySpan<float>(Output.Pointer + (long)(t - 1) * hidden, hidden);
                var gates = new ReadOnlySpan<float>(Gates.Pointer + (long)t * rows, rows);
                for (int r = 0; r < rows; r++) z[r] = gates[r] + VectorMath.Dot(Recurrent.AsSpan(r * hidden, hidden), h);
                var output = new Span<float>(Output.Pointer + (long)t * hidden, hidden);
                for (int j = 0; j < hidden; j++)
                {
                    float input = Logistic(z[j]), forget = Logistic(z[hidden + j]);
                    float candidate = MathF.Tanh(z[2 * hidden + j]), gate = Logistic(z[3 * hidden + j]);
                    c[j] = forget * c[j] + input * candidate;
                    output[j] = gate * MathF.Tanh(c[j]);
                }
            }
            state.Write(HiddenTensor, slot, new ReadOnlySpan<float>(Output.Pointer + (long)last * hidden, hidden));
            state.Write(CellTensor, slot, c);
        }
    }

    private static float Logistic(float x) => 1f / (1f + MathF.Exp(-x));
}
