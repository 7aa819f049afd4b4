using Kiln.Bench;

namespace Kiln.PeerTests;

/// <summary>The serve benchmark's lengths fitted to a model's context: what is drawn and what is reported agree.</summary>
public sealed class ServeWorkloadTests
{
    [Fact]
    public void CuttingADistributionBelowItsMedianMovesTheMedianWithIt()
    {
        var prompts = new LengthDistribution(Median: 256, Sigma: 0.5, Min: 200, Max: 1024).AtMost(128);
        Assert.Equal(new LengthDistribution(128, 0.5, 128, 128), prompts);
        var random = new Random(7);
        Assert.All(Enumerable.Range(0, 100), _ => Assert.Equal(128, prompts.Draw(random)));

        var kept = new LengthDistribution(64, 0.5, 1, 1024).AtMost(128);
        Assert.Equal(new LengthDistribution(64, 0.5, 1, 128), kept);
    }
}
