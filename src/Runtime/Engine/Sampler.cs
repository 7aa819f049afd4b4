using System.Numerics.Tensors;

namespace Kiln;

/// <summary>How the next token is chosen from a row of logits.</summary>
public sealed record SamplingOptions
{
    /// <summary>0 picks the most likely token (greedy); higher values flatten the distribution.</summary>
    public float Temperature { get; init; }

    /// <summary>Keep the smallest set of most likely tokens whose probabilities sum to at least this (1 keeps all).</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>Keep only the K most likely tokens (0 keeps all).</summary>
    public int TopK { get; init; }

    /// <summary>Keep only tokens at least this fraction as likely as the most likely one (0 keeps all).</summary>
    public float MinP { get; init; }

    /// <summary>
    /// Divides the positive logits (multiplies the negative ones) of every token already in the sequence by this, so
    /// that repeats become less likely (CTRL's penalty; 1 leaves the logits alone). Applies to greedy picks too.
    /// </summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>Seed for the random choice; the same seed and logits give the same tokens.</summary>
    public ulong Seed { get; init; } = 0x5EED;

    public static SamplingOptions Greedy { get; } = new();

    public void Validate()
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature))
            throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "Temperature must be a finite number ≥ 0.");
        if (!(TopP > 0 && TopP <= 1))
            throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "TopP must be in (0, 1].");
        if (TopK < 0)
            throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "TopK must be ≥ 0.");
        if (!(MinP >= 0 && MinP <= 1))
            throw new ArgumentOutOfRangeException(nameof(MinP), MinP, "MinP must be in [0, 1].");
        if (!(RepetitionPenalty > 0) || float.IsInfinity(RepetitionPenalty))
            throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), RepetitionPenalty, "RepetitionPenalty must be a finite number > 0.");
    }
}

/// <summary>A token and its log-probability under the model (a log-softmax of the raw logits).</summary>
public readonly record struct TokenLogprob(int TokenId, float Logprob);

/// <summary>
/// Picks tokens from logits. Owns its scratch buffers (sized for one vocabulary) and a seeded generator, so a
/// call allocates nothing and a run is reproducible.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private readonly float[] _probabilities;
    private readonly int[] _order;
    private readonly Comparison<int> _byProbabilityDescending;
    // Repetition penalty only: the penalized copy of the logits, and per token the call that last penalized it
    // (a stamp instead of a cleared set, so each distinct token is penalized once per call at no clearing cost).
    private readonly float[]? _penalized;
    private readonly int[]? _penalizedAtCall;
    private int _call;
    private ulong _state;

    public Sampler(SamplingOptions options, int vocabSize)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocabSize);
        _options = options;
        _probabilities = new float[vocabSize];
        _order = new int[vocabSize];
        _byProbabilityDescending = (a, b) => _probabilities[b].CompareTo(_probabilities[a]);
        if (options.RepetitionPenalty != 1)
        {
            _penalized = new float[vocabSize];
            _penalizedAtCall = new int[vocabSize];
        }
        // SplitMix64 of the seed: every seed, 0 included, gives a non-zero xorshift state.
        ulong z = options.Seed + 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        _state = (z ^ (z >> 31)) | 1;
    }

    public int Sample(ReadOnlySpan<float> logits) => Sample(logits, ReadOnlySpan<int>.Empty);

    /// <summary>
    /// Picks the next token of a sequence that so far holds <paramref name="previousTokens"/> (what the repetition
    /// penalty looks at; ignored without one).
    /// </summary>
    public int Sample(ReadOnlySpan<float> logits, ReadOnlySpan<int> previousTokens)
    {
        if (logits.Length != _probabilities.Length)
            throw new ArgumentException($"Expected {_probabilities.Length} logits, got {logits.Length}.", nameof(logits));
        if (_penalized is not null && !previousTokens.IsEmpty) logits = Penalize(logits, previousTokens);
        if (_options.Temperature == 0) return ArgMax(logits);

        // Softmax at the temperature, then a cumulative walk over the kept candidates.
        float max = logits[ArgMax(logits)];
        double sum = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            float p = MathF.Exp((logits[i] - max) / _options.Temperature);
            _probabilities[i] = p;
            sum += p;
        }
        int kept = KeepCandidates(sum, out double keptMass);
        double target = NextUnit() * keptMass;
        double cumulative = 0;
        for (int i = 0; i < kept; i++)
        {
            int token = _order[i];
            cumulative += _probabilities[token];
            if (target < cumulative) return token;
        }
        return _order[kept - 1];
    }

    /// <summary>
    /// The index of the largest logit, the first of equal ones (llama.cpp's greedy choice); vectorized, as greedy
    /// decoding of 32 sequences over a 32000-token vocabulary spent about 8 % of a step in a scalar loop. A NaN logit
    /// (a broken model's) is chosen; +0 counts as larger than −0. 0 for an empty row.
    /// </summary>
    public static int ArgMax(ReadOnlySpan<float> logits) => logits.IsEmpty ? 0 : TensorPrimitives.IndexOfMax(logits);

    /// <summary>
    /// The log-probability of <paramref name="token"/> under the model's own distribution: a log-softmax of the raw
    /// logits, before temperature, penalties and cutoffs (what an API reports as the chosen token's logprob).
    /// </summary>
    public static float LogProbability(ReadOnlySpan<float> logits, int token) => LogProbabilities(logits, token, []);

    /// <summary>
    /// The log-probability of <paramref name="token"/>, as <see cref="LogProbability"/> gives it, and the
    /// <c>top.Length</c> most likely tokens with theirs in <paramref name="top"/>, most likely first (of equal logits,
    /// the lower id first). One pass over the logits after their maximum; allocates nothing.
    /// </summary>
    public static float LogProbabilities(ReadOnlySpan<float> logits, int token, Span<TokenLogprob> top)
    {
        if ((uint)token >= (uint)logits.Length)
            throw new ArgumentOutOfRangeException(nameof(token), $"Token {token} is outside the {logits.Length} logits.");
        if (top.Length > logits.Length)
            throw new ArgumentException($"Asked for the top {top.Length} of {logits.Length} logits.", nameof(top));
        float max = logits[ArgMax(logits)];
        double sum = 0;
        int kept = 0;
        for (int id = 0; id < logits.Length; id++)
        {
            float logit = logits[id];
            sum += Math.Exp(logit - max);
            // Insertion into the few kept so far, by logit; a later equal logit never displaces an earlier one.
            if (top.Length == 0 || (kept == top.Length && !(logit > top[kept - 1].Logprob))) continue;
            int at = kept < top.Length ? kept++ : kept - 1;
            for (; at > 0 && logit > top[at - 1].Logprob; at--) top[at] = top[at - 1];
            top[at] = new TokenLogprob(id, logit);
        }
        double logSum = Math.Log(sum);
        for (int i = 0; i < top.Length; i++) top[i] = top[i] with { Logprob = (float)(top[i].Logprob - max - logSum) };
        return (float)(logits[token] - max - logSum);
    }

    private ReadOnlySpan<float> Penalize(ReadOnlySpan<float> logits, ReadOnlySpan<int> previousTokens)
    {
        logits.CopyTo(_penalized);
        int call = ++_call;
        float penalty = _options.RepetitionPenalty;
        foreach (int token in previousTokens)
        {
            if ((uint)token >= (uint)_penalized!.Length)
                throw new ArgumentOutOfRangeException(nameof(previousTokens), $"Token {token} is outside the vocabulary of {_penalized.Length}.");
            if (_penalizedAtCall![token] == call) continue;
            _penalizedAtCall[token] = call;
            float logit = _penalized[token];
            _penalized[token] = logit > 0 ? logit / penalty : logit * penalty;
        }
        return _penalized;
    }

    /// <summary>Orders candidates (all of them, or the top-k/top-p/min-p set) into _order; returns how many are kept and their mass.</summary>
    private int KeepCandidates(double totalMass, out double keptMass)
    {
        int count = _probabilities.Length;
        for (int i = 0; i < count; i++) _order[i] = i;
        if (_options.TopK == 0 && _options.TopP >= 1)
        {
            if (_options.MinP == 0)
            {
                keptMass = totalMass;
                return count;
            }
            // Min-p alone needs no order: the most likely token has probability exp(0) = 1 before normalizing.
            int passing = 0;
            keptMass = 0;
            for (int token = 0; token < count; token++)
            {
                if (_probabilities[token] < _options.MinP) continue;
                _order[passing++] = token;
                keptMass += _probabilities[token];
            }
            return passing;
        }
        // Sorting by probability only happens when a cutoff needs the order.
        Array.Sort(_order, _byProbabilityDescending);
        int kept = _options.TopK > 0 ? Math.Min(_options.TopK, count) : count;
        double threshold = _options.TopP * totalMass;
        double minProbability = _options.MinP * _probabilities[_order[0]];
        keptMass = 0;
        for (int i = 0; i < kept; i++)
        {
            double probability = _probabilities[_order[i]];
            if (probability < minProbability) return i; // never the first: it is the maximum
            keptMass += probability;
            if (keptMass >= threshold) return i + 1;
        }
        return kept;
    }

    /// <summary>xorshift64*: tiny, fast and the same on every platform, so seeds reproduce everywhere.</summary>
    private double NextUnit()
    {
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        ulong value = _state * 0x2545F4914F6CDD1DUL;
        return (value >> 11) * (1.0 / (1UL << 53));
    }
}
