namespace Kiln.Engine.Scheduling;

/// <summary>Scheduling class: interactive requests are admitted, and keep their blocks, before batch ones.</summary>
public enum RequestPriority
{
    Interactive = 0,
    Batch = 1,
}

public enum RequestStatus
{
    /// <summary>Queued, holding no blocks: not admitted yet, or preempted and waiting to recompute.</summary>
    Waiting,

    /// <summary>Admitted: holds blocks and is scheduled each step until it finishes.</summary>
    Running,

    Finished,
}

public enum FinishReason
{
    None,

    /// <summary>Reached its max new tokens or the max context.</summary>
    Length,

    /// <summary>Sampled one of its stop tokens (not appended to its generated tokens).</summary>
    Stop,

    Cancelled,

    /// <summary>The engine failed it (see <see cref="GenerationRequest.ErrorMessage"/>).</summary>
    Error,
}

/// <summary>What a caller asks of one generation.</summary>
/// <param name="MaxNewTokens">Generated tokens at most (at least 1).</param>
/// <param name="Priority">Scheduling class.</param>
/// <param name="StopTokenIds">Sampling any of these ends the request with <see cref="FinishReason.Stop"/>.</param>
/// <param name="CacheKey">Mixed into the request's block hashes: only requests with the same key share cached prefixes.</param>
public readonly record struct RequestParameters(
    int MaxNewTokens,
    RequestPriority Priority = RequestPriority.Interactive,
    int[]? StopTokenIds = null,
    ulong? CacheKey = null);

/// <summary>The scheduler's limits.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Tokens computed in one step, all sequences together (prefill chunks + decodes).</summary>
    public int TokenBudget { get; init; } = 512;

    /// <summary>Sequences running at once; at most <see cref="TokenBudget"/>, so every running decode fits a step.</summary>
    public int MaxRunningRequests { get; init; } = 64;

    /// <summary>Tokens one sequence may hold, prompt and generated together (further capped by the pool's capacity).</summary>
    public int MaxContext { get; init; } = 4096;

    /// <summary>
    /// On (the default): prompts are chunked to what each step's budget has left after the running decodes, so
    /// decodes never wait. Off (prefill first, the pre-Sarathi policy): a step that can admit a waiting prompt
    /// computes whole prompts only, and running decodes wait for it; the budget must then hold the longest prompt.
    /// </summary>
    public bool ChunkedPrefill { get; init; } = true;

    /// <summary>
    /// On (the default): each step's block tables name their sharing groups (sequences whose tables begin with the
    /// same blocks; <see cref="Paging.StepBlockTables.FindSharedPrefixes"/>), so attention reads such a prefix once.
    /// </summary>
    public bool SharedPrefixAttention { get; init; } = true;
}
