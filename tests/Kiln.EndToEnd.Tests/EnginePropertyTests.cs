using CsCheck;
using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;
using static Kiln.EndToEnd.Tests.EngineTestModel;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Random arrivals, prompts (sharing stems, so the prefix cache hits), lengths, sample counts (forks sharing the
/// prompt's blocks), priorities and cancellations, against the real stories260K model under random engine limits
/// (chunked or prefill-first): every sample ends exactly once, none is lost, every block is free once the engine is
/// idle, and every sample that is not cancelled streams exactly the greedy tokens the request generates alone (a
/// cancelled one, a prefix of them).
/// </summary>
public sealed class EnginePropertyTests
{
    private const int MaxContext = 96;

    public sealed record Limits(int BlockSize, int Blocks, int TokenBudget, int MaxRunning, bool ChunkedPrefill, bool PrefixCaching);

    /// <param name="ArrivalMs">Delay before the request is submitted.</param>
    /// <param name="CancelAfter">-1: never; 0: right after submitting; k: after its k-th token.</param>
    /// <param name="Samples">GenerationOptions.N: greedy samples, so each must equal the request alone.</param>
    public sealed record RequestSpec(int ArrivalMs, int Stem, int StemLength, int[] Suffix, int MaxTokens, bool Batch, int CancelAfter, int Samples);

    private static readonly Lazy<int[][]> Stems = new(() =>
    [
        Tokenizer.Encode("Once upon a time, there was a little girl named Lily. She loved to play outside in the park."),
        Tokenizer.Encode("One day, a big dog found a red ball in the garden and wanted to play"),
        Tokenizer.Encode("Tom and Sue went to the store to buy some milk."),
    ]);

    private static readonly Gen<RequestSpec> GenRequest = Gen.Select(
        Gen.Int[0, 40], Gen.Int[0, 2], Gen.Int[0, 24], Gen.Int[3, 511].Array[0, 8], Gen.Int[1, 40], Gen.Bool, Gen.Int[-6, 8], Gen.Int[-2, 3],
        (arrival, stem, stemLength, suffix, maxTokens, batch, cancel, samples) =>
            new RequestSpec(arrival, stem, stemLength, suffix, maxTokens, batch, cancel < 0 ? -1 : cancel, Math.Max(samples, 1)));

    /// <summary>Pools that hold every request at once: batching and prefix sharing are the point.</summary>
    private static readonly Gen<Limits> GenRoomy = Gen.Select(Gen.Int[1, 16], Gen.Int[4, 48], Gen.Int[1, 8], Gen.Bool, Gen.Bool,
        (blockSize, budget, maxRunning, chunked, caching) =>
            new Limits(blockSize, 12 * ((MaxContext + blockSize - 1) / blockSize), Math.Max(budget, maxRunning), maxRunning, chunked, caching));

    /// <summary>Pools that barely hold one long request: constant preemption, recomputation and eviction.</summary>
    private static readonly Gen<Limits> GenTiny = Gen.Select(Gen.Int[1, 8], Gen.Int[48, 80], Gen.Int[2, 6], Gen.Int[4, 24], Gen.Int[0, 3], Gen.Bool,
        (blockSize, positions, maxRunning, budget, chunked, caching) =>
            new Limits(blockSize, (positions + blockSize - 1) / blockSize, Math.Max(budget, maxRunning), maxRunning, ChunkedPrefill: chunked > 0, caching));

    private static long s_preemptions;

    [Theory]
    [InlineData(PlanKind.Eager, 8)]
    [InlineData(PlanKind.Compiled, 12)]
    public Task RandomWorkloadsKeepEveryPromise(PlanKind kind, int iterations) =>
        Gen.Select(GenRoomy, GenRequest.Array[1, 12]).SampleAsync((limits, requests) => RunScenario(kind, limits, requests), iter: iterations, threads: 2);

    [Theory]
    [InlineData(PlanKind.Eager, 6)]
    [InlineData(PlanKind.Compiled, 8)]
    public async Task RandomWorkloadsUnderATinyBlockBudgetKeepEveryPromise(PlanKind kind, int iterations)
    {
        long before = Interlocked.Read(ref s_preemptions);
        await Gen.Select(GenTiny, GenRequest.Array[3, 10]).SampleAsync((limits, requests) => RunScenario(kind, limits, requests), iter: iterations, threads: 2);
        Assert.True(Interlocked.Read(ref s_preemptions) > before, "the tiny pools never forced a preemption");
    }

    private static int[] PromptOf(RequestSpec spec)
    {
        var stem = Stems.Value[spec.Stem];
        int[] prompt = [.. stem[..Math.Min(spec.StemLength + 1, stem.Length)], .. spec.Suffix]; // the stem starts with BOS
        return prompt;
    }

    private static async Task RunScenario(PlanKind kind, Limits limits, RequestSpec[] specs)
    {
        var options = new EngineOptions
        {
            BlockSize = limits.BlockSize,
            KvCacheBytes = limits.Blocks * Model.KvShape.BytesPerBlock(limits.BlockSize),
            TokenBudget = limits.TokenBudget,
            MaxRunningRequests = limits.MaxRunning,
            MaxContext = MaxContext,
            ChunkedPrefill = limits.ChunkedPrefill,
            PrefixCaching = limits.PrefixCaching,
        };
        await using var engine = CreateEngine(options, kind);
        var runs = specs.Select(spec => RunRequest(engine, kind, spec)).ToArray();
        await Task.WhenAll(runs);

        var idle = await WaitUntilIdle(engine);
        Assert.Equal(0, idle.KvBlocksUsed);
        Assert.Equal(idle.KvBlocksTotal, idle.KvBlocksFree);
        Assert.Equal(runs.Sum(r => r.Result), idle.GeneratedTokens); // every generated token reached its stream
        Interlocked.Add(ref s_preemptions, idle.Preemptions);
    }

    /// <summary>Submits one request after its arrival delay, checks what it streams, and returns how many tokens its samples got.</summary>
    private static async Task<int> RunRequest(KilnEngine engine, PlanKind kind, RequestSpec spec)
    {
        await Task.Delay(spec.ArrivalMs);
        int[] prompt = PromptOf(spec);
        var generation = new GenerationOptions
        {
            MaxTokens = spec.MaxTokens,
            Priority = spec.Batch ? RequestPriority.Batch : RequestPriority.Interactive,
            N = spec.Samples,
        };
        if (prompt.Length + 1 > engine.MaxContext)
        {
            Assert.Throws<ArgumentException>(() => engine.GenerateAsync(prompt, generation));
            return 0;
        }

        using var cancel = new CancellationTokenSource();
        var stream = engine.GenerateAsync(prompt, generation, cancel.Token);
        if (spec.CancelAfter == 0) cancel.Cancel();
        var tokens = new List<int>[spec.Samples];
        var finals = new GenerationUpdate?[spec.Samples];
        for (int i = 0; i < spec.Samples; i++) tokens[i] = [];
        int streamed = 0;
        await foreach (var update in stream)
        {
            Assert.Null(finals[update.Index]); // nothing after a sample's final update
            if (update.IsFinal) finals[update.Index] = update;
            else tokens[update.Index].Add(update.TokenId);
            if (!update.IsFinal && ++streamed == spec.CancelAfter) cancel.Cancel();
        }

        // What it generates alone, within the context the engine allows.
        int room = Math.Min(spec.MaxTokens, engine.MaxContext - prompt.Length);
        int[] expected = Reference(prompt, room, kind: kind);
        for (int i = 0; i < spec.Samples; i++)
        {
            var final = Assert.NotNull(finals[i]);
            int[] got = [.. tokens[i]];
            if (final.FinishReason == FinishReason.Cancelled)
            {
                Assert.True(spec.CancelAfter >= 0, "cancelled without being asked to");
                Assert.Equal(expected[..Math.Min(got.Length, expected.Length)], got);
            }
            else
            {
                Assert.Equal(expected, got);
                Assert.Equal(expected.Length < room ? FinishReason.Stop : FinishReason.Length, final.FinishReason);
            }
            var usage = final.Usage!.Value;
            Assert.Equal(prompt.Length, usage.PromptTokens);
            Assert.Equal(got.Length, usage.CompletionTokens);
            // Sample 0 may find cached blocks; a fork shares the whole prompt it was forked from.
            Assert.InRange(usage.CachedPromptTokens, 0, i == 0 ? prompt.Length - 1 : prompt.Length);
        }
        return tokens.Sum(t => t.Count);
    }
}
