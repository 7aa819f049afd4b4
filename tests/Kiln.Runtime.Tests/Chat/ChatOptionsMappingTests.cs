using Kiln.Chat;
using Microsoft.Extensions.AI;

namespace Kiln.Runtime.Tests.Chat;

/// <summary>How KilnChatClient turns Microsoft.Extensions.AI's ChatOptions into the engine's GenerationOptions.</summary>
public class ChatOptionsMappingTests
{
    [Fact]
    public void WithoutOptionsARequestRunsGreedyUntilItsTurnEnds()
    {
        var generation = KilnChatClient.ToGenerationOptions(null, maxNewTokens: 300, stopTokens: [7], extraStops: []);

        Assert.Equal(300, generation.MaxTokens);
        Assert.Equal((0f, 1f, 0, 1f), (generation.Temperature, generation.TopP, generation.TopK, generation.RepetitionPenalty));
        Assert.Null(generation.Seed);
        Assert.Equal([7], generation.StopTokens!);
        Assert.Null(generation.StopStrings);
    }

    [Fact]
    public void EachSamplingOptionMapsToItsCounterpart()
    {
        var options = new ChatOptions
        {
            MaxOutputTokens = 12,
            Temperature = 0.7f,
            TopP = 0.9f,
            TopK = 40,
            Seed = 42,
            StopSequences = ["END", "\n\n"],
            AdditionalProperties = new() { [KilnChatClient.RepetitionPenaltyKey] = 1.3 },
        };

        var generation = KilnChatClient.ToGenerationOptions(options, maxNewTokens: 300, stopTokens: [], extraStops: ["\nUser:"]);

        Assert.Equal(12, generation.MaxTokens);
        Assert.Equal((0.7f, 0.9f, 40, 1.3f), (generation.Temperature, generation.TopP, generation.TopK, generation.RepetitionPenalty));
        Assert.Equal(42UL, generation.Seed);
        Assert.Null(generation.StopTokens);
        Assert.Equal(["\nUser:", "END", "\n\n"], generation.StopStrings!);
    }

    [Fact]
    public void OpenAIsAdditivePenaltiesAreNotTurnedIntoTheRepetitionPenalty()
    {
        var options = new ChatOptions { FrequencyPenalty = 0.5f, PresencePenalty = 0.5f };

        Assert.Equal(1f, KilnChatClient.ToGenerationOptions(options, 10, [], []).RepetitionPenalty);
    }

    [Fact]
    public void ANegativeSeedIsKeptBitForBit() =>
        Assert.Equal(ulong.MaxValue, KilnChatClient.ToGenerationOptions(new ChatOptions { Seed = -1 }, 10, [], []).Seed);
}
