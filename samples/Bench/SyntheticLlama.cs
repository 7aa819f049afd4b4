using Kiln.Loading;

namespace Kiln.Bench;

/// <summary>The shape of a synthetic Llama: real model dimensions, random weights.</summary>
public sealed record SyntheticLlamaShape(
    string Name, int Dim, int Hidden, int Layers, int Heads, int KvHeads, int Vocab, bool TiedOutput, int ContextLength = 2048)
{
    /// <summary>The shape of llama2.c's stories15M: dim 288, ffn 768, 6 layers, 6 heads, vocab 32000, tied output.</summary>
    public static SyntheticLlamaShape Stories15M { get; } = new("15m", 288, 768, 6, 6, 6, 32000, TiedOutput: true);

    /// <summary>The shape of llama2.c's stories110M: dim 768, ffn 2048, 12 layers, 12 heads, vocab 32000, untied output.</summary>
    public static SyntheticLlamaShape Stories110M { get; } = new("110m", 768, 2048, 12, 12, 12, 32000, TiedOutput: false);

    public static SyntheticLlamaShape? FromName(string name) => name.ToLowerInvariant() switch
    {
        "15m" => Stories15M,
        "110m" => Stories110M,
        _ => null,
    };

    public int HeadDim => Dim / Heads;

    public int KvDim => KvHeads * HeadDim;
}

/// <summary>
/// Writes a synthetic Llama GGUF v3 that llama.cpp and Kiln both load: full llama.* metadata, a valid SentencePiece
/// ("llama") vocabulary of unique pieces, and seeded Gaussian weights scaled so activations stay near unit RMS.
/// </summary>
public static class SyntheticLlama
{
    /// <summary>Weight scales. Linear weights are N(0, Gain/√fanIn); the output (or tied embedding) is N(0, LogitScale/√dim).</summary>
    public sealed record Scales(float LinearGain = 1f, float LogitScale = 3f, float EmbeddingStd = 1f);

    public static GgmlType ParseFormat(string text) => text.ToLowerInvariant() switch
    {
        "f32" => GgmlType.F32,
        "f16" => GgmlType.F16,
        "q8_0" => GgmlType.Q8_0,
        "q4_0" => GgmlType.Q4_0,
        _ => throw new ArgumentException($"unknown format '{text}' (expected f32, f16, q8_0 or q4_0)"),
    };

    /// <summary>GGUF general.file_type (llama_ftype) for a file whose 2-D weights are all <paramref name="format"/>.</summary>
    public static uint FileType(GgmlType format) => format switch
    {
        GgmlType.F32 => 0,  // LLAMA_FTYPE_ALL_F32
        GgmlType.F16 => 1,  // LLAMA_FTYPE_MOSTLY_F16
        GgmlType.Q4_0 => 2, // LLAMA_FTYPE_MOSTLY_Q4_0
        GgmlType.Q8_0 => 7, // LLAMA_FTYPE_MOSTLY_Q8_0
        _ => throw new ArgumentException($"no file type for {format}"),
    };

    /// <summary>Writes the model to <paramref name="path"/>. <paramref name="progress"/> gets one line per tensor.</summary>
    public static void Write(string path, SyntheticLlamaShape shape, GgmlType format, int seed, Scales? scales = null, Action<string>? progress = null)
    {
        var writer = Build(shape, format, seed, scales, progress);
        progress?.Invoke($"writing {path}");
        writer.Write(path);
    }

    public static GgufWriter Build(SyntheticLlamaShape shape, GgmlType format, int seed, Scales? scales = null, Action<string>? progress = null)
    {
        scales ??= new Scales();
        if (shape.Dim % shape.Heads != 0 || shape.Heads % shape.KvHeads != 0 || shape.HeadDim % 2 != 0)
            throw new ArgumentException($"heads {shape.Heads}/{shape.KvHeads} do not fit dim {shape.Dim}");
        int block = format switch { GgmlType.Q8_0 or GgmlType.Q4_0 => 32, _ => 1 };
        if (shape.Dim % block != 0 || shape.Hidden % block != 0)
            throw new ArgumentException($"dim {shape.Dim} and ffn {shape.Hidden} must be multiples of {block} for {format}");

        var writer = new GgufWriter();
        writer.AddMetadata("general.architecture", "llama");
        writer.AddMetadata("general.name", $"kiln-synthetic-{shape.Name}-{format.ToString().ToLowerInvariant()}");
        writer.AddMetadata("general.alignment", (uint)writer.Alignment);
        writer.AddMetadata("general.file_type", FileType(format));
        writer.AddMetadata("llama.context_length", (uint)shape.ContextLength);
        writer.AddMetadata("llama.embedding_length", (uint)shape.Dim);
        writer.AddMetadata("llama.feed_forward_length", (uint)shape.Hidden);
        writer.AddMetadata("llama.block_count", (uint)shape.Layers);
        writer.AddMetadata("llama.attention.head_count", (uint)shape.Heads);
        writer.AddMetadata("llama.attention.head_count_kv", (uint)shape.KvHeads);
        writer.AddMetadata("llama.rope.dimension_count", (uint)shape.HeadDim);
        writer.AddMetadata("llama.rope.freq_base", 10000f);
        writer.AddMetadata("llama.attention.layer_norm_rms_epsilon", 1e-5f);
        writer.AddMetadata("llama.vocab_size", (uint)shape.Vocab);

        var (tokens, scores, types) = BuildVocabulary(shape.Vocab);
        writer.AddMetadata("tokenizer.ggml.model", "llama");
        writer.AddMetadata("tokenizer.ggml.tokens", tokens);
        writer.AddMetadata("tokenizer.ggml.scores", scores);
        writer.AddMetadata("tokenizer.ggml.token_type", types);
        writer.AddMetadata("tokenizer.ggml.unknown_token_id", 0u);
        writer.AddMetadata("tokenizer.ggml.bos_token_id", 1u);
        writer.AddMetadata("tokenizer.ggml.eos_token_id", 2u);
        writer.AddMetadata("tokenizer.ggml.add_bos_token", true);
        writer.AddMetadata("tokenizer.ggml.add_eos_token", false);

        var random = new Gaussian(seed);
        int tensorCount = 2 + (shape.TiedOutput ? 0 : 1) + 9 * shape.Layers, done = 0;
        void Add(string name, GgmlType type, float std, long inner, long outer = 0)
        {
            long count = outer == 0 ? inner : inner * outer;
            var values = new float[count];
            if (std == 0) Array.Fill(values, 1f); // norm weights
            else random.Fill(values, std);
            if (outer == 0) writer.AddTensor(name, type, values, inner);
            else writer.AddTensor(name, type, values, inner, outer);
            progress?.Invoke($"[{++done,3}/{tensorCount}] {name} {type} [{inner}{(outer == 0 ? "" : $", {outer}")}]");
        }

        float Linear(int fanIn) => scales.LinearGain / MathF.Sqrt(fanIn);
        float logitStd = scales.LogitScale / MathF.Sqrt(shape.Dim);
        int qDim = shape.Heads * shape.HeadDim;
        // A tied embedding doubles as the output matrix, so it takes the output's scale; the RMSNorm that follows
        // it makes the embedding's own scale irrelevant to the first layer.
        Add("token_embd.weight", format, shape.TiedOutput ? logitStd : scales.EmbeddingStd, shape.Dim, shape.Vocab);
        for (int layer = 0; layer < shape.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            Add(p + "attn_norm.weight", GgmlType.F32, 0, shape.Dim);
            Add(p + "attn_q.weight", format, Linear(shape.Dim), shape.Dim, qDim);
            Add(p + "attn_k.weight", format, Linear(shape.Dim), shape.Dim, shape.KvDim);
            Add(p + "attn_v.weight", format, Linear(shape.Dim), shape.Dim, shape.KvDim);
            Add(p + "attn_output.weight", format, Linear(qDim), qDim, shape.Dim);
            Add(p + "ffn_norm.weight", GgmlType.F32, 0, shape.Dim);
            Add(p + "ffn_gate.weight", format, Linear(shape.Dim), shape.Dim, shape.Hidden);
            Add(p + "ffn_up.weight", format, Linear(shape.Dim), shape.Dim, shape.Hidden);
            Add(p + "ffn_down.weight", format, Linear(shape.Hidden), shape.Hidden, shape.Dim);
        }
        Add("output_norm.weight", GgmlType.F32, 0, shape.Dim);
        if (!shape.TiedOutput) Add("output.weight", format, logitStd, shape.Dim, shape.Vocab);
        return writer;
    }

    /// <summary>
    /// A valid SentencePiece vocabulary of <paramref name="size"/> unique pieces: &lt;unk&gt; (unknown), &lt;s&gt; and
    /// &lt;/s&gt; (control), the 256 byte tokens &lt;0x00&gt;…&lt;0xFF&gt;, then "▁a", "a", "▁b", … "▁aa", "aa", … by
    /// increasing length. Scores fall with rank, as a trained model's do. llama.cpp asserts on a duplicate piece.
    /// </summary>
    public static (string[] Tokens, float[] Scores, int[] Types) BuildVocabulary(int size)
    {
        const int Normal = 1, Unknown = 2, Control = 3, Byte = 6;
        if (size < 259 + 26) throw new ArgumentOutOfRangeException(nameof(size), size, "a vocabulary needs at least 285 tokens");
        var tokens = new string[size];
        var scores = new float[size];
        var types = new int[size];
        tokens[0] = "<unk>"; types[0] = Unknown;
        tokens[1] = "<s>"; types[1] = Control;
        tokens[2] = "</s>"; types[2] = Control;
        for (int b = 0; b < 256; b++) { tokens[3 + b] = $"<0x{b:X2}>"; types[3 + b] = Byte; }

        int next = 259;
        var buffer = new char[8];
        for (int length = 1; next < size; length++)
        {
            if (length > 6) throw new InvalidOperationException("vocabulary too large for the piece generator");
            long combinations = (long)Math.Pow(26, length);
            for (long index = 0; index < combinations && next < size; index++)
            {
                long rest = index;
                for (int i = length - 1; i >= 0; i--) { buffer[i] = (char)('a' + rest % 26); rest /= 26; }
                string piece = new(buffer, 0, length);
                foreach (string token in (ReadOnlySpan<string>)["\u2581" + piece, piece])
                {
                    if (next == size) break;
                    tokens[next] = token;
                    scores[next] = -(next - 259);
                    types[next] = Normal;
                    next++;
                }
            }
        }
        return (tokens, scores, types);
    }

    /// <summary>Seeded normal samples (Box–Muller over xoshiro-quality <see cref="Random"/>).</summary>
    private sealed class Gaussian(int seed)
    {
        private readonly Random _random = new(seed);

        public void Fill(Span<float> values, float std)
        {
            for (int i = 0; i < values.Length; i += 2)
            {
                double u1 = 1.0 - _random.NextDouble(), u2 = _random.NextDouble();
                double r = Math.Sqrt(-2.0 * Math.Log(u1)) * std;
                values[i] = (float)(r * Math.Cos(2 * Math.PI * u2));
                if (i + 1 < values.Length) values[i + 1] = (float)(r * Math.Sin(2 * Math.PI * u2));
            }
        }
    }
}
