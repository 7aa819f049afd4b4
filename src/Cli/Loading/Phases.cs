using System.Diagnostics;
using Spectre.Console;

namespace Kiln.Cli.Loading;

/// <summary>
/// Shows the slow steps of a command (binding weights, compiling) on stderr: a Spectre progress bar on a terminal,
/// one plain line per finished step otherwise.
/// </summary>
internal sealed class Phases(CliConsole console)
{
    /// <summary>
    /// Runs <paramref name="work"/>, which reports progress towards <paramref name="total"/> (bytes, say) through
    /// the callback it is given; with a total of 0 the step shows as running, without a fraction.
    /// </summary>
    public T Run<T>(string description, long total, Func<Action<long>, T> work, Func<T, string>? summary = null)
    {
        var clock = Stopwatch.StartNew();
        T result;
        if (console.ErrorIsTerminal)
        {
            result = console.ErrorConsole.Progress()
                .AutoClear(true)
                .Columns(total > 0
                    ? [new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new SpinnerColumn()]
                    : [new TaskDescriptionColumn(), new ProgressBarColumn(), new ElapsedTimeColumn(), new SpinnerColumn()])
                .Start(context =>
                {
                    var task = context.AddTask(description, maxValue: Math.Max(total, 1));
                    task.IsIndeterminate = total <= 0;
                    var value = work(done => task.Increment(done));
                    task.Value = task.MaxValue;
                    task.StopTask();
                    return value;
                });
        }
        else
        {
            result = work(static _ => { });
        }
        string detail = summary is null ? "" : $" ({summary(result)})";
        console.Error.WriteLine($"kiln: {description}{detail} in {clock.Elapsed.TotalMilliseconds:F0} ms");
        return result;
    }
}
