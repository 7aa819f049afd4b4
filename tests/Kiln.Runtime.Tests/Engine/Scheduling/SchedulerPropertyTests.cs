using CsCheck;
using Kiln.Engine.Paging;
using Kiln.Engine.Scheduling;
using Kiln.Tests;

namespace Kiln.Runtime.Tests.Engine.Scheduling;

/// <summary>
/// Random arrival, length, priority, stop, cancel and fork schedules, chunked or prefill-first, driven through the
/// scheduler, the block pool and <see cref="FakePagedModel"/> (which reads and writes the paged cache for real, and
/// refuses to write into a shared block): every request and fork ends exactly once, no step breaks the budget, no
/// block leaks, every request generates what it generates when run alone, and every fork what its prompt and first
/// token give.
/// </summary>
public sealed class SchedulerPropertyTests
{
    public sealed record Config(int BlockSize, int Blocks, int TokenBudget, int MaxRunning, int MaxContext, bool Chunked = true);

    public enum CancelKind { None, BeforeSchedule, DuringStep, Fail }

    public sealed record RequestSpec(
        int Arrival, int Stem, int StemLength, int[] Suffix, int MaxNew, bool Batch, bool Stops, int CacheKey, int CancelAfter, CancelKind Cancel, int Forks);

    private const int StepLimit = 5000;

    // Three shared stems so that prompts share prefixes and the prefix cache gets hits.
    private static readonly int[][] Stems =
        [.. Enumerable.Range(0, 3).Select(s => Enumerable.Range(0, 32).Select(i => (s * 3 + i * 5 + i * i) % FakePagedModel.VocabSize).ToArray())];

    private static readonly Gen<RequestSpec> GenRequest = Gen.Select(
        Gen.Int[0, 30], Gen.Int[0, 2], Gen.Int[0, 24], Gen.Int[0, FakePagedModel.VocabSize - 1].Array[0, 10], Gen.Int[1, 16],
        Gen.Bool, Gen.Int[0, 3], Gen.Int[0, 2], Gen.Int[0, 40], Gen.Int[0, 9], Gen.Int[-3, 2],
        (arrival, stem, stemLength, suffix, maxNew, batch, stops, key, cancelAfter, cancel, forks) => new RequestSpec(
            arrival, stem, stemLength, suffix, maxNew, batch, stops == 0, key, cancelAfter, cancel < 3 ? (CancelKind)(cancel + 1) : CancelKind.None, Math.Max(forks, 0)));

    /// <summary>Roomy pools: preemption is rare, batching and prefix sharing are the point.</summary>
    private static readonly Gen<Config> GenConfig = Gen.Select(
        Gen.Int[1, 8], Gen.Int[4, 40], Gen.Int[1, 6], Gen.Int[0, 20], Gen.Int[0, 40], Gen.Int[0, 3],
        (blockSize, maxContext, maxRunning, extraBudget, extraBlocks, chunked) => WithChunking(
            new Config(blockSize, (maxContext + blockSize - 1) / blockSize + extraBlocks, maxRunning + extraBudget, maxRunning, maxContext), chunked > 0));

    /// <summary>Pools that barely hold one longest sequence: constant preemption and eviction.</summary>
    private static readonly Gen<Config> GenTinyConfig = Gen.Select(
        Gen.Int[1, 6], Gen.Int[4, 32], Gen.Int[2, 6], Gen.Int[0, 12], Gen.Int[0, 1], Gen.Int[0, 3],
        (blockSize, maxContext, maxRunning, extraBudget, extraBlocks, chunked) => WithChunking(
            new Config(blockSize, (maxContext + blockSize - 1) / blockSize + extraBlocks, maxRunning + extraBudget, maxRunning, maxContext), chunked > 0));

    /// <summary>Prefill-first steps compute whole prompts, so their budget holds the longest sequence.</summary>
    private static Config WithChunking(Config config, bool chunked) =>
        chunked ? config : config with { Chunked = false, TokenBudget = Math.Max(config.TokenBudget, config.MaxContext) };

    private static long s_preemptions;
    private static long s_prefixHitTokens;
    private static long s_blockCopies;
    private static long s_sharingGroups;

    [Fact]
    public void RandomSchedulesKeepEveryPromise()
    {
        long hitsBefore = Interlocked.Read(ref s_prefixHitTokens), copiesBefore = Interlocked.Read(ref s_blockCopies), groupsBefore = Interlocked.Read(ref s_sharingGroups);
        SeededCases.Check(Gen.Select(GenConfig, GenRequest.Array[1, 16]), seed: 2000, count: 2000, c => RunScenario(c.Item1, c.Item2));
        Assert.True(Interlocked.Read(ref s_prefixHitTokens) > hitsBefore, "the prefix cache never hit");
        Assert.True(Interlocked.Read(ref s_blockCopies) > copiesBefore, "no fork ever copied a shared block");
        Assert.True(Interlocked.Read(ref s_sharingGroups) > groupsBefore, "no step ever had sequences sharing prefix blocks");
    }

    [Fact]
    public void RandomSchedulesKeepEveryPromiseUnderATinyBlockBudget()
    {
        long before = Interlocked.Read(ref s_preemptions);
        SeededCases.Check(Gen.Select(GenTinyConfig, GenRequest.Array[2, 16]), seed: 1000, count: 1000, c => RunScenario(c.Item1, c.Item2));
        Assert.True(Interlocked.Read(ref s_preemptions) > before, "the tiny pools never forced a preemption");
    }

    private static int[] PromptOf(RequestSpec spec, int maxContext)
    {
        int[] prompt = [.. Stems[spec.Stem][..spec.StemLength], .. spec.Suffix];
        if (prompt.Length == 0) prompt = [1];
        return prompt.Length < maxContext ? prompt : prompt[..(maxContext - 1)];
    }

    private static RequestParameters ParametersOf(RequestSpec spec) => new(
        spec.MaxNew,
        spec.Batch ? RequestPriority.Batch : RequestPriority.Interactive,
        spec.Stops ? [0] : null,
        spec.CacheKey == 1 ? 1UL : null);

    private static (BlockPool Pool, ContinuousBatchScheduler Scheduler, FakePagedModel Model) Create(Config config)
    {
        var pool = new BlockPool(config.Blocks, config.BlockSize);
        var scheduler = new ContinuousBatchScheduler(pool, new SchedulerOptions
        {
            TokenBudget = config.TokenBudget,
            MaxRunningRequests = config.MaxRunning,
            MaxContext = config.MaxContext,
            ChunkedPrefill = config.Chunked,
        });
        return (pool, scheduler, new FakePagedModel(pool, scheduler.MaxContext));
    }

    /// <summary>What the request generates as the only request, through the same scheduler, pool and model.</summary>
    private static (int[] Generated, FinishReason Reason) RunAlone(Config config, int[] prompt, RequestParameters parameters)
    {
        var (_, scheduler, model) = Create(config);
        var request = scheduler.Add(prompt, parameters);
        for (int step = 0; scheduler.UnfinishedCount > 0; step++)
        {
            Assert.True(step < StepLimit, "a lone request never finished");
            var batch = scheduler.Schedule();
            if (!batch.IsEmpty) scheduler.OnStepCompleted(model.Step(batch));
        }
        Assert.Equal(0, request.PreemptionCount);
        return (request.GeneratedTokens.ToArray(), request.FinishReason);
    }

    private static void RunScenario(Config config, RequestSpec[] specs)
    {
        var (pool, scheduler, model) = Create(config);
        var requests = new GenerationRequest?[specs.Length];
        var forks = new List<(GenerationRequest Fork, int Spec, int FirstToken)>();
        var endings = new Dictionary<long, int>();
        int lastArrival = specs.Max(s => s.Arrival);

        void Ended(ReadOnlySpan<GenerationRequest> finished)
        {
            foreach (var request in finished)
            {
                Assert.Equal(RequestStatus.Finished, request.Status);
                Assert.Equal(0, request.Blocks.Count);
                endings[request.Id] = endings.GetValueOrDefault(request.Id) + 1;
            }
        }

        // A request asking for forks gets them when its prompt's last chunk is in flight, each with its own first token.
        void ForkDue(ScheduledBatch batch, ReadOnlySpan<int> sampled)
        {
            int row = 0;
            foreach (var chunk in batch.Chunks)
            {
                if (!chunk.NeedsLogits) continue;
                int token = sampled[row++];
                int spec = Array.FindIndex(requests, r => r == chunk.Request);
                if (spec < 0 || specs[spec].Forks == 0 || chunk.Request.NumGeneratedTokens != 0 || forks.Any(f => f.Spec == spec)) continue;
                for (int k = 1; k <= specs[spec].Forks; k++)
                {
                    int first = (token + k) % FakePagedModel.VocabSize;
                    var fork = scheduler.Fork(chunk.Request, first, ParametersOf(specs[spec]));
                    forks.Add((fork, spec, first));
                    if (fork.Status == RequestStatus.Finished)
                    {
                        Assert.Equal(0, fork.Blocks.Count);
                        endings[fork.Id] = 1;
                    }
                }
            }
        }

        void CancelDue(int step, bool duringStep)
        {
            for (int i = 0; i < specs.Length; i++)
            {
                var spec = specs[i];
                if (requests[i] is not { } request || spec.Arrival + spec.CancelAfter != step) continue;
                if (spec.Cancel == (duringStep ? CancelKind.DuringStep : CancelKind.BeforeSchedule)) scheduler.Cancel(request.Id);
                else if (!duringStep && spec.Cancel == CancelKind.Fail) scheduler.Fail(request.Id, "injected failure");
            }
        }

        for (int step = 0; step <= lastArrival || scheduler.UnfinishedCount > 0; step++)
        {
            Assert.True(step < StepLimit, "the scheduler stopped making progress");
            for (int i = 0; i < specs.Length; i++)
            {
                if (specs[i].Arrival == step) requests[i] = scheduler.Add(PromptOf(specs[i], config.MaxContext), ParametersOf(specs[i]));
            }
            CancelDue(step, duringStep: false);

            var batch = scheduler.Schedule();
            Ended(batch.Finished);
            CheckBatch(config, scheduler, batch);
            CheckSharingGroups(batch);
            Interlocked.Add(ref s_blockCopies, batch.Copies.Length);
            if (!batch.IsEmpty)
            {
                var sampled = model.Step(batch);
                ForkDue(batch, sampled);
                CancelDue(step, duringStep: true);
                Ended(scheduler.OnStepCompleted(sampled));
            }
            CheckBlockAccounting(pool, [.. requests, .. forks.Select(f => f.Fork)]);
        }

        // Idle: every request ended exactly once, and every block is free.
        Assert.Equal(0, scheduler.WaitingCount);
        Assert.True(scheduler.Running.IsEmpty);
        Assert.Equal(specs.Length + forks.Count, endings.Count);
        Assert.All(endings.Values, count => Assert.Equal(1, count));
        Assert.Equal(config.Blocks, pool.FreeBlockCount);
        for (int id = 0; id < pool.BlockCount; id++) Assert.Equal(0, pool.GetBlock(id).RefCount);

        for (int i = 0; i < specs.Length; i++)
        {
            var request = requests[i]!;
            var prompt = PromptOf(specs[i], config.MaxContext);
            var alone = RunAlone(config, prompt, ParametersOf(specs[i]));
            var reference = FakePagedModel.Reference(prompt, specs[i].MaxNew, specs[i].Stops ? [0] : [], config.MaxContext);
            Assert.Equal(reference.Generated, alone.Generated);
            Assert.Equal(reference.Reason, alone.Reason);

            switch (request.FinishReason)
            {
                case FinishReason.Length or FinishReason.Stop:
                    Assert.Equal(alone.Generated, request.GeneratedTokens.ToArray());
                    Assert.Equal(alone.Reason, request.FinishReason);
                    break;
                case FinishReason.Cancelled:
                    Assert.True(specs[i].Cancel is CancelKind.BeforeSchedule or CancelKind.DuringStep, $"{request} was cancelled, but its spec says {specs[i].Cancel}");
                    Assert.Equal(alone.Generated[..request.NumGeneratedTokens], request.GeneratedTokens.ToArray());
                    break;
                case FinishReason.Error:
                    Assert.Equal(CancelKind.Fail, specs[i].Cancel);
                    Assert.Equal("injected failure", request.ErrorMessage);
                    Assert.Equal(alone.Generated[..request.NumGeneratedTokens], request.GeneratedTokens.ToArray());
                    break;
                default:
                    Assert.Fail($"{request} ended without a reason");
                    break;
            }
        }

        foreach (var (fork, spec, firstToken) in forks)
        {
            var expected = ForkReference(PromptOf(specs[spec], config.MaxContext), firstToken, specs[spec], config.MaxContext);
            Assert.Equal(expected.Generated, fork.GeneratedTokens.ToArray());
            Assert.Equal(expected.Reason, fork.FinishReason);
        }

        Interlocked.Add(ref s_preemptions, scheduler.PreemptionCount);
        Interlocked.Add(ref s_prefixHitTokens, pool.PrefixHitTokens);
    }

    /// <summary>What a fork generates: its first token, then the model's continuation of the prompt and that token.</summary>
    private static (int[] Generated, FinishReason Reason) ForkReference(int[] prompt, int firstToken, RequestSpec spec, int maxContext)
    {
        int[] stops = spec.Stops ? [0] : [];
        if (stops.Contains(firstToken)) return ([], FinishReason.Stop);
        if (spec.MaxNew == 1 || prompt.Length + 1 == maxContext) return ([firstToken], FinishReason.Length);
        var (rest, reason) = FakePagedModel.Reference([.. prompt, firstToken], spec.MaxNew - 1, stops, maxContext);
        return ([firstToken, .. rest], reason);
    }

    /// <summary>
    /// The step's sharing groups (forks, prompts served from the prefix cache, preempted requests resuming from it):
    /// each has two or more sequences whose tables begin with its prefix blocks, all written before their new tokens;
    /// it shares every such block they have in common; and any two ungrouped-apart sequences share no written block.
    /// </summary>
    private static void CheckSharingGroups(ScheduledBatch batch)
    {
        var tables = batch.BlockTables;
        var groupOf = new int[tables.SequenceCount];
        Array.Fill(groupOf, -1);
        int Written(int s) => (tables.KvLength(s) - (tables.QueryIndptr[s + 1] - tables.QueryIndptr[s])) / tables.BlockSize;
        ReadOnlySpan<int> Table(int s) => tables.BlockIds[tables.Indptr[s]..tables.Indptr[s + 1]];
        for (int g = 0; g < tables.SharedPrefixCount; g++)
        {
            var members = tables.SharedPrefixSequences(g).ToArray();
            int prefix = tables.SharedPrefixBlocks(g);
            Assert.True(members.Length >= 2 && prefix >= 1, $"group {g}: {members.Length} sequences sharing {prefix} blocks");
            int common = int.MaxValue;
            foreach (int s in members)
            {
                Assert.Equal(-1, groupOf[s]);
                groupOf[s] = g;
                Assert.True(prefix <= Written(s), $"sequence {s} has new tokens inside the group's {prefix} shared blocks");
                Assert.Equal(Table(members[0])[..prefix].ToArray(), Table(s)[..prefix].ToArray());
                common = Math.Min(common, Math.Min(Written(s), Table(s)[..Written(s)].CommonPrefixLength(Table(members[0])[..Written(members[0])])));
            }
            Assert.Equal(common, prefix);
        }
        for (int a = 0; a < tables.SequenceCount; a++)
            for (int b = a + 1; b < tables.SequenceCount; b++)
            {
                if (groupOf[a] >= 0 && groupOf[a] == groupOf[b]) continue;
                bool shareWritten = Written(a) > 0 && Written(b) > 0 && Table(a)[0] == Table(b)[0];
                Assert.False(shareWritten, $"sequences {a} and {b} begin with the same written block {Table(a)[0]} but are not grouped together");
            }
        Interlocked.Add(ref s_sharingGroups, tables.SharedPrefixCount);
    }

    private static void CheckBatch(Config config, ContinuousBatchScheduler scheduler, ScheduledBatch batch)
    {
        Assert.True(batch.TokenCount <= config.TokenBudget, $"{batch.TokenCount} tokens over the budget of {config.TokenBudget}");
        Assert.True(scheduler.Running.Length <= config.MaxRunning);
        var seen = new HashSet<long>();
        int tokens = 0, logits = 0;
        foreach (var chunk in batch.Chunks)
        {
            var request = chunk.Request;
            Assert.True(seen.Add(request.Id), $"{request} scheduled twice in one step");
            Assert.Equal(RequestStatus.Running, request.Status);
            Assert.Equal(request.NumComputedTokens, chunk.Start);
            Assert.True(chunk.Count >= 1 && chunk.Start + chunk.Count <= request.NumTokens);
            Assert.Equal(chunk.Start + chunk.Count == request.NumTokens, chunk.NeedsLogits);
            if (!config.Chunked) Assert.True(chunk.NeedsLogits, $"{request}: a partial prompt with chunking off");
            tokens += chunk.Count;
            if (chunk.NeedsLogits) logits++;
        }
        Assert.Equal(tokens, batch.TokenCount);
        Assert.Equal(logits, batch.LogitsCount);

        var running = scheduler.Running;
        for (int i = 0; i < running.Length; i++)
        {
            // Decodes never stall (chunked): every running request one token behind is in the step.
            if (config.Chunked && running[i].NumTokens - running[i].NumComputedTokens == 1) Assert.Contains(running[i].Id, seen);
            if (i > 0)
                Assert.True((running[i - 1].Priority, running[i - 1].Id).CompareTo((running[i].Priority, running[i].Id)) < 0, "running requests out of rank order");
        }
    }

    private static void CheckBlockAccounting(BlockPool pool, IEnumerable<GenerationRequest?> requests)
    {
        Assert.Equal(pool.BlockCount, pool.FreeBlockCount + pool.UsedBlockCount);
        long held = 0;
        foreach (var request in requests)
        {
            if (request is null) continue;
            if (request.Status != RequestStatus.Running) Assert.Equal(0, request.Blocks.Count);
            held += request.Blocks.Count;
        }
        long refs = 0;
        int referenced = 0;
        for (int id = 0; id < pool.BlockCount; id++)
        {
            int count = pool.GetBlock(id).RefCount;
            refs += count;
            if (count > 0) referenced++;
        }
        Assert.Equal(held, refs);
        Assert.Equal(pool.UsedBlockCount, referenced);
    }
}
