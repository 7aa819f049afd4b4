using Kiln.Engine.Paging;
using Kiln.Engine.Scheduling;
using Kiln.Engine.State;

namespace Kiln.Runtime.Tests.Engine.State;

/// <summary>The state slot pool, the state storage and how the scheduler hands slots to running requests.</summary>
public sealed class StateSlotTests
{
    private static readonly RecurrentStateShape Shape = new(
    [
        new StateTensorShape("h", 0, 1, 3),
        new StateTensorShape("c", 0, 2, 2, StateStorage.F16),
    ]);

    [Fact]
    public void ThePoolHandsOutEverySlotOnceAndRefusesADoubleFree()
    {
        var pool = new StateSlotPool(3);
        int a = pool.Allocate(), b = pool.Allocate(), c = pool.Allocate();
        Assert.Equal([0, 1, 2], new[] { a, b, c }.Order());
        Assert.Equal(-1, pool.Allocate());
        pool.Free(b);
        Assert.Equal(b, pool.Allocate());
        pool.Free(a);
        Assert.Throws<InvalidOperationException>(() => pool.Free(a));
        Assert.Throws<InvalidOperationException>(() => pool.Free(7));
        Assert.Equal(2, pool.UsedCount);
    }

    [Fact]
    public void StateIsStoredPerSlotInItsStorageAndCopiedWhole()
    {
        var cache = Shape.CreateCache(2);
        Assert.Equal(3 * 4 + 4 * 2, Shape.BytesPerSlot);
        cache.Write(0, 1, [1f, 2f, 3f]);
        cache.Write(1, 1, [0.1f, 0.2f, 0.3f, 1f / 3]);
        var h = new float[3];
        var c = new float[4];
        cache.Read(0, 0, h);
        Assert.Equal([0f, 0f, 0f], h);
        cache.CopySlot(1, 0);
        cache.Read(0, 0, h);
        cache.Read(1, 0, c);
        Assert.Equal([1f, 2f, 3f], h);
        Assert.Equal((float)(Half)(1f / 3), c[3]); // F16 storage rounds
        Assert.Throws<ArgumentException>(() => cache.Read(0, 0, new float[2]));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Write(0, 2, h));
        Assert.Equal(1, cache.Require(0, "c"));
        Assert.Contains("'x' for layer 0", Assert.Throws<InvalidOperationException>(() => cache.Require(0, "x")).Message);
    }

    /// <summary>A kernel's share of a slot (a block of channels): only those values move, in the tensor's storage.</summary>
    [Fact]
    public void ARangeOfASlotIsReadAndWrittenAlone()
    {
        var cache = Shape.CreateCache(2);
        cache.Write(1, 0, [1f, 2f, 3f, 4f]);
        cache.WriteRange(1, 0, 1, [0.1f, 1f / 3]);
        var c = new float[4];
        cache.Read(1, 0, c);
        Assert.Equal([1f, (float)(Half)0.1f, (float)(Half)(1f / 3), 4f], c);
        var part = new float[2];
        cache.ReadRange(1, 0, 2, part);
        Assert.Equal([(float)(Half)(1f / 3), 4f], part);
        cache.WriteRange(0, 1, 2, [9f]);
        var h = new float[3];
        cache.Read(0, 1, h);
        Assert.Equal([0f, 0f, 9f], h);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.ReadRange(1, 0, 3, part));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.WriteRange(0, 0, -1, [1f]));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.ReadRange(2, 0, 0, part));
    }

    [Fact]
    public void AShapeRefusesDuplicateAndEmptyTensors()
    {
        Assert.Throws<ArgumentException>(() => new RecurrentStateShape([new("h", 0, 1, 2), new("h", 0, 1, 2)]));
        Assert.Throws<ArgumentOutOfRangeException>(() => new RecurrentStateShape([new("h", 0, 0, 2)]));
        Assert.True(RecurrentStateShape.None.IsEmpty);
    }

    [Fact]
    public void AContextKeepsEachSequencesStateSlot()
    {
        var context = new AttentionContext(Shape.CreateCache(4), capacity: 8);
        context.AddRecurrentChunk(stateSlot: 2, startPosition: 5, count: 3, wantLogits: true);
        context.Add(0, 1, wantLogits: false);
        context.Add(1, 1, wantLogits: true);
        Assert.Equal(2, context.SequenceCount);
        Assert.Equal(2, context.StateSlot(0));
        Assert.Equal(1, context.StateSlot(1));
        Assert.Equal([5, 6, 7, 0, 1], context.Positions.ToArray());
        Assert.Equal([2, 4], context.OutputRows.ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => context.AddRecurrentChunk(4, 0, 1, true));
        Assert.False(context.HasCache);
        Assert.Throws<InvalidOperationException>(() => new AttentionContext(2).State);
    }

    [Fact]
    public void ARequestWaitsForAFreeSlotAndTakesTheFinishedOnesInTheNextSchedule()
    {
        var slots = new StateSlotPool(1);
        var scheduler = new ContinuousBatchScheduler(new BlockPool(64, 4), new SchedulerOptions { TokenBudget = 16, MaxRunningRequests = 4, MaxContext = 64 }, slots);
        var first = scheduler.Add([1, 2, 3], new RequestParameters(MaxNewTokens: 1));
        var second = scheduler.Add([4, 5], new RequestParameters(MaxNewTokens: 1));

        var batch = scheduler.Schedule();
        Assert.Equal(1, batch.Chunks.Length);
        Assert.Equal(0, first.StateSlot);
        Assert.Equal(-1, second.StateSlot);
        Assert.Equal(RequestStatus.Waiting, second.Status);
        scheduler.OnStepCompleted([9]);
        Assert.Equal(RequestStatus.Finished, first.Status);
        Assert.Equal(-1, first.StateSlot);

        batch = scheduler.Schedule();
        Assert.Equal(second, batch.Chunks[0].Request);
        Assert.Equal(0, second.StateSlot);
        Assert.Equal(0, batch.Chunks[0].Start); // no prefix cache for recurrent state
        Assert.True(scheduler.Cancel(second.Id));
        scheduler.OnStepCompleted([9]);
        scheduler.Schedule();
        Assert.Equal(1, slots.FreeCount);
    }
}
