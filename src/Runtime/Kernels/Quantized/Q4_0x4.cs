using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.Quantized;

/// <summary>
/// <see cref="Q4_0"/> rows repacked four at a time. A group of K columns is a scale table (per block, the 4 rows'
/// fp16 scales, padded to 64 bytes) followed by K/32 blocks of 64 bytes of nibbles. In block b, byte j holds row
/// j / 32's quant j % 32 in its low nibble and row 2 + j / 32's in its high one: one 512-bit load masked with 0x0F
/// is rows 0 and 1 in element order, the same load shifted right by 4 is rows 2 and 3 — no shuffles. (256-bit
/// paths read the two halves: rows 0/2 and rows 1/3.)
/// </summary>
public readonly struct Q4_0x4 : IInterleavedFormat
{
    private const int QuantBytes = 64;                   // one block of 4 rows: 4 × 32 nibbles
    private const int SourceBytes = 2 + Blocks.Size / 2; // one Q4_0 block

    /// <inheritdoc/>
    public static int RowBytes(int k) => Q4_0.RowBytes(k);

    /// <inheritdoc/>
    public static int GroupBytes(int k)
    {
        int blocks = Blocks.Count(k);
        return Interleaved.ScaleBytes(blocks) + blocks * QuantBytes;
    }

    /// <inheritdoc/>
    public static void PackGroup(ReadOnlySpan<byte> rows, int rowCount, int k, Span<byte> group)
    {
        int blocks = Blocks.Count(k), rowBytes = blocks * SourceBytes, scaleBytes = Interleaved.ScaleBytes(blocks);
        ArgumentOutOfRangeException.ThrowIfLessThan(rowCount, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(rowCount, Interleaved.RowsPerGroup);
        Blocks.CheckLength(rows.Length, rowCount * rowBytes, nameof(rows), "The source rows");
        Blocks.CheckLength(group.Length, GroupBytes(k), nameof(group), "The group");
        group.Clear();
        for (int row = 0; row < rowCount; row++)
        {
            for (int block = 0; block < blocks; block++)
            {
                var source = rows.Slice(row * rowBytes + block * SourceBytes, SourceBytes);
                source[..2].CopyTo(group.Slice((block * Interleaved.RowsPerGroup + row) * sizeof(ushort), sizeof(ushort)));
                var quants = group.Slice(scaleBytes + block * QuantBytes + (row & 1) * Blocks.Size, Blocks.Size);
                int shift = row < 2 ? 0 : 4;
                for (int j = 0; j < Blocks.Size / 2; j++)
                {
                    quants[j] |= (byte)((source[2 + j] & 0x0F) << shift);
                    quants[j + Blocks.Size / 2] |= (byte)((source[2 + j] >> 4) << shift);
                }
            }
        }
    }

    /// <inheritdoc/>
    public static unsafe void MultiplyGroup(ReadOnlySpan<byte> group, Q8Activations activations, Span<float> y, int yStride, int rowCount, KernelPath path)
    {
        int k = activations.K, blocks = activations.BlocksPerToken, tokens = activations.Tokens;
        Interleaved.CheckGroup(group.Length, GroupBytes(k), activations, y.Length, yStride, rowCount);
        if (path == KernelPath.Scalar)
        {
            MultiplyScalar(group, activations, y, yStride, rowCount);
            return;
        }
        if (!KernelPaths.IsSupported(path)) throw KernelPaths.Unsupported(path);

        fixed (byte* w = group)
        fixed (sbyte* a = activations.Quants)
        fixed (float* scales = activations.Scales)
        fixed (float* output = y)
        {
            int t = 0;
            // One call per tile of tokens; activations, their scales and the output rows advance by whole tokens.
            switch (path)
            {
                case KernelPath.Avx512BW:
                    for (; t + 4 <= tokens; t += 4)
                        Tile512<FourTokens>(w, blocks, a + t * k, scales + t * blocks, k, output + t * yStride, yStride, rowCount);
                    switch (tokens - t)
                    {
                        case 3: Tile512<ThreeTokens>(w, blocks, a + t * k, scales + t * blocks, k, output + t * yStride, yStride, rowCount); break;
                        case 2: Tile512<TwoTokens>(w, blocks, a + t * k, scales + t * blocks, k, output + t * yStride, yStride, rowCount); break;
                        case 1: Tile512<OneToken>(w, blocks, a + t * k, scales + t * blocks, k, output + t * yStride, yStride, rowCount); break;
                    }
                    break;
                case KernelPath.AvxVnni:
                    for (; t + 2 <= tokens; t += 2)
                        Tile256<VnniDot, TwoTokens>(w, blocks, a + t * k, scales + t * blocks, k, output + t * yStride, yStride, rowCount);
                    if (t < tokens)
                        Tile256<VnniDot, OneToken>(w, blocks, a + t * k, scales + t * blocks, k, output + t * yStride, yStride, rowCount);
                    break;
                case KernelPath.Avx2:
                    for (; t + 2 <= tokens; t += 2)
                        Tile256<MaddubsDot, TwoTokens>(w, blocks, a + t * k, scales + t * blocks, k, output + t * yStride, yStride, rowCount);
                    if (t < tokens)
                        Tile256<MaddubsDot, OneToken>(w, blocks, a + t * k, scales + t * blocks, k, output + t * yStride, yStride, rowCount);
                    break;
            }
        }
    }

    // The tile's oracle: Q4_0's scalar dot, reading the interleaved layout (same operations, same order, same bits).
    private static void MultiplyScalar(ReadOnlySpan<byte> group, Q8Activations x, Span<float> y, int yStride, int rowCount)
    {
        int blocks = x.BlocksPerToken;
        var quants = group[Interleaved.ScaleBytes(blocks)..];
        for (int t = 0; t < x.Tokens; t++)
        {
            Q8Row activations = x[t];
            for (int row = 0; row < rowCount; row++)
            {
                float sum = 0;
                for (int block = 0; block < blocks; block++)
                {
                    var blockQuants = quants.Slice(block * QuantBytes + (row & 1) * Blocks.Size, Blocks.Size);
                    int shift = row < 2 ? 0 : 4, dot = 0;
                    for (int i = 0; i < Blocks.Size; i++)
                        dot += ((blockQuants[i] >> shift & 0x0F) - 8) * activations.Quants[block * Blocks.Size + i];
                    float scale = (float)BinaryPrimitives.ReadHalfLittleEndian(group[((block * Interleaved.RowsPerGroup + row) * sizeof(ushort))..]);
                    sum += scale * activations.Scales[block] * dot;
                }
                y[t * yStride + row] = sum;
            }
        }
    }

    // 4 rows × TTokens tokens. Each 512-bit accumulator holds a row pair's 8-lane partial sums for one token.
    private static unsafe void Tile512<TTokens>(byte* group, int blocks, sbyte* a, float* activationScales,
        int k, float* y, int yStride, int rowCount) where TTokens : ITokenCount
    {
        byte* weightScales = group, quants = group + Interleaved.ScaleBytes(blocks);
        Vector512<float> t0Rows01 = default, t0Rows23 = default, t1Rows01 = default, t1Rows23 = default;
        Vector512<float> t2Rows01 = default, t2Rows23 = default, t3Rows01 = default, t3Rows23 = default;
        Vector512<int> firstPair = Scales.FirstPair, secondPair = Scales.SecondPair;
        var lowNibbles = Vector512.Create((byte)0x0F);
        for (int block = 0; block < blocks; block++)
        {
            Vector512<byte> packed = Vector512.Load(quants + block * QuantBytes);
            Vector512<byte> rows01 = packed & lowNibbles, rows23 = (packed.AsUInt16() >>> 4).AsByte() & lowNibbles;
            Vector512<float> d = Scales.LoadFour(weightScales + block * 8).ToVector256Unsafe().ToVector512Unsafe();
            Vector512<float> d01 = Avx512F.PermuteVar16x32(d, firstPair), d23 = Avx512F.PermuteVar16x32(d, secondPair);
            int position = block * Blocks.Size;

            // Per token: its activations, broadcast to both rows of a pair, and their 8·a pair sums, shared by all 4 rows.
            Vector512<sbyte> x = Broadcast(a + position);
            Vector512<short> offsets = Int8.PrepareMinusEight(x);
            t0Rows01 = Step(t0Rows01, rows01, x, offsets, d01 * activationScales[block]);
            t0Rows23 = Step(t0Rows23, rows23, x, offsets, d23 * activationScales[block]);
            if (TTokens.Count > 1)
            {
                x = Broadcast(a + k + position);
                offsets = Int8.PrepareMinusEight(x);
                t1Rows01 = Step(t1Rows01, rows01, x, offsets, d01 * activationScales[blocks + block]);
                t1Rows23 = Step(t1Rows23, rows23, x, offsets, d23 * activationScales[blocks + block]);
            }
            if (TTokens.Count > 2)
            {
                x = Broadcast(a + 2 * k + position);
                offsets = Int8.PrepareMinusEight(x);
                t2Rows01 = Step(t2Rows01, rows01, x, offsets, d01 * activationScales[2 * blocks + block]);
                t2Rows23 = Step(t2Rows23, rows23, x, offsets, d23 * activationScales[2 * blocks + block]);
            }
            if (TTokens.Count > 3)
            {
                x = Broadcast(a + 3 * k + position);
                offsets = Int8.PrepareMinusEight(x);
                t3Rows01 = Step(t3Rows01, rows01, x, offsets, d01 * activationScales[3 * blocks + block]);
                t3Rows23 = Step(t3Rows23, rows23, x, offsets, d23 * activationScales[3 * blocks + block]);
            }
        }
        Tile.StoreRows(y, Tile.SumRows(t0Rows01.GetLower(), t0Rows01.GetUpper(), t0Rows23.GetLower(), t0Rows23.GetUpper()), rowCount);
        if (TTokens.Count > 1)
            Tile.StoreRows(y + yStride, Tile.SumRows(t1Rows01.GetLower(), t1Rows01.GetUpper(), t1Rows23.GetLower(), t1Rows23.GetUpper()), rowCount);
        if (TTokens.Count > 2)
            Tile.StoreRows(y + 2 * yStride, Tile.SumRows(t2Rows01.GetLower(), t2Rows01.GetUpper(), t2Rows23.GetLower(), t2Rows23.GetUpper()), rowCount);
        if (TTokens.Count > 3)
            Tile.StoreRows(y + 3 * yStride, Tile.SumRows(t3Rows01.GetLower(), t3Rows01.GetUpper(), t3Rows23.GetLower(), t3Rows23.GetUpper()), rowCount);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector512<sbyte> Broadcast(sbyte* block) => Avx512DQ.BroadcastVector256ToVector512((int*)block).AsSByte();

    // Each int32 lane: Σ(q − 8)·a over its four elements; then scale and accumulate.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Step(Vector512<float> accumulator, Vector512<byte> quants, Vector512<sbyte> activations,
        Vector512<short> offsets, Vector512<float> scale) =>
        Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(Int8.DotMinusEight(quants, activations, offsets)), scale, accumulator);

    // 4 rows × TTokens (≤ 2) tokens, one row per 256-bit accumulator: 8 accumulators fit AVX2's 16 registers.
    private static unsafe void Tile256<TDot, TTokens>(byte* group, int blocks, sbyte* a, float* activationScales,
        int k, float* y, int yStride, int rowCount) where TDot : IInt8Dot256 where TTokens : ITokenCount
    {
        byte* weightScales = group, quants = group + Interleaved.ScaleBytes(blocks);
        Vector256<float> t0r0 = default, t0r1 = default, t0r2 = default, t0r3 = default;
        Vector256<float> t1r0 = default, t1r1 = default, t1r2 = default, t1r3 = default;
        var lowNibbles = Vector256.Create((byte)0x0F);
        for (int block = 0; block < blocks; block++)
        {
            Vector256<byte> rows02 = Vector256.Load(quants + block * QuantBytes), rows13 = Vector256.Load(quants + block * QuantBytes + 32);
            Vector256<byte> q0 = rows02 & lowNibbles, q2 = (rows02.AsUInt16() >>> 4).AsByte() & lowNibbles;
            Vector256<byte> q1 = rows13 & lowNibbles, q3 = (rows13.AsUInt16() >>> 4).AsByte() & lowNibbles;
            Vector256<float> d = Scales.LoadFour(weightScales + block * 8).ToVector256Unsafe();
            Vector256<float> d0 = Avx2.PermuteVar8x32(d, Vector256<int>.Zero), d1 = Avx2.PermuteVar8x32(d, Vector256.Create(1));
            Vector256<float> d2 = Avx2.PermuteVar8x32(d, Vector256.Create(2)), d3 = Avx2.PermuteVar8x32(d, Vector256.Create(3));
            int position = block * Blocks.Size;

            Vector256<sbyte> x = Vector256.Load(a + position);
            Vector256<int> offsets = TDot.PrepareMinusEight(x);
            float c = activationScales[block];
            t0r0 = Step<TDot>(t0r0, q0, x, offsets, d0 * c);
            t0r1 = Step<TDot>(t0r1, q1, x, offsets, d1 * c);
            t0r2 = Step<TDot>(t0r2, q2, x, offsets, d2 * c);
            t0r3 = Step<TDot>(t0r3, q3, x, offsets, d3 * c);
            if (TTokens.Count > 1)
            {
                x = Vector256.Load(a + k + position);
                offsets = TDot.PrepareMinusEight(x);
                c = activationScales[blocks + block];
                t1r0 = Step<TDot>(t1r0, q0, x, offsets, d0 * c);
                t1r1 = Step<TDot>(t1r1, q1, x, offsets, d1 * c);
                t1r2 = Step<TDot>(t1r2, q2, x, offsets, d2 * c);
                t1r3 = Step<TDot>(t1r3, q3, x, offsets, d3 * c);
            }
        }
        Tile.StoreRows(y, Tile.SumRows(t0r0, t0r1, t0r2, t0r3), rowCount);
        if (TTokens.Count > 1)
            Tile.StoreRows(y + yStride, Tile.SumRows(t1r0, t1r1, t1r2, t1r3), rowCount);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<TDot>(Vector256<float> accumulator, Vector256<byte> quants, Vector256<sbyte> activations,
        Vector256<int> offsets, Vector256<float> scale) where TDot : IInt8Dot256 =>
        Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(TDot.DotMinusEight(quants, activations, offsets)), scale, accumulator);
}
