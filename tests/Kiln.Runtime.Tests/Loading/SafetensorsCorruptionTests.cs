using System.Buffers.Binary;
using System.Text;
using Kiln.Loading;
using Kiln.Testing;

namespace Kiln.Runtime.Tests.Loading;

/// <summary>
/// Malformed Hugging Face checkpoints: each must fail with a ModelLoadException naming the file, the field (tensor or
/// key) and a byte offset — never a JsonException, IndexOutOfRange, Overflow or a silently wrong tensor.
/// </summary>
public sealed class SafetensorsCorruptionTests : IDisposable
{
    private const string Config = """{"architectures": ["LlamaForCausalLM"], "hidden_size": 4, "rope_scaling": null}""";

    private readonly ScratchDirectory _scratch = new();

    public void Dispose() => _scratch.Dispose();

    /// <summary>Three tensors of 16 bytes each: "a" F32 [2, 2], "b" F32 [4], "c" BF16 [2, 4].</summary>
    private static SafetensorsWriter ValidWriter() => new SafetensorsWriter()
        .Add("a", [1, 2, 3, 4], [2, 2])
        .Add("b", [5, 6, 7, 8], [4])
        .Add("c", [0.5f, -1, 2, -4, 8, 16, -32, 64], [2, 4], GgmlType.BF16);

    private static byte[] Data => ValidWriter().ToBytes()[(8 + HeaderLength(ValidWriter().ToBytes()))..];

    private static int HeaderLength(byte[] file) => (int)BinaryPrimitives.ReadUInt64LittleEndian(file);

    /// <summary>A checkpoint directory holding config.json and model.safetensors; returns the safetensors path.</summary>
    private string Checkpoint(byte[] safetensors, string config = Config)
    {
        string directory = Path.Combine(_scratch.Root, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, SafetensorsModel.ConfigFileName), config);
        string path = Path.Combine(directory, SafetensorsModel.SingleFileName);
        File.WriteAllBytes(path, safetensors);
        return path;
    }

    /// <summary>Opening the checkpoint fails on <paramref name="file"/>, with a field containing <paramref name="field"/>, at a byte offset.</summary>
    private static ModelLoadException Fails(string file, string field, string? open = null)
    {
        var error = Assert.Throws<ModelLoadException>(() => new SafetensorsModel(open ?? file).Dispose());
        Assert.Equal(Path.GetFullPath(file), Path.GetFullPath(error.FilePath));
        Assert.Contains(field, error.Field);
        Assert.NotNull(error.Offset);
        Assert.Contains(Path.GetFileName(file), error.Message);
        Assert.Contains("byte", error.Message);
        return error;
    }

    /// <summary>A header edited as text (then re-padded), over the valid data.</summary>
    private ModelLoadException HeaderFails(Func<string, string> edit, string field, byte[]? data = null)
    {
        string header = edit(ValidWriter().HeaderJson());
        return Fails(Checkpoint(SafetensorsWriter.Assemble(header, data ?? Data)), field);
    }

    private static long OffsetOf(string header, string text) => 8 + Encoding.UTF8.GetByteCount(header[..header.IndexOf(text, StringComparison.Ordinal)]);

    [Fact]
    public void The_valid_checkpoint_loads()
    {
        string path = Checkpoint(ValidWriter().ToBytes());
        using var model = new SafetensorsModel(Path.GetDirectoryName(path)!);
        Assert.Equal(ModelNaming.HuggingFace, model.Naming);
        Assert.Equal("llama", model.Architecture);
        Assert.Equal(3, model.Tensors.Count);
        Assert.Equal([1f, 2, 3, 4], model.LoadTensor("a").Data);
        Assert.Equal([2, 2], model.LoadTensor("a").Shape);
        Assert.Equal([0.5f, -1, 2, -4, 8, 16, -32, 64], model.LoadTensor("c").Data);
        Assert.Equal(new FileInfo(path).Length, model.Tensors["c"].Offset + model.Tensors["c"].ByteLength);
    }

    [Fact]
    public void Every_truncation_is_reported()
    {
        byte[] valid = ValidWriter().ToBytes();
        for (int cut = 0; cut < valid.Length; cut++)
        {
            string path = Checkpoint(valid[..cut]);
            var error = Assert.Throws<ModelLoadException>(() => new SafetensorsModel(path).Dispose());
            Assert.Equal(path, error.FilePath);
            Assert.NotNull(error.Offset);
        }
    }

    [Theory]
    [InlineData(0UL, "not a header length")]
    [InlineData(1UL << 40, "not a header length")]
    [InlineData(4096UL, "truncated")]
    public void Bad_header_length(ulong length, string expected)
    {
        byte[] bytes = ValidWriter().ToBytes();
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, length);
        var error = Fails(Checkpoint(bytes), "header length");
        Assert.Equal(0, error.Offset);
        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public void Malformed_json_is_located()
    {
        // A missing comma between two tensor entries: the reader stops at the second entry's name.
        string header = ValidWriter().HeaderJson();
        int at = header.IndexOf(",\"b\"", StringComparison.Ordinal);
        var error = HeaderFails(h => h.Remove(at, 1), "header");
        Assert.Equal(8 + at, error.Offset);
        Assert.Contains("malformed JSON", error.Message);
    }

    [Theory]
    [InlineData("[]", "header", "not a JSON object")]
    [InlineData("{\"a\": 3}", "tensor 'a'", "expected an object")]
    [InlineData("{} {}", "header", "malformed JSON")]
    public void Header_that_is_not_a_tensor_table(string header, string field, string expected)
    {
        var error = Fails(Checkpoint(SafetensorsWriter.Assemble(header, [])), field);
        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public void Offsets_past_the_end()
    {
        string header = ValidWriter().HeaderJson();
        var error = HeaderFails(h => h.Replace("[32,48]", "[40,56]"), "tensor 'c' data_offsets");
        Assert.Equal(OffsetOf(header, "[32,48]"), error.Offset);
        Assert.Contains("run past the end", error.Message);
    }

    [Fact]
    public void Overlapping_tensors()
    {
        string header = ValidWriter().HeaderJson();
        var error = HeaderFails(h => h.Replace("[16,32]", "[8,24]"), "tensor 'b' data_offsets");
        Assert.Equal(OffsetOf(header, "[16,32]"), error.Offset);
        Assert.Contains("overlap tensor 'a'", error.Message);
    }

    [Fact]
    public void A_gap_between_tensors()
    {
        // c moves 4 bytes later in a data section 4 bytes longer: a hole the format does not allow.
        var error = HeaderFails(h => h.Replace("[32,48]", "[36,52]"), "tensor 'c' data_offsets", [.. Data, 0, 0, 0, 0]);
        Assert.Contains("belong to no tensor", error.Message);
    }

    [Fact]
    public void Bytes_after_the_last_tensor()
    {
        byte[] bytes = [.. ValidWriter().ToBytes(), 1, 2, 3];
        var error = Fails(Checkpoint(bytes), "file length");
        Assert.Equal(bytes.Length - 3, error.Offset);
    }

    [Fact]
    public void Dtype_size_disagrees_with_the_byte_range()
    {
        // b's 4 elements in F16 are 8 bytes, not the 16 its data_offsets span.
        string header = ValidWriter().HeaderJson();
        var error = HeaderFails(h => h.Replace("\"b\":{\"dtype\":\"F32\"", "\"b\":{\"dtype\":\"F16\""), "tensor 'b' data_offsets");
        Assert.Equal(OffsetOf(header, "[16,32]"), error.Offset);
        Assert.Contains("F16", error.Message);
        Assert.Contains("8 bytes", error.Message);
    }

    [Fact]
    public void Duplicate_tensor_names()
    {
        string header = ValidWriter().HeaderJson().Replace("\"b\":", "\"a\":");
        var error = Fails(Checkpoint(SafetensorsWriter.Assemble(header, Data)), "'a'");
        Assert.Equal(OffsetOf(header, "\"a\":{\"dtype\":\"F32\",\"shape\":[4]"), error.Offset);
        Assert.Contains("twice", error.Message);
    }

    [Fact]
    public void Unknown_dtype()
    {
        string header = ValidWriter().HeaderJson();
        var error = HeaderFails(h => h.Replace("\"BF16\"", "\"Q4\""), "tensor 'c' dtype");
        Assert.Equal(OffsetOf(header, "\"BF16\""), error.Offset);
    }

    [Fact]
    public void Unsupported_dtype_names_the_tensor_and_dtype()
    {
        byte[] bytes = new SafetensorsWriter().Add("a", [1, 2], [2]).AddRaw("ids", "I64", new byte[16], 2).ToBytes();
        var error = Fails(Checkpoint(bytes), "tensor 'ids' dtype");
        Assert.Contains("I64", error.Message);
    }

    [Theory]
    [InlineData("\"shape\":[2,2]", "\"shape\":[2,-2]", "tensor 'a' shape")]
    [InlineData("\"shape\":[2,2]", "\"shape\":[2,2.0]", "tensor 'a' shape")]
    [InlineData("\"shape\":[2,2]", "\"shape\":[4611686018427387904,4]", "tensor 'a' shape")]
    [InlineData("\"shape\":[2,2],", "", "tensor 'a' shape")]
    [InlineData("\"data_offsets\":[0,16]", "\"data_offsets\":[16,0]", "tensor 'a' data_offsets")]
    [InlineData("\"data_offsets\":[0,16]", "\"data_offsets\":[0,16],\"extra\":1", "tensor 'a' extra")]
    [InlineData("{\"a\":", "{\"__metadata__\":{\"format\":3},\"a\":", "__metadata__ 'format'")]
    public void Malformed_entries(string find, string replace, string field) =>
        HeaderFails(h => h.Replace(find, replace), field);

    [Fact]
    public void Unknown_architecture_is_named_in_the_config()
    {
        const string config = """{"architectures": ["MambaForCausalLM"], "hidden_size": 4}""";
        string path = Checkpoint(ValidWriter().ToBytes(), config);
        string configPath = Path.Combine(Path.GetDirectoryName(path)!, SafetensorsModel.ConfigFileName);
        var error = Fails(configPath, "architectures", open: path);
        Assert.Equal(config.IndexOf("\"Mamba", StringComparison.Ordinal), error.Offset);
        Assert.Contains("MambaForCausalLM", error.Message);
    }

    [Theory]
    [InlineData("""{"hidden_size": 4}""", "architectures")]
    [InlineData("""{"architectures": []}""", "architectures")]
    [InlineData("""{"architectures": ["LlamaForCausalLM"], "hidden_size": 4,}""", "config")]
    [InlineData("""{"architectures": ["LlamaForCausalLM"], "a": 1, "a": 2}""", "config 'a'")]
    [InlineData("""["LlamaForCausalLM"]""", "config")]
    public void Malformed_configs(string config, string field)
    {
        string path = Checkpoint(ValidWriter().ToBytes(), config);
        Fails(Path.Combine(Path.GetDirectoryName(path)!, SafetensorsModel.ConfigFileName), field, open: path);
    }

    [Fact]
    public void Missing_config_names_the_file()
    {
        string path = Checkpoint(ValidWriter().ToBytes());
        File.Delete(Path.Combine(Path.GetDirectoryName(path)!, SafetensorsModel.ConfigFileName));
        var error = Assert.Throws<ModelLoadException>(() => new SafetensorsModel(path).Dispose());
        Assert.EndsWith(SafetensorsModel.ConfigFileName, error.FilePath);
        Assert.Contains("does not exist", error.Message);
    }

    [Fact]
    public void A_directory_without_weights()
    {
        string directory = Path.GetDirectoryName(Checkpoint([]))!;
        File.Delete(Path.Combine(directory, SafetensorsModel.SingleFileName));
        var error = Assert.Throws<ModelLoadException>(() => new SafetensorsModel(directory).Dispose());
        Assert.Equal("weights", error.Field);
    }

    /// <summary>A two-shard checkpoint: a and b in the first, c in the second; the index as given (or the true one).</summary>
    private string Sharded(Func<string, string>? editIndex = null)
    {
        string directory = Path.GetDirectoryName(Checkpoint([]))!;
        File.Delete(Path.Combine(directory, SafetensorsModel.SingleFileName));
        new SafetensorsWriter().Add("a", [1, 2, 3, 4], [2, 2]).Add("b", [5, 6, 7, 8], [4])
            .Write(Path.Combine(directory, "model-00001-of-00002.safetensors"));
        new SafetensorsWriter().Add("c", [1, 2], [2], GgmlType.F16).Write(Path.Combine(directory, "model-00002-of-00002.safetensors"));
        string index = """
            {"metadata": {"total_size": 36}, "weight_map": {
              "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}}
            """;
        File.WriteAllText(Path.Combine(directory, SafetensorsModel.IndexFileName), (editIndex ?? (i => i))(index));
        return directory;
    }

    [Fact]
    public void The_valid_shards_load()
    {
        using var model = new SafetensorsModel(Sharded());
        Assert.Equal(2, model.ShardPaths.Count);
        Assert.Equal([5f, 6, 7, 8], model.LoadTensor("b").Data);
        Assert.Equal([1f, 2], model.LoadTensor("c").Data);
    }

    [Fact]
    public void Missing_shard()
    {
        string directory = Sharded();
        File.Delete(Path.Combine(directory, "model-00002-of-00002.safetensors"));
        string index = Path.Combine(directory, SafetensorsModel.IndexFileName);
        var error = Fails(index, "weight_map 'c'", open: directory);
        Assert.Equal(File.ReadAllText(index).IndexOf("\"model-00002", StringComparison.Ordinal), error.Offset);
        Assert.Contains("does not exist", error.Message);
    }

    [Fact]
    public void A_shard_the_index_does_not_list_for_its_tensor()
    {
        string directory = Sharded(i => i.Replace("\"c\": \"model-00002-of-00002.safetensors\"", "\"c\": \"model-00001-of-00002.safetensors\", \"d\": \"model-00002-of-00002.safetensors\""));
        var error = Fails(Path.Combine(directory, "model-00002-of-00002.safetensors"), "tensor 'c'", open: directory);
        Assert.Contains("puts the tensor in model-00001", error.Message);
    }

    [Fact]
    public void An_index_entry_its_shard_lacks()
    {
        string directory = Sharded(i => i.Replace("\"c\":", "\"d\": \"model-00002-of-00002.safetensors\", \"c\":"));
        Fails(Path.Combine(directory, SafetensorsModel.IndexFileName), "weight_map 'd'", open: directory);
    }

    [Fact]
    public void A_shard_outside_the_directory()
    {
        string directory = Sharded(i => i.Replace("\"c\": \"model-00002", "\"c\": \"../model-00002"));
        var error = Fails(Path.Combine(directory, SafetensorsModel.IndexFileName), "weight_map 'c'", open: directory);
        Assert.Contains("not a file name", error.Message);
    }

    [Fact]
    public void Gpt2_mask_buffers_are_checked_then_left_out()
    {
        byte[] bytes = new SafetensorsWriter().Add("h.0.attn.c_attn.bias", [1, 2], [2]).AddRaw("h.0.attn.bias", "U8", new byte[4], 1, 1, 2, 2).ToBytes();
        using var model = new SafetensorsModel(Checkpoint(bytes));
        Assert.Equal(["h.0.attn.c_attn.bias"], model.Tensors.Keys);
    }
}
