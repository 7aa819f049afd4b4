using System.Globalization;
using Kiln.Loading;
using LLama;

namespace Kiln.Bench;

/// <summary>One greedy run of Kiln and llama.cpp from the same prompt, step by step (step 0 is the prompt's last logits).</summary>
public sealed record SideBySideResult(int[] KilnTokens, int[] LlamaTokens, double[] MaxAbsDiff, double[] KilnTopGap, int AgreedSteps)
{
    public int Steps => KilnTokens.Length;

    /// <summary>The largest logit difference over the steps whose inputs were the same (up to and including the first differing token).</summary>
    public double WorstDiff => MaxAbsDiff.Take(Math.Min(Steps, AgreedSteps + 1)).Max();

    /// <summary>The smallest gap between Kiln's two largest logits over the same steps as <see cref="WorstDiff"/>.</summary>
    public double SmallestGap => KilnTopGap.Take(Math.Min(Steps, AgreedSteps + 1)).Min();

    public int DistinctTokens => KilnTokens.Distinct().Count();

    /// <summary>One line of figures.</summary>
    public string Summary() => string.Create(CultureInfo.InvariantCulture,
        $"greedy tokens equal for {AgreedSteps} of {Steps} steps; max |Δlogit| {WorstDiff:G3}{(AgreedSteps < Steps ? " (up to the first difference)" : "")}; smallest Kiln top-2 logit gap {SmallestGap:G3}; {DistinctTokens} distinct tokens");

    /// <summary>The summary, the per-step differences and both token sequences.</summary>
    public string Describe() =>
        Summary() + "\n" +
        $"  max |Δlogit| per step: {string.Join(" ", MaxAbsDiff.Select(d => d.ToString("G2", CultureInfo.InvariantCulture)))}\n" +
        $"  kiln:      [{string.Join(", ", KilnTokens)}]\n" +
        $"  llama.cpp: [{string.Join(", ", LlamaTokens)}]";
}

/// <summary>Kiln and llama.cpp side by side on one file: the same prompt ids, then greedy steps, logits compared at each.</summary>
public static class SideBySide
{
    public const int Threads = 2;

    public static string ModelPath(string name) => Path.Combine(AppContext.BaseDirectory, "models", name);

    /// <summary>Loads both engines on <paramref name="path"/> and runs <see cref="Run(KilnSession, LLamaWeights, int, int[], int)"/>.</summary>
    public static SideBySideResult Run(string path, int[] prompt, int steps, int threads = Threads)
    {
        using var file = ModelFile.Open(path);
        using var kiln = new KilnSession(file, maxTokensPerStep: prompt.Length, threads);
        using var weights = LlamaCpp.LoadWeights(path, threads);
        return Run(kiln, weights, threads, prompt, steps);
    }

    /// <summary>
    /// Runs <paramref name="steps"/> greedy steps on both engines, each following its own argmax (so the compared
    /// logits are of the same inputs for as long as the tokens agree). llama.cpp gets an F32 KV cache and no flash
    /// attention, so that the only numeric differences left are its kernels'.
    /// </summary>
    public static SideBySideResult Run(KilnSession kiln, LLamaWeights weights, int threads, int[] prompt, int steps)
    {
        if (weights.Vocab.Count != kiln.VocabSize)
            throw new InvalidOperationException($"vocabulary sizes differ: Kiln {kiln.VocabSize}, llama.cpp {weights.Vocab.Count}");
        if (prompt.Length > kiln.Plan.MaxTokensPerStep)
            throw new ArgumentException($"a {prompt.Length}-token prompt exceeds the plan's {kiln.Plan.MaxTokensPerStep} tokens per step", nameof(prompt));
        using var llama = new LlamaCppSession(weights, threads, contextSize: (prompt.Length + steps + 255) / 256 * 256, sequences: 1,
            batchSize: Math.Max(64, prompt.Length), exactAttention: true);
        var context = kiln.CreateContext(slots: 1, maxContext: prompt.Length + steps + 1);

        var kilnTokens = new int[steps];
        var llamaTokens = new int[steps];
        var diffs = new double[steps];
        var gaps = new double[steps];
        int agreed = -1;

        context.SetSequence(0, 0, prompt.Length);
        var kilnLogits = kiln.Step(prompt, context);
        llama.BeginBatch();
        int index = llama.AddSequence(prompt, 0, 0);
        llama.Decode();
        var one = new int[1];
        for (int step = 0; step < steps; step++)
        {
            var llamaLogits = llama.Logits(index);
            double worst = 0;
            for (int i = 0; i < kiln.VocabSize; i++) worst = Math.Max(worst, Math.Abs(kilnLogits[i] - llamaLogits[i]));
            diffs[step] = worst;
            kilnTokens[step] = Sampler.ArgMax(kilnLogits);
            llamaTokens[step] = Sampler.ArgMax(llamaLogits);
            gaps[step] = Agreement.TopGap(kilnLogits);
            if (kilnTokens[step] != llamaTokens[step] && agreed < 0) agreed = step;
            if (step == steps - 1) break;

            one[0] = kilnTokens[step];
            context.SetSequence(0, prompt.Length + step, 1);
            kilnLogits = kiln.Step(one, context);
            llama.BeginBatch();
            index = llama.Add(llamaTokens[step], prompt.Length + step, 0, wantLogits: true);
            llama.Decode();
        }
        return new SideBySideResult(kilnTokens, llamaTokens, diffs, gaps, agreed < 0 ? steps : agreed);
    }
}
