using Kiln.Loading;

namespace Kiln.Runtime.Tests.Loading;

public sealed class GgufWriterTests : IDisposable
{
    private readonly ScratchDirectory _scratch = new();

    public void Dispose() => _scratch.Dispose();

    [Fact]
    public void Every_metadata_value_type_round_trips_with_its_clr_type()
    {
        object[] values =
        [
            (byte)200, (sbyte)-100, (ushort)60000, (short)-30000, 4_000_000_000u, -2_000_000_000,
            9_000_000_000_000_000_000ul, -9_000_000_000_000_000_000L, 1.5f, -2.25, true, false, "héllo ▁world", "",
            new byte[] { 1, 2, 255 }, new sbyte[] { -1, 2 }, new ushort[] { 65535 }, new short[] { -2, 3 },
            new uint[] { 7, 8 }, new int[] { -9, 10 }, new ulong[] { ulong.MaxValue }, new long[] { long.MinValue },
            new float[] { 0.5f, float.NegativeInfinity }, new double[] { Math.PI }, new bool[] { true, false, true },
            new string[] { "a", "", "ünïcode" }, Array.Empty<int>(), Array.Empty<string>(),
            new object[] { new int[] { 1, 2 }, new string[] { "x" }, new object[] { new float[] { 3f } } },
        ];
        var writer = new GgufWriter();
        for (int i = 0; i < values.Length; i++) writer.AddMetadata($"test.value_{i}", values[i]);
        string path = _scratch.PathOf("metadata.gguf");
        writer.Write(path);

        using var file = new GgufFile(path);

        Assert.Equal(values.Length, file.Metadata.Count);
        Assert.Empty(file.Tensors);
        for (int i = 0; i < values.Length; i++)
        {
            object read = file.Metadata[$"test.value_{i}"].Value;
            Assert.Equal(values[i].GetType(), read.GetType());
            Assert.Equal(values[i], read);
        }
    }

    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_0)]
    public void Tensors_round_trip_through_each_stored_type(GgmlType type)
    {
        var random = new Random(1234);
        var values = new float[64 * 3];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(random.NextDouble() * 4 - 2);
        values[5] = 0;
        string path = _scratch.PathOf($"{type}.gguf");
        new GgufWriter()
            .AddMetadata("general.architecture", "test")
            .AddTensor("weights", type, values, 64, 3)
            .AddTensor("bias", GgmlType.F32, [1f, 2f, 3f], 3)
            .Write(path);

        using var file = ModelFile.Open(path);

        Assert.Equal("test", file.Architecture);
        var info = file.Tensors["weights"];
        Assert.Equal(type, info.Type);
        Assert.Equal([64L, 3L], info.Dimensions);
        Assert.Equal(GgmlTypeTraits.Of(type).ByteCount(values.Length), info.ByteLength);
        var tensor = file.LoadTensor("weights");
        Assert.Equal([3, 64], tensor.Shape);
        Assert.Equal([1f, 2f, 3f], file.LoadTensor("bias").Data);

        for (int i = 0; i < values.Length; i++)
        {
            float expected = values[i], actual = tensor.Data[i];
            switch (type)
            {
                case GgmlType.F32: Assert.Equal(expected, actual); break;
                case GgmlType.F16: Assert.Equal((float)(Half)expected, actual); break;
                case GgmlType.BF16: Assert.Equal(expected, actual, Math.Abs(expected) / 256); break;
                // A block's error is at most about half a step (d = max|x|/127, or max|x|/8 for 4 bits, where the
                // clamp at 15 can cost a whole step), plus the fp16 rounding of d.
                case GgmlType.Q8_0: Assert.Equal(expected, actual, BlockMax(values, i) / 127 * 0.6f); break;
                case GgmlType.Q4_0: Assert.Equal(expected, actual, BlockMax(values, i) / 8 * 1.01f); break;
            }
        }
    }

    [Fact]
    public void Tensor_data_is_aligned_to_the_chosen_alignment()
    {
        string path = _scratch.PathOf("aligned.gguf");
        new GgufWriter(alignment: 64)
            .AddTensor("a", GgmlType.F32, new float[3], 3)
            .AddTensor("b", GgmlType.Q8_0, new float[32], 32)
            .AddTensor("c", GgmlType.F16, [1f, 2f, 3f, 4f, 5f], 5, 1)
            .Write(path);

        using var file = new GgufFile(path);

        Assert.Equal(64, file.Alignment);
        Assert.True(file.TryGetInt("general.alignment", out long alignment));
        Assert.Equal(64, alignment);
        Assert.Equal(0, file.DataOffset % 64);
        foreach (var tensor in file.Tensors.Values) Assert.Equal(0, tensor.Offset % 64);
        Assert.Equal(0, new FileInfo(path).Length % 64);
        Assert.Equal([1f, 2f, 3f, 4f, 5f], file.LoadTensor("c").Data);
    }

    [Fact]
    public void A_tensor_from_a_Tensor_keeps_its_row_major_shape()
    {
        var source = new Tensor([1, 2, 3, 4, 5, 6], 2, 3);
        string path = _scratch.PathOf("tensor.gguf");
        new GgufWriter().AddTensor("t", source).Write(path);

        using var file = new GgufFile(path);

        Assert.Equal([3L, 2L], file.Tensors["t"].Dimensions);
        var read = file.LoadTensor("t");
        Assert.Equal(source.Shape, read.Shape);
        Assert.Equal(source.Data, read.Data);
    }

    [Fact]
    public void Encoded_tensors_are_written_verbatim_and_unsupported_types_fail_to_load_typed()
    {
        var q4k = new byte[144];
        q4k[0] = 0x00; q4k[1] = 0x3C; // d = 1.0 (fp16)
        var iq4 = new byte[136];
        string path = _scratch.PathOf("encoded.gguf");
        new GgufWriter()
            .AddEncodedTensor("k4", GgmlType.Q4_K, q4k, 256)
            .AddEncodedTensor("iq4", GgmlType.IQ4_XS, iq4, 256)
            .Write(path);

        using var file = new GgufFile(path);

        Assert.True(file.GetTensorBytes(file.Tensors["k4"]).SequenceEqual(q4k));
        Assert.Equal(256, file.LoadTensor("k4").Data.Length);
        var error = Assert.Throws<ModelLoadException>(() => file.LoadTensor("iq4"));
        Assert.Contains("IQ4_XS", error.Message);
        Assert.Contains("'iq4'", error.Message);
    }

    [Fact]
    public void The_writer_refuses_what_llama_cpp_could_not_read()
    {
        var writer = new GgufWriter().AddMetadata("a.key", 1);
        Assert.Throws<ArgumentException>(() => writer.AddMetadata("a.key", 2));
        Assert.Throws<ArgumentException>(() => writer.AddMetadata("b.key", 'c'));
        Assert.Throws<ArgumentException>(() => writer.AddMetadata("b.key", new object[] { 1 }));
        Assert.Throws<ArgumentException>(() => writer.AddMetadata("b.key", new string?[] { null }));
        Assert.Throws<ArgumentException>(() => writer.AddMetadata("general.alignment", 64u));
        Assert.Throws<ArgumentException>(() => writer.AddTensor("q", GgmlType.Q8_0, new float[48], 48));       // rows not whole blocks
        Assert.Throws<ArgumentException>(() => writer.AddTensor("q", GgmlType.F32, new float[6], 2, 2));       // 4 ≠ 6 values
        Assert.Throws<ArgumentException>(() => writer.AddTensor("q", GgmlType.Q2_K, new float[256], 256));     // no encoder
        Assert.Throws<ArgumentException>(() => writer.AddTensor(new string('x', 64), GgmlType.F32, new float[1], 1));
        Assert.Throws<ArgumentException>(() => writer.AddTensor("q", GgmlType.F32, new float[1], 1, 1, 1, 1, 1));
        writer.AddTensor("q", GgmlType.F32, new float[4], 2, 2);
        Assert.Throws<ArgumentException>(() => writer.AddTensor("q", GgmlType.F32, new float[4], 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => new GgufWriter(alignment: 48));
    }

    private static float BlockMax(float[] values, int index)
    {
        int start = index / 32 * 32;
        float max = 0;
        for (int i = start; i < start + 32; i++) max = Math.Max(max, Math.Abs(values[i]));
        return max;
    }
}
