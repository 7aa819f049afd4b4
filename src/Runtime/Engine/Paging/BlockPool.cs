namespace Kiln.Engine.Paging;

/// <summary>
/// The paged KV cache's bookkeeping (not its storage): a fixed set of blocks with reference counts, an LRU free
/// queue, and a hash → block map for automatic prefix caching. A block whose last holder lets go keeps its contents
/// and its hash in the free queue, so a later sequence with the same prefix can take it back instead of recomputing
/// it; it loses both only when allocation finally reuses it.
/// </summary>
/// <remarks>
/// Allocates nothing after construction: blocks, the queue links and the map's buckets are all sized up front.
/// Not thread-safe; one engine loop owns it.
/// </remarks>
public sealed class BlockPool
{
    private readonly KvBlock[] _blocks;
    private readonly FreeBlockQueue _free = new();
    private readonly Dictionary<BlockHash, KvBlock> _cached;

    public BlockPool(int blockCount, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockCount);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        if ((long)blockCount * blockSize > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(blockCount), $"{blockCount} blocks of {blockSize} tokens exceed int.MaxValue token positions.");
        BlockSize = blockSize;
        _blocks = new KvBlock[blockCount];
        for (int id = 0; id < blockCount; id++)
        {
            _blocks[id] = new KvBlock(id);
            _free.Append(_blocks[id]);
        }
        // Each block holds at most one hash, so the map never outgrows this and never reallocates.
        _cached = new Dictionary<BlockHash, KvBlock>(blockCount);
    }

    public int BlockSize { get; }

    public int BlockCount => _blocks.Length;

    /// <summary>Token positions the whole pool holds.</summary>
    public int TokenCapacity => BlockCount * BlockSize;

    /// <summary>Blocks no sequence holds (some may still hold a cached prefix, evictable).</summary>
    public int FreeBlockCount => _free.Count;

    /// <summary>Blocks held by at least one sequence.</summary>
    public int UsedBlockCount => BlockCount - FreeBlockCount;

    /// <summary>Blocks registered in the prefix cache, held or free.</summary>
    public int CachedBlockCount => _cached.Count;

    /// <summary>Tokens looked up by <see cref="FindCachedPrefix"/>, all calls together.</summary>
    public long PrefixQueryTokens { get; private set; }

    /// <summary>Tokens <see cref="FindCachedPrefix"/> found cached; over <see cref="PrefixQueryTokens"/> it is the hit rate.</summary>
    public long PrefixHitTokens { get; private set; }

    public KvBlock GetBlock(int id) => _blocks[id];

    /// <summary>Blocks needed to hold <paramref name="tokenCount"/> token positions.</summary>
    public int BlocksFor(int tokenCount) => (tokenCount + BlockSize - 1) / BlockSize;

    /// <summary>
    /// Counts the leading full blocks of <paramref name="tokenIds"/> that are cached, changing nothing;
    /// <paramref name="blocksToRevive"/> says how many of them sit in the free queue (taking them lowers
    /// <see cref="FreeBlockCount"/>). Lets a caller check that an admission fits before committing to it.
    /// </summary>
    public int PeekCachedPrefix(ReadOnlySpan<int> tokenIds, ulong? extraKey, out int blocksToRevive)
    {
        blocksToRevive = 0;
        int hits = 0;
        BlockHash? parent = null;
        for (int start = 0; start + BlockSize <= tokenIds.Length; start += BlockSize)
        {
            var hash = BlockHash.Chain(parent, tokenIds.Slice(start, BlockSize), extraKey);
            if (!_cached.TryGetValue(hash, out var block)) break;
            if (block.RefCount == 0) blocksToRevive++;
            hits++;
            parent = hash;
        }
        return hits;
    }

    /// <summary>
    /// Puts the longest run of cached full blocks that starts <paramref name="tokenIds"/> into the empty
    /// <paramref name="table"/> (each held once more, revived from the free queue if no one held it) and returns
    /// how many tokens they cover, a multiple of <see cref="BlockSize"/>. Hashes use <see cref="BlockTable.CacheKey"/>.
    /// Callers that need logits for the last token pass all tokens but the last, so at least one is left to compute.
    /// </summary>
    public int FindCachedPrefix(ReadOnlySpan<int> tokenIds, BlockTable table)
    {
        ArgumentNullException.ThrowIfNull(table);
        if (table.Count != 0) throw new ArgumentException("The block table must be empty to receive a cached prefix.", nameof(table));
        BlockHash? parent = null;
        int hitTokens = 0;
        for (; hitTokens + BlockSize <= tokenIds.Length && table.Count < table.Capacity; hitTokens += BlockSize)
        {
            var hash = BlockHash.Chain(parent, tokenIds.Slice(hitTokens, BlockSize), table.CacheKey);
            if (!_cached.TryGetValue(hash, out var block)) break;
            Acquire(block);
            table.Append(block.Id);
            table.AppendHash(hash);
            parent = hash;
        }
        PrefixQueryTokens += tokenIds.Length;
        PrefixHitTokens += hitTokens;
        return hitTokens;
    }

    /// <summary>
    /// Grows <paramref name="table"/> to hold <paramref name="tokenCount"/> token positions. All or nothing: returns
    /// false and changes nothing when too few blocks are free (the caller preempts or waits).
    /// </summary>
    public bool AllocateForSequence(BlockTable table, int tokenCount)
    {
        ArgumentNullException.ThrowIfNull(table);
        int needed = BlocksFor(tokenCount) - table.Count;
        if (needed <= 0) return true;
        if (table.Count + needed > table.Capacity)
            throw new ArgumentOutOfRangeException(nameof(tokenCount), $"{tokenCount} tokens need {table.Count + needed} blocks; the block table holds at most {table.Capacity}.");
        if (needed > FreeBlockCount) return false;
        for (int i = 0; i < needed; i++) table.Append(TakeFreeBlock().Id);
        return true;
    }

    /// <summary>
    /// Registers in the prefix cache every block of <paramref name="table"/> that <paramref name="computedTokenCount"/>
    /// computed tokens have filled, chaining each hash from the one before. Call once the KV is written (after the
    /// step), so no one can hit a block whose contents do not exist yet. Partial blocks are never cached.
    /// </summary>
    public void CacheFullBlocks(BlockTable table, ReadOnlySpan<int> tokenIds, int computedTokenCount)
    {
        ArgumentNullException.ThrowIfNull(table);
        if (computedTokenCount > tokenIds.Length)
            throw new ArgumentOutOfRangeException(nameof(computedTokenCount), $"{computedTokenCount} computed tokens but only {tokenIds.Length} token ids.");
        int fullBlocks = Math.Min(computedTokenCount / BlockSize, table.Count);
        for (int index = table.HashedBlockCount; index < fullBlocks; index++)
        {
            BlockHash? parent = index == 0 ? null : table.BlockHashes[index - 1];
            var hash = BlockHash.Chain(parent, tokenIds.Slice(index * BlockSize, BlockSize), table.CacheKey);
            table.AppendHash(hash);
            var block = _blocks[table[index]];
            // Another block may already hold these contents (two sequences computed the same prefix at once):
            // the first one registered stays the cached copy; this one is freed uncached later.
            if (block.Hash is null && _cached.TryAdd(hash, block)) block.Hash = hash;
        }
    }

    /// <summary>
    /// Lets go of every block in <paramref name="table"/> and empties it. Blocks no one else holds join the free
    /// queue's tail, last block first, so eviction takes a sequence's tail before its more shareable prefix.
    /// </summary>
    public void Free(BlockTable table)
    {
        ArgumentNullException.ThrowIfNull(table);
        for (int index = table.Count - 1; index >= 0; index--) Release(_blocks[table[index]]);
        table.Clear();
    }

    /// <summary>
    /// Makes the empty <paramref name="destination"/> share all of <paramref name="source"/>'s blocks (parallel
    /// sampling, beam search): no copying now; <see cref="TryMakeWritable"/> copies a shared block when one side
    /// first writes into it.
    /// </summary>
    public void Fork(BlockTable source, BlockTable destination)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(destination);
        if (destination.Count != 0) throw new ArgumentException("The fork's block table must be empty.", nameof(destination));
        if (destination.Capacity < source.Count)
            throw new ArgumentException($"The fork's block table holds {destination.Capacity} blocks; the source has {source.Count}.", nameof(destination));
        if (destination.CacheKey != source.CacheKey)
            throw new ArgumentException("A fork must keep its source's cache key: the shared blocks' hashes were computed with it.", nameof(destination));
        foreach (int id in source.BlockIds) Acquire(_blocks[id]);
        destination.CopyFrom(source);
    }

    /// <summary>
    /// Makes the block holding <paramref name="position"/> private to <paramref name="table"/> before a write. When
    /// another table shares it, a free block replaces it in this table and <paramref name="copy"/> says which block
    /// to copy into which (the caller copies the KV data before writing); otherwise <paramref name="copy"/> is null.
    /// Returns false, changing nothing, only when a copy is needed and no block is free.
    /// </summary>
    public bool TryMakeWritable(BlockTable table, int position, out BlockCopy? copy)
    {
        ArgumentNullException.ThrowIfNull(table);
        int index = position / BlockSize;
        if ((uint)index >= (uint)table.Count)
            throw new ArgumentOutOfRangeException(nameof(position), $"Position {position} is in block {index}; the table holds {table.Count} blocks.");
        copy = null;
        var block = _blocks[table[index]];
        if (block.RefCount == 1)
        {
            // Sole holder: write in place, but the contents stop matching the cached hash.
            Uncache(block);
            table.TruncateHashes(index);
            return true;
        }
        if (FreeBlockCount == 0) return false;
        var replacement = TakeFreeBlock();
        Release(block); // still held by the other tables, so it stays out of the free queue
        table.Replace(index, replacement.Id);
        table.TruncateHashes(index);
        copy = new BlockCopy(block.Id, replacement.Id);
        return true;
    }

    /// <summary>Takes the least recently freed block; if it still named a cached prefix, that cache entry goes.</summary>
    private KvBlock TakeFreeBlock()
    {
        var block = _free.PopFront();
        Uncache(block);
        block.RefCount = 1;
        return block;
    }

    private void Uncache(KvBlock block)
    {
        if (block.Hash is not { } hash) return;
        _cached.Remove(hash);
        block.Hash = null;
    }

    private void Acquire(KvBlock block)
    {
        if (block.RefCount == 0) _free.Remove(block); // a prefix-cache hit on a freed block: revive it
        block.RefCount++;
    }

    private void Release(KvBlock block)
    {
        if (block.RefCount <= 0) throw new InvalidOperationException($"{block} released more often than held.");
        if (--block.RefCount == 0) _free.Append(block);
    }
}
