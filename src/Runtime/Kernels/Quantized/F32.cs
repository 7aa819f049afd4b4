using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Kiln.Kernels.Quantized;

/// <summary>Plain float32 weights: one element per "block". The dot is FMA over four independent accumulators.</summary>
public readonly struct F32 : IFloatFormat
{
    /// <inheritdoc/>
    public static int BlockElements => 1;

    /// <inheritdoc/>
    public static int BlockBytes => sizeof(float);

    /// <inheritdoc/>
    public static int RowBytes(int k)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(k);
        return checked(k * sizeof(float));
    }

    /// <inheritdoc/>
    public static void QuantizeRow(ReadOnlySpan<float> source, Span<byte> destination)
    {
        Blocks.CheckLength(destination.Length, RowBytes(source.Length), nameof(destination), "The destination row");
        MemoryMarshal.AsBytes(source).CopyTo(destination);
    }

    /// <inheritdoc/>
    public static void DequantizeRow(ReadOnlySpan<byte> source, Span<float> destination)
    {
        Blocks.CheckLength(source.Length, RowBytes(destination.Length), nameof(source), "The source row");
        source.CopyTo(MemoryMarshal.AsBytes(destination));
    }

    /// <inheritdoc/>
    public static float Dot(ReadOnlySpan<byte> row, ReadOnlySpan<float> activations, KernelPath path) =>
        Dot(MemoryMarshal.Cast<byte, float>(row), activations, path);

    /// <summary>Σ row[i]·x[i] on the active path.</summary>
    public static float Dot(ReadOnlySpan<float> row, ReadOnlySpan<float> activations) => Dot(row, activations, KernelPaths.Active);

    /// <summary>Σ row[i]·x[i] on <paramref name="path"/>.</summary>
    public static float Dot(ReadOnlySpan<float> row, ReadOnlySpan<float> activations, KernelPath path)
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

    private static float DotScalar(ReadOnlySpan<float> row, ReadOnlySpan<float> x)
    {
        float sum = 0;
        for (int i = 0; i < x.Length; i++) sum += row[i] * x[i];
        return sum;
    }

    private static unsafe float Dot512(ReadOnlySpan<float> row, ReadOnlySpan<float> x)
    {
        fixed (float* w = row)
        fixed (float* a = x)
        {
            int k = x.Length, i = 0;
            Vector512<float> sum0 = default, sum1 = default, sum2 = default, sum3 = default;
            for (; i + 64 <= k; i += 64)
            {
                sum0 = Vector512.FusedMultiplyAdd(Vector512.Load(w + i), Vector512.Load(a + i), sum0);
                sum1 = Vector512.FusedMultiplyAdd(Vector512.Load(w + i + 16), Vector512.Load(a + i + 16), sum1);
                sum2 = Vector512.FusedMultiplyAdd(Vector512.Load(w + i + 32), Vector512.Load(a + i + 32), sum2);
                sum3 = Vector512.FusedMultiplyAdd(Vector512.Load(w + i + 48), Vector512.Load(a + i + 48), sum3);
            }
            for (; i + 16 <= k; i += 16)
                sum0 = Vector512.FusedMultiplyAdd(Vector512.Load(w + i), Vector512.Load(a + i), sum0);
            float sum = Vector512.Sum((sum0 + sum1) + (sum2 + sum3));
            for (; i < k; i++) sum = MathF.FusedMultiplyAdd(w[i], a[i], sum);
            return sum;
        }
    }

    private static unsafe float Dot256(ReadOnlySpan<float> row, ReadOnlySpan<float> x)
    {
        fixed (float* w = row)
        fixed (float* a = x)
        {
            int k = x.Length, i = 0;
            Vector256<float> sum0 = default, sum1 = default, sum2 = default, sum3 = default;
            for (; i + 32 <= k; i += 32)
            {
                sum0 = Vector256.FusedMultiplyAdd(Vector256.Load(w + i), Vector256.Load(a + i), sum0);
                sum1 = Vector256.FusedMultiplyAdd(Vector256.Load(w + i + 8), Vector256.Load(a + i + 8), sum1);
                sum2 = Vector256.FusedMultiplyAdd(Vector256.Load(w + i + 16), Vector256.Load(a + i + 16), sum2);
                sum3 = Vector256.FusedMultiplyAdd(Vector256.Load(w + i + 24), Vector256.Load(a + i + 24), sum3);
            }
            for (; i + 8 <= k; i += 8)
                sum0 = Vector256.FusedMultiplyAdd(Vector256.Load(w + i), Vector256.Load(a + i), sum0);
            float sum = Vector256.Sum((sum0 + sum1) + (sum2 + sum3));
            for (; i < k; i++) sum = MathF.FusedMultiplyAdd(w[i], a[i], sum);
            return sum;
        }
    }
}
