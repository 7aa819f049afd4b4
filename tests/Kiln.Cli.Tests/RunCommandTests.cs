using Kiln.EndToEnd.Tests;

namespace Kiln.Cli.Tests;

public sealed class RunCommandTests
{
    private static readonly string Stories = StoriesReference.ModelPath("stories260K.gguf");

    [Theory]
    [InlineData("stories260K.gguf")]
    [InlineData("stories260K.bin")] // llama2.c, its tokenizer found beside it
    public async Task Greedy_run_prints_the_prompt_and_the_reference_continuation(string file)
    {
        var reference = StoriesReference.Load();
        var run = await CliRun.Of(["run", "--model", StoriesReference.ModelPath(file), "--prompt", "Once upon a time", "--max-tokens", "64", "--temperature", "0"]);

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(reference.Text + Environment.NewLine, run.Out);
        // Everything but the text goes to stderr, each line from kiln: loading, compiling, then the speed.
        Assert.All(run.ErrorLines, line => Assert.StartsWith("kiln: ", line));
        Assert.Contains(run.ErrorLines, line => line.StartsWith($"kiln: binding {file} to Llama (", StringComparison.Ordinal) && line.Contains(" of weights) in ", StringComparison.Ordinal));
        Assert.Contains(run.ErrorLines, line => line.StartsWith("kiln: compiling the plan", StringComparison.Ordinal));
        Assert.Contains(run.ErrorLines, line => line.StartsWith("kiln: 5 prompt + 64 generated tokens in ", StringComparison.Ordinal));
    }

    /// <summary>
    /// A model without attention layers (make-model's tiny Mamba, written here): run binds it, its sequence's memory a
    /// state slot instead of a KV cache, and generates every token asked for; greedy, so a second run repeats it.
    /// </summary>
    [Fact]
    public async Task A_mamba_file_runs_from_its_state_slot()
    {
        string directory = Directory.CreateTempSubdirectory("kiln-run-mamba-").FullName;
        try
        {
            string path = Path.Combine(directory, "mamba-tiny.gguf");
            var mamba = Kiln.Bench.SyntheticModel.Architecture("mamba");
            Kiln.Bench.SyntheticModel.Write(path, mamba, mamba.Tiny, Kiln.Bench.SyntheticFormat.Parse("f32"), seed: 5);
            string[] args = ["run", "--model", path, "--prompt", "Once upon a time", "--max-tokens", "12", "--temperature", "0"];
            var run = await CliRun.Of(args);
            var again = await CliRun.Of(args);

            Assert.True(run.ExitCode == 0, run.ToString());
            Assert.StartsWith("Once upon a time", run.Out, StringComparison.Ordinal);
            Assert.Equal(run.Out, again.Out);
            Assert.Contains(run.ErrorLines, line => line.StartsWith("kiln: binding mamba-tiny.gguf to Mamba (", StringComparison.Ordinal));
            Assert.Contains(run.ErrorLines, line => line.Contains(" prompt + 12 generated tokens in ", StringComparison.Ordinal));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task Sampling_with_a_seed_repeats_and_differs_from_greedy()
    {
        string[] sampled = ["run", "-m", Stories, "-p", "Once upon a time", "-n", "32", "-t", "1", "-s", "7"];
        var first = await CliRun.Of(sampled);
        var second = await CliRun.Of(sampled);
        var greedy = await CliRun.Of(["run", "-m", Stories, "-p", "Once upon a time", "-n", "32"]);

        Assert.True(first.ExitCode == 0, first.ToString());
        Assert.Equal(first.Out, second.Out);
        Assert.NotEqual(greedy.Out, first.Out);
        Assert.StartsWith("Once upon a time", first.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_prompt_longer_than_the_context_is_one_error_line()
    {
        string prompt = string.Concat(Enumerable.Repeat("Once upon a time there was a dog. ", 100));
        var run = await CliRun.Of(["run", "--model", Stories, "--prompt", prompt]);

        Assert.Equal(ExitCodes.Failed, run.ExitCode);
        Assert.Equal("", run.Out);
        string error = Assert.Single(run.ErrorLines, line => line.StartsWith("kiln: error:", StringComparison.Ordinal));
        Assert.Matches(@"^kiln: error: the prompt has \d+ tokens, which leaves no room to generate in the model's context of 512 tokens\.$", error);
    }

    [Fact]
    public async Task On_a_terminal_loading_draws_a_progress_display_and_still_ends_with_the_plain_line()
    {
        var run = await CliRun.Of(["run", "--model", Stories, "--prompt", "Once upon a time", "--max-tokens", "4"], errorIsTerminal: true);

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains("\u001b[", run.Error, StringComparison.Ordinal); // the live display's escape sequences
        Assert.Contains("binding stories260K.gguf to Llama", run.Error, StringComparison.Ordinal);
        Assert.Contains("kiln: binding stories260K.gguf to Llama (1.1 MiB of weights) in ", run.Error, StringComparison.Ordinal);
        Assert.StartsWith("Once upon a time", run.Out, StringComparison.Ordinal);
    }
}
