using System.Collections.Concurrent;
using Kiln.Kernels.Quantized;
using Kiln.Tests;
using Kiln.Threading;

namespace Kiln.Runtime.Tests.Kernels;

/// <summary>The test-only path switch: a forced path is the one every thread of a plan's worker pool takes, until the scope ends.</summary>
[Collection(KernelPathCollection.Name)]
public sealed class KernelPathSwitchTests
{
    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void AForcedPathReachesEveryWorkerThreadAndEndsWithItsScope(KernelPath path)
    {
        KernelPathCases.SkipUnlessSupported(path);
        using var pool = new WorkerPool(3);
        var probe = new PathProbe();
        using (KernelPaths.Force(path)) pool.Run(32, 1, new ProbeWork { Probe = probe });

        Assert.Equal(32, probe.Seen.Count);
        Assert.All(probe.Seen, seen => Assert.Equal(path, seen.Path));
        Assert.True(probe.Seen.Select(seen => seen.Thread).Distinct().Count() > 1, "no worker thread took part");
        Assert.Equal(KernelPaths.Best, KernelPaths.Active);
    }

    private sealed class PathProbe
    {
        public readonly ConcurrentBag<(int Thread, KernelPath Path)> Seen = [];
        public readonly ManualResetEventSlim AnotherThreadRan = new();
        public int FirstThread = -1;
    }

    /// <summary>Records each item's thread and active path; the first thread holds its item until another thread has run one.</summary>
    private struct ProbeWork : IParallelWork
    {
        public PathProbe Probe;

        public readonly void Execute(int start, int end)
        {
            int thread = Environment.CurrentManagedThreadId;
            for (int i = start; i < end; i++) Probe.Seen.Add((thread, KernelPaths.Active));
            int first = Interlocked.CompareExchange(ref Probe.FirstThread, thread, -1);
            if (first == -1) Probe.AnotherThreadRan.Wait(TimeSpan.FromSeconds(30));
            else if (first != thread) Probe.AnotherThreadRan.Set();
        }
    }
}
