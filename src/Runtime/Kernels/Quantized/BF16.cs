using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Kiln.Kernels.Quantized;

/// <summary>
/// bfloat16 weights (the top half of a float32; stored as raw bits): one element per "block". The dot widens
/// each value with a 16-bit shift, which is exact, and accumulates with FMA.
/// </summary>
public readonly struct BF16 : IFloatFormat
{
    /// <inheritdoc/>
    public static int BlockElements => 1;

    /// <inheritdoc/>
    public static int BlockBytes => sizeof(ushort);

    /// <inheritdoc/>
    public static int RowBytes(int k)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(k);
        return checked(k * sizeof(ushort));
    }

    /// <summary>float32 → bfloat16 bits, ties to even; a NaN stays a quiet NaN (ggml's <c>GGML_FP32_TO_BF16</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromSingle(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)(bits >> 16 | 0x40);
        return (ushort)((bits + 0x7FFF + (bits >> 16 & 1)) >> 16);
    }

    /// <summary>bfloat16 bits → float32, exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <inheritdoc/>
    public static void QuantizeRow(ReadOnlySpan<float> source, Span<byte> destination)
    {
        Blocks.CheckLength(destination.Length, RowBytes(source.Length), nameof(destination), "The destination row");
        var output = MemoryMarshal.Cast<byte, ushort>(destination);
        for (int i = 0; i < source.Length; i++) output[i] = FromSingle(source[i]);
    }

    /// <inheritdoc/>
    public static void DequantizeRow(ReadOnlySpan<byte> source, Span<float> destination)
    {
        Blocks.CheckLength(source.Length, RowBytes(destination.Length), nameof(source), "The source row");
        var input = MemoryMarshal.Cast<byte, ushort>(source);
        for (int i = 0; i < destination.Length; i++) destination[i] = ToSingle(input[i]);
    }

    /// <inheritdoc/>
    public static float Dot(ReadOnlySpan<byte> row, ReadOnlySpan<float> activations, KernelPath path) =>
        Dot(MemoryMarshal.Cast<byte, ushort>(row), activations, path);

    /// <summary>Σ row[i]·x[i], row as bfloat16 bits, on the active path.</summary>
    public static float Dot(ReadOnlySpan<ushort> row, ReadOnlySpan<float> activations) => Dot(row, activations, KernelPaths.Active);

    /// <summary>Σ row[i]·x[i], row as bfloat16 bits, on <paramref name="path"/>.</summary>
    public static float Dot(ReadOnlySpan<ushort> row, ReadOnlySpan<float> activations, KernelPath path)
    {
        ArgumentOutOfRangeException.ThrowIfZero(activations.Length, nameof(activations));
        Blocks.CheckLength(row.Length, activations.Length, nameof(row), "The weight row");
        return path switch
        {
            KernelPath.Scalar => DotScalar(row, activations),
            KernelPath.Avx2 or KernelPath.AvxVnni when KernelPaths.IsSupported(path) => Dot256(row, activations),
            KernelPath.Avx512BW when KernelPaths.IsSupported(path) => Dot512(row, activations),
            _ => throw KernelPaths.Unsupported(path),
        };
    }

    private static float DotScalar(ReadOnlySpan<ushort> row, ReadOnlySpan<float> x)
    {
        float sum = 0;
        for (int i = 0; i < x.Length; i++) sum += ToSingle(row[i]) * x[i];
        return sum;
    }

    private static unsafe float Dot512(ReadOnlySpan<ushort> row, ReadOnlySpan<float> x)
    {
        fixed (ushort* w = row)
        fixed (float* a = x)
        {
            int k = x.Length, i = 0;
            Vector512<float> sum0 = default, sum1 = default, sum2 = default, sum3 = default;
            for (; i + 64 <= k; i += 64)
            {
                Vector512<ushort> low = Vector512.Load(w + i), high = Vector512.Load(w + i + 32);
                sum0 = Vector512.FusedMultiplyAdd(Widen(Vector512.WidenLower(low)), Vector512.Load(a + i), sum0);
                sum1 = Vector512.FusedMultiplyAdd(Widen(Vector512.WidenUpper(low)), Vector512.Load(a + i + 16), sum1);
                sum2 = Vector512.FusedMultiplyAdd(Widen(Vector512.WidenLower(high)), Vector512.Load(a + i + 32), sum2);
                sum3 = Vector512.FusedMultiplyAdd(Widen(Vector512.WidenUpper(high)), Vector512.Load(a + i + 48), sum3);
            }
            for (; i + 16 <= k; i += 16)
                sum0 = Vector512.FusedMultiplyAdd(Widen(Vector512.WidenLower(Vector256.Load(w + i).ToVector512Unsafe())), Vector512.Load(a + i), sum0);
            float sum = Vector512.Sum((sum0 + sum1) + (sum2 + sum3));
            for (; i < k; i++) sum = MathF.FusedMultiplyAdd(ToSingle(w[i]), a[i], sum);
            return sum;
        }
    }

    private static unsafe float Dot256(ReadOnlySpan<ushort> row, ReadOnlySpan<float> x)
    {
        fixed (ushort* w = row)
        fixed (float* a = x)
        {
            int k = x.Length, i = 0;
            Vector256<float> sum0 = default, sum1 = default, sum2 = default, sum3 = default;
            for (; i + 32 <= k; i += 32)
            {
                Vector256<ushort> low = Vector256.Load(w + i), high = Vector256.Load(w + i + 16);
                sum0 = Vector256.FusedMultiplyAdd(Widen(Vector256.WidenLower(low)), Vector256.Load(a + i), sum0);
                sum1 = Vector256.FusedMultiplyAdd(Widen(Vector256.WidenUpper(low)), Vector256.Load(a + i + 8), sum1);
                sum2 = Vector256.FusedMultiplyAdd(Widen(Vector256.WidenLower(high)), Vector256.Load(a + i + 16), sum2);
                sum3 = Vector256.FusedMultiplyAdd(Widen(Vector256.WidenUpper(high)), Vector256.Load(a + i + 24), sum3);
            }
            for (; i + 8 <= k; i += 8)
                sum0 = Vector256.FusedMultiplyAdd(Widen(Vector256.WidenLower(Vector128.Load(w + i).ToVector256Unsafe())), Vector256.Load(a + i), sum0);
            float sum = Vector256.Sum((sum0 + sum1) + (sum2 + sum3));
            for (; i < k; i++) sum = MathF.FusedMultiplyAdd(ToSingle(w[i]), a[i], sum);
            return sum;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Widen(Vector512<uint> bits) => (bits << 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Widen(Vector256<uint> bits) => (bits << 16).AsSingle();
}
