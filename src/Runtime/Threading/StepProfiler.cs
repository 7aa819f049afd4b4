using System.Diagnostics;

namespace Kiln.Threading;

/// <summary>
/// Where a compiled plan's steps spend their time: the generated Step marks each part it enters (a matmul's input
/// preparation and its tiles, the KV write, attention, each elementwise loop) and the <see cref="WorkerPool"/> times
/// every run and each thread's share of it, so a step's wall time splits into parts, and each part's pool runs into
/// every thread's busy time and its wait at the handoff and the barrier.
/// </summary>
/// <remarks>
/// Off unless a thread attaches one (<see cref="Attach"/>): the plan and the pool read <see cref="Current"/> (a
/// thread-static field) once per step and once per run, and do nothing more when it is null. Only the thread that
/// calls Step attaches; the pool hands the profiler to its workers with the run. Allocates only when a part is seen
/// for the first time. Not for concurrent steps.
/// </remarks>
public sealed class StepProfiler
{
    [ThreadStatic] private static StepProfiler? t_current;

    private const int MaxParts = 128;

    private readonly string[] _names = new string[MaxParts];
    private readonly long[] _wall = new long[MaxParts];
    private readonly long[] _runWall = new long[MaxParts];
    private readonly int[] _runs = new int[MaxParts];
    private readonly long[] _busy; // [part × thread]
    private readonly long[] _handoff; // [part × thread]: run start to the thread's first chunk
    private readonly long[] _runWallThisStep = new long[MaxParts];
    private int _partCount;
    private int _part = -1;
    private long _partStart, _stepStart;

    /// <param name="threadCount">Threads of the pool the plan runs on, the caller included.</param>
    public StepProfiler(int threadCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threadCount, 1);
        ThreadCount = threadCount;
        _busy = new long[MaxParts * threadCount];
        _handoff = new long[MaxParts * threadCount];
    }

    /// <summary>The profiler attached to the calling thread, or null (profiling off).</summary>
    public static StepProfiler? Current => t_current;

    /// <summary>Profiles the steps this thread runs from now until <see cref="Detach"/>.</summary>
    public static void Attach(StepProfiler profiler) => t_current = profiler ?? throw new ArgumentNullException(nameof(profiler));

    /// <summary>Stops profiling this thread's steps.</summary>
    public static void Detach() => t_current = null;

    public int ThreadCount { get; }

    /// <summary>Steps completed (BeginStep … EndStep) since the last <see cref="Reset"/>.</summary>
    public int Steps { get; private set; }

    /// <summary>Stopwatch ticks of all completed steps, from BeginStep to EndStep.</summary>
    public long StepTicks { get; private set; }

    /// <summary>Per thread, Stopwatch ticks of completed steps spent outside any pool run (the caller working alone, the workers waiting for it).</summary>
    public long[] OutsideRunIdleTicks { get; private set; } = [];

    /// <summary>Clears every figure (the part names stay known, in order).</summary>
    public void Reset()
    {
        Array.Clear(_wall);
        Array.Clear(_runWall);
        Array.Clear(_runs);
        Array.Clear(_busy);
        Array.Clear(_handoff);
        Array.Clear(_runWallThisStep);
        Steps = 0;
        StepTicks = 0;
        OutsideRunIdleTicks = new long[ThreadCount];
        _part = -1;
    }

    /// <summary>The part from <see cref="BeginStep"/> to the plan's first mark: checking token ids, slicing the arena.</summary>
    public const string SetupPart = "step setup";

    /// <summary>Called by the plan as a step starts (once its arguments are checked): the step's setup part begins.</summary>
    public void BeginStep()
    {
        _stepStart = _partStart = Stopwatch.GetTimestamp();
        _part = IndexOf(SetupPart);
        if (OutsideRunIdleTicks.Length != ThreadCount) OutsideRunIdleTicks = new long[ThreadCount];
    }

    /// <summary>Called by the plan as it enters the part <paramref name="name"/>: the part before it ends here.</summary>
    public void Mark(string name)
    {
        long now = Stopwatch.GetTimestamp();
        Close(now);
        _part = IndexOf(name);
        _partStart = now;
    }

    /// <summary>Called by the plan as a step ends.</summary>
    public void EndStep()
    {
        long now = Stopwatch.GetTimestamp();
        Close(now);
        _part = -1;
        long step = now - _stepStart;
        StepTicks += step;
        Steps++;
        // Outside the runs the caller works alone (its waits are inside the runs) and every worker waits for it.
        long inRuns = 0;
        for (int p = 0; p < _partCount; p++) inRuns += _runWallThisStep[p];
        for (int t = 1; t < ThreadCount; t++) OutsideRunIdleTicks[t] += Math.Max(0, step - inRuns);
        Array.Clear(_runWallThisStep);
    }

    // When the run in flight started: written by the caller before the run is published, read by the workers after.
    private long _runStart;

    /// <summary>Called by the pool as a run of the current part starts (before the workers see it); returns the timestamp.</summary>
    internal long StartRun() => _runStart = Stopwatch.GetTimestamp();

    /// <summary>Called by the pool after a run of the current part, when the last thread is done.</summary>
    internal void EndRun()
    {
        long ticks = Stopwatch.GetTimestamp() - _runStart;
        if (_part < 0) return;
        _runWall[_part] += ticks;
        _runWallThisStep[_part] += ticks;
        _runs[_part]++;
    }

    /// <summary>
    /// Called by each thread of a run (0 the caller, i the i-th worker) as it leaves its chunk loop, with the timestamp it
    /// entered it: the time before is its handoff (a worker waking or noticing the run), the time inside its work.
    /// </summary>
    internal void AddWork(int thread, long entered)
    {
        long now = Stopwatch.GetTimestamp();
        int part = Volatile.Read(ref _part);
        if (part < 0) return;
        _handoff[part * ThreadCount + thread] += Math.Max(0, entered - _runStart);
        _busy[part * ThreadCount + thread] += now - entered;
    }

    /// <summary>Every part seen, in the order first entered, with its totals over the completed steps.</summary>
    public IReadOnlyList<StepPart> Parts
    {
        get
        {
            var parts = new StepPart[_partCount];
            for (int p = 0; p < _partCount; p++)
                parts[p] = new StepPart(_names[p], _wall[p], _runs[p], _runWall[p], _busy.AsSpan(p * ThreadCount, ThreadCount).ToArray(),
                    _handoff.AsSpan(p * ThreadCount, ThreadCount).ToArray());
            return parts;
        }
    }

    private void Close(long now)
    {
        if (_part >= 0) _wall[_part] += now - _partStart;
    }

    private int IndexOf(string name)
    {
        // Generated names are literals: the same reference each step, so the comparison is nearly always by reference.
        for (int p = 0; p < _partCount; p++)
            if (ReferenceEquals(_names[p], name) || string.Equals(_names[p], name, StringComparison.Ordinal)) return p;
        if (_partCount == MaxParts) throw new InvalidOperationException($"A step has more than {MaxParts} parts.");
        _names[_partCount] = name;
        return _partCount++;
    }
}

/// <summary>
/// One part of a step, summed over the profiled steps (Stopwatch ticks): its wall time, the pool runs it made and
/// their wall time, and per thread (0 the caller) the time spent working in those runs and the time before it started
/// (the handoff: a worker noticing the run or waking up for it; the caller's is 0, publishing the run counts as its
/// work); the rest of a run's wall time is the thread's wait at the barrier for the others to finish.
/// </summary>
public sealed record StepPart(string Name, long WallTicks, int Runs, long RunTicks, long[] BusyTicks, long[] HandoffTicks)
{
    /// <summary>Ticks thread <paramref name="thread"/> waited inside this part's runs (handoff and barrier).</summary>
    public long IdleTicks(int thread) => Math.Max(0, RunTicks - BusyTicks[thread]);

    /// <summary>Ticks thread <paramref name="thread"/> waited at the end of this part's runs for the others.</summary>
    public long BarrierTicks(int thread) => Math.Max(0, RunTicks - BusyTicks[thread] - HandoffTicks[thread]);
}
