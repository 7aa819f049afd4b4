using Kiln.Kernels.Quantized;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// The sparse layouts of a Q8_0 matrix, built by <see cref="FinishPacking"/> from the dense strips once every weight is
/// packed. Both are CSR over strip blocks (8 rows × 32 elements, the quantized kernels' own tile): per strip, the
/// kept blocks back to back, each with its column (block index along K).
/// <list type="bullet">
/// <item><see cref="SparsePattern.Blocks"/>: a strip block that holds any nonzero quant is kept whole, as the dense
/// layout stores it (256 bytes of quants, then the 8 rows' fp16 scales: 272 bytes); an all-zero one is not stored
/// and not read.</item>
/// <item><see cref="SparsePattern.TwoFour"/>: every block is kept (an all-zero one skipped), each row's 16 kept quants
/// (2 per group of 4) with their 2-bit positions: 128 bytes of values, 32 of positions, 16 of scales (176 bytes, 65%
/// of the dense 272). Value vector v (of 4, 32 bytes each) holds kept values 4v..4v+3 of every row (elements
/// 8v..8v+7): in its 128-bit lane h, bytes 4i..4i+3 are row 4h + i's, so a multiply-add that sums each 4 bytes gives
/// one int32 per row, in row order, and the 4 vectors' dots add up to the block's without a horizontal add. Byte i
/// of the positions holds, in bits 2v..2v+1, the position within its group of 4 of the value at byte i of vector v:
/// one shift and mask gives vpshufb's control, which gathers each value's activation from the 16 of its half of the
/// block (vectors 0 and 1 from elements 0..15, 2 and 3 from 16..31; <see cref="SparseKernels"/>).</item>
/// </list>
/// </summary>
public sealed unsafe partial class PackedMatrix
{
    /// <summary>Bytes of one kept strip block of the block-sparse layout: the dense block's quants, then 8 fp16 scales.</summary>
    internal const int DenseBlockBytes = Q8BlockBytes + 16;

    /// <summary>Bytes of one strip block of the 2:4 layout: 128 bytes of values, 32 of 2-bit positions, 16 of scales.</summary>
    internal const int TwoFourBlockBytes = 128 + 32 + 16;

    // Where each packed row came from (weight name and row), so a broken 2:4 row is named as the file names it.
    private readonly (string Name, int Row)[]? _rowSources;
    private NativeBlock? _sparse;
    private int* _starts, _columns;
    private byte* _blocks;

    /// <summary>The sparse layout this matrix takes once packed (<see cref="SparsePattern.None"/>: dense).</summary>
    public SparsePattern Sparsity { get; }

    /// <summary>True once <see cref="FinishPacking"/> has built the sparse layout: the kernels read only it.</summary>
    public bool IsCompacted => _sparse is not null;

    /// <summary>Strip blocks kept by the sparse layout, of <see cref="Strips"/> × <see cref="Blocks"/>.</summary>
    public int KeptBlocks => IsCompacted ? _starts[Strips] : Strips * Blocks;

    /// <summary>Bytes the kernels read for the whole matrix, once per token tile.</summary>
    private long SparseByteCount => (long)KeptBlocks * (Sparsity == SparsePattern.TwoFour ? TwoFourBlockBytes : DenseBlockBytes) + (Strips + 1L + KeptBlocks) * sizeof(int);

    /// <summary>The first kept block of <paramref name="strip"/>, and with <see cref="StripEnd"/> its count.</summary>
    internal byte* StripBlocks(int strip) => _blocks + (long)_starts[strip] * (Sparsity == SparsePattern.TwoFour ? TwoFourBlockBytes : DenseBlockBytes);

    internal int StripStart(int strip) => _starts[strip];

    internal int StripEnd(int strip) => _starts[strip + 1];

    /// <summary>The columns (block indices along K) of the kept blocks, in order.</summary>
    internal int* Columns => _columns;

    /// <summary>
    /// Builds the sparse layout from the packed rows and frees the dense strips; a dense matrix is left as it is.
    /// Throws when a row breaks 2:4 (more than 2 nonzero values in a group of 4), naming the weight and its row:
    /// Kiln.Loading.SparseWeights checks the file's weights at load, so this is the plan's own guard.
    /// </summary>
    public void FinishPacking()
    {
        if (Sparsity == SparsePattern.None || IsCompacted) return;
        int strips = Strips, blocks = Blocks;
        bool twoFour = Sparsity == SparsePattern.TwoFour;
        int blockBytes = twoFour ? TwoFourBlockBytes : DenseBlockBytes;
        var kept = new bool[(long)strips * blocks];
        int count = 0;
        for (int s = 0; s < strips; s++)
        {
            byte* strip = Data + (long)s * StripBytes;
            for (int b = 0; b < blocks; b++)
            {
                bool any = false;
                byte* quants = strip + (long)b * Q8BlockBytes;
                for (int i = 0; i < Q8BlockBytes && !any; i++) any = quants[i] != 0;
                if (twoFour) CheckTwoFour(strip, s, b);
                if (any) { kept[(long)s * blocks + b] = true; count++; }
            }
        }
        long indexBytes = (strips + 1L + count) * sizeof(int);
        long dataAt = (indexBytes + 63) & ~63L;
        var memory = new NativeBlock(dataAt + (long)count * blockBytes);
        int* starts = (int*)memory.Pointer, columns = starts + strips + 1;
        byte* data = memory.Pointer + dataAt;
        int next = 0;
        for (int s = 0; s < strips; s++)
        {
            starts[s] = next;
            byte* strip = Data + (long)s * StripBytes;
            ushort* scales = (ushort*)(strip + (long)blocks * Q8BlockBytes);
            for (int b = 0; b < blocks; b++)
            {
                if (!kept[(long)s * blocks + b]) continue;
                byte* block = data + (long)next * blockBytes;
                if (twoFour) WriteTwoFour(strip, b, block);
                else Buffer.MemoryCopy(strip + (long)b * Q8BlockBytes, block, Q8BlockBytes, Q8BlockBytes);
                Buffer.MemoryCopy(scales + b * 8, block + blockBytes - 16, 16, 16);
                columns[next++] = b;
            }
        }
        starts[strips] = next;
        _starts = starts;
        _columns = columns;
        _blocks = data;
        _sparse = memory;
        _memory!.Dispose(); // the kernels read only the sparse layout now
    }

    private void CheckTwoFour(byte* strip, int s, int b)
    {
        for (int r = 0; r < 8; r++)
            for (int g = 0; g < 8; g++)
            {
                int nonzero = 0;
                for (int e = 0; e < 4; e++) nonzero += Quant(strip, b, r, 4 * g + e) != 0 ? 1 : 0;
                if (nonzero <= 2) continue;
                int row = s * 8 + r, column = b * 32 + 4 * g;
                var (name, sourceRow) = _rowSources is { } sources && sources[row].Name is not null ? sources[row] : ("packed rows", row);
                throw new InvalidOperationException(
                    $"{(name.Length > 0 ? name : "A weight")} row {sourceRow} is not 2:4 sparse: columns {column}..{column + 3} hold {nonzero} nonzero values (at most 2 of every 4). Prune it ([Sparse(..., Prune = true)]) or pack it dense.");
            }
    }

    // Each row's 2 kept quants per group of 4 (its nonzero ones, then zero ones to fill), laid out as the class summary says.
    private void WriteTwoFour(byte* strip, int b, byte* block)
    {
        byte* positions = block + 128;
        for (int r = 0; r < 8; r++)
        {
            for (int g = 0; g < 8; g++)
            {
                int first = -1, second = -1;
                for (int e = 0; e < 4; e++)
                {
                    if (Quant(strip, b, r, 4 * g + e) == 0) continue;
                    if (first < 0) first = e; else second = e;
                }
                if (first < 0) { first = 0; second = 1; }
                else if (second < 0) second = first == 3 ? 2 : first + 1;
                if (second < first) (first, second) = (second, first);
                for (int slot = 0; slot < 2; slot++)
                {
                    int j = 2 * g + slot, e = slot == 0 ? first : second, i = TwoFourValueByte(r, j);
                    block[i] = (byte)(sbyte)Quant(strip, b, r, 4 * g + e);
                    positions[i % 32] |= (byte)(e << (2 * (j / 4)));
                }
            }
        }
    }

    /// <summary>The quant of element <paramref name="e"/> of block <paramref name="b"/> of <paramref name="row"/> in the sparse layout (0 where not stored).</summary>
    internal int SparseQuant(int row, int b, int e)
    {
        byte* block = FindBlock(row / 8, b);
        if (block is null) return 0;
        int r = row % 8;
        if (Sparsity == SparsePattern.Blocks) return (sbyte)block[e / 4 * 32 + r * 4 + e % 4];
        for (int slot = 0; slot < 2; slot++)
        {
            int j = 2 * (e / 4) + slot, i = TwoFourValueByte(r, j);
            if (((block[128 + i % 32] >> (2 * (j / 4))) & 3) == e % 4) return (sbyte)block[i];
        }
        return 0;
    }

    /// <summary>Where kept value <paramref name="j"/> (of 16) of strip row <paramref name="r"/> sits in a 2:4 block: vector j / 4, lane r / 4, int32 r mod 4, byte j mod 4.</summary>
    private static int TwoFourValueByte(int r, int j) => 32 * (j / 4) + 16 * (r / 4) + 4 * (r % 4) + j % 4;

    /// <summary>The fp16 scale bits of block <paramref name="b"/> of <paramref name="row"/> in the sparse layout (0 where not stored).</summary>
    internal ushort SparseScaleBits(int row, int b)
    {
        byte* block = FindBlock(row / 8, b);
        int bytes = Sparsity == SparsePattern.TwoFour ? TwoFourBlockBytes : DenseBlockBytes;
        return block is null ? (ushort)0 : ((ushort*)(block + bytes - 16))[row % 8];
    }

    private byte* FindBlock(int strip, int b)
    {
        int bytes = Sparsity == SparsePattern.TwoFour ? TwoFourBlockBytes : DenseBlockBytes;
        for (int i = _starts[strip]; i < _starts[strip + 1]; i++)
            if (_columns[i] == b) return _blocks + (long)i * bytes;
        return null;
    }

    private void NoteRow(int row, string name, int sourceRow)
    {
        // Made with the matrix (rows are packed in parallel ranges, each writing only its own entries).
        if (_rowSources is { } sources) sources[row] = (name, sourceRow);
    }

    private string DescribeSparsity() => (Sparsity, IsCompacted) switch
    {
        (SparsePattern.None, _) => "",
        (_, false) => Sparsity == SparsePattern.TwoFour ? " 2:4 (not yet built)" : " block-sparse (not yet built)",
        (SparsePattern.TwoFour, _) => $" 2:4 (16 of 32 values + 2-bit positions per row and block; {Percent(ByteCount)} of the dense bytes)",
        _ => $" block-sparse 8×32 ({KeptBlocks} of {Strips * Blocks} blocks kept; {Percent(ByteCount)} of the dense bytes)",
    };

    private string Percent(long bytes) => $"{100.0 * bytes / ((long)Strips * Blocks * DenseBlockBytes):F0}%";
}
