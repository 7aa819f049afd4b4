namespace Kiln.Engine.Paging;

/// <summary>
/// The blocks no sequence holds, in eviction order: an intrusive doubly linked list through the blocks themselves.
/// Freed blocks join at the tail and allocation takes from the head, so the least recently freed block is evicted
/// first; a freed block that still holds a cached prefix can be taken back out of the middle in O(1).
/// </summary>
public sealed class FreeBlockQueue
{
    private readonly KvBlock _head = KvBlock.CreateSentinel();
    private readonly KvBlock _tail = KvBlock.CreateSentinel();

    public FreeBlockQueue()
    {
        _head.NextFree = _tail;
        _tail.PreviousFree = _head;
    }

    public int Count { get; private set; }

    /// <summary>The block the next allocation takes, or null when the queue is empty.</summary>
    public KvBlock? First => Count == 0 ? null : _head.NextFree;

    /// <summary>The most recently freed block, or null when the queue is empty.</summary>
    public KvBlock? Last => Count == 0 ? null : _tail.PreviousFree;

    public bool Contains(KvBlock block) => block.PreviousFree is not null;

    public void Append(KvBlock block)
    {
        if (Contains(block)) throw new InvalidOperationException($"{block} is already in the free queue.");
        var last = _tail.PreviousFree!;
        last.NextFree = block;
        block.PreviousFree = last;
        block.NextFree = _tail;
        _tail.PreviousFree = block;
        Count++;
    }

    public KvBlock PopFront()
    {
        if (Count == 0) throw new InvalidOperationException("The free queue is empty: no KV block is free.");
        var block = _head.NextFree!;
        Remove(block);
        return block;
    }

    public void Remove(KvBlock block)
    {
        if (!Contains(block)) throw new InvalidOperationException($"{block} is not in the free queue.");
        block.PreviousFree!.NextFree = block.NextFree;
        block.NextFree!.PreviousFree = block.PreviousFree;
        block.PreviousFree = null;
        block.NextFree = null;
        Count--;
    }
}
