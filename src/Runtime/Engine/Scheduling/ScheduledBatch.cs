using Kiln.Engine.Paging;

namespace Kiln.Engine.Scheduling;

/// <summary>
/// Tokens <c>Tokens[Start..Start+Count]</c> of <paramref name="Request"/> to compute this step, at positions
/// Start.. in its sequence. With <paramref name="NeedsLogits"/> the chunk ends at the request's last token, and the
/// step samples the request's next token from that row.
/// </summary>
public readonly record struct ScheduledChunk(GenerationRequest Request, int Start, int Count, bool NeedsLogits);

/// <summary>
/// What one <see cref="ContinuousBatchScheduler.Schedule"/> decided: the chunks in row order (the step's flattened
/// tokens are the chunks' tokens one after another), their block tables in CSR form, and the requests that finished
/// while scheduling (cancelled or failed). Owned and refilled by the scheduler; valid until the next schedule.
/// </summary>
public sealed class ScheduledBatch
{
    private readonly ScheduledChunk[] _chunks;
    private readonly BlockCopy[] _copies;
    private GenerationRequest[] _finished = new GenerationRequest[16];
    private int _chunkCount;
    private int _copyCount;
    private int _finishedCount;

    internal ScheduledBatch(int maxChunks, int maxBlocksPerSequence, int blockSize)
    {
        _chunks = new ScheduledChunk[maxChunks];
        _copies = new BlockCopy[maxChunks]; // a chunk writes into at most one shared block: its first
        BlockTables = new StepBlockTables(maxChunks, maxChunks * maxBlocksPerSequence, blockSize);
    }

    public ReadOnlySpan<ScheduledChunk> Chunks => _chunks.AsSpan(0, _chunkCount);

    public bool IsEmpty => _chunkCount == 0;

    /// <summary>Tokens in the step, all chunks together; never over the token budget.</summary>
    public int TokenCount { get; private set; }

    /// <summary>Chunks that need logits: the number of tokens <see cref="ContinuousBatchScheduler.OnStepCompleted"/> expects.</summary>
    public int LogitsCount { get; private set; }

    /// <summary>
    /// Copy-on-write: blocks whose KV must be copied, in this order, before the step runs. A fork shares its parent's
    /// partly filled last block; the first of them to write into it gets a private copy.
    /// </summary>
    public ReadOnlySpan<BlockCopy> Copies => _copies.AsSpan(0, _copyCount);

    /// <summary>Each chunk's sequence, in chunk order: what attention reads the paged KV through.</summary>
    public StepBlockTables BlockTables { get; }

    /// <summary>Requests cancelled or failed since the previous step; their blocks are already freed.</summary>
    public ReadOnlySpan<GenerationRequest> Finished => _finished.AsSpan(0, _finishedCount);

    internal void Clear()
    {
        Array.Clear(_chunks, 0, _chunkCount);
        Array.Clear(_finished, 0, _finishedCount);
        _chunkCount = 0;
        _copyCount = 0;
        _finishedCount = 0;
        TokenCount = 0;
        LogitsCount = 0;
        BlockTables.Clear();
    }

    /// <summary>Adds the next <paramref name="count"/> tokens of <paramref name="request"/>, whose blocks already cover them.</summary>
    internal void AddChunk(GenerationRequest request, int count)
    {
        int start = request.NumComputedTokens;
        bool needsLogits = start + count == request.NumTokens;
        _chunks[_chunkCount++] = new ScheduledChunk(request, start, count, needsLogits);
        TokenCount += count;
        if (needsLogits) LogitsCount++;
        BlockTables.Add(request.Blocks, start + count, count);
    }

    internal void AddCopy(BlockCopy copy) => _copies[_copyCount++] = copy;

    internal void AddFinished(GenerationRequest request) => _finished[_finishedCount++] = request;

    /// <summary>Called where requests are cancelled (off the step path), so applying them never allocates.</summary>
    internal void EnsureFinishedCapacity(int count)
    {
        if (count > _finished.Length) Array.Resize(ref _finished, Math.Max(count, _finished.Length * 2));
    }
}
