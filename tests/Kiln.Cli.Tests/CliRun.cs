using Kiln.Cli;

namespace Kiln.Cli.Tests;

/// <summary>One invocation of the kiln command line in this process, with its exit code and both output streams.</summary>
internal sealed record CliRun(int ExitCode, string Out, string Error)
{
    /// <summary>Runs kiln with <paramref name="args"/>, stdout and stderr captured (neither a terminal unless asked).</summary>
    public static async Task<CliRun> Of(string[] args, bool errorIsTerminal = false, string input = "")
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var console = new CliConsole(new StringReader(input), output, error, outputIsTerminal: false, errorIsTerminal);
        int exitCode = await KilnCommandLine.RunAsync(args, console);
        return new CliRun(exitCode, output.ToString(), error.ToString());
    }

    public string[] ErrorLines => Error.Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries);

    public override string ToString() => $"exit {ExitCode}\n--- stdout:\n{Out}\n--- stderr:\n{Error}";
}
