namespace Kiln.Engine.Paging;

/// <summary>
/// One step's block tables for attention, in CSR form as FlashInfer takes them: sequence i's query rows are
/// <c>QueryIndptr[i]..QueryIndptr[i+1]</c> of the step's flattened tokens, its KV lives in blocks
/// <c>BlockIds[Indptr[i]..Indptr[i+1]]</c>, and the last of those holds <c>LastBlockLengths[i]</c> valid positions.
/// Buffers are sized once; <see cref="Clear"/> and <see cref="Add"/> refill them each step without allocating.
/// </summary>
public sealed class StepBlockTables
{
    private readonly int[] _queryIndptr;
    private readonly int[] _indptr;
    private readonly int[] _blockIds;
    private readonly int[] _lastBlockLengths;

    public StepBlockTables(int maxSequences, int maxBlockIds, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxSequences);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxBlockIds);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        BlockSize = blockSize;
        _queryIndptr = new int[maxSequences + 1];
        _indptr = new int[maxSequences + 1];
        _blockIds = new int[maxBlockIds];
        _lastBlockLengths = new int[maxSequences];
    }

    public int BlockSize { get; }

    public int SequenceCount { get; private set; }

    /// <summary>Per sequence, where its query rows start in the step's tokens; one more entry than sequences.</summary>
    public ReadOnlySpan<int> QueryIndptr => _queryIndptr.AsSpan(0, SequenceCount + 1);

    /// <summary>Per sequence, where its blocks start in <see cref="BlockIds"/>; one more entry than sequences.</summary>
    public ReadOnlySpan<int> Indptr => _indptr.AsSpan(0, SequenceCount + 1);

    public ReadOnlySpan<int> BlockIds => _blockIds.AsSpan(0, _indptr[SequenceCount]);

    /// <summary>Per sequence, valid positions in its last block (1..BlockSize).</summary>
    public ReadOnlySpan<int> LastBlockLengths => _lastBlockLengths.AsSpan(0, SequenceCount);

    /// <summary>Total KV positions of sequence <paramref name="sequence"/> this step attends over.</summary>
    public int KvLength(int sequence) =>
        (_indptr[sequence + 1] - _indptr[sequence] - 1) * BlockSize + _lastBlockLengths[sequence];

    public void Clear()
    {
        SequenceCount = 0;
        _queryIndptr[0] = 0;
        _indptr[0] = 0;
    }

    /// <summary>
    /// Adds a sequence whose KV after this step spans <paramref name="kvLength"/> positions (cached + new) and
    /// whose <paramref name="queryLength"/> new tokens are the next rows of the step.
    /// </summary>
    public void Add(BlockTable table, int kvLength, int queryLength)
    {
        ArgumentNullException.ThrowIfNull(table);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvLength);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(queryLength);
        if (queryLength > kvLength)
            throw new ArgumentOutOfRangeException(nameof(queryLength), $"{queryLength} new tokens cannot exceed the {kvLength} KV positions they end.");
        if (SequenceCount + 1 == _indptr.Length)
            throw new InvalidOperationException($"The step already holds {SequenceCount} sequences, its capacity.");
        int blocks = (kvLength + BlockSize - 1) / BlockSize;
        if (blocks > table.Count)
            throw new ArgumentOutOfRangeException(nameof(kvLength), $"{kvLength} positions need {blocks} blocks; the sequence holds {table.Count}.");
        int start = _indptr[SequenceCount];
        if (start + blocks > _blockIds.Length)
            throw new InvalidOperationException($"The step's block ids would exceed their capacity of {_blockIds.Length}.");

        table.BlockIds[..blocks].CopyTo(_blockIds.AsSpan(start));
        _lastBlockLengths[SequenceCount] = kvLength - (blocks - 1) * BlockSize;
        _queryIndptr[SequenceCount + 1] = _queryIndptr[SequenceCount] + queryLength;
        _indptr[SequenceCount + 1] = start + blocks;
        SequenceCount++;
    }
}
