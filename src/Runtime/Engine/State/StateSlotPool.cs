namespace Kiln.Engine.State;

/// <summary>
/// The recurrent state's bookkeeping, as <see cref="Paging.BlockPool"/> is the KV cache's: which of a fixed set of
/// state slots are free. A running sequence holds exactly one from admission until it finishes, is cancelled or
/// preempted; a freed slot goes to the next sequence at once (E-BATCH's refill) and needs no clearing, since a
/// sequence's first chunk starts from zeros. Allocates nothing after construction; one engine loop owns it.
/// </summary>
public sealed class StateSlotPool
{
    private readonly int[] _free;
    private readonly bool[] _held;
    private int _freeCount;

    public StateSlotPool(int slots)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(slots);
        _free = new int[slots];
        _held = new bool[slots];
        // Lowest first, so a lightly loaded engine keeps reusing the same few slots (their state stays in cache).
        for (int i = 0; i < slots; i++) _free[i] = slots - 1 - i;
        _freeCount = slots;
    }

    public int SlotCount => _free.Length;

    public int FreeCount => _freeCount;

    public int UsedCount => SlotCount - _freeCount;

    /// <summary>Takes a free slot; -1 when every slot is held.</summary>
    public int Allocate()
    {
        if (_freeCount == 0) return -1;
        int slot = _free[--_freeCount];
        _held[slot] = true;
        return slot;
    }

    /// <summary>Returns a held slot; freeing one twice, or one never handed out, is a bookkeeping bug and throws.</summary>
    public void Free(int slot)
    {
        if ((uint)slot >= (uint)_held.Length || !_held[slot])
            throw new InvalidOperationException($"State slot {slot} is not held: it was freed twice or never allocated.");
        _held[slot] = false;
        _free[_freeCount++] = slot;
    }
}
