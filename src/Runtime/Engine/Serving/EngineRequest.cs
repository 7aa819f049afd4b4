using Kiln.Engine.Scheduling;
using Kiln.Tokenization;

namespace Kiln.Engine.Serving;

/// <summary>
/// What one <see cref="KilnEngine.GenerateAsync(int[], GenerationOptions?, CancellationToken)"/> call asked for: one
/// sample of the prompt, or <see cref="GenerationOptions.N"/> of them, streaming through one
/// <see cref="UpdateStream"/>. Cancelling cancels every sample. Everything a step needs is allocated here.
/// </summary>
internal sealed class RequestGroup
{
    private int _cancelRequested;

    public RequestGroup(KilnEngine engine, int[] prompt, GenerationOptions options, int vocabSize, int maxContext, KilnTokenizer tokenizer)
    {
        Engine = engine;
        Prompt = prompt;
        Options = options;
        var stopTokens = new List<int>();
        if (options.StopTokens is not null) stopTokens.AddRange(options.StopTokens);
        if (!options.IgnoreEndOfSequence && (uint)tokenizer.EosId < (uint)vocabSize) stopTokens.Add(tokenizer.EosId);
        StopTokenIds = stopTokens.Count > 0 ? [.. stopTokens] : null;
        // Per sample, a token per update up to the max tokens or the context's end, then its final update.
        int maxGenerated = Math.Min(options.MaxTokens, maxContext - prompt.Length);
        Updates = new UpdateStream(options.N * (maxGenerated + 1));
        Samples = new EngineRequest[options.N];
        for (int i = 0; i < Samples.Length; i++) Samples[i] = new EngineRequest(this, i, vocabSize, tokenizer, maxGenerated);
        OpenSamples = Samples.Length;
    }

    public KilnEngine Engine { get; }

    public int[] Prompt { get; }

    public GenerationOptions Options { get; }

    public int[]? StopTokenIds { get; }

    public UpdateStream Updates { get; }

    /// <summary>Sample 0 runs first; the others fork from it when its prompt is computed.</summary>
    public EngineRequest[] Samples { get; }

    /// <summary>Unregistered when the last sample ends, so a long-lived token does not keep finished requests alive.</summary>
    public CancellationTokenRegistration CallerCancellation { get; set; }

    public long ArrivalTimestamp { get; } = System.Diagnostics.Stopwatch.GetTimestamp();

    /// <summary>Set by the engine loop with the last final update; read by callers deciding whether a cancel is still needed.</summary>
    public volatile bool Completed;

    /// <summary>True the first time only, so a cancel is handed to the engine loop once.</summary>
    public bool TryMarkCancelRequested() => Interlocked.Exchange(ref _cancelRequested, 1) == 0;

    public bool CancelRequested => Volatile.Read(ref _cancelRequested) != 0;

    // Engine loop only, from here on.

    public int OpenSamples { get; set; }

    /// <summary>Whether samples 1.. have been forked from sample 0 (or ended without it).</summary>
    public bool SiblingsAdmitted { get; set; }

    /// <summary>The samples' shared prefix-cache key: null (shared with everyone) unless prefix caching is off.</summary>
    public ulong? CacheKey { get; set; }
}

/// <summary>One sample of a <see cref="RequestGroup"/>: its own sampler, text decoder, stop-string filter and progress.</summary>
internal sealed class EngineRequest
{
    // With top logprobs, each token's alternatives, sized for the most tokens the sample can generate, so the loop
    // fills slices in place and every streamed update keeps its own.
    private readonly TokenLogprob[]? _topLogprobs;

    public EngineRequest(RequestGroup group, int index, int vocabSize, KilnTokenizer tokenizer, int maxGenerated)
    {
        Group = group;
        Index = index;
        var options = group.Options;
        Sampler = new Sampler(options.ToSamplingOptions(sample: index), vocabSize);
        Decoder = tokenizer.CreateStreamingDecoder(previousId: group.Prompt[^1]);
        StopStrings = options.StopStrings is { Count: > 0 } stops ? new StopStringFilter(stops) : null;
        if (options.TopLogprobs > 0) _topLogprobs = new TokenLogprob[maxGenerated * options.TopLogprobs];
    }

    public RequestGroup Group { get; }

    /// <summary>Which of the group's samples this is (<see cref="GenerationUpdate.Index"/>).</summary>
    public int Index { get; }

    public GenerationOptions Options => Group.Options;

    public Sampler Sampler { get; }

    public TokenTextDecoder Decoder { get; }

    public StopStringFilter? StopStrings { get; }

    // Engine loop only, from here on.

    /// <summary>The scheduler's view, once the engine loop has added the sample.</summary>
    public GenerationRequest? Scheduled { get; set; }

    public long LastTokenTimestamp { get; set; }

    public int EmittedTokens { get; set; }

    /// <summary>Prompt tokens the prefix cache supplied at the first admission; -1 until then.</summary>
    public int CachedPromptTokens { get; set; } = -1;

    /// <summary>The logprob of the token sampled last, not yet streamed (NaN unless asked for).</summary>
    public float PendingLogprob { get; private set; }

    /// <summary>The alternatives at the position of the token sampled last (empty unless asked for).</summary>
    public ReadOnlyMemory<TokenLogprob> PendingTopLogprobs =>
        _topLogprobs is null ? default : _topLogprobs.AsMemory(EmittedTokens * Options.TopLogprobs, Options.TopLogprobs);

    /// <summary>Records what the request asked to learn about <paramref name="token"/>, just sampled from <paramref name="logits"/>.</summary>
    public void RecordLogprobs(ReadOnlySpan<float> logits, int token)
    {
        if (!Options.Logprobs)
        {
            PendingLogprob = float.NaN;
            return;
        }
        // The slot of the next token streamed: a sampled stop token, never streamed, leaves it to be written again.
        var top = _topLogprobs is null ? [] : _topLogprobs.AsSpan(EmittedTokens * Options.TopLogprobs, Options.TopLogprobs);
        PendingLogprob = Sampler.LogProbabilities(logits, token, top);
    }

    public bool Completed { get; set; }
}
