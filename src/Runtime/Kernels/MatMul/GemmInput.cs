using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Kernels.Elementwise;
using Kiln.Kernels.Quantized;
using Kiln.Threading;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// A matmul's input as its kernel reads it, prepared once per matmul and shared by every weight fused into it:
/// float32 rows for the F32/BF16 layouts, Q8 activations in blocks of 32 for Q8_0/Q4_0, or in Q8_K super-blocks for
/// the K-quants (see <see cref="GemmScratch"/>). A plain value over the plan's native memory, so a parallel work
/// struct can carry it.
/// </summary>
public readonly unsafe struct GemmInput
{
    public GemmInput(int tokens, int k, float* floats, int floatStride, byte* quants, int quantStride, bool superBlocks = false)
    {
        Tokens = tokens;
        K = k;
        Floats = floats;
        FloatStride = floatStride;
        Quants = quants;
        QuantStride = quantStride;
        SuperBlocks = superBlocks;
    }

    public int Tokens { get; }

    public int K { get; }

    /// <summary>Token t's K floats start at <c>Floats + t·FloatStride</c> (float layouts; null otherwise).</summary>
    public float* Floats { get; }

    public int FloatStride { get; }

    /// <summary>Token t's Q8 activations start at <c>Quants + t·QuantStride</c> (quantized layouts; null otherwise).</summary>
    public byte* Quants { get; }

    public int QuantStride { get; }

    /// <summary>True when <see cref="Quants"/> holds Q8_K super-blocks (the K-quants' input), false for blocks of 32.</summary>
    public bool SuperBlocks { get; }

    /// <summary>Token <paramref name="token"/>'s Q8 activations (tests, debugging).</summary>
    internal ReadOnlySpan<byte> QuantsOf(int token) => new(Quants + (long)token * QuantStride, QuantStride);
}

/// <summary>
/// Where a plan prepares its matmul inputs, sized once for its largest step and widest input. Preparing fuses a
/// preceding RMSNorm: per token, 1/rms is computed once (in double, as the eager op) and x·(1/rms)·g is written
/// straight into the float rows (F32/BF16 layouts) or quantized straight into Q8 activations (Q8_0/Q4_0 layouts)
/// in the same pass — a norm weight cannot fold into quantized columns without requantizing them.
/// <para>
/// Q8 activations of one token, for Q8_0 and Q4_0: K/32 blocks of 32 quants as they are (the kernels
/// broadcast 4 at a time to the 8 rows of a strip), K/32 int32 offsets 8·Σq (Q4_0 stores n = w + 8, and
/// Σ(n − 8)·q = Σn·q − offset), then K/32 float scales. A block's quants: d = max|x|/127, q = round(x/d) halves away
/// from zero, and d rounded to fp16 — GGML's quantize_row_q8_0 exactly, so llama.cpp and Kiln dot the same numbers.
/// </para>
/// <para>
/// Q8_K activations of one token, for the K-quants: K bytes of quants, each unit of 32 in <see cref="KStrip.Slot"/>
/// order (as the weights are packed), then per super-block of 256 its float scale, its 8 sums of 32 quants and its
/// 16 sums of 16 (int16, in natural order: the mins and Q6_K's −32 come off through them). A super-block's quants:
/// the value of largest magnitude (the first, on a tie) maps to −127, iscale = −127/it, q = min(127, round(iscale·x))
/// to nearest even, d = 1/iscale in float — GGML's quantize_row_q8_K, which llama.cpp's CPU backend runs.
/// </para>
/// </summary>
public sealed unsafe class GemmScratch : IDisposable
{
    private readonly NativeBlock _memory;
    private readonly int _floatStride;
    private readonly long _floatBytes;

    public GemmScratch(int maxTokens, int maxK)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxTokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxK);
        MaxTokens = maxTokens;
        MaxK = maxK;
        _floatStride = (maxK + 15) & ~15;
        _floatBytes = (long)maxTokens * _floatStride * sizeof(float);
        _memory = new NativeBlock(_floatBytes + (long)maxTokens * Math.Max(QuantStride(maxK / 32 * 32), SuperBlockStride(maxK / KStrip.SuperBlockValues * KStrip.SuperBlockValues)));
    }

    public int MaxTokens { get; }

    public int MaxK { get; }

    /// <summary>Bytes of one token's Q8 activations for rows of <paramref name="k"/> elements (a multiple of 64).</summary>
    public static int QuantStride(int k) => ((k / 32) * (32 + sizeof(int) + sizeof(float)) + 63) & ~63;

    /// <summary>Where a token's offsets start in its Q8 activations of <paramref name="blocks"/> blocks (bytes).</summary>
    internal static int OffsetsAt(int blocks) => blocks * 32;

    /// <summary>Where a token's scales start in its Q8 activations of <paramref name="blocks"/> blocks (bytes).</summary>
    internal static int ScalesAt(int blocks) => blocks * (32 + sizeof(int));

    /// <summary>Bytes of one token's Q8_K activations for rows of <paramref name="k"/> elements (a multiple of 64).</summary>
    public static int SuperBlockStride(int k) => (k + k / KStrip.SuperBlockValues * (sizeof(float) + 8 * sizeof(short) + 16 * sizeof(short)) + 63) & ~63;

    /// <summary>Where a token's super-block scales start in its Q8_K activations of <paramref name="superBlocks"/> super-blocks (bytes).</summary>
    internal static int SuperScalesAt(int superBlocks) => superBlocks * KStrip.SuperBlockValues;

    /// <summary>Where a token's sums of 32 start (8 int16 per super-block).</summary>
    internal static int Sums32At(int superBlocks) => superBlocks * (KStrip.SuperBlockValues + sizeof(float));

    /// <summary>Where a token's sums of 16 start (16 int16 per super-block).</summary>
    internal static int Sums16At(int superBlocks) => superBlocks * (KStrip.SuperBlockValues + sizeof(float) + 8 * sizeof(short));

    /// <summary>
    /// Prepares <paramref name="tokens"/> rows of <paramref name="x"/> (token t at <c>t·xStride</c>, K elements) for a
    /// matmul in <paramref name="format"/>, RMS-normalized first when <paramref name="norm"/> is given.
    /// Splits the tokens over <paramref name="pool"/> when there are enough of them.
    /// </summary>
    public GemmInput Prepare(PackedFormat format, FloatBuffer x, int xStride, int tokens, int k, float[]? norm, float eps, WorkerPool pool) =>
        Prepare(format, x, xStride, tokens, k, norm is null ? InputNorm.None : InputNorm.Rms, norm, null, eps, pool);

    /// <summary>
    /// Prepares <paramref name="tokens"/> rows of <paramref name="x"/> (token t at <c>t·xStride</c>, K elements) for a
    /// matmul in <paramref name="format"/>, normalized first as <paramref name="norm"/> says (with its
    /// <paramref name="weight"/>, and <paramref name="bias"/> for a LayerNorm that has one).
    /// </summary>
    // Hot from a plan's first step: compiled optimized at once (tier-0 vector code is many times slower).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public GemmInput Prepare(PackedFormat format, FloatBuffer x, int xStride, int tokens, int k, InputNorm norm, float[]? weight, float[]? bias, float eps, WorkerPool pool)
    {
        if (tokens > 0 && (long)(tokens - 1) * xStride + k > x.Length)
            throw new ArgumentOutOfRangeException(nameof(x), $"{tokens} rows of {k} at stride {xStride} do not fit a buffer of {x.Length}.");
        if (!WeightLayouts.IsQuantized(format) && norm == InputNorm.None)
        {
            Check(format, tokens, k, norm, weight, bias);
            return new GemmInput(tokens, k, x.Pointer, xStride, null, 0); // the kernel reads x itself
        }
        return Prepare(format, new StridedRows(x.Pointer, xStride), tokens, k, norm, weight, bias, eps, pool);
    }

    /// <summary>
    /// Prepares a matmul input whose rows a generated <paramref name="source"/> computes (a fused elementwise chain, or
    /// rows gathered by a row map): each row is written into the float scratch, normalized there as
    /// <paramref name="norm"/> says, then quantized for the quantized layouts.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public GemmInput Prepare<TSource>(PackedFormat format, TSource source, int tokens, int k, InputNorm norm, float[]? weight, float[]? bias, float eps, WorkerPool pool)
        where TSource : struct, IRowSource
    {
        Check(format, tokens, k, norm, weight, bias);
        bool quantized = WeightLayouts.IsQuantized(format), superBlocks = WeightLayouts.IsKQuant(format);
        int quantStride = superBlocks ? SuperBlockStride(k) : QuantStride(k);
        byte* quants = _memory.Pointer + _floatBytes;
        var work = new PrepareWork<TSource>
        {
            Source = source,
            K = k,
            Norm = norm,
            Weight = weight,
            Bias = bias,
            Eps = eps,
            Floats = (float*)_memory.Pointer,
            FloatStride = _floatStride,
            Quants = quantized ? quants : null,
            QuantStride = quantStride,
            SuperBlocks = superBlocks,
        };
        if (tokens >= 8 && pool.ThreadCount > 1) pool.Run(tokens, Math.Max(1, tokens / (4 * pool.ThreadCount)), work);
        else if (tokens > 0) work.Execute(0, tokens);
        return quantized
            ? new GemmInput(tokens, k, null, 0, quants, quantStride, superBlocks)
            : new GemmInput(tokens, k, (float*)_memory.Pointer, _floatStride, null, 0);
    }

    private void Check(PackedFormat format, int tokens, int k, InputNorm norm, float[]? weight, float[]? bias)
    {
        if ((uint)tokens > (uint)MaxTokens || k <= 0 || k > MaxK)
            throw new ArgumentOutOfRangeException(nameof(tokens), $"{tokens} tokens of {k} exceed the scratch's {MaxTokens} of {MaxK}.");
        if (norm != InputNorm.None && (weight is null || weight.Length != k))
            throw new ArgumentException($"A {norm} norm needs a weight of {k}, not {weight?.Length.ToString() ?? "none"}.", nameof(weight));
        if (bias is not null && (norm != InputNorm.Layer || bias.Length != k))
            throw new ArgumentException($"A norm bias of {bias.Length} goes with a LayerNorm over rows of {k}.", nameof(bias));
        if (WeightLayouts.IsQuantized(format) && k % 32 != 0) throw new ArgumentException($"Q8 activations need rows of a multiple of 32, not {k}.", nameof(k));
        if (WeightLayouts.IsKQuant(format) && k % KStrip.SuperBlockValues != 0)
            throw new ArgumentException($"Q8_K activations need rows of a multiple of {KStrip.SuperBlockValues}, not {k}.", nameof(k));
    }

    public void Dispose() => _memory.Dispose();

    /// <summary>Rows of a buffer as they are (token t at <c>t·Stride</c>): read in place, never copied.</summary>
    private readonly struct StridedRows(float* rows, int stride) : IRowSource
    {
        public float* RowAt(int token) => rows + (long)token * stride;

        public void Row(int token, FloatBuffer destination) => new ReadOnlySpan<float>(RowAt(token), destination.Length).CopyTo(destination.Span);
    }

    private struct PrepareWork<TSource> : IParallelWork where TSource : struct, IRowSource
    {
        public TSource Source;
        public int K;
        public InputNorm Norm;
        public float[]? Weight, Bias;
        public float Eps;
        public float* Floats;
        public int FloatStride;
        public byte* Quants;
        public int QuantStride;
        public bool SuperBlocks;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Execute(int start, int end)
        {
            for (int t = start; t < end; t++)
            {
                float* floats = Floats + (long)t * FloatStride;
                float* row;
                if (typeof(TSource) == typeof(StridedRows)) row = Unsafe.As<TSource, StridedRows>(ref Source).RowAt(t); // folded by the JIT: no copy
                else
                {
                    Source.Row(t, new FloatBuffer(floats, K));
                    row = floats;
                }
                if (Norm == InputNorm.Rms) Normalize(row, floats, K, Weight!, Eps);
                else if (Norm == InputNorm.Layer) NormalizeLayer(row, floats, K, Weight!, Bias, Eps);
                if (Norm != InputNorm.None) row = floats;
                if (SuperBlocks) QuantizeSuperBlocks(row, Quants + (long)t * QuantStride, K);
                else if (Quants is not null) Quantize(row, Quants + (long)t * QuantStride, K);
            }
        }
    }

    /// <summary>
    /// y = x·(1/rms)·g with 1/rms = 1/sqrt(Σx²/K + eps) in double and each product rounded as the eager RmsNorm
    /// rounds it: (float)(x·scale·g) in double. <paramref name="y"/> may be <paramref name="x"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Normalize(float* x, float* y, int k, float[] g, float eps)
    {
        double scale = 1.0 / Math.Sqrt(RowStatistics.SumOfSquares(x, k) / k + eps);
        fixed (float* weight = g)
        {
            int i = 0;
            if (KernelPaths.Uses512Bits)
            {
                var s = Vector512.Create(scale);
                for (; i + 16 <= k; i += 16)
                {
                    Vector512<float> v = Vector512.Load(x + i), w = Vector512.Load(weight + i);
                    Vector512<double> lo = Vector512.WidenLower(v) * s * Vector512.WidenLower(w);
                    Vector512<double> hi = Vector512.WidenUpper(v) * s * Vector512.WidenUpper(w);
                    Vector512.Narrow(lo, hi).Store(y + i);
                }
            }
            for (; i < k; i++) y[i] = (float)(x[i] * scale * weight[i]);
        }
    }

    /// <summary>
    /// y = (x − mean)·(1/σ)·g + b with mean and variance in double and each element rounded once, as the eager
    /// LayerNorm rounds it. <paramref name="y"/> may be <paramref name="x"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void NormalizeLayer(float* x, float* y, int k, float[] g, float[]? b, float eps)
    {
        RowStatistics.Moments(x, k, out double mean, out double variance);
        double scale = 1.0 / Math.Sqrt(variance + eps);
        fixed (float* weight = g)
        fixed (float* bias = b)
        {
            int i = 0;
            if (KernelPaths.Uses512Bits)
            {
                Vector512<double> m = Vector512.Create(mean), s = Vector512.Create(scale);
                for (; i + 16 <= k; i += 16)
                {
                    Vector512<float> v = Vector512.Load(x + i), w = Vector512.Load(weight + i);
                    Vector512<float> c = bias is null ? Vector512<float>.Zero : Vector512.Load(bias + i);
                    Vector512<double> lo = (Vector512.WidenLower(v) - m) * s * Vector512.WidenLower(w) + Vector512.WidenLower(c);
                    Vector512<double> hi = (Vector512.WidenUpper(v) - m) * s * Vector512.WidenUpper(w) + Vector512.WidenUpper(c);
                    Vector512.Narrow(lo, hi).Store(y + i);
                }
            }
            for (; i < k; i++) y[i] = (float)((x[i] - mean) * scale * weight[i] + (bias is null ? 0.0 : bias[i]));
        }
    }

    /// <summary>Quantizes one token's K values into its Q8 activations (layout in the class summary).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Quantize(float* x, byte* destination, int k)
    {
        int blocks = k / 32;
        int* offsets = (int*)(destination + OffsetsAt(blocks));
        float* scales = (float*)(destination + ScalesAt(blocks));
        for (int b = 0; b < blocks; b++)
        {
            sbyte* q = (sbyte*)destination + b * 32;
            scales[b] = (float)(Half)QuantizeBlock(x + b * 32, q); // stored as GGML stores it, in fp16: llama.cpp computes with the same d
            offsets[b] = 8 * Sum(q);
        }
    }

    /// <summary>One block's 32 quants into <paramref name="q"/>; returns its scale d.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float QuantizeBlock(float* values, sbyte* q)
    {
        if (KernelPaths.Uses512Bits)
        {
            Vector512<float> low = Vector512.Load(values), high = Vector512.Load(values + 16);
            Vector512<float> magnitudes = Vector512.Max(Vector512.Abs(low), Vector512.Abs(high));
            Vector256<float> folded = Vector256.Max(magnitudes.GetLower(), magnitudes.GetUpper());
            Vector128<float> quarter = Vector128.Max(folded.GetLower(), folded.GetUpper());
            quarter = Vector128.Max(quarter, Vector128.Shuffle(quarter, Vector128.Create(2, 3, 0, 1)));
            float scale = MathF.Max(quarter.GetElement(0), quarter.GetElement(1)) / 127f;
            var inverse = Vector512.Create(scale != 0 ? 1f / scale : 0f);
            Avx512F.ConvertToVector128SByte(Q8Row.RoundHalfAwayFromZero(low * inverse)).Store(q);
            Avx512F.ConvertToVector128SByte(Q8Row.RoundHalfAwayFromZero(high * inverse)).Store(q + 16);
            return scale;
        }
        float absMax = 0;
        for (int i = 0; i < 32; i++) absMax = MathF.Max(absMax, MathF.Abs(values[i]));
        float d = absMax / 127f, reciprocal = d != 0 ? 1f / d : 0f;
        for (int i = 0; i < 32; i++) q[i] = (sbyte)MathF.Round(values[i] * reciprocal, MidpointRounding.AwayFromZero);
        return d;
    }

    // Σq of one block's 32 quants: |Σ| ≤ 32·127 fits the int16 lanes it is widened to.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Sum(sbyte* q)
    {
        if (KernelPaths.UsesVectors)
        {
            (Vector256<short> low, Vector256<short> high) = Vector256.Widen(Vector256.Load(q));
            return Vector256.Sum(low + high);
        }
        int sum = 0;
        for (int i = 0; i < 32; i++) sum += q[i];
        return sum;
    }

    /// <summary>As <see cref="QuantizeSuperBlocks(float*, byte*, int)"/>, from and to managed memory (tests).</summary>
    internal static void QuantizeSuperBlocks(ReadOnlySpan<float> x, Span<byte> destination)
    {
        if (x.Length % KStrip.SuperBlockValues != 0 || destination.Length < SuperBlockStride(x.Length))
            throw new ArgumentException($"{x.Length} values do not fit whole super-blocks in {destination.Length} bytes.", nameof(destination));
        fixed (float* values = x)
        fixed (byte* bytes = destination)
            QuantizeSuperBlocks(values, bytes, x.Length);
    }

    /// <summary>Quantizes one token's K values into its Q8_K activations (layout in the class summary).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void QuantizeSuperBlocks(float* x, byte* destination, int k)
    {
        int superBlocks = k / KStrip.SuperBlockValues;
        float* scales = (float*)(destination + SuperScalesAt(superBlocks));
        short* sums32 = (short*)(destination + Sums32At(superBlocks));
        short* sums16 = (short*)(destination + Sums16At(superBlocks));
        for (int b = 0; b < superBlocks; b++)
            scales[b] = QuantizeSuperBlock(x + b * KStrip.SuperBlockValues, (sbyte*)destination + b * KStrip.SuperBlockValues, sums32 + 8 * b, sums16 + 16 * b);
    }

    /// <summary>One super-block of 256 values into its quants (in slot order) and sums; returns its scale d.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float QuantizeSuperBlock(float* values, sbyte* q, short* sums32, short* sums16)
    {
        // The value of largest magnitude, the first one on a tie: its sign decides the scale's.
        float extreme;
        if (KernelPaths.Uses512Bits)
        {
            var largest = Vector512<float>.Zero;
            for (int i = 0; i < KStrip.SuperBlockValues; i += 16) largest = Vector512.Max(largest, Vector512.Abs(Vector512.Load(values + i)));
            float magnitude = MaxOf(Vector256.Max(largest.GetLower(), largest.GetUpper()));
            int at = 0;
            var target = Vector512.Create(magnitude);
            while (Vector512.Equals(Vector512.Abs(Vector512.Load(values + at)), target) == Vector512<float>.Zero) at += 16;
            at += BitOperations.TrailingZeroCount(Vector512.Equals(Vector512.Abs(Vector512.Load(values + at)), target).ExtractMostSignificantBits());
            extreme = magnitude == 0 ? 0 : values[at];
        }
        else
        {
            float magnitude = 0;
            extreme = 0;
            for (int i = 0; i < KStrip.SuperBlockValues; i++)
            {
                if (MathF.Abs(values[i]) > magnitude)
                {
                    magnitude = MathF.Abs(values[i]);
                    extreme = values[i];
                }
            }
        }
        if (extreme == 0)
        {
            new Span<byte>(q, KStrip.SuperBlockValues).Clear();
            new Span<short>(sums32, 8).Clear();
            new Span<short>(sums16, 16).Clear();
            return 0;
        }
        float iscale = -127f / extreme;
        for (int unit = 0; unit < KStrip.Units; unit++)
        {
            float* x = values + 32 * unit;
            sbyte* destination = q + 32 * unit;
            int sumA = 0, sumB = 0;
            if (KernelPaths.Uses512Bits)
            {
                // Rounded to nearest even (vcvtps2dq), as GGML's nearest_int; then A's and B's pairs interleaved (slot order).
                var scale = Vector512.Create(iscale);
                Vector512<int> a = Vector512.Min(Avx512F.ConvertToVector512Int32(Vector512.Load(x) * scale), Vector512.Create(127));
                Vector512<int> b = Vector512.Min(Avx512F.ConvertToVector512Int32(Vector512.Load(x + 16) * scale), Vector512.Create(127));
                sumA = Vector512.Sum(a);
                sumB = Vector512.Sum(b);
                Vector128<short> first = Avx512F.ConvertToVector128SByte(a).AsInt16(), second = Avx512F.ConvertToVector128SByte(b).AsInt16();
                Sse2.UnpackLow(first, second).AsSByte().Store(destination);
                Sse2.UnpackHigh(first, second).AsSByte().Store(destination + 16);
            }
            else
            {
                for (int i = 0; i < 32; i++)
                {
                    int value = Math.Min(127, (int)MathF.Round(iscale * x[i], MidpointRounding.ToEven));
                    destination[KStrip.Slot(i)] = (sbyte)value;
                    if (i < 16) sumA += value;
                    else sumB += value;
                }
            }
            sums16[2 * unit] = (short)sumA;
            sums16[2 * unit + 1] = (short)sumB;
            sums32[unit] = (short)(sumA + sumB);
        }
        return 1 / iscale;
    }

    private static float MaxOf(Vector256<float> values)
    {
        Vector128<float> half = Vector128.Max(values.GetLower(), values.GetUpper());
        half = Vector128.Max(half, Vector128.Shuffle(half, Vector128.Create(2, 3, 0, 1)));
        return MathF.Max(half.GetElement(0), half.GetElement(1));
    }
}

/// <summary>The norm a matmul's input preparation applies to each row before the weights read it.</summary>
public enum InputNorm
{
    None,

    /// <summary>x·(1/rms)·g.</summary>
    Rms,

    /// <summary>(x − mean)·(1/σ)·g (+ b).</summary>
    Layer,
}

/// <summary>
/// Where a matmul's input rows come from when they are not a buffer's rows as they are: the generated plan implements
/// it for an elementwise chain fused into the input preparation (or rows gathered by a row map), writing token t's K
/// floats into <c>destination</c>, which the preparation then normalizes and quantizes in place.
/// </summary>
public interface IRowSource
{
    void Row(int token, FloatBuffer destination);
}
