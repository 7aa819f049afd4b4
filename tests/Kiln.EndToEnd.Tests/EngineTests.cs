using System.Diagnostics.Metrics;
using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;
using Kiln.Testing;
using static Kiln.EndToEnd.Tests.EngineTestModel;

namespace Kiln.EndToEnd.Tests;

/// <summary>The batching engine on the real stories260K model: streaming, stops, cancellation, caching, limits.</summary>
public sealed class EngineTests
{
    private static readonly StoriesReference Stories = StoriesReference.Load();

    private static EngineOptions Small(int blockSize = 4, int tokenBudget = 16, int maxRunning = 8) => new()
    {
        BlockSize = blockSize,
        TokenBudget = tokenBudget,
        MaxRunningRequests = maxRunning,
        MaxContext = 256,
        KvCacheBytes = 4 << 20,
    };

    [Fact]
    public async Task TheReadmeEngineExampleRuns()
    {
        // The README's "Serving many requests at once" code, with its console output captured.
        var model = Model;
        var tokenizer = Tokenizer;
        var cancellationToken = CancellationToken.None;
        var console = new StringWriter();
        await using var engine = new KilnEngine(model, tokens => model.Compile(new PlanOptions(tokens)), tokenizer,
            new EngineOptions { KvCacheBytes = 256 << 20, TokenBudget = 256, MaxRunningRequests = 32, KvStorage = KvStorage.F16 });
        var options = new GenerationOptions { MaxTokens = 128, Temperature = 0.8f, TopP = 0.95f, Seed = 42, StopStrings = ["\n\n"] };
        await foreach (var update in engine.GenerateAsync("Once upon a time", options, cancellationToken).Patiently())
        {
            console.Write(update.Text);
            if (update.IsFinal) console.WriteLine($"\n[{update.FinishReason}, {update.Usage!.Value.CompletionTokens} tokens]");
        }

        string printed = console.ToString();
        Assert.Matches(@"^\S[\s\S]*\n\[(Length|Stop), \d+ tokens\]\r?\n$", printed);
        // The stop string cuts the story before its first blank line.
        Assert.DoesNotContain("\n\n", printed[..printed.LastIndexOf("\n[", StringComparison.Ordinal)]);
    }

    [Theory]
    [InlineData(PlanKind.Eager)]
    [InlineData(PlanKind.Compiled)]
    public async Task OneRequestStreamsTheReferenceContinuationAndItsText(PlanKind kind)
    {
        await using var engine = CreateEngine(Small(), kind);
        var outcome = await Collect(engine.GenerateAsync("Once upon a time", new GenerationOptions { MaxTokens = 64, IgnoreEndOfSequence = true }));

        Assert.Equal(Stories.GeneratedIds, outcome.Tokens);
        Assert.Equal(Stories.Text, "Once upon a time" + outcome.Text);
        Assert.Equal(1, outcome.FinalCount);
        Assert.Equal(FinishReason.Length, outcome.Final.FinishReason);
        Assert.Equal(new GenerationUsage(Stories.PromptIds.Length, 0, 64), outcome.Final.Usage);
        Assert.All(outcome.Logprobs, l => Assert.Null(l));
        await WaitUntilIdle(engine);
    }

    [Theory]
    [InlineData(PlanKind.Eager)]
    [InlineData(PlanKind.Compiled)]
    public async Task ConcurrentRequestsEachGenerateWhatTheyGenerateAlone(PlanKind kind)
    {
        string[] prompts = ["Once upon a time", "Lily", "The cat sat on the", "One day, a big dog", "Tom and Sue went to the park. They"];
        await using var engine = CreateEngine(Small(tokenBudget: 12, maxRunning: 4), kind);
        var runs = prompts.Select(p => Collect(engine.GenerateAsync(p, new GenerationOptions { MaxTokens = 30, Logprobs = true }))).ToArray();
        var outcomes = await Task.WhenAll(runs);

        await using var alone = CreateEngine(Small(maxRunning: 1), kind);
        for (int i = 0; i < prompts.Length; i++)
        {
            int[] prompt = Tokenizer.Encode(prompts[i]);
            Assert.Equal(Reference(prompt, 30, kind: kind), outcomes[i].Tokens);
            // Bitwise the same logits, batched or alone: the logprobs computed from them match exactly.
            var single = await Collect(alone.GenerateAsync(prompt, new GenerationOptions { MaxTokens = 30, Logprobs = true }));
            Assert.Equal(single.Tokens, outcomes[i].Tokens);
            Assert.Equal(single.Logprobs, outcomes[i].Logprobs);
            Assert.All(outcomes[i].Logprobs, l => Assert.True(l <= 0));
        }
        await WaitUntilIdle(engine);
    }

    [Fact]
    public async Task AStopStringEndsTheRequestAndIsCutFromTheText()
    {
        await using var engine = CreateEngine(Small());
        var options = new GenerationOptions { MaxTokens = 64, IgnoreEndOfSequence = true, StopStrings = ["park", "never appears"] };
        var outcome = await Collect(engine.GenerateAsync("Once upon a time", options));

        string expected = Stories.Text["Once upon a time".Length..];
        expected = expected[..expected.IndexOf("park", StringComparison.Ordinal)];
        Assert.Equal(expected, outcome.Text);
        Assert.Equal(FinishReason.Stop, outcome.Final.FinishReason);
        Assert.True(outcome.Tokens.Length < 64);
        Assert.Equal(Stories.GeneratedIds[..outcome.Tokens.Length], outcome.Tokens);
        Assert.Equal(outcome.Tokens.Length, outcome.Final.Usage!.Value.CompletionTokens);
        await WaitUntilIdle(engine);
    }

    [Fact]
    public async Task AStopTokenEndsTheRequestWithoutBeingEmitted()
    {
        await using var engine = CreateEngine(Small());
        int stop = Stories.GeneratedIds[5];
        var outcome = await Collect(engine.GenerateAsync(Stories.PromptIds, new GenerationOptions { MaxTokens = 64, StopTokens = [stop] }));
        Assert.Equal(Stories.GeneratedIds[..5], outcome.Tokens);
        Assert.Equal(FinishReason.Stop, outcome.Final.FinishReason);
    }

    [Fact]
    public async Task CancellingMidStreamEndsTheRequestAndFreesItsBlocks()
    {
        var (engine, plan) = CreateHeldEngine(Small(), holdFromStep: 5);
        await using var disposeEngine = engine;
        using var cancel = new CancellationTokenSource();
        var outcome = await Collect(
            engine.GenerateAsync(Stories.PromptIds, new GenerationOptions { MaxTokens = 200, IgnoreEndOfSequence = true }, cancel.Token),
            afterToken: count =>
            {
                if (count != 3) return;
                cancel.Cancel();
                plan.Release();
            });

        Assert.Equal(FinishReason.Cancelled, outcome.Final.FinishReason);
        Assert.InRange(outcome.Tokens.Length, 3, 199);
        Assert.Equal(Stories.GeneratedIds[..Math.Min(outcome.Tokens.Length, 64)], outcome.Tokens[..Math.Min(outcome.Tokens.Length, 64)]);
        await WaitUntilIdle(engine);
    }

    [Fact]
    public async Task LeavingTheStreamEarlyCancelsTheRequest()
    {
        var (engine, plan) = CreateHeldEngine(Small(), holdFromStep: 5);
        await using var disposeEngine = engine;
        int seen = 0;
        await foreach (var update in engine.GenerateAsync(Stories.PromptIds, new GenerationOptions { MaxTokens = 200, IgnoreEndOfSequence = true }).Patiently())
        {
            if (++seen == 2) break;
        }
        plan.Release(); // leaving the loop has cancelled the request already
        var idle = await WaitUntilIdle(engine);
        Assert.True(idle.GeneratedTokens < 200, $"the abandoned request ran on: {idle}");
    }

    [Fact]
    public async Task DisposingTheEngineEndsEveryOpenRequestWithAReason()
    {
        var (engine, plan) = CreateHeldEngine(Small(maxRunning: 2), holdFromStep: 3);
        var options = new GenerationOptions { MaxTokens = 200, IgnoreEndOfSequence = true };
        var first = engine.GenerateAsync(Stories.PromptIds, options).GetAsyncEnumerator();
        Assert.True(await first.MoveNextAsync().AsTask().WaitAsync(Patience)); // running
        var queued = Enumerable.Range(0, 3).Select(_ => Collect(engine.GenerateAsync(Stories.PromptIds, options))).ToArray();

        var disposal = engine.DisposeAsync().AsTask(); // waits for the held step
        plan.Release();
        await disposal.WaitAsync(Patience);
        GenerationUpdate last = first.Current;
        while (await first.MoveNextAsync().AsTask().WaitAsync(Patience)) last = first.Current;
        Assert.Equal(FinishReason.Cancelled, last.FinishReason);
        Assert.Contains("disposed", last.ErrorMessage);
        foreach (var outcome in await Task.WhenAll(queued))
        {
            Assert.Equal(FinishReason.Cancelled, outcome.Final.FinishReason);
            Assert.Contains("disposed", outcome.Final.ErrorMessage);
        }
        Assert.Throws<ObjectDisposedException>(() => engine.GenerateAsync("Lily"));
        await engine.DisposeAsync().AsTask().WaitAsync(Patience); // twice is fine
    }

    [Fact]
    public async Task ARequestThatCanNeverFitFailsAtOnceBeforeStreaming()
    {
        await using var engine = CreateEngine(Small() with { MaxContext = 32 });
        var tooLong = Enumerable.Repeat(Stories.PromptIds[1], 32).ToArray();
        var error = Assert.Throws<ArgumentException>(() => engine.GenerateAsync(tooLong));
        Assert.Contains("max context of 32", error.Message);
        Assert.Throws<ArgumentException>(() => engine.GenerateAsync(Array.Empty<int>()));
        Assert.Throws<ArgumentOutOfRangeException>(() => engine.GenerateAsync([1, 100_000]));
        Assert.Throws<ArgumentOutOfRangeException>(() => engine.GenerateAsync("Lily", new GenerationOptions { MaxTokens = 0 }));

        // More KV memory than any machine has is refused when the engine is made, not when it is first touched.
        var tooMuch = Assert.Throws<InsufficientMemoryException>(() => CreateEngine(Small() with { KvCacheBytes = 1L << 60 }));
        Assert.Contains("KvCacheBytes", tooMuch.Message);

        // The KV memory, not the context, is the limit: 2 blocks of 4 tokens.
        long twoBlocks = 2 * KvCache.BytesPerBlock(Model.LayerCount, 4, Model.KvDim);
        await using var tiny = CreateEngine(Small() with { KvCacheBytes = twoBlocks });
        error = Assert.Throws<ArgumentException>(() => tiny.GenerateAsync(tooLong[..8]));
        Assert.Contains("KV memory", error.Message);
        var fits = await Collect(tiny.GenerateAsync(tooLong[..7], new GenerationOptions { MaxTokens = 5 }));
        Assert.Equal(FinishReason.Length, fits.Final.FinishReason);
        Assert.Single(fits.Tokens); // the 8-position pool ends it after one token
    }

    [Fact]
    public async Task APrefixCacheHitGivesTheSameTokensAndReportsCachedTokens()
    {
        int[] prompt = Tokenizer.Encode("Once upon a time, there was a little girl named Lily. She loved to play outside in the");
        var options = new GenerationOptions { MaxTokens = 20, Logprobs = true };
        foreach (bool caching in new[] { true, false })
        {
            await using var engine = CreateEngine(Small() with { PrefixCaching = caching });
            var miss = await Collect(engine.GenerateAsync(prompt, options));
            var hit = await Collect(engine.GenerateAsync(prompt, options));

            Assert.Equal(Reference(prompt, 20), miss.Tokens);
            Assert.Equal(miss.Tokens, hit.Tokens);
            Assert.Equal(miss.Logprobs, hit.Logprobs);
            Assert.Equal(0, miss.Final.Usage!.Value.CachedPromptTokens);
            // Full blocks of the prompt but the last token, which is always computed for its logits.
            int cachable = (prompt.Length - 1) / 4 * 4;
            Assert.Equal(caching ? cachable : 0, hit.Final.Usage!.Value.CachedPromptTokens);
            var statistics = await WaitUntilIdle(engine);
            Assert.Equal(caching, statistics.PrefixHitTokens > 0);
        }
    }

    /// <summary>How the sequences of <see cref="SharedPrefixAttentionOnOrOffGivesTheSameGreedyTokens"/> come to share blocks.</summary>
    public enum Sharing
    {
        /// <summary>Requests that begin with a system prompt a first request cached.</summary>
        CachedSystemPrompt,

        /// <summary>N samples of one prompt: forks holding its blocks, the partly filled last one copied on write.</summary>
        ForkedSamples,

        /// <summary>As <see cref="CachedSystemPrompt"/> in too little KV memory: sequences are preempted and recompute.</summary>
        Preempted,
    }

    [Theory]
    [InlineData(Sharing.CachedSystemPrompt)]
    [InlineData(Sharing.ForkedSamples)]
    [InlineData(Sharing.Preempted)]
    public async Task SharedPrefixAttentionOnOrOffGivesTheSameGreedyTokens(Sharing sharing)
    {
        // Sequences whose tables begin with the same physical blocks decode together: a sharing group, whose prefix the
        // compiled plan's attention reads once for all of them when SharedPrefixAttention is on.
        int[] system = Tokenizer.Encode("Once upon a time, there was a little girl named Lily. She loved to play outside in the sun with her friends every day.");
        string[] questions = [" Lily", " One day,", " The cat", " Her mom said", " They went to the park and", " Tom"];
        var prompts = questions.Select(q => (int[])[.. system, .. Tokenizer.Encode(q)[1..]]).ToArray(); // without the question's BOS
        var options = new GenerationOptions { MaxTokens = 24, IgnoreEndOfSequence = true };
        var engineOptions = Small(tokenBudget: 32, maxRunning: 8);
        if (sharing == Sharing.Preempted)
            engineOptions = engineOptions with { KvCacheBytes = 26 * KvCache.BytesPerBlock(Model.LayerCount, 4, Model.KvDim), MaxContext = 72 };
        var tokens = new Dictionary<bool, int[][]>();
        foreach (bool shared in new[] { true, false })
        {
            var plans = new List<GroupCountingPlan>();
            await using var engine = new KilnEngine(Model, t =>
            {
                var plan = new GroupCountingPlan(CreatePlan(PlanKind.Compiled, t));
                lock (plans) plans.Add(plan);
                return plan;
            }, Tokenizer, engineOptions with { SharedPrefixAttention = shared });
            if (sharing == Sharing.ForkedSamples)
            {
                Assert.NotEqual(0, system.Length % 4); // the prompt ends inside a block, which the samples share until they write
                var samples = new List<int>[4];
                for (int i = 0; i < samples.Length; i++) samples[i] = [];
                await foreach (var update in engine.GenerateAsync(system, options with { N = samples.Length }).Patiently())
                    if (!update.IsFinal) samples[update.Index].Add(update.TokenId);
                tokens[shared] = samples.Select(t => t.ToArray()).ToArray();
                Assert.True((await WaitUntilIdle(engine)).KvBlockCopies > 0);
            }
            else
            {
                await Collect(engine.GenerateAsync(system, new GenerationOptions { MaxTokens = 1 })); // the prefix, cached
                var outcomes = await Task.WhenAll(prompts.Select(p => Collect(engine.GenerateAsync(p, options))));
                tokens[shared] = outcomes.Select(o => o.Tokens).ToArray();
                var statistics = await WaitUntilIdle(engine);
                Assert.True(statistics.PrefixHitTokens > 0);
                if (sharing == Sharing.Preempted) Assert.True(statistics.Preemptions > 0, $"nothing was preempted: {statistics}");
            }
            int grouped = plans.Sum(p => p.StepsWithGroups);
            if (shared) Assert.True(grouped > 0, "no step carried a sharing group: the shared-prefix path never ran");
            else Assert.Equal(0, grouped);
        }
        for (int i = 0; i < tokens[true].Length; i++)
        {
            Assert.Equal(24, tokens[true][i].Length);
            Assert.True(tokens[true][i].SequenceEqual(tokens[false][i]),
                $"{sharing} sequence {i}: shared-prefix attention gave [{string.Join(", ", tokens[true][i])}], per-sequence [{string.Join(", ", tokens[false][i])}]");
        }
    }

    /// <summary>A plan that counts the steps whose context carries sharing groups (the shared-prefix attention's input).</summary>
    private sealed class GroupCountingPlan(ICompiledPlan inner) : ICompiledPlan
    {
        public int StepsWithGroups { get; private set; }

        public int MaxTokensPerStep => inner.MaxTokensPerStep;

        public int VocabSize => inner.VocabSize;

        public string FusionReport => inner.FusionReport;

        public void Step(ReadOnlySpan<int> tokens, AttentionContext context, Span<float> logits)
        {
            if (context.SharedPrefixCount > 0) StepsWithGroups++;
            inner.Step(tokens, context, logits);
        }

        public void Dispose() => inner.Dispose();
    }

    [Theory]
    [InlineData(PlanKind.Eager)]
    [InlineData(PlanKind.Compiled)]
    public async Task PreemptionUnderATinyBlockBudgetGivesTheSameGreedyText(PlanKind kind)
    {
        // Room for about two sequences: the others wait, and running ones get preempted and recompute.
        long bytes = 14 * KvCache.BytesPerBlock(Model.LayerCount, 4, Model.KvDim);
        // No waiting room beyond the six running slots: preempted requests wait all the same, and none is dropped.
        await using var engine = CreateEngine(Small(tokenBudget: 16, maxRunning: 6) with { KvCacheBytes = bytes, MaxContext = 56, MaxQueuedRequests = 0 }, kind);
        string[] prompts = ["Once upon a time", "Lily", "The cat sat on the", "One day, a big dog", "Tom", "The sun"];
        var outcomes = await Task.WhenAll(prompts.Select(p => Collect(engine.GenerateAsync(p, new GenerationOptions { MaxTokens = 36 }))));
        var statistics = await WaitUntilIdle(engine);

        Assert.True(statistics.Preemptions > 0, $"nothing was preempted: {statistics}");
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(Reference(Tokenizer.Encode(prompts[i]), 36, kind: kind), outcomes[i].Tokens);
    }

    [Fact]
    public async Task ChunkedPrefillOffAndCompressedStorageStillServe()
    {
        int[] prompt = Tokenizer.Encode("Once upon a time, there was a little girl named Lily. She loved to play outside");
        await using (var unchunked = CreateEngine(Small(tokenBudget: 8) with { ChunkedPrefill = false }))
        {
            Assert.True(unchunked.TokenBudget >= unchunked.MaxContext);
            var outcome = await Collect(unchunked.GenerateAsync(prompt, new GenerationOptions { MaxTokens = 16 }));
            Assert.Equal(Reference(prompt, 16), outcome.Tokens);
        }
        foreach (var kind in new[] { PlanKind.Eager, PlanKind.Compiled })
        {
            foreach (var storage in new[] { KvStorage.F16, KvStorage.Int8 })
            {
                await using var engine = CreateEngine(Small() with { KvStorage = storage }, kind);
                Assert.Equal(storage, engine.Cache.Storage);
                var outcome = await Collect(engine.GenerateAsync(prompt, new GenerationOptions { MaxTokens = 16 }));
                Assert.Equal(FinishReason.Length, outcome.Final.FinishReason);
                // Close to full precision on this model: the first tokens agree.
                Assert.Equal(Reference(prompt, 16, kind: kind)[..4], outcome.Tokens[..4]);
            }
        }
    }

    [Fact]
    public async Task SeededSamplingIsReproducibleWhateverElseRuns()
    {
        var sampled = new GenerationOptions { MaxTokens = 24, Temperature = 0.9f, TopP = 0.95f, MinP = 0.02f, RepetitionPenalty = 1.1f, Seed = 42, IgnoreEndOfSequence = true };
        await using var engine = CreateEngine(Small(maxRunning: 4));
        var alone = await Collect(engine.GenerateAsync(Stories.PromptIds, sampled));
        var crowd = Enumerable.Range(0, 3).Select(i => Collect(engine.GenerateAsync("Lily went", sampled with { Seed = (ulong)i }))).ToList();
        var batched = await Collect(engine.GenerateAsync(Stories.PromptIds, sampled));
        await Task.WhenAll(crowd);
        var otherSeed = await Collect(engine.GenerateAsync(Stories.PromptIds, sampled with { Seed = 43 }));

        Assert.Equal(alone.Tokens, batched.Tokens);
        Assert.NotEqual(alone.Tokens, otherSeed.Tokens);
    }

    [Fact]
    public async Task MetricsReportLatencyTokensAndBlocks()
    {
        // Engines of other tests run meanwhile: listen only to the meter this engine gets from its own factory.
        using var meters = new ScopedMeterFactory();
        var recorded = new System.Collections.Concurrent.ConcurrentDictionary<string, double>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == KilnEngine.MeterName && instrument.Meter.Scope == meters) l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<double>((instrument, value, _, _) => recorded.AddOrUpdate(instrument.Name, value, (_, sum) => sum + value));
        listener.SetMeasurementEventCallback<long>((instrument, value, _, _) => recorded.AddOrUpdate(instrument.Name, value, (_, sum) => sum + value));
        listener.SetMeasurementEventCallback<int>((instrument, value, _, _) => recorded[instrument.Name] = value);
        listener.Start();

        await using var engine = CreateEngine(Small() with { MeterFactory = meters });
        await Task.WhenAll(Enumerable.Range(0, 3).Select(_ => Collect(engine.GenerateAsync("Lily", new GenerationOptions { MaxTokens = 10, IgnoreEndOfSequence = true }))));
        await WaitUntilIdle(engine);
        listener.RecordObservableInstruments();

        Assert.Equal(30, recorded["kiln.engine.generated_tokens"]);
        Assert.True(recorded["kiln.engine.time_to_first_token"] > 0);
        Assert.True(recorded["kiln.engine.time_between_tokens"] > 0);
        Assert.Equal(3, recorded["kiln.engine.finished_requests"]);
        Assert.Equal(0, recorded["kiln.engine.kv_blocks.used"]);
        Assert.Equal(engine.Cache.BlockCount, recorded["kiln.engine.kv_blocks.free"]);
        Assert.Equal(0, recorded["kiln.engine.requests.running"]);
        Assert.True(recorded.ContainsKey("kiln.engine.prefix_cache.hit_rate"));
    }

    [Fact]
    public async Task NSamplesShareThePromptAndEachIsTheSampleItsSeedGivesAlone()
    {
        int[] prompt = Tokenizer.Encode("Once upon a time, there was a little girl named Lily. She loved to play");
        var options = new GenerationOptions { MaxTokens = 12, Temperature = 0.8f, Seed = 11, N = 3, IgnoreEndOfSequence = true };
        await using var engine = CreateEngine(Small());
        var tokens = new List<int>[3];
        var finals = new GenerationUpdate[3];
        for (int i = 0; i < 3; i++) tokens[i] = [];
        await foreach (var update in engine.GenerateAsync(prompt, options).Patiently())
        {
            Assert.Equal(default, finals[update.Index]); // nothing after a sample's final update
            if (update.IsFinal) finals[update.Index] = update;
            else tokens[update.Index].Add(update.TokenId);
        }

        // The prompt is computed once; each sample then computes only its own tokens (all but the last sampled).
        var statistics = await WaitUntilIdle(engine);
        Assert.Equal(prompt.Length + 3 * 11, statistics.ComputedTokens);
        // The prompt ends inside a block, which all three shared: the first two to write there got copies.
        Assert.NotEqual(0, prompt.Length % 4);
        Assert.Equal(2, statistics.KvBlockCopies);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(FinishReason.Length, finals[i].FinishReason);
            Assert.Equal(12, finals[i].Usage!.Value.CompletionTokens);
            Assert.Equal(i == 0 ? 0 : prompt.Length, finals[i].Usage!.Value.CachedPromptTokens);
            var alone = await Collect(engine.GenerateAsync(prompt, options with { N = 1, Seed = 11 + (ulong)i }));
            Assert.Equal(alone.Tokens, tokens[i]);
        }
        Assert.NotEqual(tokens[0], tokens[1]);
        await WaitUntilIdle(engine);
    }

    [Fact]
    public async Task AFullQueueRefusesAtOnceAndEveryAcceptedRequestStillFinishes()
    {
        // Two run and two wait; the held plan keeps them all open while the engine is asked for more.
        var (engine, plan) = CreateHeldEngine(Small(maxRunning: 2) with { MaxQueuedRequests = 2 }, holdFromStep: 1);
        await using var disposeEngine = engine;
        var options = new GenerationOptions { MaxTokens = 12, IgnoreEndOfSequence = true };
        var accepted = Enumerable.Range(0, 4).Select(_ => Collect(engine.GenerateAsync(Stories.PromptIds, options))).ToArray();

        var refused = Assert.Throws<EngineOverloadedException>(() => engine.GenerateAsync(Stories.PromptIds, options));
        Assert.Equal(4, refused.OpenSamples);
        Assert.Equal(4, refused.Capacity);
        Assert.Equal(TimeSpan.FromSeconds(1), refused.RetryAfter); // no sample has finished yet to measure the pace by
        Assert.Throws<EngineOverloadedException>(() => engine.GenerateAsync("Lily", options with { N = 2 }));
        // More samples than the engine ever holds could never be accepted: that is a bad request, not an overload.
        var never = Assert.Throws<ArgumentOutOfRangeException>(() => engine.GenerateAsync("Lily", options with { N = 5 }));
        Assert.Equal("N", never.ParamName);

        plan.Release();
        foreach (var outcome in await Task.WhenAll(accepted))
        {
            Assert.Equal(FinishReason.Length, outcome.Final.FinishReason);
            Assert.Equal(Reference(Stories.PromptIds, 12, stopAtEndOfSequence: false), outcome.Tokens);
        }
        await WaitUntilIdle(engine);
        // Every accepted sample was given back: a request filling the whole engine is taken again.
        var finals = new List<GenerationUpdate>();
        await foreach (var update in engine.GenerateAsync(Stories.PromptIds, options with { N = 4 }).Patiently())
        {
            if (update.IsFinal) finals.Add(update);
        }
        Assert.Equal(4, finals.Count);
        Assert.All(finals, f => Assert.Equal(FinishReason.Length, f.FinishReason));
    }

    [Fact]
    public async Task TopLogprobsListTheMostLikelyTokensOfEachPosition()
    {
        await using var engine = CreateEngine(Small());
        var greedy = new GenerationOptions { MaxTokens = 16, Logprobs = true, TopLogprobs = 4, IgnoreEndOfSequence = true };
        var sampled = greedy with { Temperature = 1.5f, Seed = 5, N = 3 };
        foreach (var options in new[] { greedy, sampled })
        {
            // Kept to the end, so a position's alternatives are seen after every later one was written.
            var updates = new List<GenerationUpdate>();
            await foreach (var update in engine.GenerateAsync(Stories.PromptIds, options).Patiently()) updates.Add(update);

            var tokens = updates.Where(u => !u.IsFinal).ToList();
            Assert.Equal(16 * options.N, tokens.Count);
            foreach (var update in tokens)
            {
                var top = update.TopLogprobs.ToArray();
                Assert.Equal(4, top.Length);
                Assert.Equal(top.Select(t => t.Logprob).OrderDescending(), top.Select(t => t.Logprob));
                Assert.All(top, t => Assert.InRange(t.Logprob, float.NegativeInfinity, 0f));
                Assert.True(update.Logprob <= top[0].Logprob);
                // The chosen token, where it is among the alternatives, carries the same logprob there.
                foreach (var entry in top.Where(t => t.TokenId == update.TokenId)) Assert.Equal(update.Logprob, entry.Logprob);
                if (options.Temperature == 0) Assert.Equal(update.TokenId, top[0].TokenId);
            }
            if (options.Temperature == 0) Assert.Equal(Reference(Stories.PromptIds, 16, stopAtEndOfSequence: false), tokens.Select(u => u.TokenId));
            else Assert.Contains(tokens, u => u.TokenId != u.TopLogprobs.Span[0].TokenId); // sampling strays from the top
            Assert.All(updates.Where(u => u.IsFinal), u => Assert.True(u.TopLogprobs.IsEmpty));
        }
        var without = await engine.GenerateAsync(Stories.PromptIds, greedy with { TopLogprobs = 0 }).Patiently().FirstAsync();
        Assert.True(without.TopLogprobs.IsEmpty);
        await WaitUntilIdle(engine);
    }

    [Fact]
    public async Task CancellingAnNSampleRequestEndsEverySample()
    {
        var (engine, plan) = CreateHeldEngine(Small(maxRunning: 2), holdFromStep: 3);
        await using var disposeEngine = engine;
        using var cancel = new CancellationTokenSource();
        var reasons = new Dictionary<int, FinishReason>();
        int seen = 0;
        await foreach (var update in engine.GenerateAsync(Stories.PromptIds, new GenerationOptions { MaxTokens = 200, N = 4, IgnoreEndOfSequence = true }, cancel.Token).Patiently())
        {
            if (++seen == 3)
            {
                cancel.Cancel();
                plan.Release();
            }
            if (update.IsFinal) reasons.Add(update.Index, update.FinishReason);
        }
        Assert.Equal(4, reasons.Count);
        Assert.All(reasons.Values, r => Assert.Equal(FinishReason.Cancelled, r));
        await WaitUntilIdle(engine);
    }

    [Fact]
    public async Task TheEngineLoopAllocatesNothingBetweenSteadyDecodeSteps()
    {
        var plans = new List<AllocationMeasuringPlan>();
        await using (var engine = new KilnEngine(Model, tokens =>
        {
            var plan = new AllocationMeasuringPlan(new EagerPlan(Model, tokens));
            plans.Add(plan);
            return plan;
        }, Tokenizer, Small(maxRunning: 4)))
        {
            var options = new GenerationOptions { MaxTokens = 40, IgnoreEndOfSequence = true, Temperature = 0.7f, TopK = 40, Seed = 3 };
            await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Collect(engine.GenerateAsync(Stories.PromptIds, options))));
        }
        var gaps = plans.Single().SteadyDecodeGaps;
        Assert.True(gaps.Count > 20, $"only {gaps.Count} steady decode steps measured");
        Assert.Equal(0, gaps.Sum());
    }

    /// <summary>
    /// Records, on the engine loop's thread, the bytes it allocated between two consecutive decode-only steps of the
    /// same sequences (no request started or ended between them), leaving out what the wrapped plan allocates.
    /// </summary>
    private sealed class AllocationMeasuringPlan(ICompiledPlan inner) : ICompiledPlan
    {
        private long _allocatedAfterLastStep = -1;
        private int _lastDecodeSequences = -1;

        public List<long> SteadyDecodeGaps { get; } = [];

        public int MaxTokensPerStep => inner.MaxTokensPerStep;

        public int VocabSize => inner.VocabSize;

        public string FusionReport => inner.FusionReport;

        public void Step(ReadOnlySpan<int> tokens, AttentionContext context, Span<float> logits)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            bool decodeOnly = context.TokenCount == context.SequenceCount;
            if (decodeOnly && context.SequenceCount == _lastDecodeSequences) SteadyDecodeGaps.Add(before - _allocatedAfterLastStep);
            _lastDecodeSequences = decodeOnly ? context.SequenceCount : -1;
            inner.Step(tokens, context, logits);
            _allocatedAfterLastStep = GC.GetAllocatedBytesForCurrentThread();
        }

        public void Dispose() => inner.Dispose();
    }

    [Fact]
    public async Task ManyThreadsCanSubmitAtOnce()
    {
        await using var engine = CreateEngine(Small(maxRunning: 8));
        int[] expected = Reference(Stories.PromptIds, 8);
        var outcomes = await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => Task.Run(() => Collect(engine.GenerateAsync(Stories.PromptIds, new GenerationOptions { MaxTokens = 8 })))));
        Assert.All(outcomes, o => Assert.Equal(expected, o.Tokens));
        await WaitUntilIdle(engine);
    }

    [Fact]
    public async Task InvalidOptionsFailAtOnceNamingTheOption()
    {
        await using var engine = CreateEngine(Small());
        var cases = new (GenerationOptions Options, string Name)[]
        {
            (new() { Temperature = float.NaN }, "Temperature"),
            (new() { Temperature = float.PositiveInfinity }, "Temperature"),
            (new() { Temperature = -0.5f }, "Temperature"),
            (new() { TopP = float.NaN }, "TopP"),
            (new() { TopP = 0 }, "TopP"),
            (new() { N = 0 }, "N"),
            (new() { N = GenerationOptions.MaxSamples + 1 }, "N"),
            (new() { Priority = (RequestPriority)7 }, "Priority"),
            (new() { StopTokens = [Model.VocabSize] }, "StopTokens"),
            (new() { StopTokens = [-1] }, "StopTokens"),
            (new() { StopStrings = [""] }, "StopStrings"),
            (new() { MaxTokens = -3 }, "MaxTokens"),
            (new() { MaxTokens = 0 }, "MaxTokens"),
            (new() { Logprobs = true, TopLogprobs = -1 }, "TopLogprobs"),
            (new() { Logprobs = true, TopLogprobs = GenerationOptions.MaxTopLogprobs + 1 }, "TopLogprobs"),
            (new() { TopLogprobs = 2 }, "TopLogprobs"),
        };
        foreach (var (options, name) in cases)
        {
            var error = Assert.ThrowsAny<ArgumentException>(() => engine.GenerateAsync(Stories.PromptIds, options));
            Assert.Equal(name, error.ParamName);
        }
        // Nothing was queued, and the engine still serves.
        Assert.Equal(0, engine.GetStatistics().WaitingRequests);
        var outcome = await Collect(engine.GenerateAsync(Stories.PromptIds, new GenerationOptions { MaxTokens = 4 }));
        Assert.Equal(Stories.GeneratedIds[..4], outcome.Tokens);
    }

    [Fact]
    public async Task APlanThatThrowsEndsEveryOpenRequestWithItsErrorAndFaultsTheEngine()
    {
        FailingPlan? plan = null;
        var engine = new KilnEngine(Model, tokens => plan = new FailingPlan(new EagerPlan(Model, tokens), failAtStep: 3), Tokenizer, Small(maxRunning: 2));
        var options = new GenerationOptions { MaxTokens = 50, IgnoreEndOfSequence = true };
        // The first step waits until all five are queued: then two run and three wait in the scheduler when step 3 throws,
        // and a sixth, submitted during that step, is still in the engine's queue.
        var queued = Enumerable.Range(0, 5).Select(_ => Collect(engine.GenerateAsync(Stories.PromptIds, options))).ToList();
        Assert.False(engine.IsFaulted);
        var lastQueued = new TaskCompletionSource<Task<Outcome>>(TaskCreationOptions.RunContinuationsAsynchronously);
        plan!.BeforeFailing = () => lastQueued.SetResult(Collect(engine.GenerateAsync(Stories.PromptIds, options)));
        plan.FirstStepGate.Set();
        queued.Add(await lastQueued.Task.WaitAsync(Patience));

        var outcomes = await Task.WhenAll(queued);
        foreach (var outcome in outcomes)
        {
            Assert.Equal(1, outcome.FinalCount);
            Assert.Equal(FinishReason.Error, outcome.Final.FinishReason);
            Assert.Contains(FailingPlan.Message, outcome.Final.ErrorMessage);
        }
        Assert.Equal(2, outcomes.Count(o => o.Tokens.Length > 0)); // the two that ran streamed their first tokens

        Assert.True(engine.IsFaulted);
        var faulted = Assert.Throws<EngineFaultedException>(() => engine.GenerateAsync(Stories.PromptIds, options));
        Assert.Same(plan.Thrown, faulted.InnerException);
        Assert.Contains(FailingPlan.Message, faulted.Message);
        await engine.DisposeAsync().AsTask().WaitAsync(Patience);
        Assert.True(plan.Disposed);
        Assert.Throws<EngineFaultedException>(() => engine.GenerateAsync(Stories.PromptIds, options));
    }

    /// <summary>
    /// Runs its plan, holding the first step until <see cref="FirstStepGate"/> opens, and throws at step
    /// <c>failAtStep</c> (after calling <see cref="BeforeFailing"/>, on the engine loop's thread).
    /// </summary>
    private sealed class FailingPlan(ICompiledPlan inner, int failAtStep) : ICompiledPlan
    {
        public const string Message = "injected plan failure";

        private int _steps;

        public ManualResetEventSlim FirstStepGate { get; } = new();

        public Action? BeforeFailing { get; set; }

        public Exception? Thrown { get; private set; }

        public bool Disposed { get; private set; }

        public int MaxTokensPerStep => inner.MaxTokensPerStep;

        public int VocabSize => inner.VocabSize;

        public string FusionReport => inner.FusionReport;

        public void Step(ReadOnlySpan<int> tokens, AttentionContext context, Span<float> logits)
        {
            if (_steps == 0 && !FirstStepGate.Wait(Patience)) throw new TimeoutException("The test never opened the first step.");
            if (_steps++ == failAtStep)
            {
                BeforeFailing?.Invoke();
                throw Thrown = new InvalidOperationException(Message);
            }
            inner.Step(tokens, context, logits);
        }

        public void Dispose()
        {
            Disposed = true;
            inner.Dispose();
        }
    }

    /// <summary>Meters scoped to this factory, as dependency injection hands them out.</summary>
    private sealed class ScopedMeterFactory : IMeterFactory
    {
        private readonly List<Meter> _meters = [];

        public Meter Create(MeterOptions options)
        {
            var meter = new Meter(new MeterOptions(options.Name) { Version = options.Version, Tags = options.Tags, Scope = this });
            lock (_meters) _meters.Add(meter);
            return meter;
        }

        public void Dispose()
        {
            lock (_meters) _meters.ForEach(m => m.Dispose());
        }
    }
}
