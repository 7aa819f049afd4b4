namespace Kiln.Engine.Serving;

/// <summary>
/// A struct one thread publishes and any thread reads whole, without locks: a sequence lock. The writer never waits
/// (it is the engine loop); a reader that overlaps a write simply reads again.
/// </summary>
internal sealed class PublishedValue<T> where T : struct
{
    private T _value;
    private int _version; // odd while a write is in progress

    public void Write(in T value)
    {
        Interlocked.Increment(ref _version);
        _value = value;
        Interlocked.Increment(ref _version);
    }

    public T Read()
    {
        var spinner = new SpinWait();
        while (true)
        {
            int before = Volatile.Read(ref _version);
            if ((before & 1) == 0)
            {
                T value = _value;
                Interlocked.MemoryBarrier();
                if (Volatile.Read(ref _version) == before) return value;
            }
            spinner.SpinOnce();
        }
    }
}
