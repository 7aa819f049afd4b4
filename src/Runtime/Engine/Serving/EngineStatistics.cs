namespace Kiln.Engine.Serving;

/// <summary>A snapshot of the engine's counters and gauges, as of its latest step.</summary>
public readonly record struct EngineStatistics(
    int RunningRequests,
    int WaitingRequests,
    int KvBlocksTotal,
    int KvBlocksUsed,
    int KvBlocksFree,
    int KvBlocksCached,
    int KvBlocksPeakUsed,
    int KvTokensHeld,
    long Steps,
    long ComputedTokens,
    long GeneratedTokens,
    long Preemptions,
    long PrefixQueryTokens,
    long PrefixHitTokens)
{
    /// <summary>
    /// Token positions with KV that running requests hold, over the positions their blocks offer (the rest is the
    /// unfilled tail of each last block). Shared prefix blocks count once per holder, so sharing can push it past 1.
    /// </summary>
    public double KvUtilization => KvBlocksUsed == 0 ? 0 : (double)KvTokensHeld / ((long)KvBlocksUsed * BlockSize);

    /// <summary>KV blocks copied on write so far: a fork's first write into the partly filled prompt block it shared.</summary>
    public long KvBlockCopies { get; init; }

    /// <summary>Token positions per KV block.</summary>
    public int BlockSize { get; init; }

    /// <summary>Recurrent state slots (one per running request of a model with recurrent layers; 0 without).</summary>
    public int StateSlotsTotal { get; init; }

    /// <summary>State slots running requests hold now.</summary>
    public int StateSlotsUsed { get; init; }

    /// <summary>Prompt tokens the prefix cache supplied over those looked up (0 before any lookup).</summary>
    public double PrefixCacheHitRate => PrefixQueryTokens == 0 ? 0 : (double)PrefixHitTokens / PrefixQueryTokens;
}
