using System.Threading.Tasks.Sources;

namespace Kiln.Engine.Serving;

/// <summary>
/// One request's updates, from the engine loop (the single writer) to the caller's enumerator (the single reader).
/// A request's updates are bounded (a token each, then the final one), so the buffer is allocated once, whole, and
/// written in order, never wrapped; and a waiting reader is woken by queueing this object itself to the thread pool.
/// So the loop's side never allocates and never locks, where a channel would grow queue segments as tokens stream.
/// </summary>
internal sealed class UpdateStream : IValueTaskSource<bool>, IThreadPoolWorkItem
{
    private readonly GenerationUpdate[] _items;
    private int _written;      // published by the writer after the item is in place
    private int _read;         // the reader's alone
    private volatile bool _completed;
    private int _readerWaiting; // 1 while the reader awaits the signal; whoever swaps it to 0 settles the wait
    private ManualResetValueTaskSourceCore<bool> _signal;

    public UpdateStream(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        _items = new GenerationUpdate[capacity];
    }

    public int Capacity => _items.Length;

    /// <summary>Writer: appends an update and wakes the reader if it waits.</summary>
    public void Write(in GenerationUpdate update)
    {
        int index = _written;
        if (index == _items.Length)
            throw new InvalidOperationException($"A request's stream holds {_items.Length} updates; this one is beyond its bound.");
        _items[index] = update;
        Volatile.Write(ref _written, index + 1);
        WakeReader();
    }

    /// <summary>Writer: no more updates will come.</summary>
    public void Complete()
    {
        _completed = true;
        WakeReader();
    }

    /// <summary>Reader: takes the next update if one is there.</summary>
    public bool TryRead(out GenerationUpdate update)
    {
        if (_read < Volatile.Read(ref _written))
        {
            update = _items[_read];
            _items[_read++] = default; // the text is the reader's now; let it go with the reader
            return true;
        }
        update = default;
        return false;
    }

    /// <summary>Reader: true once an update is there to read; false once the stream is complete and read to the end.</summary>
    public ValueTask<bool> WaitToReadAsync()
    {
        if (_read < Volatile.Read(ref _written)) return new(true);
        // Completion is published after the last write, so reading it first and the count second sees every write.
        if (_completed) return new(_read < Volatile.Read(ref _written));

        _signal.Reset();
        // A full fence, not a release: the flag must be visible before the count is read again below, or the writer
        // could miss the flag while this reads a stale count, and neither would wake the other.
        Interlocked.Exchange(ref _readerWaiting, 1);
        // A write or completion may have landed between the checks above and the flag: look again.
        if ((_read < Volatile.Read(ref _written) || _completed) && Interlocked.Exchange(ref _readerWaiting, 0) == 1)
            return new(true); // took our own wait back: no one will signal it
        return new(this, _signal.Version);
    }

    private void WakeReader()
    {
        // The reader's continuation runs on the pool, never on the engine loop; queueing this object allocates nothing.
        if (Interlocked.Exchange(ref _readerWaiting, 0) == 1) ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
    }

    void IThreadPoolWorkItem.Execute() => _signal.SetResult(true);

    bool IValueTaskSource<bool>.GetResult(short token) => _signal.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<bool>.GetStatus(short token) => _signal.GetStatus(token);

    void IValueTaskSource<bool>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _signal.OnCompleted(continuation, state, token, flags);
}
