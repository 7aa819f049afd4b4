using Kiln.Bench;
using Kiln.Loading;
using LLama.Native;
using Xunit.Abstractions;

namespace Kiln.PeerTests;

/// <summary>
/// Every architecture's synthetic file against llama.cpp (LLamaSharp 0.30.0): llama.cpp loads and evaluates each
/// one, reads it as the family it claims to be, and — for each architecture Kiln has a definition of — Kiln's logits
/// agree with llama.cpp's at every position of a teacher-forced sequence (an encoder's pooled embeddings, for BERT).
/// </summary>
public sealed class ArchitectureTests(ITestOutputHelper output)
{
    private const int Seed = 5;
    private const int Positions = 32;

    /// <summary>
    /// Kiln against llama.cpp, per architecture and format: F32 and F16 to 1e-2, Q8_0 to 5e-2, every compared argmax
    /// equal. A new architecture joins with its lines here once samples/Models has its definition. F16 and Q8_0 files
    /// are drawn with smaller logits (<see cref="QuantizedScales"/>): llama.cpp rounds activations to fp16 before an F16
    /// matmul (Kiln keeps them float32), and Gemma-2's and GPT-2's GELU to an fp16 table, noises that grow with the
    /// logits' magnitude. (Q8 activations are quantized alike by both engines, fp16 scales included: with an exact
    /// GELU, Q8_0 files agree to float rounding.)
    /// </summary>
    [Theory]
    [InlineData("llama", "f32", 1e-2)]
    [InlineData("llama", "f16", 1e-2)]
    [InlineData("llama", "q8_0", 5e-2)]
    [InlineData("gpt2", "f32", 1e-2)]
    [InlineData("gpt2", "f16", 1e-2)]
    [InlineData("gpt2", "q8_0", 5e-2)]
    [InlineData("qwen2", "f32", 1e-2)]
    [InlineData("qwen2", "f16", 1e-2)]
    [InlineData("qwen2", "q8_0", 5e-2)]
    [InlineData("qwen3", "f32", 1e-2)]
    [InlineData("qwen3", "f16", 1e-2)]
    [InlineData("qwen3", "q8_0", 5e-2)]
    [InlineData("gemma2", "f32", 1e-2)]
    [InlineData("gemma2", "f16", 1e-2)]
    [InlineData("gemma2", "q8_0", 5e-2)]
    [InlineData("phi3", "f32", 1e-2)]
    [InlineData("phi3", "f16", 1e-2)]
    [InlineData("phi3", "q8_0", 5e-2)]
    [InlineData("mamba", "f32", 1e-4)]
    [InlineData("mamba", "f16", 1e-2)]
    [InlineData("mamba", "q8_0", 5e-2)]
    [InlineData("jamba", "f32", 1e-4)]
    [InlineData("jamba", "f16", 1e-2)]
    [InlineData("jamba", "q8_0", 5e-2)]
    public void KilnAgreesWithLlamaCppAtEveryPosition(string architecture, string format, double tolerance)
    {
        using var file = new TemporaryModel(architecture, format, format == "f32" ? null : QuantizedScales);
        var result = Agreement.Run(file.Path, Positions, SideBySide.Threads);
        output.WriteLine($"{architecture} tiny {format} (seed {Seed}): {result.Describe()}");

        Assert.True(result.WorstDiff <= tolerance, $"max |Δlogit| {result.WorstDiff:G3} exceeds {tolerance:G3}: {result.Summary()}");
        Assert.True(result.ArgmaxCompared >= Positions / 2, $"only {result.ArgmaxCompared} positions had a clear argmax: {result.Summary()}");
        Assert.Equal(result.ArgmaxCompared, result.ArgmaxAgree);
    }

    /// <summary>
    /// The encoder: Kiln's BERT (bound from the synthetic "bert" GGUF, tokenizer and all, through the catalog's
    /// embedding generator) against llama.cpp's bert with its pooled embeddings (mean, as the file says), four
    /// sequences of 32, 16, 5 and 2 tokens packed in one batch, each L2-normalized. The bounds leave room for
    /// llama.cpp's GELU, an fp16 table (Kiln's is exact erf): measured 9e-5 (F32), 1.4e-4 (F16), 2.1e-3 (Q8_0).
    /// </summary>
    [Theory]
    [InlineData("f32", 1e-3, 0.99999)]
    [InlineData("f16", 1e-3, 0.99999)]
    [InlineData("q8_0", 1e-2, 0.9999)]
    public void KilnsEmbeddingsAgreeWithLlamaCpps(string format, double tolerance, double minCosine)
    {
        using var file = new TemporaryModel("bert", format);
        var result = EmbeddingAgreement.Run(file.Path, Positions, SideBySide.Threads);
        output.WriteLine($"bert tiny {format} (seed {Seed}): {result.Describe()}");
        Assert.Equal("mean", result.Pooling);
        Assert.True(result.WorstDiff <= tolerance, $"max |Δ| {result.WorstDiff:G3} exceeds {tolerance:G3}: {result.Summary()}");
        Assert.True(result.LowestCosine >= minCosine, $"cosine {result.LowestCosine:F8} below {minCosine}: {result.Summary()}");
    }

    /// <summary>
    /// llama.cpp reads the synthetic BERT as its family: a WordPiece vocabulary, its layers; and its pooled embeddings
    /// are finite and differ between sequences. (That it reads attention.causal false shows in the agreement above:
    /// causal attention would move every sequence's embedding.)
    /// </summary>
    [Fact]
    public void LlamaCppReadsTheSyntheticBertAsItsFamily()
    {
        using var file = new TemporaryModel("bert", "f32");
        var arch = SyntheticModel.Architecture("bert");
        using var weights = LlamaCpp.LoadWeights(file.Path, SideBySide.Threads);
        var handle = weights.NativeHandle;
        output.WriteLine($"bert tiny f32: {handle.Description}; vocab {weights.Vocab.Type} ({weights.Vocab.Count})");
        Assert.Equal(LLamaVocabType.WordPiece, weights.Vocab.Type);
        Assert.Equal(arch.Tiny.Vocab, weights.Vocab.Count);
        Assert.Equal(arch.Tiny.Layers, handle.LayerCount);

        int[][] sequences = [[WordPieceVocabulary.Cls, 10, 11, 12, WordPieceVocabulary.Sep], [WordPieceVocabulary.Cls, 40, 41, WordPieceVocabulary.Sep]];
        float[][] embeddings = EmbeddingAgreement.LlamaCppEmbeddings(weights, sequences, SideBySide.Threads);
        Assert.All(embeddings, e => Assert.Equal(arch.Tiny.Dim, e.Length));
        Assert.All(embeddings.SelectMany(e => e), v => Assert.True(float.IsFinite(v), $"llama.cpp produced a non-finite value {v}"));
        double difference = embeddings[0].Zip(embeddings[1], (a, b) => Math.Abs(a - b)).Max();
        Assert.True(difference > 0.01, $"two different sequences' embeddings differ by only {difference}");
    }

    /// <summary>
    /// llama.cpp loads every architecture's synthetic file and evaluates a 32-token sequence in one batch: its logits
    /// are finite and vary, by token and by position. This proves the files valid independent of Kiln. It also
    /// checks that llama.cpp reads each as its family: rope kind, sliding-window layers, layer count, vocabulary kind.
    /// </summary>
    [Theory]
    [MemberData(nameof(EveryArchitectureAndFormat))]
    public void LlamaCppRunsTheSyntheticFile(string architecture, string format)
    {
        using var file = new TemporaryModel(architecture, format);
        var arch = SyntheticModel.Architecture(architecture);
        using var weights = LlamaCpp.LoadWeights(file.Path, SideBySide.Threads);
        using var model = ModelFile.Open(file.Path);
        var vocab = weights.Vocab;
        int bos = vocab.ShouldAddBOS && vocab.BOS is { } token ? (int)token : -1;
        int[] tokens = Agreement.TokenSequence(model, vocab.Count, Positions, bos);
        float[] logits = Agreement.LlamaCppLogits(weights, tokens, SideBySide.Threads);

        var handle = weights.NativeHandle;
        output.WriteLine($"{architecture} tiny {format}: {handle.Description}; rope type {(int)handle.RopeType}, sliding window {handle.SWACount}, vocab {vocab.Type} ({vocab.Count}), add BOS {vocab.ShouldAddBOS}");
        Assert.Equal(arch.Tiny.Vocab, vocab.Count);
        Assert.Equal(arch.Tiny.Layers, handle.LayerCount);
        Assert.Equal(ExpectedRope(architecture), (int)handle.RopeType);
        // llama_model_n_swa: the window; 0 for phi3 too, whose file names one (llama.cpp switches Phi-3's SWA off).
        Assert.Equal(architecture == "gemma2" ? arch.Tiny.SlidingWindow : 0, (int)handle.SWACount);
        Assert.Equal(arch.Vocabulary is ByteLevelBpeVocabulary ? LLamaVocabType.BytePairEncoding : LLamaVocabType.SentencePiece, vocab.Type);
        Assert.Equal(arch.Vocabulary.AddBos, vocab.ShouldAddBOS);

        Assert.All(logits, v => Assert.True(float.IsFinite(v), $"llama.cpp produced a non-finite logit {v}"));
        int n = vocab.Count;
        for (int p = 0; p < Positions; p++)
        {
            var row = logits.AsSpan(p * n, n).ToArray();
            float spread = row.Max() - row.Min();
            Assert.True(spread > 0.5f, $"position {p}: logits spread only {spread} (all equal?)");
        }
        double positionDifference = 0;
        for (int i = 0; i < n; i++) positionDifference = Math.Max(positionDifference, Math.Abs(logits[i] - logits[(Positions - 1) * n + i]));
        Assert.True(positionDifference > 0.1, $"first and last positions' logits differ by only {positionDifference}");
    }

    /// <summary>
    /// The sliding-window rule, measured: a one-layer Gemma-2 whose every layer slides (sliding_window_pattern 0), a
    /// window of 8, and one token changed at position 4. Logits change exactly at positions 4…11 and are bit-identical
    /// from 12 on: a key at p is visible to a query at q iff q − p &lt; window (llama_hparams::is_masked_swa).
    /// </summary>
    [Fact]
    public void LlamaCppSlidingWindowSeesExactlyTheLastWindowPositions()
    {
        const int Window = 8, Changed = 4, Length = 24;
        var gemma = SyntheticModel.Architecture("gemma2");
        var shape = gemma.Tiny with { Name = "window", Layers = 1, SlidingWindow = Window };
        using var file = new TemporaryModel("gemma2", "f32", shape: shape, amend: writer => writer.AddMetadata("gemma2.attention.sliding_window_pattern", 0u));
        using var weights = LlamaCpp.LoadWeights(file.Path, SideBySide.Threads);
        Assert.Equal(Window, (int)weights.NativeHandle.SWACount);

        int[] tokens = [.. Enumerable.Range(0, Length).Select(i => 300 + i % 17)];
        int[] changed = [.. tokens];
        changed[Changed] = 259;
        float[] before = Agreement.LlamaCppLogits(weights, tokens, SideBySide.Threads);
        float[] after = Agreement.LlamaCppLogits(weights, changed, SideBySide.Threads);

        int n = shape.Vocab;
        var moved = new double[Length];
        for (int q = 0; q < Length; q++)
            for (int i = 0; i < n; i++) moved[q] = Math.Max(moved[q], Math.Abs(before[q * n + i] - after[q * n + i]));
        output.WriteLine($"window {Window}, token {Changed} changed; max |Δlogit| by position: {string.Join(" ", moved.Select(d => d.ToString("G2")))}");
        for (int q = 0; q < Length; q++)
        {
            bool visible = q >= Changed && q - Changed < Window;
            if (visible) Assert.True(moved[q] > 1e-4, $"position {q} sees position {Changed} (q − p = {q - Changed} < {Window}) but its logits did not move");
            else Assert.True(moved[q] == 0, $"position {q} must not see position {Changed} (q − p = {q - Changed}), yet its logits moved by {moved[q]:G3}");
        }
    }

    /// <summary>
    /// The byte-level BPE vocabulary at the 15m/110m size: unique tokens, GPT-2's 256 byte characters first, every
    /// merge "a b" joining two earlier tokens into the token it names, only byte characters outside the specials
    /// (llama.cpp decodes every non-control token through that alphabet), specials last and of control type.
    /// </summary>
    [Fact]
    public void ByteLevelBpeVocabularyIsConsistent()
    {
        string[] specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
        var (tokens, types, merges) = ByteLevelBpeVocabulary.Build(32000, specials);
        var alphabet = ByteLevelBpeVocabulary.ByteAlphabet();
        var id = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < tokens.Length; i++) Assert.True(id.TryAdd(tokens[i], i), $"token '{tokens[i]}' repeats");

        Assert.Equal(256, alphabet.Select(a => a.Byte).Distinct().Count());
        Assert.Equal("!", tokens[0]);
        Assert.Equal("\u0120", tokens[alphabet.ToList().FindIndex(a => a.Byte == (byte)' ')]); // 'Ġ'
        var byteChars = alphabet.Select(a => a.Char).ToHashSet();
        Assert.Equal(32000 - 256 - specials.Length, merges.Length);
        for (int m = 0; m < merges.Length; m++)
        {
            int merged = 256 + m;
            string[] parts = merges[m].Split(' ');
            Assert.Equal(2, parts.Length);
            Assert.True(id[parts[0]] < merged && id[parts[1]] < merged, $"merge {m} '{merges[m]}' uses a later token");
            Assert.Equal(parts[0] + parts[1], tokens[merged]);
            Assert.All(tokens[merged], c => Assert.Contains(c, byteChars));
        }
        for (int i = 0; i < specials.Length; i++)
        {
            Assert.Equal(specials[i], tokens[32000 - specials.Length + i]);
            Assert.Equal(SyntheticVocabulary.Control, types[32000 - specials.Length + i]);
        }
        Assert.All(types.Take(32000 - specials.Length), t => Assert.Equal(SyntheticVocabulary.Normal, t));
    }

    public static TheoryData<string, string> EveryArchitectureAndFormat()
    {
        var data = new TheoryData<string, string>();
        foreach (var architecture in SyntheticModel.Architectures)
        {
            if (architecture.IsEncoder) continue; // no logits: LlamaCppReadsTheSyntheticBertAsItsFamily
            foreach (string format in (ReadOnlySpan<string>)["f32", "q8_0"])
                data.Add(architecture.Name, format);
        }
        return data;
    }

    /// <summary>llama.h's llama_rope_type: NONE −1, NORM 0 (adjacent pairs), NEOX 2 (pairs offset by n_rot/2).</summary>
    private static int ExpectedRope(string architecture) => architecture switch
    {
        "llama" => 0,
        "gpt2" or "mamba" or "jamba" => -1, // jamba: attention without rope
        _ => 2, // qwen2, qwen3, gemma2, phi3
    };

    /// <summary>F16 and Q8_0 files' scales: logits of unit size (the 15m shape's default, 3, puts fp16-table GELU noise near 0.3 in Q8_0).</summary>
    private static readonly SyntheticModel.Scales QuantizedScales = new(LinearGain: 0.5f, LogitScale: 1f);

    /// <summary>An architecture's synthetic file (its tiny shape unless given) in a temporary directory, deleted on dispose.</summary>
    private sealed class TemporaryModel : IDisposable
    {
        private readonly string _directory;

        public TemporaryModel(string architecture, string format, SyntheticModel.Scales? scales = null, SyntheticShape? shape = null, Action<GgufWriter>? amend = null)
        {
            _directory = Directory.CreateTempSubdirectory("kiln-arch-").FullName;
            var arch = SyntheticModel.Architecture(architecture);
            shape ??= arch.Tiny;
            Path = System.IO.Path.Combine(_directory, $"{architecture}-{shape.Name}-{format}.gguf");
            var writer = SyntheticModel.Build(arch, shape, SyntheticModel.ParseFormat(format), Seed, scales);
            amend?.Invoke(writer);
            writer.Write(Path);
        }

        public string Path { get; }

        public void Dispose() => Directory.Delete(_directory, recursive: true);
    }
}
