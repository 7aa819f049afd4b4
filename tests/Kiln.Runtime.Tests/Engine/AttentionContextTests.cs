namespace Kiln.Runtime.Tests.Engine;

public sealed class AttentionContextTests
{
    [Fact]
    public void ConsecutiveAddsToOneSlotAreOneSequenceWithThatSlotAsItsOnlyBlock()
    {
        var cache = new KvCache(layers: 1, slots: 3, maxContext: 8, kvDim: 2);
        var context = new AttentionContext(cache, capacity: 6);
        context.Add(4, slot: 2, wantLogits: true);
        context.Add(0, slot: 1, wantLogits: false);
        context.Add(1, slot: 1, wantLogits: true);
        context.Add(5, slot: 2, wantLogits: false);

        Assert.Equal(3, context.SequenceCount);
        Assert.Equal([0, 1, 1, 2], context.Sequences.ToArray());
        Assert.Equal([0, 1, 3, 4], context.QueryIndptr.ToArray());
        Assert.Equal([2, 1, 2], context.BlockIds.ToArray());
        Assert.Equal([2, 1, 1, 2], context.Slots.ToArray());
        Assert.Equal([0, 2], context.OutputRows.ToArray());
        Assert.Equal(2 * 8 + 4, context.KvRow(0));
        Assert.Equal(1 * 8 + 1, context.KvRow(2));
        Assert.Equal(2 * 8 + 3, context.KvRow(3, position: 3));

        context.SetSequence(slot: 0, startPosition: 2, count: 3);
        Assert.Equal(1, context.SequenceCount);
        Assert.Equal([2, 3, 4], context.Positions.ToArray());
        Assert.Equal([2], context.OutputRows.ToArray());
    }

    [Fact]
    public void ChunksMapEachPositionThroughTheirBlockTable()
    {
        var cache = KvCache.Paged(layers: 1, blockCount: 8, blockSize: 4, kvDim: 2);
        var context = new AttentionContext(cache, capacity: 8, maxBlockIds: 8);
        // Sequence 0 computes positions 5..7 into blocks [6, 2]; sequence 1 decodes position 9 in blocks [0, 7, 3].
        context.AddChunk([6, 2], startPosition: 5, count: 3, wantLogits: true);
        context.AddChunk([0, 7, 3, 5], startPosition: 9, count: 1, wantLogits: true);

        Assert.Equal(2, context.SequenceCount);
        Assert.Equal([0, 2, 5], context.BlockIndptr.ToArray()); // only the blocks the positions need are kept
        Assert.Equal([6, 2, 0, 7, 3], context.BlockIds.ToArray());
        Assert.Equal([2, 3], context.OutputRows.ToArray());
        Assert.Equal([5, 6, 7, 9], context.Positions.ToArray());
        Assert.Equal(2 * 4 + 1, context.KvRow(0));          // position 5: block index 1 → block 2, offset 1
        Assert.Equal(6 * 4 + 3, context.KvRow(2, position: 3));
        Assert.Equal(3 * 4 + 1, context.KvRow(3));          // position 9: block index 2 → block 3, offset 1
        Assert.Equal(7 * 4 + 0, context.KvRow(3, position: 4));
        Assert.Equal([0, 7, 3], context.BlockTable(1).ToArray());
        Assert.Equal(1, context.SequenceOf(3));
        var error = Assert.Throws<InvalidOperationException>(() => context.Slots.Length);
        Assert.Contains("KvRow", error.Message);
    }

    [Fact]
    public void OneBlockChunksStillHaveSlots()
    {
        var context = new AttentionContext(KvCache.Paged(1, 4, 8, 2), capacity: 4);
        context.AddChunk([3], 0, 2, wantLogits: false);
        context.Add(2, slot: 3, wantLogits: true); // a new sequence: Add never extends a chunk
        Assert.Equal([3, 3, 3], context.Slots.ToArray());
        Assert.Equal(2, context.SequenceCount);
        context.Clear();
        Assert.Equal(0, context.TokenCount);
        Assert.Equal(0, context.SequenceCount);
        Assert.Equal(0, context.BlockIds.Length);
    }

    [Fact]
    public void InvalidStepsAreRejected()
    {
        var context = new AttentionContext(KvCache.Paged(1, 4, 4, 2), capacity: 4, maxBlockIds: 5);
        Assert.Throws<ArgumentException>(() => context.AddChunk([1], 3, 2, true));            // positions 3..4 need two blocks
        Assert.Throws<ArgumentOutOfRangeException>(() => context.AddChunk([1, 4], 3, 2, true)); // no block 4
        Assert.Throws<InvalidOperationException>(() => context.AddChunk([0, 1], 0, 5, true));   // over the token capacity
        Assert.Throws<ArgumentOutOfRangeException>(() => context.Add(4, 0, true));                // beyond a one-block table
        Assert.Throws<ArgumentOutOfRangeException>(() => context.Add(0, 4, true));                // no slot 4
        context.AddChunk([0, 1, 2, 3], 12, 1, true);
        Assert.Throws<InvalidOperationException>(() => context.AddChunk([0, 1], 4, 1, true));   // block ids over capacity
        Assert.Throws<ArgumentOutOfRangeException>(() => new AttentionContext(new KvCache(1, 1, 1, 1), 4, maxBlockIds: 0));
    }
}

/// <summary>
/// AttentionContext.ForSlots gives each kind of model the memory its layers need: attention only a KV slot, recurrent
/// only a state slot (no KV cache at all), a hybrid both, sequence i in slot i of each.
/// </summary>
public sealed class AttentionContextForSlotsTests
{
    private static readonly RecurrentStateShape Scan = new([new StateTensorShape("scan", Layer: 0, Rows: 4, Cols: 2)]);

    [Fact]
    public void AnAttentionModelGetsAKvSlotPerSequenceAndNoState()
    {
        var context = AttentionContext.ForSlots(new MemoryShapeModel(new KvCacheShape(2, 8, 4), RecurrentStateShape.None), slots: 3, maxContext: 16, capacity: 8);
        Assert.True(context.HasCache);
        Assert.False(context.HasState);
        Assert.Equal((2, 3, 16), (context.Cache.Layers, context.Cache.Slots, context.Cache.MaxContext));
    }

    [Fact]
    public void ARecurrentModelGetsAStateSlotPerSequenceAndNoKvCache()
    {
        var context = AttentionContext.ForSlots(new MemoryShapeModel(default, Scan), slots: 3, maxContext: 16, capacity: 8);
        Assert.False(context.HasCache);
        Assert.True(context.HasState);
        Assert.Equal(3, context.State.Slots);
        context.Add(position: 5, slot: 2, wantLogits: true);
        Assert.Equal(2, context.StateSlot(0));
    }

    [Fact]
    public void AHybridGetsBothAndTheSequencesStateSlotIsItsKvSlot()
    {
        var context = AttentionContext.ForSlots(new MemoryShapeModel(new KvCacheShape(1, 8, 4), Scan), slots: 2, maxContext: 16, capacity: 8);
        Assert.True(context.HasCache);
        Assert.True(context.HasState);
        Assert.Equal((2, 2), (context.Cache.Slots, context.State.Slots));
        context.SetSequence(slot: 1, startPosition: 3, count: 2);
        Assert.Equal(1, context.StateSlot(0));
        Assert.Equal([1], context.BlockIds.ToArray());
    }

    /// <summary>A model that is only its memory shapes: ForSlots reads nothing else.</summary>
    private sealed class MemoryShapeModel(KvCacheShape kv, RecurrentStateShape state) : IKilnModel
    {
        public int VocabSize => 1;
        public KvCacheShape KvShape => kv;
        public RecurrentStateShape StateShape => state;
        public KvCache CreateKvCache(int slots, int maxContext) => kv.CreateContiguous(slots, maxContext);
        public Tensor ForwardEager(ReadOnlySpan<int> tokens, AttentionContext context) => throw new NotSupportedException();
        public ICompiledPlan Compile(int maxTokensPerStep) => throw new NotSupportedException();
        public ICompiledPlan Compile(PlanOptions options) => throw new NotSupportedException();
    }
}
