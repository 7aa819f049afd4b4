using Kiln.Loading;
using Kiln.Models;
using Xunit.Abstractions;
using static Kiln.EndToEnd.Tests.HuggingFaceCheckpoint;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Each family's definition bound to a Hugging Face checkpoint (safetensors + config.json) and to the GGUF
/// llama.cpp's converter makes of it: the same definition, through the names and conversions it declares, must give
/// bit-identical logits from both (the weights it binds are the same numbers). And the checks of what a config states.
/// </summary>
public sealed class SafetensorsFamilyTests(ITestOutputHelper output) : IDisposable
{
    private const int MaxTokens = 16, MaxContext = 32;

    private readonly DirectoryInfo _scratch = Directory.CreateTempSubdirectory("kiln-safetensors-");

    public void Dispose()
    {
        try
        {
            _scratch.Delete(recursive: true);
        }
        catch (IOException)
        {
            // A failed test may still hold a mapping; the temp folder is cleaned by the OS eventually.
        }
    }

    public static TheoryData<string, GgmlType, int> Checkpoints() => new()
    {
        { "llama", GgmlType.F32, 1 },
        { "llama", GgmlType.BF16, 1 },
        { "llama", GgmlType.F32, 3 },
        { "qwen2", GgmlType.F32, 1 },
        { "qwen2", GgmlType.F16, 1 },
        { "qwen3", GgmlType.F32, 1 },
        { "gemma2", GgmlType.F32, 1 },
        { "gemma2", GgmlType.BF16, 2 },
        { "phi3", GgmlType.F32, 1 },
        { "gpt2", GgmlType.F32, 1 },
        { "gpt2", GgmlType.BF16, 1 },
    };

    [Theory]
    [MemberData(nameof(Checkpoints))]
    public void SafetensorsAndItsGgufConversionGiveTheSameLogits(string family, GgmlType type, int shards)
    {
        var checkpoint = Create(family, seed: family.Length * 1000 + (int)type * 10 + shards, type);
        string directory = Path.Combine(_scratch.FullName, $"{family}-{type}-{shards}");
        checkpoint.WriteHuggingFace(directory, shards);
        string gguf = Path.Combine(_scratch.FullName, $"{family}-{type}-{shards}.gguf");
        checkpoint.Gguf.Write(gguf);
        output.WriteLine($"{family}, {type}, {shards} shard(s), seed {checkpoint.Seed}");

        using var huggingFace = ModelFile.Open(directory);
        using var converted = ModelFile.Open(gguf);
        Assert.IsType<SafetensorsModel>(huggingFace);
        Assert.Equal(family, huggingFace.Architecture);
        var fromHuggingFace = Logits(ModelCatalog.Load(huggingFace));
        var fromGguf = Logits(ModelCatalog.Load(converted));

        Assert.Equal(fromGguf.Length, fromHuggingFace.Length);
        for (int i = 0; i < fromGguf.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(fromGguf[i]) == BitConverter.SingleToInt32Bits(fromHuggingFace[i]),
                $"logit {i}: GGUF {fromGguf[i]}, safetensors {fromHuggingFace[i]}");
        Assert.Contains(fromGguf, v => v != 0); // the comparison is of real numbers
        output.WriteLine($"  {fromGguf.Length} logits equal bit for bit");
    }

    /// <summary>
    /// A checkpoint's matrices stay as stored, as a GGUF file's do: bound over each shard's mapping, q and k reordered
    /// by moving their stored rows, packed by a compiled plan; none is ever widened to float32 whole.
    /// </summary>
    [Fact]
    public void CheckpointMatricesStayInTheirStoredFormat()
    {
        var checkpoint = Create("llama", seed: 11, GgmlType.BF16);
        string directory = Path.Combine(_scratch.FullName, "stored");
        checkpoint.WriteHuggingFace(directory, shards: 2);
        using var file = ModelFile.Open(directory);
        var model = Llama.Load(file);
        var matrices = new List<Tensor> { model.TokenEmbedding, model.Output };
        foreach (var block in model.Layers) matrices.AddRange([block.Wq, block.Wk, block.Wv, block.Wo, block.Gate, block.Up, block.Down]);
        Assert.All(matrices, weight => Assert.Equal(GgmlType.BF16, weight.Stored?.Type));
        Assert.All(matrices, weight => Assert.False(weight.HasFloatData, $"{weight} was decoded to float32 when loaded"));

        Assert.Contains(Logits(model), v => v != 0);
        Assert.All(matrices, weight => Assert.False(weight.HasFloatData, $"{weight} was decoded to float32 whole"));
    }

    /// <summary>
    /// The row reordering checked against the rope it stands for, not against a second copy of llama.cpp's permute:
    /// Llama on a Hugging Face checkpoint (q/k reordered, adjacent-pair rope) computes what a NeoX rope on the
    /// checkpoint's own rows computes — Qwen2's definition, given the same weights and zero q/k/v biases.
    /// </summary>
    [Fact]
    public void LlamaFromHuggingFaceEqualsNeoxRopeOnTheCheckpointsOwnRows()
    {
        var checkpoint = Create("llama", seed: 7);
        string directory = Path.Combine(_scratch.FullName, "llama-neox");
        checkpoint.WriteHuggingFace(directory);
        using var huggingFace = new SafetensorsModel(directory);

        var neox = new GgufWriter().AddMetadata("general.architecture", "qwen2");
        foreach (var (key, ggufKey) in new[]
        {
            ("hidden_size", "embedding_length"), ("intermediate_size", "feed_forward_length"), ("num_hidden_layers", "block_count"),
            ("num_attention_heads", "attention.head_count"), ("num_key_value_heads", "attention.head_count_kv"),
        })
        {
            huggingFace.TryGetInt(key, out long value);
            neox.AddMetadata("qwen2." + ggufKey, (uint)value);
        }
        neox.AddMetadata("qwen2.attention.layer_norm_rms_epsilon", 1e-5f).AddMetadata("qwen2.rope.freq_base", 10000f);
        string Rename(string name) => name
            .Replace("model.embed_tokens", "token_embd").Replace("model.norm", "output_norm").Replace("lm_head", "output")
            .Replace("model.layers.", "blk.").Replace("input_layernorm", "attn_norm").Replace("post_attention_layernorm", "ffn_norm")
            .Replace("self_attn.q_proj", "attn_q").Replace("self_attn.k_proj", "attn_k").Replace("self_attn.v_proj", "attn_v")
            .Replace("self_attn.o_proj", "attn_output").Replace("mlp.gate_proj", "ffn_gate").Replace("mlp.up_proj", "ffn_up").Replace("mlp.down_proj", "ffn_down");
        foreach (string name in huggingFace.Tensors.Keys)
        {
            var tensor = huggingFace.LoadTensor(name); // the checkpoint's rows, unconverted
            neox.AddTensor(Rename(name), tensor);
            if (name.EndsWith("_proj.weight", StringComparison.Ordinal) && (name.Contains(".q_") || name.Contains(".k_") || name.Contains(".v_")))
                neox.AddTensor(Rename(name).Replace(".weight", ".bias"), new Tensor(new float[tensor.Shape[0]], tensor.Shape[0]));
        }
        string path = Path.Combine(_scratch.FullName, "qwen2-neox.gguf");
        neox.Write(path);
        using var neoxFile = new GgufFile(path);

        var llama = Logits(Llama.Load(huggingFace));
        var qwen2 = Logits(Qwen2.Load(neoxFile));
        double worst = 0;
        for (int i = 0; i < llama.Length; i++)
        {
            double error = Math.Abs(llama[i] - qwen2[i]) / (1e-5 + 1e-5 * Math.Abs(qwen2[i]));
            Assert.True(error <= 1, $"logit {i}: Llama (HF rows reordered) {llama[i]}, NeoX on HF rows {qwen2[i]}");
            worst = Math.Max(worst, error);
        }
        output.WriteLine($"{llama.Length} logits, worst {worst:P0} of the bound (1e-5 + 1e-5·|x|)");
    }

    /// <summary>A prefill of 7 tokens (every row wanted), then two decodes, through a compiled plan; every logit in order.</summary>
    private static float[] Logits(IKilnModel model)
    {
        using var plan = model.Compile(new PlanOptions(MaxTokens, Threads: 2));
        var context = new AttentionContext(model.CreateKvCache(1, MaxContext), MaxTokens);
        var logits = new List<float>();
        var step = new float[MaxTokens * model.VocabSize];
        void Run(int[] tokens, int start)
        {
            context.Clear();
            for (int t = 0; t < tokens.Length; t++) context.Add(start + t, 0, true);
            plan.Step(tokens, context, step);
            logits.AddRange(step.AsSpan(0, tokens.Length * model.VocabSize).ToArray());
        }
        Run([1, 5, 9, 13, 17, 21, 25], 0);
        Run([30], 7);
        Run([2], 8);
        return logits.ToArray();
    }

    private SafetensorsModel Checkpoint(string family, Action<HuggingFaceCheckpoint> edit)
    {
        var checkpoint = Create(family, seed: 3);
        edit(checkpoint);
        string directory = Path.Combine(_scratch.FullName, Guid.NewGuid().ToString("N"));
        checkpoint.WriteHuggingFace(directory);
        return new SafetensorsModel(directory);
    }

    [Theory]
    [InlineData("llama", "sliding_window", 4096, "sliding_window")]
    [InlineData("llama", "head_dim", 8, "head_dim")]
    [InlineData("llama", "partial_rotary_factor", 0.5, "partial_rotary_factor")]
    [InlineData("qwen2", "use_sliding_window", true, "sliding_window")]
    [InlineData("gpt2", "rms_norm_eps", 1e-6, "rms_norm_eps")]
    [InlineData("phi3", "attn_logit_softcapping", 30.0, "attn_logit_softcapping")]
    [InlineData("qwen3", "num_local_experts", 8, "num_local_experts")]
    [InlineData("llama", "query_pre_attn_scalar", 16, "query_pre_attn_scalar")]
    public void A_config_stating_what_the_definition_ignores_is_rejected(string family, string key, object value, string field)
    {
        using var file = Checkpoint(family, c => c.Set(key, value));
        var error = Assert.Throws<ModelLoadException>(() => ModelCatalog.Load(file));
        Assert.Equal(field, error.Field);
        output.WriteLine(error.Message);
    }

    [Theory]
    [InlineData("llama", "partial_rotary_factor", 1.0)]
    [InlineData("llama", "head_dim", 16)]
    [InlineData("qwen3", "num_local_experts", 0)]
    [InlineData("llama", "sliding_window", null)]
    public void A_config_stating_what_the_forward_already_does_loads(string family, string key, object? value)
    {
        using var file = Checkpoint(family, c => c.Set(key, value));
        Assert.NotNull(ModelCatalog.Load(file));
    }

    [Fact]
    public void Rope_scaling_is_rejected_unless_it_is_the_default()
    {
        string directory = Path.Combine(_scratch.FullName, "scaled");
        var checkpoint = Create("llama", seed: 5);
        checkpoint.WriteHuggingFace(directory);
        string config = Path.Combine(directory, SafetensorsModel.ConfigFileName);
        string original = File.ReadAllText(config);

        File.WriteAllText(config, original.Replace("\"rope_scaling\": null", "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}"));
        using (var file = new SafetensorsModel(directory))
        {
            var error = Assert.Throws<ModelLoadException>(() => Llama.Load(file));
            Assert.Equal("rope_scaling", error.Field);
            Assert.Contains("llama3", error.Message);
        }
        File.WriteAllText(config, original.Replace("\"rope_scaling\": null", "\"rope_scaling\": {\"rope_type\": \"default\"}"));
        using (var file = new SafetensorsModel(directory))
            Assert.NotNull(Llama.Load(file));
    }

    [Fact]
    public void Layer_types_of_another_pattern_are_rejected()
    {
        using var file = Checkpoint("gemma2", c => c.Set("layer_types", new[] { "full_attention", "sliding_attention" }));
        Assert.Equal("layer_types", Assert.Throws<ModelLoadException>(() => Gemma2.Load(file)).Field);
    }

    [Fact]
    public void Gemma2_reads_query_pre_attn_scalar_from_the_config()
    {
        using var file = Checkpoint("gemma2", c => c.Set("query_pre_attn_scalar", 144));
        Assert.Equal(1f / MathF.Sqrt(144), Gemma2.Load(file).QueryScale);
    }

    [Fact]
    public void A_tensor_the_definition_does_not_bind_is_rejected()
    {
        string directory = Path.Combine(_scratch.FullName, "extra");
        Create("llama", seed: 9).WriteHuggingFace(directory);
        string weights = Path.Combine(directory, SafetensorsModel.SingleFileName);
        using (var original = new SafetensorsModel(directory))
        {
            var writer = new Kiln.Testing.SafetensorsWriter();
            foreach (string name in original.Tensors.Keys)
                writer.Add(name, original.LoadTensor(name).Data, original.LoadTensor(name).Shape);
            writer.Add("model.layers.0.self_attn.q_proj.bias", new float[Dim], [Dim]);
            File.WriteAllBytes(weights + ".new", writer.ToBytes());
        }
        File.Move(weights + ".new", weights, overwrite: true);
        using var file = new SafetensorsModel(directory);
        var error = Assert.Throws<ModelLoadException>(() => Llama.Load(file));
        Assert.Equal("tensor 'model.layers.0.self_attn.q_proj.bias'", error.Field);
    }
}
