using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Kiln.Loading;

/// <summary>
/// Converts float32 values to a stored GGML format: the counterpart of <see cref="Dequantize"/>. The block
/// quantizers are GGML's reference (round-to-nearest) ones, so files written here decode the same everywhere.
/// </summary>
public static class Quantize
{
    /// <summary>True when <see cref="FromFloat32"/> can produce <paramref name="type"/>.</summary>
    public static bool IsSupported(GgmlType type) => type is
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0;

    /// <summary>
    /// Encodes <paramref name="source"/> (a whole number of blocks) into the first
    /// <c>GgmlTypeTraits.Of(type).ByteCount(source.Length)</c> bytes of <paramref name="destination"/>.
    /// </summary>
    public static void FromFloat32(GgmlType type, ReadOnlySpan<float> source, Span<byte> destination)
    {
        if (!IsSupported(type)) throw new NotSupportedException($"Quantizing to {type} is not supported.");
        var traits = GgmlTypeTraits.Of(type);
        if (source.Length % traits.BlockElements != 0)
            throw new ArgumentException($"{source.Length} values is not a whole number of {type} blocks of {traits.BlockElements}.", nameof(source));
        long needed = traits.ByteCount(source.Length);
        if (destination.Length < needed)
            throw new ArgumentException($"{source.Length} {type} values need {needed} bytes; the destination has {destination.Length}.", nameof(destination));
        destination = destination[..(int)needed];

        switch (type)
        {
            case GgmlType.F32: MemoryMarshal.AsBytes(source).CopyTo(destination); break;
            case GgmlType.F16: TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<byte, Half>(destination)); break;
            case GgmlType.BF16: ToBFloat16(source, destination); break;
            case GgmlType.Q8_0: ToQ8_0(source, destination); break;
            case GgmlType.Q4_0: ToQ4_0(source, destination); break;
        }
    }

    /// <summary>float32 → bfloat16 bits, rounding to nearest even; NaN stays a (quiet) NaN.</summary>
    public static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    private static void ToBFloat16(ReadOnlySpan<float> source, Span<byte> destination)
    {
        var output = MemoryMarshal.Cast<byte, ushort>(destination);
        for (int i = 0; i < source.Length; i++) output[i] = ToBFloat16(source[i]);
    }

    // d = max|x| / 127, q = round(x / d).
    private static void ToQ8_0(ReadOnlySpan<float> source, Span<byte> destination)
    {
        const int BlockBytes = 34;
        for (int block = 0; block < source.Length / 32; block++)
        {
            var x = source.Slice(block * 32, 32);
            var bytes = destination.Slice(block * BlockBytes, BlockBytes);
            float absMax = TensorPrimitives.MaxMagnitude(x);
            absMax = MathF.Abs(absMax);
            float scale = absMax / 127f;
            float inverse = scale != 0 ? 1f / scale : 0f;
            BinaryPrimitives.WriteHalfLittleEndian(bytes, (Half)scale);
            var quants = MemoryMarshal.Cast<byte, sbyte>(bytes[2..]);
            for (int i = 0; i < 32; i++) quants[i] = (sbyte)MathF.Round(x[i] * inverse, MidpointRounding.AwayFromZero);
        }
    }

    // d = (the value of largest magnitude, with its sign) / −8, so that value maps exactly to q = 0;
    // q = min(15, trunc(x/d + 8.5)).
    private static void ToQ4_0(ReadOnlySpan<float> source, Span<byte> destination)
    {
        const int BlockBytes = 18;
        for (int block = 0; block < source.Length / 32; block++)
        {
            var x = source.Slice(block * 32, 32);
            var bytes = destination.Slice(block * BlockBytes, BlockBytes);
            float extreme = 0, extremeMagnitude = 0;
            foreach (float value in x)
            {
                if (MathF.Abs(value) > extremeMagnitude)
                {
                    extremeMagnitude = MathF.Abs(value);
                    extreme = value;
                }
            }
            float scale = extreme / -8f;
            float inverse = scale != 0 ? 1f / scale : 0f;
            BinaryPrimitives.WriteHalfLittleEndian(bytes, (Half)scale);
            var packed = bytes.Slice(2, 16);
            for (int j = 0; j < 16; j++)
            {
                int low = Math.Min(15, (int)(x[j] * inverse + 8.5f));
                int high = Math.Min(15, (int)(x[j + 16] * inverse + 8.5f));
                packed[j] = (byte)(low | (high << 4));
            }
        }
    }
}
