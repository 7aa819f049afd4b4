using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// The matmul kernels of compiled plans: y[t, r] = Σ_k W[r, k]·x[t, k] over a range of 4-row groups of a
/// <see cref="PackedMatrix"/> and every token of a <see cref="GemmInput"/>, each finished 4-row × 1-token tile handed
/// to the plan's epilogue. One entry per layout; a work item of the plan's worker pool calls one with its range of
/// groups. Inside, tokens go in tiles (of up to 4, or 8 for Q4_0) and rows in tiles of 8 (two groups), so each weight
/// block is read once per token tile, and the activations of a token tile are reused by every group of the range.
/// <para>
/// Every token's sums are computed by the same operations in the same order whatever its tile and whatever the
/// range, so results do not depend on how the groups were split over threads. Each layout has a SIMD path (AVX-512;
/// Q4_0's is 256-bit and needs only AVX2) and a scalar one (used where the SIMD path cannot run, and the oracle in
/// tests). The floating-point layouts and Q8_0 fall back to it on machines without AVX-512BW.
/// </para>
/// </summary>
public static unsafe class Gemm
{
    /// <summary>True when the AVX-512 kernels run here (otherwise the scalar ones do; Q4_0's need only AVX2).</summary>
    public static bool IsAccelerated { get; } = Avx512BW.IsSupported && Avx512F.VL.IsSupported && Vector512.IsHardwareAccelerated;

    /// <summary>
    /// Groups per work item for a pool of <paramref name="threads"/>: about eight items per thread so fast threads
    /// take more, never so small that claiming an item costs more than computing it.
    /// </summary>
    public static int ChunkSize(PackedMatrix weights, int tokens, int threads)
    {
        ArgumentNullException.ThrowIfNull(weights);
        int groups = weights.Groups;
        // Many tokens: 8 groups per item keep a tile's weights in L1 across every token tile, whatever the threads.
        if (threads <= 1) return tokens >= 16 ? Math.Min(8, groups) : groups;
        int perThread = (groups + 8 * threads - 1) / (8 * threads);
        // One group at one token is ~K·4 multiply-adds; keep an item above ~16K of them.
        long work = (long)weights.K * 4 * Math.Max(1, tokens);
        int minimum = (int)Math.Clamp(16384 / Math.Max(1, work), 1, 64);
        int chunk = Math.Clamp(Math.Max(perThread, minimum), 1, tokens >= 16 ? 8 : groups);
        // Q4_0 stores groups in pairs: an even chunk never splits a strip between two items.
        return weights.StripRows == 8 ? Math.Min(groups, (chunk + 1) & ~1) : chunk;
    }

    /// <summary>F32x4 groups against float32 activations.</summary>
    public static void F32<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        Check(weights, PackedFormat.F32, input, firstGroup, endGroup, quantized: false);
        if (IsAccelerated) FloatKernels.Run<FloatKernels.F32Rows, TEpilogue>(weights, input, firstGroup, endGroup, ref epilogue);
        else Reference.Run(weights, input, firstGroup, endGroup, ref epilogue);
    }

    /// <summary>BF16x4 groups against float32 activations (each weight widened exactly).</summary>
    public static void BF16<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        Check(weights, PackedFormat.BF16, input, firstGroup, endGroup, quantized: false);
        if (IsAccelerated) FloatKernels.Run<FloatKernels.BF16Rows, TEpilogue>(weights, input, firstGroup, endGroup, ref epilogue);
        else Reference.Run(weights, input, firstGroup, endGroup, ref epilogue);
    }

    /// <summary>Q8_0 groups against Q8 activations.</summary>
    public static void Q8_0<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        Check(weights, PackedFormat.Q8_0, input, firstGroup, endGroup, quantized: true);
        if (IsAccelerated) QuantizedTiles.Run<QuantizedKernels.Tiles<QuantizedKernels.Q8Blocks>, TEpilogue>(weights, input, firstGroup, endGroup, ref epilogue);
        else Reference.Run(weights, input, firstGroup, endGroup, ref epilogue);
    }

    /// <summary>Q4_0 groups against Q8 activations.</summary>
    public static void Q4_0<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        Check(weights, PackedFormat.Q4_0, input, firstGroup, endGroup, quantized: true);
        if (Q4Kernels.IsSupported) Q4Kernels.Run(weights, input, firstGroup, endGroup, ref epilogue);
        else Reference.Run(weights, input, firstGroup, endGroup, ref epilogue);
    }

    /// <summary>Any layout, by <see cref="PackedMatrix.Format"/>; the scalar kernels when <paramref name="scalar"/> (tests).</summary>
    public static void Run<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue, bool scalar = false)
        where TEpilogue : struct, ITileEpilogue
    {
        if (scalar)
        {
            Check(weights, weights.Format, input, firstGroup, endGroup, WeightLayouts.IsQuantized(weights.Format));
            Reference.Run(weights, input, firstGroup, endGroup, ref epilogue);
            return;
        }
        switch (weights.Format)
        {
            case PackedFormat.F32: F32(weights, input, firstGroup, endGroup, ref epilogue); break;
            case PackedFormat.BF16: BF16(weights, input, firstGroup, endGroup, ref epilogue); break;
            case PackedFormat.Q8_0: Q8_0(weights, input, firstGroup, endGroup, ref epilogue); break;
            default: Q4_0(weights, input, firstGroup, endGroup, ref epilogue); break;
        }
    }

    private static void Check(PackedMatrix weights, PackedFormat format, in GemmInput input, int firstGroup, int endGroup, bool quantized)
    {
        ArgumentNullException.ThrowIfNull(weights);
        if (weights.Format != format) throw new ArgumentException($"A {weights.Format} matrix given to the {format} kernel.", nameof(weights));
        if (input.K != weights.K) throw new ArgumentException($"Input rows of {input.K} for weights of {weights.K}.", nameof(input));
        if (quantized ? input.Quants is null : input.Floats is null)
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

/// <summary>
/// A quantized layout's register tile: <typeparamref name="TGroups"/> (1–2) groups of 4 rows × <typeparamref name="TTokens"/>
/// (1–4) tokens of Q8 activations, one 256-bit accumulator per token and group.
/// </summary>
internal unsafe interface IQuantizedTile
{
    static abstract void Tile<TGroups, TTokens, TEpilogue>(byte* group, long groupBytes, int blocks, byte* x, int stride,
        int row, int t0, bool prefetch, ref TEpilogue epilogue)
        where TGroups : ICount where TTokens : ICount where TEpilogue : struct, ITileEpilogue;
}

/// <summary>The walk of Q8_0's kernel around its tile: token tiles, group pairs, and the tile's store.</summary>
internal static unsafe class QuantizedTiles
{
    // The kernels are JIT-compiled optimized from their first call: a tier-0 tile (not inlined) runs ~20× slower, and
    // the rarer instantiations (an odd group at a range's end) would otherwise stay there for many calls.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run<TTile, TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TTile : IQuantizedTile where TEpilogue : struct, ITileEpilogue
    {
        byte* data = weights.Data;
        long groupBytes = weights.StripBytes;
        int blocks = weights.Blocks, stride = input.QuantStride, tokens = input.Tokens;
        for (int t0 = 0; t0 < tokens; t0 += 4)
        {
            byte* x = input.Quants + (long)t0 * stride;
            switch (Math.Min(4, tokens - t0))
            {
                case 4: Groups<TTile, Four, TEpilogue>(data, groupBytes, blocks, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 3: Groups<TTile, Three, TEpilogue>(data, groupBytes, blocks, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 2: Groups<TTile, Two, TEpilogue>(data, groupBytes, blocks, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                default: Groups<TTile, One, TEpilogue>(data, groupBytes, blocks, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Groups<TTile, TTokens, TEpilogue>(byte* data, long groupBytes, int blocks, byte* x, int stride, int t0,
        int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TTile : IQuantizedTile where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        // The first token tile meets the range's weights in memory: it prefetches the next tile's as it goes.
        bool prefetch = TTokens.Value == 1 || t0 == 0;
        int g = firstGroup;
        for (; g + 2 <= endGroup; g += 2)
            TTile.Tile<Two, TTokens, TEpilogue>(data + g * groupBytes, groupBytes, blocks, x, stride, g * 4, t0, prefetch, ref epilogue);
        if (g < endGroup)
            TTile.Tile<One, TTokens, TEpilogue>(data + g * groupBytes, groupBytes, blocks, x, stride, g * 4, t0, prefetch, ref epilogue);
    }

    /// <summary>Hands the tile's sums to the epilogue: accumulator aTG (token T, group G) folds to rows row + 4G, token t0 + T.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store<TGroups, TTokens, TEpilogue>(ref TEpilogue epilogue, int row, int t0,
        in Vector256<float> a00, in Vector256<float> a01, in Vector256<float> a10, in Vector256<float> a11,
        in Vector256<float> a20, in Vector256<float> a21, in Vector256<float> a30, in Vector256<float> a31)
        where TGroups : ICount where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        epilogue.Store(row, t0, a00.GetLower() + a00.GetUpper());
        if (TGroups.Value > 1) epilogue.Store(row + 4, t0, a01.GetLower() + a01.GetUpper());
        if (TTokens.Value > 1)
        {
            epilogue.Store(row, t0 + 1, a10.GetLower() + a10.GetUpper());
            if (TGroups.Value > 1) epilogue.Store(row + 4, t0 + 1, a11.GetLower() + a11.GetUpper());
        }
        if (TTokens.Value > 2)
        {
            epilogue.Store(row, t0 + 2, a20.GetLower() + a20.GetUpper());
            if (TGroups.Value > 1) epilogue.Store(row + 4, t0 + 2, a21.GetLower() + a21.GetUpper());
        }
        if (TTokens.Value > 3)
        {
            epilogue.Store(row, t0 + 3, a30.GetLower() + a30.GetUpper());
            if (TGroups.Value > 1) epilogue.Store(row + 4, t0 + 3, a31.GetLower() + a31.GetUpper());
        }
    }
}

/// <summary>The oracle: each (row, token) as a plain loop, block by block as the format defines it.</summary>
internal static unsafe class Reference
{
    public static void Run<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        float* sums = stackalloc float[4];
        for (int g = firstGroup; g < endGroup; g++)
        {
            byte* strip = weights.Data + g * 4 / weights.StripRows * weights.StripBytes;
            int first = g * 4 % weights.StripRows; // the group's first row within its strip
            for (int t = 0; t < input.Tokens; t++)
            {
                for (int r = 0; r < 4; r++) sums[r] = Row(weights, strip, first + r, input, t);
                epilogue.Store(g * 4, t, Vector128.Load(sums));
            }
        }
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
                // Activations as GemmScratch lays them out: spread (Q8_0, row 0's copy) or compact (Q4_0).
                bool q4 = weights.Format == PackedFormat.Q4_0;
                int blocks = weights.Blocks;
                byte* x = input.Quants + (long)t * input.QuantStride;
                float* activationScales = (float*)(x + blocks * (q4 ? 36 : 128));
                float sum = 0;
                for (int b = 0; b < blocks; b++)
                {
                    int dot = 0;
                    for (int e = 0; e < 32; e++)
                    {
                        int activation = q4 ? (sbyte)x[b * 32 + e] : (sbyte)x[b * 128 + e / 16 * 64 + (e % 16) / 4 * 16 + e % 4];
                        dot += (q4 ? PackedMatrix.Q4Quant(strip, b, r, e) : PackedMatrix.Q8Quant(strip, b, r, e)) * activation;
                    }
                    sum += Kiln.Kernels.Quantized.Fp16.ToSingle(weights.ScaleBits(strip, b, r)) * activationScales[b] * dot;
                }
                return sum;
            }
        }
    }
}

/// <summary>A group's per-block row scales: the stored fp16 bits, widened in the kernel.</summary>
internal static unsafe class ScaleTable
{
    /// <summary>
    /// The four fp16 scales at <paramref name="halves"/> (rows 0..3 of a group's block) as floats, in both 128-bit
    /// halves. Each half goes to the top of an int32 lane; an arithmetic shift by 3 puts exponent and mantissa in
    /// float position (the three sign copies it leaves above the exponent are masked off) and × 2^112 re-biases the
    /// exponent: exact for normal and subnormal halves (scales are finite).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load(byte* halves)
    {
        Vector128<ushort> bits = Vector128.CreateScalarUnsafe(*(ulong*)halves).AsUInt16();
        Vector128<int> top = Sse2.UnpackLow(Vector128<ushort>.Zero, bits).AsInt32();
        Vector128<float> scales = ((top >> 3) & Vector128.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector128.Create(5.192296858534828E+33f);
        return Vector256.Create(scales, scales);
    }

    /// <summary>The eight fp16 scales at <paramref name="halves"/> (rows 0..7 of a Q4_0 strip's block) as floats, as <see cref="Load"/> widens them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* halves)
    {
        Vector256<int> top = Avx2.ConvertToVector256Int32((ushort*)halves) << 16;
        return ((top >> 3) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector256.Create(5.192296858534828E+33f);
    }
}

/// <summary>The AVX-512 kernels of the Q8_0 layout: 4 or 8 rows × up to 4 tokens per tile (Q4_0 has its own, <see cref="Q4Kernels"/>).</summary>
internal static unsafe class QuantizedKernels
{
    /// <summary>How a layout turns a block of a group into int32 sums (Q8_0's; an operator struct so another byte layout can join).</summary>
    internal interface IBlocks
    {
        static abstract int BlockBytes { get; }

        /// <summary>The group's quants of block <paramref name="block"/> as two unsigned halves (and Q8_0's sign masks).</summary>
        static abstract void Load(byte* quants, out Vector512<byte> first, out Vector512<byte> second, out Vector512<sbyte> firstSigns, out Vector512<sbyte> secondSigns);

        /// <summary>
        /// One token's int32 sums of a block, folded to 8 lanes: lane L'·4 + r holds row r's partial sum over the
        /// elements of 128-bit lanes L' and L' + 2 of both halves.
        /// </summary>
        static abstract Vector256<int> Dot(Vector512<byte> first, Vector512<byte> second, Vector512<sbyte> firstSigns, Vector512<sbyte> secondSigns,
            Vector512<sbyte> x0, Vector512<sbyte> x1);
    }

    /// <summary>Q8_0: |w| on the unsigned side of vpmaddubsw, the activations negated where w &lt; 0.</summary>
    internal readonly struct Q8Blocks : IBlocks
    {
        public static int BlockBytes => PackedMatrix.Q8BlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load(byte* quants, out Vector512<byte> first, out Vector512<byte> second, out Vector512<sbyte> firstSigns, out Vector512<sbyte> secondSigns)
        {
            firstSigns = Vector512.Load((sbyte*)quants);
            secondSigns = Vector512.Load((sbyte*)quants + 64);
            first = Avx512BW.Abs(firstSigns);
            second = Avx512BW.Abs(secondSigns);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(Vector512<byte> first, Vector512<byte> second, Vector512<sbyte> firstSigns, Vector512<sbyte> secondSigns,
            Vector512<sbyte> x0, Vector512<sbyte> x1)
        {
            // |w|·(a·sign w): pair sums stay within ±2·128·127, but two of them can overflow int16, so each widens alone.
            Vector512<sbyte> s0 = Vector512.ConditionalSelect(Vector512.LessThan(firstSigns, Vector512<sbyte>.Zero), Vector512<sbyte>.Zero - x0, x0);
            Vector512<sbyte> s1 = Vector512.ConditionalSelect(Vector512.LessThan(secondSigns, Vector512<sbyte>.Zero), Vector512<sbyte>.Zero - x1, x1);
            var ones = Vector512<short>.One;
            Vector512<int> sums = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(first, s0), ones)
                + Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(second, s1), ones);
            return sums.GetLower() + sums.GetUpper();
        }
    }

    /// <summary>The Q8_0 tile for <see cref="QuantizedTiles"/>, over a block layout.</summary>
    internal readonly struct Tiles<TBlocks> : IQuantizedTile where TBlocks : IBlocks
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Tile<TGroups, TTokens, TEpilogue>(byte* group, long groupBytes, int blocks, byte* x, int stride,
            int row, int t0, bool prefetch, ref TEpilogue epilogue)
            where TGroups : ICount where TTokens : ICount where TEpilogue : struct, ITileEpilogue =>
            QuantizedKernels.Tile<TBlocks, TGroups, TTokens, TEpilogue>(group, groupBytes, blocks, x, stride, row, t0, prefetch, ref epilogue);
    }

    // TGroups (1-2) groups × TTokens (1-4) tokens. Per token and group, one 256-bit accumulator: lane L'·4 + r holds
    // row r's running sum over the elements of 128-bit lanes L' and L' + 2 of every block.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Tile<TBlocks, TGroups, TTokens, TEpilogue>(byte* group, long groupBytes, int blocks, byte* x, int stride,
        int row, int t0, bool prefetch, ref TEpilogue epilogue)
        where TBlocks : IBlocks where TGroups : ICount where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        int quantBytes = blocks * TBlocks.BlockBytes;
        byte* q0 = group, q1 = group + groupBytes;
        byte* d0Table = q0 + quantBytes, d1Table = q1 + quantBytes; // 4 fp16 scales per block
        // Token t: quants at x + t·stride, scales after the quants.
        int scaleBytes = blocks * 128;
        Vector256<float> a00 = default, a01 = default, a10 = default, a11 = default;
        Vector256<float> a20 = default, a21 = default, a30 = default, a31 = default;
        // The next tile's weights stream from memory while this one computes: one line ahead per line consumed.
        byte* ahead = group + TGroups.Value * groupBytes;
        long aheadStep = TGroups.Value * groupBytes / blocks;
        for (int b = 0; b < blocks; b++)
        {
            if (prefetch)
            {
                byte* line = ahead + b * aheadStep;
                Sse.Prefetch0(line);
                Sse.Prefetch0(line + 64);
                Sse.Prefetch0(line + 128);
            }
            TBlocks.Load(q0 + b * TBlocks.BlockBytes, out var w0, out var w1, out var s0, out var s1);
            Vector256<float> d0 = ScaleTable.Load(d0Table + b * 8);
            Vector512<byte> v0 = default, v1 = default;
            Vector512<sbyte> u0 = default, u1 = default;
            Vector256<float> d1 = default;
            if (TGroups.Value > 1)
            {
                TBlocks.Load(q1 + b * TBlocks.BlockBytes, out v0, out v1, out u0, out u1);
                d1 = ScaleTable.Load(d1Table + b * 8);
            }

            byte* xt = x + b * 128;
            Token<TBlocks, TGroups>(ref a00, ref a01, w0, w1, s0, s1, d0, v0, v1, u0, u1, d1, xt, (float*)(x + scaleBytes) + b);
            if (TTokens.Value > 1)
                Token<TBlocks, TGroups>(ref a10, ref a11, w0, w1, s0, s1, d0, v0, v1, u0, u1, d1, xt + stride, (float*)(x + stride + scaleBytes) + b);
            if (TTokens.Value > 2)
                Token<TBlocks, TGroups>(ref a20, ref a21, w0, w1, s0, s1, d0, v0, v1, u0, u1, d1, xt + 2 * stride, (float*)(x + 2 * stride + scaleBytes) + b);
            if (TTokens.Value > 3)
                Token<TBlocks, TGroups>(ref a30, ref a31, w0, w1, s0, s1, d0, v0, v1, u0, u1, d1, xt + 3 * stride, (float*)(x + 3 * stride + scaleBytes) + b);
        }
        QuantizedTiles.Store<TGroups, TTokens, TEpilogue>(ref epilogue, row, t0, a00, a01, a10, a11, a20, a21, a30, a31);
    }

    // One token against one or two groups' block: the activations are loaded once for both.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Token<TBlocks, TGroups>(ref Vector256<float> acc0, ref Vector256<float> acc1,
        Vector512<byte> w0, Vector512<byte> w1, Vector512<sbyte> s0, Vector512<sbyte> s1, Vector256<float> d0,
        Vector512<byte> v0, Vector512<byte> v1, Vector512<sbyte> u0, Vector512<sbyte> u1, Vector256<float> d1,
        byte* quants, float* scale)
        where TBlocks : IBlocks where TGroups : ICount
    {
        Vector512<sbyte> x0 = Vector512.Load((sbyte*)quants), x1 = Vector512.Load((sbyte*)quants + 64);
        Vector256<float> da = Vector256.Create(*scale);
        acc0 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(TBlocks.Dot(w0, w1, s0, s1, x0, x1)), d0 * da, acc0);
        if (TGroups.Value > 1)
            acc1 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(TBlocks.Dot(v0, v1, u0, u1, x0, x1)), d1 * da, acc1);
    }
}

/// <summary>
/// The Q4_0 kernels: one strip of 8 rows (two groups) × up to 8 tokens per tile, 256-bit throughout, so they need
/// only AVX2. A strip's block is four 32-byte vectors of nibbles; its low and high nibbles make eight vpmaddubsw,
/// each against one broadcast of 4 activations to all 8 rows. Their int16 sums (≤ 8·2·15·127 = 30480) add without
/// saturating, and one vpmaddwd leaves one complete int32 sum per row: per 256 multiply-adds, 8 vpmaddubsw, 7 adds
/// and one each of vpmaddwd, offset, convert, scale and FMA. (A 4-row tile pays that tail per 128, with every lane a
/// partial sum to fold at the end: a quarter more work.)
/// </summary>
internal static unsafe class Q4Kernels
{
    /// <summary>The Q4_0 kernels need only AVX2 and FMA (256-bit throughout), so they run where AVX-512 is missing too.</summary>
    public static bool IsSupported { get; } = Avx2.IsSupported && Fma.IsSupported;

    // Which halves of a strip's tile go to the epilogue: both, or the one group of a range that starts or ends mid-strip.
    private const int Lower = 1, Upper = 2, Both = 3;

    // Compiled optimized from the first call, as QuantizedTiles.Run (a tier-0 tile runs ~20× slower).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        int tokens = input.Tokens, stride = input.QuantStride;
        for (int t0 = 0; t0 < tokens; t0 += 8)
        {
            byte* x = input.Quants + (long)t0 * stride;
            switch (Math.Min(8, tokens - t0))
            {
                case 8: Strips<Eight, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 7: Strips<Seven, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 6: Strips<Six, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 5: Strips<Five, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 4: Strips<Four, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 3: Strips<Three, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 2: Strips<Two, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                default: Strips<One, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Strips<TTokens, TEpilogue>(PackedMatrix weights, byte* x, int stride, int t0, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        byte* data = weights.Data;
        long stripBytes = weights.StripBytes;
        int blocks = weights.Blocks, g = firstGroup;
        // The first token tile meets the range's weights in memory: it prefetches the next strip's as it goes.
        bool prefetch = TTokens.Value == 1 || t0 == 0;
        if ((g & 1) != 0 && g < endGroup)
        {
            Tile<TTokens, TEpilogue>(data + (g >> 1) * stripBytes, stripBytes, blocks, x, stride, (g - 1) * 4, t0, prefetch, Upper, ref epilogue);
            g++;
        }
        for (; g + 2 <= endGroup; g += 2)
            Tile<TTokens, TEpilogue>(data + (g >> 1) * stripBytes, stripBytes, blocks, x, stride, g * 4, t0, prefetch, Both, ref epilogue);
        if (g < endGroup)
            Tile<TTokens, TEpilogue>(data + (g >> 1) * stripBytes, stripBytes, blocks, x, stride, g * 4, t0, prefetch, Lower, ref epilogue);
    }

    /// <summary>The unpacked nibbles of one strip's block: vector j's low nibbles (elements 4j..4j+3 of 8 rows) and high ones (16 + the same).</summary>
    private struct Nibbles
    {
        public Vector256<byte> Low0, Low1, Low2, Low3, High0, High1, High2, High3;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Nibbles(byte* quants)
        {
            var mask = Vector256.Create((byte)0x0F);
            Vector256<byte> v0 = Vector256.Load(quants), v1 = Vector256.Load(quants + 32);
            Vector256<byte> v2 = Vector256.Load(quants + 64), v3 = Vector256.Load(quants + 96);
            Low0 = v0 & mask;
            Low1 = v1 & mask;
            Low2 = v2 & mask;
            Low3 = v3 & mask;
            High0 = (v0.AsUInt16() >>> 4).AsByte() & mask;
            High1 = (v1.AsUInt16() >>> 4).AsByte() & mask;
            High2 = (v2.AsUInt16() >>> 4).AsByte() & mask;
            High3 = (v3.AsUInt16() >>> 4).AsByte() & mask;
        }

        /// <summary>Σ n·a of each of the 8 rows (offset not yet taken), a = one token's 32 compact quants.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector256<int> Dot(int* a)
        {
            // Vector256.Create from memory is one broadcast load (vpbroadcastd): no shuffle on the vector pipes.
            Vector256<short> low = Avx2.MultiplyAddAdjacent(Low0, Vector256.Create(a[0]).AsSByte()) + Avx2.MultiplyAddAdjacent(Low1, Vector256.Create(a[1]).AsSByte())
                + (Avx2.MultiplyAddAdjacent(Low2, Vector256.Create(a[2]).AsSByte()) + Avx2.MultiplyAddAdjacent(Low3, Vector256.Create(a[3]).AsSByte()));
            Vector256<short> high = Avx2.MultiplyAddAdjacent(High0, Vector256.Create(a[4]).AsSByte()) + Avx2.MultiplyAddAdjacent(High1, Vector256.Create(a[5]).AsSByte())
                + (Avx2.MultiplyAddAdjacent(High2, Vector256.Create(a[6]).AsSByte()) + Avx2.MultiplyAddAdjacent(High3, Vector256.Create(a[7]).AsSByte()));
            return Avx2.MultiplyAddAdjacent(low + high, Vector256<short>.One);
        }
    }

    // TTokens (1-8) tokens × one strip; accumulator aT holds token t0 + T's running sums of the strip's 8 rows.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TTokens, TEpilogue>(byte* strip, long stripBytes, int blocks, byte* x, int stride,
        int row, int t0, bool prefetch, int halves, ref TEpilogue epilogue)
        where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        byte* scales = strip + blocks * PackedMatrix.Q4BlockBytes; // 8 fp16 per block
        // Token t: 32 quants per block at x + t·stride, then one int32 offset per block, then one float scale per block.
        int offsetBytes = blocks * 32, scaleBytes = blocks * 36;
        // The next strip streams from memory while this one computes: one line ahead per line consumed.
        byte* ahead = strip + stripBytes;
        long aheadStep = stripBytes / blocks;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int b = 0; b < blocks; b++)
        {
            if (prefetch)
            {
                byte* line = ahead + b * aheadStep;
                Sse.Prefetch0(line);
                Sse.Prefetch0(line + 64);
                Sse.Prefetch0(line + 128);
            }
            var w = new Nibbles(strip + b * PackedMatrix.Q4BlockBytes);
            Vector256<float> d = ScaleTable.Load8(scales + b * 16);
            byte* xb = x + b * 32;
            int* ob = (int*)(x + offsetBytes) + b;
            float* sb = (float*)(x + scaleBytes) + b;
            a0 = Token(a0, in w, d, xb, ob, sb);
            if (TTokens.Value > 1) a1 = Token(a1, in w, d, xb + stride, (int*)((byte*)ob + stride), (float*)((byte*)sb + stride));
            if (TTokens.Value > 2) a2 = Token(a2, in w, d, xb + 2 * stride, (int*)((byte*)ob + 2 * stride), (float*)((byte*)sb + 2 * stride));
            if (TTokens.Value > 3) a3 = Token(a3, in w, d, xb + 3 * stride, (int*)((byte*)ob + 3 * stride), (float*)((byte*)sb + 3 * stride));
            if (TTokens.Value > 4) a4 = Token(a4, in w, d, xb + 4 * stride, (int*)((byte*)ob + 4 * stride), (float*)((byte*)sb + 4 * stride));
            if (TTokens.Value > 5) a5 = Token(a5, in w, d, xb + 5 * stride, (int*)((byte*)ob + 5 * stride), (float*)((byte*)sb + 5 * stride));
            if (TTokens.Value > 6) a6 = Token(a6, in w, d, xb + 6 * stride, (int*)((byte*)ob + 6 * stride), (float*)((byte*)sb + 6 * stride));
            if (TTokens.Value > 7) a7 = Token(a7, in w, d, xb + 7 * stride, (int*)((byte*)ob + 7 * stride), (float*)((byte*)sb + 7 * stride));
        }
        Store(ref epilogue, row, t0, halves, a0);
        if (TTokens.Value > 1) Store(ref epilogue, row, t0 + 1, halves, a1);
        if (TTokens.Value > 2) Store(ref epilogue, row, t0 + 2, halves, a2);
        if (TTokens.Value > 3) Store(ref epilogue, row, t0 + 3, halves, a3);
        if (TTokens.Value > 4) Store(ref epilogue, row, t0 + 4, halves, a4);
        if (TTokens.Value > 5) Store(ref epilogue, row, t0 + 5, halves, a5);
        if (TTokens.Value > 6) Store(ref epilogue, row, t0 + 6, halves, a6);
        if (TTokens.Value > 7) Store(ref epilogue, row, t0 + 7, halves, a7);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Token(Vector256<float> accumulator, in Nibbles w, Vector256<float> d, byte* quants, int* offset, float* scale)
    {
        Vector256<int> dots = w.Dot((int*)quants) - Vector256.Create(*offset);
        return Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dots), d * Vector256.Create(*scale), accumulator);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<TEpilogue>(ref TEpilogue epilogue, int row, int token, int halves, Vector256<float> sums)
        where TEpilogue : struct, ITileEpilogue
    {
        if ((halves & Lower) != 0) epilogue.Store(row, token, sums.GetLower());
        if ((halves & Upper) != 0) epilogue.Store(row + 4, token, sums.GetUpper());
    }
}

/// <summary>The AVX-512 kernels of the float layouts: 4 rows × up to 4 tokens per tile, 16 lanes of K per step.</summary>
internal static unsafe class FloatKernels
{
    internal interface IRows
    {
        static abstract int ElementBytes { get; }

        /// <summary>16 weights from element <paramref name="index"/> of a row, as floats.</summary>
        static abstract Vector512<float> Load(byte* row, int index);

        static abstract float Scalar(byte* row, int index);
    }

    internal readonly struct F32Rows : IRows
    {
        public static int ElementBytes => sizeof(float);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(byte* row, int index) => Vector512.Load((float*)row + index);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Scalar(byte* row, int index) => ((float*)row)[index];
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
