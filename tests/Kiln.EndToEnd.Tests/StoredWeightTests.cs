using Kiln.Loading;
using Kiln.Models;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Weights stay in the file's stored format: a bound matrix has no float32 copy after loading, after the eager
/// forward (which reads rows) and after compiling and running a plan (which packs from the stored bytes and gathers
/// embedding rows one by one); and the bound weights keep the file's mapping alive after the file is disposed.
/// </summary>
public sealed class StoredWeightTests
{
    private static readonly StoriesReference Reference = StoriesReference.Load();

    [Fact]
    public void NoMatrixIsWidenedToFloat32ByLoadingTheEagerForwardOrAPlan()
    {
        using var file = ModelFile.Open(StoriesReference.ModelPath("stories260K.gguf"));
        var model = Llama.Load(file);
        var matrices = new List<Tensor> { model.TokenEmbedding, model.Output };
        foreach (var block in model.Layers) matrices.AddRange([block.Wq, block.Wk, block.Wv, block.Wo, block.Gate, block.Up, block.Down]);
        Assert.All(matrices, weight => Assert.NotNull(weight.Stored));
        Assert.All(matrices, weight => Assert.False(weight.HasFloatData, $"{weight} was decoded to float32 when loaded"));

        var eager = new TokenGenerator(model, new EagerPlan(model, maxTokensPerStep: 8), maxContext: 64);
        int[] fromEager = eager.Generate(Reference.PromptIds, maxNewTokens: 8, SamplingOptions.Greedy).ToArray();
        using var plan = model.Compile(maxTokensPerStep: 8);
        int[] fromPlan = new TokenGenerator(model, plan, maxContext: 64).Generate(Reference.PromptIds, maxNewTokens: 8, SamplingOptions.Greedy).ToArray();

        Assert.Equal(Reference.GeneratedIds[..8], fromEager);
        Assert.Equal(Reference.GeneratedIds[..8], fromPlan);
        Assert.All(matrices, weight => Assert.False(weight.HasFloatData, $"{weight} was decoded to float32 whole"));
    }

    [Fact]
    public void BoundWeightsOutliveTheDisposedFile()
    {
        Llama model;
        using (var file = ModelFile.Open(StoriesReference.ModelPath("stories260K.gguf")))
            model = Llama.Load(file);
        GC.Collect();
        GC.WaitForPendingFinalizers(); // a mapping released too early would fail (or crash) below

        using var plan = model.Compile(maxTokensPerStep: 8);
        int[] generated = new TokenGenerator(model, plan, maxContext: 64).Generate(Reference.PromptIds, maxNewTokens: 8, SamplingOptions.Greedy).ToArray();
        Assert.Equal(Reference.GeneratedIds[..8], generated);
        var row = new float[model.Dim];
        model.TokenEmbedding.ReadRow(1, row);
        Assert.Contains(row, v => v != 0);
    }
}
