using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Kernels.Quantized;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// How one quantized format's strip block (32 elements × 8 rows, <see cref="PackedMatrix"/>) meets one token's Q8
/// block: an operator struct holding the block's weights unpacked once, in registers, for every token of a tile.
/// </summary>
internal unsafe interface IStripBlock<TSelf> where TSelf : struct, IStripBlock<TSelf>
{
    /// <summary>Bytes of quants per strip block.</summary>
    static abstract int BlockBytes { get; }

    /// <summary>Unpacks the strip block at <paramref name="quants"/>.</summary>
    static abstract TSelf Load(byte* quants);

    /// <summary>
    /// The 8 rows' int32 dots with a token's 32 compact quants <paramref name="activations"/> (read 4 at a time, as
    /// broadcasts), the block's offset at <paramref name="offset"/> taken off where the format stores its quants
    /// shifted (Q4_0's n − 8).
    /// </summary>
    Vector256<int> Dot(int* activations, int* offset);

    /// <summary>As <see cref="Dot"/> for the block at the same place of two strips at once (AVX-512): 16 rows, one token.</summary>
    static abstract Vector512<int> DotPair(byte* first, byte* second, int* activations, int* offset);
}

/// <summary>
/// The quantized kernels: one strip of 8 rows (two groups) × up to 8 tokens per tile, 256-bit, so they need only
/// AVX2; a single token (decode) on the AVX-512 path takes two strips per 512-bit tile. Every multiply-add takes one broadcast of 4 activations against 4 bytes of each of the 8 rows,
/// so the int32 sums come out one per row, complete, and the tail (offset, convert, scale, FMA) is paid once per
/// 8 rows and block. Per 256 multiply-adds: Q4_0 8 vpmaddubsw summed in int16 (nibbles cannot saturate: ≤ 8·2·15·127
/// = 30480) and one vpmaddwd; Q8_0 8 vpsignb, 8 vpmaddubsw and 8 vpmaddwd (two byte products would overflow int16).
/// </summary>
internal static unsafe class StripKernels
{
    // Which halves of a strip's tile go to the epilogue: both, or the one group of a range that starts or ends mid-strip.
    private const int Lower = 1, Upper = 2, Both = 3;

    // Compiled optimized from the first call: a tier-0 tile (not inlined) runs ~20× slower, and the rarer
    // instantiations (a short token tile, a half strip) would otherwise stay there for many calls.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run<TBlock, TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TBlock : struct, IStripBlock<TBlock> where TEpilogue : struct, ITileEpilogue
    {
        int tokens = input.Tokens, stride = input.QuantStride;
        for (int t0 = 0; t0 < tokens; t0 += 8)
        {
            byte* x = input.Quants + (long)t0 * stride;
            switch (Math.Min(8, tokens - t0))
            {
                case 8: Strips<TBlock, Eight, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 7: Strips<TBlock, Seven, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 6: Strips<TBlock, Six, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 5: Strips<TBlock, Five, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 4: Strips<TBlock, Four, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 3: Strips<TBlock, Three, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                case 2: Strips<TBlock, Two, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
                default: Strips<TBlock, One, TEpilogue>(weights, x, stride, t0, firstGroup, endGroup, ref epilogue); break;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Strips<TBlock, TTokens, TEpilogue>(PackedMatrix weights, byte* x, int stride, int t0, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TBlock : struct, IStripBlock<TBlock> where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        byte* data = weights.Data;
        long stripBytes = weights.StripBytes;
        int blocks = weights.Blocks, g = firstGroup;
        // The first token tile meets the range's weights in memory: it prefetches the next strip's as it goes.
        bool prefetch = TTokens.Value == 1 || t0 == 0;
        if ((g & 1) != 0 && g < endGroup)
        {
            Tile<TBlock, TTokens, TEpilogue>(data + (g >> 1) * stripBytes, stripBytes, blocks, x, stride, (g - 1) * 4, t0, prefetch, Upper, ref epilogue);
            g++;
        }
        // One token (decode) is bound by unpacking the weights: with AVX-512, two strips (16 rows) per instruction.
        if (TTokens.Value == 1 && KernelPaths.Uses512Bits)
            for (; g + 4 <= endGroup; g += 4)
                PairTile<TBlock, TEpilogue>(data + (g >> 1) * stripBytes, stripBytes, blocks, x, g * 4, t0, ref epilogue);
        for (; g + 2 <= endGroup; g += 2)
            Tile<TBlock, TTokens, TEpilogue>(data + (g >> 1) * stripBytes, stripBytes, blocks, x, stride, g * 4, t0, prefetch, Both, ref epilogue);
        if (g < endGroup)
            Tile<TBlock, TTokens, TEpilogue>(data + (g >> 1) * stripBytes, stripBytes, blocks, x, stride, g * 4, t0, prefetch, Lower, ref epilogue);
    }

    // TTokens (1-8) tokens × one strip; accumulator aT holds token t0 + T's running sums of the strip's 8 rows.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TBlock, TTokens, TEpilogue>(byte* strip, long stripBytes, int blocks, byte* x, int stride,
        int row, int t0, bool prefetch, int halves, ref TEpilogue epilogue)
        where TBlock : struct, IStripBlock<TBlock> where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        byte* scales = strip + (long)blocks * TBlock.BlockBytes; // 8 fp16 per block
        // Token t: 32 quants per block at x + t·stride, then one int32 offset per block, then one float scale per block.
        int offsetBytes = GemmScratch.OffsetsAt(blocks), scaleBytes = GemmScratch.ScalesAt(blocks);
        // The next strip streams from memory while this one computes: one line ahead per line consumed.
        byte* ahead = strip + stripBytes;
        long aheadStep = stripBytes / blocks;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int b = 0; b < blocks; b++)
        {
            if (prefetch)
            {
                byte* line = ahead + b * aheadStep;
                for (int l = 0; l < TBlock.BlockBytes + 64; l += 64) Sse.Prefetch0(line + l);
            }
            var w = TBlock.Load(strip + (long)b * TBlock.BlockBytes);
            Vector256<float> d = Scales(scales + b * 16);
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

    // One token × two consecutive strips (16 rows): each 512-bit vector holds a strip's 256-bit vector in each half.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PairTile<TBlock, TEpilogue>(byte* strip, long stripBytes, int blocks, byte* x, int row, int token, ref TEpilogue epilogue)
        where TBlock : struct, IStripBlock<TBlock> where TEpilogue : struct, ITileEpilogue
    {
        byte* second = strip + stripBytes;
        long scalesAt = (long)blocks * TBlock.BlockBytes;
        int* offsets = (int*)(x + GemmScratch.OffsetsAt(blocks));
        float* activationScales = (float*)(x + GemmScratch.ScalesAt(blocks));
        byte* ahead = strip + 2 * stripBytes; // the next pair streams in while this one computes
        long aheadStep = stripBytes / blocks;
        Vector512<float> sum = default;
        for (int b = 0; b < blocks; b++)
        {
            byte* line = ahead + b * aheadStep;
            for (int l = 0; l < TBlock.BlockBytes + 64; l += 64)
            {
                Sse.Prefetch0(line + l);
                Sse.Prefetch0(line + stripBytes + l);
            }
            Vector512<int> dots = TBlock.DotPair(strip + (long)b * TBlock.BlockBytes, second + (long)b * TBlock.BlockBytes, (int*)(x + b * 32), offsets + b);
            Vector512<float> d = Scales(strip + scalesAt + b * 16, second + scalesAt + b * 16);
            sum = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(dots), d * Vector512.Create(activationScales[b]), sum);
        }
        epilogue.Store(row, token, sum.GetLower().GetLower());
        epilogue.Store(row + 4, token, sum.GetLower().GetUpper());
        epilogue.Store(row + 8, token, sum.GetUpper().GetLower());
        epilogue.Store(row + 12, token, sum.GetUpper().GetUpper());
    }

    /// <summary>Two strips' 32-byte vectors at the same place, one per half.</summary>
    /// <remarks>A load and an insert from memory: Vector512.Create of two halves goes through the stack in the JIT's code.</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<byte> Pair(byte* first, byte* second) =>
        Avx512F.InsertVector256(Vector256.Load(first).ToVector512Unsafe(), Vector256.Load(second), 1);

    /// <summary>Two strips' 8 fp16 scales (rows 0..7 of each) as 16 floats, widened as <see cref="Scales(byte*)"/> does.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Scales(byte* first, byte* second)
    {
        Vector256<ushort> halves = Avx2.InsertVector128(Vector128.Load((ushort*)first).ToVector256Unsafe(), Vector128.Load((ushort*)second), 1);
        Vector512<int> top = Avx512F.ConvertToVector512Int32(halves) << 16;
        return ((top >> 3) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector512.Create(5.192296858534828E+33f);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Token<TBlock>(Vector256<float> accumulator, in TBlock w, Vector256<float> d, byte* quants, int* offset, float* scale)
        where TBlock : struct, IStripBlock<TBlock> =>
        Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(w.Dot((int*)quants, offset)), d * Vector256.Create(*scale), accumulator);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<TEpilogue>(ref TEpilogue epilogue, int row, int token, int halves, Vector256<float> sums)
        where TEpilogue : struct, ITileEpilogue
    {
        if ((halves & Lower) != 0) epilogue.Store(row, token, sums.GetLower());
        if ((halves & Upper) != 0) epilogue.Store(row + 4, token, sums.GetUpper());
    }

    /// <summary>
    /// The eight fp16 scales at <paramref name="halves"/> (rows 0..7 of a strip's block) as floats. Each half goes to
    /// the top of an int32 lane; an arithmetic shift by 3 puts exponent and mantissa in float position (the three
    /// sign copies it leaves above the exponent are masked off) and × 2^112 re-biases the exponent: exact for normal
    /// and subnormal halves (scales are finite).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Scales(byte* halves)
    {
        Vector256<int> top = Avx2.ConvertToVector256Int32((ushort*)halves) << 16;
        return ((top >> 3) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector256.Create(5.192296858534828E+33f);
    }

    /// <summary>Q4_0: vector j's low nibbles (elements 4j..4j+3 of the 8 rows) and high ones (16 + the same), unsigned; the −8 comes off as the offset.</summary>
    internal struct Q4Block : IStripBlock<Q4Block>
    {
        private Vector256<byte> _low0, _low1, _low2, _low3, _high0, _high1, _high2, _high3;

        public static int BlockBytes => PackedMatrix.Q4BlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Q4Block Load(byte* quants)
        {
            var mask = Vector256.Create((byte)0x0F);
            Vector256<byte> v0 = Vector256.Load(quants), v1 = Vector256.Load(quants + 32);
            Vector256<byte> v2 = Vector256.Load(quants + 64), v3 = Vector256.Load(quants + 96);
            Q4Block block;
            block._low0 = v0 & mask;
            block._low1 = v1 & mask;
            block._low2 = v2 & mask;
            block._low3 = v3 & mask;
            block._high0 = (v0.AsUInt16() >>> 4).AsByte() & mask;
            block._high1 = (v1.AsUInt16() >>> 4).AsByte() & mask;
            block._high2 = (v2.AsUInt16() >>> 4).AsByte() & mask;
            block._high3 = (v3.AsUInt16() >>> 4).AsByte() & mask;
            return block;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector256<int> Dot(int* a, int* offset)
        {
            // Vector256.Create from memory is one broadcast load (vpbroadcastd): nothing on the vector pipes.
            Vector256<short> low = Avx2.MultiplyAddAdjacent(_low0, Vector256.Create(a[0]).AsSByte()) + Avx2.MultiplyAddAdjacent(_low1, Vector256.Create(a[1]).AsSByte())
                + (Avx2.MultiplyAddAdjacent(_low2, Vector256.Create(a[2]).AsSByte()) + Avx2.MultiplyAddAdjacent(_low3, Vector256.Create(a[3]).AsSByte()));
            Vector256<short> high = Avx2.MultiplyAddAdjacent(_high0, Vector256.Create(a[4]).AsSByte()) + Avx2.MultiplyAddAdjacent(_high1, Vector256.Create(a[5]).AsSByte())
                + (Avx2.MultiplyAddAdjacent(_high2, Vector256.Create(a[6]).AsSByte()) + Avx2.MultiplyAddAdjacent(_high3, Vector256.Create(a[7]).AsSByte()));
            return Avx2.MultiplyAddAdjacent(low + high, Vector256<short>.One) - Vector256.Create(*offset);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<int> DotPair(byte* first, byte* second, int* a, int* offset)
        {
            var mask = Vector512.Create((byte)0x0F);
            Vector512<byte> v0 = Pair(first, second), v1 = Pair(first + 32, second + 32), v2 = Pair(first + 64, second + 64), v3 = Pair(first + 96, second + 96);
            Vector512<short> low = Avx512BW.MultiplyAddAdjacent(v0 & mask, Vector512.Create(a[0]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(v1 & mask, Vector512.Create(a[1]).AsSByte())
                + (Avx512BW.MultiplyAddAdjacent(v2 & mask, Vector512.Create(a[2]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(v3 & mask, Vector512.Create(a[3]).AsSByte()));
            Vector512<short> high = Avx512BW.MultiplyAddAdjacent((v0.AsUInt16() >>> 4).AsByte() & mask, Vector512.Create(a[4]).AsSByte())
                + Avx512BW.MultiplyAddAdjacent((v1.AsUInt16() >>> 4).AsByte() & mask, Vector512.Create(a[5]).AsSByte())
                + (Avx512BW.MultiplyAddAdjacent((v2.AsUInt16() >>> 4).AsByte() & mask, Vector512.Create(a[6]).AsSByte())
                + Avx512BW.MultiplyAddAdjacent((v3.AsUInt16() >>> 4).AsByte() & mask, Vector512.Create(a[7]).AsSByte()));
            return Avx512BW.MultiplyAddAdjacent(low + high, Vector512<short>.One) - Vector512.Create(*offset);
        }
    }

    /// <summary>Q8_0: vector j holds elements 4j..4j+3 of the 8 rows; |w| on vpmaddubsw's unsigned side, the activations take w's sign.</summary>
    internal struct Q8Block : IStripBlock<Q8Block>
    {
        private Vector256<sbyte> _w0, _w1, _w2, _w3, _w4, _w5, _w6, _w7;
        private Vector256<byte> _m0, _m1, _m2, _m3, _m4, _m5, _m6, _m7;

        public static int BlockBytes => PackedMatrix.Q8BlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Q8Block Load(byte* quants)
        {
            sbyte* q = (sbyte*)quants;
            Q8Block block;
            block._w0 = Vector256.Load(q);
            block._w1 = Vector256.Load(q + 32);
            block._w2 = Vector256.Load(q + 64);
            block._w3 = Vector256.Load(q + 96);
            block._w4 = Vector256.Load(q + 128);
            block._w5 = Vector256.Load(q + 160);
            block._w6 = Vector256.Load(q + 192);
            block._w7 = Vector256.Load(q + 224);
            block._m0 = Avx2.Abs(block._w0);
            block._m1 = Avx2.Abs(block._w1);
            block._m2 = Avx2.Abs(block._w2);
            block._m3 = Avx2.Abs(block._w3);
            block._m4 = Avx2.Abs(block._w4);
            block._m5 = Avx2.Abs(block._w5);
            block._m6 = Avx2.Abs(block._w6);
            block._m7 = Avx2.Abs(block._w7);
            return block;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector256<int> Dot(int* a, int* offset) =>
            (Products(_m0, _w0, a[0]) + Products(_m1, _w1, a[1])) + (Products(_m2, _w2, a[2]) + Products(_m3, _w3, a[3]))
            + ((Products(_m4, _w4, a[4]) + Products(_m5, _w5, a[5])) + (Products(_m6, _w6, a[6]) + Products(_m7, _w7, a[7])));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<int> DotPair(byte* first, byte* second, int* a, int* offset) =>
            (Products(Pair(first, second), a[0]) + Products(Pair(first + 32, second + 32), a[1]))
            + (Products(Pair(first + 64, second + 64), a[2]) + Products(Pair(first + 96, second + 96), a[3]))
            + ((Products(Pair(first + 128, second + 128), a[4]) + Products(Pair(first + 160, second + 160), a[5]))
            + (Products(Pair(first + 192, second + 192), a[6]) + Products(Pair(first + 224, second + 224), a[7])));

        // AVX-512 has no vpsignb: the activations take w's sign through a mask (Int8.ApplySign).
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<int> Products(Vector512<byte> weights, int activations) =>
            Int8.SignedDot(weights.AsSByte(), Vector512.Create(activations).AsSByte());

        // |w|·(a·sign w) pair sums stay within ±2·127·127, but two of them can overflow int16, so each widens alone.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector256<int> Products(Vector256<byte> magnitudes, Vector256<sbyte> weights, int activations) =>
            Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(magnitudes, Avx2.Sign(Vector256.Create(activations).AsSByte(), weights)), Vector256<short>.One);
    }
}
