using Spectre.Console;

namespace Kiln.Cli;

/// <summary>
/// Where a command reads and writes: generated text and reports go to <see cref="Out"/>, progress, timings and
/// errors to <see cref="Error"/>. Whether each is a terminal decides between Spectre's live displays and plain lines.
/// </summary>
internal sealed class CliConsole(TextReader input, TextWriter output, TextWriter error, bool outputIsTerminal, bool errorIsTerminal)
{
    public TextReader In { get; } = input;

    public TextWriter Out { get; } = output;

    public TextWriter Error { get; } = error;

    /// <summary>Progress bars are drawn only where a person watches: stderr is a terminal.</summary>
    public bool ErrorIsTerminal { get; } = errorIsTerminal;

    /// <summary>Spectre rendering on <see cref="Out"/>: colours and the terminal's width there, plain text and a fixed width in a file or pipe.</summary>
    public IAnsiConsole OutConsole => _outConsole ??= Create(Out, outputIsTerminal);

    /// <summary>Spectre rendering on <see cref="Error"/>, for progress displays.</summary>
    public IAnsiConsole ErrorConsole => _errorConsole ??= Create(Error, ErrorIsTerminal);

    private IAnsiConsole? _outConsole, _errorConsole;

    public static CliConsole FromProcess() =>
        new(Console.In, Console.Out, Console.Error, !Console.IsOutputRedirected, !Console.IsErrorRedirected);

    private static IAnsiConsole Create(TextWriter writer, bool terminal)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Yes : InteractionSupport.No,
        });
        if (!terminal) console.Profile.Width = RedirectedWidth;
        return console;
    }

    /// <summary>Tables written to a file or pipe are laid out for this many columns.</summary>
    private const int RedirectedWidth = 120;
}
