using System.Globalization;
using Kiln.Loading;
using Kiln.Testing;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// One small seeded model of a family written twice: as a Hugging Face checkpoint (config.json + safetensors, the
/// tensors named, laid out and stored as transformers saves them) and as the GGUF llama.cpp's convert_hf_to_gguf.py
/// makes of it (its names and keys; Llama's q/k rows permuted for its pair rope, Gemma's norms plus one, GPT-2's
/// Conv1D weights transposed). The conversions here are written from the converter's description, apart from the
/// loader's, so a test comparing the two files checks the loader against it.
/// </summary>
internal sealed class HuggingFaceCheckpoint
{
    public const int Vocab = 37, Layers = 2, Heads = 2, KvHeads = 1, HeadDim = 16, Dim = Heads * HeadDim, Hidden = 48, Context = 64;

    /// <summary>How the converter turns one Hugging Face tensor into its GGUF tensor.</summary>
    private enum Conversion { Same, PermuteRope, Transpose, AddOne }

    private readonly Random _random;
    private readonly GgmlType _type;
    private readonly List<(string Name, float[] Values, int[] Shape)> _tensors = [];
    private readonly Dictionary<string, object> _config = new(StringComparer.Ordinal);

    private HuggingFaceCheckpoint(string family, int seed, GgmlType type)
    {
        Family = family;
        Seed = seed;
        _type = type;
        _random = new Random(seed);
        Gguf = new GgufWriter().AddMetadata("general.architecture", family);
    }

    public string Family { get; }

    public int Seed { get; }

    public GgufWriter Gguf { get; }

    /// <summary>A family's checkpoint, every tensor stored as <paramref name="type"/> (norms the converter adds one to are F32 in the GGUF, as it writes them).</summary>
    public static HuggingFaceCheckpoint Create(string family, int seed, GgmlType type = GgmlType.F32)
    {
        var c = new HuggingFaceCheckpoint(family, seed, type);
        switch (family)
        {
            case "llama":
                c.Architecture("LlamaForCausalLM").Decoder(tied: false)
                    .Set("rms_norm_eps", 1e-5, "attention.layer_norm_rms_epsilon").Set("rope_theta", 10000.0, "rope.freq_base")
                    .Set("head_dim", HeadDim).Set("attention_bias", false).Set("rope_scaling", null);
                for (int l = 0; l < Layers; l++)
                {
                    c.Attention(l, HeadDim, Conversion.PermuteRope, bias: false, norms: false).Mlp(l);
                    c.Norm($"model.layers.{l}.input_layernorm.weight", $"blk.{l}.attn_norm.weight", Conversion.Same)
                        .Norm($"model.layers.{l}.post_attention_layernorm.weight", $"blk.{l}.ffn_norm.weight", Conversion.Same);
                }
                break;
            case "qwen2":
                c.Architecture("Qwen2ForCausalLM").Decoder(tied: true)
                    .Set("rms_norm_eps", 1e-6, "attention.layer_norm_rms_epsilon").Set("rope_theta", 1e6, "rope.freq_base")
                    .Set("use_sliding_window", false).Set("sliding_window", 32768).Set("max_window_layers", 21);
                for (int l = 0; l < Layers; l++)
                {
                    c.Attention(l, HeadDim, Conversion.Same, bias: true, norms: false).Mlp(l);
                    c.Norm($"model.layers.{l}.input_layernorm.weight", $"blk.{l}.attn_norm.weight", Conversion.Same)
                        .Norm($"model.layers.{l}.post_attention_layernorm.weight", $"blk.{l}.ffn_norm.weight", Conversion.Same);
                }
                break;
            case "qwen3":
            {
                const int headDim = 24; // wider than Dim / Heads, as Qwen3's are
                c.Architecture("Qwen3ForCausalLM").Decoder(tied: false)
                    .Set("rms_norm_eps", 1e-6, "attention.layer_norm_rms_epsilon").Set("rope_theta", 1e6, "rope.freq_base")
                    .Set("head_dim", headDim, "attention.key_length").Gguf.AddMetadata("qwen3.attention.value_length", (uint)headDim);
                c.Set("sliding_window", null).Set("layer_types", new[] { "full_attention", "full_attention" });
                for (int l = 0; l < Layers; l++)
                {
                    c.Attention(l, headDim, Conversion.Same, bias: false, norms: true).Mlp(l);
                    c.Norm($"model.layers.{l}.input_layernorm.weight", $"blk.{l}.attn_norm.weight", Conversion.Same)
                        .Norm($"model.layers.{l}.post_attention_layernorm.weight", $"blk.{l}.ffn_norm.weight", Conversion.Same);
                }
                break;
            }
            case "gemma2":
            {
                const int headDim = 24;
                c.Architecture("Gemma2ForCausalLM").Decoder(tied: true, normConversion: Conversion.AddOne)
                    .Set("rms_norm_eps", 1e-6, "attention.layer_norm_rms_epsilon").Set("rope_theta", 10000.0, "rope.freq_base")
                    .Set("head_dim", headDim, "attention.key_length").Set("query_pre_attn_scalar", headDim)
                    .Set("sliding_window", 3, "attention.sliding_window").Set("attn_logit_softcapping", 1.5, "attn_logit_softcapping")
                    .Set("final_logit_softcapping", 2.0, "final_logit_softcapping")
                    .Set("layer_types", new[] { "sliding_attention", "full_attention" });
                c.Gguf.AddMetadata("gemma2.attention.value_length", (uint)headDim);
                for (int l = 0; l < Layers; l++)
                {
                    c.Attention(l, headDim, Conversion.Same, bias: false, norms: false).Mlp(l);
                    string hf = $"model.layers.{l}.", gguf = $"blk.{l}.";
                    c.Norm(hf + "input_layernorm.weight", gguf + "attn_norm.weight", Conversion.AddOne)
                        .Norm(hf + "post_attention_layernorm.weight", gguf + "post_attention_norm.weight", Conversion.AddOne)
                        .Norm(hf + "pre_feedforward_layernorm.weight", gguf + "ffn_norm.weight", Conversion.AddOne)
                        .Norm(hf + "post_feedforward_layernorm.weight", gguf + "post_ffw_norm.weight", Conversion.AddOne);
                }
                break;
            }
            case "phi3":
                c.Architecture("Phi3ForCausalLM").Decoder(tied: false)
                    .Set("rms_norm_eps", 1e-5, "attention.layer_norm_rms_epsilon").Set("rope_theta", 10000.0, "rope.freq_base")
                    .Set("sliding_window", 5, "attention.sliding_window").Set("partial_rotary_factor", 0.75);
                c.Gguf.AddMetadata("phi3.rope.dimension_count", (uint)(HeadDim * 3 / 4));
                for (int l = 0; l < Layers; l++)
                {
                    string hf = $"model.layers.{l}.", gguf = $"blk.{l}.";
                    c.Matrix(hf + "self_attn.qkv_proj.weight", gguf + "attn_qkv.weight", Dim + 2 * KvHeads * HeadDim, Dim)
                        .Matrix(hf + "self_attn.o_proj.weight", gguf + "attn_output.weight", Dim, Dim)
                        .Matrix(hf + "mlp.gate_up_proj.weight", gguf + "ffn_up.weight", 2 * Hidden, Dim)
                        .Matrix(hf + "mlp.down_proj.weight", gguf + "ffn_down.weight", Dim, Hidden)
                        .Norm(hf + "input_layernorm.weight", gguf + "attn_norm.weight", Conversion.Same)
                        .Norm(hf + "post_attention_layernorm.weight", gguf + "ffn_norm.weight", Conversion.Same);
                }
                break;
            case "gpt2":
                c.Architecture("GPT2LMHeadModel").Set("n_embd", Dim, "embedding_length").Set("n_layer", Layers, "block_count")
                    .Set("n_head", Heads, "attention.head_count").Set("n_inner", null).Set("n_positions", Context, "context_length")
                    .Set("n_ctx", Context).Set("layer_norm_epsilon", 1e-5, "attention.layer_norm_epsilon").Set("vocab_size", Vocab)
                    .Set("activation_function", "gelu_new");
                c.Gguf.AddMetadata("gpt2.feed_forward_length", (uint)(4 * Dim));
                c.Matrix("wte.weight", "token_embd.weight", Vocab, Dim, scale: 1f).Matrix("wpe.weight", "position_embd.weight", Context, Dim, scale: 0.5f)
                    .Norm("ln_f.weight", "output_norm.weight", Conversion.Same).Bias("ln_f.bias", "output_norm.bias", Dim);
                for (int l = 0; l < Layers; l++)
                {
                    string hf = $"h.{l}.", gguf = $"blk.{l}.";
                    c.Norm(hf + "ln_1.weight", gguf + "attn_norm.weight", Conversion.Same).Bias(hf + "ln_1.bias", gguf + "attn_norm.bias", Dim)
                        .Conv1D(hf + "attn.c_attn.weight", gguf + "attn_qkv.weight", Dim, 3 * Dim).Bias(hf + "attn.c_attn.bias", gguf + "attn_qkv.bias", 3 * Dim)
                        .Conv1D(hf + "attn.c_proj.weight", gguf + "attn_output.weight", Dim, Dim).Bias(hf + "attn.c_proj.bias", gguf + "attn_output.bias", Dim)
                        .Norm(hf + "ln_2.weight", gguf + "ffn_norm.weight", Conversion.Same).Bias(hf + "ln_2.bias", gguf + "ffn_norm.bias", Dim)
                        .Conv1D(hf + "mlp.c_fc.weight", gguf + "ffn_up.weight", Dim, 4 * Dim).Bias(hf + "mlp.c_fc.bias", gguf + "ffn_up.bias", 4 * Dim)
                        .Conv1D(hf + "mlp.c_proj.weight", gguf + "ffn_down.weight", 4 * Dim, Dim).Bias(hf + "mlp.c_proj.bias", gguf + "ffn_down.bias", Dim);
                    c._tensors.Add((hf + "attn.bias", new float[64], [1, 1, 8, 8])); // the causal-mask buffer the hub's GPT-2 still carries
                }
                break;
            default:
                throw new ArgumentException($"No checkpoint for {family}.", nameof(family));
        }
        return c;
    }

    /// <summary>Writes config.json and the weights (in <paramref name="shards"/> files with an index when more than one) into <paramref name="directory"/>.</summary>
    public void WriteHuggingFace(string directory, int shards = 1)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, SafetensorsModel.ConfigFileName), ConfigJson());
        if (shards == 1)
        {
            Writer(_tensors).Write(Path.Combine(directory, SafetensorsModel.SingleFileName));
            return;
        }
        var map = new List<string>();
        int perShard = (_tensors.Count + shards - 1) / shards;
        for (int s = 0; s < shards; s++)
        {
            string file = $"model-{s + 1:D5}-of-{shards:D5}.safetensors";
            var part = _tensors.Skip(s * perShard).Take(perShard).ToList();
            Writer(part).Write(Path.Combine(directory, file));
            map.AddRange(part.Select(t => $"\"{t.Name}\": \"{file}\""));
        }
        File.WriteAllText(Path.Combine(directory, SafetensorsModel.IndexFileName),
            $"{{\"metadata\": {{\"total_size\": 0}}, \"weight_map\": {{{string.Join(", ", map)}}}}}");
    }

    public string ConfigJson() =>
        "{" + string.Join(", ", _config.Select(e => $"\"{e.Key}\": {Json(e.Value)}")) + "}";

    /// <summary>Sets a config key (null writes null); with <paramref name="gguf"/>, the GGUF key "{family}.{gguf}" too.</summary>
    public HuggingFaceCheckpoint Set(string key, object? value, string? gguf = null)
    {
        _config[key] = value!;
        if (gguf is null) return this;
        object ggufValue = value switch
        {
            int i => (uint)i,
            double d => (float)d,
            _ => value!,
        };
        Gguf.AddMetadata($"{Family}.{gguf}", ggufValue);
        return this;
    }

    private HuggingFaceCheckpoint Architecture(string name)
    {
        _config["architectures"] = new[] { name };
        _config["model_type"] = Family;
        _config["torch_dtype"] = _type == GgmlType.F32 ? "float32" : "bfloat16";
        return this;
    }

    /// <summary>The keys and model-level tensors the Llama-like families share.</summary>
    private HuggingFaceCheckpoint Decoder(bool tied, Conversion normConversion = Conversion.Same)
    {
        Set("hidden_size", Dim, "embedding_length").Set("intermediate_size", Hidden, "feed_forward_length")
            .Set("num_hidden_layers", Layers, "block_count").Set("num_attention_heads", Heads, "attention.head_count")
            .Set("num_key_value_heads", KvHeads, "attention.head_count_kv").Set("max_position_embeddings", Context, "context_length")
            .Set("vocab_size", Vocab).Set("tie_word_embeddings", tied).Set("hidden_act", "silu");
        Matrix("model.embed_tokens.weight", "token_embd.weight", Vocab, Dim, scale: 1f).Norm("model.norm.weight", "output_norm.weight", normConversion);
        if (!tied) Matrix("lm_head.weight", "output.weight", Vocab, Dim);
        return this;
    }

    private HuggingFaceCheckpoint Attention(int layer, int headDim, Conversion rope, bool bias, bool norms)
    {
        string hf = $"model.layers.{layer}.self_attn.", gguf = $"blk.{layer}.";
        int q = Heads * headDim, kv = KvHeads * headDim;
        Add(hf + "q_proj.weight", gguf + "attn_q.weight", [q, Dim], Uniform(0.3f), rope, Heads);
        Add(hf + "k_proj.weight", gguf + "attn_k.weight", [kv, Dim], Uniform(0.3f), rope, KvHeads);
        Matrix(hf + "v_proj.weight", gguf + "attn_v.weight", kv, Dim).Matrix(hf + "o_proj.weight", gguf + "attn_output.weight", Dim, q);
        if (bias)
            Bias(hf + "q_proj.bias", gguf + "attn_q.bias", q).Bias(hf + "k_proj.bias", gguf + "attn_k.bias", kv).Bias(hf + "v_proj.bias", gguf + "attn_v.bias", kv);
        if (norms)
            Norm(hf + "q_norm.weight", gguf + "attn_q_norm.weight", Conversion.Same, headDim).Norm(hf + "k_norm.weight", gguf + "attn_k_norm.weight", Conversion.Same, headDim);
        return this;
    }

    private HuggingFaceCheckpoint Mlp(int layer)
    {
        string hf = $"model.layers.{layer}.mlp.", gguf = $"blk.{layer}.";
        return Matrix(hf + "gate_proj.weight", gguf + "ffn_gate.weight", Hidden, Dim).Matrix(hf + "up_proj.weight", gguf + "ffn_up.weight", Hidden, Dim)
            .Matrix(hf + "down_proj.weight", gguf + "ffn_down.weight", Dim, Hidden);
    }

    private Func<float> Uniform(float scale) => () => (float)(_random.NextDouble() * 2 - 1) * scale;

    private HuggingFaceCheckpoint Matrix(string hf, string gguf, int rows, int cols, float scale = 0.3f) =>
        Add(hf, gguf, [rows, cols], Uniform(scale), Conversion.Same);

    private HuggingFaceCheckpoint Bias(string hf, string gguf, int length) => Add(hf, gguf, [length], Uniform(0.2f), Conversion.Same);

    /// <summary>A norm weight around 1, or — stored as an offset from one, as Gemma's are — around 0.</summary>
    private HuggingFaceCheckpoint Norm(string hf, string gguf, Conversion conversion, int length = Dim)
    {
        float center = conversion == Conversion.AddOne ? 0f : 1f;
        return Add(hf, gguf, [length], () => center - 0.5f + (float)_random.NextDouble(), conversion);
    }

    /// <summary>A Conv1D weight: Hugging Face stores [in, out]; the GGUF holds it transposed.</summary>
    private HuggingFaceCheckpoint Conv1D(string hf, string gguf, int inputs, int outputs) =>
        Add(hf, gguf, [inputs, outputs], Uniform(0.3f), Conversion.Transpose);

    private HuggingFaceCheckpoint Add(string hf, string gguf, int[] shape, Func<float> next, Conversion conversion, int heads = 0)
    {
        int count = shape.Aggregate(1, (a, b) => a * b);
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = next();
        values = Rounded(values, _type); // what the checkpoint holds
        _tensors.Add((hf, values, shape));

        var (converted, ggufShape, type) = conversion switch
        {
            Conversion.PermuteRope => (PermuteLikeLlamaCpp(values, shape, heads), shape, _type),
            Conversion.Transpose => (Transposed(values, shape[0], shape[1]), new[] { shape[1], shape[0] }, _type),
            Conversion.AddOne => (values.Select(v => v + 1f).ToArray(), shape, GgmlType.F32),
            _ => (values, shape, _type),
        };
        Gguf.AddTensor(gguf, type, converted, ggufShape.Reverse().Select(d => (long)d).ToArray());
        return this;
    }

    /// <summary>
    /// convert_hf_to_gguf.py's LlamaModel.permute: the rows viewed as [heads, 2, rows/heads/2], the two middle axes
    /// swapped, flattened again — each head's halves interleaved.
    /// </summary>
    private static float[] PermuteLikeLlamaCpp(float[] values, int[] shape, int heads)
    {
        int rows = shape[0], cols = shape[1], half = rows / heads / 2;
        var result = new float[values.Length];
        int target = 0;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++) // after the swap: [head, i, s]
                for (int s = 0; s < 2; s++, target++)
                    Array.Copy(values, ((h * 2 + s) * half + i) * cols, result, target * cols, cols);
        return result;
    }

    private static float[] Transposed(float[] values, int rows, int cols)
    {
        var result = new float[values.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                result[c * rows + r] = values[r * cols + c];
        return result;
    }

    private static float[] Rounded(float[] values, GgmlType type)
    {
        if (type == GgmlType.F32) return values;
        var bytes = new byte[values.Length * 2];
        Quantize.FromFloat32(type, values, bytes);
        var result = new float[values.Length];
        Dequantize.ToFloat32(type, bytes, result);
        return result;
    }

    private SafetensorsWriter Writer(IEnumerable<(string Name, float[] Values, int[] Shape)> tensors)
    {
        var writer = new SafetensorsWriter().AddMetadata("format", "pt");
        foreach (var (name, values, shape) in tensors)
            writer.Add(name, values, shape, name.EndsWith(".attn.bias", StringComparison.Ordinal) ? GgmlType.F32 : _type);
        return writer;
    }

    private static string Json(object? value) => value switch
    {
        null => "null",
        string s => $"\"{s}\"",
        bool b => b ? "true" : "false",
        double d => d.ToString("R", CultureInfo.InvariantCulture) + (d == Math.Floor(d) && !d.ToString("R", CultureInfo.InvariantCulture).Contains('E') ? ".0" : ""),
        int i => i.ToString(CultureInfo.InvariantCulture),
        string[] list => "[" + string.Join(", ", list.Select(Json)) + "]",
        _ => throw new ArgumentException($"No JSON for {value.GetType()}."),
    };
}
