using Kiln.Kernels.Quantized;
using static Kiln.Runtime.Tests.Kernels.Quantized.QuantTestData;

namespace Kiln.Runtime.Tests.Kernels.Quantized;

/// <summary>Block layouts, quantize and dequantize: hand-made blocks worked out from ggml's reference code, and round-trip error bounds.</summary>
public sealed class FormatTests
{
    [Fact]
    public void TraitsDescribeTheGgmlBlockLayouts()
    {
        Assert.Equal((32, 34), (Q8_0.BlockElements, Q8_0.BlockBytes));
        Assert.Equal((32, 18), (Q4_0.BlockElements, Q4_0.BlockBytes));
        Assert.Equal((1, 2), (BF16.BlockElements, BF16.BlockBytes));
        Assert.Equal((1, 4), (F32.BlockElements, F32.BlockBytes));
        Assert.Equal(4096 / 32 * 34, Q8_0.RowBytes(4096));
        Assert.Equal(96 / 32 * 18, Q4_0.RowBytes(96));
    }

    [Fact]
    public void Q8_0QuantizesAHandMadeBlockWithHalvesAwayFromZero()
    {
        var x = new float[32];
        (x[0], x[1], x[2], x[3], x[4]) = (127f, -63.5f, 0.5f, -0.5f, 2.5f); // max|x| = 127, so d = 1 exactly
        var block = new byte[34];
        Q8_0.QuantizeRow(x, block);

        var expected = new byte[34];
        (expected[0], expected[1]) = (0x00, 0x3C); // fp16 1.0, little-endian
        (expected[2], expected[3], expected[4], expected[5], expected[6]) = (127, unchecked((byte)-64), 1, 0xFF, 3);
        Assert.Equal(expected, block);

        var decoded = new float[32];
        Q8_0.DequantizeRow(block, decoded);
        Assert.Equal([127f, -64f, 1f, -1f, 3f], decoded[..5]);
        Assert.All(decoded[5..], value => Assert.Equal(0f, value));
    }

    [Fact]
    public void Q4_0TakesItsScaleFromTheFirstExtremeWithItsSign()
    {
        var x = new float[32];
        (x[0], x[20]) = (-8f, 8f);                 // same magnitude: the first one sets d = −8 / −8 = 1
        (x[1], x[2], x[3], x[17]) = (3.49f, -0.5f, 0.5f, -3f);
        var block = new byte[18];
        Q4_0.QuantizeRow(x, block);

        // q = min(15, trunc(x + 8.5)): x0 → 0, x1 → 11, x2 → 8, x3 → 9, x17 → 5, x20 → 16 clamped to 15, zeros → 8.
        // Byte j packs element j (low nibble) with element j + 16 (high nibble).
        byte[] expected = [0x00, 0x3C, 0x80, 0x5B, 0x88, 0x89, 0xF8, .. Enumerable.Repeat((byte)0x88, 11)];
        Assert.Equal(expected, block);

        var decoded = new float[32];
        Q4_0.DequantizeRow(block, decoded);
        Assert.Equal([-8f, 3f, 0f, 1f], decoded[..4]);
        Assert.Equal(-3f, decoded[17]);
        Assert.Equal(7f, decoded[20]); // the clamp: the opposite extreme loses one step
    }

    [Fact]
    public void Q4_0WithAPositiveExtremeGetsANegativeScale()
    {
        var x = new float[32];
        (x[5], x[6]) = (8f, -8f);
        var block = new byte[18];
        Q4_0.QuantizeRow(x, block);
        Assert.Equal((byte)0xBC, block[1]); // fp16 −1.0
        var decoded = new float[32];
        Q4_0.DequantizeRow(block, decoded);
        Assert.Equal((8f, -7f), (decoded[5], decoded[6]));
    }

    [Fact]
    public void AllZeroBlocksGetScaleZero()
    {
        var zeros = new float[64];
        var q8 = new byte[68];
        Q8_0.QuantizeRow(zeros, q8);
        Assert.All(q8, b => Assert.Equal(0, b));

        var q4 = new byte[36];
        Q4_0.QuantizeRow(zeros, q4);
        Assert.Equal((0x00, 0x80), (q4[0], q4[1])); // d = 0 / −8 = −0.0, as ggml writes it
        Assert.All(q4.AsSpan(2, 16).ToArray(), b => Assert.Equal(0x88, b)); // q = 8 stands for 0

        var decoded = new float[64];
        Q4_0.DequantizeRow(q4, decoded);
        Assert.All(decoded, value => Assert.Equal(0f, value));
    }

    [Fact]
    public void Q8_0RoundTripErrorIsHalfAStepPlusTheScaleRounding()
    {
        const int k = 4096;
        var x = Matrix(4, k, seed: 11);
        var decoded = Decode<Q8_0>(Encode<Q8_0>(x, 4, k), 4, k);
        for (int block = 0; block < x.Length / 32; block++)
        {
            var values = x.AsSpan(block * 32, 32);
            float d = MaxMagnitude(values) / 127f;
            double scaleError = Math.Abs(d - (float)(Half)d);
            for (int i = 0; i < 32; i++)
                Assert.True(Math.Abs(values[i] - decoded[block * 32 + i]) <= d / 2 + 127 * scaleError + 1e-12,
                    $"block {block}, element {i}: {values[i]} came back as {decoded[block * 32 + i]} (d = {d})");
        }
        Assert.True(NormalizedError(decoded, x) < 1e-4, $"NMSE {NormalizedError(decoded, x)}");
    }

    [Fact]
    public void Q4_0RoundTripErrorIsAtMostOneStep()
    {
        const int k = 4096;
        var x = Matrix(4, k, seed: 12);
        var decoded = Decode<Q4_0>(Encode<Q4_0>(x, 4, k), 4, k);
        for (int block = 0; block < x.Length / 32; block++)
        {
            var values = x.AsSpan(block * 32, 32);
            float d = MaxMagnitude(values) / 8f;
            double scaleError = Math.Abs(d - (float)(Half)d);
            for (int i = 0; i < 32; i++)
                Assert.True(Math.Abs(values[i] - decoded[block * 32 + i]) <= d * (1 + 1e-6) + 8 * scaleError + 1e-12,
                    $"block {block}, element {i}: {values[i]} came back as {decoded[block * 32 + i]} (|d| = {d})");
        }
        Assert.True(NormalizedError(decoded, x) < 0.02, $"NMSE {NormalizedError(decoded, x)}");
    }

    [Fact]
    public void FloatFormatsRoundTrip()
    {
        var x = Matrix(1, 100, seed: 13);
        Assert.Equal(x, Decode<F32>(Encode<F32>(x, 1, 100), 1, 100));
        var bf16 = Decode<BF16>(Encode<BF16>(x, 1, 100), 1, 100);
        for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - bf16[i]) <= Math.Abs(x[i]) * (1.0 / 256));
    }

    [Fact]
    public void BF16RoundsToNearestEvenAndKeepsNaN()
    {
        Assert.Equal(0x3F80, BF16.FromSingle(1f));
        Assert.Equal(0x3F80, BF16.FromSingle(BitConverter.UInt32BitsToSingle(0x3F80_8000))); // tie → even
        Assert.Equal(0x3F82, BF16.FromSingle(BitConverter.UInt32BitsToSingle(0x3F81_8000))); // tie → even
        Assert.Equal(0x3F81, BF16.FromSingle(BitConverter.UInt32BitsToSingle(0x3F80_8001)));
        Assert.True(float.IsNaN(BF16.ToSingle(BF16.FromSingle(float.NaN))));
        Assert.Equal(-2.5f, BF16.ToSingle(BF16.FromSingle(-2.5f)));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(16)]
    [InlineData(33)]
    [InlineData(100)]
    public void KNotAMultipleOf32IsRejected(int k)
    {
        Assert.Throws<ArgumentException>(() => Q8_0.RowBytes(k));
        Assert.Throws<ArgumentException>(() => Q4_0.RowBytes(k));
        Assert.Throws<ArgumentException>(() => Q8_0.QuantizeRow(new float[k], new byte[64]));
        Assert.Throws<ArgumentException>(() => Q4_0.QuantizeRow(new float[k], new byte[64]));
        Assert.Throws<ArgumentException>(() => Q4_0.DequantizeRow(new byte[64], new float[k]));
        Assert.Throws<ArgumentException>(() => Q8Activations.ScratchBytes(1, k));
        Assert.Throws<ArgumentException>(() => { Q8Activations.Quantize(new float[k], 1, k, new byte[1024]); });
        Assert.Throws<ArgumentException>(() => Q8_0x4.GroupBytes(k));
        Assert.Throws<ArgumentException>(() => Q4_0x4.GroupBytes(k));
    }

    [Fact]
    public void RowsOfTheWrongLengthAreRejected()
    {
        Assert.Throws<ArgumentException>(() => Q8_0.QuantizeRow(new float[64], new byte[67]));
        Assert.Throws<ArgumentException>(() => Q4_0.DequantizeRow(new byte[35], new float[64]));
        var scratch = new byte[Q8Activations.ScratchBytes(1, 64)];
        Assert.Throws<ArgumentException>(() => Q8_0.Dot(new byte[34], Q8Activations.Quantize(new float[64], 1, 64, scratch)[0], KernelPath.Scalar));
        Assert.Throws<ArgumentException>(() => F32.Dot(new float[3], new float[4], KernelPath.Scalar));
    }

    private static float MaxMagnitude(ReadOnlySpan<float> values)
    {
        float max = 0;
        foreach (float value in values) max = MathF.Max(max, MathF.Abs(value));
        return max;
    }
}
