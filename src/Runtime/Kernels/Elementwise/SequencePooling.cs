using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Threading;

namespace Kiln.Kernels.Elementwise;

/// <summary>
/// <see cref="Ops.Pool"/> as a parallel work struct: one item per sequence of the step, whose tokens' rows of
/// <see cref="Input"/> become one row of <see cref="Output"/>: their mean (summed in double, as the eager op sums), the
/// first row or the last — the eager op's sums in its order, so equal to it.
/// </summary>
public unsafe struct SequencePooling : IParallelWork
{
    public FloatBuffer Input, Output;
    public int Cols;
    public AttentionContext Context;
    public Pooling Pooling;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end)
    {
        var starts = Context.QueryIndptr;
        for (int s = start; s < end; s++)
        {
            int first = starts[s], last = starts[s + 1] - 1;
            float* output = Output.Pointer + (long)s * Cols;
            if (Pooling != Pooling.Mean)
            {
                int row = Pooling == Pooling.Cls ? first : last;
                new ReadOnlySpan<float>(Input.Pointer + (long)row * Cols, Cols).CopyTo(new Span<float>(output, Cols));
                continue;
            }
            double count = last - first + 1;
            int c = 0;
            if (KernelPaths.Uses512Bits)
            {
                for (; c + 16 <= Cols; c += 16)
                {
                    Vector512<double> low = default, high = default;
                    for (int t = first; t <= last; t++)
                    {
                        var v = Vector512.Load(Input.Pointer + (long)t * Cols + c);
                        low += Vector512.WidenLower(v);
                        high += Vector512.WidenUpper(v);
                    }
                    Vector512.Narrow(low / count, high / count).Store(output + c);
                }
            }
            for (; c < Cols; c++)
            {
                double sum = 0;
                for (int t = first; t <= last; t++) sum += Input.Pointer[(long)t * Cols + c];
                output[c] = (float)(sum / count);
            }
        }
    }
}
