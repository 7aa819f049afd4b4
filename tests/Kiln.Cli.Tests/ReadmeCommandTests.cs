using System.Text.RegularExpressions;
using Kiln.EndToEnd.Tests;
using Kiln.Tests;

namespace Kiln.Cli.Tests;

/// <summary>
/// The README's "Command line" examples, each run as written after <c>dotnet run -c Release --project src/Cli --</c>
/// (in this process, on the test's copy of models/; serve on a free port instead of 8080, stopped once it listens).
/// </summary>
public sealed partial class ReadmeCommandTests
{
    public static TheoryData<string> Commands()
    {
        string readme = Repository.ReadReadme();
        int section = readme.IndexOf("\n## Command line\n", StringComparison.Ordinal);
        Assert.True(section >= 0, "README.md has no 'Command line' section");
        var block = Regex.Match(readme[section..], @"```bash\n(?<lines>.*?)```", RegexOptions.Singleline);
        var data = new TheoryData<string>();
        foreach (string line in block.Groups["lines"].Value.Split('\n', StringSplitOptions.RemoveEmptyEntries)) data.Add(line);
        return data;
    }

    [Theory]
    [MemberData(nameof(Commands))]
    public async Task Runs_as_written(string line)
    {
        const string prefix = "dotnet run -c Release --project src/Cli -- ";
        Assert.StartsWith(prefix, line, StringComparison.Ordinal);
        string[] args = Arguments().Matches(line[prefix.Length..]).Select(m => m.Groups["quoted"].Success ? m.Groups["quoted"].Value : m.Value)
            .Select(arg => arg.StartsWith("models/", StringComparison.Ordinal) ? StoriesReference.ModelPath(arg["models/".Length..]) : arg).ToArray();

        var output = new StringWriter();
        var errorText = new StringWriter();
        var error = TextWriter.Synchronized(errorText);
        using var stop = new CancellationTokenSource();
        if (args[0] == "serve")
        {
            args[Array.IndexOf(args, "--port") + 1] = "0";
            _ = StopWhenListening();
        }
        int exitCode = await KilnCommandLine.RunAsync(args, new CliConsole(TextReader.Null, output, error, false, false), stop.Token).WaitAsync(TimeSpan.FromMinutes(1));

        Assert.True(exitCode == 0, $"exit {exitCode}\n{output}\n{errorText}");
        if (args[0] is "run" or "inspect") Assert.NotEqual("", output.ToString());

        bool Listening()
        {
            lock (error) return errorText.ToString().Contains("kiln: serving ", StringComparison.Ordinal);
        }

        async Task StopWhenListening()
        {
            for (var deadline = DateTime.UtcNow.AddMinutes(1); DateTime.UtcNow < deadline && !Listening(); ) await Task.Delay(50);
            stop.Cancel();
        }
    }

    [GeneratedRegex("\"(?<quoted>[^\"]*)\"|\\S+")]
    private static partial Regex Arguments();
}
