namespace Kiln.Runtime.Tests.Engine;

public sealed class SamplerTests
{
    private static readonly float[] Logits = [0.1f, 2.5f, -1f, 2.4f, 0f];

    [Fact]
    public void GreedyPicksTheLargestLogit() => Assert.Equal(1, new Sampler(SamplingOptions.Greedy, 5).Sample(Logits));

    [Fact]
    public void TopKOneAndATinyTopPAreGreedy()
    {
        for (ulong seed = 0; seed < 20; seed++)
        {
            Assert.Equal(1, new Sampler(new SamplingOptions { Temperature = 1, TopK = 1, Seed = seed }, 5).Sample(Logits));
            Assert.Equal(1, new Sampler(new SamplingOptions { Temperature = 1, TopP = 0.01f, Seed = seed }, 5).Sample(Logits));
        }
    }

    [Fact]
    public void TopKTwoOnlyEverPicksTheTwoBest()
    {
        var sampler = new Sampler(new SamplingOptions { Temperature = 5, TopK = 2, Seed = 9 }, 5);
        var seen = new HashSet<int>();
        for (int i = 0; i < 200; i++) seen.Add(sampler.Sample(Logits));
        Assert.Equal(new HashSet<int> { 1, 3 }, seen);
    }

    [Fact]
    public void FrequenciesFollowTheSoftmax()
    {
        var sampler = new Sampler(new SamplingOptions { Temperature = 1, Seed = 1 }, 5);
        var counts = new int[5];
        const int draws = 20000;
        for (int i = 0; i < draws; i++) counts[sampler.Sample(Logits)]++;
        double total = 0;
        foreach (float l in Logits) total += Math.Exp(l);
        for (int i = 0; i < 5; i++)
        {
            double expected = Math.Exp(Logits[i]) / total;
            Assert.InRange(counts[i] / (double)draws, expected - 0.015, expected + 0.015); // about 4 standard deviations
        }
    }

    [Fact]
    public void TheSameSeedGivesTheSameSequence()
    {
        int[] Draw(ulong seed)
        {
            var sampler = new Sampler(new SamplingOptions { Temperature = 2, Seed = seed }, 5);
            var result = new int[50];
            for (int i = 0; i < result.Length; i++) result[i] = sampler.Sample(Logits);
            return result;
        }
        Assert.Equal(Draw(0), Draw(0));
        Assert.NotEqual(Draw(0), Draw(1));
    }

    [Fact]
    public void InvalidOptionsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { Temperature = -1 }, 5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { TopP = 0 }, 5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { TopK = -2 }, 5));
        Assert.Throws<ArgumentException>(() => new Sampler(SamplingOptions.Greedy, 5).Sample(new float[4]));
    }
}
