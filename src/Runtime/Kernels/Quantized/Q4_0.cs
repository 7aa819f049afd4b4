using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.Quantized;

/// <summary>
/// GGML Q4_0: blocks of 32 elements, each an fp16 scale d followed by 16 bytes of nibbles: byte j holds element
/// j in its low nibble and element j + 16 in its high one; value = d·(q − 8).
/// Dots against <see cref="Q8Row"/> activations. The SIMD paths feed the nibbles 0..15 straight to the
/// unsigned side of the int8 dot (no sign trick needed) and take the offset off per pair of products with a
/// second, shared multiply of the same activations: Σ(q − 8)·a = Σq·a − Σ8·a, exact in integers.
/// </summary>
public readonly struct Q4_0 : IQuantizedFormat
{
    private const int Bytes = 2 + 16;

    /// <inheritdoc/>
    public static int BlockElements => Blocks.Size;

    /// <inheritdoc/>
    public static int BlockBytes => Bytes;

    /// <inheritdoc/>
    public static int RowBytes(int k) => Blocks.Count(k) * Bytes;

    /// <summary>
    /// ggml's <c>quantize_row_q4_0_ref</c>, bit for bit: d = m / −8 where m is the first element of largest
    /// magnitude, with its sign (so m itself lands exactly on q = 0), stored as fp16; q = min(15, trunc(x/d + 8.5)).
    /// </summary>
    public static void QuantizeRow(ReadOnlySpan<float> source, Span<byte> destination)
    {
        int blocks = Blocks.Count(source.Length, nameof(source));
        Blocks.CheckLength(destination.Length, blocks * Bytes, nameof(destination), "The destination row");
        for (int block = 0; block < blocks; block++)
        {
            var x = source.Slice(block * Blocks.Size, Blocks.Size);
            var bytes = destination.Slice(block * Bytes, Bytes);
            float absMax = 0, extreme = 0;
            foreach (float value in x)
            {
                if (absMax < MathF.Abs(value))
                {
                    absMax = MathF.Abs(value);
                    extreme = value;
                }
            }
            float scale = extreme / -8f;
            float inverse = scale != 0 ? 1f / scale : 0f;
            BinaryPrimitives.WriteUInt16LittleEndian(bytes, Fp16.FromSingle(scale));
            for (int j = 0; j < Blocks.Size / 2; j++)
            {
                int low = Math.Min(15, (int)(x[j] * inverse + 8.5f));
                int high = Math.Min(15, (int)(x[j + Blocks.Size / 2] * inverse + 8.5f));
                bytes[2 + j] = (byte)(low | high << 4);
            }
        }
    }

    /// <summary>ggml's <c>dequantize_row_q4_0</c>: y = (q − 8)·d.</summary>
    public static void DequantizeRow(ReadOnlySpan<byte> source, Span<float> destination)
    {
        int blocks = Blocks.Count(destination.Length, nameof(destination));
        Blocks.CheckLength(source.Length, blocks * Bytes, nameof(source), "The source row");
        for (int block = 0; block < blocks; block++)
        {
            var bytes = source.Slice(block * Bytes, Bytes);
            float scale = (float)BinaryPrimitives.ReadHalfLittleEndian(bytes);
            var y = destination.Slice(block * Blocks.Size, Blocks.Size);
            for (int j = 0; j < Blocks.Size / 2; j++)
            {
                y[j] = ((bytes[2 + j] & 0x0F) - 8) * scale;
                y[j + Blocks.Size / 2] = ((bytes[2 + j] >> 4) - 8) * scale;
            }
        }
    }

    /// <summary>The dot of a Q4_0 row with quantized activations on the active path.</summary>
    public static float Dot(ReadOnlySpan<byte> row, Q8Row activations) => Dot(row, activations, KernelPaths.Active);

    /// <inheritdoc/>
    public static float Dot(ReadOnlySpan<byte> row, Q8Row activations, KernelPath path)
    {
        int blocks = Blocks.Count(activations.K, nameof(activations));
        Blocks.CheckLength(row.Length, blocks * Bytes, nameof(row), "The weight row");
        return path switch
        {
            KernelPath.Scalar => DotScalar(row, activations),
            KernelPath.Avx2 when KernelPaths.IsSupported(path) => Dot256<MaddubsDot>(row, activations),
            KernelPath.AvxVnni when KernelPaths.IsSupported(path) => Dot256<VnniDot>(row, activations),
            KernelPath.Avx512BW when KernelPaths.IsSupported(path) => DotAvx512(row, activations),
            _ => throw KernelPaths.Unsupported(path),
        };
    }

    // The oracle: the definition, one element at a time.
    private static float DotScalar(ReadOnlySpan<byte> row, Q8Row x)
    {
        float sum = 0;
        for (int block = 0; block < x.Scales.Length; block++)
        {
            var bytes = row.Slice(block * Bytes, Bytes);
            var activations = x.Quants.Slice(block * Blocks.Size, Blocks.Size);
            int dot = 0;
            for (int j = 0; j < Blocks.Size / 2; j++)
            {
                dot += ((bytes[2 + j] & 0x0F) - 8) * activations[j];
                dot += ((bytes[2 + j] >> 4) - 8) * activations[j + Blocks.Size / 2];
            }
            sum += (float)BinaryPrimitives.ReadHalfLittleEndian(bytes) * x.Scales[block] * dot;
        }
        return sum;
    }

    // Four blocks per iteration: two per 512-bit vector, two vectors in flight so the FMA chains overlap; the
    // last 0..3 blocks take the 256-bit step.
    private static unsafe float DotAvx512(ReadOnlySpan<byte> row, Q8Row x)
    {
        int blocks = x.Scales.Length;
        fixed (byte* w = row)
        fixed (sbyte* a = x.Quants)
        fixed (float* activationScales = x.Scales)
        {
            Vector512<float> sum0 = Vector512<float>.Zero, sum1 = Vector512<float>.Zero;
            int block = 0;
            for (; block + 4 <= blocks; block += 4)
            {
                byte* weights = w + block * Bytes;
                sbyte* activations = a + block * Blocks.Size;
                Vector512<float> scales = Scales.CombineFour(weights, Bytes, activationScales + block);
                sum0 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(TwoBlocks(weights, activations)),
                    Avx512F.PermuteVar16x32(scales, Scales.FirstPair), sum0);
                sum1 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(TwoBlocks(weights + 2 * Bytes, activations + 2 * Blocks.Size)),
                    Avx512F.PermuteVar16x32(scales, Scales.SecondPair), sum1);
            }
            Vector256<float> tail = Vector256<float>.Zero;
            for (; block < blocks; block++)
                tail = OneBlock<MaddubsDot>(tail, w + block * Bytes, a + block * Blocks.Size, activationScales[block]);
            return Vector512.Sum(sum0 + sum1) + Vector256.Sum(tail);
        }
    }

    // Σ(q − 8)·a for two consecutive blocks, 8 int32 lanes each.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector512<int> TwoBlocks(byte* w, sbyte* a)
    {
        Vector512<byte> quants = Int8.UnpackNibbles(Vector128.Load(w + 2), Vector128.Load(w + Bytes + 2));
        Vector512<sbyte> activations = Vector512.Load(a);
        return Int8.DotMinusEight(quants, activations, Int8.PrepareMinusEight(activations));
    }

    private static unsafe float Dot256<TDot>(ReadOnlySpan<byte> row, Q8Row x) where TDot : IInt8Dot256
    {
        int blocks = x.Scales.Length;
        fixed (byte* w = row)
        fixed (sbyte* a = x.Quants)
        fixed (float* scales = x.Scales)
        {
            Vector256<float> sum0 = Vector256<float>.Zero, sum1 = Vector256<float>.Zero;
            int block = 0;
            for (; block + 2 <= blocks; block += 2)
            {
                sum0 = OneBlock<TDot>(sum0, w + block * Bytes, a + block * Blocks.Size, scales[block]);
                sum1 = OneBlock<TDot>(sum1, w + (block + 1) * Bytes, a + (block + 1) * Blocks.Size, scales[block + 1]);
            }
            if (block < blocks)
                sum0 = OneBlock<TDot>(sum0, w + block * Bytes, a + block * Blocks.Size, scales[block]);
            return Vector256.Sum(sum0 + sum1);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<float> OneBlock<TDot>(Vector256<float> sum, byte* w, sbyte* a, float activationScale)
        where TDot : IInt8Dot256
    {
        Vector256<sbyte> activations = Vector256.Load(a);
        Vector256<int> dot = TDot.DotMinusEight(Int8.UnpackNibbles(Vector128.Load(w + 2)), activations, TDot.PrepareMinusEight(activations));
        var scale = Vector256.Create(Fp16.ToSingle(*(ushort*)w) * activationScale);
        return Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dot), scale, sum);
    }
}
