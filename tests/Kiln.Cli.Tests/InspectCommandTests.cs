using Kiln.EndToEnd.Tests;

namespace Kiln.Cli.Tests;

public sealed class InspectCommandTests
{
    [Fact]
    public async Task Shows_metadata_tensors_totals_and_the_definition()
    {
        var run = await CliRun.Of(["inspect", StoriesReference.ModelPath("stories260K.gguf")]);

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal("", run.Error);
        string[] expected =
        [
            "GGUF, 1.1 MiB, architecture \"llama\"",
            "Metadata (22 keys)",
            "│ llama.context_length ", "│ 512 ",
            "│ tokenizer.ggml.tokens ", "512 × string: [\"<unk>\", \"<s>\", \"</s>\", \"<0x00>\", …]",
            "Tensors (48)",
            "│ blk.4.ffn_up.weight ", "│ [172, 64] ", "43.0 KiB │",
            "│ F32  │      48 │    292,800 │ 1.1 MiB │",
            "Kiln would compile it as Llama (the shipped definition for \"llama\").",
        ];
        foreach (string text in expected) Assert.Contains(text, run.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Totals_are_per_stored_type()
    {
        var run = await CliRun.Of(["inspect", StoriesReference.ModelPath("llama-2-tiny-random.gguf")]);

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Matches(@"│ F32\s+│\s+3 │\s+24 │\s+96 B │", run.Out);
        Assert.Matches(@"│ F16\s+│\s+9 │\s+513,024 │\s+1002\.0 KiB │", run.Out);
        Assert.Matches(@"│ all\s+│\s+12 │\s+513,048 │", run.Out);
    }
}
