using Kiln.Loading;
using Kiln.Models;

namespace Kiln.EndToEnd.Tests;

/// <summary>A file whose hyperparameters don't fit the definition fails at load with the typed error, never an arithmetic crash.</summary>
public sealed class LoadErrorTests
{
    [Theory]
    [InlineData("llama.attention.head_count", 0u, "hyperparameters")]
    [InlineData("llama.attention.head_count", 3u, "attn_q.weight")]
    [InlineData("llama.embedding_length", 5_000_000_000L, "llama.embedding_length")]
    [InlineData("llama.feed_forward_length", 100u, "ffn_gate.weight")]
    [InlineData("general.architecture", "gpt2", "general.architecture")]
    public void BadHyperparametersGiveModelLoadException(string key, object value, string named)
    {
        string path = StoriesReference.WriteModelWith(key, value);
        try
        {
            using var file = ModelFile.Open(path);
            var error = Assert.Throws<ModelLoadException>(() => Llama.Load(file));
            Assert.Contains(Path.GetFileName(path), error.Message);
            Assert.Contains(named, error.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void AMissingRequiredHyperparameterIsNamed()
    {
        string path = StoriesReference.WriteModelWith("llama.block_count", "five");
        try
        {
            using var file = ModelFile.Open(path);
            var error = Assert.Throws<ModelLoadException>(() => Llama.Load(file));
            Assert.Contains("llama.block_count", error.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
