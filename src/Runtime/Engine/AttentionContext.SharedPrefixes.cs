namespace Kiln;

/// <summary>
/// Sharing groups: sequences of the step whose block tables begin with the same physical blocks, as the scheduler
/// found them (<see cref="Engine.Paging.StepBlockTables.FindSharedPrefixes"/>). Attention reads such a prefix once for
/// all the group's queries instead of once per sequence, and merges it with each sequence's own suffix by log-sum-exp.
/// </summary>
public sealed partial class AttentionContext
{
    // Groups in CSR form: group g's sequences are _groupSequences[_groupIndptr[g].._groupIndptr[g+1]] and its tokens
    // _groupTokens[_groupTokenIndptr[g].._groupTokenIndptr[g+1]]; their tables share the first _groupPrefixBlocks[g] ids.
    private int[] _groupIndptr = [0];
    private int[] _groupSequences = [];
    private int[] _groupTokenIndptr = [0];
    private int[] _groupTokens = [];
    private int[] _groupPrefixBlocks = [];
    private int[] _groupOfSequence = []; // per sequence: its group + 1, 0 when in none
    private int[] _ungroupedTokens = [];
    private int _ungroupedTokenCount = -1; // -1: not yet listed for this step's groups

    /// <summary>Sharing groups in the step; 0 unless <see cref="AddSharedPrefix"/> named some.</summary>
    public int SharedPrefixCount { get; private set; }

    /// <summary>The sequences of sharing group <paramref name="group"/>, in the order they were named.</summary>
    public ReadOnlySpan<int> SharedPrefixSequences(int group) =>
        _groupSequences.AsSpan(_groupIndptr[group], _groupIndptr[group + 1] - _groupIndptr[group]);

    /// <summary>The tokens of sharing group <paramref name="group"/>: each of its sequences' tokens in turn.</summary>
    public ReadOnlySpan<int> SharedPrefixTokens(int group) =>
        _groupTokens.AsSpan(_groupTokenIndptr[group], _groupTokenIndptr[group + 1] - _groupTokenIndptr[group]);

    /// <summary>Positions 0..length−1 that every sequence of group <paramref name="group"/> reads from the same blocks (whole blocks).</summary>
    public int SharedPrefixLength(int group) => _groupPrefixBlocks[group] * _blockSize;

    /// <summary>Positions 0..length−1 that <paramref name="sequence"/> reads through its sharing group's prefix; 0 when in no group.</summary>
    public int SharedPrefixLengthOf(int sequence) => _groupOfSequence[sequence] is var group and > 0 ? SharedPrefixLength(group - 1) : 0;

    /// <summary>The step's tokens whose sequences are in no sharing group, in order.</summary>
    public ReadOnlySpan<int> UngroupedTokens
    {
        get
        {
            if (_ungroupedTokenCount < 0)
            {
                int count = 0;
                for (int t = 0; t < TokenCount; t++)
                    if (_groupOfSequence[_sequences[t]] == 0) _ungroupedTokens[count++] = t;
                _ungroupedTokenCount = count;
            }
            return _ungroupedTokens.AsSpan(0, _ungroupedTokenCount);
        }
    }

    /// <summary>
    /// Names a sharing group: <paramref name="sequences"/> (two or more of the step's sequences, each in no other group)
    /// whose block tables all begin with the same <paramref name="prefixBlocks"/> block ids, and none of whose tokens
    /// lies in those blocks, so every query sees the whole prefix. Checked here, so attention only looks up.
    /// </summary>
    public void AddSharedPrefix(ReadOnlySpan<int> sequences, int prefixBlocks)
    {
        if (!HasCache)
            throw new InvalidOperationException("An encoder's context has no KV blocks to share.");
        if (sequences.Length < 2)
            throw new ArgumentException($"A sharing group needs at least two sequences; {sequences.Length} given.", nameof(sequences));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(prefixBlocks);
        int groupStart = _groupIndptr[SharedPrefixCount], tokenStart = _groupTokenIndptr[SharedPrefixCount];
        if (groupStart + sequences.Length > _groupSequences.Length)
            throw new InvalidOperationException($"The step's sharing groups would exceed their capacity of {_groupSequences.Length} sequences.");
        int leader = sequences[0];
        for (int i = 0; i < sequences.Length; i++)
        {
            int sequence = sequences[i];
            if ((uint)sequence >= (uint)SequenceCount)
                throw new ArgumentOutOfRangeException(nameof(sequences), $"Sequence {sequence} is not among the step's {SequenceCount} sequences.");
            if (_groupOfSequence[sequence] > 0)
                throw new ArgumentException($"Sequence {sequence} is already in a sharing group.", nameof(sequences));
            if (sequences[..i].Contains(sequence))
                throw new ArgumentException($"Sequence {sequence} is named twice.", nameof(sequences));
            var table = BlockTable(sequence);
            if (table.Length <= prefixBlocks || !table[..prefixBlocks].SequenceEqual(BlockTable(leader)[..prefixBlocks]))
                throw new ArgumentException($"Sequence {sequence}'s block table does not begin with the same {prefixBlocks} block(s) as sequence {leader}'s, followed by its own.", nameof(sequences));
            for (int t = _queryIndptr[sequence]; t < _queryIndptr[sequence + 1]; t++)
            {
                if (_positions[t] < prefixBlocks * _blockSize)
                    throw new ArgumentException($"Sequence {sequence} has a token at position {_positions[t]}, inside the {prefixBlocks * _blockSize} shared positions: a shared prefix must be written before the step.", nameof(sequences));
            }
        }
        foreach (int sequence in sequences) _groupOfSequence[sequence] = SharedPrefixCount + 1;
        sequences.CopyTo(_groupSequences.AsSpan(groupStart));
        int tokens = tokenStart;
        foreach (int sequence in sequences)
            for (int t = _queryIndptr[sequence]; t < _queryIndptr[sequence + 1]; t++) _groupTokens[tokens++] = t;
        _groupPrefixBlocks[SharedPrefixCount] = prefixBlocks;
        SharedPrefixCount++;
        _groupIndptr[SharedPrefixCount] = groupStart + sequences.Length;
        _groupTokenIndptr[SharedPrefixCount] = tokens;
        _ungroupedTokenCount = -1;
    }

    private void AllocateSharedPrefixes(int capacity)
    {
        // A group holds two or more sequences, so there are at most capacity / 2 of them.
        _groupIndptr = new int[capacity / 2 + 1];
        _groupSequences = new int[capacity];
        _groupTokenIndptr = new int[capacity / 2 + 1];
        _groupTokens = new int[capacity];
        _groupPrefixBlocks = new int[capacity / 2];
        _groupOfSequence = new int[capacity];
        _ungroupedTokens = new int[capacity];
    }

    private void ClearSharedPrefixes()
    {
        for (int g = 0; g < SharedPrefixCount; g++)
            foreach (int sequence in SharedPrefixSequences(g)) _groupOfSequence[sequence] = 0;
        SharedPrefixCount = 0;
        _ungroupedTokenCount = -1;
    }
}
