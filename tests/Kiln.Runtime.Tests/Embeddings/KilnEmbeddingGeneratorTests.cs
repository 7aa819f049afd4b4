using System.Text;
using Kiln.Embeddings;
using Kiln.Loading;
using Kiln.Tokenization;

namespace Kiln.Runtime.Tests.Embeddings;

/// <summary>
/// KilnEmbeddingGenerator over a recording plan whose "embedding" of a sequence is its own description (sum of ids,
/// length, first id): each vector shows which sequence it came from, and the plan records every step it ran. Held
/// steps let calls arrive while one runs, without timing.
/// </summary>
public sealed class KilnEmbeddingGeneratorTests
{
    // ids: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, hello 5, world 6, ##s 7
    private static BertWordPiece Tokenizer() =>
        BertWordPiece.FromVocabulary(new MemoryStream(Encoding.UTF8.GetBytes("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n##s\n")));

    [Fact]
    public async Task TextsAreEmbeddedInOrderPackedIntoStepsOfThePlansTokens()
    {
        var plan = new RecordingPlan(maxTokensPerStep: 8);
        using var generator = new KilnEmbeddingGenerator(plan, Tokenizer(), maxSequenceTokens: 6, "test");
        string[] texts = ["hello", "worlds", "hello world", "", "hello hello hello hello hello"];
        var embeddings = await generator.GenerateAsync(texts);

        int[][] ids = [[2, 5, 3], [2, 6, 7, 3], [2, 5, 6, 3], [2, 3], [2, 5, 5, 5, 5, 3]]; // the last cut to 6 tokens
        Assert.Equal(texts.Length, embeddings.Count);
        for (int i = 0; i < ids.Length; i++) Assert.Equal(RecordingPlan.Describe(ids[i]), embeddings[i].Vector.ToArray());
        Assert.Equal(ids.Sum(s => s.Length), embeddings.Usage!.InputTokenCount);
        Assert.All(plan.StepTokens, count => Assert.InRange(count, 1, 8));
        Assert.Equal(ids.Sum(s => s.Length), plan.StepTokens.Sum());
        Assert.Equal(8, generator.VocabularySize); // vocab.txt's lines
    }

    [Fact]
    public async Task TokenIdsOutsideTheModelsLimitsAreRefused()
    {
        using var generator = new KilnEmbeddingGenerator(new RecordingPlan(8), Tokenizer(), maxSequenceTokens: 4, "test");
        Assert.Equal(8, generator.VocabularySize);
        Assert.Equal(RecordingPlan.Describe([2, 7, 3]), (await generator.EmbedAsync([[2, 7, 3]]))[0]);
        Assert.Empty(await generator.EmbedAsync([]));
        await Assert.ThrowsAsync<ArgumentException>(() => generator.EmbedAsync([[2, 3], []]));
        await Assert.ThrowsAsync<ArgumentException>(() => generator.EmbedAsync([[2, 5, 5, 5, 3]]));
        var outside = await Assert.ThrowsAsync<ArgumentException>(() => generator.EmbedAsync([[2, 8, 3]]));
        Assert.Contains("token id 8", outside.Message);
        await Assert.ThrowsAsync<ArgumentException>(() => generator.EmbedAsync([[2, -1, 3]]));
    }

    [Fact]
    public async Task CallsArrivingDuringAStepShareTheNextOneAndEachGetsItsOwnVectors()
    {
        var plan = new RecordingPlan(maxTokensPerStep: 128) { HoldFirstStep = true };
        using var generator = new KilnEmbeddingGenerator(plan, Tokenizer(), maxSequenceTokens: 8, "test");
        var first = generator.EmbedAsync([[2, 5, 3]]);
        Assert.True(plan.FirstStepStarted.Wait(TimeSpan.FromSeconds(30)), "the first step never started");

        // Ten calls queue while the first step runs (EmbedAsync has queued its call when it returns).
        var waiting = Enumerable.Range(0, 10).Select(i => generator.EmbedAsync([[2, 5, 3], [2, 6, i % 2 == 0 ? 6 : 7, 3]])).ToList();
        plan.Release();
        Assert.Equal(RecordingPlan.Describe([2, 5, 3]), (await first)[0]);
        for (int i = 0; i < waiting.Count; i++)
        {
            var vectors = await waiting[i];
            Assert.Equal(RecordingPlan.Describe([2, 5, 3]), vectors[0]);
            Assert.Equal(RecordingPlan.Describe([2, 6, i % 2 == 0 ? 6 : 7, 3]), vectors[1]);
        }
        Assert.Equal([3, 70], plan.StepTokens); // the first call's step, then all ten calls' 70 tokens in one
    }

    [Fact]
    public async Task ACancelledCallLeavesTheOthersAndADisposedGeneratorFailsWhatWaits()
    {
        var plan = new RecordingPlan(maxTokensPerStep: 64) { HoldFirstStep = true };
        var generator = new KilnEmbeddingGenerator(plan, Tokenizer(), maxSequenceTokens: 8, "test");
        var first = generator.EmbedAsync([[2, 5, 3]]);
        Assert.True(plan.FirstStepStarted.Wait(TimeSpan.FromSeconds(30)), "the first step never started");
        using var cancel = new CancellationTokenSource();
        var cancelled = generator.EmbedAsync([[2, 6, 3]], cancel.Token);
        var kept = generator.EmbedAsync([[2, 7, 3]]);
        cancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled);
        plan.Release();
        await first;
        Assert.Equal(RecordingPlan.Describe([2, 7, 3]), (await kept)[0]);
        Assert.Equal([3, 3], plan.StepTokens); // the cancelled call's sequence never ran

        plan.HoldFirstStep = true;
        plan.Reset();
        var running = generator.EmbedAsync([[2, 5, 3]]);
        Assert.True(plan.FirstStepStarted.Wait(TimeSpan.FromSeconds(30)), "the step never started");
        var queued = generator.EmbedAsync([[2, 6, 3]]);
        generator.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => queued);
        Assert.False(plan.Disposed, "the plan was disposed under a running step");
        plan.Release();
        await running; // the step that was running finishes
        await Assert.ThrowsAsync<ObjectDisposedException>(() => generator.EmbedAsync([[2, 3]]));
        for (var deadline = DateTime.UtcNow.AddSeconds(30); !plan.Disposed && DateTime.UtcNow < deadline;) await Task.Yield();
        Assert.True(plan.Disposed, "the runner never disposed the plan once its step ended");
    }

    [Fact]
    public async Task AFailingStepFailsItsCallsAndTheNextCallsRun()
    {
        var plan = new RecordingPlan(maxTokensPerStep: 64) { FailNextStep = true };
        using var generator = new KilnEmbeddingGenerator(plan, Tokenizer(), maxSequenceTokens: 8, "test");
        await Assert.ThrowsAsync<InvalidOperationException>(() => generator.EmbedAsync([[2, 5, 3]]));
        Assert.Equal(RecordingPlan.Describe([2, 6, 3]), (await generator.EmbedAsync([[2, 6, 3]]))[0]);
    }

    [Fact]
    public void AGgufVocabularyInLlamaCppsSpellingIsReadAsWordPiece()
    {
        string path = WriteBertVocabulary();
        try
        {
            using var file = ModelFile.Open(path);
            var tokenizer = BertWordPiece.FromModelFile(file);
            Assert.Equal(8, tokenizer.VocabularySize);
            Assert.Equal([2, 5, 6, 7, 3], tokenizer.Encode("Hello worlds", 16));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData("tokenizer.ggml.seperator_token_id", 5u, "tokenizer.ggml.seperator_token_id")]
    [InlineData("tokenizer.ggml.cls_token_id", 0u, "tokenizer.ggml.cls_token_id")]
    [InlineData("tokenizer.ggml.model", "llama", "tokenizer.ggml.model")]
    public void AGgufVocabularyThatContradictsItselfIsAModelLoadException(string key, object value, string field)
    {
        string path = WriteBertVocabulary(key, value);
        try
        {
            using var file = ModelFile.Open(path);
            var error = Assert.Throws<ModelLoadException>(() => BertWordPiece.FromModelFile(file));
            Assert.Equal(field, error.Field);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>A GGUF holding only a bert vocabulary as llama.cpp's converter writes one, with <paramref name="key"/> set to <paramref name="value"/>.</summary>
    private static string WriteBertVocabulary(string? key = null, object? value = null)
    {
        var metadata = new Dictionary<string, object>
        {
            ["general.architecture"] = "bert",
            ["tokenizer.ggml.model"] = "bert",
            ["tokenizer.ggml.tokens"] = new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "\u2581hello", "\u2581world", "s" },
            ["tokenizer.ggml.token_type"] = new[] { 3, 2, 3, 3, 3, 1, 1, 1 },
            ["tokenizer.ggml.cls_token_id"] = 2u,
            ["tokenizer.ggml.seperator_token_id"] = 3u,
        };
        if (key is not null) metadata[key] = value!;
        var writer = new GgufWriter();
        foreach (var (name, entry) in metadata) writer.AddMetadata(name, entry);
        string path = Path.Combine(Path.GetTempPath(), $"kiln-bert-vocab-{Guid.NewGuid():N}.gguf");
        writer.Write(path);
        return path;
    }

    /// <summary>A plan whose output row for each sequence is [sum of its ids, its length, its first id]; records each step's token count.</summary>
    private sealed class RecordingPlan(int maxTokensPerStep) : ICompiledPlan
    {
        private readonly ManualResetEventSlim _released = new();
        private readonly List<int> _stepTokens = [];

        public static float[] Describe(int[] ids) => [ids.Sum(), ids.Length, ids[0]];

        public bool HoldFirstStep { get; set; }

        public bool FailNextStep { get; set; }

        public ManualResetEventSlim FirstStepStarted { get; private set; } = new();

        public bool Disposed { get; private set; }

        public int[] StepTokens
        {
            get { lock (_stepTokens) return [.. _stepTokens]; }
        }

        public int MaxTokensPerStep => maxTokensPerStep;

        public int VocabSize => 3;

        public string FusionReport => "";

        public void Release() => _released.Set();

        public void Reset()
        {
            lock (_stepTokens) _stepTokens.Clear();
            FirstStepStarted = new ManualResetEventSlim();
            _released.Reset();
        }

        public void Step(ReadOnlySpan<int> tokens, AttentionContext context, Span<float> output)
        {
            if (HoldFirstStep)
            {
                HoldFirstStep = false;
                FirstStepStarted.Set();
                if (!_released.Wait(TimeSpan.FromSeconds(30))) throw new TimeoutException("The test never released the held step.");
            }
            if (FailNextStep)
            {
                FailNextStep = false;
                throw new InvalidOperationException("the step failed");
            }
            lock (_stepTokens) _stepTokens.Add(tokens.Length);
            var starts = context.QueryIndptr;
            for (int s = 0; s < context.SequenceCount; s++)
                Describe(tokens[starts[s]..starts[s + 1]].ToArray()).CopyTo(output.Slice(s * 3, 3));
        }

        public void Dispose() => Disposed = true;
    }
}
