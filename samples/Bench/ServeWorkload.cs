namespace Kiln.Bench;

/// <summary>One request of a serving workload: when it arrives, its prompt, and exactly how many tokens it generates.</summary>
public sealed record ServeRequest(int Index, double ArrivalSeconds, int[] Prompt, int OutputTokens);

/// <summary>Long-tailed lengths: log-normal around a median, clipped to a range (most short, a few very long).</summary>
public sealed record LengthDistribution(double Median, double Sigma, int Min, int Max)
{
    public int Draw(Random random)
    {
        // Box–Muller: one standard normal from two uniforms.
        double normal = Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
        return (int)Math.Clamp(Math.Round(Median * Math.Exp(Sigma * normal)), Min, Max);
    }

    /// <summary>
    /// The distribution cut at <paramref name="max"/>: its range, and its median and minimum with it, so that the lengths
    /// drawn and the median reported agree (a median above the cut would be drawn as the cut itself).
    /// </summary>
    public LengthDistribution AtMost(int max)
    {
        int top = Math.Min(Max, max);
        return this with { Max = top, Min = Math.Min(Min, top), Median = Math.Min(Median, top) };
    }

    /// <summary>The mean of the clipped distribution, by sampling (for sizing the arrival rate).</summary>
    public double Mean(int seed)
    {
        var random = new Random(seed);
        double sum = 0;
        for (int i = 0; i < 20000; i++) sum += Draw(random);
        return sum / 20000;
    }
}

/// <summary>Seeded request streams for the serve benchmark; the same seed gives the same workload on every run.</summary>
public static class ServeWorkload
{
    /// <summary>
    /// <paramref name="count"/> requests arriving as a Poisson process of <paramref name="requestsPerSecond"/>, with
    /// random token ids (BOS first) and long-tailed prompt and output lengths.
    /// </summary>
    public static ServeRequest[] Poisson(int count, double requestsPerSecond, LengthDistribution prompts, LengthDistribution outputs, int vocab, int seed)
    {
        var random = new Random(seed);
        var requests = new ServeRequest[count];
        double arrival = 0;
        for (int i = 0; i < count; i++)
        {
            if (i > 0) arrival += -Math.Log(1 - random.NextDouble()) / requestsPerSecond; // exponential gaps (0 at an infinite rate)
            requests[i] = new ServeRequest(i, arrival, RandomPrompt(random, prompts.Draw(random), vocab), outputs.Draw(random));
        }
        return requests;
    }

    /// <summary>Requests that all start with the same <paramref name="prefixLength"/>-token system prompt, then a short question of their own.</summary>
    public static ServeRequest[] SharedPrefix(int count, int prefixLength, int suffixLength, int outputTokens, int vocab, int seed)
    {
        var random = new Random(seed);
        int[] prefix = RandomPrompt(random, prefixLength, vocab);
        var requests = new ServeRequest[count];
        for (int i = 0; i < count; i++)
        {
            int[] suffix = RandomPrompt(random, suffixLength + 1, vocab)[1..];
            requests[i] = new ServeRequest(i, 0, [.. prefix, .. suffix], outputTokens);
        }
        return requests;
    }

    /// <summary>BOS, then ids above the byte tokens of a SentencePiece vocabulary (ordinary pieces).</summary>
    private static int[] RandomPrompt(Random random, int length, int vocab)
    {
        int first = Math.Min(259, vocab - 1);
        var prompt = new int[Math.Max(length, 1)];
        prompt[0] = 1;
        for (int i = 1; i < prompt.Length; i++) prompt[i] = random.Next(first, vocab);
        return prompt;
    }
}
