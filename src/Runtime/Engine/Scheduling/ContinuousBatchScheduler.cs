using Kiln.Engine.Paging;
using Kiln.Engine.State;

namespace Kiln.Engine.Scheduling;

/// <summary>
/// Continuous batching without phases (vLLM v1, Sarathi-Serve). Every request just has computed tokens catching up
/// to its tokens; each step spends one token budget on running requests first (a decode is one token; an unfinished
/// prefill gets what is left after a token is set aside for every decode), then on admitting waiting requests, whose
/// prompts are chunked to what the budget has left, so decodes never stall behind a long prefill. Admission skips
/// tokens the prefix cache already holds. When blocks run out, the lowest-ranked running request (batch before
/// interactive, latest arrival first) is preempted: it gives up its blocks and later recomputes, keeping the tokens
/// it generated. <see cref="Fork"/> starts more samples of a prompt on the prompt's blocks (copy-on-write).
/// With <see cref="SchedulerOptions.ChunkedPrefill"/> off it is the pre-Sarathi baseline instead: whole prompts
/// first, decodes only in steps that admit no prompt.
/// <para>
/// A model with recurrent layers adds a <see cref="StateSlotPool"/>: every running request also holds one state
/// slot, taken at admission (a request waits while none is free) and given back the moment it finishes, is
/// cancelled or preempted, so the next waiting request takes it in the same schedule (E-BATCH). Preemption stays
/// recompute: the state is a function of the tokens, a preempted request recomputes it from its first token, exactly,
/// and swapping it to host memory would only pay off for state far larger than the tokens that rebuild it. The
/// prefix cache is not consulted then: a cached prefix holds attention rows but not the recurrent state after it.
/// </para>
/// </summary>
/// <remarks>
/// Single-threaded by design: the engine loop owns the scheduler and is the only caller of every member. Other
/// threads (HTTP handlers, cancellation callbacks) hand their requests and cancels to that loop, e.g. through a
/// channel, instead of calling in; so there are no locks. Per step — <see cref="Schedule"/> and
/// <see cref="OnStepCompleted"/> — nothing is allocated: every buffer is sized at construction or at <see cref="Add"/>.
/// </remarks>
public sealed class ContinuousBatchScheduler
{
    private readonly BlockPool _pool;
    private readonly StateSlotPool? _stateSlots;
    private readonly SchedulerOptions _options;
    private readonly int _maxBlocksPerSequence;

    // Ranked: interactive before batch, then by arrival. Preemption victims come off the end.
    private readonly GenerationRequest[] _running;
    private int _runningCount;

    private readonly WaitingQueue _waitingInteractive = new();
    private readonly WaitingQueue _waitingBatch = new();
    private readonly Dictionary<long, GenerationRequest> _unfinished = new();
    private readonly List<GenerationRequest> _pendingFinishes = new();

    private readonly ScheduledBatch _step;
    private readonly GenerationRequest[] _finishedByStep;
    private int _finishedByStepCount;
    private bool _stepInFlight;
    private long _nextId;

    public ContinuousBatchScheduler(BlockPool pool, SchedulerOptions options)
        : this(pool, options, stateSlots: null)
    {
    }

    /// <summary>A scheduler whose running requests also hold a recurrent state slot each from <paramref name="stateSlots"/> (null: a model without recurrent layers).</summary>
    public ContinuousBatchScheduler(BlockPool pool, SchedulerOptions options, StateSlotPool? stateSlots)
    {
        ArgumentNullException.ThrowIfNull(pool);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(options.TokenBudget, nameof(options.TokenBudget));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(options.MaxRunningRequests, nameof(options.MaxRunningRequests));
        if (options.MaxRunningRequests > options.TokenBudget)
            throw new ArgumentOutOfRangeException(nameof(options), $"MaxRunningRequests ({options.MaxRunningRequests}) exceeds TokenBudget ({options.TokenBudget}): some running decodes could never fit a step.");
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxContext, 2, nameof(options.MaxContext));

        _pool = pool;
        _stateSlots = stateSlots;
        _options = options;
        // A sequence alone must always fit the pool, or preempting everyone else could still not make room for it.
        MaxContext = Math.Min(options.MaxContext, pool.TokenCapacity);
        if (MaxContext < 2)
            throw new ArgumentOutOfRangeException(nameof(pool), $"The pool holds {pool.TokenCapacity} token positions; a request needs at least 2 (a prompt token and a generated one).");
        if (!options.ChunkedPrefill && options.TokenBudget < MaxContext)
            throw new ArgumentOutOfRangeException(nameof(options), $"With chunked prefill off a step computes a whole prompt, so TokenBudget ({options.TokenBudget}) must hold the max context ({MaxContext}).");
        _maxBlocksPerSequence = pool.BlocksFor(MaxContext);
        _running = new GenerationRequest[options.MaxRunningRequests];
        _finishedByStep = new GenerationRequest[options.MaxRunningRequests];
        // Every chunk's request is running by the end of the schedule, so the cap bounds the chunks too.
        _step = new ScheduledBatch(options.MaxRunningRequests, _maxBlocksPerSequence, pool.BlockSize);
    }

    public BlockPool Pool => _pool;

    /// <summary>The recurrent state slots running requests hold; null for a model without recurrent layers.</summary>
    public StateSlotPool? StateSlots => _stateSlots;

    public SchedulerOptions Options => _options;

    /// <summary>Tokens one sequence may hold: the options' max context, capped by the pool's capacity.</summary>
    public int MaxContext { get; }

    /// <summary>Running requests in rank order: interactive before batch, then by arrival.</summary>
    public ReadOnlySpan<GenerationRequest> Running => _running.AsSpan(0, _runningCount);

    public int WaitingCount => _waitingInteractive.Count + _waitingBatch.Count;

    /// <summary>Requests added and not finished yet (waiting or running); the engine loop idles at 0.</summary>
    public int UnfinishedCount => _unfinished.Count;

    /// <summary>Preemptions so far, all requests together.</summary>
    public long PreemptionCount { get; private set; }

    /// <summary>
    /// Queues a request. Throws <see cref="ArgumentException"/> when it could never run: an empty prompt, or one
    /// that leaves no room in the max context (or the whole pool) for even one generated token.
    /// </summary>
    public GenerationRequest Add(ReadOnlySpan<int> promptTokens, RequestParameters parameters)
    {
        if (promptTokens.IsEmpty) throw new ArgumentException("The prompt must hold at least one token.", nameof(promptTokens));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(parameters.MaxNewTokens, nameof(parameters.MaxNewTokens));
        if (promptTokens.Length + 1 > MaxContext)
        {
            string limit = MaxContext == _options.MaxContext
                ? $"the max context of {MaxContext} tokens"
                : $"the KV pool's capacity of {MaxContext} tokens ({_pool.BlockCount} blocks × {_pool.BlockSize})";
            throw new ArgumentException(
                $"The prompt has {promptTokens.Length} tokens; with one token to generate that exceeds {limit}, so the request could never run.",
                nameof(promptTokens));
        }

        var request = new GenerationRequest(_nextId++, promptTokens, parameters, MaxContext, _maxBlocksPerSequence);
        Track(request);
        WaitingQueueOf(request).PushBack(request);
        return request;
    }

    public bool TryGetRequest(long requestId, out GenerationRequest request) =>
        _unfinished.TryGetValue(requestId, out request!);

    /// <summary>
    /// Cancels a waiting or running request at the next <see cref="Schedule"/> (a step in flight may still be
    /// writing its KV, so its blocks are freed only then). False if it is unknown, finished or already ending.
    /// </summary>
    public bool Cancel(long requestId) => RequestFinish(requestId, FinishReason.Cancelled, errorMessage: null);

    /// <summary>Ends a request with <see cref="FinishReason.Error"/> at the next <see cref="Schedule"/>, like <see cref="Cancel"/>.</summary>
    public bool Fail(long requestId, string errorMessage) => RequestFinish(requestId, FinishReason.Error, errorMessage);

    /// <summary>
    /// Decides the next step. The batch is owned by the scheduler and valid until the next call; a non-empty one
    /// must be answered by <see cref="OnStepCompleted"/> before scheduling again.
    /// </summary>
    public ScheduledBatch Schedule()
    {
        if (_stepInFlight)
            throw new InvalidOperationException("The previous step is still in flight: report its sampled tokens with OnStepCompleted before scheduling the next.");
        _step.Clear();
        ApplyPendingFinishes();

        int budget = _options.TokenBudget;
        if (_options.ChunkedPrefill)
        {
            bool preempted = ScheduleRunning(ref budget);
            // A step that had to preempt has no blocks to spare for newcomers.
            if (!preempted) AdmitWaiting(budget);
        }
        else if (!AdmitWaiting(budget))
        {
            // Prefill first: running decodes get a step only when no waiting prompt could be admitted.
            ScheduleRunning(ref budget);
        }

        if (_options.SharedPrefixAttention) _step.BlockTables.FindSharedPrefixes(_pool);
        _stepInFlight = !_step.IsEmpty;
        return _step;
    }

    /// <summary>
    /// Takes the step's sampled tokens, one per chunk that needs logits, in chunk order: marks the chunks' tokens
    /// computed (caching blocks they filled), appends each sampled token and finishes requests that hit a stop token,
    /// their max new tokens or the max context. Returns the requests this step finished (their blocks freed), valid
    /// until the next call.
    /// </summary>
    public ReadOnlySpan<GenerationRequest> OnStepCompleted(ReadOnlySpan<int> sampledTokens)
    {
        if (!_stepInFlight) throw new InvalidOperationException("No step is in flight: Schedule returned an empty batch or its tokens were already reported.");
        if (sampledTokens.Length != _step.LogitsCount)
            throw new ArgumentException($"The step needs {_step.LogitsCount} sampled tokens (one per chunk that needs logits); got {sampledTokens.Length}.", nameof(sampledTokens));
        _stepInFlight = false;
        Array.Clear(_finishedByStep, 0, _finishedByStepCount);
        _finishedByStepCount = 0;

        int sampled = 0;
        foreach (ref readonly var chunk in _step.Chunks)
        {
            var request = chunk.Request;
            request.NumComputedTokens += chunk.Count;
            _pool.CacheFullBlocks(request.Blocks, request.Tokens, request.NumComputedTokens);
            if (!chunk.NeedsLogits) continue;

            int token = sampledTokens[sampled++];
            // Cancelled while the step ran: the token is dropped, the cancel applies at the next schedule.
            if (request.PendingFinish != FinishReason.None) continue;

            var reason = Accept(request, token);
            if (reason == FinishReason.None) continue;

            ReleaseMemory(request);
            Finish(request, reason);
            _finishedByStep[_finishedByStepCount++] = request;
        }

        if (_finishedByStepCount > 0) RemoveFinishedFromRunning();
        return _finishedByStep.AsSpan(0, _finishedByStepCount);
    }

    /// <summary>
    /// Starts another sample of <paramref name="parent"/> (parallel sampling, n &gt; 1) while the step that computes
    /// its prompt is in flight, i.e. between <see cref="Schedule"/> and <see cref="OnStepCompleted"/>: the fork is the
    /// prompt plus <paramref name="firstToken"/>, sampled from the same logits, and shares the prompt's KV blocks
    /// instead of computing them again; the first of the two to write into a shared, partly filled block gets a copy
    /// (<see cref="ScheduledBatch.Copies"/>). At the running cap the fork waits instead and recomputes the prompt,
    /// mostly from the prefix cache. A first token that ends it (a stop token, one max new token, the max context)
    /// returns it already finished, holding nothing.
    /// </summary>
    public GenerationRequest Fork(GenerationRequest parent, int firstToken, RequestParameters parameters)
    {
        ArgumentNullException.ThrowIfNull(parent);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(parameters.MaxNewTokens, nameof(parameters.MaxNewTokens));
        if (!IsPromptEndInFlight(parent))
            throw new InvalidOperationException($"Only a request whose prompt's last chunk is in the step in flight can be forked; {parent} is not.");
        if (parameters.CacheKey != parent.Blocks.CacheKey)
            throw new ArgumentException("A fork must keep its parent's cache key: the shared blocks' hashes were computed with it.", nameof(parameters));

        var fork = new GenerationRequest(_nextId++, parent.PromptTokens, parameters, MaxContext, _maxBlocksPerSequence);
        var reason = Accept(fork, firstToken);
        if (reason != FinishReason.None)
        {
            fork.Status = RequestStatus.Finished;
            fork.FinishReason = reason;
            return fork;
        }

        Track(fork);
        if (_runningCount == _running.Length || (_stateSlots is not null && (fork.StateSlot = _stateSlots.Allocate()) < 0))
        {
            WaitingQueueOf(fork).PushBack(fork);
            return fork;
        }
        // A fork with a state slot continues from its parent's state: the caller copies the slot once the step is computed.
        _pool.Fork(parent.Blocks, fork.Blocks);
        // The step in flight computes the prompt's last tokens into the blocks both now hold.
        fork.NumComputedTokens = parent.NumTokens;
        fork.NumCachedTokens = parent.NumTokens;
        fork.Status = RequestStatus.Running;
        InsertRunning(fork);
        return fork;
    }

    /// <summary>Registers a new request; buffers grow here so that preemption (requeueing) and cancellation never allocate on the step path.</summary>
    private void Track(GenerationRequest request)
    {
        _unfinished.Add(request.Id, request);
        _waitingInteractive.EnsureCapacity(_unfinished.Count);
        _waitingBatch.EnsureCapacity(_unfinished.Count);
        _pendingFinishes.EnsureCapacity(_unfinished.Count);
        _step.EnsureFinishedCapacity(_unfinished.Count);
    }

    /// <summary>Takes a sampled token: a stop token ends the request unappended; otherwise it is appended and may reach a length limit.</summary>
    private FinishReason Accept(GenerationRequest request, int token)
    {
        if (request.IsStopToken(token)) return FinishReason.Stop;
        request.Append(token);
        return request.NumGeneratedTokens == request.MaxNewTokens || request.NumTokens == MaxContext ? FinishReason.Length : FinishReason.None;
    }

    private bool IsPromptEndInFlight(GenerationRequest request)
    {
        if (!_stepInFlight || request.Status != RequestStatus.Running || request.PendingFinish != FinishReason.None || request.NumGeneratedTokens != 0)
            return false;
        foreach (ref readonly var chunk in _step.Chunks)
        {
            if (chunk.Request == request) return chunk.NeedsLogits;
        }
        return false;
    }

    /// <summary>
    /// Makes room for <paramref name="request"/>'s next <paramref name="count"/> tokens, all or nothing: new blocks
    /// past its table, and a private copy of the shared, partly filled block it writes first (a fork's prompt tail).
    /// </summary>
    private bool TryReserve(GenerationRequest request, int count)
    {
        var table = request.Blocks;
        int start = request.NumComputedTokens;
        int newBlocks = Math.Max(0, _pool.BlocksFor(start + count) - table.Count);
        int firstBlock = start / _pool.BlockSize;
        bool copyFirst = firstBlock < table.Count && _pool.GetBlock(table[firstBlock]).RefCount > 1;
        if (newBlocks + (copyFirst ? 1 : 0) > _pool.FreeBlockCount) return false;
        if (copyFirst)
        {
            _pool.TryMakeWritable(table, start, out var copy);
            _step.AddCopy(copy!.Value);
        }
        return _pool.AllocateForSequence(table, start + count);
    }

    /// <summary>Schedules running requests in rank order; returns whether any had to be preempted for blocks.</summary>
    private bool ScheduleRunning(ref int budget)
    {
        int decodesNotYetScheduled = 0;
        for (int i = 0; i < _runningCount; i++)
        {
            if (IsDecode(_running[i])) decodesNotYetScheduled++;
        }

        bool preempted = false;
        for (int i = 0; i < _runningCount && budget > 0; i++)
        {
            var request = _running[i];
            int count;
            if (IsDecode(request))
            {
                decodesNotYetScheduled--;
                count = 1;
            }
            else
            {
                // An unfinished prefill leaves one token for every decode ranked after it.
                count = Math.Min(request.NumTokens - request.NumComputedTokens, budget - decodesNotYetScheduled);
                if (count <= 0) continue;
            }

            while (!TryReserve(request, count))
            {
                // Victims come off the end of the ranking, after this request, so none is scheduled yet this step.
                var victim = _running[--_runningCount];
                _running[_runningCount] = null!;
                preempted = true;
                if (victim == request)
                {
                    Preempt(victim);
                    return true; // it ranked last: no one is left after it
                }
                if (IsDecode(victim)) decodesNotYetScheduled--;
                Preempt(victim);
            }
            _step.AddChunk(request, count);
            budget -= count;
        }
        return preempted;
    }

    /// <summary>
    /// Admits waiting requests, interactive first, each in arrival order, while budget, cap and blocks allow (whole
    /// prompts only when chunking is off); returns whether any was admitted.
    /// </summary>
    private bool AdmitWaiting(int budget)
    {
        bool admitted = false;
        while (budget > 0 && _runningCount < _options.MaxRunningRequests)
        {
            var queue = _waitingInteractive.Count > 0 ? _waitingInteractive : _waitingBatch.Count > 0 ? _waitingBatch : null;
            if (queue is null) break;
            var request = queue.Peek();

            // The last token is computed even when cached: its logits give the next token. A blocked head
            // re-hashes its prompt each step; that is microseconds against the step it waits on.
            var cacheable = request.Tokens[..^1];
            // A recurrent model computes every token: no state is cached for a prefix (see the class remarks).
            if (_stateSlots is not null) cacheable = default;
            int cachedBlocks = _pool.PeekCachedPrefix(cacheable, request.Blocks.CacheKey, out int blocksToRevive);
            int cachedTokens = cachedBlocks * _pool.BlockSize;
            int count = Math.Min(request.NumTokens - cachedTokens, budget);
            if (!_options.ChunkedPrefill && count < request.NumTokens - cachedTokens) break;
            int newBlocks = _pool.BlocksFor(cachedTokens + count) - cachedBlocks;
            // First come first served: no one behind it may take the blocks it is waiting for.
            if (newBlocks > _pool.FreeBlockCount - blocksToRevive) break;
            if (_stateSlots is { FreeCount: 0 }) break;

            queue.PopFront();
            if (_stateSlots is not null) request.StateSlot = _stateSlots.Allocate();
            int found = _pool.FindCachedPrefix(cacheable, request.Blocks);
            if (found != cachedTokens || !_pool.AllocateForSequence(request.Blocks, cachedTokens + count))
                throw new InvalidOperationException($"The block pool changed between checking and admitting {request}.");
            request.NumComputedTokens = cachedTokens;
            request.NumCachedTokens = cachedTokens;
            request.Status = RequestStatus.Running;
            InsertRunning(request);
            _step.AddChunk(request, count);
            budget -= count;
            admitted = true;
        }
        return admitted;
    }

    private static bool IsDecode(GenerationRequest request) => request.NumTokens - request.NumComputedTokens == 1;

    /// <summary>Ranks before: interactive before batch, then earlier arrival.</summary>
    private static bool RanksBefore(GenerationRequest a, GenerationRequest b) =>
        a.Priority != b.Priority ? a.Priority < b.Priority : a.Id < b.Id;

    private void InsertRunning(GenerationRequest request)
    {
        int position = _runningCount;
        while (position > 0 && RanksBefore(request, _running[position - 1]))
        {
            _running[position] = _running[position - 1];
            position--;
        }
        _running[position] = request;
        _runningCount++;
    }

    /// <summary>Gives back what a running request holds: its KV blocks and its state slot.</summary>
    private void ReleaseMemory(GenerationRequest request)
    {
        _pool.Free(request.Blocks);
        if (request.StateSlot < 0) return;
        _stateSlots!.Free(request.StateSlot);
        request.StateSlot = -1;
    }

    private void Preempt(GenerationRequest request)
    {
        ReleaseMemory(request);
        request.NumComputedTokens = 0;
        request.NumCachedTokens = 0;
        request.Status = RequestStatus.Waiting;
        request.PreemptionCount++;
        PreemptionCount++;
        // It arrived before everything still waiting in its class (those were admitted after it, or never).
        WaitingQueueOf(request).PushFront(request);
    }

    private bool RequestFinish(long requestId, FinishReason reason, string? errorMessage)
    {
        if (!_unfinished.TryGetValue(requestId, out var request) || request.PendingFinish != FinishReason.None) return false;
        request.PendingFinish = reason;
        request.ErrorMessage = errorMessage;
        _pendingFinishes.Add(request);
        return true;
    }

    private void ApplyPendingFinishes()
    {
        if (_pendingFinishes.Count == 0) return;
        for (int i = 0; i < _pendingFinishes.Count; i++)
        {
            var request = _pendingFinishes[i];
            if (request.Status == RequestStatus.Running) ReleaseMemory(request); // leaves the ranking in the compaction below
            else WaitingQueueOf(request).Remove(request);
            Finish(request, request.PendingFinish);
            _step.AddFinished(request);
        }
        _pendingFinishes.Clear();
        RemoveFinishedFromRunning();
    }

    private void Finish(GenerationRequest request, FinishReason reason)
    {
        request.Status = RequestStatus.Finished;
        request.FinishReason = reason;
        request.PendingFinish = FinishReason.None;
        _unfinished.Remove(request.Id);
    }

    private void RemoveFinishedFromRunning()
    {
        int kept = 0;
        for (int i = 0; i < _runningCount; i++)
        {
            if (_running[i].Status != RequestStatus.Finished) _running[kept++] = _running[i];
        }
        Array.Clear(_running, kept, _runningCount - kept);
        _runningCount = kept;
    }

    private WaitingQueue WaitingQueueOf(GenerationRequest request) =>
        request.Priority == RequestPriority.Interactive ? _waitingInteractive : _waitingBatch;
}
