using System.Buffers.Binary;
using Kiln.Loading;

namespace Kiln.Runtime.Tests.Loading;

public sealed class QuantizationTests
{
    [Theory]
    [InlineData(GgmlType.F32, 1, 4)]
    [InlineData(GgmlType.F16, 1, 2)]
    [InlineData(GgmlType.BF16, 1, 2)]
    [InlineData(GgmlType.Q4_0, 32, 18)]
    [InlineData(GgmlType.Q4_1, 32, 20)]
    [InlineData(GgmlType.Q5_0, 32, 22)]
    [InlineData(GgmlType.Q8_0, 32, 34)]
    [InlineData(GgmlType.Q2_K, 256, 84)]
    [InlineData(GgmlType.Q3_K, 256, 110)]
    [InlineData(GgmlType.Q4_K, 256, 144)]
    [InlineData(GgmlType.Q5_K, 256, 176)]
    [InlineData(GgmlType.Q6_K, 256, 210)]
    [InlineData(GgmlType.Q8_K, 256, 292)]
    [InlineData(GgmlType.IQ4_XS, 256, 136)]
    public void The_traits_table_has_ggml_block_layouts(GgmlType type, int blockElements, int blockBytes)
    {
        var traits = GgmlTypeTraits.Of(type);
        Assert.Equal((type, blockElements, blockBytes), (traits.Type, traits.BlockElements, traits.BlockBytes));
        Assert.Equal(3L * blockBytes, traits.ByteCount(3L * blockElements));
    }

    [Theory]
    [InlineData(4u)]   // Q4_2, removed from GGML
    [InlineData(31u)]
    [InlineData(1000u)]
    public void Unknown_type_ids_have_no_traits(uint id)
    {
        Assert.False(GgmlTypeTraits.TryGet((GgmlType)id, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => GgmlTypeTraits.Of((GgmlType)id));
    }

    [Fact]
    public void Q8_0_dequantizes_a_hand_built_block()
    {
        var block = new byte[34];
        BinaryPrimitives.WriteHalfLittleEndian(block, (Half)0.5f);
        for (int i = 0; i < 32; i++) block[2 + i] = (byte)(sbyte)(i * 8 - 128); // -128, -120, ..., 120

        var values = new float[32];
        Dequantize.ToFloat32(GgmlType.Q8_0, block, values);

        for (int i = 0; i < 32; i++) Assert.Equal((i * 8 - 128) * 0.5f, values[i]);
    }

    [Fact]
    public void Q5_0_and_Q5_1_take_each_fifth_bit_from_the_32_bit_field()
    {
        // Element j (of 32) holds q = j: low nibble in byte j mod 16 (low half first), fifth bit in bit j of the field.
        var q5_0 = new byte[22];
        var q5_1 = new byte[24];
        BinaryPrimitives.WriteHalfLittleEndian(q5_0, (Half)0.5f);
        BinaryPrimitives.WriteHalfLittleEndian(q5_1, (Half)0.25f);
        BinaryPrimitives.WriteHalfLittleEndian(q5_1.AsSpan(2), (Half)(-2f));
        uint high = 0;
        for (int j = 0; j < 32; j++) if ((j & 16) != 0) high |= 1u << j;
        BinaryPrimitives.WriteUInt32LittleEndian(q5_0.AsSpan(2), high);
        BinaryPrimitives.WriteUInt32LittleEndian(q5_1.AsSpan(4), high);
        for (int j = 0; j < 16; j++)
        {
            q5_0[6 + j] = (byte)(j | ((j + 16) & 15) << 4);
            q5_1[8 + j] = (byte)(j | ((j + 16) & 15) << 4);
        }

        var values = new float[32];
        Dequantize.ToFloat32(GgmlType.Q5_0, q5_0, values);
        for (int j = 0; j < 32; j++) Assert.Equal((j - 16) * 0.5f, values[j]);
        Dequantize.ToFloat32(GgmlType.Q5_1, q5_1, values);
        for (int j = 0; j < 32; j++) Assert.Equal(j * 0.25f - 2f, values[j]);
    }

    [Fact]
    public void Q5_K_takes_each_fifth_bit_from_the_bit_of_its_sub_block()
    {
        // Every sub-block j has scale j + 1, min 0, and its value l holds q = l (0..31).
        var block = new byte[176];
        BinaryPrimitives.WriteHalfLittleEndian(block, (Half)1f);
        for (int j = 0; j < 4; j++) block[4 + j] = (byte)(j + 1);                       // scales 1-4
        for (int j = 4; j < 8; j++) block[4 + j + 4] = (byte)((j + 1) & 0x0F);          // scales 5-8, low bits
        for (int l = 0; l < 32; l++)
        {
            if ((l & 16) != 0) block[16 + l] = 0xFF;                                     // every sub-block's fifth bit
            for (int c = 0; c < 4; c++) block[48 + 32 * c + l] = (byte)((l & 15) | (l & 15) << 4);
        }

        var values = new float[256];
        Dequantize.ToFloat32(GgmlType.Q5_K, block, values);
        for (int i = 0; i < 256; i++) Assert.Equal((i / 32 + 1) * (float)(i % 32), values[i]);
    }

    [Fact]
    public void Q4_0_dequantizes_low_nibbles_first_then_high_nibbles()
    {
        var block = new byte[18];
        BinaryPrimitives.WriteHalfLittleEndian(block, (Half)0.25f);
        for (int j = 0; j < 16; j++) block[2 + j] = (byte)(j | (15 - j) << 4);

        var values = new float[32];
        Dequantize.ToFloat32(GgmlType.Q4_0, block, values);

        for (int j = 0; j < 16; j++)
        {
            Assert.Equal((j - 8) * 0.25f, values[j]);             // element j: low nibble of byte j
            Assert.Equal((15 - j - 8) * 0.25f, values[j + 16]);   // element j+16: high nibble of byte j
        }
    }

    [Fact]
    public void Q4_K_dequantizes_a_hand_built_super_block()
    {
        // Eight sub-blocks of 32 with 6-bit scales and mins; values above 15 exercise the packed top bits.
        int[] scales = [1, 63, 17, 5, 33, 48, 2, 60];
        int[] mins = [0, 7, 62, 31, 16, 1, 45, 3];
        const float D = 0.5f, DMin = 0.25f;
        var quants = new int[256];
        for (int i = 0; i < 256; i++) quants[i] = (i * 7 + i / 32) % 16;

        var block = new byte[144];
        BinaryPrimitives.WriteHalfLittleEndian(block, (Half)D);
        BinaryPrimitives.WriteHalfLittleEndian(block.AsSpan(2), (Half)DMin);
        var packedScales = block.AsSpan(4, 12);
        for (int j = 0; j < 4; j++)
        {
            packedScales[j] = (byte)(scales[j] | (scales[j + 4] >> 4) << 6);
            packedScales[j + 4] = (byte)(mins[j] | (mins[j + 4] >> 4) << 6);
            packedScales[j + 8] = (byte)((scales[j + 4] & 0xF) | (mins[j + 4] & 0xF) << 4);
        }
        for (int i = 0; i < 256; i++)
        {
            // Sub-blocks pair up on 32 bytes: the even one in the low nibbles, the odd one in the high.
            int subBlock = i / 32, index = 16 + 32 * (subBlock / 2) + i % 32;
            block[index] |= (byte)(subBlock % 2 == 0 ? quants[i] : quants[i] << 4);
        }

        var values = new float[256];
        Dequantize.ToFloat32(GgmlType.Q4_K, block, values);

        for (int i = 0; i < 256; i++)
            Assert.Equal(D * scales[i / 32] * quants[i] - DMin * mins[i / 32], values[i]);
    }

    [Fact]
    public void Q6_K_dequantizes_a_hand_built_super_block()
    {
        const float D = 0.125f;
        var scales = new sbyte[16];
        for (int g = 0; g < 16; g++) scales[g] = (sbyte)(g % 2 == 0 ? 3 * g + 1 : -5 * g);
        var quants = new int[256];
        for (int i = 0; i < 256; i++) quants[i] = (i * 37 + 11) % 64;

        var block = new byte[210];
        for (int i = 0; i < 256; i++)
        {
            // Each half of 128 values is four runs of 32 (k = 0..3): runs 0 and 1 take the low nibbles of
            // ql[0..32) and ql[32..64), runs 2 and 3 their high nibbles; qh[l] holds the 2 top bits of all four.
            int half = i / 128, k = i % 128 / 32, l = i % 32;
            int low = 64 * half + l + (k % 2 == 1 ? 32 : 0);
            block[low] |= (byte)(k < 2 ? quants[i] & 0xF : (quants[i] & 0xF) << 4);
            block[128 + 32 * half + l] |= (byte)((quants[i] >> 4) << (2 * k));
        }
        for (int g = 0; g < 16; g++) block[192 + g] = (byte)scales[g];
        BinaryPrimitives.WriteHalfLittleEndian(block.AsSpan(208), (Half)D);

        var values = new float[256];
        Dequantize.ToFloat32(GgmlType.Q6_K, block, values);

        for (int i = 0; i < 256; i++)
            Assert.Equal(D * scales[i / 16] * (quants[i] - 32), values[i]);
    }

    [Fact]
    public void BF16_is_the_top_half_of_a_float_rounded_to_nearest_even()
    {
        float[] inputs = [1f, -2.5f, 3.14159f, 1e-20f, 65504f, float.PositiveInfinity];
        var bytes = new byte[inputs.Length * 2];
        Quantize.FromFloat32(GgmlType.BF16, inputs, bytes);
        var decoded = new float[inputs.Length];
        Dequantize.ToFloat32(GgmlType.BF16, bytes, decoded);

        for (int i = 0; i < inputs.Length; i++)
        {
            uint bits = BitConverter.SingleToUInt32Bits(inputs[i]);
            uint rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000;
            Assert.Equal(BitConverter.UInt32BitsToSingle(rounded), decoded[i]);
        }
        Assert.True(float.IsNaN(BitConverter.UInt32BitsToSingle((uint)Quantize.ToBFloat16(float.NaN) << 16)));
    }

    [Fact]
    public void Q8_0_quantize_matches_the_reference_rounding()
    {
        var values = new float[64];
        for (int i = 0; i < values.Length; i++) values[i] = MathF.Sin(i * 0.7f) * (i < 32 ? 3f : 0.01f);
        var block = new byte[68];
        Quantize.FromFloat32(GgmlType.Q8_0, values, block);

        for (int b = 0; b < 2; b++)
        {
            float absMax = 0;
            for (int i = 0; i < 32; i++) absMax = Math.Max(absMax, Math.Abs(values[32 * b + i]));
            float d = absMax / 127, inverse = 1 / d;
            Assert.Equal((Half)d, BinaryPrimitives.ReadHalfLittleEndian(block.AsSpan(34 * b)));
            for (int i = 0; i < 32; i++)
                Assert.Equal((sbyte)MathF.Round(values[32 * b + i] * inverse, MidpointRounding.AwayFromZero), (sbyte)block[34 * b + 2 + i]);
        }
    }

    [Fact]
    public void Q4_0_quantize_maps_the_extreme_value_exactly()
    {
        var values = new float[32];
        for (int i = 0; i < 32; i++) values[i] = (i - 12) * 0.5f; // -6 .. 9.5: the extreme is +9.5
        var block = new byte[18];
        Quantize.FromFloat32(GgmlType.Q4_0, values, block);
        var decoded = new float[32];
        Dequantize.ToFloat32(GgmlType.Q4_0, block, decoded);

        Assert.Equal((Half)(9.5f / -8f), BinaryPrimitives.ReadHalfLittleEndian(block));
        Assert.Equal(0, block[2 + 15] >> 4); // element 31 (the extreme) stored as q = 0
        Assert.Equal(9.5f, decoded[31], 1e-3f);
        for (int i = 0; i < 32; i++) Assert.True(Math.Abs(values[i] - decoded[i]) <= 9.5f / 8 + 1e-3f, $"element {i}");
    }

    [Fact]
    public void Zero_blocks_quantize_to_zero()
    {
        var zeros = new float[32];
        foreach (var type in (GgmlType[])[GgmlType.Q8_0, GgmlType.Q4_0])
        {
            var bytes = new byte[GgmlTypeTraits.Of(type).BlockBytes];
            Quantize.FromFloat32(type, zeros, bytes);
            var decoded = new float[32];
            Dequantize.ToFloat32(type, bytes, decoded);
            Assert.All(decoded, value => Assert.Equal(0f, value));
        }
    }

    [Fact]
    public void Spans_that_do_not_fit_are_argument_errors()
    {
        Assert.Throws<ArgumentException>(() => Dequantize.ToFloat32(GgmlType.Q8_0, new byte[34], new float[31]));
        Assert.Throws<ArgumentException>(() => Dequantize.ToFloat32(GgmlType.Q8_0, new byte[33], new float[32]));
        Assert.Throws<ArgumentException>(() => Quantize.FromFloat32(GgmlType.Q4_0, new float[32], new byte[17]));
        Assert.Throws<NotSupportedException>(() => Dequantize.ToFloat32(GgmlType.IQ4_XS, new byte[136], new float[256]));
        Assert.Throws<NotSupportedException>(() => Quantize.FromFloat32(GgmlType.Q2_K, new float[256], new byte[84]));
    }
}
