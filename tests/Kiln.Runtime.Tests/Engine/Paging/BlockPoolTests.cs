using Kiln.Engine.Paging;

namespace Kiln.Runtime.Tests.Engine.Paging;

public sealed class BlockPoolTests
{
    private const int BlockSize = 4;

    private static int[] Range(int start, int count) => Enumerable.Range(start, count).ToArray();

    /// <summary>A sequence that computed <paramref name="tokens"/>: blocks allocated and full ones cached.</summary>
    private static BlockTable Computed(BlockPool pool, int[] tokens, ulong? cacheKey = null)
    {
        var table = new BlockTable(16, cacheKey);
        Assert.True(pool.AllocateForSequence(table, tokens.Length));
        pool.CacheFullBlocks(table, tokens, tokens.Length);
        return table;
    }

    private static int[] AllocationOrder(BlockPool pool, int count)
    {
        var ids = new int[count];
        for (int i = 0; i < count; i++)
        {
            var table = new BlockTable(1);
            Assert.True(pool.AllocateForSequence(table, 1));
            ids[i] = table[0];
        }
        return ids;
    }

    [Fact]
    public void FreedBlocksAreReusedLeastRecentlyFreedFirst()
    {
        var pool = new BlockPool(4, BlockSize);
        var tables = new BlockTable[4];
        for (int i = 0; i < 4; i++)
        {
            tables[i] = new BlockTable(1);
            Assert.True(pool.AllocateForSequence(tables[i], BlockSize));
        }
        Assert.Equal(0, pool.FreeBlockCount);
        Assert.Equal(4, pool.UsedBlockCount);

        pool.Free(tables[2]);
        pool.Free(tables[0]);
        pool.Free(tables[3]);
        Assert.Equal([2, 0, 3], AllocationOrder(pool, 3));
    }

    [Fact]
    public void ASequenceFreesItsLastBlockFirstSoItsPrefixIsEvictedLast()
    {
        var pool = new BlockPool(3, BlockSize);
        var table = Computed(pool, Range(0, 12));
        Assert.Equal([0, 1, 2], table.BlockIds.ToArray());
        pool.Free(table);
        Assert.Equal(0, table.Count);
        Assert.Equal([2, 1, 0], AllocationOrder(pool, 3));
    }

    [Fact]
    public void AllocationIsAllOrNothing()
    {
        var pool = new BlockPool(3, BlockSize);
        var table = new BlockTable(8);
        Assert.True(pool.AllocateForSequence(table, 5));
        Assert.Equal(2, table.Count);
        Assert.True(pool.AllocateForSequence(table, 8)); // already covered
        Assert.Equal(2, table.Count);
        Assert.False(pool.AllocateForSequence(table, 13)); // needs 2 more, 1 free
        Assert.Equal(2, table.Count);
        Assert.Equal(1, pool.FreeBlockCount);
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.AllocateForSequence(new BlockTable(1), 5));
    }

    [Fact]
    public void AFreedCachedPrefixIsRevivedFromTheMiddleOfTheFreeQueue()
    {
        var pool = new BlockPool(6, BlockSize);
        var tokens = Range(100, 8);
        var first = Computed(pool, tokens);
        int[] firstBlocks = first.BlockIds.ToArray();
        BlockHash[] firstHashes = first.BlockHashes.ToArray();
        pool.Free(first);
        Assert.Equal(6, pool.FreeBlockCount);
        Assert.Equal(2, pool.CachedBlockCount);

        var second = new BlockTable(16);
        Assert.Equal(8, pool.FindCachedPrefix(tokens, second));
        Assert.Equal(firstBlocks, second.BlockIds.ToArray());
        Assert.Equal(4, pool.FreeBlockCount);
        Assert.All(firstBlocks, id => Assert.Equal(1, pool.GetBlock(id).RefCount));
        Assert.Equal(firstHashes, second.BlockHashes.ToArray());
        Assert.Equal(8, pool.PrefixQueryTokens);
        Assert.Equal(8, pool.PrefixHitTokens);

        // The other free blocks keep their order around the revived ones.
        Assert.Equal([2, 3, 4, 5], AllocationOrder(pool, 4));
    }

    [Fact]
    public void TheLongestRunOfCachedBlocksIsFoundAndNothingAfterAMiss()
    {
        var pool = new BlockPool(8, BlockSize);
        var tokens = Range(0, 12);
        var holder = Computed(pool, tokens);
        int[] probe = [.. tokens[..4], 99, .. tokens[5..]]; // second block differs, third block equal but chained differently

        var table = new BlockTable(16);
        Assert.Equal(4, pool.FindCachedPrefix(probe, table));
        Assert.Equal([holder[0]], table.BlockIds.ToArray());
        Assert.Equal(2, pool.GetBlock(holder[0]).RefCount);
        Assert.Equal(12, pool.PrefixQueryTokens);
        Assert.Equal(4, pool.PrefixHitTokens);
    }

    [Fact]
    public void PartialBlocksAreNotCached()
    {
        var pool = new BlockPool(4, BlockSize);
        var tokens = Range(0, 6);
        var table = Computed(pool, tokens);
        Assert.Equal(2, table.Count);
        Assert.Equal(1, table.HashedBlockCount);
        Assert.Equal(1, pool.CachedBlockCount);
        Assert.Null(pool.GetBlock(table[1]).Hash);
        pool.Free(table);

        Assert.Equal(4, pool.FindCachedPrefix(tokens, new BlockTable(4)));
    }

    [Fact]
    public void OnlyComputedTokensCount()
    {
        var pool = new BlockPool(4, BlockSize);
        var tokens = Range(0, 8);
        var table = new BlockTable(4);
        Assert.True(pool.AllocateForSequence(table, 8));
        pool.CacheFullBlocks(table, tokens, computedTokenCount: 7);
        Assert.Equal(1, pool.CachedBlockCount);
        pool.CacheFullBlocks(table, tokens, computedTokenCount: 8);
        Assert.Equal(2, pool.CachedBlockCount);
        Assert.Equal(2, table.HashedBlockCount);
    }

    [Fact]
    public void ReusingACachedFreeBlockDropsItsHash()
    {
        var pool = new BlockPool(2, BlockSize);
        var tokens = Range(0, 8);
        pool.Free(Computed(pool, tokens));
        Assert.Equal(2, pool.CachedBlockCount);

        // Freed last-block-first: block 1 then block 0; allocation takes block 1 first.
        var other = new BlockTable(1);
        Assert.True(pool.AllocateForSequence(other, 1));
        Assert.Equal(1, other[0]);
        Assert.Null(pool.GetBlock(1).Hash);
        Assert.Equal(1, pool.CachedBlockCount);
        Assert.Equal(4, pool.FindCachedPrefix(tokens, new BlockTable(2)));
    }

    [Fact]
    public void PeekingChangesNothing()
    {
        var pool = new BlockPool(4, BlockSize);
        var tokens = Range(0, 8);
        var held = Computed(pool, tokens[..4]);
        var freed = Computed(pool, tokens);
        pool.Free(freed);
        int free = pool.FreeBlockCount;

        Assert.Equal(2, pool.PeekCachedPrefix(tokens, extraKey: null, out int revive));
        Assert.Equal(1, revive); // block 0 is held by the first table, block of tokens 4..7 is free
        Assert.Equal(free, pool.FreeBlockCount);
        Assert.Equal(0, pool.PrefixQueryTokens);
        Assert.Equal(1, pool.GetBlock(held[0]).RefCount);
    }

    [Fact]
    public void CacheKeysKeepSequencesApart()
    {
        var pool = new BlockPool(4, BlockSize);
        var tokens = Range(0, 4);
        pool.Free(Computed(pool, tokens, cacheKey: 1));
        Assert.Equal(0, pool.FindCachedPrefix(tokens, new BlockTable(2, cacheKey: 2)));
        Assert.Equal(0, pool.FindCachedPrefix(tokens, new BlockTable(2)));
        Assert.Equal(4, pool.FindCachedPrefix(tokens, new BlockTable(2, cacheKey: 1)));
    }

    [Fact]
    public void TheSameContentComputedTwiceIsCachedOnce()
    {
        var pool = new BlockPool(4, BlockSize);
        var tokens = Range(0, 4);
        var first = Computed(pool, tokens);
        var second = Computed(pool, tokens);
        Assert.Equal(1, pool.CachedBlockCount);
        Assert.NotNull(pool.GetBlock(first[0]).Hash);
        Assert.Null(pool.GetBlock(second[0]).Hash);
        Assert.Equal(first.BlockHashes.ToArray(), second.BlockHashes.ToArray());
        pool.Free(first);
        pool.Free(second);
        Assert.Equal(1, pool.CachedBlockCount);
        Assert.Equal(4, pool.FreeBlockCount);
    }

    [Fact]
    public void AForkSharesEveryBlockUntilAWriteCopiesTheSharedLastBlock()
    {
        var pool = new BlockPool(8, BlockSize);
        var tokens = Range(0, 6);
        var parent = Computed(pool, tokens);
        var child = new BlockTable(16);
        pool.Fork(parent, child);
        Assert.Equal(parent.BlockIds.ToArray(), child.BlockIds.ToArray());
        Assert.All(child.BlockIds.ToArray(), id => Assert.Equal(2, pool.GetBlock(id).RefCount));
        Assert.Equal(1, child.HashedBlockCount);

        // The child writes position 6, in the shared partial block 1: it gets a private copy.
        int shared = parent[1];
        Assert.True(pool.TryMakeWritable(child, 6, out var copy));
        Assert.NotNull(copy);
        Assert.Equal(shared, copy.Value.SourceBlockId);
        Assert.Equal(child[1], copy.Value.DestinationBlockId);
        Assert.NotEqual(shared, child[1]);
        Assert.Equal(parent[0], child[0]);
        Assert.Equal(1, pool.GetBlock(shared).RefCount);
        Assert.Equal(1, pool.GetBlock(child[1]).RefCount);
        Assert.Equal(2, pool.GetBlock(parent[0]).RefCount);

        // The parent is now the block's only holder: it writes in place.
        Assert.True(pool.TryMakeWritable(parent, 6, out var none));
        Assert.Null(none);
        Assert.Equal(shared, parent[1]);

        pool.Free(parent);
        pool.Free(child);
        Assert.Equal(8, pool.FreeBlockCount);
    }

    [Fact]
    public void WritingIntoACachedBlockTakesItOutOfTheCache()
    {
        var pool = new BlockPool(4, BlockSize);
        var table = Computed(pool, Range(0, 8));
        Assert.True(pool.TryMakeWritable(table, 5, out var copy));
        Assert.Null(copy);
        Assert.Equal(1, table.HashedBlockCount);
        Assert.Null(pool.GetBlock(table[1]).Hash);
        Assert.Equal(1, pool.CachedBlockCount);
    }

    [Fact]
    public void ACopyWithNoFreeBlockFailsAndChangesNothing()
    {
        var pool = new BlockPool(2, BlockSize);
        var parent = Computed(pool, Range(0, 6));
        var child = new BlockTable(4);
        pool.Fork(parent, child);
        Assert.False(pool.TryMakeWritable(child, 6, out var copy));
        Assert.Null(copy);
        Assert.Equal(parent.BlockIds.ToArray(), child.BlockIds.ToArray());
        Assert.Equal(2, pool.GetBlock(parent[1]).RefCount);
    }

    [Fact]
    public void ForkRejectsANonEmptyOrDifferentlyKeyedDestination()
    {
        var pool = new BlockPool(4, BlockSize);
        var parent = Computed(pool, Range(0, 4));
        Assert.Throws<ArgumentException>(() => pool.Fork(parent, new BlockTable(4, cacheKey: 7)));
        var busy = Computed(pool, Range(0, 1));
        Assert.Throws<ArgumentException>(() => pool.Fork(parent, busy));
    }

    [Fact]
    public void TheHotOperationsAllocateNothing()
    {
        var pool = new BlockPool(64, BlockSize);
        var tokens = Range(0, 40);
        var tables = new BlockTable[4];
        for (int i = 0; i < tables.Length; i++) tables[i] = new BlockTable(16);

        void Cycle()
        {
            for (int i = 0; i < tables.Length; i++)
            {
                var table = tables[i];
                int cached = pool.FindCachedPrefix(tokens.AsSpan(0, 20 + i * 4), table);
                pool.PeekCachedPrefix(tokens, null, out _);
                pool.AllocateForSequence(table, 24 + i * 4);
                pool.CacheFullBlocks(table, tokens, 24 + i * 4);
                pool.TryMakeWritable(table, cached, out _);
            }
            var fork = tables[0];
            pool.Free(fork);
            pool.Fork(tables[1], fork);
            for (int i = 0; i < tables.Length; i++) pool.Free(tables[i]);
        }

        Cycle();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++) Cycle();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.Equal(64, pool.FreeBlockCount);
    }
}
