using Kiln.Loading;
using Kiln.Models;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The generated plan of samples/Models/Llama.cs against its own eager forward on real model files: a prefill, decode
/// steps, then one step mixing two sequences. Eager and compiled runs use separate KV caches.
/// </summary>
public sealed class DifferentialTests
{
    private const float Tolerance = 1e-4f;
    private const int MaxTokens = 16;
    private const int MaxContext = 64;

    [Theory]
    [InlineData("stories260K.gguf")]
    [InlineData("llama-2-tiny-random.gguf")]
    public void CompiledPlanMatchesEagerForward(string modelName)
    {
        using var file = ModelFile.Open(Path.Combine(AppContext.BaseDirectory, "models", modelName));
        var model = Llama.Load(file);
        var plan = model.Compile(MaxTokens);
        Assert.Equal(model.VocabSize, plan.VocabSize);
        Assert.StartsWith("Kiln fusion report for Llama", plan.FusionReport);

        var run = new Runner(model, plan);
        int vocab = model.VocabSize;

        // Prefill: five prompt tokens of slot 0, every row's logits wanted.
        int[] prompt = { 1, 7 % vocab, 42 % vocab, 100 % vocab, 3 % vocab };
        var eager = run.Step(prompt, Enumerable.Range(0, prompt.Length).Select(p => (p, 0, true)).ToArray(), "prefill");

        // Decode: one token at a time, greedy on the eager logits.
        int position = prompt.Length;
        int next = ArgMax(eager, eager.Length / vocab - 1, vocab);
        for (int step = 0; step < 4; step++, position++)
        {
            eager = run.Step(new[] { next }, new[] { (position, 0, true) }, $"decode {step}");
            next = ArgMax(eager, 0, vocab);
        }

        // Mixed: slot 0 decodes two more tokens while slot 1 prefills four, interleaved, some rows wanted.
        int[] mixed = { next, 5 % vocab, 9 % vocab, 11 % vocab, (next + 1) % vocab, 13 % vocab };
        var layout = new[]
        {
            (position, 0, true), (0, 1, false), (1, 1, true), (2, 1, false), (position + 1, 0, true), (3, 1, true),
        };
        run.Step(mixed, layout, "mixed slots");
    }

    private static int ArgMax(float[] logits, int row, int vocab)
    {
        int best = 0;
        for (int i = 1; i < vocab; i++)
            if (logits[row * vocab + i] > logits[row * vocab + best]) best = i;
        return best;
    }

    private sealed class Runner
    {
        private readonly Llama _model;
        private readonly ICompiledPlan _plan;
        private readonly AttentionContext _eagerContext;
        private readonly AttentionContext _compiledContext;
        private readonly float[] _logits;

        public Runner(Llama model, ICompiledPlan plan)
        {
            _model = model;
            _plan = plan;
            _eagerContext = new AttentionContext(model.CreateKvCache(slots: 2, MaxContext), MaxTokens);
            _compiledContext = new AttentionContext(model.CreateKvCache(slots: 2, MaxContext), MaxTokens);
            _logits = new float[MaxTokens * model.VocabSize];
        }

        /// <summary>Runs both paths on the same step and returns the eager logits after comparing.</summary>
        public float[] Step(int[] tokens, (int Position, int Slot, bool Want)[] layout, string what)
        {
            _eagerContext.Clear();
            _compiledContext.Clear();
            foreach (var (position, slot, want) in layout)
            {
                _eagerContext.Add(position, slot, want);
                _compiledContext.Add(position, slot, want);
            }

            var expected = _model.Forward(tokens, _eagerContext);
            Array.Fill(_logits, float.NaN);
            _plan.Step(tokens, _compiledContext, _logits);

            int count = _eagerContext.OutputCount * _model.VocabSize;
            Assert.Equal(count, expected.Data.Length);
            float worst = 0;
            int at = -1;
            for (int i = 0; i < count; i++)
            {
                float diff = MathF.Abs(expected.Data[i] - _logits[i]);
                if (!(diff <= worst)) { worst = diff; at = i; }
            }
            Assert.True(worst <= Tolerance,
                $"{what}: max |eager - compiled| = {worst} at row {at / _model.VocabSize}, logit {at % _model.VocabSize} " +
                $"(eager {expected.Data[Math.Max(at, 0)]}, compiled {_logits[Math.Max(at, 0)]}).");
            return expected.Data;
        }
    }
}
