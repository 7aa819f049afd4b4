using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.Quantized;

/// <summary>
/// The float input of one matmul, quantized ONCE into Q8 blocks that every weight row then dots against (ggml
/// quantizes <c>src1</c> to <c>vec_dot_type</c> into the plan's work buffer the same way). Per token: K int8
/// values and, per block of 32, a scale d (value ≈ d·q). Quants and scales match <see cref="Q8_0.QuantizeRow"/> bit
/// for bit: d is rounded to fp16 as GGML stores it, then held as a float. A view over caller-provided scratch: nothing allocates.
/// </summary>
public readonly ref struct Q8Activations
{
    private readonly Span<sbyte> _quants; // [Tokens, K]
    private readonly Span<float> _scales; // [Tokens, K/32]

    /// <summary>Lays out <paramref name="tokens"/> rows of <paramref name="k"/> activations over <paramref name="scratch"/> (at least <see cref="ScratchBytes"/> bytes).</summary>
    public Q8Activations(Span<byte> scratch, int tokens, int k)
    {
        int blocks = Blocks.Count(k);
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        Blocks.CheckAtLeast(scratch.Length, ScratchBytes(tokens, k), nameof(scratch), "The scratch buffer");
        int quantBytes = tokens * k, scaleBytes = tokens * blocks * sizeof(float);
        _quants = MemoryMarshal.Cast<byte, sbyte>(scratch[..quantBytes]);
        _scales = MemoryMarshal.Cast<byte, float>(scratch.Slice(quantBytes, scaleBytes));
        Tokens = tokens;
        K = k;
    }

    private Q8Activations(Span<sbyte> quants, Span<float> scales, int tokens, int k)
    {
        _quants = quants;
        _scales = scales;
        Tokens = tokens;
        K = k;
    }

    /// <summary>Bytes of scratch that <paramref name="tokens"/> rows of <paramref name="k"/> activations take: K + 4·K/32 per token.</summary>
    public static int ScratchBytes(int tokens, int k) =>
        checked(tokens * (k + Blocks.Count(k) * sizeof(float)));

    /// <summary>Quantizes <paramref name="x"/>, [tokens, K] row-major, into <paramref name="scratch"/> on the active path.</summary>
    public static Q8Activations Quantize(ReadOnlySpan<float> x, int tokens, int k, Span<byte> scratch) =>
        Quantize(x, tokens, k, scratch, KernelPaths.Active);

    /// <summary>Quantizes <paramref name="x"/>, [tokens, K] row-major, into <paramref name="scratch"/> on <paramref name="path"/>.</summary>
    public static Q8Activations Quantize(ReadOnlySpan<float> x, int tokens, int k, Span<byte> scratch, KernelPath path)
    {
        var activations = new Q8Activations(scratch, tokens, k);
        Blocks.CheckLength(x.Length, tokens * k, nameof(x), "The activation block");
        for (int token = 0; token < tokens; token++)
            activations.QuantizeToken(token, x.Slice(token * k, k), path);
        return activations;
    }

    /// <summary>Quantizes one token's K activations into row <paramref name="token"/> (lets a driver split the work by tokens).</summary>
    public void QuantizeToken(int token, ReadOnlySpan<float> x, KernelPath path)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)token, (uint)Tokens, nameof(token));
        int blocks = K / Blocks.Size;
        Q8Row.Quantize(x, _quants.Slice(token * K, K), _scales.Slice(token * blocks, blocks), path);
    }

    /// <summary>Number of tokens (rows).</summary>
    public int Tokens { get; }

    /// <summary>Elements per token, a multiple of 32.</summary>
    public int K { get; }

    /// <summary>Blocks of 32 per token.</summary>
    public int BlocksPerToken => K / Blocks.Size;

    /// <summary>All quants, [Tokens, K].</summary>
    public ReadOnlySpan<sbyte> Quants => _quants;

    /// <summary>All block scales, [Tokens, K/32].</summary>
    public ReadOnlySpan<float> Scales => _scales;

    /// <summary>The quantized row of one token.</summary>
    public Q8Row this[int token]
    {
        get
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)token, (uint)Tokens, nameof(token));
            int blocks = BlocksPerToken;
            return new Q8Row(_quants.Slice(token * K, K), _scales.Slice(token * blocks, blocks));
        }
    }

    /// <summary>Tokens [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) as a view of their own.</summary>
    public Q8Activations Slice(int start, int count)
    {
        if ((uint)start > (uint)Tokens || (uint)count > (uint)(Tokens - start))
            throw new ArgumentOutOfRangeException(nameof(count), $"Tokens [{start}, {start}+{count}) are not within the {Tokens} tokens.");
        int blocks = BlocksPerToken;
        return new Q8Activations(_quants.Slice(start * K, count * K), _scales.Slice(start * blocks, count * blocks), count, K);
    }
}

/// <summary>One token's Q8 activations: K quants and, per block of 32, a float scale.</summary>
public readonly ref struct Q8Row
{
    /// <summary>Wraps already quantized data; the lengths must agree (K and K/32).</summary>
    public Q8Row(ReadOnlySpan<sbyte> quants, ReadOnlySpan<float> scales)
    {
        int blocks = Blocks.Count(quants.Length, nameof(quants));
        Blocks.CheckLength(scales.Length, blocks, nameof(scales), "The scales");
        Quants = quants;
        Scales = scales;
    }

    /// <summary>K int8 values.</summary>
    public ReadOnlySpan<sbyte> Quants { get; }

    /// <summary>Per block: d, with value ≈ d·q.</summary>
    public ReadOnlySpan<float> Scales { get; }

    /// <summary>Elements in the row.</summary>
    public int K => Quants.Length;

    /// <summary>
    /// Quantizes K floats the way ggml's <c>quantize_row_q8_0_ref</c> does (d = max|x|/127, q = round(x/d) with
    /// halves away from zero) but keeps d in float32. Inputs must be finite.
    /// </summary>
    public static void Quantize(ReadOnlySpan<float> x, Span<sbyte> quants, Span<float> scales, KernelPath path)
    {
        int blocks = Blocks.Count(x.Length, nameof(x));
        Blocks.CheckLength(quants.Length, x.Length, nameof(quants), "The quants");
        Blocks.CheckLength(scales.Length, blocks, nameof(scales), "The scales");
        switch (path)
        {
            case KernelPath.Scalar:
                QuantizeScalar(x, quants, scales);
                break;
            case KernelPath.Avx2 or KernelPath.AvxVnni when KernelPaths.IsSupported(path):
                QuantizeAvx2(x, quants, scales);
                break;
            case KernelPath.Avx512BW when KernelPaths.IsSupported(path):
                QuantizeAvx512(x, quants, scales);
                break;
            default:
                throw KernelPaths.Unsupported(path);
        }
    }

    private static void QuantizeScalar(ReadOnlySpan<float> x, Span<sbyte> quants, Span<float> scales)
    {
        for (int block = 0; block < scales.Length; block++)
        {
            var values = x.Slice(block * Blocks.Size, Blocks.Size);
            float absMax = 0;
            foreach (float value in values) absMax = MathF.Max(absMax, MathF.Abs(value));
            float scale = absMax / 127f;
            float inverse = scale != 0 ? 1f / scale : 0f;
            for (int i = 0; i < Blocks.Size; i++)
                quants[block * Blocks.Size + i] = (sbyte)MathF.Round(values[i] * inverse, MidpointRounding.AwayFromZero);
            scales[block] = (float)(Half)scale; // kept as GGML keeps it
        }
    }

    private static unsafe void QuantizeAvx512(ReadOnlySpan<float> x, Span<sbyte> quants, Span<float> scales)
    {
        fixed (float* source = x)
        fixed (sbyte* q = quants)
        {
            for (int block = 0; block < scales.Length; block++)
            {
                float* values = source + block * Blocks.Size;
                Vector512<float> low = Vector512.Load(values), high = Vector512.Load(values + 16);
                Vector512<float> magnitudes = Vector512.Max(Vector512.Abs(low), Vector512.Abs(high));
                Vector256<float> folded = Vector256.Max(magnitudes.GetLower(), magnitudes.GetUpper());
                float scale = MaxAcross(Vector128.Max(folded.GetLower(), folded.GetUpper())) / 127f;
                var inverse = Vector512.Create(scale != 0 ? 1f / scale : 0f);
                Vector512<int> qLow = RoundHalfAwayFromZero(low * inverse), qHigh = RoundHalfAwayFromZero(high * inverse);
                Avx512F.ConvertToVector128SByte(qLow).Store(q + block * Blocks.Size);
                Avx512F.ConvertToVector128SByte(qHigh).Store(q + block * Blocks.Size + 16);
                scales[block] = (float)(Half)scale; // kept as GGML keeps it
            }
        }
    }

    private static unsafe void QuantizeAvx2(ReadOnlySpan<float> x, Span<sbyte> quants, Span<float> scales)
    {
        fixed (float* source = x)
        fixed (sbyte* q = quants)
        {
            for (int block = 0; block < scales.Length; block++)
            {
                float* values = source + block * Blocks.Size;
                Vector256<float> v0 = Vector256.Load(values), v1 = Vector256.Load(values + 8);
                Vector256<float> v2 = Vector256.Load(values + 16), v3 = Vector256.Load(values + 24);
                Vector256<float> magnitudes = Vector256.Max(
                    Vector256.Max(Vector256.Abs(v0), Vector256.Abs(v1)), Vector256.Max(Vector256.Abs(v2), Vector256.Abs(v3)));
                float scale = MaxAcross(Vector128.Max(magnitudes.GetLower(), magnitudes.GetUpper())) / 127f;
                var inverse = Vector256.Create(scale != 0 ? 1f / scale : 0f);
                Vector256<int> q0 = RoundHalfAwayFromZero(v0 * inverse), q1 = RoundHalfAwayFromZero(v1 * inverse);
                Vector256<int> q2 = RoundHalfAwayFromZero(v2 * inverse), q3 = RoundHalfAwayFromZero(v3 * inverse);
                // Narrow keeps element order (the JIT fixes up vpackssdw's lane interleave); |q| ≤ 127 so nothing saturates.
                Vector256<sbyte> packed = Vector256.Narrow(Vector256.Narrow(q0, q1), Vector256.Narrow(q2, q3));
                packed.Store(q + block * Blocks.Size);
                scales[block] = (float)(Half)scale; // kept as GGML keeps it
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float MaxAcross(Vector128<float> v)
    {
        v = Vector128.Max(v, Vector128.Shuffle(v, Vector128.Create(2, 3, 0, 1)));
        return MathF.Max(v.GetElement(0), v.GetElement(1));
    }

    // C's roundf: halves go away from zero, which the vector round instructions (ties to even) do not do.
    // x − trunc(x) is exact for every float, so the tie test is exact too. Shared with the GEMM's activation packing.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<int> RoundHalfAwayFromZero(Vector512<float> x)
    {
        Vector512<float> truncated = Vector512.Truncate(x);
        Vector512<float> awayStep = Vector512.GreaterThanOrEqual(Vector512.Abs(x - truncated), Vector512.Create(0.5f))
            & Vector512.CopySign(Vector512<float>.One, x);
        return Vector512.ConvertToInt32(truncated + awayStep);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> RoundHalfAwayFromZero(Vector256<float> x)
    {
        Vector256<float> truncated = Vector256.Truncate(x);
        Vector256<float> awayStep = Vector256.GreaterThanOrEqual(Vector256.Abs(x - truncated), Vector256.Create(0.5f))
            & Vector256.CopySign(Vector256<float>.One, x);
        return Vector256.ConvertToInt32(truncated + awayStep);
    }
}
