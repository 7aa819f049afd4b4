using System.CommandLine;
using Kiln.Cli.Commands;
using Kiln.Loading;

namespace Kiln.Cli;

/// <summary>
/// The kiln command line: run, chat, serve and inspect. Every failure is one line on stderr,
/// <c>kiln: error: …</c>, and an exit code (<see cref="ExitCodes"/>), never a stack trace.
/// </summary>
internal static class KilnCommandLine
{
    public static RootCommand Create(CliConsole console) =>
        new("Kiln: run ML models compiled to fused CPU kernels, from a GGUF or llama2.c file.")
        {
            RunCommand.Create(console),
            ChatCommand.Create(console),
            ServeCommand.Create(console),
            InspectCommand.Create(console),
        };

    public static async Task<int> RunAsync(string[] args, CliConsole console, CancellationToken cancellationToken = default)
    {
        var parse = Create(console).Parse(args);
        if (parse.Errors.Count > 0)
        {
            // An unknown word says more than the missing command it leaves behind.
            string message = parse.UnmatchedTokens.Count > 0 ? $"unknown command or argument '{parse.UnmatchedTokens[0]}'." : parse.Errors[0].Message;
            console.Error.WriteLine($"kiln: error: {message}");
            console.Error.WriteLine("Run 'kiln --help' for usage.");
            return ExitCodes.Usage;
        }
        try
        {
            return await parse.InvokeAsync(new InvocationConfiguration
            {
                Output = console.Out,
                Error = console.Error,
                EnableDefaultExceptionHandler = false,
            }, cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return ExitCodes.Ok; // the host that called stopped it on purpose
        }
        catch (OperationCanceledException)
        {
            console.Error.WriteLine("kiln: cancelled");
            return ExitCodes.Cancelled;
        }
        catch (Exception e)
        {
            console.Error.WriteLine($"kiln: error: {Describe(e)}");
            return ExitCodes.Failed;
        }
    }

    /// <summary>
    /// The one line a failure shows. Expected problems (the file, the options, memory) say only what is wrong;
    /// anything else is a bug in Kiln, named by its exception type so it can be reported.
    /// </summary>
    private static string Describe(Exception e) => e switch
    {
        CliException or ModelLoadException or InsufficientMemoryException or IOException or UnauthorizedAccessException => OneLine(e.Message),
        ArgumentException { ParamName: { } name } argument => OneLine(argument.Message.Replace($" (Parameter '{name}')", "", StringComparison.Ordinal)),
        ArgumentException argument => OneLine(argument.Message),
        _ => $"{e.GetType().Name}: {OneLine(e.Message)} (this is a bug in Kiln; please report it)",
    };

    private static string OneLine(string message) => message.ReplaceLineEndings(" ");
}
