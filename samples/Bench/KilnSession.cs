using Kiln.Loading;
using Kiln.Models;

namespace Kiln.Bench;

/// <summary>Kiln on one model file: the generated Llama binder, one compiled plan, and a logits buffer.</summary>
public sealed class KilnSession
{
    private readonly float[] _logits;

    public KilnSession(ModelFile file, int maxTokensPerStep)
    {
        Model = Llama.Load(file);
        Plan = Model.Compile(maxTokensPerStep);
        _logits = new float[(long)Plan.VocabSize * maxTokensPerStep];
    }

    public Llama Model { get; }

    public ICompiledPlan Plan { get; }

    public int VocabSize => Plan.VocabSize;

    public AttentionContext CreateContext(int slots, int maxContext) =>
        new(Model.CreateKvCache(slots, maxContext), Plan.MaxTokensPerStep);

    /// <summary>Runs one step; returns the logits of the context's output rows, [OutputCount × Vocab].</summary>
    public ReadOnlySpan<float> Step(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        var logits = _logits.AsSpan(0, context.OutputCount * VocabSize);
        Plan.Step(tokens, context, logits);
        return logits;
    }

    public ReadOnlySpan<float> Row(ReadOnlySpan<float> logits, int row) => logits.Slice(row * VocabSize, VocabSize);
}

public static class Greedy
{
    /// <summary>The index of the largest value (the first on ties, as llama.cpp's greedy sampler).</summary>
    public static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        float bestValue = values[0];
        for (int i = 1; i < values.Length; i++)
            if (values[i] > bestValue) { bestValue = values[i]; best = i; }
        return best;
    }
}
