using System.Diagnostics.Metrics;

namespace Kiln.Engine.Serving;

/// <summary>How a <see cref="KilnEngine"/> shares out memory and compute among requests.</summary>
public sealed record EngineOptions
{
    /// <summary>Token positions per KV block: the unit of allocation and of prefix caching.</summary>
    public int BlockSize { get; init; } = 16;

    /// <summary>
    /// Memory for keys and values, all layers; divided by the bytes of one block it gives the block count. More than the
    /// machine has is refused when the engine is made (<see cref="InsufficientMemoryException"/>).
    /// </summary>
    public long KvCacheBytes { get; init; } = 64L << 20;

    /// <summary>
    /// Tokens computed in one step, all requests together (prefill chunks and decodes). A smaller budget bounds the
    /// time between tokens of running requests; a larger one lets prompts through faster.
    /// </summary>
    public int TokenBudget { get; init; } = 256;

    /// <summary>Requests decoding at once; the rest wait. At most <see cref="TokenBudget"/>.</summary>
    public int MaxRunningRequests { get; init; } = 32;

    /// <summary>
    /// Samples that may wait for a running slot beyond the <see cref="MaxRunningRequests"/> that run: the engine holds
    /// at most the sum open (a request of <see cref="GenerationOptions.N"/> samples counts N), and one more is refused
    /// at once with <see cref="EngineOverloadedException"/>. What was accepted is never dropped, preempted requests
    /// included. Bounded by default because each open sample holds vocabulary-sized sampler buffers, so an unbounded
    /// queue would turn overload into memory exhaustion; 0 takes only what can run.
    /// </summary>
    public int MaxQueuedRequests { get; init; } = 1024;

    /// <summary>Tokens one request may hold, prompt and generated together (also capped by the KV memory).</summary>
    public int MaxContext { get; init; } = 2048;

    /// <summary>Reuse the KV of full blocks that an earlier request with the same prefix computed.</summary>
    public bool PrefixCaching { get; init; } = true;

    /// <summary>
    /// On: long prompts are split into chunks that share each step with the running decodes, so those never stall
    /// for long. Off (prefill first, the pre-Sarathi baseline): a step that can admit waiting prompts computes them
    /// whole and nothing else (the step budget grows to fit the longest), so running requests wait for every prefill.
    /// </summary>
    public bool ChunkedPrefill { get; init; } = true;

    /// <summary>
    /// On: sequences of a step that share prefix blocks (forks, a common system prompt found in the prefix cache)
    /// attend to that prefix together: its keys and values are read once for all their queries, then merged with each
    /// sequence's own suffix by log-sum-exp. Off (the default), each sequence reads the prefix on its own.
    /// The two agree within float rounding, not bit for bit, and which sequences share a step depends on what else is
    /// running: on, a request's output can depend on the other requests (a sampled token flips where a draw falls
    /// within that rounding of a boundary; the 10,000-request soak over HTTP found one in 7,600). Off, every request
    /// generates what it generates alone, which is the engine's promise; turn it on for throughput where a long
    /// shared prompt dominates the reads.
    /// </summary>
    public bool SharedPrefixAttention { get; init; }

    /// <summary>How keys and values are stored (F16 and Int8 trade precision for room; Int8 keeps one scale per token and head).</summary>
    public KvStorage KvStorage { get; init; } = KvStorage.F32;

    /// <summary>Where the "Kiln.Engine" meter comes from (dependency injection); null creates a plain <see cref="Meter"/>.</summary>
    public IMeterFactory? MeterFactory { get; init; }

    internal void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(BlockSize, nameof(BlockSize));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(KvCacheBytes, nameof(KvCacheBytes));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(TokenBudget, nameof(TokenBudget));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxRunningRequests, nameof(MaxRunningRequests));
        if (MaxRunningRequests > TokenBudget)
            throw new ArgumentOutOfRangeException(nameof(MaxRunningRequests), $"MaxRunningRequests ({MaxRunningRequests}) exceeds TokenBudget ({TokenBudget}): every running request must fit a step.");
        ArgumentOutOfRangeException.ThrowIfNegative(MaxQueuedRequests, nameof(MaxQueuedRequests));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxContext, 2, nameof(MaxContext));
        if (!Enum.IsDefined(KvStorage)) throw new ArgumentOutOfRangeException(nameof(KvStorage), KvStorage, "Unknown KV storage.");
    }
}
