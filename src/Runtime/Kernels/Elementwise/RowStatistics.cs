using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Kiln.Kernels.Quantized;

namespace Kiln.Kernels.Elementwise;

/// <summary>
/// The reductions a norm needs before its elementwise part: Σx² (RMSNorm) and mean and variance (LayerNorm) of a
/// row or of one head of it, accumulated in double as the eager ops accumulate them. The generated kernels turn them
/// into the per-row (or per-head) scale and mean their loop bodies read; the matmul input preparation folds them
/// into its pass.
/// </summary>
public static unsafe class RowStatistics
{
    /// <summary>Σx² over <paramref name="count"/> floats from <paramref name="start"/> of <paramref name="buffer"/>, in double.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static double SumOfSquares(Kiln.Kernels.MatMul.FloatBuffer buffer, int start, int count) =>
        SumOfSquares(Row(buffer, start, count), count);

    /// <summary>1 / sqrt(Σx²/n + eps), RMSNorm's scale, in double.</summary>
    public static double InverseRms(Kiln.Kernels.MatMul.FloatBuffer buffer, int start, int count, double eps) =>
        1.0 / Math.Sqrt(SumOfSquares(buffer, start, count) / count + eps);

    /// <summary>Mean and biased variance of <paramref name="count"/> floats from <paramref name="start"/>, in double (two passes, as the eager LayerNorm).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Moments(Kiln.Kernels.MatMul.FloatBuffer buffer, int start, int count, out double mean, out double variance) =>
        Moments(Row(buffer, start, count), count, out mean, out variance);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static double SumOfSquares(float* x, int count)
    {
        int i = 0;
        double sum = 0;
        if (KernelPaths.Uses512Bits)
        {
            Vector512<double> a0 = default, a1 = default;
            for (; i + 16 <= count; i += 16)
            {
                Vector512<float> v = Vector512.Load(x + i);
                Vector512<double> lo = Vector512.WidenLower(v), hi = Vector512.WidenUpper(v);
                a0 = Vector512.FusedMultiplyAdd(lo, lo, a0);
                a1 = Vector512.FusedMultiplyAdd(hi, hi, a1);
            }
            sum = Vector512.Sum(a0 + a1);
        }
        for (; i < count; i++) sum += (double)x[i] * x[i];
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Moments(float* x, int count, out double mean, out double variance)
    {
        int i = 0;
        double sum = 0;
        if (KernelPaths.Uses512Bits)
        {
            // Four chains of adds, 32 floats a round: one chain made a LayerNorm row's statistics latency-bound (a double
            // add per 16 floats, 24 in a row for 384 columns), the row already in L1.
            Vector512<double> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i + 32 <= count; i += 32)
            {
                Vector512<float> v = Vector512.Load(x + i), w = Vector512.Load(x + i + 16);
                a0 += Vector512.WidenLower(v);
                a1 += Vector512.WidenUpper(v);
                a2 += Vector512.WidenLower(w);
                a3 += Vector512.WidenUpper(w);
            }
            for (; i + 16 <= count; i += 16)
            {
                Vector512<float> v = Vector512.Load(x + i);
                a0 += Vector512.WidenLower(v);
                a1 += Vector512.WidenUpper(v);
            }
            sum = Vector512.Sum((a0 + a1) + (a2 + a3));
        }
        for (; i < count; i++) sum += x[i];
        mean = sum / count;

        i = 0;
        double squares = 0;
        if (KernelPaths.Uses512Bits)
        {
            Vector512<double> m = Vector512.Create(mean), a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i + 32 <= count; i += 32)
            {
                Vector512<float> v = Vector512.Load(x + i), w = Vector512.Load(x + i + 16);
                Vector512<double> d0 = Vector512.WidenLower(v) - m, d1 = Vector512.WidenUpper(v) - m;
                Vector512<double> d2 = Vector512.WidenLower(w) - m, d3 = Vector512.WidenUpper(w) - m;
                a0 = Vector512.FusedMultiplyAdd(d0, d0, a0);
                a1 = Vector512.FusedMultiplyAdd(d1, d1, a1);
                a2 = Vector512.FusedMultiplyAdd(d2, d2, a2);
                a3 = Vector512.FusedMultiplyAdd(d3, d3, a3);
            }
            for (; i + 16 <= count; i += 16)
            {
                Vector512<float> v = Vector512.Load(x + i);
                Vector512<double> lo = Vector512.WidenLower(v) - m, hi = Vector512.WidenUpper(v) - m;
                a0 = Vector512.FusedMultiplyAdd(lo, lo, a0);
                a1 = Vector512.FusedMultiplyAdd(hi, hi, a1);
            }
            squares = Vector512.Sum((a0 + a1) + (a2 + a3));
        }
        for (; i < count; i++) squares += (x[i] - mean) * (x[i] - mean);
        variance = squares / count;
    }

    private static float* Row(Kiln.Kernels.MatMul.FloatBuffer buffer, int start, int count)
    {
        if (start < 0 || count <= 0 || count > buffer.Length - start)
            throw new ArgumentOutOfRangeException(nameof(count), $"[{start}, {start}+{count}) is outside a buffer of {buffer.Length}.");
        return buffer.Pointer + start;
    }
}

/// <summary>How a generated elementwise loop splits its rows over the worker pool.</summary>
public static class RowLoop
{
    /// <summary>
    /// Rows per work item: about sixteen items per thread, and a single item (run on the calling thread, no hand-off)
    /// when the whole loop is too small to pay for waking the pool (under ~16K elements).
    /// </summary>
    public static int ChunkSize(int rows, int cols, int threads)
    {
        if (rows <= 1 || threads <= 1 || (long)rows * cols < 16_384) return Math.Max(rows, 1);
        // Sixteen items per thread: a run ends when its slowest thread's last item does, and a thread that starts late
        // (waking, or descheduled) leaves the others waiting for at most one small item. A claim costs one interlocked add.
        return Math.Max(1, rows / (16 * threads));
    }
}
