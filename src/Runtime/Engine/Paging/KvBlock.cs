namespace Kiln.Engine.Paging;

/// <summary>
/// One block of the paged KV cache: <see cref="BlockPool.BlockSize"/> token positions of keys and values in every
/// layer. The pool owns all blocks for its whole life; sequences hold them by id.
/// </summary>
public sealed class KvBlock
{
    public KvBlock(int id)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(id);
        Id = id;
    }

    private KvBlock()
    {
        Id = -1;
    }

    /// <summary>The block's index in the KV storage; what block tables hold.</summary>
    public int Id { get; }

    /// <summary>How many block tables hold this block; at 0 it sits in the free queue.</summary>
    public int RefCount { get; internal set; }

    /// <summary>Set while the block is registered in the prefix cache (full, computed, its contents named by this hash).</summary>
    public BlockHash? Hash { get; internal set; }

    // Intrusive free-queue links: the block carries its own neighbours, so it can leave the queue from any
    // position in O(1) (a prefix-cache hit reviving a freed block) without a node allocation.
    internal KvBlock? PreviousFree { get; set; }

    internal KvBlock? NextFree { get; set; }

    /// <summary>The free queue's head and tail markers: never handed out, so links are never null inside the queue.</summary>
    internal static KvBlock CreateSentinel() => new();

    public override string ToString() => $"block {Id} (refs {RefCount}{(Hash is { } h ? $", hash {h}" : "")})";
}
