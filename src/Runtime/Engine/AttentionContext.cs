namespace Kiln;

/// <summary>
/// What one step's tokens attend with: per token its position and sequence slot in the KV cache, and the rows
/// whose logits the step returns. Buffers are allocated once with a capacity; a step refills them.
/// </summary>
public sealed class AttentionContext
{
    private readonly int[] _positions;
    private readonly int[] _slots;
    private readonly int[] _outputRows;

    public AttentionContext(KvCache cache, int capacity)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        Cache = cache;
        _positions = new int[capacity];
        _slots = new int[capacity];
        _outputRows = new int[capacity];
    }

    public KvCache Cache { get; }

    public int Capacity => _positions.Length;

    public int TokenCount { get; private set; }

    public int OutputCount { get; private set; }

    public ReadOnlySpan<int> Positions => _positions.AsSpan(0, TokenCount);

    public ReadOnlySpan<int> Slots => _slots.AsSpan(0, TokenCount);

    /// <summary>Token rows whose logits the step produces, in output order.</summary>
    public ReadOnlySpan<int> OutputRows => _outputRows.AsSpan(0, OutputCount);

    public void Clear()
    {
        TokenCount = 0;
        OutputCount = 0;
    }

    /// <summary>Adds the next token of the step: its position in its sequence, the sequence's cache slot, and whether its logits are wanted.</summary>
    public void Add(int position, int slot, bool wantLogits)
    {
        if (TokenCount == Capacity)
            throw new InvalidOperationException($"The step already holds {Capacity} tokens, its capacity.");
        if ((uint)position >= (uint)Cache.MaxContext)
            throw new ArgumentOutOfRangeException(nameof(position), $"Position {position} is beyond the KV cache's context of {Cache.MaxContext}.");
        if ((uint)slot >= (uint)Cache.Slots)
            throw new ArgumentOutOfRangeException(nameof(slot), $"Slot {slot} is outside the KV cache's {Cache.Slots} slots.");
        if (wantLogits) _outputRows[OutputCount++] = TokenCount;
        _positions[TokenCount] = position;
        _slots[TokenCount] = slot;
        TokenCount++;
    }

    /// <summary>Fills the step with one sequence's consecutive tokens from <paramref name="startPosition"/>; only the last token's logits are wanted.</summary>
    public void SetSequence(int slot, int startPosition, int count)
    {
        Clear();
        for (int i = 0; i < count; i++) Add(startPosition + i, slot, i == count - 1);
    }
}
