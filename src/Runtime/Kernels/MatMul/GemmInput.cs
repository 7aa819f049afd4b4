using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Kernels.Elementwise;
using Kiln.Kernels.Quantized;
using Kiln.Threading;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// A matmul's input as its kernel reads it, prepared once per matmul and shared by every weight fused into it:
/// float32 rows for the F32/BF16 layouts, or Q8 activations for Q8_0/Q4_0 (see <see cref="GemmScratch"/>).
/// A plain value over the plan's native memory, so a parallel work struct can carry it.
/// </summary>
public readonly unsafe struct GemmInput
{
    public GemmInput(int tokens, int k, float* floats, int floatStride, byte* quants, int quantStride)
    {
        Tokens = tokens;
        K = k;
        Floats = floats;
        FloatStride = floatStride;
        Quants = quants;
        QuantStride = quantStride;
    }

    public int Tokens { get; }

    public int K { get; }

    /// <summary>Token t's K floats start at <c>Floats + t·FloatStride</c> (float layouts; null otherwise).</summary>
    public float* Floats { get; }

    public int FloatStride { get; }

    /// <summary>Token t's Q8 activations start at <c>Quants + t·QuantStride</c> (quantized layouts; null otherwise).</summary>
    public byte* Quants { get; }

    public int QuantStride { get; }
}

/// <summary>
/// Where a plan prepares its matmul inputs, sized once for its largest step and widest input. Preparing fuses a
/// preceding RMSNorm: per token, 1/rms is computed once (in double, as the eager op) and x·(1/rms)·g is written
/// straight into the float rows (F32/BF16 layouts) or quantized straight into Q8 activations (Q8_0/Q4_0 layouts)
/// in the same pass — a norm weight cannot fold into quantized columns without requantizing them.
/// <para>
/// Q8 activations of one token, for both quantized layouts: K/32 blocks of 32 quants as they are (the kernels
/// broadcast 4 at a time to the 8 rows of a strip), K/32 int32 offsets 8·Σq (Q4_0 stores n = w + 8, and
/// Σ(n − 8)·q = Σn·q − offset), then K/32 float scales. A block's quants: d = max|x|/127, q = round(x/d) halves away
/// from zero, and d rounded to fp16 — GGML's quantize_row_q8_0 exactly, so llama.cpp and Kiln dot the same numbers.
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
        _memory = new NativeBlock(_floatBytes + (long)maxTokens * QuantStride(maxK / 32 * 32));
    }

    public int MaxTokens { get; }

    public int MaxK { get; }

    /// <summary>Bytes of one token's Q8 activations for rows of <paramref name="k"/> elements (a multiple of 64).</summary>
    public static int QuantStride(int k) => ((k / 32) * (32 + sizeof(int) + sizeof(float)) + 63) & ~63;

    /// <summary>Where a token's offsets start in its Q8 activations of <paramref name="blocks"/> blocks (bytes).</summary>
    internal static int OffsetsAt(int blocks) => blocks * 32;

    /// <summary>Where a token's scales start in its Q8 activations of <paramref name="blocks"/> blocks (bytes).</summary>
    internal static int ScalesAt(int blocks) => blocks * (32 + sizeof(int));

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
        bool quantized = WeightLayouts.IsQuantized(format);
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
            QuantStride = QuantStride(k),
        };
        if (tokens >= 8 && pool.ThreadCount > 1) pool.Run(tokens, Math.Max(1, tokens / (4 * pool.ThreadCount)), work);
        else if (tokens > 0) work.Execute(0, tokens);
        return quantized
            ? new GemmInput(tokens, k, null, 0, quants, QuantStride(k))
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
                if (Quants is not null) Quantize(row, Quants + (long)t * QuantStride, K);
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
