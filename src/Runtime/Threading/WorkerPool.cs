using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Threading;

/// <summary>
/// Long-lived threads that run one parallel loop at a time (ggml-cpu's threadpool, in .NET): the items of a
/// <see cref="Run{TWork}"/> are cut into chunks that every thread, the caller included, claims through one
/// interlocked counter until none are left, so fast threads take more chunks (work stealing by chunk).
/// Threads that wait (workers between runs, the caller for the last chunks) spin for a fixed time (runs come back to
/// back, one per kernel) and then sleep on an event.
/// A run takes no lock and allocates nothing.
/// </summary>
/// <remarks>One run at a time: <see cref="Run{TWork}"/> is not reentrant and not for concurrent callers.</remarks>
public sealed unsafe class WorkerPool : IDisposable
{
    // How long a waiting thread spins before it blocks. A blocked thread takes 35–50 µs to wake, longer than a
    // decode step's typical kernel, and the gaps between a step's runs are mostly shorter than this. (Measured on the
    // 110m bench, 2 threads: 40 SpinWait rounds blocked ~25 times per batched_decode_8 step, 250 µs about once;
    // decode_128 and batched_decode_8 medians rose 3–7%.)
    private const int SpinMicroseconds = 250;

    private static readonly long SpinTicks = Math.Max(1, Stopwatch.Frequency * SpinMicroseconds / 1_000_000);

    private readonly Thread[] _workers;

    // A worker waiting for run g sleeps on _start[g & 1]. Run g resets the other gate, the one run g − 1 used;
    // every worker has already woken from it (run g − 1 could not finish otherwise), so no wake-up is ever lost
    // and no worker ever sees a stale signal.
    private readonly Gate[] _start = [new(), new()];

    // Wakes a caller that stopped spinning on _pending. Only a hint: the caller re-checks _pending, so a Set that a
    // slow worker makes after the run it belongs to has ended costs one spurious wake-up, never an early return.
    private readonly Gate _done = new();

    // The run in flight, published to the workers by the write of _generation.
    private delegate*<WorkerPool, void> _runChunks;
    private void* _work;
    private int _itemCount, _chunkSize, _chunkCount;
    private Exception? _failure;
    private StepProfiler? _profiler; // the caller's, handed to the workers with the run; null when off

    // Each counter on its own cache line: every claim hits _nextChunk, idle workers poll _generation.
    private PaddedInt _nextChunk, _generation, _pending;
    private int _running;
    private volatile bool _disposed;

    /// <summary>A pool using every processor: the caller plus <c>Environment.ProcessorCount − 1</c> workers.</summary>
    public WorkerPool() : this(Environment.ProcessorCount) { }

    /// <summary>A pool of <paramref name="threadCount"/> threads in all: the calling thread plus <c>threadCount − 1</c> workers.</summary>
    public WorkerPool(int threadCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threadCount, 1);
        _workers = new Thread[threadCount - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            int index = i + 1;
            _workers[i] = new Thread(() => WorkerLoop(index)) { IsBackground = true, Name = $"Kiln worker {index}" };
            _workers[i].Start();
        }
    }

    /// <summary>Threads that take part in a run, the caller included.</summary>
    public int ThreadCount => _workers.Length + 1;

    /// <summary>
    /// Calls <paramref name="work"/>.Execute on chunks of <paramref name="chunkSize"/> items (the last one possibly
    /// shorter) that together cover [0, <paramref name="itemCount"/>) exactly once, on all threads, and returns
    /// when every chunk is done. If any chunk throws, the remaining chunks are abandoned and the first exception
    /// is rethrown here, with its original stack trace.
    /// </summary>
    // The pool's paths are compiled optimized from the first call: at tier 0 a plan's first steps (a few dozen runs of
    // each work type) spun and handed out chunks several times slower, and its first prefills ran up to 40% slower.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Run<TWork>(int itemCount, int chunkSize, TWork work) where TWork : struct, IParallelWork
    {
        ArgumentOutOfRangeException.ThrowIfNegative(itemCount);
        ArgumentOutOfRangeException.ThrowIfLessThan(chunkSize, 1);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (itemCount == 0) return;

        int chunkCount = (int)(((long)itemCount + chunkSize - 1) / chunkSize);
        var profiler = StepProfiler.Current;
        if (profiler is not null && profiler.ThreadCount < ThreadCount)
            throw new InvalidOperationException($"The attached StepProfiler counts {profiler.ThreadCount} threads; this pool runs {ThreadCount}.");
        long runStart = profiler?.StartRun() ?? 0;
        if (chunkCount == 1 || _workers.Length == 0)
        {
            // Nothing to share: waking the workers would cost more than the work.
            for (int start = 0; start < itemCount; start += chunkSize)
                work.Execute(start, (int)Math.Min((long)start + chunkSize, itemCount));
            if (profiler is not null)
            {
                profiler.AddWork(0, runStart);
                profiler.EndRun();
            }
            return;
        }

        if (Interlocked.Exchange(ref _running, 1) != 0)
            throw new InvalidOperationException("WorkerPool.Run is already running: runs cannot nest or overlap.");
        try
        {
            int generation = _generation.Value + 1;
            _start[(generation + 1) & 1].Reset();
            // The work struct stays on this frame until every worker has checked out, so they may read it through a pointer.
            _work = Unsafe.AsPointer(ref work);
            _runChunks = &RunChunks<TWork>;
            _itemCount = itemCount;
            _chunkSize = chunkSize;
            _chunkCount = chunkCount;
            _failure = null;
            _profiler = profiler;
            _nextChunk.Value = 0;
            _pending.Value = _workers.Length;
            Volatile.Write(ref _generation.Value, generation);
            _start[generation & 1].Set();

            RunChunks<TWork>(this);
            profiler?.AddWork(0, runStart);
            WaitForWorkers();
            _work = null;
            profiler?.EndRun();

            if (_failure is { } failure)
            {
                _failure = null;
                ExceptionDispatchInfo.Throw(failure);
            }
        }
        finally
        {
            Volatile.Write(ref _running, 0);
        }
    }

    // The chunk loop every thread runs for one run; generic over the work so Execute is a direct call.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunChunks<TWork>(WorkerPool pool) where TWork : struct, IParallelWork
    {
        TWork work = Unsafe.Read<TWork>(pool._work);
        int itemCount = pool._itemCount, chunkSize = pool._chunkSize;
        uint chunkCount = (uint)pool._chunkCount;
        try
        {
            while (true)
            {
                // Unsigned: counts past the end (one per thread, plus a cancel) stay "past the end" even if they wrap.
                uint chunk = (uint)(Interlocked.Increment(ref pool._nextChunk.Value) - 1);
                if (chunk >= chunkCount) return;
                int start = (int)chunk * chunkSize;
                work.Execute(start, (int)Math.Min((long)start + chunkSize, itemCount));
            }
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref pool._failure, e, null);
            Volatile.Write(ref pool._nextChunk.Value, pool._chunkCount); // nobody claims another chunk
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void WaitForWorkers()
    {
        var spin = new TimedSpin(SpinTicks);
        while (Volatile.Read(ref _pending.Value) != 0)
        {
            if (spin.Next()) continue;
            _done.Wait();
            _done.Reset();
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void WorkerLoop(int index)
    {
        int seen = 0;
        while (true)
        {
            seen = WaitForRun(seen);
            if (_disposed) return;
            var profiler = _profiler;
            long start = profiler is null ? 0 : Stopwatch.GetTimestamp();
            _runChunks(this);
            // Recorded before the decrement: once the caller sees _pending reach 0 the run's figures are complete.
            profiler?.AddWork(index, start);
            if (Interlocked.Decrement(ref _pending.Value) == 0) _done.Set();
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int WaitForRun(int seen)
    {
        var spin = new TimedSpin(SpinTicks);
        do
        {
            int generation = Volatile.Read(ref _generation.Value);
            if (generation != seen) return generation;
        }
        while (spin.Next());
        _start[(seen + 1) & 1].Wait();
        return Volatile.Read(ref _generation.Value);
    }

    /// <summary>Stops and joins the workers. Not to be called while a run is in flight.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        int generation = _generation.Value + 1;
        Volatile.Write(ref _generation.Value, generation);
        _start[generation & 1].Set();
        foreach (var worker in _workers) worker.Join();
    }

    /// <summary>
    /// A spin of a fixed time rather than a count of rounds: a pause per round, the clock read every 16 rounds (the
    /// first read starts the budget, so a wait that ends at once never reads it), and a yield every 1024 rounds, so a
    /// pool with more threads than free cores still lets the thread it waits for run.
    /// </summary>
    private struct TimedSpin(long budgetTicks)
    {
        private long _deadline;
        private int _rounds;

        /// <summary>Pauses once and returns true, or returns false once the budget is spent: time to block.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool Next()
        {
            if ((++_rounds & 15) == 0)
            {
                long now = Stopwatch.GetTimestamp();
                if (_deadline == 0) _deadline = now + budgetTicks;
                else if (now > _deadline) return false;
                if ((_rounds & 1023) == 0) Thread.Yield();
            }
            if (X86Base.IsSupported) X86Base.Pause();
            else Thread.SpinWait(1);
            return true;
        }
    }

    /// <summary>
    /// A manual-reset event for threads that have spun long enough. ManualResetEventSlim would do, but it creates its
    /// lock object on the first wait that blocks, which can be in the middle of any run; this one allocates it up front.
    /// </summary>
    private sealed class Gate
    {
        private readonly object _lock = new();
        private volatile bool _isSet;
        private int _sleepers;

        public void Set()
        {
            _isSet = true;
            // Full fences on both sides (here and the sleeper's increment): either the sleeper sees the flag before
            // it waits, or this sees the sleeper and pulses it, under the lock the sleeper holds until it waits.
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref _sleepers) != 0)
                lock (_lock) Monitor.PulseAll(_lock);
        }

        // A full fence after the store: a waiter resets the gate and then re-checks its condition (the caller of Run
        // re-reads _pending). Without it the x86 store buffer lets that read pass the reset, so a worker's
        // decrement-then-Set can fall between them, the reset lands after the Set, and the caller sleeps forever
        // with _pending already 0 (a lost wake-up seen about once in 10^6 runs).
        public void Reset()
        {
            _isSet = false;
            Interlocked.MemoryBarrier();
        }

        public void Wait()
        {
            if (_isSet) return;
            lock (_lock)
            {
                Interlocked.Increment(ref _sleepers);
                while (!_isSet) Monitor.Wait(_lock);
                Interlocked.Decrement(ref _sleepers);
            }
        }
    }

    [StructLayout(LayoutKind.Explicit, Size = 128)]
    private struct PaddedInt
    {
        [FieldOffset(64)] public int Value;
    }
}
