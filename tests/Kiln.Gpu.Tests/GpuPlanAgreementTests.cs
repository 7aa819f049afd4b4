using Kiln.Loading;
using Kiln.Models;
using Xunit.Abstractions;

namespace Kiln.Gpu.Tests;

/// <summary>
/// The GPU plan, run on ILGPU's CPU accelerator, against the CPU plan of the same definition on the same weights:
/// every wanted logit within 1e-3, over a prefill, decodes and a step mixing two sequences. Every family of
/// samples/Models, in every weight layout the GPU kernels read.
/// </summary>
[Collection(GpuTestAccelerator.Collection)]
public sealed class GpuPlanAgreementTests(GpuTestAccelerator gpu, ITestOutputHelper output)
{
    private const float Tolerance = 1e-3f;
    private const int MaxTokens = 12;

    public static TheoryData<string, GgmlType> FamilyCases()
    {
        var cases = new TheoryData<string, GgmlType>();
        foreach (string family in TinyFamilies.Names)
            foreach (var type in new[] { GgmlType.F32, GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_0 })
                cases.Add(family, type);
        return cases;
    }

    [Theory]
    [MemberData(nameof(FamilyCases))]
    public void FamilyAgreesWithCpuPlan(string family, GgmlType type)
    {
        int seed = 8 + family.Length * 31 + (int)type;
        var file = new EncodedModelFile(TinyFamilies.File(family, seed), type);
        var model = TinyFamilies.Load(file);
        output.WriteLine($"{family} {type}, seed {seed}");
        // A prefill longer than the windows, decodes, then two sequences in one step.
        int[] prompt = Enumerable.Range(0, 9).Select(i => (i * 7 + 3) % TinyFamilies.Vocab).ToArray();
        Compare(model, [
            (prompt, prompt.Select((_, p) => (p, 0, p % 3 == 0 || p == 8)).ToArray()),
            ([5], [(9, 0, true)]),
            ([11], [(10, 0, true)]),
            ([1, 2, 3, 4], [(11, 0, true), (0, 1, false), (1, 1, false), (2, 1, true)]),
        ]);
    }

    [Fact]
    public void Stories260KAgreesWithCpuPlan()
    {
        using var file = ModelFile.Open(Path.Combine(AppContext.BaseDirectory, "models", "stories260K.gguf"));
        var model = Llama.Load(file);
        int[] prompt = [1, 403, 407, 261, 378, 436, 375, 268, 410, 360, 287];
        Compare(model, [
            (prompt, prompt.Select((_, p) => (p, 0, p == prompt.Length - 1)).ToArray()),
            ([300], [(11, 0, true)]),
            ([301, 9, 40], [(12, 0, true), (0, 1, false), (1, 1, true)]),
        ]);
    }

    /// <summary>Runs both plans over the same steps, each with its own cache of two slots, and compares every wanted logit.</summary>
    private void Compare(IKilnGpuModel model, (int[] Tokens, (int Position, int Slot, bool Want)[] Layout)[] steps)
    {
        using var cpu = model.Compile(new PlanOptions(MaxTokens, Threads: 1));
        using var plan = model.CompileGpu(gpu.Accelerator, new GpuPlanOptions(MaxTokens));
        var cpuContext = new AttentionContext(model.CreateKvCache(2, 32), MaxTokens);
        var gpuContext = new AttentionContext(plan.CreateKvCache(2, 32), MaxTokens);
        var expected = new float[MaxTokens * model.VocabSize];
        var actual = new float[MaxTokens * model.VocabSize];
        foreach (var (tokens, layout) in steps)
        {
            cpuContext.Clear();
            gpuContext.Clear();
            foreach (var (position, slot, want) in layout)
            {
                cpuContext.Add(position, slot, want);
                gpuContext.Add(position, slot, want);
            }
            Array.Fill(actual, float.NaN);
            cpu.Step(tokens, cpuContext, expected);
            long launches = plan.Launches;
            plan.Step(tokens, gpuContext, actual);
            int count = cpuContext.OutputCount * model.VocabSize;
            float worst = 0;
            for (int i = 0; i < count; i++)
            {
                float difference = MathF.Abs(expected[i] - actual[i]);
                Assert.False(float.IsNaN(actual[i]), $"logit {i} was not written");
                Assert.True(difference <= Tolerance, $"{tokens.Length}-token step: logit {i} CPU {expected[i]}, GPU {actual[i]}");
                worst = MathF.Max(worst, difference);
            }
            output.WriteLine($"  {tokens.Length} tokens, {cpuContext.OutputCount} rows: max |Δlogit| {worst:E2}, {plan.Launches - launches} launches and copies");
        }
    }
}
