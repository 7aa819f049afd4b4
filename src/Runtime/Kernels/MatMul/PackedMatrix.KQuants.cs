using System.Runtime.InteropServices;
using Kiln.Kernels.Quantized;
using Kiln.Loading;

namespace Kiln.Kernels.MatMul;

/// <summary>The K-quant layouts of a <see cref="PackedMatrix"/>: one segment per packed weight, each in its own K type.</summary>
public sealed unsafe partial class PackedMatrix
{
    private readonly List<KSegment> _segments = new(); // sorted by first group

    /// <summary>The K-quant segments, in row order (empty for the other layouts).</summary>
    internal List<KSegment> Segments => _segments;

    /// <summary>The K type of each packed segment, in row order (empty for the other layouts).</summary>
    public IReadOnlyList<PackedFormat> SegmentFormats => _segments.ConvertAll(segment => segment.Format);

    /// <summary>
    /// The K type a segment of <paramref name="first"/> (and its interleaved partner <paramref name="second"/>) takes:
    /// their stored type when both are stored in the same K-quant, else the matrix's own (they are converted to it).
    /// </summary>
    private PackedFormat SegmentFormat(Tensor first, Tensor second)
    {
        var a = first.Stored is { } x && KQuantBlock.IsSupported(x.Type) ? WeightLayouts.AsStored(first) : Format;
        var b = second.Stored is { } y && KQuantBlock.IsSupported(y.Type) ? WeightLayouts.AsStored(second) : Format;
        return a == b ? a : Format;
    }

    private KSegment AddSegment(int rowOffset, int rows, PackedFormat format)
    {
        int first = rowOffset / Interleaved.RowsPerGroup, groups = WeightLayouts.PadRows(rows) / Interleaved.RowsPerGroup;
        int at = 0;
        while (at < _segments.Count && _segments[at].FirstGroup < first) at++;
        if ((at > 0 && _segments[at - 1].EndGroup > first) || (at < _segments.Count && _segments[at].FirstGroup < first + groups))
            throw new InvalidOperationException($"Rows [{rowOffset}, {rowOffset + rows}) overlap a weight packed before; a K-quant matrix packs each row once.");
        var segment = new KSegment(first, groups, format, KStrip.StripBytes(format, K));
        _segments.Insert(at, segment);
        return segment;
    }

    /// <summary>"Q4_Kx8 interleaved", or for K-quants of several types "K-quants x8 interleaved (Q4_K, Q6_K per segment)".</summary>
    private string DescribeLayout()
    {
        if (!WeightLayouts.IsKQuant(Format)) return WeightLayouts.Describe(Format);
        var types = new List<PackedFormat>();
        foreach (var segment in _segments)
            if (!types.Contains(segment.Format)) types.Add(segment.Format);
        return types.Count > 1 ? $"K-quants x8 interleaved ({string.Join(", ", types)} per segment)" : WeightLayouts.Describe(Format);
    }

    /// <summary>The segment holding <paramref name="group"/>, or null for a group no weight was packed into (zero rows).</summary>
    internal KSegment? SegmentOf(int group)
    {
        foreach (var segment in _segments)
            if (group >= segment.FirstGroup && group < segment.EndGroup) return segment;
        return null;
    }

    /// <summary>A K-quant row as GGML dequantizes it: d·sc·q − dmin·m (Q4_K, Q5_K) or d·sc·(q − 32) (Q6_K), each product in float.</summary>
    private void DequantizeKRow(int row, Span<float> destination)
    {
        var segment = SegmentOf(row / Interleaved.RowsPerGroup);
        if (segment is null)
        {
            destination.Clear();
            return;
        }
        byte* strip = segment.StripOf(row);
        int r = segment.RowInStrip(row);
        for (int b = 0; b < K / KStrip.SuperBlockValues; b++)
        {
            byte* s = strip + (long)b * KStrip.SuperBytes(segment.Format);
            float d = Fp16.ToSingle(KStrip.D(s, segment.Format, r));
            for (int i = 0; i < KStrip.SuperBlockValues; i++)
            {
                int q = KStrip.Quant(s, segment.Format, r, i);
                float value;
                if (segment.Format == PackedFormat.Q6_K) value = d * KStrip.Scale(s, segment.Format, r, i / 16) * (q - 32);
                else
                {
                    float dMin = Fp16.ToSingle(KStrip.DMin(s, segment.Format, r));
                    int j = i / 32;
                    value = d * KStrip.Scale(s, segment.Format, r, j) * q - dMin * KStrip.Min(s, segment.Format, r, j);
                }
                destination[b * KStrip.SuperBlockValues + i] = value;
            }
        }
    }
}

/// <summary>
/// One weight of a K-quant <see cref="PackedMatrix"/>: its groups [<see cref="FirstGroup"/>, <see cref="EndGroup"/>),
/// its K type, and its strips of 8 rows (local groups 2s and 2s + 1 in strip s; the last half padding when its groups
/// are odd) in memory of its own.
/// </summary>
internal sealed unsafe class KSegment
{
    public KSegment(int firstGroup, int groups, PackedFormat format, long stripBytes)
    {
        FirstGroup = firstGroup;
        Groups = groups;
        Format = format;
        StripBytes = stripBytes;
        Memory = new NativeBlock(checked(stripBytes * ((groups + 1) / 2)));
    }

    public int FirstGroup { get; }

    public int Groups { get; }

    public int EndGroup => FirstGroup + Groups;

    public PackedFormat Format { get; }

    public long StripBytes { get; }

    public NativeBlock Memory { get; }

    /// <summary>The strip holding <paramref name="row"/> (a row of the matrix, within this segment).</summary>
    public byte* StripOf(int row) => Memory.Pointer + (long)((row / Interleaved.RowsPerGroup - FirstGroup) >> 1) * StripBytes;

    /// <summary>The strip holding matrix group <paramref name="group"/>.</summary>
    public byte* StripOfGroup(int group) => Memory.Pointer + (long)((group - FirstGroup) >> 1) * StripBytes;

    /// <summary>The row's place (0..7) in its strip.</summary>
    public int RowInStrip(int row) => (row - FirstGroup * Interleaved.RowsPerGroup) & 7;

    /// <summary>Writes one row, given as stored blocks of this segment's K type.</summary>
    public void PackRow(int row, ReadOnlySpan<byte> encoded, KQuantBlock block)
    {
        var type = WeightLayouts.KType(Format);
        int blockBytes = GgmlTypeTraits.Of(type).BlockBytes, superBytes = KStrip.SuperBytes(Format);
        byte* strip = StripOf(row);
        int r = RowInStrip(row);
        for (int b = 0; b < encoded.Length / blockBytes; b++)
        {
            block.Read(type, encoded.Slice(b * blockBytes, blockBytes));
            KStrip.Write(strip + (long)b * superBytes, Format, r, block);
        }
    }
}

/// <summary>
/// The bytes of one K-quant strip super-block: 256 values of 8 rows. Values go in units of 32 (a Q4_K/Q5_K sub-block;
/// two Q6_K sub-blocks of 16, A then B). Within a unit, 8 vectors of 32 bytes each hold 4 values of row 0, then of
/// rows 1..7: vector v holds values 2v, 2v+1 (of A) then 16+2v, 16+2v+1 (of B), so one multiply-add pair sum never
/// mixes two sub-blocks, and the Q8_K activations are stored in the same order (<see cref="Slot"/>). The 8 vectors
/// are stored as their low 4 bits, vector v in the low (v &lt; 4) or high nibbles of 4 stored vectors (128 bytes per
/// unit), the rest of each value in spare bits after them:
/// <list type="bullet">
/// <item>Q4_K (1184 bytes): nibbles [0, 1024); scales [1024, 1088): unit j's 8 rows' 6-bit scales; mins [1088, 1152):
/// units 2p and 2p+1 as 16 bytes (row r's pair at 2r), ready to widen into int16 pairs; d [1152, 1168) and dmin
/// [1168, 1184), 8 fp16 each.</item>
/// <item>Q5_K (1440 bytes): nibbles, then fifth bits [1024, 1280): 32 bytes per unit, bit v of byte 4r+e the high bit
/// of vector v's byte; then scales, mins, d, dmin as Q4_K from 1280.</item>
/// <item>Q6_K (1680 bytes): nibbles, then 2-bit high parts [1024, 1536): 64 bytes per unit, bits 2(v mod 4) of byte
/// 4r+e of the first 32 (v &lt; 4) or last 32 (v ≥ 4); int8 scales [1536, 1664): per unit 16 bytes, row r's
/// (A, B) at 2r; d [1664, 1680).</item>
/// </list>
/// The stored values are GGML's own (quants, 6- or 8-bit scales and mins, fp16 d): only their places change.
/// </summary>
internal static unsafe class KStrip
{
    public const int SuperBlockValues = 256, Units = 8, UnitBytes = 128, NibbleBytes = Units * UnitBytes;

    public static int SuperBytes(PackedFormat format) => format switch
    {
        PackedFormat.Q4_K => 1184,
        PackedFormat.Q5_K => 1440,
        PackedFormat.Q6_K => 1680,
        _ => throw new ArgumentOutOfRangeException(nameof(format), format, "Not a K-quant layout."),
    };

    public static int ScalesAt(PackedFormat format) => format switch { PackedFormat.Q4_K => 1024, PackedFormat.Q5_K => 1280, _ => 1536 };

    public static int MinsAt(PackedFormat format) => ScalesAt(format) + 64;

    public static int DAt(PackedFormat format) => format == PackedFormat.Q6_K ? 1664 : ScalesAt(format) + 128;

    public static int DMinAt(PackedFormat format) => DAt(format) + 16;

    /// <summary>Bytes of one strip of rows of <paramref name="k"/> values, padded to 64.</summary>
    public static long StripBytes(PackedFormat format, int k) => ((long)k / SuperBlockValues * SuperBytes(format) + 63) & ~63L;

    /// <summary>Where value <paramref name="i"/> (0..31) of a unit goes among its 32 bytes per row: 4v + e.</summary>
    public static int Slot(int i) => i < 16 ? 4 * (i >> 1) + (i & 1) : 4 * ((i - 16) >> 1) + 2 + (i & 1);

    private static readonly byte[] Slots = Enumerable.Range(0, 32).Select(i => (byte)Slot(i)).ToArray();

    /// <summary>Writes row <paramref name="r"/> of a strip super-block from one stored block in integer form.</summary>
    public static void Write(byte* s, PackedFormat format, int r, KQuantBlock block)
    {
        for (int u = 0; u < Units; u++)
            for (int i = 0; i < 32; i++)
            {
                int q = block.Quants[32 * u + i], slot = Slots[i], v = slot >> 2, e = slot & 3, at = r * 4 + e;
                byte* nibble = s + u * UnitBytes + (v & 3) * 32 + at;
                *nibble = v < 4 ? (byte)((*nibble & 0xF0) | (q & 0x0F)) : (byte)((*nibble & 0x0F) | ((q & 0x0F) << 4));
                if (format == PackedFormat.Q5_K)
                {
                    byte* high = s + NibbleBytes + u * 32 + at;
                    *high = (byte)((*high & ~(1 << v)) | ((q >> 4) << v));
                }
                else if (format == PackedFormat.Q6_K)
                {
                    byte* high = s + NibbleBytes + u * 64 + (v >> 2) * 32 + at;
                    int shift = 2 * (v & 3);
                    *high = (byte)((*high & ~(3 << shift)) | ((q >> 4) << shift));
                }
            }
        byte* scales = s + ScalesAt(format);
        if (format == PackedFormat.Q6_K)
        {
            for (int j = 0; j < 16; j++) scales[(j >> 1) * 16 + r * 2 + (j & 1)] = (byte)(sbyte)block.Scales[j];
        }
        else
        {
            byte* mins = s + MinsAt(format);
            for (int j = 0; j < 8; j++)
            {
                scales[j * 8 + r] = (byte)block.Scales[j];
                mins[(j >> 1) * 16 + r * 2 + (j & 1)] = (byte)block.Mins[j];
            }
            ((ushort*)(s + DMinAt(format)))[r] = block.DMin;
        }
        ((ushort*)(s + DAt(format)))[r] = block.D;
    }

    /// <summary>Value <paramref name="i"/> (0..255) of row <paramref name="r"/>'s quant: 0..15, 0..31 or 0..63 as stored.</summary>
    public static int Quant(byte* s, PackedFormat format, int r, int i)
    {
        int u = i / 32, slot = Slot(i % 32), v = slot >> 2, at = r * 4 + (slot & 3);
        byte nibbles = s[u * UnitBytes + (v & 3) * 32 + at];
        int q = v < 4 ? nibbles & 0x0F : nibbles >> 4;
        if (format == PackedFormat.Q5_K) q |= ((s[NibbleBytes + u * 32 + at] >> v) & 1) << 4;
        else if (format == PackedFormat.Q6_K) q |= ((s[NibbleBytes + u * 64 + (v >> 2) * 32 + at] >> (2 * (v & 3))) & 3) << 4;
        return q;
    }

    /// <summary>Sub-block <paramref name="j"/>'s scale of row <paramref name="r"/> (of 8 per super-block, or 16 for Q6_K).</summary>
    public static int Scale(byte* s, PackedFormat format, int r, int j) => format == PackedFormat.Q6_K
        ? (sbyte)s[ScalesAt(format) + (j >> 1) * 16 + r * 2 + (j & 1)]
        : s[ScalesAt(format) + j * 8 + r];

    /// <summary>Sub-block <paramref name="j"/>'s min of row <paramref name="r"/> (Q4_K, Q5_K).</summary>
    public static int Min(byte* s, PackedFormat format, int r, int j) => s[MinsAt(format) + (j >> 1) * 16 + r * 2 + (j & 1)];

    public static ushort D(byte* s, PackedFormat format, int r) => ((ushort*)(s + DAt(format)))[r];

    public static ushort DMin(byte* s, PackedFormat format, int r) => ((ushort*)(s + DMinAt(format)))[r];
}
