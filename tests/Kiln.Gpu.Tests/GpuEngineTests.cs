using Kiln.Engine.Serving;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;

namespace Kiln.Gpu.Tests;

/// <summary>
/// KilnEngine drives a GPU plan as it drives a CPU plan: the block pool in device memory (the plan makes the cache),
/// continuous batching, prefix sharing and forks unchanged; greedy tokens equal the CPU engine's.
/// </summary>
[Collection(GpuTestAccelerator.Collection)]
public sealed class GpuEngineTests(GpuTestAccelerator gpu)
{
    [Fact]
    public async Task EngineOnGpuPlanGeneratesTheCpuEnginesTokens()
    {
        using var file = ModelFile.Open(Path.Combine(AppContext.BaseDirectory, "models", "stories260K.gguf"));
        var model = Llama.Load(file);
        var tokenizer = KilnTokenizer.FromModelFile(file);
        var options = new EngineOptions { BlockSize = 8, KvCacheBytes = 1 << 20, TokenBudget = 16, MaxRunningRequests = 4, MaxContext = 64 };
        string[] prompts = ["Once upon a time there was a little girl named Lily", "The little dog", "Once upon a time there was a little girl named Lily. She"];

        await using var cpu = new KilnEngine(model, n => model.Compile(new PlanOptions(n, Threads: 1)), tokenizer, options);
        await using var onGpu = new KilnEngine(model, n => model.CompileGpu(gpu.Accelerator, new GpuPlanOptions(n)), tokenizer, options);
        Assert.NotNull(onGpu.Cache.BlockStore);

        // Two at once, then one whose prompt starts with the first's blocks, cached by then.
        var expected = (await Task.WhenAll(prompts[..2].Select(p => Generate(cpu, p)))).Append(await Generate(cpu, prompts[2])).ToArray();
        var actual = (await Task.WhenAll(prompts[..2].Select(p => Generate(onGpu, p)))).Append(await Generate(onGpu, prompts[2])).ToArray();
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], actual[i]);
        Assert.True(onGpu.GetStatistics().PrefixHitTokens > 0, "the third prompt shares the first's cached blocks");
    }

    private static async Task<int[]> Generate(KilnEngine engine, string prompt)
    {
        var tokens = new List<int>();
        await foreach (var update in engine.GenerateAsync(prompt, new GenerationOptions { MaxTokens = 12 }))
        {
            if (!update.IsFinal) tokens.Add(update.TokenId);
        }
        return tokens.ToArray();
    }
}
