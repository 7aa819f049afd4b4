using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Kiln.Kernels;

/// <summary>
/// The small float32 building blocks the generated kernels call: dot product, sum of squares, scale-add and softmax.
/// Each has a Vector512 path, a Vector256 path and a scalar path (the oracle in the op tests); the entry point picks the
/// widest accelerated one. Each path is public so tests can compare them on the same machine.
/// </summary>
public static class VectorMath
{
    // ---- Dot: Σ a[i]·b[i] ---------------------------------------------------------------------------------------

    public static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (Vector512.IsHardwareAccelerated) return DotVector512(a, b);
        if (Vector256.IsHardwareAccelerated) return DotVector256(a, b);
        return DotScalar(a, b);
    }

    public static float DotVector512(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int n = RequireSameLength(a, b);
        ref float pa = ref MemoryMarshal.GetReference(a);
        ref float pb = ref MemoryMarshal.GetReference(b);
        var acc0 = Vector512<float>.Zero;
        var acc1 = Vector512<float>.Zero;
        int i = 0;
        for (; i <= n - 2 * Vector512<float>.Count; i += 2 * Vector512<float>.Count)
        {
            acc0 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref pa, (nuint)i), Vector512.LoadUnsafe(ref pb, (nuint)i), acc0);
            acc1 = Vector512.FusedMultiplyAdd(
                Vector512.LoadUnsafe(ref pa, (nuint)(i + Vector512<float>.Count)),
                Vector512.LoadUnsafe(ref pb, (nuint)(i + Vector512<float>.Count)), acc1);
        }
        if (i <= n - Vector512<float>.Count)
        {
            acc0 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref pa, (nuint)i), Vector512.LoadUnsafe(ref pb, (nuint)i), acc0);
            i += Vector512<float>.Count;
        }
        float sum = Vector512.Sum(acc0 + acc1);
        for (; i < n; i++) sum += Unsafe.Add(ref pa, i) * Unsafe.Add(ref pb, i);
        return sum;
    }

    public static float DotVector256(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int n = RequireSameLength(a, b);
        ref float pa = ref MemoryMarshal.GetReference(a);
        ref float pb = ref MemoryMarshal.GetReference(b);
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        int i = 0;
        for (; i <= n - 2 * Vector256<float>.Count; i += 2 * Vector256<float>.Count)
        {
            acc0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref pa, (nuint)i), Vector256.LoadUnsafe(ref pb, (nuint)i), acc0);
            acc1 = Vector256.FusedMultiplyAdd(
                Vector256.LoadUnsafe(ref pa, (nuint)(i + Vector256<float>.Count)),
                Vector256.LoadUnsafe(ref pb, (nuint)(i + Vector256<float>.Count)), acc1);
        }
        if (i <= n - Vector256<float>.Count)
        {
            acc0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref pa, (nuint)i), Vector256.LoadUnsafe(ref pb, (nuint)i), acc0);
            i += Vector256<float>.Count;
        }
        float sum = Vector256.Sum(acc0 + acc1);
        for (; i < n; i++) sum += Unsafe.Add(ref pa, i) * Unsafe.Add(ref pb, i);
        return sum;
    }

    public static float DotScalar(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int n = RequireSameLength(a, b);
        float sum = 0;
        for (int i = 0; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    // ---- SumOfSquares: Σ x[i]² (RMSNorm statistics) ------------------------------------------------------------

    public static float SumOfSquares(ReadOnlySpan<float> x)
    {
        if (Vector512.IsHardwareAccelerated) return SumOfSquaresVector512(x);
        if (Vector256.IsHardwareAccelerated) return SumOfSquaresVector256(x);
        return SumOfSquaresScalar(x);
    }

    public static float SumOfSquaresVector512(ReadOnlySpan<float> x) => DotVector512(x, x);

    public static float SumOfSquaresVector256(ReadOnlySpan<float> x) => DotVector256(x, x);

    public static float SumOfSquaresScalar(ReadOnlySpan<float> x) => DotScalar(x, x);

    /// <summary>1 / sqrt(mean(x²) + eps), the RMSNorm row scale, computed in double like the eager op.</summary>
    public static float InverseRms(ReadOnlySpan<float> x, float eps) =>
        (float)(1.0 / Math.Sqrt((double)SumOfSquares(x) / x.Length + eps));

    // ---- ScaleAdd: destination[i] += scale·source[i] (the attention value sum) ---------------------------------

    public static void ScaleAdd(Span<float> destination, ReadOnlySpan<float> source, float scale)
    {
        if (Vector512.IsHardwareAccelerated) ScaleAddVector512(destination, source, scale);
        else if (Vector256.IsHardwareAccelerated) ScaleAddVector256(destination, source, scale);
        else ScaleAddScalar(destination, source, scale);
    }

    public static void ScaleAddVector512(Span<float> destination, ReadOnlySpan<float> source, float scale)
    {
        int n = RequireSameLength(destination, source);
        ref float pd = ref MemoryMarshal.GetReference(destination);
        ref float ps = ref MemoryMarshal.GetReference(source);
        var s = Vector512.Create(scale);
        int i = 0;
        for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
        {
            Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref ps, (nuint)i), s, Vector512.LoadUnsafe(ref pd, (nuint)i))
                .StoreUnsafe(ref pd, (nuint)i);
        }
        for (; i < n; i++) Unsafe.Add(ref pd, i) += scale * Unsafe.Add(ref ps, i);
    }

    public static void ScaleAddVector256(Span<float> destination, ReadOnlySpan<float> source, float scale)
    {
        int n = RequireSameLength(destination, source);
        ref float pd = ref MemoryMarshal.GetReference(destination);
        ref float ps = ref MemoryMarshal.GetReference(source);
        var s = Vector256.Create(scale);
        int i = 0;
        for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
        {
            Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref ps, (nuint)i), s, Vector256.LoadUnsafe(ref pd, (nuint)i))
                .StoreUnsafe(ref pd, (nuint)i);
        }
        for (; i < n; i++) Unsafe.Add(ref pd, i) += scale * Unsafe.Add(ref ps, i);
    }

    public static void ScaleAddScalar(Span<float> destination, ReadOnlySpan<float> source, float scale)
    {
        int n = RequireSameLength(destination, source);
        for (int i = 0; i < n; i++) destination[i] += scale * source[i];
    }

    // ---- Softmax in place: x[i] = exp(x[i] - max) / Σ exp(x[j] - max) ------------------------------------------

    public static void Softmax(Span<float> x)
    {
        if (Vector512.IsHardwareAccelerated) SoftmaxVector512(x);
        else if (Vector256.IsHardwareAccelerated) SoftmaxVector256(x);
        else SoftmaxScalar(x);
    }

    public static void SoftmaxVector512(Span<float> x)
    {
        int n = x.Length;
        if (n == 0) return;
        ref float p = ref MemoryMarshal.GetReference(x);
        int i = 0;
        float max = float.NegativeInfinity;
        if (n >= Vector512<float>.Count)
        {
            var vmax = Vector512.LoadUnsafe(ref p);
            for (i = Vector512<float>.Count; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
                vmax = Vector512.Max(vmax, Vector512.LoadUnsafe(ref p, (nuint)i));
            max = HorizontalMax(vmax.GetLower().GetLower(), vmax.GetLower().GetUpper(), vmax.GetUpper().GetLower(), vmax.GetUpper().GetUpper());
        }
        for (; i < n; i++) max = MathF.Max(max, Unsafe.Add(ref p, i));

        var m = Vector512.Create(max);
        var vsum = Vector512<float>.Zero;
        for (i = 0; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
        {
            var e = Vector512.Exp(Vector512.LoadUnsafe(ref p, (nuint)i) - m);
            e.StoreUnsafe(ref p, (nuint)i);
            vsum += e;
        }
        float sum = Vector512.Sum(vsum);
        for (; i < n; i++) sum += Unsafe.Add(ref p, i) = MathF.Exp(Unsafe.Add(ref p, i) - max);

        var inv = Vector512.Create(1f / sum);
        for (i = 0; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
            (Vector512.LoadUnsafe(ref p, (nuint)i) * inv).StoreUnsafe(ref p, (nuint)i);
        for (; i < n; i++) Unsafe.Add(ref p, i) *= 1f / sum;
    }

    public static void SoftmaxVector256(Span<float> x)
    {
        int n = x.Length;
        if (n == 0) return;
        ref float p = ref MemoryMarshal.GetReference(x);
        int i = 0;
        float max = float.NegativeInfinity;
        if (n >= Vector256<float>.Count)
        {
            var vmax = Vector256.LoadUnsafe(ref p);
            for (i = Vector256<float>.Count; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
                vmax = Vector256.Max(vmax, Vector256.LoadUnsafe(ref p, (nuint)i));
            max = HorizontalMax(vmax.GetLower(), vmax.GetUpper(), vmax.GetLower(), vmax.GetUpper());
        }
        for (; i < n; i++) max = MathF.Max(max, Unsafe.Add(ref p, i));

        var m = Vector256.Create(max);
        var vsum = Vector256<float>.Zero;
        for (i = 0; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
        {
            var e = Vector256.Exp(Vector256.LoadUnsafe(ref p, (nuint)i) - m);
            e.StoreUnsafe(ref p, (nuint)i);
            vsum += e;
        }
        float sum = Vector256.Sum(vsum);
        for (; i < n; i++) sum += Unsafe.Add(ref p, i) = MathF.Exp(Unsafe.Add(ref p, i) - max);

        var inv = Vector256.Create(1f / sum);
        for (i = 0; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
            (Vector256.LoadUnsafe(ref p, (nuint)i) * inv).StoreUnsafe(ref p, (nuint)i);
        for (; i < n; i++) Unsafe.Add(ref p, i) *= 1f / sum;
    }

    public static void SoftmaxScalar(Span<float> x)
    {
        if (x.Length == 0) return;
        float max = float.NegativeInfinity;
        foreach (float v in x) max = MathF.Max(max, v);
        float sum = 0;
        for (int i = 0; i < x.Length; i++) sum += x[i] = MathF.Exp(x[i] - max);
        float inv = 1f / sum;
        for (int i = 0; i < x.Length; i++) x[i] *= inv;
    }

    private static float HorizontalMax(Vector128<float> a, Vector128<float> b, Vector128<float> c, Vector128<float> d)
    {
        var v = Vector128.Max(Vector128.Max(a, b), Vector128.Max(c, d));
        return MathF.Max(MathF.Max(v.GetElement(0), v.GetElement(1)), MathF.Max(v.GetElement(2), v.GetElement(3)));
    }

    private static int RequireSameLength(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length) ThrowLengthMismatch(a.Length, b.Length);
        return a.Length;
    }

    private static void ThrowLengthMismatch(int a, int b) =>
        throw new ArgumentException($"Span lengths differ: {a} and {b}.");
}
