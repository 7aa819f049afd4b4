using Kiln.Engine.Paging;

namespace Kiln.Runtime.Tests.Engine.Paging;

public sealed class StepBlockTablesTests
{
    [Fact]
    public void SequencesLandInCsrForm()
    {
        var pool = new BlockPool(16, 4);
        var a = new BlockTable(8);
        var b = new BlockTable(8);
        var c = new BlockTable(8);
        Assert.True(pool.AllocateForSequence(a, 9)); // 3 blocks, 1 in the last
        Assert.True(pool.AllocateForSequence(b, 4)); // exactly 1 full block
        Assert.True(pool.AllocateForSequence(c, 7)); // 2 blocks, 3 in the last

        var step = new StepBlockTables(maxSequences: 4, maxBlockIds: 16, blockSize: 4);
        step.Add(a, kvLength: 9, queryLength: 9);  // a whole prompt
        step.Add(b, kvLength: 4, queryLength: 1);  // a decode
        step.Add(c, kvLength: 7, queryLength: 3);  // a prefill chunk after 4 cached tokens

        Assert.Equal(3, step.SequenceCount);
        Assert.Equal([0, 9, 10, 13], step.QueryIndptr.ToArray());
        Assert.Equal([0, 3, 4, 6], step.Indptr.ToArray());
        Assert.Equal([.. a.BlockIds, .. b.BlockIds, .. c.BlockIds], step.BlockIds.ToArray());
        Assert.Equal([1, 4, 3], step.LastBlockLengths.ToArray());
        Assert.Equal([9, 4, 7], new[] { step.KvLength(0), step.KvLength(1), step.KvLength(2) });
    }

    [Fact]
    public void OnlyTheBlocksTheKvLengthNeedsAreListed()
    {
        var pool = new BlockPool(8, 4);
        var table = new BlockTable(8);
        Assert.True(pool.AllocateForSequence(table, 16));
        var step = new StepBlockTables(2, 8, 4);
        step.Add(table, kvLength: 5, queryLength: 1);
        Assert.Equal(table.BlockIds[..2].ToArray(), step.BlockIds.ToArray());
        Assert.Equal([1], step.LastBlockLengths.ToArray());
    }

    [Fact]
    public void ClearRefillsWithoutAllocating()
    {
        var pool = new BlockPool(8, 4);
        var table = new BlockTable(8);
        Assert.True(pool.AllocateForSequence(table, 12));
        var step = new StepBlockTables(2, 8, 4);
        step.Add(table, 12, 4);
        step.Clear();
        Assert.Equal(0, step.SequenceCount);
        Assert.True(step.BlockIds.IsEmpty);
        Assert.Equal([0], step.Indptr.ToArray());

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            step.Clear();
            step.Add(table, 12, 4);
            step.Add(table, 5, 1);
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void MisuseIsReported()
    {
        var pool = new BlockPool(8, 4);
        var table = new BlockTable(8);
        Assert.True(pool.AllocateForSequence(table, 4));
        var step = new StepBlockTables(1, 1, 4);
        Assert.Throws<ArgumentOutOfRangeException>(() => step.Add(table, kvLength: 5, queryLength: 1)); // needs 2 blocks
        Assert.Throws<ArgumentOutOfRangeException>(() => step.Add(table, kvLength: 2, queryLength: 3));
        step.Add(table, 4, 4);
        Assert.Throws<InvalidOperationException>(() => step.Add(table, 4, 1)); // capacity of one sequence
    }
}
