using CsCheck;
using Kiln.Tests;

namespace Kiln.Runtime.Tests.Engine;

public sealed class SamplerTests
{
    private static readonly float[] Logits = [0.1f, 2.5f, -1f, 2.4f, 0f];

    [Fact]
    public void GreedyPicksTheLargestLogit() => Assert.Equal(1, new Sampler(SamplingOptions.Greedy, 5).Sample(Logits));

    [Fact]
    public void ArgMaxOverAVocabularyRowTakesTheFirstOfEqualLargest()
    {
        const int Seed = 32000;
        var random = new Random(Seed);
        var row = Enumerable.Range(0, 32000).Select(_ => (float)random.NextDouble() * 10 - 5).ToArray();
        row[20001] = row[7777] = 6f;
        Assert.Equal(7777, Sampler.ArgMax(row));
        row[31999] = 7f; // the last element
        Assert.Equal(31999, Sampler.ArgMax(row));
        Assert.Equal(0, Sampler.ArgMax([3f, 3f, 3f]));
        Assert.Equal(0, Sampler.ArgMax([]));
    }

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
    public void MinPKeepsOnlyTokensNearTheBest()
    {
        // Probabilities relative to the best (2.5): 2.4 → 0.90, 0.1 → 0.09, 0 → 0.08, -1 → 0.03.
        var sampler = new Sampler(new SamplingOptions { Temperature = 1, MinP = 0.5f, Seed = 4 }, 5);
        var seen = new HashSet<int>();
        for (int i = 0; i < 300; i++) seen.Add(sampler.Sample(Logits));
        Assert.Equal(new HashSet<int> { 1, 3 }, seen);

        // With a top-k that keeps more, min-p still cuts; with min-p 1 only the best survives.
        var both = new Sampler(new SamplingOptions { Temperature = 1, TopK = 4, MinP = 0.05f, Seed = 4 }, 5);
        seen.Clear();
        for (int i = 0; i < 2000; i++) seen.Add(both.Sample(Logits));
        Assert.Equal(new HashSet<int> { 0, 1, 3, 4 }, seen);
        Assert.Equal(1, new Sampler(new SamplingOptions { Temperature = 3, MinP = 1, Seed = 2 }, 5).Sample(Logits));
    }

    [Fact]
    public void RepetitionPenaltyMakesSeenTokensLessLikelyOncePerToken()
    {
        var sampler = new Sampler(new SamplingOptions { RepetitionPenalty = 1.1f }, 5);
        Assert.Equal(1, sampler.Sample(Logits));             // nothing seen yet
        Assert.Equal(3, sampler.Sample(Logits, [1]));        // 2.5 / 1.1 < 2.4
        Assert.Equal(3, sampler.Sample(Logits, [1, 1, 1]));  // penalized once, not three times: 2.27 > 2.4 / 1.1
        Assert.Equal(1, sampler.Sample(Logits, [1, 3]));     // both divided: 2.27 > 2.18
        Assert.Equal(1, new Sampler(SamplingOptions.Greedy, 5).Sample(Logits, [1])); // no penalty asked for
        Assert.Equal(1, sampler.Sample(Logits));             // the caller's logits are left alone
        // Negative logits are multiplied, so they fall too.
        float[] negative = [-1f, -1.05f];
        Assert.Equal(1, new Sampler(new SamplingOptions { RepetitionPenalty = 1.1f }, 2).Sample(negative, [0]));
    }

    [Fact]
    public void LogProbabilityIsTheLogSoftmaxOfTheRawLogits()
    {
        double total = Logits.Sum(l => Math.Exp(l));
        for (int token = 0; token < Logits.Length; token++)
            Assert.Equal(Math.Log(Math.Exp(Logits[token]) / total), Sampler.LogProbability(Logits, token), 5);
        Assert.Throws<ArgumentOutOfRangeException>(() => Sampler.LogProbability(Logits, 5));
    }

    [Fact]
    public void TopLogProbabilitiesAreTheMostLikelyTokensInOrderWithTheirLogSoftmax()
    {
        var top = new TokenLogprob[3];
        float chosen = Sampler.LogProbabilities(Logits, 4, top);

        Assert.Equal(Sampler.LogProbability(Logits, 4), chosen); // the same number, bit for bit
        Assert.Equal([1, 3, 0], top.Select(t => t.TokenId));
        foreach (var entry in top) Assert.Equal(Sampler.LogProbability(Logits, entry.TokenId), entry.Logprob);
        Assert.Throws<ArgumentException>(() => Sampler.LogProbabilities(Logits, 0, new TokenLogprob[6]));
        Assert.Throws<ArgumentOutOfRangeException>(() => Sampler.LogProbabilities(Logits, -1, top));
    }

    [Fact]
    public void TopLogProbabilitiesMatchASortOfTheWholeVocabulary()
    {
        // Logits drawn from few values, so ties are common: of equal logits the lower id comes first.
        var gen = Gen.Select(Gen.Int[0, 6].Array[1, 300], Gen.Int[0, 25], (levels, k) => (Logits: levels.Select(l => l * 0.75f - 2f).ToArray(), K: k));
        SeededCases.Check(gen, seed: 77, count: 500, c =>
        {
            int k = Math.Min(c.K, c.Logits.Length);
            var top = new TokenLogprob[k];
            Sampler.LogProbabilities(c.Logits, c.Logits.Length - 1, top);
            var expected = Enumerable.Range(0, c.Logits.Length).OrderByDescending(id => c.Logits[id]).ThenBy(id => id).Take(k).ToArray();
            Assert.Equal(expected, top.Select(t => t.TokenId));
            foreach (var entry in top) Assert.Equal(Sampler.LogProbability(c.Logits, entry.TokenId), entry.Logprob);
        });
    }

    [Fact]
    public void InvalidOptionsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { MinP = 1.5f }, 5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { RepetitionPenalty = 0 }, 5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { Temperature = -1 }, 5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { TopP = 0 }, 5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { TopK = -2 }, 5));
        Assert.Throws<ArgumentException>(() => new Sampler(SamplingOptions.Greedy, 5).Sample(new float[4]));
    }
}
