using System.Buffers.Binary;
using System.Text;
using Kiln.Loading;
using static Kiln.Runtime.Tests.Loading.LoadingTestFiles;

namespace Kiln.Runtime.Tests.Loading;

/// <summary>
/// Malformed GGUF files: each must fail with a ModelLoadException naming the file, the field and a byte offset —
/// never an IndexOutOfRange, AccessViolation, Overflow or OutOfMemory.
/// </summary>
public sealed class GgufCorruptionTests : IDisposable
{
    private readonly ScratchDirectory _scratch = new();
    private readonly byte[] _valid = BuildValidFile();

    public void Dispose() => _scratch.Dispose();

    /// <summary>
    /// A small file with every part present: metadata #0 string, #1 uint32, #2 string array, #3 bool; tensors
    /// "tok_w" (Q8_0 [32, 2], padded) and "norm_w" (F32 [8], exactly 32 bytes, so the file ends with its data).
    /// </summary>
    private static byte[] BuildValidFile() =>
        Write(new GgufWriter()
            .AddMetadata("general.architecture", "llama")
            .AddMetadata("llama.block_count", 1u)
            .AddMetadata("tokenizer.ggml.tokens", new[] { "<unk>", "hello" })
            .AddMetadata("test.flag", true)
            .AddTensor("tok_w", GgmlType.Q8_0, Ramp(64), 32, 2)
            .AddTensor("norm_w", GgmlType.F32, Ramp(8), 8));

    private static float[] Ramp(int count)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = i * 0.25f - 3;
        return values;
    }

    /// <summary>Byte position of the first occurrence of an ASCII string (a key or tensor name) in the file.</summary>
    private int Find(string text)
    {
        int at = _valid.AsSpan().IndexOf(Encoding.ASCII.GetBytes(text));
        Assert.True(at >= 0, text);
        return at;
    }

    private ModelLoadException Corrupt(Action<byte[]> change, string expectedFieldPart)
    {
        byte[] bytes = (byte[])_valid.Clone();
        change(bytes);
        var error = AssertLoadFails(_scratch.Write($"corrupt-{Guid.NewGuid():N}.gguf", bytes));
        Assert.Contains(expectedFieldPart, error.Field);
        return error;
    }

    private static void PutUInt32(byte[] bytes, int at, uint value) => BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(at), value);

    private static void PutUInt64(byte[] bytes, int at, ulong value) => BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(at), value);

    [Fact]
    public void The_valid_file_loads()
    {
        using var file = new GgufFile(_scratch.Write("valid.gguf", _valid));
        Assert.Equal(2, file.Tensors.Count);
        Assert.Equal(Ramp(8), file.LoadTensor("norm_w").Data);
        Assert.Equal(_valid.Length, file.Tensors["norm_w"].Offset + file.Tensors["norm_w"].ByteLength);
    }

    [Fact]
    public void Version_2_reads_like_version_3()
    {
        byte[] bytes = (byte[])_valid.Clone();
        PutUInt32(bytes, 4, 2);

        using var file = new GgufFile(_scratch.Write("v2.gguf", bytes));

        Assert.Equal(2u, file.Version);
        Assert.Equal(Ramp(8), file.LoadTensor("norm_w").Data);
    }

    [Fact]
    public void Every_truncation_is_reported()
    {
        // Every cut in the header and directory, then a stride through the data.
        var cuts = new List<int>();
        for (int cut = 0; cut < _valid.Length; cut += cut < 400 ? 1 : 7) cuts.Add(cut);
        cuts.Add(_valid.Length - 1);
        foreach (int cut in cuts)
        {
            string path = _scratch.Write($"cut-{cut}.gguf", _valid[..cut]);
            var error = Assert.Throws<ModelLoadException>(() => new GgufFile(path).Dispose());
            Assert.Contains(Path.GetFileName(path), error.Message);
            Assert.Contains("byte", error.Message);
        }
    }

    [Fact]
    public void Bad_magic() =>
        Assert.Equal(0, Corrupt(bytes => bytes[0] = (byte)'X', "magic").Offset);

    [Theory]
    [InlineData(1u, "version 1")]
    [InlineData(4u, "version 4")]
    [InlineData(0x03000000u, "big-endian")]
    public void Bad_version(uint version, string expectedMessage)
    {
        var error = Corrupt(bytes => PutUInt32(bytes, 4, version), "version");
        Assert.Equal(4, error.Offset);
        Assert.Contains(expectedMessage, error.Message);
    }

    [Fact]
    public void Huge_tensor_count() =>
        Assert.Equal(8, Corrupt(bytes => PutUInt64(bytes, 8, 1UL << 62), "tensor count").Offset);

    [Fact]
    public void Huge_metadata_count() =>
        Assert.Equal(16, Corrupt(bytes => PutUInt64(bytes, 16, ulong.MaxValue), "metadata count").Offset);

    [Fact]
    public void Huge_key_length()
    {
        int name = Find("llama.block_count");
        var error = Corrupt(bytes => PutUInt64(bytes, name - 8, 1UL << 60), "metadata key #1 name length");
        Assert.Equal(name - 8, error.Offset);
    }

    [Fact]
    public void Huge_string_value_length()
    {
        int value = Find("general.architecture") + "general.architecture".Length + 4;
        var error = Corrupt(bytes => PutUInt64(bytes, value, ulong.MaxValue - 3), "metadata key #0 'general.architecture' string length");
        Assert.Equal(value, error.Offset);
    }

    [Fact]
    public void Huge_array_count()
    {
        int count = Find("tokenizer.ggml.tokens") + "tokenizer.ggml.tokens".Length + 4 + 4;
        var error = Corrupt(bytes => PutUInt64(bytes, count, 1UL << 61), "'tokenizer.ggml.tokens' array count");
        Assert.Equal(count, error.Offset);
    }

    [Fact]
    public void Huge_array_element_string_length()
    {
        int firstElement = Find("tokenizer.ggml.tokens") + "tokenizer.ggml.tokens".Length + 4 + 4 + 8;
        Corrupt(bytes => PutUInt64(bytes, firstElement + 8 + 5, 1UL << 40), "element #1 string length");
    }

    [Fact]
    public void Unknown_value_type()
    {
        int type = Find("llama.block_count") + "llama.block_count".Length;
        Assert.Equal(type, Corrupt(bytes => PutUInt32(bytes, type, 13), "'llama.block_count' value type").Offset);
    }

    [Fact]
    public void Unknown_array_element_type()
    {
        int elementType = Find("tokenizer.ggml.tokens") + "tokenizer.ggml.tokens".Length + 4;
        Corrupt(bytes => PutUInt32(bytes, elementType, 99), "array element type");
    }

    [Fact]
    public void A_bool_that_is_not_0_or_1()
    {
        int value = Find("test.flag") + "test.flag".Length + 4;
        Corrupt(bytes => bytes[value] = 2, "'test.flag'");
    }

    [Fact]
    public void Duplicate_key()
    {
        // Two keys of equal length, the second renamed onto the first.
        byte[] bytes = Write(new GgufWriter().AddMetadata("a.b", 1).AddMetadata("a.c", 2));
        int second = bytes.AsSpan().IndexOf("a.c"u8);
        bytes[second + 2] = (byte)'b';

        var error = AssertLoadFails(_scratch.Write("duplicate-key.gguf", bytes));
        Assert.Equal("metadata key #1 'a.b'", error.Field);
        Assert.Equal(second - 8, error.Offset);
    }

    [Fact]
    public void Duplicate_tensor_name()
    {
        byte[] bytes = Write(new GgufWriter().AddTensor("t1", GgmlType.F32, new float[8], 8).AddTensor("t2", GgmlType.F32, new float[8], 8));
        bytes[bytes.AsSpan().IndexOf("t2"u8) + 1] = (byte)'1';

        var error = AssertLoadFails(_scratch.Write("duplicate-tensor.gguf", bytes));
        Assert.Equal("tensor #1 't1' name", error.Field);
    }

    private static byte[] Write(GgufWriter writer)
    {
        var stream = new MemoryStream();
        writer.Write(stream);
        return stream.ToArray();
    }

    [Theory]
    [InlineData(7u)]
    [InlineData(5u)]
    [InlineData(uint.MaxValue)]
    public void Too_many_dimensions(uint rank)
    {
        int nDims = Find("tok_w") + 5;
        var error = Corrupt(bytes => PutUInt32(bytes, nDims, rank), "tensor 'tok_w' n_dims");
        Assert.Equal(nDims, error.Offset);
    }

    [Theory]
    [InlineData(4u)]    // Q4_2, removed
    [InlineData(77u)]
    [InlineData(uint.MaxValue)]
    public void Unknown_type_id(uint typeId)
    {
        int type = Find("norm_w") + 6 + 4 + 8;
        var error = Corrupt(bytes => PutUInt32(bytes, type, typeId), "tensor 'norm_w' type");
        Assert.Equal(type, error.Offset);
        Assert.Contains(typeId.ToString(), error.Message);
    }

    [Fact]
    public void Rows_that_are_not_whole_blocks()
    {
        int firstDimension = Find("tok_w") + 5 + 4;
        Corrupt(bytes => { PutUInt64(bytes, firstDimension, 16); PutUInt64(bytes, firstDimension + 8, 4); }, "tensor 'tok_w' dimension 0");
    }

    [Fact]
    public void Tensor_offset_out_of_file()
    {
        int offset = Find("norm_w") + 6 + 4 + 8 + 4;
        var error = Corrupt(bytes => PutUInt64(bytes, offset, 1 << 20), "tensor 'norm_w' offset");
        Assert.Equal(offset, error.Offset);
        Corrupt(bytes => PutUInt64(bytes, offset, ulong.MaxValue - 31), "tensor 'norm_w' offset");
    }

    [Fact]
    public void Tensor_data_running_past_the_end()
    {
        // Doubling norm_w's extent keeps the offset valid but needs 32 bytes the file does not have.
        int extent = Find("norm_w") + 6 + 4;
        Corrupt(bytes => PutUInt64(bytes, extent, 16), "tensor 'norm_w' offset");
    }

    [Fact]
    public void Misaligned_offset()
    {
        int offset = Find("norm_w") + 6 + 4 + 8 + 4;
        var error = Corrupt(bytes => PutUInt64(bytes, offset, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(offset)) + 4), "tensor 'norm_w' offset");
        Assert.Contains("alignment", error.Message);
    }

    [Theory]
    [InlineData(1UL << 40, 1UL << 40)]           // product overflows 64 bits
    [InlineData(ulong.MaxValue, 1UL)]            // negative as int64
    [InlineData(1UL << 40, 1UL)]                 // fits 64 bits, not the file
    public void Dimensions_that_overflow_or_exceed_the_file(ulong first, ulong second)
    {
        int firstDimension = Find("tok_w") + 5 + 4;
        var error = Corrupt(bytes => { PutUInt64(bytes, firstDimension, first); PutUInt64(bytes, firstDimension + 8, second); }, "tensor 'tok_w'");
        Assert.NotNull(error.Offset);
    }

    [Theory]
    [InlineData(48u)]
    [InlineData(0u)]
    public void Bad_alignment(uint alignment)
    {
        byte[] bytes = Write(new GgufWriter(alignment: 64).AddTensor("t", GgmlType.F32, new float[16], 16));
        int value = bytes.AsSpan().IndexOf("general.alignment"u8) + "general.alignment".Length + 4;
        PutUInt32(bytes, value, alignment);
        var error = AssertLoadFails(_scratch.Write($"alignment-{alignment}.gguf", bytes));
        Assert.Contains("general.alignment", error.Field);
    }

    [Fact]
    public void Deeply_nested_arrays_are_refused_without_exhausting_the_stack()
    {
        // key "k" holding array-of-array-of-... 100 deep, each of one element.
        var stream = new MemoryStream();
        var writer = new BinaryWriter(stream);
        writer.Write("GGUF"u8);
        writer.Write(3u);
        writer.Write(0UL);
        writer.Write(1UL);
        writer.Write(1UL);
        writer.Write((byte)'k');
        writer.Write(9u);
        for (int i = 0; i < 100; i++)
        {
            writer.Write(9u);
            writer.Write(1UL);
        }
        writer.Flush();
        var error = AssertLoadFails(_scratch.Write("nested.gguf", stream.ToArray()));
        Assert.Contains("nest", error.Message);
    }

    [Fact]
    public void Random_byte_flips_only_ever_raise_ModelLoadException()
    {
        var random = new Random(20240611);
        int headerLength = Find("norm_w") + 6 + 4 + 8 + 4 + 8;
        string path = _scratch.PathOf("fuzz.gguf");
        int loaded = 0;
        for (int round = 0; round < 300; round++)
        {
            byte[] bytes = (byte[])_valid.Clone();
            int flips = random.Next(1, 4);
            for (int f = 0; f < flips; f++)
            {
                // Mostly the header and directory, where the parsing is; sometimes anywhere.
                int at = random.Next(4) == 0 ? random.Next(bytes.Length) : random.Next(headerLength);
                bytes[at] = random.Next(3) switch
                {
                    0 => (byte)(bytes[at] ^ (1 << random.Next(8))),
                    1 => 0xFF,
                    _ => (byte)random.Next(256),
                };
            }
            if (random.Next(10) == 0) bytes = bytes[..random.Next(bytes.Length)];
            File.WriteAllBytes(path, bytes);

            try
            {
                using var file = ModelFile.Open(path);
                foreach (string name in file.Tensors.Keys) file.LoadTensor(name);
                loaded++;
            }
            catch (ModelLoadException error)
            {
                Assert.Contains("fuzz.gguf", error.Message);
            }
        }
        Assert.InRange(loaded, 1, 299); // some flips are harmless (data bytes), most are not
    }
}
