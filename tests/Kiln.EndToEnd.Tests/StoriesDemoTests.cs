using Kiln.Stories;

namespace Kiln.EndToEnd.Tests;

/// <summary>The README's demo command, run in-process: text on stdout, one clear line and an exit code on bad input.</summary>
public sealed class StoriesDemoTests
{
    private static (int ExitCode, string Output, string Log) Run(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var log = new StringWriter { NewLine = "\n" };
        int exitCode = StoriesDemo.Run(args, output, log);
        return (exitCode, output.ToString(), log.ToString());
    }

    [Fact]
    public void TheReadmeCommandPrintsTheReferenceText()
    {
        var (exitCode, output, log) = Run("--prompt", "Once upon a time", "--max-tokens", "64", "--temperature", "0");
        Assert.Equal(StoriesDemo.ExitOk, exitCode);
        Assert.Equal(StoriesReference.Load().Text + "\n", output);
        Assert.Contains("tokens/s", log);
    }

    [Fact]
    public void TheLlama2cFileGivesTheSameText()
    {
        var (exitCode, output, _) = Run("--prompt", "Once upon a time", "--model", StoriesReference.ModelPath("stories260K.bin"));
        Assert.Equal(StoriesDemo.ExitOk, exitCode);
        Assert.Equal(StoriesReference.Load().Text + "\n", output);
    }

    [Fact]
    public void WithoutAPromptItRunsStockPromptsAndReportsSpeed()
    {
        var (exitCode, output, _) = Run("--max-tokens", "8");
        Assert.Equal(StoriesDemo.ExitOk, exitCode);
        Assert.StartsWith("Once upon a time", output);
        Assert.Matches(@"\d+ tokens in [0-9.]+ s: [0-9.]+ tokens/s", output);
    }

    [Fact]
    public void SamplingWithASeedIsRepeatable()
    {
        string[] args = ["--prompt", "Once upon a time", "--temperature", "0.9", "--seed", "3", "--max-tokens", "40"];
        var first = Run(args);
        Assert.Equal(StoriesDemo.ExitOk, first.ExitCode);
        Assert.Equal(first.Output, Run(args).Output);
        Assert.NotEqual(StoriesReference.Load().Text + "\n", first.Output);
    }

    [Theory]
    [InlineData("--max-tokens", "zero")]
    [InlineData("--temperature", "-1")]
    [InlineData("--top-p", "1.5")]
    [InlineData("--max-tokens", "-5")]
    [InlineData("--temperature", "NaN")]
    [InlineData("--temperature", "Infinity")]
    [InlineData("--top-p", "NaN")]
    [InlineData("--bogus")]
    [InlineData("--prompt")]
    public void BadArgumentsGiveOneLineAndExitCodeTwo(params string[] args)
    {
        var (exitCode, output, log) = Run(args);
        Assert.Equal(StoriesDemo.ExitBadArguments, exitCode);
        Assert.Equal("", output);
        Assert.Single(log.TrimEnd('\n').Split('\n'));
    }

    [Fact]
    public void APromptLongerThanTheContextGivesOneLineAndExitCodeOne()
    {
        string prompt = string.Join(" ", Enumerable.Repeat("Once upon a time", 200)); // some 800 tokens; the context holds 512
        var (exitCode, output, log) = Run("--prompt", prompt);
        Assert.Equal(StoriesDemo.ExitFailed, exitCode);
        Assert.Equal("", output);
        string last = log.TrimEnd('\n').Split('\n')[^1];
        Assert.Matches(@"^stories: the prompt has \d+ tokens, which leaves no room to generate in the model's context of 512 tokens\.$", last);
    }

    [Fact]
    public void AContextLengthBeyondTheMachinesMemoryIsNotAllocated()
    {
        // A file declaring 2^31 − 1 positions: a KV cache that long would take terabytes.
        string path = StoriesReference.WriteModelWith("llama.context_length", (uint)int.MaxValue);
        try
        {
            // The demo's cache holds what it generates, so the file runs as the original does.
            var (exitCode, output, _) = Run("--model", path, "--prompt", "Once upon a time");
            Assert.Equal(StoriesDemo.ExitOk, exitCode);
            Assert.Equal(StoriesReference.Load().Text + "\n", output);

            // Asked to generate that much, it says why it cannot before allocating anything.
            (exitCode, output, string log) = Run("--model", path, "--prompt", "Once upon a time", "--max-tokens", "2000000000");
            Assert.Equal(StoriesDemo.ExitFailed, exitCode);
            Assert.Equal("", output);
            string last = log.TrimEnd('\n').Split('\n')[^1];
            Assert.Matches(@"^stories: A KV cache of 5 layers × \d+ positions × 32 \(F32\) needs [\d.]+ GiB, more than the [\d.]+ GiB of memory this machine has; use a shorter context or fewer slots\.$", last);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void AMissingModelGivesOneLineAndExitCodeOne()
    {
        var (exitCode, output, log) = Run("--model", "/nonexistent/model.gguf");
        Assert.Equal(StoriesDemo.ExitFailed, exitCode);
        Assert.Equal("", output);
        Assert.Contains("/nonexistent/model.gguf", log);
        Assert.Single(log.TrimEnd('\n').Split('\n'));
    }

    [Fact]
    public void ACorruptModelGivesOneLineAndExitCodeOne()
    {
        string path = Path.Combine(Path.GetTempPath(), $"kiln-corrupt-{Guid.NewGuid():N}.gguf");
        byte[] bytes = File.ReadAllBytes(StoriesReference.ModelPath("stories260K.gguf"));
        File.WriteAllBytes(path, bytes.AsSpan(0, bytes.Length / 3).ToArray());
        try
        {
            var (exitCode, _, log) = Run("--model", path, "--prompt", "Hi");
            Assert.Equal(StoriesDemo.ExitFailed, exitCode);
            Assert.Contains(Path.GetFileName(path), log);
            Assert.Single(log.TrimEnd('\n').Split('\n'));
        }
        finally
        {
            File.Delete(path);
        }
    }
}
