using Kiln.Kernels.Quantized;

namespace Kiln.Runtime.Tests.Kernels.Quantized;

/// <summary>Deterministic inputs and the float64 references the kernel tests compare against.</summary>
internal static class QuantTestData
{
    public static readonly int[] Ks = [32, 64, 96, 256, 4096];
    public static readonly int[] RowCounts = [1, 3, 4, 5, 17];
    public static readonly int[] TokenCounts = [1, 2, 3, 5, 8];

    /// <summary>
    /// Roughly normal values with per-block magnitudes spread over four decades, one all-zero block (scale 0) and
    /// an outlier now and then — the cases a quantizer gets wrong.
    /// </summary>
    public static float[] Matrix(int rows, int columns, int seed)
    {
        var random = new Random(seed);
        var values = new float[rows * columns];
        for (int start = 0; start < values.Length; start += 32)
        {
            int length = Math.Min(32, values.Length - start);
            int kind = random.Next(16);
            float magnitude = MathF.Pow(10, (float)random.NextDouble() * 4 - 3);
            for (int i = start; i < start + length; i++)
            {
                double u1 = 1 - random.NextDouble(), u2 = random.NextDouble();
                float normal = (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
                values[i] = kind == 0 ? 0 : normal * magnitude;
            }
            if (kind == 1) values[start + random.Next(length)] *= 40; // outlier
        }
        return values;
    }

    /// <summary>Rows of <paramref name="values"/> ([rows, k]) encoded in <typeparamref name="TFormat"/>, back to back.</summary>
    public static byte[] Encode<TFormat>(float[] values, int rows, int k) where TFormat : IWeightFormat
    {
        int rowBytes = TFormat.RowBytes(k);
        var encoded = new byte[rows * rowBytes];
        for (int r = 0; r < rows; r++) TFormat.QuantizeRow(values.AsSpan(r * k, k), encoded.AsSpan(r * rowBytes, rowBytes));
        return encoded;
    }

    /// <summary>The float32 values the encoded rows stand for.</summary>
    public static float[] Decode<TFormat>(byte[] encoded, int rows, int k) where TFormat : IWeightFormat
    {
        int rowBytes = TFormat.RowBytes(k);
        var values = new float[rows * k];
        for (int r = 0; r < rows; r++) TFormat.DequantizeRow(encoded.AsSpan(r * rowBytes, rowBytes), values.AsSpan(r * k, k));
        return values;
    }

    /// <summary>The float values the quantized activations stand for: d·q, in float64.</summary>
    public static double[] Decode(Q8Activations activations)
    {
        var values = new double[activations.Tokens * activations.K];
        for (int i = 0; i < values.Length; i++)
            values[i] = activations.Scales[i / 32] * (double)activations.Quants[i];
        return values;
    }

    /// <summary>y[t, r] = Σ w[r, i]·x[t, i] in float64.</summary>
    public static double[] Reference(float[] weights, double[] x, int rows, int tokens, int k)
    {
        var y = new double[tokens * rows];
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < rows; r++)
            {
                double sum = 0;
                for (int i = 0; i < k; i++) sum += weights[r * k + i] * x[t * k + i];
                y[t * rows + r] = sum;
            }
        return y;
    }

    /// <summary>ggml test-backend-ops' measure: Σ(actual − expected)² / Σ expected².</summary>
    public static double NormalizedError(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected)
    {
        double error = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            error += (actual[i] - expected[i]) * (actual[i] - expected[i]);
            norm += expected[i] * expected[i];
        }
        return norm == 0 ? error : error / norm;
    }

    public static double NormalizedError(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        var widened = new double[expected.Length];
        for (int i = 0; i < widened.Length; i++) widened[i] = expected[i];
        return NormalizedError(actual, widened);
    }
}
