using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Kernels.Quantized;

namespace Kiln.Kernels;

/// <summary>
/// The small float32 building blocks the generated kernels call: dot product, sum of squares, scale-add and softmax.
/// Each has a Vector512 path, a Vector256 path and a scalar path (the oracle in the op tests); the entry point picks the
/// one <see cref="KernelPaths.Active"/> names (AVX-512; AVX2 or AVX-VNNI; scalar).
/// </summary>
public static class VectorMath
{
    // ---- Dot: Σ a[i]·b[i] ---------------------------------------------------------------------------------------

    public static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (KernelPaths.Uses512Bits) return DotVector512(a, b);
        if (KernelPaths.UsesVectors) return DotVector256(a, b);
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
        if (KernelPaths.Uses512Bits) return SumOfSquaresVector512(x);
        if (KernelPaths.UsesVectors) return SumOfSquaresVector256(x);
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
        if (KernelPaths.Uses512Bits) ScaleAddVector512(destination, source, scale);
        else if (KernelPaths.UsesVectors) ScaleAddVector256(destination, source, scale);
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

    // ---- Scale in place: x[i] *= scale ---------------------------------------------------------------------------

    public static void Scale(Span<float> x, float scale)
    {
        if (KernelPaths.Uses512Bits) ScaleVector512(x, scale);
        else if (KernelPaths.UsesVectors) ScaleVector256(x, scale);
        else ScaleScalar(x, scale);
    }

    public static void ScaleVector512(Span<float> x, float scale)
    {
        ref float p = ref MemoryMarshal.GetReference(x);
        var s = Vector512.Create(scale);
        int i = 0;
        for (; i <= x.Length - Vector512<float>.Count; i += Vector512<float>.Count)
            (Vector512.LoadUnsafe(ref p, (nuint)i) * s).StoreUnsafe(ref p, (nuint)i);
        for (; i < x.Length; i++) Unsafe.Add(ref p, i) *= scale;
    }

    public static void ScaleVector256(Span<float> x, float scale)
    {
        ref float p = ref MemoryMarshal.GetReference(x);
        var s = Vector256.Create(scale);
        int i = 0;
        for (; i <= x.Length - Vector256<float>.Count; i += Vector256<float>.Count)
            (Vector256.LoadUnsafe(ref p, (nuint)i) * s).StoreUnsafe(ref p, (nuint)i);
        for (; i < x.Length; i++) Unsafe.Add(ref p, i) *= scale;
    }

    public static void ScaleScalar(Span<float> x, float scale)
    {
        for (int i = 0; i < x.Length; i++) x[i] *= scale;
    }

    // ---- ExpSum in place: x[i] = exp(x[i] - max), returning Σ and max: a softmax before its division -------------
    // Attention over a prefix and a suffix keeps the parts' (max, Σ) and merges them by log-sum-exp.

    /// <summary>x[i] ← e^(x[i] − max x), returning Σ of the results; <paramref name="max"/> gets max x (−∞ when empty).</summary>
    public static float ExpSum(Span<float> x, out float max)
    {
        max = Max(x);
        return ExpSum(x, max);
    }

    /// <summary>
    /// x[i] ← e^(x[i] − <paramref name="max"/>), returning Σ of the results: against a running max (attention over
    /// key tiles keeps one per row), or the row's own (<see cref="ExpSum(Span{float}, out float)"/>).
    /// </summary>
    public static float ExpSum(Span<float> x, float max)
    {
        if (KernelPaths.Uses512Bits) return ExpSumVector512(x, max);
        if (KernelPaths.UsesVectors) return ExpSumVector256(x, max);
        return ExpSumScalar(x, max);
    }

    /// <summary>max x (−∞ when empty).</summary>
    public static float Max(ReadOnlySpan<float> x)
    {
        if (KernelPaths.Uses512Bits) return MaxVector512(x);
        if (KernelPaths.UsesVectors) return MaxVector256(x);
        return MaxScalar(x);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float MaxVector512(ReadOnlySpan<float> x)
    {
        int n = x.Length, i = 0;
        ref float p = ref MemoryMarshal.GetReference(x);
        float max = float.NegativeInfinity;
        if (n >= Vector512<float>.Count)
        {
            var vmax = Vector512.LoadUnsafe(ref p);
            for (i = Vector512<float>.Count; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
                vmax = Vector512.Max(vmax, Vector512.LoadUnsafe(ref p, (nuint)i));
            max = HorizontalMax(vmax.GetLower().GetLower(), vmax.GetLower().GetUpper(), vmax.GetUpper().GetLower(), vmax.GetUpper().GetUpper());
        }
        for (; i < n; i++) max = MathF.Max(max, Unsafe.Add(ref p, i));
        return max;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float ExpSumVector512(Span<float> x, float max)
    {
        int n = x.Length, i = 0;
        ref float p = ref MemoryMarshal.GetReference(x);
        var m = Vector512.Create(max);
        var vsum = Vector512<float>.Zero;
        for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
        {
            var e = Vector512.Exp(Vector512.LoadUnsafe(ref p, (nuint)i) - m);
            e.StoreUnsafe(ref p, (nuint)i);
            vsum += e;
        }
        float sum = Vector512.Sum(vsum);
        for (; i < n; i++) sum += Unsafe.Add(ref p, i) = MathF.Exp(Unsafe.Add(ref p, i) - max);
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float MaxVector256(ReadOnlySpan<float> x)
    {
        int n = x.Length, i = 0;
        ref float p = ref MemoryMarshal.GetReference(x);
        float max = float.NegativeInfinity;
        if (n >= Vector256<float>.Count)
        {
            var vmax = Vector256.LoadUnsafe(ref p);
            for (i = Vector256<float>.Count; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
                vmax = Vector256.Max(vmax, Vector256.LoadUnsafe(ref p, (nuint)i));
            max = HorizontalMax(vmax.GetLower(), vmax.GetUpper(), vmax.GetLower(), vmax.GetUpper());
        }
        for (; i < n; i++) max = MathF.Max(max, Unsafe.Add(ref p, i));
        return max;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float ExpSumVector256(Span<float> x, float max)
    {
        int n = x.Length, i = 0;
        ref float p = ref MemoryMarshal.GetReference(x);
        var m = Vector256.Create(max);
        var vsum = Vector256<float>.Zero;
        for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
        {
            var e = Vector256.Exp(Vector256.LoadUnsafe(ref p, (nuint)i) - m);
            e.StoreUnsafe(ref p, (nuint)i);
            vsum += e;
        }
        float sum = Vector256.Sum(vsum);
        for (; i < n; i++) sum += Unsafe.Add(ref p, i) = MathF.Exp(Unsafe.Add(ref p, i) - max);
        return sum;
    }

    public static float MaxScalar(ReadOnlySpan<float> x)
    {
        float max = float.NegativeInfinity;
        foreach (float v in x) max = MathF.Max(max, v);
        return max;
    }

    public static float ExpSumScalar(Span<float> x, float max)
    {
        float sum = 0;
        for (int i = 0; i < x.Length; i++) sum += x[i] = MathF.Exp(x[i] - max);
        return sum;
    }

    // ---- Softmax in place: x[i] = exp(x[i] - max) / Σ exp(x[j] - max) ------------------------------------------

    public static void Softmax(Span<float> x)
    {
        if (KernelPaths.Uses512Bits) SoftmaxVector512(x);
        else if (KernelPaths.UsesVectors) SoftmaxVector256(x);
        else SoftmaxScalar(x);
    }

    public static void SoftmaxVector512(Span<float> x)
    {
        if (x.Length > 0) ScaleVector512(x, 1f / ExpSumVector512(x, MaxVector512(x)));
    }

    public static void SoftmaxVector256(Span<float> x)
    {
        if (x.Length > 0) ScaleVector256(x, 1f / ExpSumVector256(x, MaxVector256(x)));
    }

    public static void SoftmaxScalar(Span<float> x)
    {
        if (x.Length > 0) ScaleScalar(x, 1f / ExpSumScalar(x, MaxScalar(x)));
    }

    // ---- Matmul epilogues on one tile (4 rows of one token) -------------------------------------------------------

    /// <summary>
    /// Rotary embedding of two adjacent pairs [a₀, b₀, a₁, b₁] given [cos₀, cos₀, cos₁, cos₁] and [−sin₀, sin₀, −sin₁, sin₁]:
    /// [a₀cos₀ − b₀sin₀, a₀sin₀ + b₀cos₀, …].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> RotatePairs(Vector128<float> pairs, Vector128<float> cosines, Vector128<float> signedSines) =>
        Vector128.FusedMultiplyAdd(Vector128.Shuffle(pairs, Vector128.Create(1, 0, 3, 2)), signedSines, pairs * cosines);

    // ---- Attention rows: scores of one query against many keys, and the weighted sum of many values ---------------

    /// <summary>
    /// scores[p] = scale · Σ query[i]·keys[p·stride + i] for every p &lt; scores.Length: one query against consecutive
    /// rows of a KV cache (four keys at a time on the Vector512 path, so the query stays in registers).
    /// </summary>
    public static void AttentionScores(ReadOnlySpan<float> query, ReadOnlySpan<float> keys, int stride, float scale, Span<float> scores)
    {
        int d = query.Length, n = scores.Length;
        CheckRows(keys.Length, stride, n, d);
        if (KernelPaths.Uses512Bits && d >= 16) AttentionScoresVector512(query, keys, stride, scale, scores);
        else
            for (int p = 0; p < n; p++) scores[p] = Dot(query, keys.Slice(p * stride, d)) * scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AttentionScoresVector512(ReadOnlySpan<float> query, ReadOnlySpan<float> keys, int stride, float scale, Span<float> scores)
    {
        int d = query.Length, n = scores.Length, full = d & ~15;
        CheckRows(keys.Length, stride, n, d);
        ref float q = ref MemoryMarshal.GetReference(query);
        ref float k = ref MemoryMarshal.GetReference(keys);
        ref float s = ref MemoryMarshal.GetReference(scores);
        int p = 0;
        int lines = (d * sizeof(float) + 63) / 64;
        for (; p + 4 <= n; p += 4)
        {
            // Rows of a KV cache sit a whole row of every head apart, beyond the hardware prefetcher's reach: fetch
            // the rows four rounds ahead (about a memory latency of work).
            if (p + PrefetchDistance + 4 <= n) PrefetchRows(ref Unsafe.Add(ref k, (p + PrefetchDistance) * stride), stride, lines);
            ref float k0 = ref Unsafe.Add(ref k, p * stride);
            ref float k1 = ref Unsafe.Add(ref k0, stride);
            ref float k2 = ref Unsafe.Add(ref k1, stride);
            ref float k3 = ref Unsafe.Add(ref k2, stride);
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int i = 0; i < full; i += 16)
            {
                var v = Vector512.LoadUnsafe(ref q, (nuint)i);
                a0 = Vector512.FusedMultiplyAdd(v, Vector512.LoadUnsafe(ref k0, (nuint)i), a0);
                a1 = Vector512.FusedMultiplyAdd(v, Vector512.LoadUnsafe(ref k1, (nuint)i), a1);
                a2 = Vector512.FusedMultiplyAdd(v, Vector512.LoadUnsafe(ref k2, (nuint)i), a2);
                a3 = Vector512.FusedMultiplyAdd(v, Vector512.LoadUnsafe(ref k3, (nuint)i), a3);
            }
            // The four sums at once: fold each to 256 bits, then three horizontal adds leave [Σa0, Σa1, Σa2, Σa3].
            Vector256<float> h0 = a0.GetLower() + a0.GetUpper(), h1 = a1.GetLower() + a1.GetUpper();
            Vector256<float> h2 = a2.GetLower() + a2.GetUpper(), h3 = a3.GetLower() + a3.GetUpper();
            Vector256<float> h = Avx.HorizontalAdd(Avx.HorizontalAdd(h0, h1), Avx.HorizontalAdd(h2, h3));
            Vector128<float> sums = h.GetLower() + h.GetUpper();
            if (full < d)
            {
                float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                for (int i = full; i < d; i++)
                {
                    float v = Unsafe.Add(ref q, i);
                    s0 += v * Unsafe.Add(ref k0, i);
                    s1 += v * Unsafe.Add(ref k1, i);
                    s2 += v * Unsafe.Add(ref k2, i);
                    s3 += v * Unsafe.Add(ref k3, i);
                }
                sums += Vector128.Create(s0, s1, s2, s3);
            }
            (sums * scale).StoreUnsafe(ref s, (nuint)p);
        }
        for (; p < n; p++)
        {
            ref float k0 = ref Unsafe.Add(ref k, p * stride);
            Vector512<float> a0 = default;
            for (int i = 0; i < full; i += 16)
                a0 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref q, (nuint)i), Vector512.LoadUnsafe(ref k0, (nuint)i), a0);
            float s0 = Vector512.Sum(a0);
            for (int i = full; i < d; i++) s0 += Unsafe.Add(ref q, i) * Unsafe.Add(ref k0, i);
            Unsafe.Add(ref s, p) = s0 * scale;
        }
    }

    /// <summary>result[i] = Σ_p weights[p]·values[p·stride + i] (overwriting result): the attention-weighted sum of value rows.</summary>
    public static void WeightedSum(ReadOnlySpan<float> values, int stride, ReadOnlySpan<float> weights, Span<float> result)
    {
        int d = result.Length, n = weights.Length;
        CheckRows(values.Length, stride, n, d);
        if (KernelPaths.Uses512Bits) WeightedSumVector512(values, stride, weights, result);
        else
        {
            result.Clear();
            for (int p = 0; p < n; p++) ScaleAdd(result, values.Slice(p * stride, d), weights[p]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void WeightedSumVector512(ReadOnlySpan<float> values, int stride, ReadOnlySpan<float> weights, Span<float> result)
    {
        int d = result.Length, n = weights.Length;
        CheckRows(values.Length, stride, n, d);
        ref float v = ref MemoryMarshal.GetReference(values);
        ref float w = ref MemoryMarshal.GetReference(weights);
        ref float r = ref MemoryMarshal.GetReference(result);
        int i = 0;
        // 64 columns at a time: four accumulators in registers over every row.
        for (; i + 64 <= d; i += 64)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            ref float row = ref Unsafe.Add(ref v, i);
            for (int p = 0; p < n; p++, row = ref Unsafe.Add(ref row, stride))
            {
                if ((p & 3) == 0 && p + 2 * PrefetchDistance + 4 <= n) PrefetchRows(ref Unsafe.Add(ref row, 2 * PrefetchDistance * stride), stride, 4);
                var s = Vector512.Create(Unsafe.Add(ref w, p));
                a0 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref row), s, a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref row, 16), s, a1);
                a2 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref row, 32), s, a2);
                a3 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref row, 48), s, a3);
            }
            a0.StoreUnsafe(ref r, (nuint)i);
            a1.StoreUnsafe(ref r, (nuint)(i + 16));
            a2.StoreUnsafe(ref r, (nuint)(i + 32));
            a3.StoreUnsafe(ref r, (nuint)(i + 48));
        }
        for (; i + 16 <= d; i += 16)
        {
            Vector512<float> a0 = default;
            ref float row = ref Unsafe.Add(ref v, i);
            for (int p = 0; p < n; p++, row = ref Unsafe.Add(ref row, stride))
                a0 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref row), Vector512.Create(Unsafe.Add(ref w, p)), a0);
            a0.StoreUnsafe(ref r, (nuint)i);
        }
        for (; i < d; i++)
        {
            float sum = 0;
            for (int p = 0; p < n; p++) sum += Unsafe.Add(ref w, p) * Unsafe.Add(ref v, p * stride + i);
            Unsafe.Add(ref r, i) = sum;
        }
    }

    /// <summary>
    /// Causal attention of several query heads of one token over <paramref name="positions"/> consecutive cached rows,
    /// reading each row once for all of them (rows hold every KV head side by side, so this streams the cache instead
    /// of striding it head by head). <paramref name="queries"/>: <paramref name="heads"/> query heads of
    /// <paramref name="headDim"/>, back to back; query head h reads KV head h / <paramref name="group"/> of
    /// <paramref name="keys"/> and <paramref name="values"/> (rows <paramref name="stride"/> apart, starting at the
    /// first KV head's columns). <paramref name="scores"/> holds heads × positions scratch; <paramref name="output"/>
    /// gets heads × headDim. Per head: scores = scale·q·k, softmax, output = Σ softmax·v — the same as
    /// <see cref="AttentionScores(ReadOnlySpan{float}, ReadOnlySpan{float}, int, float, Span{float})"/>,
    /// <see cref="Softmax"/> and <see cref="WeightedSum"/> head by head. A cache in blocks runs the two phases block by
    /// block instead (<see cref="AttentionScores(ReadOnlySpan{float}, int, int, int, ReadOnlySpan{float}, int, int, float, Span{float}, int, int)"/>,
    /// <see cref="AttentionValues(ReadOnlySpan{float}, int, int, int, int, int, ReadOnlySpan{float}, int, int, Span{float})"/>).
    /// </summary>
    public static void Attention(ReadOnlySpan<float> queries, int heads, int headDim, int group, ReadOnlySpan<float> keys,
        ReadOnlySpan<float> values, int stride, int positions, float scale, Span<float> scores, Span<float> output)
    {
        AttentionScores(queries, heads, headDim, group, keys, stride, positions, scale, scores, positions, 0);
        for (int h = 0; h < heads; h++) Softmax(scores.Slice(h * positions, positions));
        output[..(heads * headDim)].Clear();
        AttentionValues(scores, positions, 0, heads, headDim, group, values, stride, positions, output);
    }

    /// <summary>
    /// The scores of several query heads against <paramref name="positions"/> consecutive cached rows:
    /// scores[h·<paramref name="scoreStride"/> + <paramref name="firstPosition"/> + p] = scale · q_h · k_p (the head's
    /// KV head as in <see cref="Attention"/>). Rows are read in order, four at a time, once for every head.
    /// </summary>
    public static void AttentionScores(ReadOnlySpan<float> queries, int heads, int headDim, int group, ReadOnlySpan<float> keys,
        int stride, int positions, float scale, Span<float> scores, int scoreStride, int firstPosition)
    {
        CheckHeads(queries.Length, heads, headDim, group, scores.Length, scoreStride, firstPosition, positions);
        CheckRows(keys.Length, stride, positions, heads / group * headDim);
        if (KernelPaths.Uses512Bits && headDim % 16 == 0)
        {
            AttentionScoresRows<float, FloatRow>(queries, heads, headDim, group, keys, stride, positions, scale, scores, scoreStride, firstPosition);
            return;
        }
        for (int h = 0; h < heads; h++)
            AttentionScores(queries.Slice(h * headDim, headDim), keys[(h / group * headDim)..], stride, scale,
                scores.Slice(h * scoreStride + firstPosition, positions));
    }

    /// <summary>
    /// Adds the weighted values of <paramref name="positions"/> consecutive cached rows to several heads' outputs:
    /// output_h += Σ_p weights[h·<paramref name="scoreStride"/> + <paramref name="firstPosition"/> + p] · v_p (the
    /// head's KV head as in <see cref="Attention"/>; clear the output before the first block).
    /// </summary>
    public static void AttentionValues(ReadOnlySpan<float> weights, int scoreStride, int firstPosition, int heads, int headDim, int group,
        ReadOnlySpan<float> values, int stride, int positions, Span<float> output)
    {
        CheckHeads(output.Length, heads, headDim, group, weights.Length, scoreStride, firstPosition, positions);
        CheckRows(values.Length, stride, positions, heads / group * headDim);
        if (KernelPaths.Uses512Bits && headDim % 16 == 0)
        {
            AttentionValuesRows<float, FloatRow>(weights, scoreStride, firstPosition, heads, headDim, group, values, stride, positions, output);
            return;
        }
        for (int h = 0; h < heads; h++)
        {
            var result = output.Slice(h * headDim, headDim);
            var source = values[(h / group * headDim)..];
            for (int p = 0; p < positions; p++)
                ScaleAdd(result, source.Slice(p * stride, headDim), weights[h * scoreStride + firstPosition + p]);
        }
    }

    /// <summary>
    /// <see cref="AttentionScores(ReadOnlySpan{float}, int, int, int, ReadOnlySpan{float}, int, int, float, Span{float}, int, int)"/>
    /// over keys stored as halves (an F16 KV cache), widened in registers as they are read. <paramref name="finiteKeys"/>:
    /// the caller knows every key is finite (<see cref="KvCache.HoldsOnlyFiniteHalves"/>), so the AVX-512 path may widen
    /// them unrebiased (<see cref="Fp16.ToSingleUnrebiased"/>) with the queries scaled by 2^112 — the same scores bit for
    /// bit, in a third of the work; it does so when every query is below 2^16 in magnitude (the scaled ones stay finite).
    /// </summary>
    public static void AttentionScores(ReadOnlySpan<float> queries, int heads, int headDim, int group, ReadOnlySpan<Half> keys,
        int stride, int positions, float scale, Span<float> scores, int scoreStride, int firstPosition, bool finiteKeys = false)
    {
        CheckHeads(queries.Length, heads, headDim, group, scores.Length, scoreStride, firstPosition, positions);
        CheckRows(keys.Length, stride, positions, heads / group * headDim);
        if (KernelPaths.Uses512Bits && headDim % 16 == 0)
        {
            if (finiteKeys && Rebiasable(queries[..(heads * headDim)], 1, headDim * heads, 0))
                AttentionScoresRows<Half, UnrebiasedHalfRow>(queries, heads, headDim, group, keys, stride, positions, scale, scores, scoreStride, firstPosition);
            else
                AttentionScoresRows<Half, HalfRow>(queries, heads, headDim, group, keys, stride, positions, scale, scores, scoreStride, firstPosition);
            return;
        }
        for (int h = 0; h < heads; h++)
        {
            var query = queries.Slice(h * headDim, headDim);
            for (int p = 0; p < positions; p++)
            {
                var key = keys.Slice(p * stride + h / group * headDim, headDim);
                float sum = 0;
                for (int i = 0; i < headDim; i++) sum += query[i] * (float)key[i];
                scores[h * scoreStride + firstPosition + p] = sum * scale;
            }
        }
    }

    /// <summary>
    /// <see cref="AttentionValues(ReadOnlySpan{float}, int, int, int, int, int, ReadOnlySpan{float}, int, int, Span{float})"/>
    /// over values stored as halves (an F16 KV cache), widened in registers as they are read. <paramref name="finiteValues"/>:
    /// as the keys' flag of <see cref="AttentionScores(ReadOnlySpan{float}, int, int, int, ReadOnlySpan{Half}, int, int, float, Span{float}, int, int, bool)"/>,
    /// with the weights scaled by 2^112 instead of the queries (when every weight is below 2^16 in magnitude, as softmax's are).
    /// </summary>
    public static void AttentionValues(ReadOnlySpan<float> weights, int scoreStride, int firstPosition, int heads, int headDim, int group,
        ReadOnlySpan<Half> values, int stride, int positions, Span<float> output, bool finiteValues = false)
    {
        CheckHeads(output.Length, heads, headDim, group, weights.Length, scoreStride, firstPosition, positions);
        CheckRows(values.Length, stride, positions, heads / group * headDim);
        if (KernelPaths.Uses512Bits && headDim % 16 == 0)
        {
            if (finiteValues && Rebiasable(weights, heads, positions, scoreStride, firstPosition))
                AttentionValuesRows<Half, UnrebiasedHalfRow>(weights, scoreStride, firstPosition, heads, headDim, group, values, stride, positions, output);
            else
                AttentionValuesRows<Half, HalfRow>(weights, scoreStride, firstPosition, heads, headDim, group, values, stride, positions, output);
            return;
        }
        for (int h = 0; h < heads; h++)
        {
            var result = output.Slice(h * headDim, headDim);
            for (int p = 0; p < positions; p++)
            {
                var value = values.Slice(p * stride + h / group * headDim, headDim);
                float weight = weights[h * scoreStride + firstPosition + p];
                for (int i = 0; i < headDim; i++) result[i] += weight * (float)value[i];
            }
        }
    }

    /// <summary>
    /// How the attention row kernels load 16 elements of a cached row as floats: in place, widened from halves, or
    /// widened short of the factor <see cref="Rebias"/>, which the kernels then fold into the query or the weight.
    /// </summary>
    private interface IKvRow<T> where T : unmanaged
    {
        static abstract Vector512<float> Load(ref T row, int index);

        static abstract float Rebias { get; }
    }

    private readonly struct FloatRow : IKvRow<float>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(ref float row, int index) => Vector512.LoadUnsafe(ref row, (nuint)index);

        public static float Rebias => 1f;
    }

    private readonly struct HalfRow : IKvRow<Half>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(ref Half row, int index) =>
            Quantized.Fp16.ToSingle(Vector512.WidenLower(Vector256.LoadUnsafe(ref Unsafe.As<Half, ushort>(ref row), (nuint)index).ToVector512Unsafe()));

        public static float Rebias => 1f;
    }

    // Finite halves only (see Fp16.ToSingleUnrebiased): sign-extended, so the sign lands in the float's sign bit.
    private readonly struct UnrebiasedHalfRow : IKvRow<Half>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(ref Half row, int index) =>
            Quantized.Fp16.ToSingleUnrebiased(Vector512.WidenLower(Vector256.LoadUnsafe(ref Unsafe.As<Half, short>(ref row), (nuint)index).ToVector512Unsafe()));

        public static float Rebias => Quantized.Fp16.Rebias;
    }

    /// <summary>
    /// Whether <paramref name="rows"/> rows of <paramref name="length"/> factors (<paramref name="stride"/> apart, from
    /// <paramref name="first"/>) stay finite times 2^112: every one below 2^16 in magnitude (NaN is not).
    /// </summary>
    internal static bool Rebiasable(ReadOnlySpan<float> factors, int rows, int length, int stride, int first = 0)
    {
        for (int r = 0; r < rows; r++)
            if (length > 0 && !(MathF.Abs(TensorPrimitives.MaxMagnitude(factors.Slice(r * stride + first, length))) < 65536f)) return false;
        return true;
    }

    private static void CheckHeads(int vectors, int heads, int headDim, int group, int scores, int scoreStride, int firstPosition, int positions)
    {
        if (heads <= 0 || headDim <= 0 || group <= 0 || heads % group != 0 || vectors < heads * headDim || positions < 0
            || firstPosition < 0 || firstPosition + positions > scoreStride || scores < (heads - 1) * scoreStride + firstPosition + positions)
            throw new ArgumentException($"Attention of {heads} heads of {headDim} over rows {firstPosition}..{firstPosition + positions} does not fit the spans given.");
    }

    // Positions four at a time, every head: rows p..p+3 are read once, in order, for all heads.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AttentionScoresRows<T, TRow>(ReadOnlySpan<float> queries, int heads, int headDim, int group, ReadOnlySpan<T> keys,
        int stride, int positions, float scale, Span<float> scores, int scoreStride, int firstPosition)
        where T : unmanaged where TRow : IKvRow<T>
    {
        ref float q = ref MemoryMarshal.GetReference(queries);
        ref T k = ref MemoryMarshal.GetReference(keys);
        ref float s = ref Unsafe.Add(ref MemoryMarshal.GetReference(scores), firstPosition);
        int width = heads / group * headDim, lines = (width * Unsafe.SizeOf<T>() + 63) / 64;
        for (int r = 0; r + 4 <= Math.Min(PrefetchDistance, positions); r += 4) PrefetchRows(ref Unsafe.Add(ref k, r * stride), stride, lines);
        int p = 0;
        for (; p + 4 <= positions; p += 4)
        {
            // Four rows read head by head (or a chunk of the heads, rows with gaps between them) lose the hardware
            // prefetcher even when the rows are whole: fetch them PrefetchDistance rows ahead, the first ones before the loop.
            if (p + PrefetchDistance + 4 <= positions) PrefetchRows(ref Unsafe.Add(ref k, (p + PrefetchDistance) * stride), stride, lines);
            ref T k0 = ref Unsafe.Add(ref k, p * stride);
            for (int h = 0; h < heads; h++)
            {
                ref float qh = ref Unsafe.Add(ref q, h * headDim);
                ref T r0 = ref Unsafe.Add(ref k0, h / group * headDim);
                ref T r1 = ref Unsafe.Add(ref r0, stride);
                ref T r2 = ref Unsafe.Add(ref r1, stride);
                ref T r3 = ref Unsafe.Add(ref r2, stride);
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int i = 0; i < headDim; i += 16)
                {
                    var v = Vector512.LoadUnsafe(ref qh, (nuint)i);
                    if (TRow.Rebias != 1f) v *= TRow.Rebias;
                    a0 = Vector512.FusedMultiplyAdd(v, TRow.Load(ref r0, i), a0);
                    a1 = Vector512.FusedMultiplyAdd(v, TRow.Load(ref r1, i), a1);
                    a2 = Vector512.FusedMultiplyAdd(v, TRow.Load(ref r2, i), a2);
                    a3 = Vector512.FusedMultiplyAdd(v, TRow.Load(ref r3, i), a3);
                }
                Vector256<float> h0 = a0.GetLower() + a0.GetUpper(), h1 = a1.GetLower() + a1.GetUpper();
                Vector256<float> h2 = a2.GetLower() + a2.GetUpper(), h3 = a3.GetLower() + a3.GetUpper();
                Vector256<float> sums = Avx.HorizontalAdd(Avx.HorizontalAdd(h0, h1), Avx.HorizontalAdd(h2, h3));
                ((sums.GetLower() + sums.GetUpper()) * scale).StoreUnsafe(ref s, (nuint)(h * scoreStride + p));
            }
        }
        for (; p < positions; p++)
        {
            ref T k0 = ref Unsafe.Add(ref k, p * stride);
            for (int h = 0; h < heads; h++)
            {
                ref float qh = ref Unsafe.Add(ref q, h * headDim);
                ref T r0 = ref Unsafe.Add(ref k0, h / group * headDim);
                Vector512<float> a0 = default;
                for (int i = 0; i < headDim; i += 16)
                {
                    var v = Vector512.LoadUnsafe(ref qh, (nuint)i);
                    if (TRow.Rebias != 1f) v *= TRow.Rebias;
                    a0 = Vector512.FusedMultiplyAdd(v, TRow.Load(ref r0, i), a0);
                }
                Unsafe.Add(ref s, h * scoreStride + p) = Vector512.Sum(a0) * scale;
            }
        }
    }

    // Positions four at a time, every head: each head's output (in L1) takes four rows' worth per load and store.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AttentionValuesRows<T, TRow>(ReadOnlySpan<float> weights, int scoreStride, int firstPosition, int heads, int headDim, int group,
        ReadOnlySpan<T> values, int stride, int positions, Span<float> output)
        where T : unmanaged where TRow : IKvRow<T>
    {
        ref float w = ref Unsafe.Add(ref MemoryMarshal.GetReference(weights), firstPosition);
        ref T v = ref MemoryMarshal.GetReference(values);
        ref float o = ref MemoryMarshal.GetReference(output);
        int width = heads / group * headDim, lines = (width * Unsafe.SizeOf<T>() + 63) / 64;
        for (int r = 0; r + 4 <= Math.Min(2 * PrefetchDistance, positions); r += 4) PrefetchRows(ref Unsafe.Add(ref v, r * stride), stride, lines);
        for (int p = 0; p < positions; p += 4)
        {
            int count = Math.Min(4, positions - p);
            if (p + 2 * PrefetchDistance + 4 <= positions) PrefetchRows(ref Unsafe.Add(ref v, (p + 2 * PrefetchDistance) * stride), stride, lines);
            ref T v0 = ref Unsafe.Add(ref v, p * stride);
            for (int h = 0; h < heads; h++)
            {
                ref float oh = ref Unsafe.Add(ref o, h * headDim);
                ref T r0 = ref Unsafe.Add(ref v0, h / group * headDim);
                ref float wh = ref Unsafe.Add(ref w, h * scoreStride + p);
                var s0 = Vector512.Create(wh * TRow.Rebias);
                var s1 = count > 1 ? Vector512.Create(Unsafe.Add(ref wh, 1) * TRow.Rebias) : default;
                var s2 = count > 2 ? Vector512.Create(Unsafe.Add(ref wh, 2) * TRow.Rebias) : default;
                var s3 = count > 3 ? Vector512.Create(Unsafe.Add(ref wh, 3) * TRow.Rebias) : default;
                for (int i = 0; i < headDim; i += 16)
                {
                    var acc = Vector512.LoadUnsafe(ref oh, (nuint)i);
                    acc = Vector512.FusedMultiplyAdd(TRow.Load(ref r0, i), s0, acc);
                    if (count > 1) acc = Vector512.FusedMultiplyAdd(TRow.Load(ref Unsafe.Add(ref r0, stride), i), s1, acc);
                    if (count > 2) acc = Vector512.FusedMultiplyAdd(TRow.Load(ref Unsafe.Add(ref r0, 2 * stride), i), s2, acc);
                    if (count > 3) acc = Vector512.FusedMultiplyAdd(TRow.Load(ref Unsafe.Add(ref r0, 3 * stride), i), s3, acc);
                    acc.StoreUnsafe(ref oh, (nuint)i);
                }
            }
        }
    }

    // ---- Many queries against one tile of cached rows (shared-prefix attention's queries × prefix-keys tiles) --------

    /// <summary>
    /// Scores of <paramref name="count"/> query rows (each <paramref name="headDim"/> floats, one after another) against
    /// <paramref name="positions"/> cached rows of one KV head: scores[q·<paramref name="scoreStride"/> +
    /// <paramref name="firstPosition"/> + p] = scale · q · k_p. The rows are loaded (and halves widened) once for every
    /// query: a small GEMM, where per-query attention reloads them per query.
    /// </summary>
    public static void AttentionScoresTile<T>(ReadOnlySpan<float> queries, int count, int headDim, ReadOnlySpan<T> keys, int stride, int positions,
        float scale, Span<float> scores, int scoreStride, int firstPosition) where T : unmanaged
    {
        CheckHeads(queries.Length, count, headDim, 1, scores.Length, scoreStride, firstPosition, positions);
        if (typeof(T) != typeof(float) && typeof(T) != typeof(Half)) throw new NotSupportedException($"Cached rows of {typeof(T).Name}.");
        if (count > 0) CheckRows(keys.Length, stride, positions, headDim);
        if (KernelPaths.Uses512Bits && headDim % 64 == 0)
        {
            if (typeof(T) == typeof(float))
                ScoresTile<float, FloatRow>(queries, count, headDim, MemoryMarshal.Cast<T, float>(keys), stride, positions, scale, scores, scoreStride, firstPosition);
            else
                ScoresTile<Half, HalfRow>(queries, count, headDim, MemoryMarshal.Cast<T, Half>(keys), stride, positions, scale, scores, scoreStride, firstPosition);
            return;
        }
        for (int q = 0; q < count; q++)
        {
            var query = queries.Slice(q * headDim, headDim);
            if (typeof(T) == typeof(float))
                AttentionScores(query, 1, headDim, 1, MemoryMarshal.Cast<T, float>(keys), stride, positions, scale, scores[(q * scoreStride)..], scoreStride, firstPosition);
            else
                AttentionScores(query, 1, headDim, 1, MemoryMarshal.Cast<T, Half>(keys), stride, positions, scale, scores[(q * scoreStride)..], scoreStride, firstPosition);
        }
    }

    /// <summary>
    /// Adds the weighted values of <paramref name="positions"/> cached rows of one KV head to <paramref name="count"/>
    /// outputs (each <paramref name="headDim"/> floats, one after another): output_q += Σ_p
    /// weights[q·<paramref name="scoreStride"/> + <paramref name="firstPosition"/> + p] · v_p, the rows loaded once for every query.
    /// </summary>
    public static void AttentionValuesTile<T>(ReadOnlySpan<float> weights, int scoreStride, int firstPosition, int count, int headDim,
        ReadOnlySpan<T> values, int stride, int positions, Span<float> output) where T : unmanaged
    {
        CheckHeads(output.Length, count, headDim, 1, weights.Length, scoreStride, firstPosition, positions);
        if (typeof(T) != typeof(float) && typeof(T) != typeof(Half)) throw new NotSupportedException($"Cached rows of {typeof(T).Name}.");
        if (count > 0) CheckRows(values.Length, stride, positions, headDim);
        if (KernelPaths.Uses512Bits && headDim % 64 == 0)
        {
            if (typeof(T) == typeof(float))
                ValuesTile<float, FloatRow>(weights, scoreStride, firstPosition, count, headDim, MemoryMarshal.Cast<T, float>(values), stride, positions, output);
            else
                ValuesTile<Half, HalfRow>(weights, scoreStride, firstPosition, count, headDim, MemoryMarshal.Cast<T, Half>(values), stride, positions, output);
            return;
        }
        for (int q = 0; q < count; q++)
        {
            var result = output.Slice(q * headDim, headDim);
            if (typeof(T) == typeof(float))
                AttentionValues(weights[(q * scoreStride)..], scoreStride, firstPosition, 1, headDim, 1, MemoryMarshal.Cast<T, float>(values), stride, positions, result);
            else
                AttentionValues(weights[(q * scoreStride)..], scoreStride, firstPosition, 1, headDim, 1, MemoryMarshal.Cast<T, Half>(values), stride, positions, result);
        }
    }

    // Four rows × 64 columns of keys held in 16 registers while every query takes its four dots from them.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ScoresTile<T, TRow>(ReadOnlySpan<float> queries, int count, int headDim, ReadOnlySpan<T> keys, int stride, int positions,
        float scale, Span<float> scores, int scoreStride, int firstPosition) where T : unmanaged where TRow : IKvRow<T>
    {
        ref float q0 = ref MemoryMarshal.GetReference(queries);
        ref T k = ref MemoryMarshal.GetReference(keys);
        ref float s = ref Unsafe.Add(ref MemoryMarshal.GetReference(scores), firstPosition);
        int p = 0;
        for (; p + 4 <= positions; p += 4)
        {
            for (int c = 0; c < headDim; c += 64)
            {
                ref T r0 = ref Unsafe.Add(ref k, p * stride + c);
                ref T r1 = ref Unsafe.Add(ref r0, stride);
                ref T r2 = ref Unsafe.Add(ref r1, stride);
                ref T r3 = ref Unsafe.Add(ref r2, stride);
                Vector512<float> k00 = TRow.Load(ref r0, 0), k01 = TRow.Load(ref r0, 16), k02 = TRow.Load(ref r0, 32), k03 = TRow.Load(ref r0, 48);
                Vector512<float> k10 = TRow.Load(ref r1, 0), k11 = TRow.Load(ref r1, 16), k12 = TRow.Load(ref r1, 32), k13 = TRow.Load(ref r1, 48);
                Vector512<float> k20 = TRow.Load(ref r2, 0), k21 = TRow.Load(ref r2, 16), k22 = TRow.Load(ref r2, 32), k23 = TRow.Load(ref r2, 48);
                Vector512<float> k30 = TRow.Load(ref r3, 0), k31 = TRow.Load(ref r3, 16), k32 = TRow.Load(ref r3, 32), k33 = TRow.Load(ref r3, 48);
                for (int q = 0; q < count; q++)
                {
                    ref float qc = ref Unsafe.Add(ref q0, q * headDim + c);
                    Vector512<float> v0 = Vector512.LoadUnsafe(ref qc), v1 = Vector512.LoadUnsafe(ref qc, (nuint)16);
                    Vector512<float> v2 = Vector512.LoadUnsafe(ref qc, (nuint)32), v3 = Vector512.LoadUnsafe(ref qc, (nuint)48);
                    var a0 = Vector512.FusedMultiplyAdd(v3, k03, Vector512.FusedMultiplyAdd(v2, k02, Vector512.FusedMultiplyAdd(v1, k01, v0 * k00)));
                    var a1 = Vector512.FusedMultiplyAdd(v3, k13, Vector512.FusedMultiplyAdd(v2, k12, Vector512.FusedMultiplyAdd(v1, k11, v0 * k10)));
                    var a2 = Vector512.FusedMultiplyAdd(v3, k23, Vector512.FusedMultiplyAdd(v2, k22, Vector512.FusedMultiplyAdd(v1, k21, v0 * k20)));
                    var a3 = Vector512.FusedMultiplyAdd(v3, k33, Vector512.FusedMultiplyAdd(v2, k32, Vector512.FusedMultiplyAdd(v1, k31, v0 * k30)));
                    Vector256<float> h0 = a0.GetLower() + a0.GetUpper(), h1 = a1.GetLower() + a1.GetUpper();
                    Vector256<float> h2 = a2.GetLower() + a2.GetUpper(), h3 = a3.GetLower() + a3.GetUpper();
                    Vector256<float> sums = Avx.HorizontalAdd(Avx.HorizontalAdd(h0, h1), Avx.HorizontalAdd(h2, h3));
                    var dots = (sums.GetLower() + sums.GetUpper()) * scale;
                    ref float target = ref Unsafe.Add(ref s, q * scoreStride + p);
                    if (c > 0) dots += Vector128.LoadUnsafe(ref target);
                    dots.StoreUnsafe(ref target);
                }
            }
        }
        for (; p < positions; p++)
        {
            ref T r0 = ref Unsafe.Add(ref k, p * stride);
            for (int q = 0; q < count; q++)
            {
                ref float qh = ref Unsafe.Add(ref q0, q * headDim);
                Vector512<float> a0 = default;
                for (int i = 0; i < headDim; i += 16)
                    a0 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref qh, (nuint)i), TRow.Load(ref r0, i), a0);
                Unsafe.Add(ref s, q * scoreStride + p) = Vector512.Sum(a0) * scale;
            }
        }
    }

    // Four rows × 64 columns of values held in 16 registers while every query's output takes its four weighted rows.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ValuesTile<T, TRow>(ReadOnlySpan<float> weights, int scoreStride, int firstPosition, int count, int headDim,
        ReadOnlySpan<T> values, int stride, int positions, Span<float> output) where T : unmanaged where TRow : IKvRow<T>
    {
        ref float w = ref Unsafe.Add(ref MemoryMarshal.GetReference(weights), firstPosition);
        ref T v = ref MemoryMarshal.GetReference(values);
        ref float o = ref MemoryMarshal.GetReference(output);
        int p = 0;
        for (; p + 4 <= positions; p += 4)
        {
            for (int c = 0; c < headDim; c += 64)
            {
                ref T r0 = ref Unsafe.Add(ref v, p * stride + c);
                ref T r1 = ref Unsafe.Add(ref r0, stride);
                ref T r2 = ref Unsafe.Add(ref r1, stride);
                ref T r3 = ref Unsafe.Add(ref r2, stride);
                Vector512<float> v00 = TRow.Load(ref r0, 0), v01 = TRow.Load(ref r0, 16), v02 = TRow.Load(ref r0, 32), v03 = TRow.Load(ref r0, 48);
                Vector512<float> v10 = TRow.Load(ref r1, 0), v11 = TRow.Load(ref r1, 16), v12 = TRow.Load(ref r1, 32), v13 = TRow.Load(ref r1, 48);
                Vector512<float> v20 = TRow.Load(ref r2, 0), v21 = TRow.Load(ref r2, 16), v22 = TRow.Load(ref r2, 32), v23 = TRow.Load(ref r2, 48);
                Vector512<float> v30 = TRow.Load(ref r3, 0), v31 = TRow.Load(ref r3, 16), v32 = TRow.Load(ref r3, 32), v33 = TRow.Load(ref r3, 48);
                for (int q = 0; q < count; q++)
                {
                    ref float wq = ref Unsafe.Add(ref w, q * scoreStride + p);
                    Vector512<float> s0 = Vector512.Create(wq), s1 = Vector512.Create(Unsafe.Add(ref wq, 1));
                    Vector512<float> s2 = Vector512.Create(Unsafe.Add(ref wq, 2)), s3 = Vector512.Create(Unsafe.Add(ref wq, 3));
                    ref float oc = ref Unsafe.Add(ref o, q * headDim + c);
                    Vector512.FusedMultiplyAdd(v30, s3, Vector512.FusedMultiplyAdd(v20, s2, Vector512.FusedMultiplyAdd(v10, s1, Vector512.FusedMultiplyAdd(v00, s0, Vector512.LoadUnsafe(ref oc))))).StoreUnsafe(ref oc);
                    Vector512.FusedMultiplyAdd(v31, s3, Vector512.FusedMultiplyAdd(v21, s2, Vector512.FusedMultiplyAdd(v11, s1, Vector512.FusedMultiplyAdd(v01, s0, Vector512.LoadUnsafe(ref oc, (nuint)16))))).StoreUnsafe(ref oc, (nuint)16);
                    Vector512.FusedMultiplyAdd(v32, s3, Vector512.FusedMultiplyAdd(v22, s2, Vector512.FusedMultiplyAdd(v12, s1, Vector512.FusedMultiplyAdd(v02, s0, Vector512.LoadUnsafe(ref oc, (nuint)32))))).StoreUnsafe(ref oc, (nuint)32);
                    Vector512.FusedMultiplyAdd(v33, s3, Vector512.FusedMultiplyAdd(v23, s2, Vector512.FusedMultiplyAdd(v13, s1, Vector512.FusedMultiplyAdd(v03, s0, Vector512.LoadUnsafe(ref oc, (nuint)48))))).StoreUnsafe(ref oc, (nuint)48);
                }
            }
        }
        for (; p < positions; p++)
        {
            ref T r0 = ref Unsafe.Add(ref v, p * stride);
            for (int q = 0; q < count; q++)
            {
                var weight = Vector512.Create(Unsafe.Add(ref w, q * scoreStride + p));
                ref float oq = ref Unsafe.Add(ref o, q * headDim);
                for (int i = 0; i < headDim; i += 16)
                    Vector512.FusedMultiplyAdd(TRow.Load(ref r0, i), weight, Vector512.LoadUnsafe(ref oq, (nuint)i)).StoreUnsafe(ref oq, (nuint)i);
            }
        }
    }

    /// <summary>Rows ahead that the attention loops prefetch (scores; the weighted sum, with less work per row, twice as far).</summary>
    private const int PrefetchDistance = 16;

    /// <summary>
    /// Prefetches the first rows of the next block a paged walk reads (<paramref name="values"/>: as far as the
    /// weighted sum looks ahead, else as far as the scores do), each row's first <paramref name="width"/> elements:
    /// inside a block the row loops fetch ahead, but a block's first rows would otherwise be fetched only as it starts.
    /// </summary>
    public static void PrefetchNextBlock<T>(ReadOnlySpan<T> rows, int stride, int positions, int width, bool values) where T : unmanaged
    {
        int count = Math.Min(positions, values ? 2 * PrefetchDistance : PrefetchDistance), lines = (width * Unsafe.SizeOf<T>() + 63) / 64;
        CheckRows(rows.Length, stride, count, width);
        ref T first = ref MemoryMarshal.GetReference(rows);
        int r = 0;
        for (; r + 4 <= count; r += 4) PrefetchRows(ref Unsafe.Add(ref first, r * stride), stride, lines);
        for (; r < count; r++) PrefetchRow(ref Unsafe.Add(ref first, r * stride), lines);
    }

    /// <summary>
    /// Prefetches <paramref name="count"/> rows' first <paramref name="width"/> elements into L2 but not L1: rows read
    /// only after a walk's other reads (a short walk's first value rows, the next item's first keys), which fetched
    /// into L1 would be evicted by those reads or evict what they need.
    /// </summary>
    public static unsafe void PrefetchRowsToL2<T>(ReadOnlySpan<T> rows, int stride, int count, int width) where T : unmanaged
    {
        int lines = (width * Unsafe.SizeOf<T>() + 63) / 64;
        CheckRows(rows.Length, stride, count, width);
        if (!Sse.IsSupported) return;
        byte* row = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(rows));
        for (int r = 0; r < count; r++, row += (long)stride * sizeof(T))
            for (int line = 0; line < lines; line++) Sse.Prefetch1(row + line * 64);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void PrefetchRow<T>(ref T row, int lines) where T : unmanaged
    {
        if (!Sse.IsSupported) return;
        byte* start = (byte*)Unsafe.AsPointer(ref row);
        for (int line = 0; line < lines; line++) Sse.Prefetch0(start + line * 64);
    }

    /// <summary>Prefetches the first <paramref name="lines"/> cache lines of 4 rows <paramref name="stride"/> elements apart (prefetches never fault).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void PrefetchRows<T>(ref T first, int stride, int lines) where T : unmanaged
    {
        if (!Sse.IsSupported) return;
        byte* row = (byte*)Unsafe.AsPointer(ref first);
        for (int r = 0; r < 4; r++, row += (long)stride * sizeof(T))
            for (int line = 0; line < lines; line++) Sse.Prefetch0(row + line * 64);
    }

    private static void CheckRows(int length, int stride, int rows, int width)
    {
        if (rows > 0 && (stride < width || (long)(rows - 1) * stride + width > length))
            throw new ArgumentException($"{rows} rows of {width} at stride {stride} do not fit {length} elements.");
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
