using Kiln.EndToEnd.Tests;

namespace Kiln.Cli.Tests;

/// <summary>Every failure is one line on stderr, "kiln: error: …", with exit code 1 (2 for a bad command line), never a stack trace.</summary>
public sealed class ErrorTests
{
    private static readonly string Stories = StoriesReference.ModelPath("stories260K.gguf");

    [Theory]
    [InlineData("run")]
    [InlineData("inspect")]
    public async Task An_architecture_without_a_definition_is_named(string command)
    {
        string path = StoriesReference.WriteModelWith("general.architecture", "rwkv6");
        try
        {
            var run = await CliRun.Of(command == "run" ? ["run", "--model", path, "--prompt", "Once"] : ["inspect", path]);

            Assert.Equal(ExitCodes.Failed, run.ExitCode);
            string error = Assert.Single(run.ErrorLines);
            Assert.Equal($"kiln: error: {path}: general.architecture: \"rwkv6\" has no Kiln model definition; supported: {string.Join(", ", Kiln.Models.ModelCatalog.Architectures)}.", error);
            if (command == "inspect") Assert.Contains("token_embd.weight", run.Out, StringComparison.Ordinal); // shown before the verdict
            else Assert.Equal("", run.Out);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData("run")]
    [InlineData("inspect")]
    public async Task A_missing_file_is_one_line(string command)
    {
        string path = Path.Combine(Path.GetTempPath(), $"kiln-missing-{Guid.NewGuid():N}.gguf");
        var run = await CliRun.Of(command == "run" ? ["run", "-m", path, "-p", "Once"] : ["inspect", path]);

        Assert.Equal(ExitCodes.Failed, run.ExitCode);
        Assert.Equal([$"kiln: error: model file not found: {path}"], run.ErrorLines);
        Assert.Equal("", run.Out);
    }

    [Fact]
    public async Task A_truncated_file_is_one_line_naming_it()
    {
        string path = Path.Combine(Path.GetTempPath(), $"kiln-truncated-{Guid.NewGuid():N}.gguf");
        File.WriteAllBytes(path, File.ReadAllBytes(Stories)[..4000]);
        try
        {
            var run = await CliRun.Of(["run", "-m", path, "-p", "Once"]);

            Assert.Equal(ExitCodes.Failed, run.ExitCode);
            string error = Assert.Single(run.ErrorLines);
            Assert.StartsWith($"kiln: error: {path}: ", error, StringComparison.Ordinal);
            Assert.DoesNotContain("bug in Kiln", error, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }

    public static TheoryData<string[], string> BadCommandLines => new()
    {
        { ["run", "--model", Stories], "Option '--prompt' is required." },
        { ["run", "--model", Stories, "--prompt", "x", "--max-tokens", "0"], "--max-tokens takes a whole number, 1 or more; got '0'." },
        { ["run", "--model", Stories, "--prompt", "x", "--temperature", "warm"], "--temperature takes a number, 0 or more; got 'warm'." },
        { ["run", "--model", Stories, "--prompt", "x", "--seed", "-3"], "--seed takes a whole number, 0 or more; got '-3'." },
        { ["run", "--model", Stories, "--prompt", "x", "--top-q", "1"], "unknown command or argument '--top-q'." },
        { ["frobnicate"], "unknown command or argument 'frobnicate'." },
        { ["inspect"], "Required argument 'FILE' missing for command: 'inspect'." },
        { [], "Required command was not provided." },
        { ["serve", "--model", Stories, "--port", "70000"], "--port takes a port number from 0 to 65535; got '70000'." },
        { ["serve", "--model", Stories, "--max-queue", "0"], "--max-queue takes a whole number, 1 or more; got '0'." },
        { ["chat", "--model", Stories, "--max-tokens", "x"], "--max-tokens takes a whole number, 1 or more; got 'x'." },
    };

    [Theory]
    [MemberData(nameof(BadCommandLines))]
    public async Task A_bad_command_line_is_a_usage_error(string[] args, string message)
    {
        var run = await CliRun.Of(args);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Equal([$"kiln: error: {message}", "Run 'kiln --help' for usage."], run.ErrorLines);
        Assert.Equal("", run.Out);
    }

    [Fact]
    public async Task Help_lists_the_commands()
    {
        var run = await CliRun.Of(["--help"]);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        foreach (string command in new[] { "run", "chat", "serve", "inspect" })
            Assert.Matches($@"(?m)^\s+{command}\s", run.Out);
    }
}
