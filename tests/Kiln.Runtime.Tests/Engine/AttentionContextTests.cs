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
