namespace Kiln.Engine.Paging;

/// <summary>
/// One sequence's KV blocks in position order (token position p lives in block <c>BlockIds[p / BlockSize]</c> at
/// offset <c>p % BlockSize</c>), with the chained hashes of its leading full, computed blocks. Sized once for the
/// longest sequence; the <see cref="BlockPool"/> fills and empties it.
/// </summary>
public sealed class BlockTable
{
    private readonly int[] _blockIds;
    private readonly BlockHash[] _hashes;

    /// <param name="maxBlocks">The most blocks the sequence can ever hold (its max context over the block size, rounded up).</param>
    /// <param name="cacheKey">Extra key mixed into every block hash: sequences with different keys never share cached blocks.</param>
    public BlockTable(int maxBlocks, ulong? cacheKey = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxBlocks);
        _blockIds = new int[maxBlocks];
        _hashes = new BlockHash[maxBlocks];
        CacheKey = cacheKey;
    }

    public int Capacity => _blockIds.Length;

    public ulong? CacheKey { get; }

    public int Count { get; private set; }

    public ReadOnlySpan<int> BlockIds => _blockIds.AsSpan(0, Count);

    public int this[int index] => BlockIds[index];

    /// <summary>How many leading blocks have their hash known (full and computed); the rest are still being written.</summary>
    public int HashedBlockCount { get; private set; }

    /// <summary>Chained hashes of the leading <see cref="HashedBlockCount"/> blocks.</summary>
    public ReadOnlySpan<BlockHash> BlockHashes => _hashes.AsSpan(0, HashedBlockCount);

    internal void Append(int blockId)
    {
        if (Count == Capacity)
            throw new InvalidOperationException($"The block table is full: {Capacity} blocks, the sequence's maximum.");
        _blockIds[Count++] = blockId;
    }

    internal void Replace(int index, int blockId) => _blockIds[index] = blockId;

    internal void AppendHash(BlockHash hash) => _hashes[HashedBlockCount++] = hash;

    /// <summary>Forgets hashes from <paramref name="count"/> on: those blocks' contents are about to change.</summary>
    internal void TruncateHashes(int count) => HashedBlockCount = Math.Min(HashedBlockCount, count);

    internal void CopyFrom(BlockTable source)
    {
        source.BlockIds.CopyTo(_blockIds);
        source.BlockHashes.CopyTo(_hashes);
        Count = source.Count;
        HashedBlockCount = source.HashedBlockCount;
    }

    internal void Clear()
    {
        Count = 0;
        HashedBlockCount = 0;
    }
}
