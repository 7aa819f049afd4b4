using Kiln.Loading;
using Kiln.Testing;
using static Kiln.Runtime.Tests.Loading.LoadingTestFiles;

namespace Kiln.Runtime.Tests.Loading;

/// <summary>
/// A Hugging Face checkpoint as a ModelFile: how config.json becomes metadata (types kept, nested keys dotted, nulls
/// absent, sliding-window statements normalized), which paths ModelFile.Open reads as one, and the weight conversions
/// definitions declare for it.
/// </summary>
public sealed class SafetensorsModelTests : IDisposable
{
    private readonly ScratchDirectory _scratch = new();

    public void Dispose() => _scratch.Dispose();

    private string Checkpoint(string config, SafetensorsWriter? weights = null)
    {
        string directory = Path.Combine(_scratch.Root, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, SafetensorsModel.ConfigFileName), config);
        (weights ?? new SafetensorsWriter().Add("w", [1, 2, 3, 4], [2, 2])).Write(Path.Combine(directory, SafetensorsModel.SingleFileName));
        return directory;
    }

    private SafetensorsModel Open(string configBody) =>
        new(Checkpoint("{\"architectures\": [\"Qwen2ForCausalLM\"]" + (configBody.Length > 0 ? ", " + configBody : "") + "}"));

    [Fact]
    public void Config_values_keep_their_json_types()
    {
        using var file = Open("""
            "hidden_size": 896, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": true, "hidden_act": "silu",
            "eos_token_id": [151643, 151645], "rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "sliding_window": null
            """);
        Assert.Equal(ModelNaming.HuggingFace, file.Naming);
        Assert.Equal("qwen2", file.Architecture);
        Assert.Equal("Qwen2ForCausalLM", file.HuggingFaceArchitecture);
        Assert.Equal(896L, file.Metadata["hidden_size"].Value);
        Assert.True(file.TryGetInt("hidden_size", out long dim) && dim == 896);
        Assert.Equal(1e-6, file.Metadata["rms_norm_eps"].Value);
        Assert.False(file.TryGetInt("rope_theta", out _)); // written with a fraction: a float, not an integer
        Assert.True(file.TryGetFloat("rope_theta", out double theta) && theta == 1e6);
        Assert.Equal(true, file.Metadata["tie_word_embeddings"].Value);
        Assert.Equal("silu", file.Metadata["hidden_act"].Value);
        Assert.Equal(new[] { 151643L, 151645L }, file.Metadata["eos_token_id"].Value);
        Assert.Equal("yarn", file.Metadata["rope_scaling.rope_type"].Value);
        Assert.Equal(4.0, file.Metadata["rope_scaling.factor"].Value);
        Assert.False(file.Metadata.ContainsKey("sliding_window")); // null states nothing
        Assert.Equal(new[] { "Qwen2ForCausalLM" }, file.Metadata["architectures"].Value);
    }

    [Theory]
    [InlineData("\"use_sliding_window\": false, \"sliding_window\": 4096, \"max_window_layers\": 21", false)]
    [InlineData("\"use_sliding_window\": true, \"sliding_window\": 4096, \"max_window_layers\": 21", true)]
    [InlineData("\"sliding_window\": 4096", true)]
    public void A_sliding_window_not_in_use_is_not_stated(string config, bool stated)
    {
        using var file = Open(config);
        Assert.Equal(stated, file.Metadata.ContainsKey("sliding_window"));
        Assert.Equal(stated && config.Contains("max_window_layers"), file.Metadata.ContainsKey("max_window_layers"));
    }

    [Theory]
    [InlineData("\"full_attention\", \"full_attention\", \"full_attention\"", null, null)]
    [InlineData("\"sliding_attention\", \"full_attention\", \"sliding_attention\"", 2L, null)]
    [InlineData("\"sliding_attention\", \"sliding_attention\", \"full_attention\", \"sliding_attention\", \"sliding_attention\", \"full_attention\"", 3L, null)]
    [InlineData("\"full_attention\", \"sliding_attention\"", null, "layer_types")]
    [InlineData("\"sliding_attention\", \"full_attention\", \"full_attention\"", null, "layer_types")]
    public void Layer_types_become_a_sliding_window_pattern_when_they_are_one(string types, long? pattern, string? kept)
    {
        using var file = Open($"\"layer_types\": [{types}]");
        Assert.Equal(pattern, file.TryGetInt("sliding_window_pattern", out long p) ? p : null);
        Assert.Equal(kept is not null, file.Metadata.ContainsKey("layer_types"));
    }

    [Fact]
    public void Layer_types_disagreeing_with_a_stated_pattern_are_kept()
    {
        using var file = Open("\"sliding_window_pattern\": 3, \"layer_types\": [\"sliding_attention\", \"full_attention\"]");
        Assert.True(file.Metadata.ContainsKey("layer_types"));
        Assert.True(file.TryGetInt("sliding_window_pattern", out long p) && p == 3);
    }

    [Fact]
    public void Open_reads_a_directory_its_config_its_weights_or_its_index_as_one_checkpoint()
    {
        string directory = Checkpoint("{\"architectures\": [\"LlamaForCausalLM\"]}");
        string weights = Path.Combine(directory, SafetensorsModel.SingleFileName);
        string renamed = Path.Combine(directory, "weights.bin"); // safetensors content under another name
        File.Copy(weights, renamed);
        foreach (string path in new[] { directory, Path.Combine(directory, SafetensorsModel.ConfigFileName), weights, renamed })
        {
            using var file = ModelFile.Open(path);
            var model = Assert.IsType<SafetensorsModel>(file);
            Assert.Equal(Path.GetFullPath(directory), model.Path);
            Assert.Equal([1f, 2, 3, 4], model.LoadTensor("w").Data);
        }
    }

    [Fact]
    public void Open_still_reads_gguf_and_llama2c_files_as_before()
    {
        using (var gguf = ModelFile.Open(StoriesGguf)) Assert.IsType<GgufFile>(gguf);
        using (var llama2c = ModelFile.Open(StoriesBin, StoriesTokenizer)) Assert.IsType<Llama2cFile>(llama2c);
        Assert.False(SafetensorsModel.LooksLikeSafetensors(File.ReadAllBytes(StoriesBin).AsSpan(0, SafetensorsModel.SniffBytes)));
    }

    [Fact]
    public void A_safetensors_path_the_index_lists_opens_every_shard()
    {
        string directory = Checkpoint("{\"architectures\": [\"LlamaForCausalLM\"]}");
        File.Delete(Path.Combine(directory, SafetensorsModel.SingleFileName));
        new SafetensorsWriter().Add("a", [1], [1]).Write(Path.Combine(directory, "model-00001-of-00002.safetensors"));
        new SafetensorsWriter().Add("b", [2], [1]).Write(Path.Combine(directory, "model-00002-of-00002.safetensors"));
        new SafetensorsWriter().Add("other", [3], [1]).Write(Path.Combine(directory, "adapter.safetensors"));
        File.WriteAllText(Path.Combine(directory, SafetensorsModel.IndexFileName),
            """{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}""");

        using (var sharded = new SafetensorsModel(Path.Combine(directory, "model-00002-of-00002.safetensors")))
            Assert.Equal(["a", "b"], sharded.Tensors.Keys.Order());
        using (var single = new SafetensorsModel(Path.Combine(directory, "adapter.safetensors")))
            Assert.Equal(["other"], single.Tensors.Keys);
    }

    [Fact]
    public void Sixteen_bit_matrices_keep_their_stored_bytes()
    {
        // A matrix stays in its stored format (plans pack it as stored); a vector is decoded to float32 at once.
        var writer = new SafetensorsWriter().Add("h", [1.5f, -2], [1, 2], GgmlType.F16).Add("b", [0.25f, 3], [1, 2], GgmlType.BF16)
            .Add("v", [0.5f, 7], [2], GgmlType.BF16);
        using var file = new SafetensorsModel(Checkpoint("{\"architectures\": [\"LlamaForCausalLM\"]}", writer));
        var half = file.LoadTensor("h");
        var brain = file.LoadTensor("b");
        Assert.Equal([1.5f, -2], half.Data);
        Assert.Equal(GgmlType.F16, half.Stored!.Type);
        Assert.Equal([0.25f, 3], brain.Data);
        Assert.Equal(GgmlType.BF16, brain.Stored!.Type);
        Assert.Equal(file.GetTensorBytes(file.Tensors["b"]).ToArray(), brain.Stored.Bytes);
        var vector = file.LoadTensor("v");
        Assert.Equal([0.5f, 7], vector.Data);
        Assert.Null(vector.Stored);
    }

    private static Tensor Rows(int rows, int cols, GgmlType stored = GgmlType.F32)
    {
        var data = new float[rows * cols];
        for (int i = 0; i < data.Length; i++) data[i] = i / cols * 10 + i % cols; // row r, column c holds 10r + c
        if (stored == GgmlType.F32) return new Tensor(data, rows, cols);
        var bytes = new byte[data.Length * 2];
        Quantize.FromFloat32(stored, data, bytes);
        return new Tensor(data, rows, cols) { Stored = new StoredTensor(stored, bytes) };
    }

    private static float[] RowStarts(Tensor tensor) => Enumerable.Range(0, tensor.Rows).Select(r => tensor[r, 0]).ToArray();

    private static float[] Decoded(StoredTensor stored, int count)
    {
        var values = new float[count];
        Dequantize.ToFloat32(stored.Type, stored.Bytes, values);
        return values;
    }

    [Fact]
    public void Rope_halves_are_interleaved_per_head()
    {
        using var file = Open("");
        // Two heads of four rows: each head's halves (0 1 | 2 3) become pairs (0 2 1 3).
        var converted = HuggingFaceConversions.RopeHalvesToPairs(file, "q", Rows(8, 3, GgmlType.BF16), headSize: 4);
        Assert.Equal([0f, 20, 10, 30, 40, 60, 50, 70], RowStarts(converted));
        Assert.Equal([8, 3], converted.Shape);
        Assert.Equal(converted.Data, Decoded(converted.Stored!, converted.Data.Length)); // the stored rows moved with them

        var bias = HuggingFaceConversions.RopeHalvesToPairs(file, "b", new Tensor([0f, 1, 2, 3, 4, 5], 6), headSize: 6);
        Assert.Equal([0f, 3, 1, 4, 2, 5], bias.Data);
    }

    [Theory]
    [InlineData(8, 3)]  // an odd head
    [InlineData(8, 6)]  // 8 rows are not whole heads of 6
    [InlineData(8, 0)]
    public void Rope_halves_need_whole_even_heads(int rows, int headSize)
    {
        using var file = Open("");
        var error = Assert.Throws<ModelLoadException>(() => HuggingFaceConversions.RopeHalvesToPairs(file, "w", Rows(rows, 2), headSize));
        Assert.Equal("tensor 'w'", error.Field);
        Assert.Equal(file.Tensors["w"].Offset, error.Offset);
    }

    [Fact]
    public void Transpose_turns_a_conv1d_weight_into_a_linear_one()
    {
        using var file = Open("");
        var converted = HuggingFaceConversions.Transpose(file, "c", Rows(2, 3, GgmlType.BF16));
        Assert.Equal([3, 2], converted.Shape);
        Assert.Equal([0f, 10, 1, 11, 2, 12], converted.Data);
        Assert.Equal(converted.Data, Decoded(converted.Stored!, 6));
        Assert.Throws<ModelLoadException>(() => HuggingFaceConversions.Transpose(file, "v", new Tensor([1f, 2], 2)));
    }

    [Fact]
    public void Add_one_makes_an_offset_norm_the_scale_itself()
    {
        using var file = Open("");
        var norm = new Tensor([-0.5f, 0, 0.25f], 3) { Stored = new StoredTensor(GgmlType.BF16, new byte[6]) };
        var converted = HuggingFaceConversions.AddOne(file, "n", norm);
        Assert.Equal([0.5f, 1, 1.25f], converted.Data);
        Assert.Null(converted.Stored); // the sum is no longer the checkpoint's bytes
        Assert.Equal([-0.5f, 0, 0.25f], norm.Data); // the loaded tensor is left as it was
    }
}
