using Kiln.Threading;

namespace Kiln.Generators.Tests;

/// <summary>
/// The compiled plans hand a worker pool about 80 short runs per decoded token. A lost wake-up between a run's end
/// and the caller's wait used to hang a plan (the caller reset its gate, and x86 let its re-read of the pending count
/// pass that reset; a 110M-model decode loop hit it about once in 2·10^6 runs). That window is a few instructions
/// wide, too narrow to hit reliably in a test; this drives the same hand-off (the caller giving up spinning just as
/// the worker finishes) as a smoke test: every run returns and every item runs once.
/// </summary>
public sealed class WorkerPoolHandoffTests
{
    // Item 0 is claimed first, by the caller; item 1 by the worker, which takes a varying while longer, so the
    // caller stops spinning and waits just as the worker finishes: the window of the old race.
    private struct Touch : IParallelWork
    {
        public int[] Counts;
        public int Delay;

        public void Execute(int start, int end)
        {
            for (int i = start; i < end; i++)
            {
                if (i == 1) Thread.SpinWait(Delay);
                Interlocked.Increment(ref Counts[i]);
            }
        }
    }

    [Fact]
    public async Task ManyShortRunsNeverLoseAWakeUp()
    {
        const int Runs = 100_000;
        var counts = new int[2];
        var runner = Task.Factory.StartNew(() =>
        {
            using var pool = new WorkerPool(2);
            for (int run = 0; run < Runs; run++)
                pool.Run(2, 1, new Touch { Counts = counts, Delay = run * 7919 % 300 });
        }, TaskCreationOptions.LongRunning);
        var finished = await Task.WhenAny(runner, Task.Delay(TimeSpan.FromSeconds(120)));
        Assert.True(finished == runner, "a run never returned: the caller missed its workers' last wake-up");
        await runner; // surfaces a failed run's exception
        Assert.All(counts, c => Assert.Equal(Runs, c));
    }
}
