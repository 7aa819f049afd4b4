using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Kernels.Quantized;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// The matmul kernels of compiled plans: y[t, r] = Σ_k W[r, k]·x[t, k] over a range of 4-row groups of a
/// <see cref="PackedMatrix"/> and every token of a <see cref="GemmInput"/>, each finished 4-row × 1-token tile handed
/// to the plan's epilogue. One entry per layout; a work item of the plan's worker pool calls one with its range of
/// groups. Inside, tokens go in tiles (F32: up to 6 tokens × 64 rows, outer products over panels of 16 rows,
/// <see cref="PanelKernels"/>; BF16: 4 × 4; the quantized layouts: 8 tokens × 8-row strips, <see cref="StripKernels"/>),
/// so each weight block is read once per token tile, and the activations of a token tile are reused by every group
/// of the range.
/// <para>
/// Every token's sums are computed by the same operations in the same order whatever its tile and whatever the
/// range, so results do not depend on how the groups were split over threads. Each layout has a SIMD form (F32:
/// AVX-512 and AVX2; BF16: AVX-512; the quantized ones AVX2, which every wider path runs too) and a scalar one, the
/// oracle; <see cref="KernelPaths.Active"/> picks between them once per call.
/// </para>
/// </summary>
public static unsafe class Gemm
{
    /// <summary>
    /// Tokens per tile of the F32 AVX-512 kernel, which runs a block's tiles token by token over the same rows: an
    /// epilogue handed token t's sums may prefetch what it will read for token t + F32TileTokens, one tile ahead.
    /// </summary>
    public const int F32TileTokens = PanelKernels.TileTokens;

    /// <summary>
    /// Groups per work item for a pool of <paramref name="threads"/>: about eight items per thread so fast threads
    /// take more, never so small that claiming an item costs more than computing it.
    /// </summary>
    public static int ChunkSize(PackedMatrix weights, int tokens, int threads)
    {
        ArgumentNullException.ThrowIfNull(weights);
        int groups = weights.Groups;
        // F32 is stored in panels of 4 groups: items of whole panels, and with many tokens up to 4 of them (the widest
        // tile), about four items per thread.
        if (weights.Format == PackedFormat.F32 && tokens >= 16)
            return Math.Min(groups, Math.Clamp((groups / (4 * Math.Max(1, threads)) + 3) & ~3, 4, 16));
        int chunk;
        // Many tokens: 8 groups per item keep a tile's weights in L1 across every token tile, whatever the threads.
        if (threads <= 1) chunk = tokens >= 16 ? Math.Min(8, groups) : groups;
        else
        {
            int perThread = (groups + 8 * threads - 1) / (8 * threads);
            // One group at one token is ~K·4 multiply-adds; keep an item above ~16K of them.
            long work = (long)weights.K * 4 * Math.Max(1, tokens);
            int minimum = (int)Math.Clamp(16384 / Math.Max(1, work), 1, 64);
            chunk = Math.Clamp(Math.Max(perThread, minimum), 1, tokens >= 16 ? 8 : groups);
        }
        // Whole strips per item (quantized layouts: pairs of groups; F32: panels of four), so no strip is split between two.
        int strip = weights.StripRows / 4;
        return Math.Min(groups, (chunk + strip - 1) / strip * strip);
    }

    /// <summary>F32 panels of 16 rows against float32 activations (<see cref="PanelKernels"/>).</summary>
    public static void F32<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
        => F32(weights, input, firstGroup, endGroup, 0, input.Tokens, ref epilogue);

    /// <summary>
    /// As <see cref="F32{TEpilogue}(PackedMatrix, in GemmInput, int, int, ref TEpilogue)"/> for the input's tokens
    /// [<paramref name="firstToken"/>, <paramref name="endToken"/>) only (a <see cref="GemmBlocks"/> work item): the
    /// epilogue still gets each token's index in the whole input.
    /// </summary>
    public static void F32<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, int firstToken, int endToken, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        Check(weights, PackedFormat.F32, input, firstGroup, endGroup, quantized: false);
        if ((uint)firstToken > (uint)endToken || endToken > input.Tokens)
            throw new ArgumentOutOfRangeException(nameof(endToken), $"Tokens [{firstToken}, {endToken}) are not within the input's {input.Tokens}.");
        if (KernelPaths.Uses512Bits) PanelKernels.Run512(weights, input, firstGroup, endGroup, firstToken, endToken, ref epilogue);
        else if (KernelPaths.UsesVectors) PanelKernels.Run256(weights, input, firstGroup, endGroup, firstToken, endToken, ref epilogue);
        else Reference.Run(weights, input, firstGroup, endGroup, ref epilogue, firstToken, endToken);
    }

    /// <summary>BF16x4 groups against float32 activations (each weight widened exactly).</summary>
    public static void BF16<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        Check(weights, PackedFormat.BF16, input, firstGroup, endGroup, quantized: false);
        if (KernelPaths.Uses512Bits) FloatKernels.Run<FloatKernels.BF16Rows, TEpilogue>(weights, input, firstGroup, endGroup, ref epilogue);
        else Reference.Run(weights, input, firstGroup, endGroup, ref epilogue);
    }

    /// <summary>Q8_0 groups against Q8 activations.</summary>
    public static void Q8_0<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        Check(weights, PackedFormat.Q8_0, input, firstGroup, endGroup, quantized: true);
        if (weights.Sparsity != SparsePattern.None)
        {
            if (!weights.IsCompacted) throw new InvalidOperationException("A sparse matrix is read after FinishPacking has built its layout.");
            if (!KernelPaths.UsesVectors) Reference.Run(weights, input, firstGroup, endGroup, ref epilogue);
            else if (weights.Sparsity == SparsePattern.TwoFour) SparseKernels.Run<SparseKernels.TwoFourBlock, TEpilogue>(weights, input, firstGroup, endGroup, ref epilogue);
            else SparseKernels.Run<SparseKernels.DenseBlock, TEpilogue>(weights, input, firstGroup, endGroup, ref epilogue);
        }
        else if (KernelPaths.UsesVectors) StripKernels.Run<StripKernels.Q8Block, TEpilogue>(weights, input, firstGroup, endGroup, ref epilogue);
        else Reference.Run(weights, input, firstGroup, endGroup, ref epilogue);
    }

    /// <summary>Q4_0 groups against Q8 activations.</summary>
    public static void Q4_0<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        Check(weights, PackedFormat.Q4_0, input, firstGroup, endGroup, quantized: true);
        if (KernelPaths.UsesVectors) StripKernels.Run<StripKernels.Q4Block, TEpilogue>(weights, input, firstGroup, endGroup, ref epilogue);
        else Reference.Run(weights, input, firstGroup, endGroup, ref epilogue);
    }

    /// <summary>
    /// K-quant groups (Q4_K, Q5_K, Q6_K) against Q8_K activations: each segment of the range by the kernel of its own
    /// type (a mixed fused matrix keeps every weight as stored); groups no weight was packed into give zeros.
    /// </summary>
    public static void KQuants<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        ArgumentNullException.ThrowIfNull(weights);
        if (!WeightLayouts.IsKQuant(weights.Format)) throw new ArgumentException($"A {weights.Format} matrix given to the K-quant kernels.", nameof(weights));
        Check(weights, weights.Format, input, firstGroup, endGroup, quantized: true);
        var segments = weights.Segments;
        int g = firstGroup;
        for (int i = 0; i < segments.Count && g < endGroup; i++)
        {
            var segment = segments[i];
            if (segment.EndGroup <= g) continue;
            if (segment.FirstGroup >= endGroup) break;
            if (segment.FirstGroup > g) Zeros(input, g, segment.FirstGroup, ref epilogue);
            int first = Math.Max(g, segment.FirstGroup), end = Math.Min(endGroup, segment.EndGroup);
            if (!KernelPaths.UsesVectors) Reference.RunK(segment, weights.K, input, first, end, ref epilogue);
            else if (segment.Format == PackedFormat.Q4_K) KStripKernels.Run<KStripKernels.Q4KUnit, TEpilogue>(segment, weights.K, input, first, end, ref epilogue);
            else if (segment.Format == PackedFormat.Q5_K) KStripKernels.Run<KStripKernels.Q5KUnit, TEpilogue>(segment, weights.K, input, first, end, ref epilogue);
            else KStripKernels.Run<KStripKernels.Q6KUnit, TEpilogue>(segment, weights.K, input, first, end, ref epilogue);
            g = end;
        }
        if (g < endGroup) Zeros(input, g, endGroup, ref epilogue);
    }

    /// <summary>Any layout, by <see cref="PackedMatrix.Format"/>.</summary>
    public static void Run<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        ArgumentNullException.ThrowIfNull(weights);
        switch (weights.Format)
        {
            case PackedFormat.F32: F32(weights, input, firstGroup, endGroup, ref epilogue); break;
            case PackedFormat.BF16: BF16(weights, input, firstGroup, endGroup, ref epilogue); break;
            case PackedFormat.Q8_0: Q8_0(weights, input, firstGroup, endGroup, ref epilogue); break;
            case PackedFormat.Q4_0: Q4_0(weights, input, firstGroup, endGroup, ref epilogue); break;
            default: KQuants(weights, input, firstGroup, endGroup, ref epilogue); break;
        }
    }

    /// <summary>Zero sums for groups that hold no weight (a K-quant matrix's unpacked rows), so every tile still reaches the epilogue.</summary>
    private static void Zeros<TEpilogue>(in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue) where TEpilogue : struct, ITileEpilogue
    {
        for (int g = firstGroup; g < endGroup; g++)
            for (int t = 0; t < input.Tokens; t++) epilogue.Store(g * 4, t, Vector128<float>.Zero);
    }

    private static void Check(PackedMatrix weights, PackedFormat format, in GemmInput input, int firstGroup, int endGroup, bool quantized)
    {
        ArgumentNullException.ThrowIfNull(weights);
        if (weights.Format != format) throw new ArgumentException($"A {weights.Format} matrix given to the {format} kernel.", nameof(weights));
        if (input.K != weights.K) throw new ArgumentException($"Input rows of {input.K} for weights of {weights.K}.", nameof(input));
        if (quantized ? input.Quants is null || input.SuperBlocks != WeightLayouts.IsKQuant(format) : input.Floats is null)
            throw new ArgumentException($"The input was not prepared for the {format} layout.", nameof(input));
        if ((uint)firstGroup > (uint)endGroup || endGroup > weights.Groups)
            throw new ArgumentOutOfRangeException(nameof(endGroup), $"Groups [{firstGroup}, {endGroup}) are not within {weights.Groups}.");
    }
}

/// <summary>A JIT-time constant count (tokens or groups in a tile): the unused accumulators fold away.</summary>
internal interface ICount
{
    static abstract int Value { get; }
}

internal readonly struct One : ICount { public static int Value => 1; }
internal readonly struct Two : ICount { public static int Value => 2; }
internal readonly struct Three : ICount { public static int Value => 3; }
internal readonly struct Four : ICount { public static int Value => 4; }
internal readonly struct Five : ICount { public static int Value => 5; }
internal readonly struct Six : ICount { public static int Value => 6; }
internal readonly struct Seven : ICount { public static int Value => 7; }
internal readonly struct Eight : ICount { public static int Value => 8; }

/// <summary>The oracle: each (row, token) as a plain loop, block by block as the format defines it.</summary>
internal static unsafe class Reference
{
    public static void Run<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue,
        int firstToken = 0, int endToken = -1)
        where TEpilogue : struct, ITileEpilogue
    {
        float* sums = stackalloc float[4];
        if (endToken < 0) endToken = input.Tokens;
        for (int g = firstGroup; g < endGroup; g++)
        {
            byte* strip = weights.IsCompacted ? null : weights.StripOf(g * 4);
            int first = g * 4 % weights.StripRows; // the group's first row within its strip
            for (int t = firstToken; t < endToken; t++)
            {
                for (int r = 0; r < 4; r++) sums[r] = weights.IsCompacted ? SparseRow(weights, g * 4 + r, input, t) : Row(weights, strip, first + r, input, t);
                epilogue.Store(g * 4, t, Vector128.Load(sums));
            }
        }
    }

    /// <summary>K-quant groups [firstGroup, endGroup) of one segment: per sub-block Σ q·a in integers, scaled as the format defines.</summary>
    public static void RunK<TEpilogue>(KSegment segment, int k, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        float* sums = stackalloc float[4];
        for (int g = firstGroup; g < endGroup; g++)
            for (int t = 0; t < input.Tokens; t++)
            {
                for (int r = 0; r < 4; r++) sums[r] = RowK(segment, k, g * 4 + r, input, t);
                epilogue.Store(g * 4, t, Vector128.Load(sums));
            }
    }

    private static float RowK(KSegment segment, int k, int row, in GemmInput input, int t)
    {
        var format = segment.Format;
        bool six = format == PackedFormat.Q6_K;
        int superBlocks = k / KStrip.SuperBlockValues, r = segment.RowInStrip(row), length = six ? 16 : 32;
        byte* strip = segment.StripOf(row);
        byte* x = input.Quants + (long)t * input.QuantStride;
        float* activationScales = (float*)(x + GemmScratch.SuperScalesAt(superBlocks));
        float sum = 0;
        for (int b = 0; b < superBlocks; b++)
        {
            byte* s = strip + (long)b * KStrip.SuperBytes(format);
            int scaled = 0, offsets = 0;
            for (int j = 0; j < KStrip.SuperBlockValues / length; j++)
            {
                int dot = 0, activations = 0;
                for (int i = j * length; i < (j + 1) * length; i++)
                {
                    int a = (sbyte)x[b * KStrip.SuperBlockValues + i / 32 * 32 + KStrip.Slot(i % 32)];
                    dot += KStrip.Quant(s, format, r, i) * a;
                    activations += a;
                }
                if (six) scaled += KStrip.Scale(s, format, r, j) * (dot - 32 * activations);
                else
                {
                    scaled += KStrip.Scale(s, format, r, j) * dot;
                    offsets += KStrip.Min(s, format, r, j) * activations;
                }
            }
            float d = Kiln.Kernels.Quantized.Fp16.ToSingle(KStrip.D(s, format, r)) * activationScales[b];
            sum += d * scaled;
            if (!six) sum -= Kiln.Kernels.Quantized.Fp16.ToSingle(KStrip.DMin(s, format, r)) * activationScales[b] * offsets;
        }
        return sum;
    }

    /// <summary>A row of a sparse layout, read element by element through its own definition (<see cref="PackedMatrix.SparseQuant"/>).</summary>
    private static float SparseRow(PackedMatrix weights, int row, in GemmInput input, int t)
    {
        int blocks = weights.Blocks;
        byte* x = input.Quants + (long)t * input.QuantStride;
        float* activationScales = (float*)(x + GemmScratch.ScalesAt(blocks));
        float sum = 0;
        for (int b = 0; b < blocks; b++)
        {
            int dot = 0;
            for (int e = 0; e < 32; e++) dot += weights.SparseQuant(row, b, e) * (sbyte)x[b * 32 + e];
            sum += Kiln.Kernels.Quantized.Fp16.ToSingle(weights.SparseScaleBits(row, b)) * activationScales[b] * dot;
        }
        return sum;
    }

    private static float Row(PackedMatrix weights, byte* strip, int r, in GemmInput input, int t)
    {
        int k = weights.K;
        switch (weights.Format)
        {
            case PackedFormat.F32:
            {
                float* w = (float*)strip, x = input.Floats + (long)t * input.FloatStride;
                float sum = 0;
                for (int i = 0; i < k; i++) sum += w[weights.FloatIndex(r, i)] * x[i];
                return sum;
            }
            case PackedFormat.BF16:
            {
                ushort* w = (ushort*)strip;
                float* x = input.Floats + (long)t * input.FloatStride;
                float sum = 0;
                for (int i = 0; i < k; i++) sum += BitConverter.UInt32BitsToSingle((uint)w[weights.FloatIndex(r, i)] << 16) * x[i];
                return sum;
            }
            default:
            {
                int blocks = weights.Blocks;
                byte* x = input.Quants + (long)t * input.QuantStride;
                float* activationScales = (float*)(x + GemmScratch.ScalesAt(blocks));
                float sum = 0;
                for (int b = 0; b < blocks; b++)
                {
                    int dot = 0;
                    for (int e = 0; e < 32; e++) dot += weights.Quant(strip, b, r, e) * (sbyte)x[b * 32 + e];
                    sum += Kiln.Kernels.Quantized.Fp16.ToSingle(weights.ScaleBits(strip, b, r)) * activationScales[b] * dot;
                }
                return sum;
            }
        }
    }
}

/// <summary>The AVX-512 kernel of the BF16 layout: 4 rows × up to 4 tokens per tile, 16 lanes of K per step.</summary>
internal static unsafe class FloatKernels
{
    internal interface IRows
    {
        static abstract int ElementBytes { get; }

        /// <summary>16 weights from element <paramref name="index"/> of a row, as floats.</summary>
        static abstract Vector512<float> Load(byte* row, int index);

        static abstract float Scalar(byte* row, int index);
    }

    internal readonly struct BF16Rows : IRows
    {
        public static int ElementBytes => sizeof(ushort);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(byte* row, int index) =>
            (Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)row + index)) << 16).AsSingle();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Scalar(byte* row, int index) => BitConverter.UInt32BitsToSingle((uint)((ushort*)row)[index] << 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run<TRows, TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TRows : IRows where TEpilogue : struct, ITileEpilogue
    {
        int k = weights.K, stride = input.FloatStride, tokens = input.Tokens;
        for (int t0 = 0; t0 < tokens; t0 += 4)
        {
            float* x = input.Floats + (long)t0 * stride;
            int count = Math.Min(4, tokens - t0);
            for (int g = firstGroup; g < endGroup; g++)
            {
                byte* group = weights.Data + g * weights.StripBytes;
                switch (count)
                {
                    case 4: Tile<TRows, Four, TEpilogue>(group, k, x, stride, g * 4, t0, ref epilogue); break;
                    case 3: Tile<TRows, Three, TEpilogue>(group, k, x, stride, g * 4, t0, ref epilogue); break;
                    case 2: Tile<TRows, Two, TEpilogue>(group, k, x, stride, g * 4, t0, ref epilogue); break;
                    default: Tile<TRows, One, TEpilogue>(group, k, x, stride, g * 4, t0, ref epilogue); break;
                }
            }
        }
    }

    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TRows, TTokens, TEpilogue>(byte* group, int k, float* x, int stride, int row, int t0, ref TEpilogue epilogue)
        where TRows : IRows where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        // Chunks of 16 elements of rows 0..3 in turn: chunk c of row r at (4c + r)·16 elements.
        byte* w0 = group, w1 = group + 16 * TRows.ElementBytes, w2 = group + 32 * TRows.ElementBytes, w3 = group + 48 * TRows.ElementBytes;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        int i = 0;
        for (; i + 16 <= k; i += 16)
        {
            int chunk = 4 * i; // elements before this chunk: 4 rows of i
            Vector512<float> r0 = TRows.Load(w0, chunk), r1 = TRows.Load(w1, chunk), r2 = TRows.Load(w2, chunk), r3 = TRows.Load(w3, chunk);
            Vector512<float> v = Vector512.Load(x + i);
            a00 = Vector512.FusedMultiplyAdd(r0, v, a00);
            a01 = Vector512.FusedMultiplyAdd(r1, v, a01);
            a02 = Vector512.FusedMultiplyAdd(r2, v, a02);
            a03 = Vector512.FusedMultiplyAdd(r3, v, a03);
            if (TTokens.Value > 1)
            {
                v = Vector512.Load(x + stride + i);
                a10 = Vector512.FusedMultiplyAdd(r0, v, a10);
                a11 = Vector512.FusedMultiplyAdd(r1, v, a11);
                a12 = Vector512.FusedMultiplyAdd(r2, v, a12);
                a13 = Vector512.FusedMultiplyAdd(r3, v, a13);
            }
            if (TTokens.Value > 2)
            {
                v = Vector512.Load(x + 2 * stride + i);
                a20 = Vector512.FusedMultiplyAdd(r0, v, a20);
                a21 = Vector512.FusedMultiplyAdd(r1, v, a21);
                a22 = Vector512.FusedMultiplyAdd(r2, v, a22);
                a23 = Vector512.FusedMultiplyAdd(r3, v, a23);
            }
            if (TTokens.Value > 3)
            {
                v = Vector512.Load(x + 3 * stride + i);
                a30 = Vector512.FusedMultiplyAdd(r0, v, a30);
                a31 = Vector512.FusedMultiplyAdd(r1, v, a31);
                a32 = Vector512.FusedMultiplyAdd(r2, v, a32);
                a33 = Vector512.FusedMultiplyAdd(r3, v, a33);
            }
        }
        // The last K mod 16 elements of each row follow the chunks, row after row.
        byte* tail = group + 4L * i * TRows.ElementBytes;
        long tailBytes = (long)(k - i) * TRows.ElementBytes;
        epilogue.Store(row, t0, Finish<TRows>(a00, a01, a02, a03, tail, tailBytes, x, i, k));
        if (TTokens.Value > 1) epilogue.Store(row, t0 + 1, Finish<TRows>(a10, a11, a12, a13, tail, tailBytes, x + stride, i, k));
        if (TTokens.Value > 2) epilogue.Store(row, t0 + 2, Finish<TRows>(a20, a21, a22, a23, tail, tailBytes, x + 2 * stride, i, k));
        if (TTokens.Value > 3) epilogue.Store(row, t0 + 3, Finish<TRows>(a30, a31, a32, a33, tail, tailBytes, x + 3 * stride, i, k));
    }

    // [Σ r0, Σ r1, Σ r2, Σ r3], then the last K mod 16 elements one at a time (row r's from tail + r·tailBytes).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Finish<TRows>(Vector512<float> r0, Vector512<float> r1, Vector512<float> r2, Vector512<float> r3,
        byte* tail, long tailBytes, float* x, int i, int k) where TRows : IRows
    {
        Vector256<float> h0 = r0.GetLower() + r0.GetUpper(), h1 = r1.GetLower() + r1.GetUpper();
        Vector256<float> h2 = r2.GetLower() + r2.GetUpper(), h3 = r3.GetLower() + r3.GetUpper();
        Vector256<float> sums = Avx.HorizontalAdd(Avx.HorizontalAdd(h0, h1), Avx.HorizontalAdd(h2, h3));
        Vector128<float> result = sums.GetLower() + sums.GetUpper();
        if (i == k) return result;
        float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        for (int j = i; j < k; j++)
        {
            float v = x[j];
            t0 += TRows.Scalar(tail, j - i) * v;
            t1 += TRows.Scalar(tail + tailBytes, j - i) * v;
            t2 += TRows.Scalar(tail + 2 * tailBytes, j - i) * v;
            t3 += TRows.Scalar(tail + 3 * tailBytes, j - i) * v;
        }
        return result + Vector128.Create(t0, t1, t2, t3);
    }
}
