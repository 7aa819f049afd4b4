using Kiln.Engine.Serving;
using static Kiln.EndToEnd.Tests.EngineTestModel;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The engine with shared-prefix attention on and off (<see cref="EngineOptions.SharedPrefixAttention"/>), compiled
/// plan: requests that share a long prompt through the prefix cache, arriving together in a KV budget too small to
/// hold them all (so some are preempted and resume from the cache), generate the same tokens, with logprobs equal
/// within float rounding.
/// </summary>
public sealed class SharedPrefixEngineTests
{
    private const string SystemPrompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. ";

    [Fact]
    public async Task SharedPrefixAttentionOnAndOffGenerateTheSame()
    {
        string[] asks = ["One day", "Her dog", "The sun was", "Tom said", "They ran"];
        var off = await Run(asks, shared: false);
        var on = await Run(asks, shared: true);
        Assert.True(on.Preemptions > 0, "the KV budget never forced a preemption");
        for (int i = 0; i < asks.Length; i++)
        {
            Assert.Equal(off.Outcomes[i].Tokens, on.Outcomes[i].Tokens);
            for (int j = 0; j < on.Outcomes[i].Logprobs.Length; j++)
                Assert.True(Math.Abs(on.Outcomes[i].Logprobs[j]!.Value - off.Outcomes[i].Logprobs[j]!.Value) <= 1e-4,
                    $"request {i}, token {j}: logprob {on.Outcomes[i].Logprobs[j]} shared, {off.Outcomes[i].Logprobs[j]} per sequence");
        }
    }

    private static async Task<(Outcome[] Outcomes, long Preemptions)> Run(string[] asks, bool shared)
    {
        const int blockSize = 4;
        long blockBytes = Model.KvShape.BytesPerBlock(blockSize);
        // Room for the shared prompt's blocks and about three requests' own: five running requests must take turns.
        await using var engine = CreateEngine(new EngineOptions
        {
            BlockSize = blockSize,
            TokenBudget = 32,
            MaxRunningRequests = 8,
            MaxContext = 64,
            KvCacheBytes = 34 * blockBytes,
            SharedPrefixAttention = shared,
        }, PlanKind.Compiled);
        var options = new GenerationOptions { MaxTokens = 24, Logprobs = true, IgnoreEndOfSequence = true };
        // The first request leaves the shared prompt in the prefix cache; the rest then share its blocks.
        var first = await Collect(engine.GenerateAsync(SystemPrompt + asks[0], options));
        var rest = await Task.WhenAll(asks.Skip(1).Select(ask => Collect(engine.GenerateAsync(SystemPrompt + ask, options))));
        var statistics = await WaitUntilIdle(engine);
        return ([first, .. rest], statistics.Preemptions);
    }
}
