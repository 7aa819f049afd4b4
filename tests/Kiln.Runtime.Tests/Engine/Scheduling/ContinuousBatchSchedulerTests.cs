using Kiln.Engine.Paging;
using Kiln.Engine.Scheduling;

namespace Kiln.Runtime.Tests.Engine.Scheduling;

public sealed class ContinuousBatchSchedulerTests
{
    private sealed class Harness
    {
        public Harness(int blocks, int blockSize = 4, int budget = 16, int maxRunning = 4, int maxContext = 64, bool chunked = true)
        {
            Pool = new BlockPool(blocks, blockSize);
            Scheduler = new ContinuousBatchScheduler(Pool, new SchedulerOptions { TokenBudget = budget, MaxRunningRequests = maxRunning, MaxContext = maxContext, ChunkedPrefill = chunked });
            Model = new FakePagedModel(Pool, Scheduler.MaxContext);
        }

        public BlockPool Pool { get; }

        public ContinuousBatchScheduler Scheduler { get; }

        public FakePagedModel Model { get; }

        public List<GenerationRequest> Finished { get; } = [];

        /// <summary>The copy-on-writes of the latest <see cref="Step"/>.</summary>
        public BlockCopy[] LastCopies { get; private set; } = [];

        public GenerationRequest Add(int promptLength, int maxNew = 8, RequestPriority priority = RequestPriority.Interactive, int firstToken = 0, int[]? stops = null) =>
            Scheduler.Add(Enumerable.Range(firstToken, promptLength).ToArray(), new RequestParameters(maxNew, priority, stops));

        /// <summary>Schedules and runs one step; returns its chunks as (request id, start, count, needs logits).</summary>
        public (long Id, int Start, int Count, bool Logits)[] Step()
        {
            var batch = Scheduler.Schedule();
            Finished.AddRange(batch.Finished.ToArray());
            var chunks = batch.Chunks.ToArray().Select(c => (c.Request.Id, c.Start, c.Count, c.NeedsLogits)).ToArray();
            LastCopies = batch.Copies.ToArray();
            if (!batch.IsEmpty) Finished.AddRange(Scheduler.OnStepCompleted(Model.Step(batch)).ToArray());
            return chunks;
        }

        public void RunToIdle(int maxSteps = 1000)
        {
            for (int i = 0; i < maxSteps && Scheduler.UnfinishedCount > 0; i++) Step();
            Assert.Equal(0, Scheduler.UnfinishedCount);
        }
    }

    private static void AssertMatchesReference(GenerationRequest request, int maxContext = 64)
    {
        var (generated, reason) = FakePagedModel.Reference(request.PromptTokens, request.MaxNewTokens, request.StopTokenIds, maxContext);
        Assert.Equal(generated, request.GeneratedTokens.ToArray());
        Assert.Equal(reason, request.FinishReason);
    }

    [Fact]
    public void ALongPromptIsChunkedToTheBudget()
    {
        var h = new Harness(blocks: 16, budget: 8);
        var request = h.Add(promptLength: 20, maxNew: 2);
        Assert.Equal([(0L, 0, 8, false)], h.Step());
        Assert.Equal([(0L, 8, 8, false)], h.Step());
        Assert.Equal([(0L, 16, 4, true)], h.Step());
        Assert.Equal(21, request.NumTokens);
        Assert.Equal([(0L, 20, 1, true)], h.Step());
        Assert.Equal(FinishReason.Length, request.FinishReason);
        AssertMatchesReference(request);
        Assert.Equal(16, h.Pool.FreeBlockCount);
    }

    [Fact]
    public void DecodesAreNeverStalledByAPrefillRankedBeforeThem()
    {
        var h = new Harness(blocks: 64, budget: 8, maxRunning: 4);
        var a = h.Add(1, maxNew: 20, RequestPriority.Batch);
        var b = h.Add(1, maxNew: 20, RequestPriority.Batch);
        Assert.Equal([(a.Id, 0, 1, true), (b.Id, 0, 1, true)], h.Step());

        var c = h.Add(60, maxNew: 1, RequestPriority.Interactive); // ranks first once admitted
        Assert.Equal([(a.Id, 1, 1, true), (b.Id, 1, 1, true), (c.Id, 0, 6, false)], h.Step());
        Assert.Equal([c, a, b], h.Scheduler.Running.ToArray());
        // c ranks first but keeps a token for each decode behind it.
        Assert.Equal([(c.Id, 6, 6, false), (a.Id, 2, 1, true), (b.Id, 2, 1, true)], h.Step());
        h.RunToIdle();
        AssertMatchesReference(a);
        AssertMatchesReference(c);
    }

    [Fact]
    public void RunningRequestsComeBeforeWaitingOnes()
    {
        var h = new Harness(blocks: 64, budget: 8, maxRunning: 4);
        var first = h.Add(10, maxNew: 4);
        Assert.Equal([(first.Id, 0, 8, false)], h.Step());
        var second = h.Add(10, maxNew: 4, firstToken: 50);
        Assert.Equal([(first.Id, 8, 2, true), (second.Id, 0, 6, false)], h.Step());
    }

    [Fact]
    public void InteractiveRequestsAreAdmittedBeforeEarlierBatchOnes()
    {
        var h = new Harness(blocks: 64, budget: 8, maxRunning: 1);
        var batch = h.Add(2, maxNew: 1, RequestPriority.Batch);
        var interactive = h.Add(2, maxNew: 1, RequestPriority.Interactive, firstToken: 10);
        Assert.Equal([(interactive.Id, 0, 2, true)], h.Step());
        Assert.Equal([(batch.Id, 0, 2, true)], h.Step());
        Assert.Equal(RequestStatus.Finished, batch.Status);
    }

    [Fact]
    public void TheRunningCapIsRespected()
    {
        var h = new Harness(blocks: 64, budget: 16, maxRunning: 2);
        for (int i = 0; i < 5; i++) h.Add(2, maxNew: 3, firstToken: i * 10);
        for (int step = 0; step < 30 && h.Scheduler.UnfinishedCount > 0; step++)
        {
            var chunks = h.Step();
            Assert.True(chunks.Length <= 2);
            Assert.True(h.Scheduler.Running.Length <= 2);
        }
        Assert.Equal(5, h.Finished.Count);
    }

    [Fact]
    public void WhenBlocksRunOutTheLowestRankedLatestRequestIsPreempted()
    {
        // 6 blocks of 4: three requests of 8-token prompts fill them; the first decode needs a seventh block.
        var h = new Harness(blocks: 6, budget: 32, maxRunning: 4);
        var interactive = h.Add(8, maxNew: 6, RequestPriority.Interactive, firstToken: 0);
        var earlyBatch = h.Add(8, maxNew: 6, RequestPriority.Batch, firstToken: 100);
        var lateBatch = h.Add(8, maxNew: 6, RequestPriority.Batch, firstToken: 200);
        Assert.Equal(3, h.Step().Length);
        Assert.Equal(0, h.Pool.FreeBlockCount);

        var chunks = h.Step();
        Assert.Equal(1, h.Scheduler.PreemptionCount);
        Assert.Equal(RequestStatus.Waiting, lateBatch.Status);
        Assert.Equal(1, lateBatch.PreemptionCount);
        Assert.Equal(0, lateBatch.NumComputedTokens);
        Assert.Equal(9, lateBatch.NumTokens); // keeps the token it generated
        Assert.Equal([(interactive.Id, 8, 1, true), (earlyBatch.Id, 8, 1, true)], chunks);

        h.RunToIdle();
        Assert.All(new[] { interactive, earlyBatch, lateBatch }, r => AssertMatchesReference(r));
        Assert.Equal(6, h.Pool.FreeBlockCount);
    }

    [Fact]
    public void ARequestThatRanksLastPreemptsItself()
    {
        var h = new Harness(blocks: 4, budget: 32, maxRunning: 4);
        var first = h.Add(8, maxNew: 4, RequestPriority.Interactive, firstToken: 0);
        var second = h.Add(8, maxNew: 4, RequestPriority.Interactive, firstToken: 100);
        h.Step();
        Assert.Equal(0, h.Pool.FreeBlockCount);
        // The first needs a block: the second (last) is preempted, and is not admitted again in the same step.
        Assert.Equal([(first.Id, 8, 1, true)], h.Step());
        Assert.Equal(RequestStatus.Waiting, second.Status);
        h.RunToIdle();
        AssertMatchesReference(first);
        AssertMatchesReference(second);
    }

    [Fact]
    public void APreemptedRequestResumesFromThePrefixCache()
    {
        // 6 blocks of 4. The batch request's 16-token prompt takes 4, the interactive one's 7 tokens take 2;
        // the batch decode needs a fifth block, so it preempts itself. The interactive request then takes one of its
        // freed blocks (the last, freed first), leaving its first three blocks cached for when it resumes.
        var h = new Harness(blocks: 6, budget: 32, maxRunning: 4);
        var interactive = h.Add(7, maxNew: 3, RequestPriority.Interactive, firstToken: 0);
        var victim = h.Add(16, maxNew: 4, RequestPriority.Batch, firstToken: 100);
        h.Step();
        Assert.Equal(0, h.Pool.FreeBlockCount);
        h.Step();
        Assert.Equal((RequestStatus.Waiting, 17), (victim.Status, victim.NumTokens));
        for (int i = 0; i < 100 && victim.Status == RequestStatus.Waiting; i++) h.Step();
        Assert.Equal(12, victim.NumCachedTokens);
        h.RunToIdle();
        AssertMatchesReference(interactive);
        AssertMatchesReference(victim);
    }

    [Fact]
    public void APrefixCacheHitSkipsTheCachedTokens()
    {
        var h = new Harness(blocks: 16, budget: 32);
        var first = h.Add(10, maxNew: 1);
        h.RunToIdle();
        Assert.Equal(0, first.NumCachedTokens);

        var second = h.Scheduler.Add([.. Enumerable.Range(0, 10), 77, 78], new RequestParameters(2));
        Assert.Equal([(second.Id, 8, 4, true)], h.Step());
        Assert.Equal(8, second.NumCachedTokens);
        h.RunToIdle();
        AssertMatchesReference(second);
        Assert.True(h.Pool.PrefixHitTokens >= 8);
    }

    [Fact]
    public void AFullyCachedPromptStillComputesItsLastToken()
    {
        var h = new Harness(blocks: 16, budget: 32);
        h.Add(8, maxNew: 1);
        h.RunToIdle();
        var again = h.Add(8, maxNew: 1);
        // Only the first block may come from the cache: the second holds the token whose logits are needed.
        Assert.Equal([(again.Id, 4, 4, true)], h.Step());
        AssertMatchesReference(again);
    }

    [Fact]
    public void DifferentCacheKeysDoNotShareCachedPrefixes()
    {
        var h = new Harness(blocks: 16, budget: 32);
        int[] prompt = [.. Enumerable.Range(0, 10)];
        h.Scheduler.Add(prompt, new RequestParameters(1, CacheKey: 1));
        h.RunToIdle();
        var other = h.Scheduler.Add(prompt, new RequestParameters(1, CacheKey: 2));
        h.Step();
        Assert.Equal(0, other.NumCachedTokens);
        var same = h.Scheduler.Add(prompt, new RequestParameters(1, CacheKey: 1));
        h.Step();
        Assert.Equal(8, same.NumCachedTokens);
    }

    [Fact]
    public void AStopTokenEndsTheRequestWithoutBeingAppended()
    {
        var h = new Harness(blocks: 16);
        int[] prompt = [3, 1, 4];
        int stop = FakePagedModel.NextToken(prompt);
        var request = h.Scheduler.Add(prompt, new RequestParameters(10, StopTokenIds: [stop]));
        h.RunToIdle();
        Assert.Equal(FinishReason.Stop, request.FinishReason);
        Assert.Equal(0, request.NumGeneratedTokens);
        Assert.Equal(16, h.Pool.FreeBlockCount);
    }

    [Fact]
    public void MaxNewTokensAndMaxContextEndWithLength()
    {
        var h = new Harness(blocks: 16, maxContext: 12);
        var byMaxNew = h.Add(3, maxNew: 4);
        var byContext = h.Add(9, maxNew: 10, firstToken: 40);
        h.RunToIdle();
        Assert.Equal((FinishReason.Length, 4), (byMaxNew.FinishReason, byMaxNew.NumGeneratedTokens));
        Assert.Equal((FinishReason.Length, 12), (byContext.FinishReason, byContext.NumTokens));
        AssertMatchesReference(byContext, maxContext: 12);
    }

    [Fact]
    public void RequestsThatCanNeverFitAreRejectedAtAdd()
    {
        var h = new Harness(blocks: 4, blockSize: 4, maxContext: 64); // the pool holds 16 positions
        Assert.Equal(16, h.Scheduler.MaxContext);
        var pool = Assert.Throws<ArgumentException>(() => h.Add(16));
        Assert.Contains("KV pool", pool.Message);
        Assert.Contains("16 tokens", pool.Message);
        h.Add(15, maxNew: 1);

        var limited = new Harness(blocks: 64, maxContext: 10);
        var context = Assert.Throws<ArgumentException>(() => limited.Add(10));
        Assert.Contains("max context of 10", context.Message);
        Assert.Throws<ArgumentException>(() => limited.Add(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => limited.Add(3, maxNew: 0));
    }

    [Fact]
    public void OptionsThatCouldStarveDecodesAreRejected()
    {
        var pool = new BlockPool(8, 4);
        Assert.Throws<ArgumentOutOfRangeException>(() => new ContinuousBatchScheduler(pool, new SchedulerOptions { TokenBudget = 4, MaxRunningRequests = 8 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ContinuousBatchScheduler(pool, new SchedulerOptions { TokenBudget = 0 }));
    }

    [Fact]
    public void CancellingARunningRequestFreesItsBlocksAtTheNextSchedule()
    {
        var h = new Harness(blocks: 16);
        var request = h.Add(6, maxNew: 20);
        h.Step();
        Assert.True(h.Scheduler.Cancel(request.Id));
        Assert.False(h.Scheduler.Cancel(request.Id));
        Assert.Equal(RequestStatus.Running, request.Status);
        Assert.Equal(14, h.Pool.FreeBlockCount);

        var batch = h.Scheduler.Schedule();
        Assert.Equal([request], batch.Finished.ToArray());
        Assert.True(batch.IsEmpty);
        Assert.Equal((RequestStatus.Finished, FinishReason.Cancelled), (request.Status, request.FinishReason));
        Assert.Equal(16, h.Pool.FreeBlockCount);
        Assert.False(h.Scheduler.Cancel(request.Id));
        Assert.False(h.Scheduler.Cancel(12345));
    }

    [Fact]
    public void CancellingAWaitingRequestRemovesItFromTheQueue()
    {
        var h = new Harness(blocks: 16, maxRunning: 1);
        var running = h.Add(2, maxNew: 2);
        var waiting = h.Add(2, maxNew: 2, firstToken: 10);
        var behind = h.Add(2, maxNew: 2, firstToken: 20);
        h.Step();
        Assert.Equal(2, h.Scheduler.WaitingCount);
        h.Scheduler.Cancel(waiting.Id);
        h.RunToIdle();
        Assert.Equal(FinishReason.Cancelled, waiting.FinishReason);
        Assert.Equal(0, waiting.NumGeneratedTokens);
        AssertMatchesReference(running);
        AssertMatchesReference(behind);
    }

    [Fact]
    public void ACancelDuringAStepDropsItsTokenAndAppliesNextSchedule()
    {
        var h = new Harness(blocks: 16);
        var request = h.Add(3, maxNew: 20);
        var batch = h.Scheduler.Schedule();
        var sampled = h.Model.Step(batch);
        h.Scheduler.Cancel(request.Id);
        Assert.True(h.Scheduler.OnStepCompleted(sampled).IsEmpty);
        Assert.Equal(0, request.NumGeneratedTokens);
        Assert.Equal([request], h.Scheduler.Schedule().Finished.ToArray());
        Assert.Equal(FinishReason.Cancelled, request.FinishReason);
        Assert.Equal(16, h.Pool.FreeBlockCount);
    }

    [Fact]
    public void FailEndsARequestWithAnError()
    {
        var h = new Harness(blocks: 16);
        var request = h.Add(3, maxNew: 20);
        h.Step();
        Assert.True(h.Scheduler.Fail(request.Id, "sampler produced NaN"));
        h.Step();
        Assert.Equal((FinishReason.Error, "sampler produced NaN"), (request.FinishReason, request.ErrorMessage));
        Assert.Equal(16, h.Pool.FreeBlockCount);
    }

    /// <summary>What a fork generates: its first token (chosen by the test), then the model's continuation of prompt + it.</summary>
    private static void AssertForkMatchesReference(GenerationRequest fork, int firstToken, int maxContext = 64)
    {
        int[] start = [.. fork.PromptTokens, firstToken];
        var (rest, reason) = FakePagedModel.Reference(start, fork.MaxNewTokens - 1, fork.StopTokenIds, maxContext);
        Assert.Equal([firstToken, .. rest], fork.GeneratedTokens.ToArray());
        Assert.Equal(reason, fork.FinishReason);
    }

    [Fact]
    public void ForksShareThePromptsBlocksAndCopyTheSharedTailOnFirstWrite()
    {
        var h = new Harness(blocks: 16, blockSize: 4, budget: 16);
        var parent = h.Add(promptLength: 6, maxNew: 5);
        var batch = h.Scheduler.Schedule();
        var sampled = h.Model.Step(batch).ToArray();
        int first1 = (sampled[0] + 1) % FakePagedModel.VocabSize, first2 = (sampled[0] + 2) % FakePagedModel.VocabSize;
        var fork1 = h.Scheduler.Fork(parent, first1, new RequestParameters(5));
        var fork2 = h.Scheduler.Fork(parent, first2, new RequestParameters(5));
        h.Scheduler.OnStepCompleted(sampled);

        // Nothing computed twice: the forks hold the parent's two blocks, each block held three times.
        Assert.Equal(parent.Blocks.BlockIds.ToArray(), fork1.Blocks.BlockIds.ToArray());
        Assert.Equal(parent.Blocks.BlockIds.ToArray(), fork2.Blocks.BlockIds.ToArray());
        Assert.All(parent.Blocks.BlockIds.ToArray(), id => Assert.Equal(3, h.Pool.GetBlock(id).RefCount));
        Assert.Equal(14, h.Pool.FreeBlockCount);
        Assert.Equal([parent.Id, fork1.Id, fork2.Id], h.Scheduler.Running.ToArray().Select(r => r.Id));

        // All three write position 6, in the shared partial block: the first two get copies, the last keeps it.
        Assert.Equal([(parent.Id, 6, 1, true), (fork1.Id, 6, 1, true), (fork2.Id, 6, 1, true)], h.Step());
        Assert.Equal(2, h.LastCopies.Length);
        Assert.All(h.LastCopies, copy => Assert.Equal(fork2.Blocks[1], copy.SourceBlockId));
        Assert.Equal([parent.Blocks[1], fork1.Blocks[1]], h.LastCopies.Select(c => c.DestinationBlockId));
        Assert.Equal(3, h.Pool.GetBlock(parent.Blocks[0]).RefCount); // the full block stays shared

        h.RunToIdle();
        AssertMatchesReference(parent);
        AssertForkMatchesReference(fork1, first1);
        AssertForkMatchesReference(fork2, first2);
        Assert.Equal(16, h.Pool.FreeBlockCount);
    }

    [Fact]
    public void AForkOnABlockBoundaryCopiesNothing()
    {
        var h = new Harness(blocks: 16, blockSize: 4);
        var parent = h.Add(promptLength: 8, maxNew: 3);
        var batch = h.Scheduler.Schedule();
        var sampled = h.Model.Step(batch).ToArray();
        int first = (sampled[0] + 3) % FakePagedModel.VocabSize;
        var fork = h.Scheduler.Fork(parent, first, new RequestParameters(3));
        h.Scheduler.OnStepCompleted(sampled);
        h.Step();
        Assert.Empty(h.LastCopies);
        Assert.NotEqual(parent.Blocks[2], fork.Blocks[2]);
        h.RunToIdle();
        AssertMatchesReference(parent);
        AssertForkMatchesReference(fork, first);
        Assert.Equal(16, h.Pool.FreeBlockCount);
    }

    [Fact]
    public void AForkAtTheRunningCapWaitsAndRecomputesFromThePrefixCache()
    {
        var h = new Harness(blocks: 16, blockSize: 4, maxRunning: 1);
        var parent = h.Add(promptLength: 10, maxNew: 3);
        var batch = h.Scheduler.Schedule();
        var sampled = h.Model.Step(batch).ToArray();
        int first = (sampled[0] + 1) % FakePagedModel.VocabSize;
        var fork = h.Scheduler.Fork(parent, first, new RequestParameters(3));
        h.Scheduler.OnStepCompleted(sampled);
        Assert.Equal(RequestStatus.Waiting, fork.Status);
        Assert.Equal(0, fork.Blocks.Count);

        h.RunToIdle();
        Assert.Equal(8, fork.NumCachedTokens); // the prompt's two full blocks came from the cache
        AssertMatchesReference(parent);
        AssertForkMatchesReference(fork, first);
    }

    [Fact]
    public void AForkThatEndsAtItsFirstTokenHoldsNothing()
    {
        var h = new Harness(blocks: 16);
        var parent = h.Add(promptLength: 6, maxNew: 4);
        var batch = h.Scheduler.Schedule();
        var sampled = h.Model.Step(batch).ToArray();
        var stopped = h.Scheduler.Fork(parent, 5, new RequestParameters(4, StopTokenIds: [5]));
        var oneToken = h.Scheduler.Fork(parent, 6, new RequestParameters(1));
        h.Scheduler.OnStepCompleted(sampled);

        Assert.Equal((RequestStatus.Finished, FinishReason.Stop, 0), (stopped.Status, stopped.FinishReason, stopped.NumGeneratedTokens));
        Assert.Equal((RequestStatus.Finished, FinishReason.Length), (oneToken.Status, oneToken.FinishReason));
        Assert.Equal([6], oneToken.GeneratedTokens.ToArray());
        Assert.Equal(0, stopped.Blocks.Count + oneToken.Blocks.Count);
        Assert.Equal([parent], h.Scheduler.Running.ToArray());
        Assert.All(parent.Blocks.BlockIds.ToArray(), id => Assert.Equal(1, h.Pool.GetBlock(id).RefCount));
    }

    [Fact]
    public void OnlyAPromptWhoseLastChunkIsInFlightCanBeForked()
    {
        var h = new Harness(blocks: 16, budget: 4);
        var parent = h.Add(promptLength: 6, maxNew: 4);
        Assert.Throws<InvalidOperationException>(() => h.Scheduler.Fork(parent, 1, new RequestParameters(4))); // no step in flight
        var batch = h.Scheduler.Schedule(); // the first chunk only: no logits yet
        Assert.Throws<InvalidOperationException>(() => h.Scheduler.Fork(parent, 1, new RequestParameters(4)));
        h.Scheduler.OnStepCompleted(h.Model.Step(batch));
        batch = h.Scheduler.Schedule(); // the last chunk: forkable, but only under the parent's cache key
        Assert.Throws<ArgumentException>(() => h.Scheduler.Fork(parent, 1, new RequestParameters(4, CacheKey: 7)));
        h.Scheduler.OnStepCompleted(h.Model.Step(batch));
        h.RunToIdle();
        Assert.Throws<InvalidOperationException>(() => h.Scheduler.Fork(parent, 1, new RequestParameters(4))); // finished
    }

    [Fact]
    public void WithChunkingOffWholePromptsGoFirstAndDecodesWait()
    {
        var h = new Harness(blocks: 64, budget: 64, maxRunning: 4, maxContext: 64, chunked: false);
        var a = h.Add(3, maxNew: 20);
        Assert.Equal([(a.Id, 0, 3, true)], h.Step());
        Assert.Equal([(a.Id, 3, 1, true)], h.Step());

        var b = h.Add(40, maxNew: 2, firstToken: 10);
        var c = h.Add(30, maxNew: 2, firstToken: 20);
        // b's whole prompt fits; c's does not fit what is left, and chunking would split it, so it waits. a waits too.
        Assert.Equal([(b.Id, 0, 40, true)], h.Step());
        Assert.Equal([(c.Id, 0, 30, true)], h.Step());
        Assert.Equal([(a.Id, 4, 1, true), (b.Id, 40, 1, true), (c.Id, 30, 1, true)], h.Step());
        h.RunToIdle();
        AssertMatchesReference(a);
        AssertMatchesReference(b);
        AssertMatchesReference(c);
    }

    [Fact]
    public void WithChunkingOffTheBudgetMustHoldTheLongestPrompt()
    {
        var options = new SchedulerOptions { TokenBudget = 32, MaxRunningRequests = 4, MaxContext = 64, ChunkedPrefill = false };
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new ContinuousBatchScheduler(new BlockPool(64, 4), options));
        Assert.Contains("max context (64)", e.Message);
    }

    [Fact]
    public void TheStepProtocolIsEnforced()
    {
        var h = new Harness(blocks: 16);
        Assert.True(h.Scheduler.Schedule().IsEmpty);
        Assert.Throws<InvalidOperationException>(() => h.Scheduler.OnStepCompleted([]));
        h.Add(3);
        var batch = h.Scheduler.Schedule();
        Assert.Throws<InvalidOperationException>(() => h.Scheduler.Schedule());
        Assert.Throws<ArgumentException>(() => h.Scheduler.OnStepCompleted([1, 2]));
        h.Scheduler.OnStepCompleted(h.Model.Step(batch));
    }

    [Fact]
    public void TheBatchCarriesEachChunksBlockTable()
    {
        var h = new Harness(blocks: 16, budget: 32);
        var a = h.Add(6, maxNew: 2);
        var b = h.Add(9, maxNew: 2, firstToken: 50);
        var tables = h.Scheduler.Schedule().BlockTables;
        Assert.Equal([0, 6, 15], tables.QueryIndptr.ToArray());
        Assert.Equal([0, 2, 5], tables.Indptr.ToArray());
        Assert.Equal([.. a.Blocks.BlockIds, .. b.Blocks.BlockIds], tables.BlockIds.ToArray());
        Assert.Equal([2, 1], tables.LastBlockLengths.ToArray());
    }

    [Fact]
    public void SchedulingAndCompletingStepsAllocateNothing()
    {
        // Preemption, admission with prefix hits, chunking, stops and finishes all happen in this run.
        static void Run(bool measure)
        {
            var h = new Harness(blocks: 10, blockSize: 4, budget: 12, maxRunning: 4, maxContext: 40);
            for (int i = 0; i < 12; i++)
            {
                int[] prompt = [.. Enumerable.Range(i % 3, 6 + i % 5 * 3)];
                h.Scheduler.Add(prompt, new RequestParameters(6 + i % 7, i % 2 == 0 ? RequestPriority.Interactive : RequestPriority.Batch, StopTokenIds: i % 4 == 0 ? [3] : null));
            }
            for (int i = 0; i < 12; i += 3) h.Scheduler.Cancel(i);

            long allocated = 0;
            for (int step = 0; step < 500 && h.Scheduler.UnfinishedCount > 0; step++)
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                var batch = h.Scheduler.Schedule();
                allocated += GC.GetAllocatedBytesForCurrentThread() - before;
                if (batch.IsEmpty) continue;
                var sampled = h.Model.Step(batch);
                before = GC.GetAllocatedBytesForCurrentThread();
                h.Scheduler.OnStepCompleted(sampled);
                allocated += GC.GetAllocatedBytesForCurrentThread() - before;
            }
            Assert.Equal(0, h.Scheduler.UnfinishedCount);
            Assert.True(h.Scheduler.PreemptionCount > 0);
            Assert.True(h.Pool.PrefixHitTokens > 0);
            if (measure) Assert.Equal(0, allocated);
        }

        Run(measure: false); // first run compiles every path
        Run(measure: true);
    }
}
