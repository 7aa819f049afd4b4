using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;

namespace Kiln.EndToEnd.Tests;

/// <summary>The real trained model, compiled by the generator, reproduces the float64 reference token for token.</summary>
public sealed class StoriesEndToEndTests
{
    private static readonly StoriesReference Reference = StoriesReference.Load();

    [Theory]
    [InlineData("stories260K.gguf", null)]
    [InlineData("stories260K.bin", "tok512.bin")]
    public void CompiledPlanReproducesTheReferenceContinuation(string modelName, string? tokenizerName)
    {
        using var file = ModelFile.Open(StoriesReference.ModelPath(modelName), tokenizerName is null ? null : StoriesReference.ModelPath(tokenizerName));
        var model = Llama.Load(file);
        var tokenizer = KilnTokenizer.FromModelFile(file);

        int[] prompt = tokenizer.Encode("Once upon a time");
        Assert.Equal(Reference.PromptIds, prompt);

        var generator = new TokenGenerator(model, model.Compile(maxTokensPerStep: 16), maxContext: 512);
        int[] generated = generator.Generate(prompt, maxNewTokens: 64, SamplingOptions.Greedy).ToArray();
        Assert.Equal(Reference.GeneratedIds, generated);
        Assert.Equal(Reference.Text, "Once upon a time" + DecodeAfterPrompt(tokenizer, prompt, generated));
    }

    [Fact]
    public void EagerReferenceReproducesTheReferenceContinuation()
    {
        using var file = ModelFile.Open(StoriesReference.ModelPath("stories260K.gguf"));
        var model = Llama.Load(file);
        var generator = new TokenGenerator(model, new EagerPlan(model, maxTokensPerStep: 8), maxContext: 128);
        int[] generated = generator.Generate(Reference.PromptIds, maxNewTokens: 64, SamplingOptions.Greedy).ToArray();
        Assert.Equal(Reference.GeneratedIds, generated);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(64)]
    public void PromptLogitsAreWithinFloat32ErrorOfTheFloat64Reference(int maxTokensPerStep)
    {
        using var file = ModelFile.Open(StoriesReference.ModelPath("stories260K.gguf"));
        var model = Llama.Load(file);
        var plan = model.Compile(maxTokensPerStep);
        var context = new AttentionContext(model.CreateKvCache(slots: 1, maxContext: 16), maxTokensPerStep);
        var logits = new float[plan.VocabSize * maxTokensPerStep];

        // Feed positions 0..2 in chunks of the step size, asking for every row's logits.
        int[] tokens = Reference.PromptIds[..3];
        double worst = 0;
        for (int start = 0; start < tokens.Length; start += maxTokensPerStep)
        {
            int count = Math.Min(maxTokensPerStep, tokens.Length - start);
            context.Clear();
            for (int i = 0; i < count; i++) context.Add(start + i, slot: 0, wantLogits: true);
            plan.Step(tokens.AsSpan(start, count), context, logits);
            for (int i = 0; i < count; i++)
            {
                float[] expected = Reference.PromptLogits[start + i];
                for (int v = 0; v < expected.Length; v++)
                    worst = Math.Max(worst, Math.Abs(expected[v] - logits[i * plan.VocabSize + v]));
            }
        }
        Assert.True(worst < 2e-4, $"max |logit - reference| = {worst:E3}");
    }

    [Fact]
    public void SampledGenerationIsReproducibleForASeedAndDiffersAcrossSeeds()
    {
        using var file = ModelFile.Open(StoriesReference.ModelPath("stories260K.gguf"));
        var model = Llama.Load(file);
        var generator = new TokenGenerator(model, model.Compile(maxTokensPerStep: 8), maxContext: 256);
        int[] Run(ulong seed) => generator.Generate(Reference.PromptIds, 48, new SamplingOptions { Temperature = 1f, Seed = seed }).ToArray();

        int[] first = Run(7);
        Assert.Equal(first, Run(7));
        Assert.NotEqual(first, Run(8));
        Assert.NotEqual(Reference.GeneratedIds[..48], first);
    }

    private static string DecodeAfterPrompt(KilnTokenizer tokenizer, int[] prompt, int[] generated)
    {
        var decoder = tokenizer.CreateStreamingDecoder(prompt[^1]);
        var text = new System.Text.StringBuilder();
        foreach (int id in generated) text.Append(decoder.Append(id));
        text.Append(decoder.Flush());
        return text.ToString();
    }
}
