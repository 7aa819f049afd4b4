using System.Runtime.CompilerServices;
using ILGPU;

namespace Kiln.Gpu.Kernels;

/// <summary>A matmul's input, element by element: a buffer's rows, or a generated chain computing them.</summary>
public interface IGpuInput
{
    float Load(int token, int column);
}

/// <summary>
/// A matmul's generated epilogue: the two sums of packed rows <c>row</c> and <c>row + 1</c> (row even) for one token,
/// turned into outputs (a bias, a residual, an activation, a rope pair, or one output of a gate/up pair).
/// </summary>
public interface IGpuEpilogue
{
    void Store(int row, int token, float first, float second);
}

/// <summary>Float-layout weights: two consecutive elements (the first at an even index) as floats.</summary>
public interface IGpuFloatRows
{
    void Pair(long element, out float first, out float second);
}

/// <summary>A buffer's rows as a matmul input: token t's K values at <c>t·Stride</c>.</summary>
public struct GpuRows : IGpuInput
{
    public ArrayView<float> Data;
    public int Stride;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly float Load(int token, int column) => Data[(long)token * Stride + column];
}

public struct F32Rows : IGpuFloatRows
{
    public ArrayView<float> Data;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void Pair(long element, out float first, out float second)
    {
        first = Data[element];
        second = Data[element + 1];
    }
}

/// <summary>IEEE halves, two to a 32-bit word, widened exactly.</summary>
public struct F16Rows : IGpuFloatRows
{
    public ArrayView<uint> Data;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void Pair(long element, out float first, out float second)
    {
        uint word = Data[element >> 1];
        first = GpuMath.HalfToFloat(word & 0xFFFFu);
        second = GpuMath.HalfToFloat(word >> 16);
    }
}

/// <summary>bfloat16s, two to a 32-bit word, widened exactly (a shift).</summary>
public struct BF16Rows : IGpuFloatRows
{
    public ArrayView<uint> Data;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void Pair(long element, out float first, out float second)
    {
        uint word = Data[element >> 1];
        first = Interop.IntAsFloat(word << 16);
        second = Interop.IntAsFloat(word & 0xFFFF0000u);
    }
}

/// <summary>A matmul's size: packed rows (a multiple of 4), row length K (even), tokens, and lanes per unit.</summary>
public struct MatVecShape
{
    public int Rows, K, Tokens, Lanes;
}

/// <summary>
/// The norm a float matmul applies to its input on the fly (<see cref="MatVec.FloatRows"/>): kind 0 none, 1 RMS,
/// 2 layer norm. <see cref="RowSums"/> holds, per packed row r, Σ W[r]·g and Σ W[r]·b (a layer norm's mean and
/// bias come out of the sum through them).
/// </summary>
public struct GpuNorm
{
    public int Kind;
    public ArrayView<float> Weight, Bias, RowSums;
    public float Eps;
}

/// <summary>Q8 activations: per token K/4 words of four int8 quants, and K/32 float scales (fp16 values, as GGML keeps them).</summary>
public struct Q8Activations
{
    public ArrayView<int> Quants;
    public ArrayView<float> Scales;
}

/// <summary>
/// The matmul kernels: out[t, r] = Σ_k W[r, k]·x[t, k], through a generated epilogue. A unit is a group of 4 packed
/// rows (two epilogue pairs); its lanes split K, each reading two weights of every row per step (coalesced across
/// a warp), and it walks the tokens 4 at a time, so the rows are read from memory once for a decode and stay in cache
/// while a prefill's tokens stream past. The float layouts normalize their input on the fly: each unit sums Σx
/// and Σx² of the tokens it reads anyway, and applies 1/rms (or the layer norm's mean and 1/σ) to its sums at the
/// end — a norm costs no launch and no pass. The quantized layouts read Q8 activations (<see cref="Prepare"/>).
/// </summary>
public static class MatVec
{
    /// <summary>Sums of one token over a unit's 4 rows, and its input statistics.</summary>
    private struct Sums
    {
        public float R0, R1, R2, R3, X, XX, Shift;
    }

    public static void FloatRows<TRows, TInput, TEpilogue>(MatVecShape shape, TRows weights, TInput input, GpuNorm norm, TEpilogue epilogue)
        where TRows : struct, IGpuFloatRows
        where TInput : struct, IGpuInput
        where TEpilogue : struct, IGpuEpilogue
    {
        int lanes = shape.Lanes, lane = GpuLaunch.Lane(lanes), k = shape.K, tokens = shape.Tokens;
        int units = shape.Rows / 4, stride = GpuLaunch.Workers(lanes);
        bool normed = norm.Kind != 0;
        for (int unit = GpuLaunch.Worker(lanes); unit < units; unit += stride)
        {
            int row = unit * 4;
            long r0 = (long)row * k;
            for (int t0 = 0; t0 < tokens; t0 += 4)
            {
                bool has1 = t0 + 1 < tokens, has2 = t0 + 2 < tokens, has3 = t0 + 3 < tokens;
                var s0 = new Sums();
                var s1 = new Sums();
                var s2 = new Sums();
                var s3 = new Sums();
                // A layer norm's statistics are taken about the row's first value: no cancellation in Σx² − (Σx)²/K.
                if (norm.Kind == 2)
                {
                    s0.Shift = input.Load(t0, 0);
                    if (has1) s1.Shift = input.Load(t0 + 1, 0);
                    if (has2) s2.Shift = input.Load(t0 + 2, 0);
                    if (has3) s3.Shift = input.Load(t0 + 3, 0);
                }
                for (int c = 2 * lane; c < k; c += 2 * lanes)
                {
                    weights.Pair(r0 + c, out float a0, out float a1);
                    weights.Pair(r0 + k + c, out float b0, out float b1);
                    weights.Pair(r0 + 2 * k + c, out float c0, out float c1);
                    weights.Pair(r0 + 3 * k + c, out float d0, out float d1);
                    float g0 = normed ? norm.Weight[c] : 1f, g1 = normed ? norm.Weight[c + 1] : 1f;
                    Accumulate(ref s0, input, t0, c, g0, g1, normed, a0, a1, b0, b1, c0, c1, d0, d1);
                    if (has1) Accumulate(ref s1, input, t0 + 1, c, g0, g1, normed, a0, a1, b0, b1, c0, c1, d0, d1);
                    if (has2) Accumulate(ref s2, input, t0 + 2, c, g0, g1, normed, a0, a1, b0, b1, c0, c1, d0, d1);
                    if (has3) Accumulate(ref s3, input, t0 + 3, c, g0, g1, normed, a0, a1, b0, b1, c0, c1, d0, d1);
                }
                Finish(ref s0, lanes, lane, row, t0, k, norm, epilogue);
                if (has1) Finish(ref s1, lanes, lane, row, t0 + 1, k, norm, epilogue);
                if (has2) Finish(ref s2, lanes, lane, row, t0 + 2, k, norm, epilogue);
                if (has3) Finish(ref s3, lanes, lane, row, t0 + 3, k, norm, epilogue);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Accumulate<TInput>(ref Sums sums, TInput input, int token, int c, float g0, float g1, bool normed,
        float a0, float a1, float b0, float b1, float c0, float c1, float d0, float d1)
        where TInput : struct, IGpuInput
    {
        float x0 = input.Load(token, c), x1 = input.Load(token, c + 1);
        if (normed)
        {
            float u0 = x0 - sums.Shift, u1 = x1 - sums.Shift;
            sums.X += u0 + u1;
            sums.XX += u0 * u0 + u1 * u1;
        }
        float y0 = x0 * g0, y1 = x1 * g1;
        sums.R0 += a0 * y0 + a1 * y1;
        sums.R1 += b0 * y0 + b1 * y1;
        sums.R2 += c0 * y0 + c1 * y1;
        sums.R3 += d0 * y0 + d1 * y1;
    }

    /// <summary>Folds a token's sums over the lanes, applies the norm, and hands the two pairs to the epilogue.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish<TEpilogue>(ref Sums sums, int lanes, int lane, int row, int token, int k, GpuNorm norm, TEpilogue epilogue)
        where TEpilogue : struct, IGpuEpilogue
    {
        float r0 = GpuLaunch.Sum(sums.R0, lanes), r1 = GpuLaunch.Sum(sums.R1, lanes);
        float r2 = GpuLaunch.Sum(sums.R2, lanes), r3 = GpuLaunch.Sum(sums.R3, lanes);
        if (norm.Kind == 1)
        {
            float scale = GpuMath.ReciprocalSqrt(GpuLaunch.Sum(sums.XX, lanes) / k + norm.Eps);
            r0 *= scale;
            r1 *= scale;
            r2 *= scale;
            r3 *= scale;
        }
        else if (norm.Kind == 2)
        {
            // (x − mean)·σ⁻¹·g + b, summed against W[r]: σ⁻¹·(Σ W·x·g − mean·Σ W·g) + Σ W·b.
            float shifted = GpuLaunch.Sum(sums.X, lanes) / k;
            float variance = GpuMath.Max(GpuLaunch.Sum(sums.XX, lanes) / k - shifted * shifted, 0f);
            float mean = sums.Shift + shifted, scale = GpuMath.ReciprocalSqrt(variance + norm.Eps);
            long at = 2L * row;
            r0 = scale * (r0 - mean * norm.RowSums[at]) + norm.RowSums[at + 1];
            r1 = scale * (r1 - mean * norm.RowSums[at + 2]) + norm.RowSums[at + 3];
            r2 = scale * (r2 - mean * norm.RowSums[at + 4]) + norm.RowSums[at + 5];
            r3 = scale * (r3 - mean * norm.RowSums[at + 6]) + norm.RowSums[at + 7];
        }
        if (lane == 0)
        {
            epilogue.Store(row, token, r0, r1);
            epilogue.Store(row + 2, token, r2, r3);
        }
    }

    /// <summary>Q8_0 weights: per packed row K/4 words of four int8 quants and K/32 float scales.</summary>
    public static void Q8Rows<TEpilogue>(MatVecShape shape, ArrayView<int> quants, ArrayView<float> scales, Q8Activations input, TEpilogue epilogue)
        where TEpilogue : struct, IGpuEpilogue
    {
        int lanes = shape.Lanes, lane = GpuLaunch.Lane(lanes), words = shape.K / 4, blocks = shape.K / 32, tokens = shape.Tokens;
        int units = shape.Rows / 4, stride = GpuLaunch.Workers(lanes);
        for (int unit = GpuLaunch.Worker(lanes); unit < units; unit += stride)
        {
            int row = unit * 4;
            for (int t0 = 0; t0 < tokens; t0 += 4)
            {
                bool has1 = t0 + 1 < tokens, has2 = t0 + 2 < tokens, has3 = t0 + 3 < tokens;
                var s0 = new Sums();
                var s1 = new Sums();
                var s2 = new Sums();
                var s3 = new Sums();
                for (int i = lane; i < words; i += lanes)
                {
                    int b = i >> 3;
                    long w = (long)row * words + i, d = (long)row * blocks + b;
                    int q0 = quants[w], q1 = quants[w + words], q2 = quants[w + 2 * words], q3 = quants[w + 3 * words];
                    float e0 = scales[d], e1 = scales[d + blocks], e2 = scales[d + 2 * blocks], e3 = scales[d + 3 * blocks];
                    AccumulateQ8(ref s0, input, t0, i, b, words, blocks, q0, q1, q2, q3, e0, e1, e2, e3);
                    if (has1) AccumulateQ8(ref s1, input, t0 + 1, i, b, words, blocks, q0, q1, q2, q3, e0, e1, e2, e3);
                    if (has2) AccumulateQ8(ref s2, input, t0 + 2, i, b, words, blocks, q0, q1, q2, q3, e0, e1, e2, e3);
                    if (has3) AccumulateQ8(ref s3, input, t0 + 3, i, b, words, blocks, q0, q1, q2, q3, e0, e1, e2, e3);
                }
                var none = new GpuNorm();
                Finish(ref s0, lanes, lane, row, t0, shape.K, none, epilogue);
                if (has1) Finish(ref s1, lanes, lane, row, t0 + 1, shape.K, none, epilogue);
                if (has2) Finish(ref s2, lanes, lane, row, t0 + 2, shape.K, none, epilogue);
                if (has3) Finish(ref s3, lanes, lane, row, t0 + 3, shape.K, none, epilogue);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AccumulateQ8(ref Sums sums, Q8Activations input, int token, int i, int b, int words, int blocks,
        int q0, int q1, int q2, int q3, float e0, float e1, float e2, float e3)
    {
        int a = input.Quants[(long)token * words + i];
        float scale = input.Scales[(long)token * blocks + b];
        sums.R0 += Dot4(q0, a) * (e0 * scale);
        sums.R1 += Dot4(q1, a) * (e1 * scale);
        sums.R2 += Dot4(q2, a) * (e2 * scale);
        sums.R3 += Dot4(q3, a) * (e3 * scale);
    }

    /// <summary>Σ of the products of the four signed bytes of two words.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Dot4(int x, int y) =>
        (x << 24 >> 24) * (y << 24 >> 24) + (x << 16 >> 24) * (y << 16 >> 24) + (x << 8 >> 24) * (y << 8 >> 24) + (x >> 24) * (y >> 24);

    /// <summary>
    /// Q4_0 weights: per packed row K/8 words (block b's 16 bytes as 4 words: byte j holds element j in its low
    /// nibble and element 16 + j in its high one, both stored as value + 8) and K/32 float scales.
    /// </summary>
    public static void Q4Rows<TEpilogue>(MatVecShape shape, ArrayView<int> quants, ArrayView<float> scales, Q8Activations input, TEpilogue epilogue)
        where TEpilogue : struct, IGpuEpilogue
    {
        int lanes = shape.Lanes, lane = GpuLaunch.Lane(lanes), words = shape.K / 8, blocks = shape.K / 32, tokens = shape.Tokens;
        int units = shape.Rows / 4, stride = GpuLaunch.Workers(lanes);
        for (int unit = GpuLaunch.Worker(lanes); unit < units; unit += stride)
        {
            int row = unit * 4;
            for (int t0 = 0; t0 < tokens; t0 += 4)
            {
                bool has1 = t0 + 1 < tokens, has2 = t0 + 2 < tokens, has3 = t0 + 3 < tokens;
                var s0 = new Sums();
                var s1 = new Sums();
                var s2 = new Sums();
                var s3 = new Sums();
                for (int i = lane; i < words; i += lanes)
                {
                    int b = i >> 2;
                    long w = (long)row * words + i, d = (long)row * blocks + b;
                    int q0 = quants[w], q1 = quants[w + words], q2 = quants[w + 2 * words], q3 = quants[w + 3 * words];
                    float e0 = scales[d], e1 = scales[d + blocks], e2 = scales[d + 2 * blocks], e3 = scales[d + 3 * blocks];
                    AccumulateQ4(ref s0, input, t0, i, b, q0, q1, q2, q3, e0, e1, e2, e3, shape.K);
                    if (has1) AccumulateQ4(ref s1, input, t0 + 1, i, b, q0, q1, q2, q3, e0, e1, e2, e3, shape.K);
                    if (has2) AccumulateQ4(ref s2, input, t0 + 2, i, b, q0, q1, q2, q3, e0, e1, e2, e3, shape.K);
                    if (has3) AccumulateQ4(ref s3, input, t0 + 3, i, b, q0, q1, q2, q3, e0, e1, e2, e3, shape.K);
                }
                var none = new GpuNorm();
                Finish(ref s0, lanes, lane, row, t0, shape.K, none, epilogue);
                if (has1) Finish(ref s1, lanes, lane, row, t0 + 1, shape.K, none, epilogue);
                if (has2) Finish(ref s2, lanes, lane, row, t0 + 2, shape.K, none, epilogue);
                if (has3) Finish(ref s3, lanes, lane, row, t0 + 3, shape.K, none, epilogue);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AccumulateQ4(ref Sums sums, Q8Activations input, int token, int i, int b,
        int q0, int q1, int q2, int q3, float e0, float e1, float e2, float e3, int k)
    {
        // Word i of block b holds elements 4m..4m+3 (low nibbles) and 16+4m..16+4m+3 (high), m = i mod 4.
        int words = k / 4, m = i & 3;
        long at = (long)token * words + 8 * b + m;
        int low = input.Quants[at], high = input.Quants[at + 4];
        float scale = input.Scales[(long)token * (k / 32) + b];
        sums.R0 += Dot8(q0, low, high) * (e0 * scale);
        sums.R1 += Dot8(q1, low, high) * (e1 * scale);
        sums.R2 += Dot8(q2, low, high) * (e2 * scale);
        sums.R3 += Dot8(q3, low, high) * (e3 * scale);
    }

    /// <summary>Σ (n − 8)·a over a word's 8 nibbles n: the low nibbles against <paramref name="low"/>'s bytes, the high ones against <paramref name="high"/>'s.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Dot8(int nibbles, int low, int high)
    {
        int sum = 0;
        for (int j = 0; j < 4; j++)
        {
            int n = nibbles >> (8 * j);
            sum += ((n & 0xF) - 8) * (low << (24 - 8 * j) >> 24) + (((n >> 4) & 0xF) - 8) * (high << (24 - 8 * j) >> 24);
        }
        return sum;
    }

    /// <summary>
    /// A quantized matmul's input: each token's row (through <paramref name="input"/>, normalized as
    /// <paramref name="norm"/> says, with per-row statistics) quantized to Q8 blocks by GGML's rule: d = max|x|/127,
    /// q = round(x/d) halves away from zero, d kept as its nearest fp16 — the CPU plan's rule, bit for bit.
    /// </summary>
    public static void Prepare<TInput>(MatVecShape shape, TInput input, GpuNorm norm, Q8Activations output)
        where TInput : struct, IGpuInput
    {
        int lanes = shape.Lanes, lane = GpuLaunch.Lane(lanes), k = shape.K, blocks = k / 32, words = k / 4;
        int stride = GpuLaunch.Workers(lanes);
        for (int t = GpuLaunch.Worker(lanes); t < shape.Tokens; t += stride)
        {
            // In double, as the CPU plan normalizes before quantizing: a value on a rounding edge lands on the same quant.
            double mean = 0, scale = 1;
            if (norm.Kind != 0)
            {
                float shift = norm.Kind == 2 ? input.Load(t, 0) : 0f;
                double sum = 0, squares = 0;
                for (int c = lane; c < k; c += lanes)
                {
                    double u = input.Load(t, c) - shift;
                    sum += u;
                    squares += u * u;
                }
                sum = SumDouble(sum, lanes) / k;
                squares = SumDouble(squares, lanes) / k;
                if (norm.Kind == 1) scale = 1.0 / Math.Sqrt(squares + norm.Eps);
                else
                {
                    mean = shift + sum;
                    double variance = squares - sum * sum;
                    scale = 1.0 / Math.Sqrt((variance > 0 ? variance : 0) + norm.Eps);
                }
            }
            for (int b = lane; b < blocks; b += lanes)
            {
                float magnitude = 0f;
                for (int e = 0; e < 32; e++) magnitude = GpuMath.Max(magnitude, GpuMath.Abs(Normalized(input, norm, t, 32 * b + e, mean, scale)));
                float d = magnitude / 127f, inverse = d != 0f ? 1f / d : 0f;
                for (int e = 0; e < 32; e += 4)
                {
                    int word = 0;
                    for (int j = 0; j < 4; j++)
                        word |= (GpuMath.RoundAway(Normalized(input, norm, t, 32 * b + e + j, mean, scale) * inverse) & 0xFF) << (8 * j);
                    output.Quants[(long)t * words + 8 * b + e / 4] = word;
                }
                output.Scales[(long)t * blocks + b] = GpuMath.RoundToHalf(d);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static double SumDouble(double value, int lanes)
    {
        for (int offset = lanes / 2; offset > 0; offset /= 2) value += Warp.ShuffleXor(value, offset);
        return value;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Normalized<TInput>(TInput input, GpuNorm norm, int t, int c, double mean, double scale)
        where TInput : struct, IGpuInput
    {
        float x = input.Load(t, c);
        if (norm.Kind == 0) return x;
        double y = (x - mean) * scale * norm.Weight[c];
        return (float)(norm.Kind == 2 && norm.Bias.Length > 0 ? y + norm.Bias[c] : y);
    }
}
