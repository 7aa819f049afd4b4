namespace Kiln.Engine.Scheduling;

/// <summary>
/// Waiting requests of one priority class, first come first served: a ring buffer. New requests join the back;
/// preempted ones return to the front (they arrived before everything still waiting in their class).
/// </summary>
internal sealed class WaitingQueue
{
    private GenerationRequest[] _items = new GenerationRequest[16];
    private int _head;

    public int Count { get; private set; }

    public GenerationRequest Peek() => _items[_head];

    /// <summary>Grows the ring where requests are added, so the step path (preemption) never has to.</summary>
    public void EnsureCapacity(int capacity)
    {
        if (capacity <= _items.Length) return;
        var items = new GenerationRequest[Math.Max(capacity, _items.Length * 2)];
        for (int i = 0; i < Count; i++) items[i] = _items[(_head + i) % _items.Length];
        _items = items;
        _head = 0;
    }

    public void PushBack(GenerationRequest request)
    {
        if (Count == _items.Length) EnsureCapacity(Count + 1);
        _items[(_head + Count) % _items.Length] = request;
        Count++;
    }

    public void PushFront(GenerationRequest request)
    {
        if (Count == _items.Length) EnsureCapacity(Count + 1);
        _head = (_head + _items.Length - 1) % _items.Length;
        _items[_head] = request;
        Count++;
    }

    public GenerationRequest PopFront()
    {
        var request = _items[_head];
        _items[_head] = null!;
        _head = (_head + 1) % _items.Length;
        Count--;
        return request;
    }

    /// <summary>Removes <paramref name="request"/> wherever it is, keeping the others' order (cancellation).</summary>
    public bool Remove(GenerationRequest request)
    {
        int found = -1;
        for (int i = 0; i < Count; i++)
        {
            if (ReferenceEquals(_items[(_head + i) % _items.Length], request)) { found = i; break; }
        }
        if (found < 0) return false;
        for (int i = found; i < Count - 1; i++)
            _items[(_head + i) % _items.Length] = _items[(_head + i + 1) % _items.Length];
        _items[(_head + Count - 1) % _items.Length] = null!;
        Count--;
        return true;
    }
}
