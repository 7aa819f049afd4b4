using Kiln.Engine.Scheduling;

namespace Kiln.Engine.Serving;

/// <summary>What one request asks of the engine: how many tokens, how they are sampled, when to stop.</summary>
public sealed record GenerationOptions
{
    /// <summary>Generated tokens at most (the max context may end the request sooner).</summary>
    public int MaxTokens { get; init; } = 256;

    /// <summary>0 picks the most likely token (greedy); higher values flatten the distribution.</summary>
    public float Temperature { get; init; }

    /// <summary>Keep only the K most likely tokens (0 keeps all).</summary>
    public int TopK { get; init; }

    /// <summary>Keep the smallest set of most likely tokens whose probabilities sum to at least this (1 keeps all).</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>Keep only tokens at least this fraction as likely as the most likely one (0 keeps all).</summary>
    public float MinP { get; init; }

    /// <summary>Penalty on tokens already in the sequence, prompt included (1: none).</summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>
    /// Seed of the request's own random generator: the same seed, prompt and options give the same tokens (sample i of
    /// <see cref="N"/> uses Seed + i). Null: fresh seeds.
    /// </summary>
    public ulong? Seed { get; init; }

    /// <summary>
    /// Independent samples of the same prompt, streamed together (each update says which, in
    /// <see cref="GenerationUpdate.Index"/>, and each sample ends with its own final update). The prompt is computed
    /// once: every sample draws its first token from the same logits and shares the prompt's KV blocks, copying only
    /// a partly filled last block when it first writes there.
    /// </summary>
    public int N { get; init; } = 1;

    /// <summary>Token ids that end the request (with <see cref="FinishReason.Stop"/>, the token not emitted).</summary>
    public IReadOnlyList<int>? StopTokens { get; init; }

    /// <summary>Texts that end the request once the output contains one; the output is cut before it.</summary>
    public IReadOnlyList<string>? StopStrings { get; init; }

    /// <summary>Keep generating past the tokenizer's end-of-sequence token instead of stopping there.</summary>
    public bool IgnoreEndOfSequence { get; init; }

    /// <summary>Report each token's log-probability (<see cref="GenerationUpdate.Logprob"/>).</summary>
    public bool Logprobs { get; init; }

    /// <summary>
    /// With <see cref="Logprobs"/>, also report this many of the most likely tokens at each position, with their
    /// log-probabilities (<see cref="GenerationUpdate.TopLogprobs"/>); at most <see cref="MaxTopLogprobs"/>.
    /// </summary>
    public int TopLogprobs { get; init; }

    /// <summary>Interactive requests are admitted, and keep their KV blocks, before batch ones.</summary>
    public RequestPriority Priority { get; init; } = RequestPriority.Interactive;

    public static GenerationOptions Greedy { get; } = new();

    /// <summary>The most samples one request may ask for.</summary>
    public const int MaxSamples = 64;

    /// <summary>The most alternatives <see cref="TopLogprobs"/> may ask for at each position.</summary>
    public const int MaxTopLogprobs = 20;

    internal SamplingOptions ToSamplingOptions(int sample = 0) => new()
    {
        Temperature = Temperature,
        TopK = TopK,
        TopP = TopP,
        MinP = MinP,
        RepetitionPenalty = RepetitionPenalty,
        Seed = Seed is { } seed ? seed + (ulong)sample : (ulong)Random.Shared.NextInt64(),
    };

    internal void Validate(int vocabSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxTokens, nameof(MaxTokens));
        if (N is < 1 or > MaxSamples) throw new ArgumentOutOfRangeException(nameof(N), N, $"N must be from 1 to {MaxSamples}.");
        ToSamplingOptions().Validate();
        if (!Enum.IsDefined(Priority)) throw new ArgumentOutOfRangeException(nameof(Priority), Priority, "Unknown priority.");
        if (TopLogprobs < 0 || TopLogprobs > Math.Min(MaxTopLogprobs, vocabSize))
            throw new ArgumentOutOfRangeException(nameof(TopLogprobs), TopLogprobs, $"TopLogprobs must be from 0 to {Math.Min(MaxTopLogprobs, vocabSize)}.");
        if (TopLogprobs > 0 && !Logprobs)
            throw new ArgumentException("TopLogprobs reports alternatives to each token's logprob, so it needs Logprobs on.", nameof(TopLogprobs));
        if (StopTokens is not null)
        {
            foreach (int token in StopTokens)
            {
                if ((uint)token >= (uint)vocabSize)
                    throw new ArgumentOutOfRangeException(nameof(StopTokens), $"Stop token {token} is outside the vocabulary of {vocabSize}.");
            }
        }
        if (StopStrings is not null)
        {
            foreach (string stop in StopStrings)
            {
                if (string.IsNullOrEmpty(stop)) throw new ArgumentException("Stop strings must be non-empty.", nameof(StopStrings));
            }
        }
    }
}

/// <summary>Token counts of one request, as an API bills them.</summary>
/// <param name="PromptTokens">Tokens in the prompt.</param>
/// <param name="CachedPromptTokens">Of those, how many the prefix cache supplied when the request was admitted.</param>
/// <param name="CompletionTokens">Tokens generated (a stop token is not counted).</param>
public readonly record struct GenerationUsage(int PromptTokens, int CachedPromptTokens, int CompletionTokens);

/// <summary>
/// One item of a request's stream: a generated token with the text it adds (which may be empty while a character or
/// a possible stop string is incomplete), or, last for its sample, the final update with the finish reason and usage.
/// </summary>
/// <param name="TokenId">The generated token; -1 in the final update.</param>
/// <param name="Text">Text added to the output by this update.</param>
/// <param name="Logprob">The token's log-probability under the model, when the request asked for logprobs.</param>
/// <param name="FinishReason"><see cref="FinishReason.None"/> until the final update.</param>
/// <param name="Usage">Set in the final update.</param>
/// <param name="ErrorMessage">Why the request ended, for <see cref="FinishReason.Error"/> and engine shutdown.</param>
/// <param name="Index">Which sample of the request this update belongs to (0 unless <see cref="GenerationOptions.N"/> &gt; 1).</param>
public readonly record struct GenerationUpdate(
    int TokenId,
    string Text,
    float? Logprob = null,
    FinishReason FinishReason = FinishReason.None,
    GenerationUsage? Usage = null,
    string? ErrorMessage = null,
    int Index = 0)
{
    public bool IsFinal => FinishReason != FinishReason.None;

    /// <summary>
    /// The <see cref="GenerationOptions.TopLogprobs"/> most likely tokens at this position and their log-probabilities,
    /// most likely first (the generated token among them only if it is one of them); empty unless asked for.
    /// </summary>
    public ReadOnlyMemory<TokenLogprob> TopLogprobs { get; init; }
}
