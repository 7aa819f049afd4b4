using Kiln.Loading;

namespace Kiln.Bench;

/// <summary>
/// The shape of a synthetic model: real model dimensions, random weights. <paramref name="KeyLength"/> is the
/// attention head width when it differs from Dim / Heads (Qwen3, Gemma-2); <paramref name="SlidingWindow"/> is the
/// window of an architecture with sliding-window layers (Gemma-2), 0 otherwise.
/// </summary>
public sealed record SyntheticShape(
    string Name, int Dim, int Hidden, int Layers, int Heads, int KvHeads, int Vocab, bool TiedOutput,
    int ContextLength = 2048, int KeyLength = 0, int SlidingWindow = 0)
{
    public int HeadDim => KeyLength > 0 ? KeyLength : Dim / Heads;

    public int QDim => Heads * HeadDim;

    public int KvDim => KvHeads * HeadDim;

    /// <summary>One line for logs: the dimensions that differ between families.</summary>
    public string Describe() =>
        $"{Name}: dim {Dim}, ffn {Hidden}, {Layers} layers, {Heads} heads ({KvHeads} KV) of {HeadDim}, vocab {Vocab}, " +
        $"{(TiedOutput ? "tied" : "untied")} output{(SlidingWindow > 0 ? $", window {SlidingWindow}" : "")}";
}

/// <summary>
/// Writes synthetic GGUF v3 files that llama.cpp and Kiln both load: an architecture's full metadata, a valid
/// vocabulary of its family's kind, and seeded Gaussian weights scaled so activations stay near unit RMS. Each
/// architecture is one short description (<see cref="SyntheticArchitecture"/>) composed from the shared pieces of
/// <see cref="SyntheticModelBuilder"/>, as llama.cpp's per-architecture builders are.
/// </summary>
public static class SyntheticModel
{
    /// <summary>Weight scales. Linear weights are N(0, Gain/√fanIn); the output (or tied embedding) is N(0, LogitScale/√dim).</summary>
    public sealed record Scales(float LinearGain = 1f, float LogitScale = 3f, float EmbeddingStd = 1f);

    /// <summary>
    /// Magnitude pruning of every matrix a plan packs (the Linear weights and the output, or the tied embedding):
    /// <paramref name="Pattern"/> with, for blocks, <paramref name="KeepFraction"/> of the 8×32 tiles kept.
    /// </summary>
    public sealed record Pruning(SparsePattern Pattern, double KeepFraction = 1)
    {
        /// <summary>"2:4" or "block:Z" (Z: the fraction of zero tiles, in [0, 1)).</summary>
        public static Pruning? Parse(string text)
        {
            if (text == "2:4") return new Pruning(SparsePattern.TwoFour);
            if (text.StartsWith("block:", StringComparison.Ordinal)
                && double.TryParse(text.AsSpan(6), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double zeros)
                && zeros is >= 0 and < 1)
                return new Pruning(SparsePattern.Blocks, 1 - zeros);
            return null;
        }
    }

    /// <summary>Every architecture llama.cpp also runs (the peer checks' list), by its general.architecture name.</summary>
    public static IReadOnlyList<SyntheticArchitecture> Architectures { get; } =
        [new LlamaSynthetic(), new Gpt2Synthetic(), new Qwen2Synthetic(), new Qwen3Synthetic(), new Gemma2Synthetic(), new Phi3Synthetic(), new BertSynthetic(), new MambaSynthetic(), new JambaSynthetic()];

    /// <summary>Architectures only Kiln runs (no llama.cpp peer): checked against references of their own.</summary>
    public static IReadOnlyList<SyntheticArchitecture> KilnOnlyArchitectures { get; } = [new LstmSynthetic()];

    public static IEnumerable<string> ArchitectureNames => Architectures.Select(a => a.Name);

    /// <summary>Every name make-model writes: the peers' and Kiln's own.</summary>
    public static IEnumerable<string> AllArchitectureNames => Architectures.Concat(KilnOnlyArchitectures).Select(a => a.Name);

    public static SyntheticArchitecture? FindArchitecture(string name) =>
        Architectures.Concat(KilnOnlyArchitectures).FirstOrDefault(a => a.Name.Equals(name, StringComparison.OrdinalIgnoreCase));

    public static SyntheticArchitecture Architecture(string name) =>
        FindArchitecture(name) ?? throw new ArgumentException($"unknown architecture '{name}' (expected one of {string.Join(", ", AllArchitectureNames)})");

    public static SyntheticFormat ParseFormat(string text) => SyntheticFormat.Parse(text);

    /// <summary>Writes the model to <paramref name="path"/>. <paramref name="progress"/> gets one line per tensor.</summary>
    public static void Write(string path, SyntheticArchitecture architecture, SyntheticShape shape, SyntheticFormat format, int seed,
        Scales? scales = null, Action<string>? progress = null, Pruning? pruning = null)
    {
        var writer = Build(architecture, shape, format, seed, scales, progress, pruning);
        progress?.Invoke($"writing {path}");
        writer.Write(path);
    }

    /// <summary>Writes a Llama (today's synthetic files, byte for byte).</summary>
    public static void Write(string path, SyntheticShape shape, SyntheticFormat format, int seed, Scales? scales = null, Action<string>? progress = null) =>
        Write(path, Architecture("llama"), shape, format, seed, scales, progress);

    public static GgufWriter Build(SyntheticArchitecture architecture, SyntheticShape shape, SyntheticFormat format, int seed,
        Scales? scales = null, Action<string>? progress = null, Pruning? pruning = null)
    {
        architecture.Validate(shape);
        int block = format.BlockElements;
        foreach (int inner in architecture.MatrixRowLengths(shape))
            if (inner % block != 0)
                throw new ArgumentException($"{architecture.Name} {shape.Name}: a matrix row of {inner} values is not a multiple of {format}'s {block}-value blocks");

        if (pruning is not null && format.IsMix)
            throw new ArgumentException($"a sparse file needs a format whose blocks keep exact zeros (f32, f16, q8_0, q4_0): {format.Name}'s K-quant mins do not");
        var builder = new SyntheticModelBuilder(architecture, shape, format, seed, scales ?? new Scales(), progress, pruning);
        var writer = builder.Writer;
        writer.AddMetadata("general.architecture", architecture.Name);
        string prefix = architecture.Name == "llama" ? "" : architecture.Name + "-"; // llama keeps its old name, and so its bytes
        writer.AddMetadata("general.name", $"kiln-synthetic-{prefix}{shape.Name}-{format.Name}");
        writer.AddMetadata("general.alignment", (uint)writer.Alignment);
        writer.AddMetadata("general.file_type", format.FileType);
        builder.Hyper("context_length", (uint)shape.ContextLength);
        builder.Hyper("embedding_length", (uint)shape.Dim);
        builder.Hyper("feed_forward_length", (uint)shape.Hidden);
        builder.Hyper("block_count", (uint)shape.Layers);
        builder.Hyper("attention.head_count", (uint)shape.Heads);
        builder.Hyper("attention.head_count_kv", architecture.HeadCountKv(shape));
        architecture.AddHyperparameters(builder);
        builder.Hyper("vocab_size", (uint)shape.Vocab);
        architecture.Vocabulary.Write(writer, shape.Vocab);
        architecture.AddTensors(builder);
        return writer;
    }
}

/// <summary>
/// One architecture's synthetic file: its shapes, vocabulary, hyperparameters and tensors, composed from the
/// shared pieces of <see cref="SyntheticModelBuilder"/>. The common keys (context, widths, layers, heads,
/// vocab_size) and general.* are written for every architecture.
/// </summary>
public abstract class SyntheticArchitecture
{
    /// <summary>general.architecture.</summary>
    public abstract string Name { get; }

    public abstract SyntheticVocabulary Vocabulary { get; }

    /// <summary>The test shape: a few layers, GQA, a 320-token vocabulary; fast enough for a unit test.</summary>
    public abstract SyntheticShape Tiny { get; }

    /// <summary>Sized like llama2.c's stories15M (dim 288, 6 layers), shaped like the family.</summary>
    public abstract SyntheticShape Small { get; }

    /// <summary>Sized like llama2.c's stories110M (dim 768, 12 layers), shaped like the family.</summary>
    public abstract SyntheticShape Base { get; }

    /// <summary>Whether the file is an encoder (embeddings, no logits: compared by <see cref="EmbeddingAgreement"/>).</summary>
    public virtual bool IsEncoder => false;

    /// <summary>Standard deviation of norm weights around 1 (0: exactly 1). Random weights catch a norm whose weight is ignored.</summary>
    public virtual float NormJitter => 0.1f;

    /// <summary>Sized like TinyLlama-1.1B (dim 2048, 22 layers, GQA 32/4), for the families that have it; null otherwise.</summary>
    public virtual SyntheticShape? OneB => null;

    public SyntheticShape? Shape(string name) => name.ToLowerInvariant() switch
    {
        "tiny" => Tiny,
        "15m" => Small,
        "110m" => Base,
        "1b" or "1.1b" => OneB,
        _ => null,
    };

    public virtual void Validate(SyntheticShape shape)
    {
        if (shape.Heads <= 0 || shape.KvHeads <= 0 || shape.Heads % shape.KvHeads != 0 || shape.HeadDim % 2 != 0
            || shape.KeyLength == 0 && shape.Dim % shape.Heads != 0)
            throw new ArgumentException($"{Name} {shape.Name}: heads {shape.Heads}/{shape.KvHeads} do not fit dim {shape.Dim}");
    }

    /// <summary>{arch}.attention.head_count_kv: one count for every layer, or (a hybrid) an array with 0 for each layer without attention.</summary>
    public virtual object HeadCountKv(SyntheticShape shape) => (uint)shape.KvHeads;

    /// <summary>The row lengths (ne0) of the file's quantizable matrices: each must be whole blocks.</summary>
    public virtual IEnumerable<int> MatrixRowLengths(SyntheticShape shape) => [shape.Dim, shape.Hidden, shape.QDim];

    protected internal abstract void AddHyperparameters(SyntheticModelBuilder model);

    protected internal abstract void AddTensors(SyntheticModelBuilder model);
}

/// <summary>
/// The shared pieces an architecture's file is made of: its metadata keys and seeded tensors. Matrices are stored
/// in the file's format (per tensor for llama.cpp's K-quant mixes), norms and biases in F32 (as llama.cpp's converters write them). Draw order is the order of
/// the calls, so a description fixes its file for a seed.
/// </summary>
public sealed class SyntheticModelBuilder
{
    private readonly SyntheticArchitecture _architecture;
    private readonly SyntheticModel.Scales _scales;
    private readonly Gaussian _random;
    private readonly Action<string>? _progress;
    private readonly SyntheticModel.Pruning? _pruning;
    private int _tensors;

    internal SyntheticModelBuilder(SyntheticArchitecture architecture, SyntheticShape shape, SyntheticFormat format, int seed,
        SyntheticModel.Scales scales, Action<string>? progress, SyntheticModel.Pruning? pruning = null)
    {
        _pruning = pruning;
        _architecture = architecture;
        Shape = shape;
        Format = format;
        _scales = scales;
        _random = new Gaussian(seed);
        _progress = progress;
    }

    public GgufWriter Writer { get; } = new();

    public SyntheticShape Shape { get; }

    public SyntheticFormat Format { get; }

    /// <summary>N(0, LogitScale/√dim): the output matrix, or a tied embedding that doubles as it.</summary>
    public float LogitStd => _scales.LogitScale / MathF.Sqrt(Shape.Dim);

    /// <summary>Adds <c>{arch}.{key}</c>.</summary>
    public void Hyper(string key, object value) => Writer.AddMetadata($"{_architecture.Name}.{key}", value);

    /// <summary>A [<paramref name="rows"/> × <paramref name="inner"/>] matrix (ne = {inner, rows}) in the type the file's format gives it, N(0, std).</summary>
    public void Matrix(string name, int inner, int rows, float std) => Add(name, TypeOf(name, inner), std, mean: 0, inner, rows);

    /// <summary>
    /// The format's type for a matrix, or F32 for one whose rows are not whole blocks of it (Mamba's time-step
    /// projection, rank d_model/16): kept as llama.cpp's quantizer keeps tensors it cannot quantize, unquantized.
    /// </summary>
    private GgmlType TypeOf(string name, int inner) => inner % Format.BlockElements == 0 ? Format.TypeOf(name, Shape) : GgmlType.F32;

    /// <summary>A matrix kept in F32 whatever the file's format (one llama.cpp reads other than through a matmul or row lookup).</summary>
    public void F32Matrix(string name, int inner, int rows, float std) => Add(name, GgmlType.F32, std, mean: 0, inner, rows);

    /// <summary>A matrix a plan packs as a Linear weight: as <see cref="Matrix"/>, then pruned when the file is sparse.</summary>
    public void PackedMatrix(string name, int inner, int rows, float std)
    {
        var values = Draw(std, mean: 0, (long)inner * rows);
        if (_pruning is { } p) values = SparseWeights.Prune(new Tensor(values, rows, inner), p.Pattern, p.KeepFraction).Data;
        Put(name, TypeOf(name, inner), values, inner, rows);
    }

    /// <summary>A linear layer from <paramref name="inner"/> to <paramref name="rows"/>: N(0, gain·LinearGain/√inner).</summary>
    public void Linear(string name, int inner, int rows, float gain = 1f) => PackedMatrix(name, inner, rows, gain * _scales.LinearGain / MathF.Sqrt(inner));

    /// <summary>A norm weight: 1, or N(1, jitter) for architectures that draw them.</summary>
    public void Norm(string name, int length) => Add(name, GgmlType.F32, _architecture.NormJitter, mean: 1, length);

    /// <summary>A tensor kept in F32 whatever the file's format, N(mean, std): ne = {inner} or {inner, outer}.</summary>
    public void F32Tensor(string name, float std, float mean, long inner, long outer = 0) => Add(name, GgmlType.F32, std, mean, inner, outer);

    /// <summary>An F32 tensor of exactly <paramref name="values"/> (ne = {inner, outer}), drawing nothing.</summary>
    public void F32Values(string name, float[] values, long inner, long outer)
    {
        Writer.AddTensor(name, GgmlType.F32, values, inner, outer);
        _progress?.Invoke($"[{++_tensors,3}] {name} F32 [{inner}, {outer}]");
    }

    /// <summary>A bias, F32 N(0, std).</summary>
    public void Bias(string name, int length, float std) => Add(name, GgmlType.F32, std, mean: 0, length);

    /// <summary>token_embd: the output's scale when tied (it doubles as the output matrix), else the embedding scale.</summary>
    public void TokenEmbedding(bool tied)
    {
        if (tied) PackedMatrix("token_embd.weight", Shape.Dim, Shape.Vocab, LogitStd);
        else Matrix("token_embd.weight", Shape.Dim, Shape.Vocab, _scales.EmbeddingStd);
    }

    /// <summary>output_norm, then output.weight unless the shape ties the output to the embedding.</summary>
    public void OutputHead()
    {
        Norm("output_norm.weight", Shape.Dim);
        if (!Shape.TiedOutput) PackedMatrix("output.weight", Shape.Dim, Shape.Vocab, LogitStd);
    }

    /// <summary>Separate Q, K, V and output projections (Q and K at <paramref name="qkGain"/>), optional Q/K/V biases.</summary>
    public void Attention(string prefix, float qkvBiasStd = 0, float qkGain = 1)
    {
        Linear(prefix + "attn_q.weight", Shape.Dim, Shape.QDim, qkGain);
        if (qkvBiasStd > 0) Bias(prefix + "attn_q.bias", Shape.QDim, qkvBiasStd);
        Linear(prefix + "attn_k.weight", Shape.Dim, Shape.KvDim, qkGain);
        if (qkvBiasStd > 0) Bias(prefix + "attn_k.bias", Shape.KvDim, qkvBiasStd);
        Linear(prefix + "attn_v.weight", Shape.Dim, Shape.KvDim);
        if (qkvBiasStd > 0) Bias(prefix + "attn_v.bias", Shape.KvDim, qkvBiasStd);
        Linear(prefix + "attn_output.weight", Shape.QDim, Shape.Dim);
    }

    /// <summary>The gated FFN's three matrices: gate and up [Hidden × Dim], down [Dim × Hidden].</summary>
    public void GatedFfn(string prefix)
    {
        if (_pruning is { Pattern: SparsePattern.Blocks } blocks)
        {
            // The plan interleaves gate and up row by row: one mask for both keeps its packed blocks whole.
            float std = _scales.LinearGain / MathF.Sqrt(Shape.Dim);
            var gate = new Tensor(Draw(std, 0, (long)Shape.Dim * Shape.Hidden), Shape.Hidden, Shape.Dim);
            var up = new Tensor(Draw(std, 0, (long)Shape.Dim * Shape.Hidden), Shape.Hidden, Shape.Dim);
            var pruned = SparseWeights.PruneBlocksTogether(blocks.KeepFraction, gate, up);
            Put(prefix + "ffn_gate.weight", Format.TypeOf(prefix + "ffn_gate.weight", Shape), pruned[0].Data, Shape.Dim, Shape.Hidden);
            Put(prefix + "ffn_up.weight", Format.TypeOf(prefix + "ffn_up.weight", Shape), pruned[1].Data, Shape.Dim, Shape.Hidden);
        }
        else
        {
            Linear(prefix + "ffn_gate.weight", Shape.Dim, Shape.Hidden);
            Linear(prefix + "ffn_up.weight", Shape.Dim, Shape.Hidden);
        }
        Linear(prefix + "ffn_down.weight", Shape.Hidden, Shape.Dim);
    }

    private void Add(string name, GgmlType type, float std, float mean, long inner, long outer = 0) =>
        Put(name, type, Draw(std, mean, outer == 0 ? inner : inner * outer), inner, outer);

    private float[] Draw(float std, float mean, long count)
    {
        var values = new float[count];
        if (std == 0) Array.Fill(values, mean);
        else _random.Fill(values, std, mean);
        return values;
    }

    private void Put(string name, GgmlType type, float[] values, long inner, long outer = 0)
    {
        if (outer == 0) Writer.AddTensor(name, type, values, inner);
        else Writer.AddTensor(name, type, values, inner, outer);
        _progress?.Invoke($"[{++_tensors,3}] {name} {type} [{inner}{(outer == 0 ? "" : $", {outer}")}]");
    }

    /// <summary>Seeded normal samples (Box–Muller over <see cref="Random"/>'s seeded, platform-stable generator).</summary>
    private sealed class Gaussian(int seed)
    {
        private readonly Random _random = new(seed);

        public void Fill(Span<float> values, float std, float mean)
        {
            for (int i = 0; i < values.Length; i += 2)
            {
                double u1 = 1.0 - _random.NextDouble(), u2 = _random.NextDouble();
                double r = Math.Sqrt(-2.0 * Math.Log(u1)) * std;
                values[i] = (float)(r * Math.Cos(2 * Math.PI * u2)) + mean;
                if (i + 1 < values.Length) values[i + 1] = (float)(r * Math.Sin(2 * Math.PI * u2)) + mean;
            }
        }
    }
}
