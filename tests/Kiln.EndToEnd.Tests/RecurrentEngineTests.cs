using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;
using Kiln.Models;
using Kiln.Tests;
using Xunit.Abstractions;
using static Kiln.EndToEnd.Tests.EngineTestModel;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The engine serving a model without attention layers: the LSTM holds no KV cache, one state slot per running
/// request. Requests of mixed lengths (more than the running cap, so freed slots are refilled), some cancelled
/// mid-stream, each stream the greedy tokens the request generates alone, and the slots are all free at the end.
/// </summary>
public sealed class RecurrentEngineTests(ITestOutputHelper output)
{
    [Fact]
    public async Task AnLstmServesMixedLengthsWithCancelsAsEachRequestAlone()
    {
        ulong seed = SeededCases.Resolve(16);
        output.WriteLine($"seed {seed}");
        var random = new Random((int)(seed % int.MaxValue));
        var model = Lstm.Load(LstmTests.File(seed: 21, vocab: Tokenizer.VocabSize));
        using var plan = model.Compile(new PlanOptions(64, Threads: 2));
        var options = new EngineOptions { MaxRunningRequests = 3, TokenBudget = 16, MaxContext = 96, PrefixCaching = true };
        await using var engine = new KilnEngine(model, plan, Tokenizer, options);
        Assert.False(engine.HasKvCache);
        Assert.Throws<InvalidOperationException>(() => engine.Cache);

        const int count = 10;
        var prompts = new int[count][];
        var maxTokens = new int[count];
        var cancelAfter = new int[count];
        for (int i = 0; i < count; i++)
        {
            // Shared stems: a recurrent model must not take another request's (or its own earlier) prefix from a cache.
            prompts[i] = Enumerable.Range(0, random.Next(1, 30)).Select(t => t < 6 ? 7 + t : random.Next(3, Tokenizer.VocabSize)).ToArray();
            maxTokens[i] = random.Next(1, 24);
            cancelAfter[i] = random.Next(4) == 0 ? random.Next(1, 4) : -1;
        }

        var tasks = new Task<Outcome>[count];
        var cancels = new CancellationTokenSource[count];
        for (int i = 0; i < count; i++)
        {
            int index = i;
            cancels[i] = new CancellationTokenSource();
            var generation = new GenerationOptions { MaxTokens = maxTokens[i], IgnoreEndOfSequence = true };
            tasks[i] = Collect(engine.GenerateAsync(prompts[i], generation, cancels[i].Token), afterToken: emitted =>
            {
                if (emitted == cancelAfter[index]) cancels[index].Cancel();
            });
        }
        var outcomes = await Task.WhenAll(tasks);

        int cancelled = 0;
        for (int i = 0; i < count; i++)
        {
            int[] alone = RecurrentStatePropertyTests.AloneWith(plan, model, prompts[i], maxTokens[i]);
            if (outcomes[i].Final.FinishReason == FinishReason.Cancelled)
            {
                cancelled++;
                Assert.True(alone.AsSpan().StartsWith(outcomes[i].Tokens), $"seed {seed}, request {i}: cancelled output is not a prefix of its run alone");
            }
            else Assert.Equal(alone, outcomes[i].Tokens);
        }
        var statistics = await WaitUntilIdle(engine);
        output.WriteLine($"{count} requests, {cancelled} cancelled; {statistics.Steps} steps, {statistics.StateSlotsTotal} state slots");
        Assert.Equal(3, statistics.StateSlotsTotal);
        Assert.Equal(0, statistics.StateSlotsUsed);
        Assert.Equal(0, statistics.KvBlocksUsed);
    }

    /// <summary>
    /// Mamba: requests of mixed lengths batched together (more than the running cap, chunked prefills beside decodes),
    /// each stream the greedy tokens the request generates alone; every state slot free at the end.
    /// </summary>
    [Fact]
    public async Task MambaServesMixedLengthsAsEachRequestAlone()
    {
        ulong seed = SeededCases.Resolve(17);
        output.WriteLine($"seed {seed}");
        var random = new Random((int)(seed % int.MaxValue));
        var model = Mamba.Load(MambaTests.File(seed: 23, vocab: Tokenizer.VocabSize));
        using var plan = model.Compile(new PlanOptions(64, Threads: 2));
        var options = new EngineOptions { MaxRunningRequests = 3, TokenBudget = 16, MaxContext = 96 };
        await using var engine = new KilnEngine(model, plan, Tokenizer, options);
        Assert.False(engine.HasKvCache);

        const int count = 8;
        var prompts = new int[count][];
        var maxTokens = new int[count];
        var tasks = new Task<Outcome>[count];
        for (int i = 0; i < count; i++)
        {
            prompts[i] = Enumerable.Range(0, random.Next(1, 40)).Select(_ => random.Next(3, Tokenizer.VocabSize)).ToArray();
            maxTokens[i] = random.Next(1, 20);
            tasks[i] = Collect(engine.GenerateAsync(prompts[i], new GenerationOptions { MaxTokens = maxTokens[i], IgnoreEndOfSequence = true }));
        }
        var outcomes = await Task.WhenAll(tasks);
        for (int i = 0; i < count; i++)
            Assert.Equal(RecurrentStatePropertyTests.AloneWith(plan, model, prompts[i], maxTokens[i]), outcomes[i].Tokens);
        var statistics = await WaitUntilIdle(engine);
        output.WriteLine($"{count} requests of prompts {string.Join(", ", prompts.Select(p => p.Length))}; {statistics.Steps} steps");
        Assert.True(statistics.Steps < prompts.Sum(p => p.Length) + maxTokens.Sum(), "the requests were not batched together");
        Assert.Equal(0, statistics.StateSlotsUsed);
    }

    /// <summary>
    /// Jamba, a hybrid: each request holds paged KV blocks for the attention layers and a state slot for the Mamba
    /// layers. KV memory for only a few sequences (so requests are preempted and recomputed), mixed lengths, some
    /// cancelled mid-stream: each stream the greedy tokens the request generates alone (a cancelled one, a prefix),
    /// and every block and slot free at the end.
    /// </summary>
    [Fact]
    public async Task JambaServesMixedLengthsWithPreemptionAndCancelsAsEachRequestAlone()
    {
        ulong seed = SeededCases.Resolve(37);
        output.WriteLine($"seed {seed}");
        var random = new Random((int)(seed % int.MaxValue));
        var model = Jamba.Load(JambaTests.File(seed: 25, vocab: Tokenizer.VocabSize));
        using var plan = model.Compile(new PlanOptions(64, Threads: 2));
        long blockBytes = model.KvShape.BytesPerBlock(16);
        var options = new EngineOptions { MaxRunningRequests = 3, TokenBudget = 16, MaxContext = 64, KvCacheBytes = 5 * blockBytes };
        await using var engine = new KilnEngine(model, plan, Tokenizer, options);
        Assert.True(engine.HasKvCache);

        const int count = 10;
        var prompts = new int[count][];
        var maxTokens = new int[count];
        var cancelAfter = new int[count];
        var tasks = new Task<Outcome>[count];
        var cancels = new CancellationTokenSource[count];
        for (int i = 0; i < count; i++)
        {
            int index = i;
            prompts[i] = Enumerable.Range(0, random.Next(8, 40)).Select(_ => random.Next(3, Tokenizer.VocabSize)).ToArray();
            maxTokens[i] = random.Next(8, 24);
            cancelAfter[i] = random.Next(4) == 0 ? random.Next(1, 4) : -1;
            cancels[i] = new CancellationTokenSource();
            var generation = new GenerationOptions { MaxTokens = maxTokens[i], IgnoreEndOfSequence = true };
            tasks[i] = Collect(engine.GenerateAsync(prompts[i], generation, cancels[i].Token), afterToken: emitted =>
            {
                if (emitted == cancelAfter[index]) cancels[index].Cancel();
            });
        }
        var outcomes = await Task.WhenAll(tasks);
        int cancelled = 0;
        for (int i = 0; i < count; i++)
        {
            int[] alone = RecurrentStatePropertyTests.AloneWith(plan, model, prompts[i], maxTokens[i]);
            if (outcomes[i].Final.FinishReason == FinishReason.Cancelled)
            {
                cancelled++;
                Assert.True(alone.AsSpan().StartsWith(outcomes[i].Tokens), $"seed {seed}, request {i}: cancelled output is not a prefix of its run alone");
            }
            else Assert.Equal(alone, outcomes[i].Tokens);
        }
        var statistics = await WaitUntilIdle(engine);
        output.WriteLine($"{count} requests, {cancelled} cancelled; {statistics.Steps} steps, {statistics.Preemptions} preemptions");
        Assert.True(statistics.Preemptions > 0, "KV memory for a few sequences preempted no request");
        Assert.Equal(0, statistics.StateSlotsUsed);
        Assert.Equal(0, statistics.KvBlocksUsed);
    }

    /// <summary>
    /// TokenGenerator (what a single-sequence caller uses) on a Mamba, which has no KV cache: its prompt prefilled in
    /// chunks of the plan's step, its state carried across them, equals the request run alone in one step; a second
    /// call starts again from zeros (its first token is at position 0), so it repeats the first.
    /// </summary>
    [Fact]
    public void TokenGeneratorRunsAMambaFromItsStateSlot()
    {
        ulong seed = SeededCases.Resolve(29);
        output.WriteLine($"seed {seed}");
        var random = new Random((int)(seed % int.MaxValue));
        var model = Mamba.Load(MambaTests.File(seed: 31, vocab: Tokenizer.VocabSize));
        using var wide = model.Compile(new PlanOptions(64, Threads: 2));
        using var narrow = model.Compile(new PlanOptions(8, Threads: 2));
        var generator = new TokenGenerator(model, narrow, maxContext: 96);
        Assert.Equal(96, generator.MaxContext);

        int[] prompt = Enumerable.Range(0, random.Next(20, 40)).Select(_ => random.Next(3, Tokenizer.VocabSize)).ToArray();
        int[] alone = RecurrentStatePropertyTests.AloneWith(wide, model, prompt, 12);
        int[] first = generator.Generate(prompt, 12, SamplingOptions.Greedy).ToArray();
        int[] again = generator.Generate(prompt, 12, SamplingOptions.Greedy).ToArray();
        output.WriteLine($"prompt of {prompt.Length} tokens in steps of 8: {string.Join(" ", first)}");
        Assert.Equal(alone, first);
        Assert.Equal(first, again);
    }

    [Fact]
    public async Task ParallelSamplesContinueFromTheirParentsStateSlot()
    {
        var model = Lstm.Load(LstmTests.File(seed: 22, vocab: Tokenizer.VocabSize));
        using var plan = model.Compile(new PlanOptions(32, Threads: 2));
        await using var engine = new KilnEngine(model, plan, Tokenizer, new EngineOptions { MaxRunningRequests = 4, TokenBudget = 16, MaxContext = 64 });
        int[] prompt = [1, 40, 41, 42, 43, 44, 45];
        var samples = new List<int>[3];
        for (int i = 0; i < 3; i++) samples[i] = [];
        await foreach (var update in engine.GenerateAsync(prompt, new GenerationOptions { MaxTokens = 12, N = 3, IgnoreEndOfSequence = true }).Patiently())
        {
            if (!update.IsFinal) samples[update.Index].Add(update.TokenId);
        }
        int[] alone = RecurrentStatePropertyTests.AloneWith(plan, model, prompt, 12);
        // Greedy samples are one sequence: each fork copied the prompt's state, then ran on a slot of its own.
        for (int i = 0; i < 3; i++) Assert.Equal(alone, samples[i]);
        Assert.Equal(0, (await WaitUntilIdle(engine)).StateSlotsUsed);
    }
}
