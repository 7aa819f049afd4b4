using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.Quantized;

/// <summary>
/// GGML Q8_0: blocks of 32 elements, each an fp16 scale d followed by 32 int8 quants; value = d·q.
/// Dots against <see cref="Q8Row"/> activations: Σ_blocks d_w·d_a·Σ q_w·q_a, the inner sum exact in int32.
/// </summary>
public readonly struct Q8_0 : IQuantizedFormat
{
    private const int Bytes = 2 + 32;

    /// <inheritdoc/>
    public static int BlockElements => Blocks.Size;

    /// <inheritdoc/>
    public static int BlockBytes => Bytes;

    /// <inheritdoc/>
    public static int RowBytes(int k) => Blocks.Count(k) * Bytes;

    /// <summary>ggml's <c>quantize_row_q8_0_ref</c>, bit for bit: d = max|x|/127 stored as fp16, q = roundf(x/d) with the float32 d.</summary>
    public static void QuantizeRow(ReadOnlySpan<float> source, Span<byte> destination)
    {
        int blocks = Blocks.Count(source.Length, nameof(source));
        Blocks.CheckLength(destination.Length, blocks * Bytes, nameof(destination), "The destination row");
        for (int block = 0; block < blocks; block++)
        {
            var x = source.Slice(block * Blocks.Size, Blocks.Size);
            var bytes = destination.Slice(block * Bytes, Bytes);
            float absMax = 0;
            foreach (float value in x) absMax = MathF.Max(absMax, MathF.Abs(value));
            float scale = absMax / 127f;
            float inverse = scale != 0 ? 1f / scale : 0f;
            BinaryPrimitives.WriteUInt16LittleEndian(bytes, Fp16.FromSingle(scale));
            for (int i = 0; i < Blocks.Size; i++)
                bytes[2 + i] = (byte)(sbyte)MathF.Round(x[i] * inverse, MidpointRounding.AwayFromZero);
        }
    }

    /// <summary>ggml's <c>dequantize_row_q8_0</c>: y = q·d.</summary>
    public static void DequantizeRow(ReadOnlySpan<byte> source, Span<float> destination)
    {
        int blocks = Blocks.Count(destination.Length, nameof(destination));
        Blocks.CheckLength(source.Length, blocks * Bytes, nameof(source), "The source row");
        for (int block = 0; block < blocks; block++)
        {
            var bytes = source.Slice(block * Bytes, Bytes);
            float scale = (float)BinaryPrimitives.ReadHalfLittleEndian(bytes);
            var quants = MemoryMarshal.Cast<byte, sbyte>(bytes[2..]);
            for (int i = 0; i < Blocks.Size; i++) destination[block * Blocks.Size + i] = quants[i] * scale;
        }
    }

    /// <summary>The dot of a Q8_0 row with quantized activations on the active path.</summary>
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
            var weights = MemoryMarshal.Cast<byte, sbyte>(bytes[2..]);
            var activations = x.Quants.Slice(block * Blocks.Size, Blocks.Size);
            int dot = 0;
            for (int i = 0; i < Blocks.Size; i++) dot += weights[i] * activations[i];
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

    // Σ w·a for two consecutive blocks, 8 int32 lanes each, as |w|·(a·sign w).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector512<int> TwoBlocks(byte* w, sbyte* a)
    {
        Vector512<sbyte> weights = Vector512.Create(Vector256.Load((sbyte*)w + 2), Vector256.Load((sbyte*)w + Bytes + 2));
        return Int8.Dot(Avx512BW.Abs(weights), Int8.ApplySign(Vector512.Load(a), weights));
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
        Vector256<sbyte> weights = Vector256.Load((sbyte*)w + 2);
        Vector256<int> dot = TDot.Dot(Avx2.Abs(weights), Avx2.Sign(Vector256.Load(a), weights));
        var scale = Vector256.Create(Fp16.ToSingle(*(ushort*)w) * activationScale);
        return Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dot), scale, sum);
    }
}
