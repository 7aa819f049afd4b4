using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Kernels.Quantized;

namespace Kiln.Kernels.MatMul;

/// <summary>How one kept strip block of a sparse layout (<see cref="PackedMatrix.FinishPacking"/>) meets one token's 32 Q8 activations.</summary>
internal unsafe interface ISparseBlock<TSelf> where TSelf : struct, ISparseBlock<TSelf>
{
    /// <summary>Bytes of one kept block, its 8 fp16 scales last.</summary>
    static abstract int BlockBytes { get; }

    /// <summary>Unpacks the block at <paramref name="block"/> once, for every token of a tile.</summary>
    static abstract TSelf Load(byte* block);

    /// <summary>The strip's 8 rows' int32 dots with the 32 quants at <paramref name="activations"/>.</summary>
    Vector256<int> Dot(byte* activations);
}

/// <summary>
/// The sparse Q8_0 kernels: the dense strip kernels' tile (8 rows × up to 8 tokens, AVX2, one scale FMA per row and
/// block) walking only a strip's kept blocks, each with its column, so a skipped block costs neither bytes nor
/// multiply-adds. One code serves decode (a GEMV: a tile of one token) and prefill or batched steps (an SpMM: each
/// kept block unpacked once per tile of 8 tokens); a 2:4 decode on the AVX-512 path dots each block in two 512-bit
/// vectors. Every row's sums take the same operations in the same order as the dense kernel's on the same weights with
/// their zeros (a skipped block adds nothing; a 2:4 block's int32 dot equals the dense one): the tests ask for the
/// same bits.
/// </summary>
internal static unsafe class SparseKernels
{
    private const int Lower = 1, Upper = 2, Both = 3;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run<TBlock, TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, ref TEpilogue epilogue)
        where TBlock : struct, ISparseBlock<TBlock> where TEpilogue : struct, ITileEpilogue
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
        where TBlock : struct, ISparseBlock<TBlock> where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        int g = firstGroup, scaleBytes = GemmScratch.ScalesAt(weights.Blocks);
        if ((g & 1) != 0 && g < endGroup)
        {
            Tile<TBlock, TTokens, TEpilogue>(weights, g >> 1, x, stride, scaleBytes, (g - 1) * 4, t0, Upper, ref epilogue);
            g++;
        }
        // A 2:4 decode (one token) on the AVX-512 path: one strip per tile, its 4 value vectors as 2 of 512 bits.
        if (TTokens.Value == 1 && typeof(TBlock) == typeof(TwoFourBlock) && KernelPaths.Uses512Bits)
            for (; g + 2 <= endGroup; g += 2)
                TwoFourWideTile(weights, g >> 1, x, scaleBytes, g * 4, t0, ref epilogue);
        for (; g + 2 <= endGroup; g += 2)
            Tile<TBlock, TTokens, TEpilogue>(weights, g >> 1, x, stride, scaleBytes, g * 4, t0, Both, ref epilogue);
        if (g < endGroup)
            Tile<TBlock, TTokens, TEpilogue>(weights, g >> 1, x, stride, scaleBytes, g * 4, t0, Lower, ref epilogue);
    }

    // TTokens (1-8) tokens × one strip's kept blocks; accumulator aT holds token t0 + T's sums of the strip's 8 rows.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TBlock, TTokens, TEpilogue>(PackedMatrix weights, int strip, byte* x, int stride, int scaleBytes,
        int row, int t0, int halves, ref TEpilogue epilogue)
        where TBlock : struct, ISparseBlock<TBlock> where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        byte* block = weights.StripBlocks(strip);
        int* columns = weights.Columns;
        int end = weights.StripEnd(strip);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int i = weights.StripStart(strip); i < end; i++, block += TBlock.BlockBytes)
        {
            // The kept blocks are one stream: a line ahead per line consumed keeps it coming while the tile computes.
            for (int l = 0; l < TBlock.BlockBytes; l += 64) Sse.Prefetch0(block + 4 * TBlock.BlockBytes + l);
            var w = TBlock.Load(block);
            Vector256<float> d = StripKernels.Scales(block + TBlock.BlockBytes - 16);
            int b = columns[i];
            byte* xb = x + b * 32;
            float* sb = (float*)(x + scaleBytes) + b;
            a0 = Token(a0, in w, d, xb, sb);
            if (TTokens.Value > 1) a1 = Token(a1, in w, d, xb + stride, (float*)((byte*)sb + stride));
            if (TTokens.Value > 2) a2 = Token(a2, in w, d, xb + 2 * stride, (float*)((byte*)sb + 2 * stride));
            if (TTokens.Value > 3) a3 = Token(a3, in w, d, xb + 3 * stride, (float*)((byte*)sb + 3 * stride));
            if (TTokens.Value > 4) a4 = Token(a4, in w, d, xb + 4 * stride, (float*)((byte*)sb + 4 * stride));
            if (TTokens.Value > 5) a5 = Token(a5, in w, d, xb + 5 * stride, (float*)((byte*)sb + 5 * stride));
            if (TTokens.Value > 6) a6 = Token(a6, in w, d, xb + 6 * stride, (float*)((byte*)sb + 6 * stride));
            if (TTokens.Value > 7) a7 = Token(a7, in w, d, xb + 7 * stride, (float*)((byte*)sb + 7 * stride));
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

    // How far ahead the 2:4 decode prefetches its one stream: a block takes ~50 instructions, so Tile's 4 blocks (704
    // bytes) left its loads waiting on memory; 16-32 blocks (~3-6 KB) measured alike, ~1.1x faster than 4 (110m shapes).
    private const int PrefetchBlocks = 24;

    // One token × one strip of a 2:4 matrix (AVX-512). Not two strips per tile as the dense decode takes them: the
    // decode streams its weights from memory, and one stream of kept blocks per tile keeps closer to the bandwidth
    // than two (measured, single thread, 2:4 matrices of 37 MB: the pair tile ~40% slower than the AVX2 tile, this
    // one ~5% faster; from cache the pair tile would win by ~12%). The same FMA per row and block as the AVX2 tile.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TwoFourWideTile<TEpilogue>(PackedMatrix weights, int strip, byte* x, int scaleBytes, int row, int token, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        const int bytes = PackedMatrix.TwoFourBlockBytes;
        byte* block = weights.StripBlocks(strip);
        int* columns = weights.Columns;
        int end = weights.StripEnd(strip);
        float* activationScales = (float*)(x + scaleBytes);
        Vector256<float> sum = default;
        for (int i = weights.StripStart(strip); i < end; i++, block += bytes)
        {
            for (int l = 0; l < bytes; l += 64) Sse.Prefetch0(block + PrefetchBlocks * bytes + l);
            int b = columns[i];
            Vector256<int> dots = TwoFourBlock.DotWide(block, x + b * 32);
            sum = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dots), StripKernels.Scales(block + bytes - 16) * Vector256.Create(activationScales[b]), sum);
        }
        epilogue.Store(row, token, sum.GetLower());
        epilogue.Store(row + 4, token, sum.GetUpper());
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Token<TBlock>(Vector256<float> accumulator, in TBlock w, Vector256<float> d, byte* quants, float* scale)
        where TBlock : struct, ISparseBlock<TBlock> =>
        Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(w.Dot(quants)), d * Vector256.Create(*scale), accumulator);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<TEpilogue>(ref TEpilogue epilogue, int row, int token, int halves, Vector256<float> sums)
        where TEpilogue : struct, ITileEpilogue
    {
        if ((halves & Lower) != 0) epilogue.Store(row, token, sums.GetLower());
        if ((halves & Upper) != 0) epilogue.Store(row + 4, token, sums.GetUpper());
    }

    /// <summary>A kept block of the block-sparse layout: the dense strip block, dotted as the dense kernel dots it.</summary>
    internal struct DenseBlock : ISparseBlock<DenseBlock>
    {
        private StripKernels.Q8Block _block;

        public static int BlockBytes => PackedMatrix.DenseBlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static DenseBlock Load(byte* block) => new() { _block = StripKernels.Q8Block.Load(block) };

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector256<int> Dot(byte* activations) => _block.Dot((int*)activations, null);
    }

    /// <summary>
    /// A 2:4 block: value vector v holds kept values 4v..4v+3 of the 8 rows, 4 bytes per row in row order
    /// (<see cref="PackedMatrix"/>'s sparse layout); its vpshufb control, built once per block from the 2-bit
    /// positions, gathers each kept value's activation from the 16 of its half of the block (broadcast to both lanes).
    /// Half the multiply-adds of a dense block: per token 4 vpshufb, 4 vpsignb, 4 vpmaddubsw, 4 vpmaddwd and 3 adds,
    /// each vector's int32 lanes already the 8 rows' partial sums.
    /// </summary>
    internal struct TwoFourBlock : ISparseBlock<TwoFourBlock>
    {
        private Vector256<sbyte> _w0, _w1, _w2, _w3;
        private Vector256<byte> _m0, _m1, _m2, _m3, _c0, _c1, _c2, _c3;

        public static int BlockBytes => PackedMatrix.TwoFourBlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static TwoFourBlock Load(byte* block)
        {
            TwoFourBlock b;
            b._w0 = Vector256.Load((sbyte*)block);
            b._w1 = Vector256.Load((sbyte*)block + 32);
            b._w2 = Vector256.Load((sbyte*)block + 64);
            b._w3 = Vector256.Load((sbyte*)block + 96);
            b._m0 = Avx2.Abs(b._w0);
            b._m1 = Avx2.Abs(b._w1);
            b._m2 = Avx2.Abs(b._w2);
            b._m3 = Avx2.Abs(b._w3);
            var three = Vector256.Create((byte)3);
            Vector256<ushort> positions = Vector256.Load((ushort*)(block + 128));
            b._c0 = (positions.AsByte() & three) | GroupStarts(0);
            b._c1 = ((positions >>> 2).AsByte() & three) | GroupStarts(8);
            b._c2 = ((positions >>> 4).AsByte() & three) | GroupStarts(0);
            b._c3 = ((positions >>> 6).AsByte() & three) | GroupStarts(8);
            return b;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector256<int> Dot(byte* activations)
        {
            Vector256<sbyte> low = Avx2.BroadcastVector128ToVector256((sbyte*)activations), high = Avx2.BroadcastVector128ToVector256((sbyte*)activations + 16);
            return (Products(_m0, _w0, Avx2.Shuffle(low, _c0.AsSByte())) + Products(_m1, _w1, Avx2.Shuffle(low, _c1.AsSByte())))
                + (Products(_m2, _w2, Avx2.Shuffle(high, _c2.AsSByte())) + Products(_m3, _w3, Avx2.Shuffle(high, _c3.AsSByte())));
        }

        /// <summary>
        /// As <see cref="Dot"/> on 512-bit vectors (AVX-512), loading the block itself: value vectors 0 and 1 as one
        /// (elements 0..15), 2 and 3 as another (16..31). The positions come broadcast to both halves and shifted by 0
        /// and 2 bits in one vpsrlvq (bits a shift brings in from the next byte are masked off). AVX-512 has no
        /// vpsignb: the activations take w's sign through a mask. The two products add, and the halves fold: the 8
        /// rows' sums.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> DotWide(byte* block, byte* activations)
        {
            Vector512<sbyte> low = Avx512F.BroadcastVector128ToVector512((int*)activations).AsSByte(), high = Avx512F.BroadcastVector128ToVector512((int*)(activations + 16)).AsSByte();
            var three = Vector512.Create((byte)3);
            // GroupStarts(0) then GroupStarts(8), spelled as one constant: the JIT builds Create(lower, upper) on the stack per block.
            const ulong even = 0x0404_0000_0404_0000, odd = 0x0C0C_0808_0C0C_0808;
            var groupStarts = Vector512.Create(even, even, even, even, odd, odd, odd, odd).AsByte();
            // vbroadcasti32x8, not Avx512F's vbroadcasti64x4: .NET 10's JIT encodes the latter's [reg + disp8] with the
            // wrong scale (disp 0x80 read as 0x100), and the positions sit at block + 128.
            Vector512<ulong> positions = Avx512DQ.BroadcastVector256ToVector512((int*)(block + 128)).AsUInt64();
            Vector512<ulong> first = Avx512F.ShiftRightLogicalVariable(positions, Vector512.Create(0UL, 0, 0, 0, 2, 2, 2, 2));
            Vector512<int> sums = Int8.SignedDot(Vector512.Load((sbyte*)block), Avx512BW.Shuffle(low, ((first.AsByte() & three) | groupStarts).AsSByte()))
                + Int8.SignedDot(Vector512.Load((sbyte*)block + 64), Avx512BW.Shuffle(high, (((first >>> 4).AsByte() & three) | groupStarts).AsSByte()));
            return sums.GetLower() + sums.GetUpper();
        }

        /// <summary>Where each value's group of 4 starts in its 16 activations: byte 4i + k of a lane takes kept value k of its row, in group k / 2 (+ 2 for an odd vector: <paramref name="odd"/> = 8).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector256<byte> GroupStarts(byte odd) => Vector256.Create(0x0404_0000u + odd * 0x0101_0101u).AsByte();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector256<int> Products(Vector256<byte> magnitudes, Vector256<sbyte> weights, Vector256<sbyte> activations) =>
            Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(magnitudes, Avx2.Sign(activations, weights)), Vector256<short>.One);
    }
}
