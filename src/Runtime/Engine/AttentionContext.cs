namespace Kiln;

/// <summary>
/// What one step's tokens attend with. Per token: its position in its sequence and which of the step's sequences
/// it belongs to; per sequence, in CSR form as FlashInfer takes it, its KV block table
/// (<c>BlockIds[BlockIndptr[s]..BlockIndptr[s+1]]</c>), so that position p of token t's sequence lives in row
/// <c>BlockIds[BlockIndptr[seq] + p / B] · B + p % B</c> of the <see cref="KvCache"/> (B = <see cref="KvCache.BlockSize"/>);
/// and the rows whose logits the step returns. A sequence's tokens are consecutive rows of the step.
/// Buffers are allocated once with a capacity; a step refills them without allocating.
/// </summary>
/// <remarks>
/// An encoder's context has no cache (<see cref="HasCache"/> is false): <see cref="AddSequence"/> adds whole
/// sequences, packed one after another, and attention reads the step's own keys and values of each sequence.
/// Every token also carries a token type (BERT's segment id; 0 unless given).
/// Two ways to fill a decoder's, one meaning: <see cref="Add"/> names a token's cache slot, which is a one-block table (the
/// contiguous layout, where block id = slot); <see cref="AddChunk(ReadOnlySpan{int}, int, int, bool)"/> hands over a sequence's whole block table (the
/// paged layout). Kernels read rows through <see cref="KvRow(int, int)"/>, which serves both.
/// </remarks>
public sealed partial class AttentionContext
{
    private readonly int[] _positions;
    private readonly int[] _sequences;
    private readonly int[] _slots;
    private readonly int[] _outputRows;
    private readonly int[] _blockIndptr;
    private readonly int[] _queryIndptr;
    private readonly int[] _blockIds;
    private readonly int[] _tokenTypes;
    private readonly int[] _stateSlots;
    private readonly KvCache? _cache;
    private readonly RecurrentStateCache? _state;
    private readonly int _blockSize;

    // The sequence Add last extended: consecutive Adds to the same slot are one sequence, like a chunk.
    private int _lastAddedSlot = -1;
    private int _multiBlockSequences;

    /// <summary>A context for steps of up to <paramref name="capacity"/> tokens and as many sequences, each with room in its block table for the cache's max context.</summary>
    public AttentionContext(KvCache cache, int capacity)
        : this(cache, capacity, maxBlockIds: DefaultBlockIds(cache, capacity))
    {
    }

    /// <summary>
    /// A context for steps of up to <paramref name="capacity"/> tokens (and so sequences) whose block tables hold
    /// <paramref name="maxBlockIds"/> entries together (the sum of the step's sequences' block counts).
    /// </summary>
    public AttentionContext(KvCache cache, int capacity, int maxBlockIds)
        : this(cache, capacity, maxBlockIds, state: null)
    {
    }

    /// <summary>
    /// A hybrid model's context: attention layers read <paramref name="cache"/> through block tables as above, and
    /// recurrent layers each sequence's slot of <paramref name="state"/> (given with <see cref="AddChunk(ReadOnlySpan{int}, int, int, bool, int)"/>).
    /// </summary>
    public AttentionContext(KvCache cache, int capacity, int maxBlockIds, RecurrentStateCache? state)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxBlockIds);
        _cache = cache;
        _blockSize = cache.BlockSize;
        _positions = new int[capacity];
        _sequences = new int[capacity];
        _slots = new int[capacity];
        _outputRows = new int[capacity];
        _blockIndptr = new int[capacity + 1];
        _queryIndptr = new int[capacity + 1];
        _blockIds = new int[maxBlockIds];
        _tokenTypes = new int[capacity];
        _stateSlots = new int[capacity];
        _state = state;
        AllocateSharedPrefixes(capacity);
    }

    /// <summary>
    /// A context for steps of up to <paramref name="capacity"/> tokens over <paramref name="slots"/> sequences of
    /// <paramref name="model"/>, each with memory of its own, shaped by the model: a contiguous KV cache slot of
    /// <paramref name="maxContext"/> positions for its attention layers (<paramref name="cache"/> when given, e.g. a GPU
    /// plan's own; else the model's host cache), a recurrent state slot for its recurrent layers (a hybrid has both, a
    /// Mamba or an LSTM only the state, whose size does not grow with the context). Sequence i uses slot i of both.
    /// </summary>
    public static AttentionContext ForSlots(IKilnModel model, int slots, int maxContext, int capacity, KvCache? cache = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(slots);
        var state = model.StateShape;
        if (!state.IsEmpty && model.KvShape.Layers == 0) return new AttentionContext(state.CreateCache(slots), capacity);
        cache ??= model.CreateKvCache(slots, maxContext);
        return state.IsEmpty
            ? new AttentionContext(cache, capacity)
            : new AttentionContext(cache, capacity, DefaultBlockIds(cache, capacity), state.CreateCache(slots));
    }

    /// <summary>
    /// A context for a model whose only memory is recurrent state (no attention layers, so no KV cache): steps of up
    /// to <paramref name="capacity"/> tokens, each sequence reading and writing its slot of <paramref name="state"/>.
    /// Fill it with <see cref="Add"/> (the slot is the state slot) or <see cref="AddRecurrentChunk"/>.
    /// </summary>
    public AttentionContext(RecurrentStateCache state, int capacity)
        : this(capacity)
    {
        ArgumentNullException.ThrowIfNull(state);
        _state = state;
    }

    /// <summary>
    /// A context without a KV cache, for an encoder's steps of up to <paramref name="capacity"/> tokens (and so
    /// sequences): each sequence is added whole with <see cref="AddSequence"/>.
    /// </summary>
    public AttentionContext(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        _positions = new int[capacity];
        _sequences = new int[capacity];
        _slots = new int[capacity];
        _outputRows = new int[capacity];
        _blockIndptr = new int[capacity + 1];
        _queryIndptr = new int[capacity + 1];
        _blockIds = [];
        _tokenTypes = new int[capacity];
        _stateSlots = new int[capacity];
        AllocateSharedPrefixes(capacity);
    }

    /// <summary>The KV cache the step's attention writes and reads. A context without one (an encoder's) throws.</summary>
    public KvCache Cache => _cache ?? throw new InvalidOperationException("This context has no KV cache: it is an encoder's, whose attention reads the step's own keys and values.");

    /// <summary>False for an encoder's context: attention stays within each sequence of the step, which holds it whole.</summary>
    public bool HasCache => _cache is not null;

    /// <summary>The recurrent state the step's recurrent layers read and write; a context without one throws.</summary>
    public RecurrentStateCache State => _state ?? throw new InvalidOperationException("This context has no recurrent state: create it with the model's StateShape.CreateCache(slots) for a recurrent or hybrid model.");

    /// <summary>True when the step's sequences carry recurrent state slots.</summary>
    public bool HasState => _state is not null;

    /// <summary>
    /// The state slot of sequence <paramref name="sequence"/>: a recurrent layer starts from it unless the sequence's
    /// first token in the step is at position 0 (then from zeros), and leaves its state after the last token there.
    /// </summary>
    public int StateSlot(int sequence) => _stateSlots[sequence];

    public int Capacity => _positions.Length;

    public int TokenCount { get; private set; }

    public int OutputCount { get; private set; }

    /// <summary>Sequences in the step, each with its block table.</summary>
    public int SequenceCount { get; private set; }

    /// <summary>Per token, its position in its sequence.</summary>
    public ReadOnlySpan<int> Positions => _positions.AsSpan(0, TokenCount);

    /// <summary>Per token, its token type (segment id: which of a pair of texts it belongs to); 0 unless <see cref="AddSequence"/> gave them.</summary>
    public ReadOnlySpan<int> TokenTypes => _tokenTypes.AsSpan(0, TokenCount);

    /// <summary>Per token, the index of its sequence in this step (0..SequenceCount-1).</summary>
    public ReadOnlySpan<int> Sequences => _sequences.AsSpan(0, TokenCount);

    /// <summary>
    /// Per token, its sequence's cache slot (the one block that holds all of it). Only a step whose sequences each
    /// hold a single block has slots; a paged step throws <see cref="InvalidOperationException"/>.
    /// </summary>
    public ReadOnlySpan<int> Slots => _multiBlockSequences == 0
        ? _slots.AsSpan(0, TokenCount)
        : throw new InvalidOperationException($"This step has {_multiBlockSequences} sequence(s) spread over several KV blocks, so tokens have no single cache slot: find each position's row with KvRow(token, position) and read it with KvCache.KeyRow/ValueRow.");

    /// <summary>Token rows whose logits the step produces, in output order.</summary>
    public ReadOnlySpan<int> OutputRows => _outputRows.AsSpan(0, OutputCount);

    /// <summary>Per sequence, where its block ids start in <see cref="BlockIds"/>; one more entry than sequences.</summary>
    public ReadOnlySpan<int> BlockIndptr => _blockIndptr.AsSpan(0, SequenceCount + 1);

    /// <summary>Per sequence, where its tokens start in the step; one more entry than sequences.</summary>
    public ReadOnlySpan<int> QueryIndptr => _queryIndptr.AsSpan(0, SequenceCount + 1);

    /// <summary>Every sequence's block ids, one table after another.</summary>
    public ReadOnlySpan<int> BlockIds => _blockIds.AsSpan(0, _blockIndptr[SequenceCount]);

    /// <summary>The sequence that token <paramref name="token"/> belongs to.</summary>
    public int SequenceOf(int token) => _sequences[token];

    /// <summary>The latest position any token of sequence <paramref name="sequence"/> holds in this step (what a non-causal query sees up to).</summary>
    public int LastPosition(int sequence)
    {
        int last = -1;
        for (int t = _queryIndptr[sequence]; t < _queryIndptr[sequence + 1]; t++) last = Math.Max(last, _positions[t]);
        return last;
    }

    /// <summary>The block table of sequence <paramref name="sequence"/>: block i holds its positions i·B .. i·B+B-1.</summary>
    public ReadOnlySpan<int> BlockTable(int sequence) =>
        _blockIds.AsSpan(_blockIndptr[sequence], _blockIndptr[sequence + 1] - _blockIndptr[sequence]);

    /// <summary>
    /// The cache row of <paramref name="position"/> in token <paramref name="token"/>'s sequence. Attention reads
    /// positions 0..Positions[token] of it; that range is checked when the step is filled, so this only looks up.
    /// </summary>
    public int KvRow(int token, int position)
    {
        int blockId = _blockIds[_blockIndptr[_sequences[token]] + position / _blockSize];
        return blockId * _blockSize + position % _blockSize;
    }

    /// <summary>The cache row where token <paramref name="token"/>'s own keys and values go.</summary>
    public int KvRow(int token) => KvRow(token, _positions[token]);

    public void Clear()
    {
        ClearSharedPrefixes();
        TokenCount = 0;
        OutputCount = 0;
        SequenceCount = 0;
        _lastAddedSlot = -1;
        _multiBlockSequences = 0;
    }

    /// <summary>
    /// Adds the next token of the step: its position in its sequence, the sequence's cache slot (a one-block table:
    /// the position must lie in that block), and whether its logits are wanted.
    /// </summary>
    public void Add(int position, int slot, bool wantLogits)
    {
        if (_cache is null && _state is not null)
        {
            AddStateOnly(position, slot, wantLogits);
            return;
        }
        var cache = Cache;
        if (TokenCount == Capacity)
            throw new InvalidOperationException($"The step already holds {Capacity} tokens, its capacity.");
        if ((uint)position >= (uint)_blockSize)
            throw new ArgumentOutOfRangeException(nameof(position), $"Position {position} is beyond the KV cache's {(cache.IsPaged ? "block size" : "context")} of {_blockSize}.");
        if ((uint)slot >= (uint)cache.Slots)
            throw new ArgumentOutOfRangeException(nameof(slot), $"Slot {slot} is outside the KV cache's {cache.Slots} slots.");
        if (slot != _lastAddedSlot)
        {
            int start = _blockIndptr[SequenceCount];
            if (start == _blockIds.Length)
                throw new InvalidOperationException($"The step's block tables already hold {_blockIds.Length} block ids, their capacity.");
            _blockIds[start] = slot;
            StartSequence(blocks: 1);
            // A contiguous cache's slot is the sequence's: a hybrid's state lives in the same-numbered state slot.
            if (_state is not null) SetStateSlot(slot);
            _lastAddedSlot = slot;
        }
        AppendToken(position, slot, wantLogits);
        _queryIndptr[SequenceCount] = TokenCount;
    }

    /// <summary>
    /// Adds a sequence's next <paramref name="count"/> tokens, at positions <paramref name="startPosition"/>.., whose
    /// KV lives in the blocks of <paramref name="blockTable"/> (which must cover every position up to the last one);
    /// with <paramref name="wantLogits"/> the last token's logits are wanted. Earlier positions were written by
    /// earlier steps (or a shared, cached prefix) into the same blocks.
    /// </summary>
    public void AddChunk(ReadOnlySpan<int> blockTable, int startPosition, int count, bool wantLogits) =>
        AddChunk(blockTable, startPosition, count, wantLogits, stateSlot: -1);

    /// <summary>
    /// <see cref="AddChunk(ReadOnlySpan{int}, int, int, bool)"/> for a hybrid model: the sequence's recurrent layers
    /// also read and write state slot <paramref name="stateSlot"/> (-1 when the context has no recurrent state).
    /// </summary>
    public void AddChunk(ReadOnlySpan<int> blockTable, int startPosition, int count, bool wantLogits, int stateSlot)
    {
        var cache = Cache;
        ArgumentOutOfRangeException.ThrowIfNegative(startPosition);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        if (TokenCount + count > Capacity)
            throw new InvalidOperationException($"The step holds {TokenCount} tokens; {count} more exceed its capacity of {Capacity}.");
        int blocksNeeded = (startPosition + count + _blockSize - 1) / _blockSize;
        if (blockTable.Length < blocksNeeded)
            throw new ArgumentException($"Positions up to {startPosition + count - 1} need {blocksNeeded} blocks of {_blockSize}; the block table has {blockTable.Length}.", nameof(blockTable));
        int start = _blockIndptr[SequenceCount];
        if (start + blocksNeeded > _blockIds.Length)
            throw new InvalidOperationException($"The step's block tables would exceed their capacity of {_blockIds.Length} block ids.");
        var blocks = blockTable[..blocksNeeded];
        foreach (int blockId in blocks)
        {
            if ((uint)blockId >= (uint)cache.BlockCount)
                throw new ArgumentOutOfRangeException(nameof(blockTable), $"Block {blockId} is outside the KV cache's {cache.BlockCount} blocks.");
        }
        CheckStateSlot(stateSlot);
        blocks.CopyTo(_blockIds.AsSpan(start));
        StartSequence(blocksNeeded);
        _stateSlots[SequenceCount - 1] = stateSlot;
        // A one-block sequence still has a slot (its block); later Adds must not extend it.
        _lastAddedSlot = -1;
        int slot = blocksNeeded == 1 ? blocks[0] : -1;
        if (blocksNeeded > 1) _multiBlockSequences++;
        for (int i = 0; i < count; i++) AppendToken(startPosition + i, slot, wantLogits && i == count - 1);
        _queryIndptr[SequenceCount] = TokenCount;
    }

    /// <summary>
    /// Adds a sequence's next <paramref name="count"/> tokens, at positions <paramref name="startPosition"/>.., to the
    /// step of a model without attention layers (a context with recurrent state and no KV cache); they continue the
    /// state in slot <paramref name="stateSlot"/> (from zeros when <paramref name="startPosition"/> is 0). With
    /// <paramref name="wantLogits"/> the last token's logits are wanted.
    /// </summary>
    public void AddRecurrentChunk(int stateSlot, int startPosition, int count, bool wantLogits)
    {
        if (_cache is not null || _state is null)
            throw new InvalidOperationException("AddRecurrentChunk fills the context of a model without attention layers (recurrent state, no KV cache); a hybrid's sequence goes in with AddChunk and its state slot.");
        ArgumentOutOfRangeException.ThrowIfNegative(startPosition);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        if (TokenCount + count > Capacity)
            throw new InvalidOperationException($"The step holds {TokenCount} tokens; {count} more exceed its capacity of {Capacity}.");
        if ((uint)stateSlot >= (uint)_state.Slots)
            throw new ArgumentOutOfRangeException(nameof(stateSlot), $"State slot {stateSlot} is outside the recurrent state's {_state.Slots} slots.");
        StartSequence(blocks: 0);
        _stateSlots[SequenceCount - 1] = stateSlot;
        _lastAddedSlot = -1;
        for (int i = 0; i < count; i++) AppendToken(startPosition + i, stateSlot, wantLogits && i == count - 1);
        _queryIndptr[SequenceCount] = TokenCount;
    }

    /// <summary>
    /// Adds a whole sequence of <paramref name="count"/> tokens at positions 0..count−1 to an encoder's step (a context
    /// without a KV cache), with their <paramref name="tokenTypes"/> (all 0 when empty). Its attention sees exactly
    /// these tokens.
    /// </summary>
    public void AddSequence(int count, ReadOnlySpan<int> tokenTypes = default)
    {
        if (HasCache)
            throw new InvalidOperationException("AddSequence fills an encoder's context (one without a KV cache); a decoder's sequence goes in with Add or AddChunk.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        if (TokenCount + count > Capacity)
            throw new InvalidOperationException($"The step holds {TokenCount} tokens; {count} more exceed its capacity of {Capacity}.");
        if (!tokenTypes.IsEmpty && tokenTypes.Length != count)
            throw new ArgumentException($"{tokenTypes.Length} token types for a sequence of {count} tokens.", nameof(tokenTypes));
        int first = TokenCount;
        StartSequence(blocks: 0);
        _stateSlots[SequenceCount - 1] = -1;
        for (int i = 0; i < count; i++) AppendToken(i, -1, wantLogits: false);
        if (tokenTypes.IsEmpty) _tokenTypes.AsSpan(first, count).Clear();
        else tokenTypes.CopyTo(_tokenTypes.AsSpan(first, count));
        _queryIndptr[SequenceCount] = TokenCount;
    }

    /// <summary>Fills the step with one sequence's consecutive tokens from <paramref name="startPosition"/>; only the last token's logits are wanted.</summary>
    public void SetSequence(int slot, int startPosition, int count)
    {
        Clear();
        for (int i = 0; i < count; i++) Add(startPosition + i, slot, i == count - 1);
    }

    /// <summary>Add for a context with recurrent state only: consecutive tokens of one state slot are one sequence.</summary>
    private void AddStateOnly(int position, int slot, bool wantLogits)
    {
        if (TokenCount == Capacity)
            throw new InvalidOperationException($"The step already holds {Capacity} tokens, its capacity.");
        ArgumentOutOfRangeException.ThrowIfNegative(position);
        if (slot != _lastAddedSlot)
        {
            StartSequence(blocks: 0);
            SetStateSlot(slot);
            _lastAddedSlot = slot;
        }
        AppendToken(position, slot, wantLogits);
        _queryIndptr[SequenceCount] = TokenCount;
    }

    private void SetStateSlot(int slot)
    {
        CheckStateSlot(slot);
        _stateSlots[SequenceCount - 1] = slot;
    }

    private void CheckStateSlot(int slot)
    {
        if (_state is null)
        {
            if (slot != -1) throw new InvalidOperationException($"State slot {slot} given, but this context has no recurrent state.");
            return;
        }
        if ((uint)slot >= (uint)_state.Slots)
            throw new ArgumentOutOfRangeException(nameof(slot), $"State slot {slot} is outside the recurrent state's {_state.Slots} slots.");
    }

    private void StartSequence(int blocks)
    {
        _queryIndptr[SequenceCount] = TokenCount;
        _blockIndptr[SequenceCount + 1] = _blockIndptr[SequenceCount] + blocks;
        SequenceCount++;
    }

    private void AppendToken(int position, int slot, bool wantLogits)
    {
        if (wantLogits) _outputRows[OutputCount++] = TokenCount;
        _positions[TokenCount] = position;
        _sequences[TokenCount] = SequenceCount - 1;
        _slots[TokenCount] = slot;
        _tokenTypes[TokenCount] = 0;
        TokenCount++;
        _ungroupedTokenCount = -1;
    }

    private static int DefaultBlockIds(KvCache cache, int capacity)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (!cache.IsPaged) return Math.Max(capacity, 1);
        long ids = (long)Math.Max(capacity, 1) * ((cache.MaxContext + cache.BlockSize - 1) / cache.BlockSize);
        return (int)Math.Min(ids, Array.MaxLength);
    }
}
