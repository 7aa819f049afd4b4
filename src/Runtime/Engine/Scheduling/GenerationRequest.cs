using Kiln.Engine.Paging;

namespace Kiln.Engine.Scheduling;

/// <summary>
/// One request as the scheduler sees it: its tokens (prompt, then generated), how many of them have KV computed
/// (<see cref="NumComputedTokens"/> catches up to <see cref="NumTokens"/>; there is no prefill or decode phase),
/// and its blocks. Created by <see cref="ContinuousBatchScheduler.Add"/> with every buffer sized for its longest life.
/// </summary>
public sealed class GenerationRequest
{
    private readonly int[] _tokens;
    private readonly int[] _stopTokenIds;

    internal GenerationRequest(long id, ReadOnlySpan<int> promptTokens, in RequestParameters parameters, int maxContext, int maxBlocks)
    {
        Id = id;
        Priority = parameters.Priority;
        MaxNewTokens = parameters.MaxNewTokens;
        PromptLength = promptTokens.Length;
        _tokens = new int[Math.Min(promptTokens.Length + parameters.MaxNewTokens, maxContext)];
        promptTokens.CopyTo(_tokens);
        NumTokens = promptTokens.Length;
        _stopTokenIds = parameters.StopTokenIds is { } stops ? (int[])stops.Clone() : [];
        Blocks = new BlockTable(maxBlocks, parameters.CacheKey);
    }

    /// <summary>Assigned at <see cref="ContinuousBatchScheduler.Add"/> in increasing order; also the arrival order.</summary>
    public long Id { get; }

    public RequestPriority Priority { get; }

    public int MaxNewTokens { get; }

    public int PromptLength { get; }

    public int NumTokens { get; private set; }

    /// <summary>Leading tokens whose KV is in the cache; reset to 0 by preemption (recomputed later, mostly from the prefix cache).</summary>
    public int NumComputedTokens { get; internal set; }

    public int NumGeneratedTokens => NumTokens - PromptLength;

    /// <summary>Tokens the prefix cache supplied at the latest admission.</summary>
    public int NumCachedTokens { get; internal set; }

    /// <summary>Times the request lost its blocks to a higher-ranked one.</summary>
    public int PreemptionCount { get; internal set; }

    /// <summary>
    /// The recurrent state slot it holds while running (a model with recurrent layers), -1 otherwise: taken at
    /// admission, given back when it finishes, is cancelled or preempted.
    /// </summary>
    public int StateSlot { get; internal set; } = -1;

    public RequestStatus Status { get; internal set; }

    public FinishReason FinishReason { get; internal set; }

    public string? ErrorMessage { get; internal set; }

    public ReadOnlySpan<int> Tokens => _tokens.AsSpan(0, NumTokens);

    public ReadOnlySpan<int> PromptTokens => _tokens.AsSpan(0, PromptLength);

    public ReadOnlySpan<int> GeneratedTokens => _tokens.AsSpan(PromptLength, NumGeneratedTokens);

    public ReadOnlySpan<int> StopTokenIds => _stopTokenIds;

    /// <summary>The request's KV blocks; token position p is in block <c>Blocks[p / BlockSize]</c>.</summary>
    public BlockTable Blocks { get; }

    /// <summary>A cancel or failure asked for but not applied yet: it takes effect at the next schedule.</summary>
    internal FinishReason PendingFinish { get; set; }

    internal void Append(int token) => _tokens[NumTokens++] = token;

    internal bool IsStopToken(int token) => _stopTokenIds.AsSpan().Contains(token);

    public override string ToString() =>
        $"request {Id} ({Priority}, {Status}{(FinishReason != FinishReason.None ? $" {FinishReason}" : "")}, computed {NumComputedTokens}/{NumTokens})";
}
