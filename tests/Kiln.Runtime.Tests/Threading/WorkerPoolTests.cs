using Kiln.Threading;

namespace Kiln.Runtime.Tests.Threading;

public sealed class WorkerPoolTests
{
    /// <summary>Counts how often each item is visited and checks every range it is given.</summary>
    private readonly struct CountVisits(int[] visits, int chunkSize) : IParallelWork
    {
        public void Execute(int start, int end)
        {
            if (start >= end || end - start > chunkSize || start % chunkSize != 0)
                throw new InvalidOperationException($"Bad range [{start}, {end}) for chunks of {chunkSize}.");
            for (int i = start; i < end; i++) Interlocked.Increment(ref visits[i]);
        }
    }

    private readonly struct ThrowAt(int item) : IParallelWork
    {
        public void Execute(int start, int end)
        {
            if (start <= item && item < end) throw new InvalidTimeZoneException($"item {item}");
        }
    }

    private struct Sum(long[] partials) : IParallelWork
    {
        public readonly void Execute(int start, int end)
        {
            long sum = 0;
            for (int i = start; i < end; i++) sum += i;
            Interlocked.Add(ref partials[0], sum);
        }
    }

    private readonly struct RecordThreads(HashSet<int> threads) : IParallelWork
    {
        public void Execute(int start, int end)
        {
            lock (threads) threads.Add(Environment.CurrentManagedThreadId);
            Thread.Sleep(1);
        }
    }

    private readonly struct Nested(WorkerPool pool) : IParallelWork
    {
        public void Execute(int start, int end) => pool.Run(8, 1, new CountVisits(new int[8], 1));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(5)]
    public void EveryItemIsProcessedExactlyOnce(int threads)
    {
        using var pool = new WorkerPool(threads);
        Assert.Equal(threads, pool.ThreadCount);
        foreach (int items in (int[])[0, 1, 2, 7, 64, 1000, 4099])
            foreach (int chunkSize in (int[])[1, 3, 16, 1000, 5000])
            {
                var visits = new int[items];
                pool.Run(items, chunkSize, new CountVisits(visits, chunkSize));
                Assert.True(Array.TrueForAll(visits, count => count == 1), $"{threads} threads, {items} items, chunks of {chunkSize}");
            }
    }

    [Fact]
    public void ManyRunsInARowOnOnePool()
    {
        using var pool = new WorkerPool(3);
        var partials = new long[1];
        for (int run = 0; run < 500; run++)
        {
            partials[0] = 0;
            pool.Run(100 + run, 7, new Sum(partials));
            long n = 100 + run;
            Assert.Equal(n * (n - 1) / 2, partials[0]);
        }
    }

    [Fact]
    public void ChunksAreSharedBetweenThreads()
    {
        using var pool = new WorkerPool(3);
        var threads = new HashSet<int>();
        pool.Run(60, 1, new RecordThreads(threads));
        Assert.True(threads.Count >= 2, $"only {threads.Count} thread(s) took chunks");
    }

    [Theory]
    [InlineData(1, 0)]
    [InlineData(3, 0)]
    [InlineData(3, 999)]
    [InlineData(4, 517)]
    public void AnExceptionReachesTheCallerAndThePoolStaysUsable(int threads, int failingItem)
    {
        using var pool = new WorkerPool(threads);
        var error = Assert.Throws<InvalidTimeZoneException>(() => pool.Run(1000, 3, new ThrowAt(failingItem)));
        Assert.Equal($"item {failingItem}", error.Message);

        var visits = new int[1000];
        pool.Run(1000, 3, new CountVisits(visits, 3));
        Assert.True(Array.TrueForAll(visits, count => count == 1));
    }

    [Fact]
    public void RunsDoNotNest()
    {
        using var pool = new WorkerPool(2);
        Assert.Throws<InvalidOperationException>(() => pool.Run(4, 1, new Nested(pool)));
    }

    private readonly struct Nap : IParallelWork
    {
        public void Execute(int start, int end) => Thread.Sleep(1);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(8)]
    public void RepeatedRunsDoNotAllocate(int threads)
    {
        using var pool = new WorkerPool(threads);
        var partials = new long[1];
        void Runs()
        {
            for (int i = 0; i < 100; i++) pool.Run(1000, 10, new Sum(partials)); // back to back: hand-offs while spinning
            for (int i = 0; i < 5; i++)
            {
                Thread.Sleep(2);                  // idle long enough that the workers block…
                pool.Run(6, 1, new Nap());        // …and slow chunks make the caller block on stragglers
            }
        }
        Runs(); // JIT

        long before = GC.GetAllocatedBytesForCurrentThread();
        Runs();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void DisposeStopsTheWorkers()
    {
        var pool = new WorkerPool(3);
        pool.Run(100, 1, new Sum(new long[1]));
        pool.Dispose();
        pool.Dispose(); // idempotent
        Assert.Throws<ObjectDisposedException>(() => pool.Run(100, 1, new Sum(new long[1])));
    }

    [Fact]
    public void ArgumentsAreChecked()
    {
        using var pool = new WorkerPool(2);
        Assert.Throws<ArgumentOutOfRangeException>(() => new WorkerPool(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Run(-1, 1, new Sum(new long[1])));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Run(10, 0, new Sum(new long[1])));
        Assert.Equal(Environment.ProcessorCount, new WorkerPool().ThreadCount);
    }
}
