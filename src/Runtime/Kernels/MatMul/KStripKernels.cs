using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Kernels.Quantized;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// How one K-quant unit (32 values × 8 rows of a strip super-block, <see cref="KStrip"/>) meets one token's Q8_K
/// unit: an operator struct holding the unit's weights unpacked once, in registers, for every token of a tile.
/// </summary>
internal unsafe interface IKStripUnit<TSelf> where TSelf : struct, IKStripUnit<TSelf>
{
    /// <summary>Bytes of one strip super-block.</summary>
    static abstract int SuperBytes { get; }

    /// <summary>Where the super-block's 8 fp16 d are (its 8 dmin follow when <see cref="HasMins"/>).</summary>
    static abstract int DAt { get; }

    /// <summary>True for Q4_K and Q5_K, whose values are d·sc·q − dmin·m.</summary>
    static abstract bool HasMins { get; }

    /// <summary>Where the super-block's mins are, as 4 × 16 bytes of (unit 2p, unit 2p+1) pairs per row.</summary>
    static abstract int MinsAt { get; }

    /// <summary>Unpacks unit <paramref name="unit"/> of the strip super-block at <paramref name="superBlock"/>.</summary>
    static abstract TSelf Load(byte* superBlock, int unit);

    /// <summary>
    /// The 8 rows' Σ sc·q·a over the unit, against a token's 32 quants <paramref name="activations"/> (read 4 at a
    /// time, as broadcasts); Q6_K takes its −32 off through the unit's two sums of 16 at <paramref name="sums16"/>.
    /// </summary>
    Vector256<int> Dot(int* activations, int* sums16);

    /// <summary>As <see cref="Dot"/> for unit <paramref name="unit"/> of two strips' super-blocks at once (AVX-512): 16 rows, one token.</summary>
    static abstract Vector512<int> DotPair(byte* first, byte* second, int unit, int* activations, int* sums16);
}

/// <summary>
/// The K-quant kernels: one strip of 8 rows (two groups) × up to 8 tokens per tile, 256-bit (AVX2), over one segment
/// of a <see cref="PackedMatrix"/>; a single token (decode) on the AVX-512 path takes two strips per 512-bit tile. Per super-block and token, the units' int32 sums Σ sc·Σq·a collect
/// in registers; then one conversion, d·d_a and an FMA, and for Q4_K/Q5_K the mins' Σ m·(sum of 32) times dmin·d_a
/// taken off. Within a unit the int16 pair sums of vpmaddubsw stay below 2^15 — Q4_K's 16 products per lane
/// (≤ 16·15·127), Q5_K's 8 (≤ 8·31·127), Q6_K's 4 (≤ 4·63·127) — before one vpmaddwd applies each row's scales.
/// </summary>
internal static unsafe class KStripKernels
{
    private const int Lower = 1, Upper = 2, Both = 3;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run<TUnit, TEpilogue>(KSegment segment, int k, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TUnit : struct, IKStripUnit<TUnit> where TEpilogue : struct, ITileEpilogue
    {
        int tokens = input.Tokens, stride = input.QuantStride;
        for (int t0 = 0; t0 < tokens; t0 += 8)
        {
            byte* x = input.Quants + (long)t0 * stride;
            switch (Math.Min(8, tokens - t0))
            {
                case 8: Strips<TUnit, Eight, TEpilogue>(segment, k, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 7: Strips<TUnit, Seven, TEpilogue>(segment, k, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 6: Strips<TUnit, Six, TEpilogue>(segment, k, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 5: Strips<TUnit, Five, TEpilogue>(segment, k, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 4: Strips<TUnit, Four, TEpilogue>(segment, k, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 3: Strips<TUnit, Three, TEpilogue>(segment, k, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 2: Strips<TUnit, Two, TEpilogue>(segment, k, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                default: Strips<TUnit, One, TEpilogue>(segment, k, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
            }
        }
    }

    // Groups [firstGroup, endGroup) of the segment (matrix numbering); its strips pair groups counted from its first.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Strips<TUnit, TTokens, TEpilogue>(KSegment segment, int k, byte* x, int stride, int t0, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TUnit : struct, IKStripUnit<TUnit> where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        long stripBytes = segment.StripBytes;
        int superBlocks = k / KStrip.SuperBlockValues, first = segment.FirstGroup, g = firstGroup;
        bool prefetch = TTokens.Value == 1 || t0 == 0;
        if (((g - first) & 1) != 0 && g < endGroup)
        {
            Tile<TUnit, TTokens, TEpilogue>(segment.StripOfGroup(g), stripBytes, superBlocks, x, stride, (g - 1) * 4, t0, prefetch, Upper, ref epilogue);
            g++;
        }
        // One token (decode) is bound by unpacking the weights: with AVX-512, two strips (16 rows) per instruction.
        if (TTokens.Value == 1 && KernelPaths.Uses512Bits)
            for (; g + 4 <= endGroup; g += 4)
                PairTile<TUnit, TEpilogue>(segment.StripOfGroup(g), stripBytes, superBlocks, x, g * 4, t0, ref epilogue);
        for (; g + 2 <= endGroup; g += 2)
            Tile<TUnit, TTokens, TEpilogue>(segment.StripOfGroup(g), stripBytes, superBlocks, x, stride, g * 4, t0, prefetch, Both, ref epilogue);
        if (g < endGroup)
            Tile<TUnit, TTokens, TEpilogue>(segment.StripOfGroup(g), stripBytes, superBlocks, x, stride, g * 4, t0, prefetch, Lower, ref epilogue);
    }

    // TTokens (1-8) tokens × one strip; aT holds token t0 + T's running sums of the strip's 8 rows, iT its integer
    // sums over the current super-block.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TUnit, TTokens, TEpilogue>(byte* strip, long stripBytes, int superBlocks, byte* x, int stride,
        int row, int t0, bool prefetch, int halves, ref TEpilogue epilogue)
        where TUnit : struct, IKStripUnit<TUnit> where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        // Token t: quants at x + t·stride, then its super-block scales, sums of 32 and sums of 16.
        int scalesAt = GemmScratch.SuperScalesAt(superBlocks), sums32At = GemmScratch.Sums32At(superBlocks), sums16At = GemmScratch.Sums16At(superBlocks);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int b = 0; b < superBlocks; b++)
        {
            byte* s = strip + (long)b * TUnit.SuperBytes;
            if (prefetch)
            {
                // The next strip streams from memory while this one computes: its super-block b, a line per line consumed.
                byte* ahead = s + stripBytes;
                for (int l = 0; l < TUnit.SuperBytes; l += 64) Sse.Prefetch0(ahead + l);
            }
            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default, i4 = default, i5 = default, i6 = default, i7 = default;
            byte* xb = x + b * KStrip.SuperBlockValues;
            int* sb = (int*)(x + sums16At + b * 32);
            for (int u = 0; u < KStrip.Units; u++)
            {
                var w = TUnit.Load(s, u);
                int* au = (int*)(xb + u * 32);
                int* su = sb + u;
                i0 += w.Dot(au, su);
                if (TTokens.Value > 1) i1 += w.Dot((int*)((byte*)au + stride), (int*)((byte*)su + stride));
                if (TTokens.Value > 2) i2 += w.Dot((int*)((byte*)au + 2 * stride), (int*)((byte*)su + 2 * stride));
                if (TTokens.Value > 3) i3 += w.Dot((int*)((byte*)au + 3 * stride), (int*)((byte*)su + 3 * stride));
                if (TTokens.Value > 4) i4 += w.Dot((int*)((byte*)au + 4 * stride), (int*)((byte*)su + 4 * stride));
                if (TTokens.Value > 5) i5 += w.Dot((int*)((byte*)au + 5 * stride), (int*)((byte*)su + 5 * stride));
                if (TTokens.Value > 6) i6 += w.Dot((int*)((byte*)au + 6 * stride), (int*)((byte*)su + 6 * stride));
                if (TTokens.Value > 7) i7 += w.Dot((int*)((byte*)au + 7 * stride), (int*)((byte*)su + 7 * stride));
            }
            Vector256<float> d = StripKernels.Scales(s + TUnit.DAt);
            Vector256<float> dMin = TUnit.HasMins ? StripKernels.Scales(s + TUnit.DAt + 16) : default;
            byte* scales = x + scalesAt + b * sizeof(float), sums = x + sums32At + b * 16;
            a0 = Finish<TUnit>(a0, i0, d, dMin, s, scales, sums);
            if (TTokens.Value > 1) a1 = Finish<TUnit>(a1, i1, d, dMin, s, scales + stride, sums + stride);
            if (TTokens.Value > 2) a2 = Finish<TUnit>(a2, i2, d, dMin, s, scales + 2 * stride, sums + 2 * stride);
            if (TTokens.Value > 3) a3 = Finish<TUnit>(a3, i3, d, dMin, s, scales + 3 * stride, sums + 3 * stride);
            if (TTokens.Value > 4) a4 = Finish<TUnit>(a4, i4, d, dMin, s, scales + 4 * stride, sums + 4 * stride);
            if (TTokens.Value > 5) a5 = Finish<TUnit>(a5, i5, d, dMin, s, scales + 5 * stride, sums + 5 * stride);
            if (TTokens.Value > 6) a6 = Finish<TUnit>(a6, i6, d, dMin, s, scales + 6 * stride, sums + 6 * stride);
            if (TTokens.Value > 7) a7 = Finish<TUnit>(a7, i7, d, dMin, s, scales + 7 * stride, sums + 7 * stride);
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

    // One token × two consecutive strips (16 rows): every 512-bit vector holds a strip's 256-bit vector in each half,
    // so one instruction serves both and the token's activations are broadcast once for 16 rows.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PairTile<TUnit, TEpilogue>(byte* strip, long stripBytes, int superBlocks, byte* x, int row, int token, ref TEpilogue epilogue)
        where TUnit : struct, IKStripUnit<TUnit> where TEpilogue : struct, ITileEpilogue
    {
        float* scales = (float*)(x + GemmScratch.SuperScalesAt(superBlocks));
        byte* sums32 = x + GemmScratch.Sums32At(superBlocks);
        int* sums16 = (int*)(x + GemmScratch.Sums16At(superBlocks));
        Vector512<float> sum = default;
        for (int b = 0; b < superBlocks; b++)
        {
            byte* s = strip + (long)b * TUnit.SuperBytes, t = s + stripBytes;
            byte* ahead = s + 2 * stripBytes; // the next pair streams in while this one computes
            for (int l = 0; l < 2 * TUnit.SuperBytes; l += 64) Sse.Prefetch0(ahead + (l < TUnit.SuperBytes ? l : stripBytes + l - TUnit.SuperBytes));
            Vector512<int> dots = default;
            for (int u = 0; u < KStrip.Units; u++)
                dots += TUnit.DotPair(s, t, u, (int*)(x + b * KStrip.SuperBlockValues + u * 32), sums16 + b * 8 + u);
            var activationScale = Vector512.Create(scales[b]);
            sum = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(dots), StripKernels.Scales(s + TUnit.DAt, t + TUnit.DAt) * activationScale, sum);
            if (TUnit.HasMins)
            {
                byte* m0 = s + TUnit.MinsAt, m1 = t + TUnit.MinsAt;
                int* pairs = (int*)(sums32 + b * 16);
                Vector512<int> offsets = Avx512BW.MultiplyAddAdjacent(Widen(m0, m1), Vector512.Create(pairs[0]).AsInt16())
                    + Avx512BW.MultiplyAddAdjacent(Widen(m0 + 16, m1 + 16), Vector512.Create(pairs[1]).AsInt16())
                    + (Avx512BW.MultiplyAddAdjacent(Widen(m0 + 32, m1 + 32), Vector512.Create(pairs[2]).AsInt16())
                    + Avx512BW.MultiplyAddAdjacent(Widen(m0 + 48, m1 + 48), Vector512.Create(pairs[3]).AsInt16()));
                sum = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(offsets), -(StripKernels.Scales(s + TUnit.DAt + 16, t + TUnit.DAt + 16) * activationScale), sum);
            }
        }
        epilogue.Store(row, token, sum.GetLower().GetLower());
        epilogue.Store(row + 4, token, sum.GetLower().GetUpper());
        epilogue.Store(row + 8, token, sum.GetUpper().GetLower());
        epilogue.Store(row + 12, token, sum.GetUpper().GetUpper());
    }


    /// <summary>16 bytes of each strip as 32 int16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> Widen(byte* first, byte* second) =>
        Avx512BW.ConvertToVector512Int16(Vector256.Create(Vector128.Load(first), Vector128.Load(second)));

    /// <summary>Two strips' 8 per-row bytes as int16 pairs [s, s] per row, 16 rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> RowPairs(byte* first, byte* second)
    {
        Vector512<int> widened = Avx512F.ConvertToVector512Int32(Vector128.Create(*(ulong*)first, *(ulong*)second).AsByte());
        return (widened | (widened << 16)).AsInt16();
    }

    /// <summary>Σ over 4 vectors of quants against broadcasts of 4 activations each, in int16, 16 rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> Products(Vector512<byte> w0, Vector512<byte> w1, Vector512<byte> w2, Vector512<byte> w3, int* a) =>
        Avx512BW.MultiplyAddAdjacent(w0, Vector512.Create(a[0]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(w1, Vector512.Create(a[1]).AsSByte())
        + (Avx512BW.MultiplyAddAdjacent(w2, Vector512.Create(a[2]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(w3, Vector512.Create(a[3]).AsSByte()));

    /// <summary>One token's super-block into its running sums: + d·d_a·Σ, and − dmin·d_a·Σ m·(sum of 32) where there are mins.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Finish<TUnit>(Vector256<float> accumulator, Vector256<int> sums, Vector256<float> d, Vector256<float> dMin,
        byte* superBlock, byte* scale, byte* sums32) where TUnit : struct, IKStripUnit<TUnit>
    {
        var activationScale = Vector256.Create(*(float*)scale);
        accumulator = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(sums), d * activationScale, accumulator);
        if (!TUnit.HasMins) return accumulator;
        byte* mins = superBlock + TUnit.MinsAt;
        int* pairs = (int*)sums32;
        Vector256<int> offsets = Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(mins), Vector256.Create(pairs[0]).AsInt16())
            + Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(mins + 16), Vector256.Create(pairs[1]).AsInt16())
            + (Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(mins + 32), Vector256.Create(pairs[2]).AsInt16())
            + Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(mins + 48), Vector256.Create(pairs[3]).AsInt16()));
        return Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(offsets), -(dMin * activationScale), accumulator);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<TEpilogue>(ref TEpilogue epilogue, int row, int token, int halves, Vector256<float> sums)
        where TEpilogue : struct, ITileEpilogue
    {
        if ((halves & Lower) != 0) epilogue.Store(row, token, sums.GetLower());
        if ((halves & Upper) != 0) epilogue.Store(row + 4, token, sums.GetUpper());
    }

    /// <summary>8 bytes (one per row) as int16 pairs [s, s] per row: a per-row factor for vpmaddwd.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> RowPairs(byte* scales)
    {
        Vector256<int> widened = Avx2.ConvertToVector256Int32(scales);
        return (widened | (widened << 16)).AsInt16();
    }

    /// <summary>Σ over 4 stored vectors of nibbles (low: vectors 0-3, high: 4-7) against broadcasts of 4 activations each, in int16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> Products(Vector256<byte> w0, Vector256<byte> w1, Vector256<byte> w2, Vector256<byte> w3, int* a) =>
        Avx2.MultiplyAddAdjacent(w0, Vector256.Create(a[0]).AsSByte()) + Avx2.MultiplyAddAdjacent(w1, Vector256.Create(a[1]).AsSByte())
        + (Avx2.MultiplyAddAdjacent(w2, Vector256.Create(a[2]).AsSByte()) + Avx2.MultiplyAddAdjacent(w3, Vector256.Create(a[3]).AsSByte()));

    /// <summary>Q4_K: the unit's 8 vectors of 4-bit quants and each row's scale; all 16 products of a lane sum in int16.</summary>
    internal struct Q4KUnit : IKStripUnit<Q4KUnit>
    {
        private Vector256<byte> _low0, _low1, _low2, _low3, _high0, _high1, _high2, _high3;
        private Vector256<short> _scale;

        public static int SuperBytes => 1184;

        public static int DAt => 1152;

        public static bool HasMins => true;

        public static int MinsAt => 1088;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Q4KUnit Load(byte* superBlock, int unit)
        {
            var mask = Vector256.Create((byte)0x0F);
            byte* q = superBlock + unit * KStrip.UnitBytes;
            Vector256<byte> v0 = Vector256.Load(q), v1 = Vector256.Load(q + 32), v2 = Vector256.Load(q + 64), v3 = Vector256.Load(q + 96);
            Q4KUnit w;
            w._low0 = v0 & mask;
            w._low1 = v1 & mask;
            w._low2 = v2 & mask;
            w._low3 = v3 & mask;
            w._high0 = (v0.AsUInt16() >>> 4).AsByte() & mask;
            w._high1 = (v1.AsUInt16() >>> 4).AsByte() & mask;
            w._high2 = (v2.AsUInt16() >>> 4).AsByte() & mask;
            w._high3 = (v3.AsUInt16() >>> 4).AsByte() & mask;
            w._scale = RowPairs(superBlock + 1024 + unit * 8);
            return w;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector256<int> Dot(int* a, int* sums16) =>
            Avx2.MultiplyAddAdjacent(Products(_low0, _low1, _low2, _low3, a) + Products(_high0, _high1, _high2, _high3, a + 4), _scale);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<int> DotPair(byte* first, byte* second, int unit, int* a, int* sums16)
        {
            var mask = Vector512.Create((byte)0x0F);
            byte* p = first + unit * KStrip.UnitBytes, q = second + unit * KStrip.UnitBytes;
            Vector512<byte> v0 = StripKernels.Pair(p, q), v1 = StripKernels.Pair(p + 32, q + 32), v2 = StripKernels.Pair(p + 64, q + 64), v3 = StripKernels.Pair(p + 96, q + 96);
            Vector512<short> low = Products(v0 & mask, v1 & mask, v2 & mask, v3 & mask, a);
            Vector512<short> high = Products((v0.AsUInt16() >>> 4).AsByte() & mask, (v1.AsUInt16() >>> 4).AsByte() & mask,
                (v2.AsUInt16() >>> 4).AsByte() & mask, (v3.AsUInt16() >>> 4).AsByte() & mask, a + 4);
            return Avx512BW.MultiplyAddAdjacent(low + high, RowPairs(first + 1024 + unit * 8, second + 1024 + unit * 8));
        }
    }

    /// <summary>Q5_K: as Q4_K with each vector's fifth bit put back from the unit's 32 bytes of them; 8 products per lane in int16.</summary>
    internal struct Q5KUnit : IKStripUnit<Q5KUnit>
    {
        private Vector256<byte> _low0, _low1, _low2, _low3, _high0, _high1, _high2, _high3;
        private Vector256<short> _scale;

        public static int SuperBytes => 1440;

        public static int DAt => 1408;

        public static bool HasMins => true;

        public static int MinsAt => 1344;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Q5KUnit Load(byte* superBlock, int unit)
        {
            var mask = Vector256.Create((byte)0x0F);
            var bit = Vector256.Create((byte)0x10);
            byte* q = superBlock + unit * KStrip.UnitBytes;
            Vector256<byte> v0 = Vector256.Load(q), v1 = Vector256.Load(q + 32), v2 = Vector256.Load(q + 64), v3 = Vector256.Load(q + 96);
            // Bit v of each byte is vector v's fifth bit: shifted to bit 4 in 16-bit lanes (what crosses a byte is masked off).
            Vector256<ushort> high = Vector256.Load(superBlock + KStrip.NibbleBytes + unit * 32).AsUInt16();
            Q5KUnit w;
            w._low0 = (v0 & mask) | ((high << 4).AsByte() & bit);
            w._low1 = (v1 & mask) | ((high << 3).AsByte() & bit);
            w._low2 = (v2 & mask) | ((high << 2).AsByte() & bit);
            w._low3 = (v3 & mask) | ((high << 1).AsByte() & bit);
            w._high0 = ((v0.AsUInt16() >>> 4).AsByte() & mask) | (high.AsByte() & bit);
            w._high1 = ((v1.AsUInt16() >>> 4).AsByte() & mask) | ((high >>> 1).AsByte() & bit);
            w._high2 = ((v2.AsUInt16() >>> 4).AsByte() & mask) | ((high >>> 2).AsByte() & bit);
            w._high3 = ((v3.AsUInt16() >>> 4).AsByte() & mask) | ((high >>> 3).AsByte() & bit);
            w._scale = RowPairs(superBlock + 1280 + unit * 8);
            return w;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector256<int> Dot(int* a, int* sums16) =>
            Avx2.MultiplyAddAdjacent(Products(_low0, _low1, _low2, _low3, a), _scale)
            + Avx2.MultiplyAddAdjacent(Products(_high0, _high1, _high2, _high3, a + 4), _scale);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<int> DotPair(byte* first, byte* second, int unit, int* a, int* sums16)
        {
            var mask = Vector512.Create((byte)0x0F);
            var bit = Vector512.Create((byte)0x10);
            byte* p = first + unit * KStrip.UnitBytes, q = second + unit * KStrip.UnitBytes;
            Vector512<byte> v0 = StripKernels.Pair(p, q), v1 = StripKernels.Pair(p + 32, q + 32), v2 = StripKernels.Pair(p + 64, q + 64), v3 = StripKernels.Pair(p + 96, q + 96);
            Vector512<ushort> high = StripKernels.Pair(first + KStrip.NibbleBytes + unit * 32, second + KStrip.NibbleBytes + unit * 32).AsUInt16();
            Vector512<short> scale = RowPairs(first + 1280 + unit * 8, second + 1280 + unit * 8);
            Vector512<short> low = Products((v0 & mask) | ((high << 4).AsByte() & bit), (v1 & mask) | ((high << 3).AsByte() & bit),
                (v2 & mask) | ((high << 2).AsByte() & bit), (v3 & mask) | ((high << 1).AsByte() & bit), a);
            Vector512<short> upper = Products(((v0.AsUInt16() >>> 4).AsByte() & mask) | (high.AsByte() & bit), ((v1.AsUInt16() >>> 4).AsByte() & mask) | ((high >>> 1).AsByte() & bit),
                ((v2.AsUInt16() >>> 4).AsByte() & mask) | ((high >>> 2).AsByte() & bit), ((v3.AsUInt16() >>> 4).AsByte() & mask) | ((high >>> 3).AsByte() & bit), a + 4);
            return Avx512BW.MultiplyAddAdjacent(low, scale) + Avx512BW.MultiplyAddAdjacent(upper, scale);
        }
    }

    /// <summary>
    /// Q6_K: the unit's 8 vectors of 6-bit quants (0..63) and each row's two int8 scales (A, B) as one int16 pair: a
    /// lane's pair sums hold A's values then B's, so one vpmaddwd applies both. The −32 comes off as 32·(sA·ΣA + sB·ΣB).
    /// </summary>
    internal struct Q6KUnit : IKStripUnit<Q6KUnit>
    {
        private Vector256<byte> _low0, _low1, _low2, _low3, _high0, _high1, _high2, _high3;
        private Vector256<short> _scale;

        public static int SuperBytes => 1680;

        public static int DAt => 1664;

        public static bool HasMins => false;

        public static int MinsAt => 0;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Q6KUnit Load(byte* superBlock, int unit)
        {
            var mask = Vector256.Create((byte)0x0F);
            var bits = Vector256.Create((byte)0x30);
            byte* q = superBlock + unit * KStrip.UnitBytes;
            Vector256<byte> v0 = Vector256.Load(q), v1 = Vector256.Load(q + 32), v2 = Vector256.Load(q + 64), v3 = Vector256.Load(q + 96);
            // Bits 2v, 2v+1 of each byte are vector v's top two: shifted to bits 4-5 in 16-bit lanes (what crosses a byte is masked off).
            byte* top = superBlock + KStrip.NibbleBytes + unit * 64;
            Vector256<ushort> low = Vector256.Load(top).AsUInt16(), high = Vector256.Load(top + 32).AsUInt16();
            Q6KUnit w;
            w._low0 = (v0 & mask) | ((low << 4).AsByte() & bits);
            w._low1 = (v1 & mask) | ((low << 2).AsByte() & bits);
            w._low2 = (v2 & mask) | (low.AsByte() & bits);
            w._low3 = (v3 & mask) | ((low >>> 2).AsByte() & bits);
            w._high0 = ((v0.AsUInt16() >>> 4).AsByte() & mask) | ((high << 4).AsByte() & bits);
            w._high1 = ((v1.AsUInt16() >>> 4).AsByte() & mask) | ((high << 2).AsByte() & bits);
            w._high2 = ((v2.AsUInt16() >>> 4).AsByte() & mask) | (high.AsByte() & bits);
            w._high3 = ((v3.AsUInt16() >>> 4).AsByte() & mask) | ((high >>> 2).AsByte() & bits);
            w._scale = Avx2.ConvertToVector256Int16((sbyte*)(superBlock + 1536 + unit * 16));
            return w;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector256<int> Dot(int* a, int* sums16)
        {
            // Two vectors' pair sums (≤ 2·2·63·127) fit int16; four would not.
            Vector256<short> p0 = Avx2.MultiplyAddAdjacent(_low0, Vector256.Create(a[0]).AsSByte()) + Avx2.MultiplyAddAdjacent(_low1, Vector256.Create(a[1]).AsSByte());
            Vector256<short> p1 = Avx2.MultiplyAddAdjacent(_low2, Vector256.Create(a[2]).AsSByte()) + Avx2.MultiplyAddAdjacent(_low3, Vector256.Create(a[3]).AsSByte());
            Vector256<short> p2 = Avx2.MultiplyAddAdjacent(_high0, Vector256.Create(a[4]).AsSByte()) + Avx2.MultiplyAddAdjacent(_high1, Vector256.Create(a[5]).AsSByte());
            Vector256<short> p3 = Avx2.MultiplyAddAdjacent(_high2, Vector256.Create(a[6]).AsSByte()) + Avx2.MultiplyAddAdjacent(_high3, Vector256.Create(a[7]).AsSByte());
            Vector256<int> dot = (Avx2.MultiplyAddAdjacent(p0, _scale) + Avx2.MultiplyAddAdjacent(p1, _scale))
                + (Avx2.MultiplyAddAdjacent(p2, _scale) + Avx2.MultiplyAddAdjacent(p3, _scale));
            return dot - (Avx2.MultiplyAddAdjacent(_scale, Vector256.Create(*sums16).AsInt16()) << 5);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<int> DotPair(byte* first, byte* second, int unit, int* a, int* sums16)
        {
            var mask = Vector512.Create((byte)0x0F);
            var bits = Vector512.Create((byte)0x30);
            byte* p = first + unit * KStrip.UnitBytes, q = second + unit * KStrip.UnitBytes;
            Vector512<byte> v0 = StripKernels.Pair(p, q), v1 = StripKernels.Pair(p + 32, q + 32), v2 = StripKernels.Pair(p + 64, q + 64), v3 = StripKernels.Pair(p + 96, q + 96);
            byte* top0 = first + KStrip.NibbleBytes + unit * 64, top1 = second + KStrip.NibbleBytes + unit * 64;
            Vector512<ushort> low = StripKernels.Pair(top0, top1).AsUInt16(), high = StripKernels.Pair(top0 + 32, top1 + 32).AsUInt16();
            Vector512<short> scale = Avx512BW.ConvertToVector512Int16(Vector256.Create(Vector128.Load((sbyte*)first + 1536 + unit * 16), Vector128.Load((sbyte*)second + 1536 + unit * 16)));
            Vector512<short> p0 = Avx512BW.MultiplyAddAdjacent((v0 & mask) | ((low << 4).AsByte() & bits), Vector512.Create(a[0]).AsSByte())
                + Avx512BW.MultiplyAddAdjacent((v1 & mask) | ((low << 2).AsByte() & bits), Vector512.Create(a[1]).AsSByte());
            Vector512<short> p1 = Avx512BW.MultiplyAddAdjacent((v2 & mask) | (low.AsByte() & bits), Vector512.Create(a[2]).AsSByte())
                + Avx512BW.MultiplyAddAdjacent((v3 & mask) | ((low >>> 2).AsByte() & bits), Vector512.Create(a[3]).AsSByte());
            Vector512<short> p2 = Avx512BW.MultiplyAddAdjacent(((v0.AsUInt16() >>> 4).AsByte() & mask) | ((high << 4).AsByte() & bits), Vector512.Create(a[4]).AsSByte())
                + Avx512BW.MultiplyAddAdjacent(((v1.AsUInt16() >>> 4).AsByte() & mask) | ((high << 2).AsByte() & bits), Vector512.Create(a[5]).AsSByte());
            Vector512<short> p3 = Avx512BW.MultiplyAddAdjacent(((v2.AsUInt16() >>> 4).AsByte() & mask) | (high.AsByte() & bits), Vector512.Create(a[6]).AsSByte())
                + Avx512BW.MultiplyAddAdjacent(((v3.AsUInt16() >>> 4).AsByte() & mask) | ((high >>> 2).AsByte() & bits), Vector512.Create(a[7]).AsSByte());
            Vector512<int> dot = (Avx512BW.MultiplyAddAdjacent(p0, scale) + Avx512BW.MultiplyAddAdjacent(p1, scale))
                + (Avx512BW.MultiplyAddAdjacent(p2, scale) + Avx512BW.MultiplyAddAdjacent(p3, scale));
            return dot - (Avx512BW.MultiplyAddAdjacent(scale, Vector512.Create(*sums16).AsInt16()) << 5);
        }
    }
}
