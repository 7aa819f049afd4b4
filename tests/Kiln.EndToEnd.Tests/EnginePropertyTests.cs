using CsCheck;
using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;
using Kiln.Tests;
using static Kiln.EndToEnd.Tests.EngineTestModel;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Seeded random arrivals, prompts (sharing stems, so the prefix cache hits; some as long as the context allows, some
/// longer), lengths, sample counts (forks sharing the prompt's blocks), priorities and cancellations, against the real
/// stories260K model under random engine limits (chunked or prefill-first): every sample ends exactly once, none is
/// lost, every block is free once the engine is idle, every sample that is not cancelled streams exactly the greedy
/// tokens the request generates alone (a cancelled one, a prefix of them), and a prompt that cannot fit is refused
/// at once.
/// <para>
/// Time is counted in engine steps, not milliseconds: requests arrive, and cancels are sent, from the plan's step on
/// the engine's own thread, so each case runs the same schedule every time (its preemptions included) however loaded
/// the machine is.
/// </para>
/// </summary>
public sealed class EnginePropertyTests
{
    private const int MaxContext = 96;

    public sealed record Limits(int BlockSize, int Blocks, int TokenBudget, int MaxRunning, bool ChunkedPrefill, bool PrefixCaching);

    /// <param name="Arrival">The engine step during which the request is submitted (or, if the engine is idle by then, when it goes idle).</param>
    /// <param name="CancelAfter">-1: never; 0: right after submitting; k: during the k-th step after its submission.</param>
    /// <param name="Samples">GenerationOptions.N: greedy samples, so each must equal the request alone.</param>
    /// <param name="Overflow">-1: the prompt is its stem and suffix; k ≥ 0: it is padded to the engine's max context − 1 + k tokens (0 leaves room for one token; more cannot run).</param>
    public sealed record RequestSpec(int Arrival, int Stem, int StemLength, int[] Suffix, int MaxTokens, bool Batch, int CancelAfter, int Samples, int Overflow);

    /// <summary>What a test's cases did in all: the schedules its assertions rely on actually happened.</summary>
    private sealed class Totals
    {
        public long Preemptions, RefusedPrompts, FullContextPrompts, Cancelled;
    }

    private static readonly Lazy<int[][]> Stems = new(() =>
    [
        Tokenizer.Encode("Once upon a time, there was a little girl named Lily. She loved to play outside in the park."),
        Tokenizer.Encode("One day, a big dog found a red ball in the garden and wanted to play"),
        Tokenizer.Encode("Tom and Sue went to the store to buy some milk."),
    ]);

    private static readonly Gen<RequestSpec> GenRequest = Gen.Select(
        Gen.Int[0, 40], Gen.Int[0, 2], Gen.Int[0, 24], Gen.Int[3, 511].Array[0, 8], Gen.Int[1, 40], Gen.Bool, Gen.Int[-6, 8], Gen.Int[-2, 3],
        Gen.Int[-16, 2],
        (arrival, stem, stemLength, suffix, maxTokens, batch, cancel, samples, overflow) =>
            new RequestSpec(arrival, stem, stemLength, suffix, maxTokens, batch, cancel < 0 ? -1 : cancel, Math.Max(samples, 1), Math.Max(overflow, -1)));

    /// <summary>Pools that hold every request at once: batching and prefix sharing are the point.</summary>
    private static readonly Gen<Limits> GenRoomy = Gen.Select(Gen.Int[1, 16], Gen.Int[4, 48], Gen.Int[1, 8], Gen.Bool, Gen.Bool,
        (blockSize, budget, maxRunning, chunked, caching) =>
            new Limits(blockSize, 12 * ((MaxContext + blockSize - 1) / blockSize), Math.Max(budget, maxRunning), maxRunning, chunked, caching));

    /// <summary>Pools that barely hold one long request: constant preemption, recomputation and eviction.</summary>
    private static readonly Gen<Limits> GenTiny = Gen.Select(Gen.Int[1, 8], Gen.Int[48, 80], Gen.Int[2, 6], Gen.Int[4, 24], Gen.Int[0, 3], Gen.Bool,
        (blockSize, positions, maxRunning, budget, chunked, caching) =>
            new Limits(blockSize, (positions + blockSize - 1) / blockSize, Math.Max(budget, maxRunning), maxRunning, ChunkedPrefill: chunked > 0, caching));

    [Theory]
    [InlineData(PlanKind.Eager, 8)]
    [InlineData(PlanKind.Compiled, 12)]
    public async Task RandomWorkloadsKeepEveryPromise(PlanKind kind, int cases)
    {
        var totals = new Totals();
        await SeededCases.CheckAsync(Gen.Select(GenRoomy, GenRequest.Array[1, 12]), seed: 41 + (ulong)kind, cases, c => RunScenario(kind, c.Item1, c.Item2, totals));
        Assert.True(totals.RefusedPrompts > 0, "no prompt was too long for the context");
        Assert.True(totals.FullContextPrompts > 0, "no prompt filled the context but one position");
        Assert.True(totals.Cancelled > 0, "no request was cancelled");
    }

    [Theory]
    [InlineData(PlanKind.Eager, 6)]
    [InlineData(PlanKind.Compiled, 8)]
    public async Task RandomWorkloadsUnderATinyBlockBudgetKeepEveryPromise(PlanKind kind, int cases)
    {
        var totals = new Totals();
        await SeededCases.CheckAsync(Gen.Select(GenTiny, GenRequest.Array[3, 10]), seed: 43 + (ulong)kind, cases, c => RunScenario(kind, c.Item1, c.Item2, totals));
        Assert.True(totals.Preemptions > 0, "the tiny pools never forced a preemption");
    }

    private static int[] PromptOf(RequestSpec spec, int maxContext)
    {
        var stem = Stems.Value[spec.Stem];
        int[] prompt = [.. stem[..Math.Min(spec.StemLength + 1, stem.Length)], .. spec.Suffix]; // the stem starts with BOS
        if (spec.Overflow < 0) return prompt;
        // Padded with the stem's own text, so it reads like a (very) long story.
        var padded = new int[maxContext - 1 + spec.Overflow];
        for (int i = 0; i < padded.Length; i++) padded[i] = i < prompt.Length ? prompt[i] : stem[1 + i % (stem.Length - 1)];
        return padded;
    }

    private static async Task RunScenario(PlanKind kind, Limits limits, RequestSpec[] specs, Totals totals)
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
        StepHookPlan? plan = null;
        await using var engine = new KilnEngine(Model, tokens => plan = new StepHookPlan(CreatePlan(kind, tokens)), Tokenizer, options);

        var schedule = new List<(RequestSpec Spec, int[] Prompt)>();
        foreach (var spec in specs)
        {
            int[] prompt = PromptOf(spec, engine.MaxContext);
            if (prompt.Length + 1 > engine.MaxContext)
            {
                // Refused before anything is queued, whatever else is running: no need to wait for its arrival.
                var error = Assert.Throws<ArgumentException>(() => engine.GenerateAsync(prompt, new GenerationOptions { MaxTokens = spec.MaxTokens }));
                Assert.Contains("could never run", error.Message);
                Interlocked.Increment(ref totals.RefusedPrompts);
                continue;
            }
            if (prompt.Length + 1 == engine.MaxContext) Interlocked.Increment(ref totals.FullContextPrompts);
            schedule.Add((spec, prompt));
        }

        var arrivals = new Arrivals(engine, kind, [.. schedule.OrderBy(s => s.Spec.Arrival)], totals);
        plan!.BeforeStep = arrivals.OnStep;
        int[] streamed = await arrivals.RunAll();

        var idle = await WaitUntilIdle(engine);
        Assert.Equal(0, idle.KvBlocksUsed);
        Assert.Equal(idle.KvBlocksTotal, idle.KvBlocksFree);
        Assert.Equal(streamed.Sum(), idle.GeneratedTokens); // every generated token reached its stream
        Interlocked.Add(ref totals.Preemptions, idle.Preemptions);
    }

    /// <summary>
    /// Submits each request during the step its arrival names (on the engine's thread, so it is admitted before the next
    /// step), or at once when everything submitted has ended and the engine would otherwise wait; cancels each during
    /// its step likewise. The engine's thread and the test's share this state under one lock.
    /// </summary>
    private sealed class Arrivals(KilnEngine engine, PlanKind kind, (RequestSpec Spec, int[] Prompt)[] schedule, Totals totals)
    {
        private readonly object _lock = new();
        private readonly List<Task<int>> _streams = [];
        private readonly List<(CancellationTokenSource Cancel, int AtStep)> _cancels = [];
        private int _next;      // the next request of the schedule to submit
        private int _step = -1; // the engine's latest step

        /// <summary>Runs the schedule to its end; returns each request's count of streamed tokens.</summary>
        public async Task<int[]> RunAll()
        {
            while (true)
            {
                Task<int>[] streams;
                lock (_lock)
                {
                    if (_next == schedule.Length && _streams.Count == _next) break;
                    // Everything submitted has ended (or nothing was yet): the engine takes no step until the next one arrives.
                    if (_streams.All(s => s.IsCompleted) && _next < schedule.Length) Submit(schedule[_next++]);
                    streams = [.. _streams];
                }
                await Task.WhenAll(streams).WaitAsync(Patience);
            }
            var counts = await Task.WhenAll(_streams);
            foreach (var (cancel, _) in _cancels) cancel.Dispose();
            return counts;
        }

        /// <summary>On the engine's thread, before step <paramref name="step"/> computes.</summary>
        public void OnStep(int step)
        {
            lock (_lock)
            {
                _step = step;
                foreach (var (cancel, atStep) in _cancels)
                {
                    if (atStep == step) cancel.Cancel();
                }
                while (_next < schedule.Length && schedule[_next].Spec.Arrival <= step) Submit(schedule[_next++]);
            }
        }

        private void Submit((RequestSpec Spec, int[] Prompt) request)
        {
            var (spec, prompt) = request;
            var generation = new GenerationOptions
            {
                MaxTokens = spec.MaxTokens,
                Priority = spec.Batch ? RequestPriority.Batch : RequestPriority.Interactive,
                N = spec.Samples,
            };
            var cancel = new CancellationTokenSource();
            _cancels.Add((cancel, spec.CancelAfter > 0 ? _step + spec.CancelAfter : -1));
            try
            {
                var stream = engine.GenerateAsync(prompt, generation, cancel.Token);
                if (spec.CancelAfter == 0) cancel.Cancel();
                _streams.Add(Task.Run(() => Check(stream, spec, prompt)));
            }
            catch (Exception e)
            {
                _streams.Add(Task.FromException<int>(e)); // the test's failure, not the engine loop's
            }
        }

        /// <summary>Reads one request's stream and checks it; returns how many tokens its samples got.</summary>
        private async Task<int> Check(IAsyncEnumerable<GenerationUpdate> stream, RequestSpec spec, int[] prompt)
        {
            var tokens = new List<int>[spec.Samples];
            var finals = new GenerationUpdate?[spec.Samples];
            for (int i = 0; i < spec.Samples; i++) tokens[i] = [];
            await foreach (var update in stream.Patiently())
            {
                Assert.Null(finals[update.Index]); // nothing after a sample's final update
                if (update.IsFinal) finals[update.Index] = update;
                else tokens[update.Index].Add(update.TokenId);
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
                    Interlocked.Increment(ref totals.Cancelled);
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

    /// <summary>A plan that calls <see cref="BeforeStep"/> with the step's number, on the engine's thread, before each step.</summary>
    private sealed class StepHookPlan(ICompiledPlan inner) : ICompiledPlan
    {
        private int _steps;

        public Action<int>? BeforeStep { get; set; }

        public int MaxTokensPerStep => inner.MaxTokensPerStep;

        public int VocabSize => inner.VocabSize;

        public string FusionReport => inner.FusionReport;

        public void Step(ReadOnlySpan<int> tokens, AttentionContext context, Span<float> logits)
        {
            BeforeStep?.Invoke(_steps++);
            inner.Step(tokens, context, logits);
        }

        public void Dispose() => inner.Dispose();
    }
}
