namespace Kiln.Engine.Paging;

/// <summary>
/// One step's block tables for attention, in CSR form as FlashInfer takes them: sequence i's query rows are
/// <c>QueryIndptr[i]..QueryIndptr[i+1]</c> of the step's flattened tokens, its KV lives in blocks
/// <c>BlockIds[Indptr[i]..Indptr[i+1]]</c>, and the last of those holds <c>LastBlockLengths[i]</c> valid positions.
/// Buffers are sized once; <see cref="Clear"/> and <see cref="Add"/> refill them each step without allocating.
/// It also carries the step's sharing groups (<see cref="FindSharedPrefixes"/>): sequences whose tables begin with the
/// same physical blocks, so attention reads that prefix once for all of them without searching for it.
/// </summary>
public sealed class StepBlockTables
{
    private readonly int[] _queryIndptr;
    private readonly int[] _indptr;
    private readonly int[] _blockIds;
    private readonly int[] _lastBlockLengths;
    private readonly int[] _groupIndptr;
    private readonly int[] _groupSequences;
    private readonly int[] _groupPrefixBlocks;
    private readonly bool[] _grouped;

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
        // A group holds two or more sequences, so there are at most maxSequences / 2 of them.
        _groupIndptr = new int[maxSequences / 2 + 1];
        _groupSequences = new int[maxSequences];
        _groupPrefixBlocks = new int[maxSequences / 2];
        _grouped = new bool[maxSequences];
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

    /// <summary>Sharing groups found by <see cref="FindSharedPrefixes"/> for this step; 0 before it runs.</summary>
    public int SharedPrefixCount { get; private set; }

    /// <summary>The sequences of sharing group <paramref name="group"/>, ascending.</summary>
    public ReadOnlySpan<int> SharedPrefixSequences(int group) =>
        _groupSequences.AsSpan(_groupIndptr[group], _groupIndptr[group + 1] - _groupIndptr[group]);

    /// <summary>Blocks at the head of every table of group <paramref name="group"/> that they all hold, whole and before any of their new tokens.</summary>
    public int SharedPrefixBlocks(int group) => _groupPrefixBlocks[group];

    public void Clear()
    {
        SequenceCount = 0;
        SharedPrefixCount = 0;
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

    /// <summary>
    /// Groups the step's sequences by shared prefix: two or more sequences whose tables begin with the same physical
    /// block (one <paramref name="pool"/> counts more than one holder of) form a group, sharing the leading blocks they
    /// all hold in common, counting only whole blocks before every member's first new token. Called once all sequences
    /// are added; a sequence joins at most one group (the first whose leading block it holds).
    /// </summary>
    public void FindSharedPrefixes(BlockPool pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        SharedPrefixCount = 0;
        _groupIndptr[0] = 0;
        Array.Clear(_grouped, 0, SequenceCount);
        for (int s = 0; s < SequenceCount; s++)
        {
            int leaderBlocks = WrittenBlocks(s);
            if (_grouped[s] || leaderBlocks == 0 || pool.GetBlock(_blockIds[_indptr[s]]).RefCount < 2) continue;
            int start = _groupIndptr[SharedPrefixCount], members = 1, shared = leaderBlocks;
            _groupSequences[start] = s;
            var leader = _blockIds.AsSpan(_indptr[s], leaderBlocks);
            for (int other = s + 1; other < SequenceCount; other++)
            {
                if (_grouped[other] || _blockIds[_indptr[other]] != leader[0]) continue;
                var table = _blockIds.AsSpan(_indptr[other], Math.Min(WrittenBlocks(other), shared));
                if (table.IsEmpty) continue;
                shared = Math.Min(shared, table.CommonPrefixLength(leader));
                _groupSequences[start + members++] = other;
            }
            if (members < 2) continue;
            for (int m = start; m < start + members; m++) _grouped[_groupSequences[m]] = true;
            _groupPrefixBlocks[SharedPrefixCount] = shared;
            SharedPrefixCount++;
            _groupIndptr[SharedPrefixCount] = start + members;
        }
    }

    /// <summary>Whole blocks of sequence <paramref name="sequence"/> before its first new token: KV written by earlier steps.</summary>
    private int WrittenBlocks(int sequence)
    {
        int firstNew = KvLength(sequence) - (_queryIndptr[sequence + 1] - _queryIndptr[sequence]);
        return firstNew / BlockSize;
    }
}
