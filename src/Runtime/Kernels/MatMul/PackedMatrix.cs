using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Kiln.Kernels.Quantized;
using Kiln.Loading;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// The layouts a compiled plan's matmul weights take, from the most precise to the least (<see cref="WeightLayouts.Resolve(WeightFormat, Tensor[])"/>
/// relies on the order); every one groups rows by four (<see cref="PackedMatrix"/>).
/// </summary>
public enum PackedFormat
{
    /// <summary>float32 weights in panels of 16 rows, element k of the 16 rows side by side (<see cref="PackedMatrix"/>).</summary>
    F32,

    /// <summary>bfloat16 weights, 16-element chunks of a group's 4 rows in turn (<see cref="PackedMatrix"/>).</summary>
    BF16,

    /// <summary>GGML Q8_0 quants and scales, four rows interleaved per group (<see cref="PackedMatrix"/> has the byte layout).</summary>
    Q8_0,

    /// <summary>GGML Q6_K quants, int8 scales per 16 and fp16 super-block scales, eight rows interleaved per strip.</summary>
    Q6_K,

    /// <summary>GGML Q5_K quants, 6-bit scales and mins per 32 and fp16 super-block scales, eight rows interleaved per strip.</summary>
    Q5_K,

    /// <summary>GGML Q4_K quants, 6-bit scales and mins per 32 and fp16 super-block scales, eight rows interleaved per strip.</summary>
    Q4_K,

    /// <summary>GGML Q4_0 nibbles and scales, four rows interleaved per group.</summary>
    Q4_0,
}

/// <summary>
/// The rule that maps a requested <see cref="WeightFormat"/> and the file's stored types to a <see cref="PackedFormat"/>,
/// and the words the plan's report uses for it.
/// </summary>
public static class WeightLayouts
{
    /// <summary>
    /// The layout of one fused matmul's weights. An explicit format wins. <see cref="WeightFormat.AsStored"/> maps each
    /// weight's stored type (F32 and F16 → F32, BF16 → BF16, Q8_0 → Q8_0, Q6_K, Q5_K, Q4_K → themselves, Q4_0 → Q4_0,
    /// anything else → Q8_0); when the weights of one fused matmul disagree, the most precise of their layouts (in
    /// <see cref="PackedFormat"/>'s order) serves them all, so no weight loses precision to its neighbour — except
    /// that K-quants of different types stay as stored, each in its own segment (<see cref="PackedMatrix"/>): they
    /// dot the same Q8_K activations.
    /// </summary>
    public static PackedFormat Resolve(WeightFormat requested, params Tensor[] weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        switch (requested)
        {
            case WeightFormat.F32: return PackedFormat.F32;
            case WeightFormat.BF16: return PackedFormat.BF16;
            case WeightFormat.Q8_0: return PackedFormat.Q8_0;
            case WeightFormat.Q4_0: return PackedFormat.Q4_0;
            case WeightFormat.AsStored: break;
            default: throw new ArgumentOutOfRangeException(nameof(requested), requested, "Not a weight format.");
        }
        if (weights.Length == 0) throw new ArgumentException("A matmul has at least one weight.", nameof(weights));
        var chosen = AsStored(weights[0]);
        foreach (var weight in weights)
        {
            var format = AsStored(weight);
            if (format < chosen) chosen = format; // the enum is ordered from most to least precise
        }
        return chosen;
    }

    /// <summary>
    /// The layout of one fused matmul whose weights are packed <paramref name="sparsity"/>: Q8_0 when sparse (the sparse
    /// layouts hold Q8_0 blocks), else as <see cref="Resolve(WeightFormat, Tensor[])"/>.
    /// </summary>
    public static PackedFormat Resolve(WeightFormat requested, SparsePattern sparsity, params Tensor[] weights) =>
        sparsity == SparsePattern.None ? Resolve(requested, weights) : PackedFormat.Q8_0;

    /// <summary>
    /// The sparse pattern of one fused matmul: <see cref="PlanOptions.Sparsity"/> when set and the weights' layout can
    /// hold it (Q8_0, or chosen from the file), else what the definition's [Sparse] <paramref name="declared"/>.
    /// </summary>
    public static SparsePattern Sparsity(SparsePattern declared, WeightFormat requested, PlanOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options.Sparsity is { } chosen && requested is WeightFormat.AsStored or WeightFormat.Q8_0 ? chosen : declared;
    }

    /// <summary>The layout <see cref="WeightFormat.AsStored"/> gives one weight.</summary>
    public static PackedFormat AsStored(Tensor weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        return weight.Stored?.Type switch
        {
            null or GgmlType.F32 or GgmlType.F16 => PackedFormat.F32,
            GgmlType.BF16 => PackedFormat.BF16,
            GgmlType.Q8_0 => PackedFormat.Q8_0,
            GgmlType.Q4_0 => PackedFormat.Q4_0,
            GgmlType.Q4_K => PackedFormat.Q4_K,
            GgmlType.Q5_K => PackedFormat.Q5_K,
            GgmlType.Q6_K => PackedFormat.Q6_K,
            _ => PackedFormat.Q8_0,
        };
    }

    /// <summary>The layout's name in reports: "F32x16 panels", "Q4_0x8 interleaved", ...</summary>
    public static string Describe(PackedFormat format) => format switch
    {
        PackedFormat.F32 => "F32x16 panels",
        PackedFormat.BF16 => "BF16x4 chunked",
        PackedFormat.Q8_0 => "Q8_0x8 interleaved",
        PackedFormat.Q4_0 => "Q4_0x8 interleaved",
        PackedFormat.Q4_K => "Q4_Kx8 interleaved",
        PackedFormat.Q5_K => "Q5_Kx8 interleaved",
        PackedFormat.Q6_K => "Q6_Kx8 interleaved",
        _ => format.ToString(),
    };

    /// <summary>True for the formats whose kernels read Q8 activations (Q8_0-style blocks of 32, or Q8_K super-blocks for the K-quants).</summary>
    public static bool IsQuantized(PackedFormat format) => format is PackedFormat.Q8_0 or PackedFormat.Q4_0 || IsKQuant(format);

    /// <summary>True for the K-quant layouts, whose kernels read Q8_K activations (<see cref="GemmScratch"/>).</summary>
    public static bool IsKQuant(PackedFormat format) => format is PackedFormat.Q4_K or PackedFormat.Q5_K or PackedFormat.Q6_K;

    /// <summary>The GGML type a K-quant layout packs (and the layout of a K-quant type).</summary>
    internal static GgmlType KType(PackedFormat format) => format switch
    {
        PackedFormat.Q4_K => GgmlType.Q4_K,
        PackedFormat.Q5_K => GgmlType.Q5_K,
        PackedFormat.Q6_K => GgmlType.Q6_K,
        _ => throw new ArgumentOutOfRangeException(nameof(format), format, "Not a K-quant layout."),
    };

    /// <summary>One report line for a packed matrix: "  field: layout [rows, k] (sources)".</summary>
    public static string Summarize(string field, PackedMatrix matrix)
    {
        ArgumentNullException.ThrowIfNull(matrix);
        return $"  {field}: {matrix.Describe()}\n";
    }

    /// <summary>
    /// Report lines for one packed matrix per layer, consecutive layers with the same layout on one line; a null entry is
    /// a layer whose branch of the forward does not run this matmul (a hybrid's other kind of layer).
    /// </summary>
    public static string Summarize(string field, PackedMatrix?[] layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        static string Describe(PackedMatrix? matrix) => matrix?.Describe() ?? "none (the layer takes the other branch)";
        var text = new System.Text.StringBuilder();
        for (int first = 0; first < layers.Length;)
        {
            string line = Describe(layers[first]);
            int last = first;
            while (last + 1 < layers.Length && Describe(layers[last + 1]) == line) last++;
            string which = first == last ? $"layer {first}" : $"layers {first}-{last}";
            text.Append($"  {field} ({which}): {line}\n");
            first = last + 1;
        }
        return text.ToString();
    }

    /// <summary><paramref name="rows"/> rounded up to a whole number of 4-row groups: a segment's size in a packed matrix.</summary>
    public static int PadRows(int rows)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        return checked(rows + 3) & ~3;
    }
}

/// <summary>
/// The weights of one (fused) matmul, packed for the tile kernels of <see cref="Gemm"/>. Work is split in groups of 4
/// rows; memory holds strips of <see cref="StripRows"/> rows (16 for F32: four groups; 4 for BF16; 8 for the quantized
/// ones: two groups stored together). A matmul of several weights stacks them as segments, each starting at a multiple
/// of 4 rows (padding rows are zero), so no group straddles two epilogues. Native, 64-byte aligned memory: it never moves.
/// <list type="bullet">
/// <item>F32: per panel of 16 rows, element k of rows 0..15 side by side, for k = 0..K−1 (k-major): one vector load is
/// element k of 16 rows, which the outer-product kernel multiplies by a token's broadcast element k, so sums need no
/// horizontal reduction and any K works (the last panel is partly padding when the groups are not a multiple of 4).</item>
/// <item>BF16: per group, K/16 chunks of 16 elements of row 0, 1, 2, 3 in turn, then the last K mod 16 elements
/// of each row: the tile kernel reads a group front to back, one stream (four rows read side by side as four
/// streams 4K apart lose a third of the bandwidth here).</item>
/// <item>Q8_0 / Q4_0: per strip of 8 rows, K/32 blocks of quants, then K/32 × 8 fp16 scales (the rows' stored scales,
/// as they are), the strip padded to 64 bytes. In a block, 32-byte vector j holds 4 stored bytes of row 0, then of
/// rows 1..7: Q8_0's vector j (of 8) elements 4j..4j+3; Q4_0's vector j (of 4) the bytes 4j..4j+3, whose low
/// nibbles are elements 4j..4j+3 and high nibbles elements 16+4j..16+4j+3. Against one broadcast of 4 activations, a
/// multiply-add covers 8 rows at once and the int32 sums come out one per row, complete: no lanes to fold (the
/// last strip is half padding when the groups are odd).</item>
/// <item>Q4_K / Q5_K / Q6_K: the same 8-row strips, in super-blocks of 256 values (<see cref="KStrip"/> has the
/// bytes). Each packed weight is a segment of its own, with its own memory and its own K type (a fused Q/K/V of
/// Q4_K, Q4_K and Q6_K keeps all three as stored), its strips counted from the segment's first group.</item>
/// </list>
/// A weight stored in the packed format is copied from its stored blocks (bit-identical quants and scales); any other
/// is converted once here: rounded to BF16, or quantized (GGML's reference quantizer for Q8_0/Q4_0, Kiln's for the
/// K-quants).
/// </summary>
public sealed unsafe partial class PackedMatrix : IDisposable
{
    /// <summary>Bytes of one packed block of quants: 32 elements × 8 rows.</summary>
    internal const int Q8BlockBytes = 256, Q4BlockBytes = 128;

    private readonly NativeBlock? _memory; // null for the K-quants, whose segments hold their own
    private readonly List<string> _sources = new();

    /// <summary>
    /// An all-zero matrix of <paramref name="rows"/> (a multiple of 4) rows of <paramref name="k"/> elements, dense or
    /// in a <paramref name="sparsity"/> layout (Q8_0 only; built from the packed rows by <see cref="FinishPacking"/>).
    /// </summary>
    public PackedMatrix(PackedFormat format, int rows, int k, SparsePattern sparsity = SparsePattern.None)
    {
        if (sparsity != SparsePattern.None && format != PackedFormat.Q8_0)
            throw new ArgumentException($"The sparse layouts hold Q8_0 blocks, not {format} (WeightLayouts.Resolve chooses Q8_0 for a sparse weight).", nameof(sparsity));
        if (!Enum.IsDefined(sparsity)) throw new ArgumentOutOfRangeException(nameof(sparsity), sparsity, "Not a sparse pattern.");
        Sparsity = sparsity;
        if (rows <= 0 || rows % Interleaved.RowsPerGroup != 0)
            throw new ArgumentOutOfRangeException(nameof(rows), rows, "A packed matrix holds a positive whole number of 4-row groups.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(k);
        int block = WeightLayouts.IsKQuant(format) ? KStrip.SuperBlockValues : 32;
        if (WeightLayouts.IsQuantized(format) && k % block != 0)
            throw new InvalidOperationException($"A {format} layout needs rows whose length is a multiple of {block}; these rows hold {k} elements.");
        Format = format;
        Rows = rows;
        K = k;
        Blocks = WeightLayouts.IsQuantized(format) ? k / 32 : 0;
        StripRows = format == PackedFormat.F32 ? PanelKernels.PanelRows : WeightLayouts.IsQuantized(format) ? 8 : 4;
        StripBytes = format switch
        {
            PackedFormat.F32 => (long)PanelKernels.PanelRows * k * sizeof(float),
            PackedFormat.BF16 => 4L * k * sizeof(ushort),
            PackedFormat.Q8_0 => RoundUp(Blocks * (Q8BlockBytes + 8L * sizeof(ushort)), 64),
            PackedFormat.Q4_0 => RoundUp(Blocks * (Q4BlockBytes + 8L * sizeof(ushort)), 64),
            PackedFormat.Q4_K or PackedFormat.Q5_K or PackedFormat.Q6_K => KStrip.StripBytes(format, k),
            _ => throw new ArgumentOutOfRangeException(nameof(format), format, "Not a packed format."),
        };
        if (!WeightLayouts.IsKQuant(format)) _memory = new NativeBlock(checked(StripBytes * Strips));
        if (sparsity != SparsePattern.None) _rowSources = new (string, int)[rows];
    }

    /// <summary>The layout; for the K-quants, the most precise of the segments' types (each keeps its own, <see cref="SegmentFormats"/>).</summary>
    public PackedFormat Format { get; }

    /// <summary>Rows, padding included (a multiple of 4).</summary>
    public int Rows { get; }

    /// <summary>Elements per row.</summary>
    public int K { get; }

    public int Groups => Rows / Interleaved.RowsPerGroup;

    /// <summary>Blocks of 32 per row (quantized formats; 0 otherwise).</summary>
    public int Blocks { get; }

    /// <summary>
    /// Rows stored together: 16 for F32, 4 for BF16, 8 for the quantized layouts (a last strip is partly padding when
    /// the groups do not fill it).
    /// </summary>
    public int StripRows { get; }

    /// <summary>Strips of <see cref="StripRows"/> rows in memory.</summary>
    public int Strips => (Rows + StripRows - 1) / StripRows;

    /// <summary>Bytes from one strip to the next (for the K-quants, in a segment of <see cref="Format"/>).</summary>
    public long StripBytes { get; }

    /// <summary>Bytes of packed weights.</summary>
    public long ByteCount
    {
        get
        {
            if (IsCompacted) return SparseByteCount;
            if (_memory is not null) return StripBytes * Strips;
            long bytes = 0;
            foreach (var segment in _segments) bytes += segment.Memory.Bytes;
            return bytes;
        }
    }

    /// <summary>The first strip (every layout but the K-quants, whose strips lie in their segments).</summary>
    public byte* Data => _memory is not null ? _memory.Pointer : throw new InvalidOperationException($"A {Format} matrix keeps its strips per segment.");

    /// <summary>Where each packed weight came from ("Wq: stored Q4_0 blocks"), for the plan's report.</summary>
    public IReadOnlyList<string> Sources => _sources;

    /// <summary>One line for reports: the layout and where its weights came from.</summary>
    public string Describe() => $"{DescribeLayout()}{DescribeSparsity()} [{Rows}, {K}] ({string.Join("; ", _sources)})";

    /// <summary>Packs <paramref name="weight"/> [Out, K] into rows from <paramref name="rowOffset"/> (a multiple of 4).</summary>
    public void Pack(int rowOffset, Tensor weight, string name = "") => Pack(rowOffset, weight, 0, weight?.Rows ?? 0, name);

    /// <summary>
    /// Packs rows [<paramref name="firstRow"/>, +<paramref name="rows"/>) of <paramref name="weight"/> — one part of a
    /// fused QKV or gate/up projection — into rows from <paramref name="rowOffset"/> (a multiple of 4).
    /// </summary>
    public void Pack(int rowOffset, Tensor weight, int firstRow, int rows, string name = "") => Pack(rowOffset, weight, firstRow, rows, null, name);

    /// <summary>
    /// As <see cref="Pack(int, Tensor, int, int, string)"/>, packed row i taking weight row firstRow + order[i] (a
    /// permutation of the part's rows, e.g. <see cref="RopeLayout.NeoXOrder"/>).
    /// </summary>
    public void Pack(int rowOffset, Tensor weight, int firstRow, int rows, int[]? order, string name = "")
    {
        Check(rowOffset, weight, rows);
        CheckRows(weight, firstRow, rows);
        if (order is not null && order.Length != rows)
            throw new ArgumentException($"An order of {order.Length} rows for a part of {rows}.", nameof(order));
        if (order is not null)
            foreach (int source in order)
                if ((uint)source >= (uint)rows) throw new ArgumentOutOfRangeException(nameof(order), $"Row {source} is outside the part's {rows} rows.");
        var format = WeightLayouts.IsKQuant(Format) ? SegmentFormat(weight, weight) : Format;
        var segment = WeightLayouts.IsKQuant(format) ? AddSegment(rowOffset, rows, format) : null;
        ForRowRanges(rows, (start, end) =>
        {
            var target = new RowTarget(this, segment);
            var row = new RowSource(weight, format);
            for (int o = start; o < end; o++)
            {
                int source = firstRow + (order is null ? o : order[o]);
                target.Write(rowOffset + o, row.Get(source));
                NoteRow(rowOffset + o, name, source);
            }
        });
        weight.Stored?.ReleasePages(firstRow, rows, K); // packed: the mapped bytes need not stay in memory
        Note(name, weight, format);
    }

    /// <summary>
    /// Interleaves two [Out, K] weights row by row (first₀, second₀, first₁, second₁, …) from <paramref name="rowOffset"/>:
    /// a gate/up pair then meets in the same group, and the epilogue turns each adjacent pair into one output (silu(gate)·up).
    /// </summary>
    public void PackInterleaved(int rowOffset, Tensor first, Tensor second, string firstName = "", string secondName = "")
    {
        if (first.Rows != second.Rows || first.Cols != second.Cols)
            throw new ArgumentException($"Interleaved weights differ in shape: {first} and {second}.");
        PackInterleaved(rowOffset, first, 0, second, 0, first.Rows, firstName, secondName);
    }

    /// <summary>
    /// Interleaves rows [<paramref name="firstStart"/>, +<paramref name="rows"/>) of <paramref name="first"/> with rows
    /// [<paramref name="secondStart"/>, +<paramref name="rows"/>) of <paramref name="second"/> (the two may be one fused
    /// gate/up weight) from <paramref name="rowOffset"/>.
    /// </summary>
    public void PackInterleaved(int rowOffset, Tensor first, int firstStart, Tensor second, int secondStart, int rows, string firstName = "", string secondName = "")
    {
        Check(rowOffset, first, 2 * rows);
        Check(rowOffset, second, 2 * rows);
        CheckRows(first, firstStart, rows);
        CheckRows(second, secondStart, rows);
        // The pair shares its groups, so one layout serves both rows of each.
        var format = WeightLayouts.IsKQuant(Format) ? SegmentFormat(first, second) : Format;
        var segment = WeightLayouts.IsKQuant(format) ? AddSegment(rowOffset, 2 * rows, format) : null;
        ForRowRanges(rows, (start, end) =>
        {
            var target = new RowTarget(this, segment);
            var a = new RowSource(first, format);
            var b = new RowSource(second, format);
            for (int o = start; o < end; o++)
            {
                target.Write(rowOffset + 2 * o, a.Get(firstStart + o));
                target.Write(rowOffset + 2 * o + 1, b.Get(secondStart + o));
                NoteRow(rowOffset + 2 * o, firstName, firstStart + o);
                NoteRow(rowOffset + 2 * o + 1, secondName, secondStart + o);
            }
        });
        first.Stored?.ReleasePages(firstStart, rows, K);
        second.Stored?.ReleasePages(secondStart, rows, K);
        Note(firstName, first, format);
        Note(secondName, second, format);
    }

    /// <summary>
    /// Runs <paramref name="pack"/> over ranges of [0, <paramref name="rows"/>), on the thread pool when the weight is
    /// large: every packed row owns its bytes (its 4 bytes of each strip vector, its scales), so ranges never share one.
    /// </summary>
    private void ForRowRanges(int rows, Action<int, int> pack)
    {
        const long ValuesPerRange = 1 << 20;
        int ranges = (int)Math.Clamp((long)rows * K / ValuesPerRange, 1, rows);
        if (ranges == 1 || Environment.ProcessorCount == 1)
        {
            pack(0, rows);
            return;
        }
        Parallel.For(0, ranges, i => pack((int)((long)rows * i / ranges), (int)((long)rows * (i + 1) / ranges)));
    }

    private static void CheckRows(Tensor weight, int firstRow, int rows)
    {
        if (firstRow < 0 || rows < 0 || rows > weight.Rows - firstRow)
            throw new ArgumentOutOfRangeException(nameof(rows), $"Rows [{firstRow}, {firstRow}+{rows}) are not within the {weight.Rows} rows of {weight}.");
    }

    /// <summary>The float values packed row <paramref name="row"/> stands for (tests, debugging): w = d·q as the kernels see it.</summary>
    public void DequantizeRow(int row, Span<float> destination)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)row, (uint)Rows, nameof(row));
        if (destination.Length != K) throw new ArgumentException($"A row holds {K} values, not {destination.Length}.", nameof(destination));
        if (IsCompacted)
        {
            for (int b = 0; b < Blocks; b++)
            {
                float scale = Fp16.ToSingle(SparseScaleBits(row, b));
                for (int e = 0; e < 32; e++) destination[b * 32 + e] = SparseQuant(row, b, e) * scale;
            }
            return;
        }
        if (WeightLayouts.IsKQuant(Format))
        {
            DequantizeKRow(row, destination);
            return;
        }
        byte* group = StripOf(row);
        int r = row % StripRows;
        switch (Format)
        {
            case PackedFormat.F32:
                for (int i = 0; i < K; i++) destination[i] = ((float*)group)[FloatIndex(r, i)];
                break;
            case PackedFormat.BF16:
                for (int i = 0; i < K; i++) destination[i] = BitConverter.UInt32BitsToSingle((uint)((ushort*)group)[FloatIndex(r, i)] << 16);
                break;
            default:
                for (int b = 0; b < Blocks; b++)
                {
                    float scale = Fp16.ToSingle(ScaleBits(group, b, r));
                    for (int e = 0; e < 32; e++) destination[b * 32 + e] = Quant(group, b, r, e) * scale;
                }
                break;
        }
    }

    /// <summary>The strip that holds <paramref name="row"/> (its row within: <c>row % StripRows</c>; not the K-quants).</summary>
    internal byte* StripOf(int row) => Data + (long)(row / StripRows) * StripBytes;

    /// <summary>
    /// The quant of element <paramref name="e"/> of block <paramref name="b"/> of row <paramref name="r"/> in its strip
    /// (Q8_0, Q4_0): Q8_0's byte as stored, Q4_0's nibble − 8.
    /// </summary>
    internal int Quant(byte* strip, int b, int r, int e)
    {
        if (Format == PackedFormat.Q8_0) return (sbyte)strip[(long)b * Q8BlockBytes + e / 4 * 32 + r * 4 + e % 4];
        byte packed = strip[(long)b * Q4BlockBytes + (e % 16) / 4 * 32 + r * 4 + e % 4];
        return (e < 16 ? packed & 0x0F : packed >> 4) - 8;
    }

    /// <summary>The fp16 scale bits of block <paramref name="b"/> of row <paramref name="r"/> in its strip (Q8_0, Q4_0).</summary>
    internal ushort ScaleBits(byte* strip, int b, int r) =>
        ((ushort*)(strip + (long)Blocks * (Format == PackedFormat.Q4_0 ? Q4BlockBytes : Q8BlockBytes)))[b * 8 + r];

    /// <summary>Where element <paramref name="i"/> of row <paramref name="r"/> sits in a float layout's strip, in elements.</summary>
    internal int FloatIndex(int r, int i)
    {
        if (Format == PackedFormat.F32) return i * PanelKernels.PanelRows + r;
        int full = K & ~15;
        return i < full ? (i >> 4) * 64 + r * 16 + (i & 15) : full * 4 + r * (K - full) + (i - full);
    }

    public void Dispose()
    {
        _memory?.Dispose();
        _sparse?.Dispose();
        foreach (var segment in _segments) segment.Memory.Dispose();
    }

    private void Check(int rowOffset, Tensor weight, int rows)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (IsCompacted) throw new InvalidOperationException("The matrix is in its sparse layout already: pack every weight before FinishPacking.");
        if (weight.Rank != 2 || weight.Cols != K)
            throw new ArgumentException($"A weight of shape {weight} does not have rows of {K} elements.", nameof(weight));
        if (rowOffset < 0 || rowOffset % Interleaved.RowsPerGroup != 0 || rowOffset + rows > Rows)
            throw new ArgumentOutOfRangeException(nameof(rowOffset), $"{rows} rows at {rowOffset} do not fit {Rows} packed rows on a 4-row boundary.");
    }

    private void Note(string name, Tensor weight, PackedFormat format)
    {
        string to = format != Format ? $" to {format}" : "";
        string source = weight.Stored?.Type is { } stored
            ? Matches(format, stored)
                ? stored == GgmlType.F32 ? "F32 copied" : $"stored {stored} copied"
                : WeightLayouts.IsQuantized(format) ? $"{stored} dequantized, requantized{to}" : $"{stored} converted"
            : format == PackedFormat.F32 ? "F32 copied" : $"F32 converted{to}";
        string line = name.Length > 0 ? $"{name}: {source}" : source;
        if (!_sources.Contains(line)) _sources.Add(line);
    }

    /// <summary>True when rows stored as <paramref name="stored"/> are copied into <paramref name="format"/> as they are.</summary>
    private static bool Matches(PackedFormat format, GgmlType stored) => (format, stored) switch
    {
        (PackedFormat.F32, GgmlType.F32) or (PackedFormat.BF16, GgmlType.BF16) or (PackedFormat.Q8_0, GgmlType.Q8_0) or (PackedFormat.Q4_0, GgmlType.Q4_0) => true,
        (PackedFormat.Q4_K, GgmlType.Q4_K) or (PackedFormat.Q5_K, GgmlType.Q5_K) or (PackedFormat.Q6_K, GgmlType.Q6_K) => true,
        _ => false,
    };

    /// <summary>Writes one row of Q8_0/Q4_0/F32/BF16, given in the packed format's plain encoding (floats, bf16 bits or GGML blocks).</summary>
    private void PackRow(int row, ReadOnlySpan<byte> encoded)
    {
        byte* group = StripOf(row);
        int r = row % StripRows;
        switch (Format)
        {
            case PackedFormat.F32:
            {
                var values = MemoryMarshal.Cast<byte, float>(encoded);
                for (int i = 0; i < K; i++) ((float*)group)[FloatIndex(r, i)] = values[i];
                break;
            }
            case PackedFormat.BF16:
            {
                var values = MemoryMarshal.Cast<byte, ushort>(encoded);
                for (int i = 0; i < K; i++) ((ushort*)group)[FloatIndex(r, i)] = values[i];
                break;
            }
            case PackedFormat.Q8_0:
            {
                ushort* scales = (ushort*)(group + (long)Blocks * Q8BlockBytes);
                for (int b = 0; b < Blocks; b++)
                {
                    var block = encoded.Slice(b * 34, 34);
                    scales[b * 8 + r] = BinaryPrimitives.ReadUInt16LittleEndian(block);
                    byte* quants = group + (long)b * Q8BlockBytes;
                    for (int j = 0; j < 8; j++)
                        for (int e = 0; e < 4; e++)
                            quants[j * 32 + r * 4 + e] = block[2 + 4 * j + e];
                }
                break;
            }
            case PackedFormat.Q4_0:
            {
                ushort* scales = (ushort*)(group + (long)Blocks * Q4BlockBytes);
                for (int b = 0; b < Blocks; b++)
                {
                    var block = encoded.Slice(b * 18, 18);
                    scales[b * 8 + r] = BinaryPrimitives.ReadUInt16LittleEndian(block);
                    byte* quants = group + (long)b * Q4BlockBytes;
                    for (int j = 0; j < 4; j++)
                        for (int e = 0; e < 4; e++)
                            quants[j * 32 + r * 4 + e] = block[2 + 4 * j + e];
                }
                break;
            }
        }
    }

    private static long RoundUp(long value, long multiple) => (value + multiple - 1) / multiple * multiple;

    /// <summary>Where the rows of one Pack call go: the matrix's strips, or the K-quant segment made for them.</summary>
    private readonly struct RowTarget
    {
        private readonly PackedMatrix _matrix;
        private readonly KSegment? _segment;
        private readonly KQuantBlock? _block;

        public RowTarget(PackedMatrix matrix, KSegment? segment)
        {
            _matrix = matrix;
            _segment = segment;
            _block = segment is null ? null : new KQuantBlock();
        }

        public void Write(int row, ReadOnlySpan<byte> encoded)
        {
            if (_segment is null) _matrix.PackRow(row, encoded);
            else _segment.PackRow(row, encoded, _block!);
        }
    }

    /// <summary>
    /// A weight's rows in a packed format's plain encoding: its stored bytes when they match (read from the file's
    /// mapping, a row at a time), else one row decoded to float32 and converted.
    /// </summary>
    private readonly ref struct RowSource
    {
        private readonly Tensor _weight;
        private readonly PackedFormat _format;
        private readonly bool _copies;
        private readonly byte[] _converted;
        private readonly float[] _values;

        public RowSource(Tensor weight, PackedFormat format)
        {
            _weight = weight;
            _format = format;
            int k = weight.Cols;
            int rowBytes = format switch
            {
                PackedFormat.F32 => k * sizeof(float),
                PackedFormat.BF16 => k * sizeof(ushort),
                PackedFormat.Q8_0 => Q8_0.RowBytes(k),
                PackedFormat.Q4_0 => Kiln.Kernels.Quantized.Q4_0.RowBytes(k),
                _ => (int)GgmlTypeTraits.Of(WeightLayouts.KType(format)).ByteCount(k),
            };
            _copies = weight.Stored is { } stored && Matches(format, stored.Type);
            _converted = _copies ? Array.Empty<byte>() : new byte[rowBytes];
            _values = _copies ? Array.Empty<float>() : new float[k];
        }

        public ReadOnlySpan<byte> Get(int row)
        {
            if (_copies) return _weight.Stored!.RowBytes(row, 1, _weight.Cols);
            _weight.ReadRow(row, _values);
            switch (_format)
            {
                case PackedFormat.F32: return MemoryMarshal.AsBytes(_values.AsSpan());
                case PackedFormat.BF16: Kiln.Kernels.Quantized.BF16.QuantizeRow(_values, _converted); break;
                case PackedFormat.Q8_0: Q8_0.QuantizeRow(_values, _converted); break;
                case PackedFormat.Q4_0: Kiln.Kernels.Quantized.Q4_0.QuantizeRow(_values, _converted); break;
                default: Quantize.FromFloat32(WeightLayouts.KType(_format), _values, _converted); break;
            }
            return _converted;
        }
    }
}
