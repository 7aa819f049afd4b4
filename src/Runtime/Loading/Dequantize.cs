using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Kiln.Loading;

/// <summary>
/// Converts stored tensor bytes to float32: the scalar reference for every format Kiln reads. Block layouts follow
/// GGML's (little-endian; fp16 scales); sizes come from <see cref="GgmlTypeTraits"/>.
/// </summary>
public static class Dequantize
{
    /// <summary>True when <see cref="ToFloat32"/> can convert <paramref name="type"/>.</summary>
    public static bool IsSupported(GgmlType type) => type is
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or
        GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q5_1 or
        GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

    /// <summary>
    /// Decodes <paramref name="destination"/>.Length values (a whole number of blocks) from the start of
    /// <paramref name="source"/>. Throws <see cref="NotSupportedException"/> for a type without a decoder
    /// (check <see cref="IsSupported"/>) and <see cref="ArgumentException"/> when the spans do not fit.
    /// </summary>
    public static void ToFloat32(GgmlType type, ReadOnlySpan<byte> source, Span<float> destination)
    {
        if (!IsSupported(type)) throw new NotSupportedException($"Dequantizing {type} is not supported.");
        var traits = GgmlTypeTraits.Of(type);
        if (destination.Length % traits.BlockElements != 0)
            throw new ArgumentException($"{destination.Length} values is not a whole number of {type} blocks of {traits.BlockElements}.", nameof(destination));
        long needed = traits.ByteCount(destination.Length);
        if (source.Length < needed)
            throw new ArgumentException($"{destination.Length} {type} values need {needed} bytes; the source has {source.Length}.", nameof(source));
        source = source[..(int)needed];

        switch (type)
        {
            case GgmlType.F32: MemoryMarshal.Cast<byte, float>(source).CopyTo(destination); break;
            case GgmlType.F16: TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(source), destination); break;
            case GgmlType.BF16: FromBFloat16(source, destination); break;
            case GgmlType.Q8_0: FromQ8_0(source, destination); break;
            case GgmlType.Q4_0: FromQ4_0(source, destination); break;
            case GgmlType.Q5_0: FromQ5(source, destination, withMin: false); break;
            case GgmlType.Q5_1: FromQ5(source, destination, withMin: true); break;
            case GgmlType.Q4_K: FromQ4OrQ5_K(source, destination, fifthBits: false); break;
            case GgmlType.Q5_K: FromQ4OrQ5_K(source, destination, fifthBits: true); break;
            case GgmlType.Q6_K: FromQ6_K(source, destination); break;
        }
    }

    internal static float ReadHalf(ReadOnlySpan<byte> bytes) => (float)BinaryPrimitives.ReadHalfLittleEndian(bytes);

    private static void FromBFloat16(ReadOnlySpan<byte> source, Span<float> destination)
    {
        // bfloat16 is the top half of a float32.
        var halves = MemoryMarshal.Cast<byte, ushort>(source);
        var bits = MemoryMarshal.Cast<float, uint>(destination);
        for (int i = 0; i < bits.Length; i++) bits[i] = (uint)halves[i] << 16;
    }

    // block_q8_0: fp16 d, int8 q[32]; x = q·d.
    private static void FromQ8_0(ReadOnlySpan<byte> source, Span<float> destination)
    {
        const int BlockBytes = 34;
        for (int block = 0; block < destination.Length / 32; block++)
        {
            var bytes = source.Slice(block * BlockBytes, BlockBytes);
            float scale = ReadHalf(bytes);
            var quants = MemoryMarshal.Cast<byte, sbyte>(bytes[2..]);
            var output = destination.Slice(block * 32, 32);
            for (int i = 0; i < 32; i++) output[i] = quants[i] * scale;
        }
    }

    // block_q4_0: fp16 d, 16 bytes; byte j holds element j (low nibble) and element j+16 (high nibble); x = (q-8)·d.
    private static void FromQ4_0(ReadOnlySpan<byte> source, Span<float> destination)
    {
        const int BlockBytes = 18;
        for (int block = 0; block < destination.Length / 32; block++)
        {
            var bytes = source.Slice(block * BlockBytes, BlockBytes);
            float scale = ReadHalf(bytes);
            var packed = bytes.Slice(2, 16);
            var output = destination.Slice(block * 32, 32);
            for (int j = 0; j < 16; j++)
            {
                output[j] = ((packed[j] & 0x0F) - 8) * scale;
                output[j + 16] = ((packed[j] >> 4) - 8) * scale;
            }
        }
    }

    // block_q5_0: fp16 d, 4 bytes of fifth bits, 16 bytes of nibbles; x = (q − 16)·d. block_q5_1: fp16 d, fp16 m,
    // then the same; x = q·d + m. Byte j holds element j (low nibble) and j+16 (high); bit j of the fifth bits is
    // element j's, bit j+16 element j+16's.
    private static void FromQ5(ReadOnlySpan<byte> source, Span<float> destination, bool withMin)
    {
        int blockBytes = withMin ? 24 : 22, head = withMin ? 4 : 2;
        for (int block = 0; block < destination.Length / 32; block++)
        {
            var bytes = source.Slice(block * blockBytes, blockBytes);
            float scale = ReadHalf(bytes);
            float min = withMin ? ReadHalf(bytes[2..]) : 0f;
            uint high = BinaryPrimitives.ReadUInt32LittleEndian(bytes[head..]);
            var packed = bytes.Slice(head + 4, 16);
            var output = destination.Slice(block * 32, 32);
            for (int j = 0; j < 16; j++)
            {
                int low = (packed[j] & 0x0F) | (int)((high >> j) & 1) << 4;
                int upper = (packed[j] >> 4) | (int)((high >> (j + 16)) & 1) << 4;
                if (withMin)
                {
                    output[j] = low * scale + min;
                    output[j + 16] = upper * scale + min;
                }
                else
                {
                    output[j] = (low - 16) * scale;
                    output[j + 16] = (upper - 16) * scale;
                }
            }
        }
    }

    // block_q4_K: fp16 d, fp16 dmin, 12 bytes of 6-bit (scale, min) pairs for 8 sub-blocks of 32, 128 bytes of
    // nibbles. Each 32-byte run of nibbles holds two sub-blocks: low nibbles first, then high. x = d·sc·q − dmin·m.
    // block_q5_K is the same with 32 bytes of fifth bits between the scales and the nibbles (KQuantBlock): q in 0..31.
    private static void FromQ4OrQ5_K(ReadOnlySpan<byte> source, Span<float> destination, bool fifthBits)
    {
        int blockBytes = fifthBits ? 176 : 144, nibblesAt = fifthBits ? 48 : 16;
        for (int block = 0; block < destination.Length / 256; block++)
        {
            var bytes = source.Slice(block * blockBytes, blockBytes);
            float scale = ReadHalf(bytes);
            float minScale = ReadHalf(bytes[2..]);
            var scales = bytes.Slice(4, 12);
            var high = fifthBits ? bytes.Slice(16, 32) : default;
            var nibbles = bytes.Slice(nibblesAt, 128);
            var output = destination.Slice(block * 256, 256);
            for (int pair = 0; pair < 4; pair++)
            {
                KQuantBlock.ScaleAndMin(2 * pair, scales, out int lowScale, out int lowMin);
                KQuantBlock.ScaleAndMin(2 * pair + 1, scales, out int highScale, out int highMin);
                float d1 = scale * lowScale, m1 = minScale * lowMin;
                float d2 = scale * highScale, m2 = minScale * highMin;
                var q = nibbles.Slice(32 * pair, 32);
                var y = output.Slice(64 * pair, 64);
                for (int l = 0; l < 32; l++)
                {
                    int fifthLow = fifthBits ? ((high[l] >> (2 * pair)) & 1) * 16 : 0;
                    int fifthHigh = fifthBits ? ((high[l] >> (2 * pair + 1)) & 1) * 16 : 0;
                    y[l] = d1 * ((q[l] & 0x0F) + fifthLow) - m1;
                    y[l + 32] = d2 * ((q[l] >> 4) + fifthHigh) - m2;
                }
            }
        }
    }

    // block_q6_K: 128 bytes low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales (one per 16 values), fp16 d.
    // Each half (128 values) uses 64 low-nibble bytes and 32 high bytes: value l+32·k of the half takes its low
    // nibble from ql[l] (k = 0, 2: low/high nibble) or ql[l+32] (k = 1, 3) and its high bits from qh[l] >> 2k.
    // x = d·scale·(q − 32).
    private static void FromQ6_K(ReadOnlySpan<byte> source, Span<float> destination)
    {
        const int BlockBytes = 210;
        for (int block = 0; block < destination.Length / 256; block++)
        {
            var bytes = source.Slice(block * BlockBytes, BlockBytes);
            var allLow = bytes[..128];
            var allHigh = bytes.Slice(128, 64);
            var allScales = MemoryMarshal.Cast<byte, sbyte>(bytes.Slice(192, 16));
            float d = ReadHalf(bytes[208..]);
            var output = destination.Slice(block * 256, 256);
            for (int half = 0; half < 2; half++)
            {
                var low = allLow.Slice(64 * half, 64);
                var high = allHigh.Slice(32 * half, 32);
                var scales = allScales.Slice(8 * half, 8);
                var y = output.Slice(128 * half, 128);
                for (int l = 0; l < 32; l++)
                {
                    int group = l / 16;
                    int q1 = ((low[l] & 0x0F) | ((high[l] & 3) << 4)) - 32;
                    int q2 = ((low[l + 32] & 0x0F) | (((high[l] >> 2) & 3) << 4)) - 32;
                    int q3 = ((low[l] >> 4) | (((high[l] >> 4) & 3) << 4)) - 32;
                    int q4 = ((low[l + 32] >> 4) | (((high[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * scales[group] * q1;
                    y[l + 32] = d * scales[group + 2] * q2;
                    y[l + 64] = d * scales[group + 4] * q3;
                    y[l + 96] = d * scales[group + 6] * q4;
                }
            }
        }
    }
}
