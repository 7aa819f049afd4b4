using System.Buffers.Binary;

namespace Kiln.Loading;

/// <summary>
/// One K-quant super-block (256 values) in integer form: a quant per value, a scale (and min) per sub-block and the
/// fp16 super-block scales, as GGML's Q4_K, Q5_K and Q6_K store them. <see cref="Read"/> unpacks a stored block and
/// <see cref="Write"/> packs one back, bit for bit; the plans' packing, the quantizer and the tests share it, so the
/// byte layouts live in this one place.
/// <list type="bullet">
/// <item>Q4_K (144 bytes): fp16 d, fp16 dmin, 12 bytes of 6-bit (scale, min) pairs for 8 sub-blocks of 32, 128 bytes
/// of nibbles; 32-byte run c holds sub-block 2c in its low nibbles and 2c+1 in its high ones. x = d·sc·q − dmin·m.</item>
/// <item>Q5_K (176 bytes): as Q4_K with 32 bytes of fifth bits after the scales: bit 2c (2c+1) of byte l is the high
/// bit of element l of sub-block 2c (2c+1). q in 0..31.</item>
/// <item>Q6_K (210 bytes): 128 bytes of low nibbles, 64 of 2-bit high parts, 16 int8 scales (one per 16 values), fp16
/// d. In half h (128 values), value 32k + l takes its low nibble from ql[64h + l] (k = 0, 2: low, high nibble) or
/// ql[64h + 32 + l] (k = 1, 3) and its high bits from qh[32h + l] &gt;&gt; 2k. x = d·sc·(q − 32), q in 0..63.</item>
/// </list>
/// </summary>
internal sealed class KQuantBlock
{
    public const int Values = 256;

    /// <summary>One quant per value: 0..15 (Q4_K), 0..31 (Q5_K) or 0..63 (Q6_K, standing for q − 32).</summary>
    public readonly byte[] Quants = new byte[Values];

    /// <summary>Sub-block scales: 8 of 0..63 (Q4_K, Q5_K, per 32 values) or 16 of −128..127 (Q6_K, per 16).</summary>
    public readonly int[] Scales = new int[16];

    /// <summary>Sub-block mins, 8 of 0..63 (Q4_K, Q5_K; unused by Q6_K).</summary>
    public readonly int[] Mins = new int[8];

    /// <summary>The super-block scale and (Q4_K, Q5_K) min scale, as fp16 bits.</summary>
    public ushort D, DMin;

    /// <summary>True for the three K-quants this class reads and writes.</summary>
    public static bool IsSupported(GgmlType type) => type is GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

    /// <summary>Sub-blocks per super-block: 8 of 32 values, or 16 of 16 for Q6_K.</summary>
    public static int SubBlocks(GgmlType type) => type == GgmlType.Q6_K ? 16 : 8;

    /// <summary>The largest quant of <paramref name="type"/>.</summary>
    public static int MaxQuant(GgmlType type) => type switch { GgmlType.Q4_K => 15, GgmlType.Q5_K => 31, _ => 63 };

    /// <summary>Unpacks the stored block at the start of <paramref name="block"/>.</summary>
    public void Read(GgmlType type, ReadOnlySpan<byte> block)
    {
        switch (type)
        {
            case GgmlType.Q4_K:
            case GgmlType.Q5_K:
            {
                D = BinaryPrimitives.ReadUInt16LittleEndian(block);
                DMin = BinaryPrimitives.ReadUInt16LittleEndian(block[2..]);
                var packed = block.Slice(4, 12);
                for (int j = 0; j < 8; j++) ScaleAndMin(j, packed, out Scales[j], out Mins[j]);
                bool five = type == GgmlType.Q5_K;
                var high = five ? block.Slice(16, 32) : default;
                var nibbles = block.Slice(five ? 48 : 16, 128);
                for (int c = 0; c < 4; c++)
                    for (int l = 0; l < 32; l++)
                    {
                        byte b = nibbles[32 * c + l];
                        int low = b & 0x0F, upper = b >> 4;
                        if (five)
                        {
                            low |= ((high[l] >> (2 * c)) & 1) << 4;
                            upper |= ((high[l] >> (2 * c + 1)) & 1) << 4;
                        }
                        Quants[64 * c + l] = (byte)low;
                        Quants[64 * c + 32 + l] = (byte)upper;
                    }
                break;
            }
            case GgmlType.Q6_K:
            {
                var ql = block[..128];
                var qh = block.Slice(128, 64);
                for (int s = 0; s < 16; s++) Scales[s] = (sbyte)block[192 + s];
                D = BinaryPrimitives.ReadUInt16LittleEndian(block[208..]);
                DMin = 0;
                for (int h = 0; h < 2; h++)
                    for (int l = 0; l < 32; l++)
                    {
                        byte a = ql[64 * h + l], b = ql[64 * h + 32 + l], high = qh[32 * h + l];
                        Quants[128 * h + l] = (byte)((a & 0x0F) | ((high & 3) << 4));
                        Quants[128 * h + 32 + l] = (byte)((b & 0x0F) | (((high >> 2) & 3) << 4));
                        Quants[128 * h + 64 + l] = (byte)((a >> 4) | (((high >> 4) & 3) << 4));
                        Quants[128 * h + 96 + l] = (byte)((b >> 4) | (((high >> 6) & 3) << 4));
                    }
                break;
            }
            default:
                throw new NotSupportedException($"{type} is not a K-quant this block reads.");
        }
    }

    /// <summary>Packs this block into the first <c>GgmlTypeTraits.Of(type).BlockBytes</c> bytes of <paramref name="block"/>.</summary>
    public void Write(GgmlType type, Span<byte> block)
    {
        switch (type)
        {
            case GgmlType.Q4_K:
            case GgmlType.Q5_K:
            {
                bool five = type == GgmlType.Q5_K;
                BinaryPrimitives.WriteUInt16LittleEndian(block, D);
                BinaryPrimitives.WriteUInt16LittleEndian(block[2..], DMin);
                var packed = block.Slice(4, 12);
                packed.Clear();
                for (int j = 0; j < 8; j++)
                {
                    int scale = Scales[j], min = Mins[j];
                    if (j < 4)
                    {
                        packed[j] |= (byte)scale;
                        packed[j + 4] |= (byte)min;
                    }
                    else
                    {
                        packed[j + 4] = (byte)((scale & 0x0F) | ((min & 0x0F) << 4));
                        packed[j - 4] |= (byte)((scale >> 4) << 6);
                        packed[j] |= (byte)((min >> 4) << 6);
                    }
                }
                var high = five ? block.Slice(16, 32) : default;
                if (five) high.Clear();
                var nibbles = block.Slice(five ? 48 : 16, 128);
                for (int c = 0; c < 4; c++)
                    for (int l = 0; l < 32; l++)
                    {
                        int low = Quants[64 * c + l], upper = Quants[64 * c + 32 + l];
                        nibbles[32 * c + l] = (byte)((low & 0x0F) | ((upper & 0x0F) << 4));
                        if (five) high[l] |= (byte)(((low >> 4) << (2 * c)) | ((upper >> 4) << (2 * c + 1)));
                    }
                break;
            }
            case GgmlType.Q6_K:
            {
                var ql = block[..128];
                var qh = block.Slice(128, 64);
                for (int h = 0; h < 2; h++)
                    for (int l = 0; l < 32; l++)
                    {
                        int q1 = Quants[128 * h + l], q2 = Quants[128 * h + 32 + l], q3 = Quants[128 * h + 64 + l], q4 = Quants[128 * h + 96 + l];
                        ql[64 * h + l] = (byte)((q1 & 0x0F) | ((q3 & 0x0F) << 4));
                        ql[64 * h + 32 + l] = (byte)((q2 & 0x0F) | ((q4 & 0x0F) << 4));
                        qh[32 * h + l] = (byte)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
                    }
                for (int s = 0; s < 16; s++) block[192 + s] = (byte)(sbyte)Scales[s];
                BinaryPrimitives.WriteUInt16LittleEndian(block[208..], D);
                break;
            }
            default:
                throw new NotSupportedException($"{type} is not a K-quant this block writes.");
        }
    }

    /// <summary>
    /// Sub-block <paramref name="j"/>'s 6-bit scale and min from the 12-byte field: sub-blocks 0–3 are the low 6 bits
    /// of bytes j and j+4; sub-blocks 4–7 take their low 4 bits from byte j+4 and their top 2 bits from the spare top
    /// bits of bytes j−4 (scale) and j (min).
    /// </summary>
    internal static void ScaleAndMin(int j, ReadOnlySpan<byte> scales, out int scale, out int min)
    {
        if (j < 4)
        {
            scale = scales[j] & 63;
            min = scales[j + 4] & 63;
        }
        else
        {
            scale = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
            min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        }
    }
}
