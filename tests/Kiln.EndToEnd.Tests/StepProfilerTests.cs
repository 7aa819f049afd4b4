using System.Diagnostics;
using Kiln.Threading;
using Xunit.Abstractions;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The compiled plan's profile (what bench profile reports): every part of a Llama step is named, the parts add up
/// to the step, no thread works longer than the runs it worked in, and a plan without a profiler attached records
/// nothing and computes the same logits.
/// </summary>
public sealed class StepProfilerTests(ITestOutputHelper output)
{
    private static readonly string[] LlamaParts =
    [
        StepProfiler.SetupPart, "rope tables", "elementwise x",
        "input wqWkWv", "matmul wqWkWv", "kv write", "attention", "input wo", "matmul wo",
        "input gateUp", "matmul gateUp", "input down", "matmul down", "input output", "matmul output",
    ];

    [Fact]
    public void PartsCoverTheStepAndEachThreadsWorkFitsItsRuns()
    {
        var model = EngineTestModel.Model;
        using var plan = (IDisposable)EngineTestModel.CreatePlan(PlanKind.Compiled, maxTokensPerStep: 16);
        var compiled = (ICompiledPlan)plan;
        var context = new AttentionContext(model.CreateKvCache(1, 64), 16);
        var logits = new float[compiled.VocabSize];
        int[] prompt = [1, 403, 407, 261, 378, 136, 29, 11];
        var profiler = new StepProfiler(EngineTestModel.CompiledThreads);

        long outside = 0;
        void Step(int[] tokens, int start)
        {
            context.Clear();
            for (int i = 0; i < tokens.Length; i++) context.Add(start + i, 0, wantLogits: i == tokens.Length - 1);
            long begin = Stopwatch.GetTimestamp();
            compiled.Step(tokens, context, logits);
            outside += Stopwatch.GetTimestamp() - begin;
        }

        StepProfiler.Attach(profiler);
        try
        {
            Step(prompt, 0);
            for (int i = 0; i < 24; i++) Step([(i * 37 + 5) % compiled.VocabSize], prompt.Length + i);
        }
        finally
        {
            StepProfiler.Detach();
        }

        Assert.Equal(25, profiler.Steps);
        var parts = profiler.Parts;
        foreach (var part in parts)
            output.WriteLine($"{part.Name,-16} {part.WallTicks * 1e3 / Stopwatch.Frequency,9:F3} ms, {part.Runs,4} runs, busy {string.Join(" / ", part.BusyTicks.Select(b => (b * 1e3 / Stopwatch.Frequency).ToString("F3")))} ms");
        foreach (string name in LlamaParts)
            Assert.True(parts.Any(p => p.Name == name && p.WallTicks > 0), $"no time recorded for the part '{name}'");
        Assert.Equal(LlamaParts.Length, parts.Count);

        // The marks partition the step, and the step is all of the plan's call but its argument checks.
        long sum = parts.Sum(p => p.WallTicks);
        Assert.Equal(profiler.StepTicks, sum);
        Assert.True(sum <= outside, $"parts {sum} ticks, more than the Step calls' {outside}");
        Assert.True(sum >= 0.75 * outside, $"parts {sum} ticks cover under 75% of the Step calls' {outside}");

        // Every layer's matmuls run on the pool once per step; no thread works longer than the runs it worked in.
        int layers = model.LayerCount;
        foreach (string matmul in new[] { "matmul wqWkWv", "matmul wo", "matmul gateUp", "matmul down" })
            Assert.Equal(25 * layers, parts.Single(p => p.Name == matmul).Runs);
        foreach (var part in parts)
        {
            Assert.Equal(0, part.HandoffTicks[0]); // the caller starts its chunks as it publishes the run
            for (int t = 0; t < profiler.ThreadCount; t++)
                Assert.True(part.BusyTicks[t] + part.HandoffTicks[t] <= part.RunTicks,
                    $"{part.Name}: thread {t} busy {part.BusyTicks[t]} ticks after a handoff of {part.HandoffTicks[t]}, in runs of {part.RunTicks}");
        }
        Assert.True(parts.Sum(p => p.BusyTicks[0]) > 0, "the caller worked in no run");
    }

    [Fact]
    public void WithoutAProfilerNothingIsRecordedAndTheLogitsAreTheSame()
    {
        var model = EngineTestModel.Model;
        using var plan = (IDisposable)EngineTestModel.CreatePlan(PlanKind.Compiled, maxTokensPerStep: 8);
        var compiled = (ICompiledPlan)plan;
        int[] prompt = [1, 403, 407, 261];
        float[] Run(StepProfiler? profiler)
        {
            var context = new AttentionContext(model.CreateKvCache(1, 16), 8);
            for (int i = 0; i < prompt.Length; i++) context.Add(i, 0, wantLogits: i == prompt.Length - 1);
            var logits = new float[compiled.VocabSize];
            if (profiler is not null) StepProfiler.Attach(profiler);
            try
            {
                compiled.Step(prompt, context, logits);
            }
            finally
            {
                StepProfiler.Detach();
            }
            return logits;
        }

        var profiler = new StepProfiler(EngineTestModel.CompiledThreads);
        var profiled = Run(profiler);
        Assert.Equal(1, profiler.Steps);
        var plain = Run(null);
        Assert.Equal(1, profiler.Steps);
        Assert.Equal(profiled, plain);
    }
}
