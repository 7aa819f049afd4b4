using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Kiln.Loading;

/// <summary>
/// Converts float32 values to a stored GGML format: the counterpart of <see cref="Dequantize"/>. The 32-value block
/// quantizers are GGML's reference (round-to-nearest) ones; the K-quants are Kiln's own fit of each format's
/// definition (<see cref="KQuantBlock"/>). Any encoding of a format decodes the same everywhere, so files written
/// here read the same in every runtime.
/// </summary>
public static class Quantize
{
    /// <summary>True when <see cref="FromFloat32"/> can produce <paramref name="type"/>.</summary>
    public static bool IsSupported(GgmlType type) => type is
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0 or
        GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

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
            case GgmlType.Q6_K: ToQ6_K(source, destination); break;
            default: ToAffineK(type, source, destination); break; // Q4_K, Q5_K
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

    /// <summary>
    /// Q4_K and Q5_K: each sub-block of 32 gets an affine fit x ≈ s·q − m (q in 0..15 or 0..31, m ≥ 0) refined by
    /// least squares; the eight scales and mins then become 6-bit multiples of the super-block's fp16 d and dmin
    /// (the largest of each over 63), and every quant is chosen again against the scale and min the file will hold.
    /// </summary>
    private static void ToAffineK(GgmlType type, ReadOnlySpan<float> source, Span<byte> destination)
    {
        int maxQuant = KQuantBlock.MaxQuant(type), blockBytes = GgmlTypeTraits.Of(type).BlockBytes;
        var block = new KQuantBlock();
        Span<float> scales = stackalloc float[8], mins = stackalloc float[8];
        for (int b = 0; b < source.Length / KQuantBlock.Values; b++)
        {
            var x = source.Slice(b * KQuantBlock.Values, KQuantBlock.Values);
            float largestScale = 0, largestMin = 0;
            for (int j = 0; j < 8; j++)
            {
                FitAffine(x.Slice(32 * j, 32), maxQuant, out scales[j], out mins[j]);
                largestScale = MathF.Max(largestScale, scales[j]);
                largestMin = MathF.Max(largestMin, mins[j]);
            }
            block.D = BitConverter.HalfToUInt16Bits((Half)(largestScale / 63));
            block.DMin = BitConverter.HalfToUInt16Bits((Half)(largestMin / 63));
            float d = (float)BitConverter.UInt16BitsToHalf(block.D), dMin = (float)BitConverter.UInt16BitsToHalf(block.DMin);
            for (int j = 0; j < 8; j++)
            {
                block.Scales[j] = d > 0 ? Math.Clamp((int)MathF.Round(scales[j] / d), 0, 63) : 0;
                block.Mins[j] = dMin > 0 ? Math.Clamp((int)MathF.Round(mins[j] / dMin), 0, 63) : 0;
                float step = d * block.Scales[j], offset = dMin * block.Mins[j];
                for (int i = 0; i < 32; i++)
                    block.Quants[32 * j + i] = step > 0 ? (byte)Math.Clamp((int)MathF.Round((x[32 * j + i] + offset) / step), 0, maxQuant) : (byte)0;
            }
            block.Write(type, destination.Slice(b * blockBytes, blockBytes));
        }
    }

    /// <summary>x ≈ scale·q − min with q in 0..<paramref name="maxQuant"/> and min ≥ 0: the range's fit, then a few least-squares rounds.</summary>
    private static void FitAffine(ReadOnlySpan<float> x, int maxQuant, out float scale, out float min)
    {
        float low = MathF.Min(0, TensorPrimitives.Min(x)), high = TensorPrimitives.Max(x);
        if (high <= low)
        {
            scale = 0;
            min = -low;
            return;
        }
        float offset = low; // x ≈ scale·q + offset, offset ≤ 0
        scale = (high - low) / maxQuant;
        for (int round = 0; round < 4; round++)
        {
            double sumQ = 0, sumQQ = 0, sumX = 0, sumQX = 0;
            foreach (float value in x)
            {
                int q = Math.Clamp((int)MathF.Round((value - offset) / scale), 0, maxQuant);
                sumQ += q;
                sumQQ += q * q;
                sumX += value;
                sumQX += q * value;
            }
            double n = x.Length, determinant = n * sumQQ - sumQ * sumQ;
            if (determinant <= 0) break;
            double fittedScale = (n * sumQX - sumQ * sumX) / determinant;
            double fittedOffset = (sumX - fittedScale * sumQ) / n;
            if (fittedOffset > 0) // the format's min only subtracts: refit the scale alone
            {
                fittedOffset = 0;
                fittedScale = sumQX / sumQQ;
            }
            if (!(fittedScale > 0)) break;
            scale = (float)fittedScale;
            offset = (float)fittedOffset;
        }
        min = -offset;
    }

    /// <summary>
    /// Q6_K: each sub-block of 16 gets a symmetric fit x ≈ s·l (l in −32..31, its value of largest magnitude at −32),
    /// the best of a few nearby scales by least squares; the sixteen scales then become int8 multiples of the
    /// super-block's fp16 d, and every quant is chosen again against them.
    /// </summary>
    private static void ToQ6_K(ReadOnlySpan<float> source, Span<byte> destination)
    {
        const int BlockBytes = 210;
        var block = new KQuantBlock();
        Span<float> scales = stackalloc float[16];
        for (int b = 0; b < source.Length / KQuantBlock.Values; b++)
        {
            var x = source.Slice(b * KQuantBlock.Values, KQuantBlock.Values);
            float extreme = 0;
            for (int j = 0; j < 16; j++)
            {
                scales[j] = FitSymmetric(x.Slice(16 * j, 16));
                if (MathF.Abs(scales[j]) > MathF.Abs(extreme)) extreme = scales[j];
            }
            block.D = BitConverter.HalfToUInt16Bits((Half)(extreme / -128));
            float d = (float)BitConverter.UInt16BitsToHalf(block.D);
            for (int j = 0; j < 16; j++)
            {
                block.Scales[j] = d != 0 ? Math.Clamp((int)MathF.Round(scales[j] / d), -128, 127) : 0;
                float step = d * block.Scales[j];
                for (int i = 0; i < 16; i++)
                    block.Quants[16 * j + i] = (byte)(32 + (step != 0 ? Math.Clamp((int)MathF.Round(x[16 * j + i] / step), -32, 31) : 0));
            }
            block.Write(GgmlType.Q6_K, destination.Slice(b * BlockBytes, BlockBytes));
        }
    }

    /// <summary>The scale s of x ≈ s·l, l in −32..31: candidates near "the extreme value at −32", each refit by least squares; the best kept.</summary>
    private static float FitSymmetric(ReadOnlySpan<float> x)
    {
        float extreme = 0;
        foreach (float value in x)
            if (MathF.Abs(value) > MathF.Abs(extreme)) extreme = value;
        if (extreme == 0) return 0;
        float best = 0;
        double bestError = double.MaxValue;
        for (int step = -4; step <= 4; step++)
        {
            float inverse = -(32 + 0.25f * step) / extreme;
            double sumLX = 0, sumLL = 0, sumXX = 0;
            foreach (float value in x)
            {
                int l = Math.Clamp((int)MathF.Round(value * inverse), -32, 31);
                sumLX += l * value;
                sumLL += l * l;
                sumXX += value * value;
            }
            if (sumLL == 0) continue;
            double error = sumXX - sumLX * sumLX / sumLL;
            if (error < bestError)
            {
                bestError = error;
                best = (float)(sumLX / sumLL);
            }
        }
        return best;
    }
}
