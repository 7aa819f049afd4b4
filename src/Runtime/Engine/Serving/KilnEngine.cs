using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Kiln.Engine.Paging;
using Kiln.Engine.Scheduling;
using Kiln.Engine.State;
using Kiln.Tokenization;

namespace Kiln.Engine.Serving;

/// <summary>
/// Serves many generation requests at once: continuous batching over a paged KV cache. One dedicated thread, the
/// engine loop, owns the scheduler, the cache and the plan; each step it runs the scheduled prompt chunks and decodes
/// of every running request as one flattened batch, samples each request's next token with the request's own
/// sampler, and streams it out. Callers on any thread hand requests and cancels to the loop through a queue.
/// </summary>
/// <remarks>
/// The step path (schedule, fill the step, <see cref="ICompiledPlan.Step"/>, sample, stream) allocates only the
/// streamed updates' text for tokens whose text is not cached by the tokenizer; every buffer is sized when the engine
/// or the request is made. Outputs do not depend on what else is in the batch: the plan computes each token's row on
/// its own, so a request's greedy tokens are those it would generate alone.
/// <para>
/// An exception inside the loop (the plan's step, a sampler) faults the engine for good, since the KV cache and the
/// plan may be left half-updated: every open request, running, waiting or still queued, ends with
/// <see cref="FinishReason.Error"/> and an error message naming the exception, and every later
/// <see cref="GenerateAsync(int[], GenerationOptions?, CancellationToken)"/> throws <see cref="EngineFaultedException"/>
/// holding it. Dispose a faulted engine and make a new one.
/// </para>
/// </remarks>
public sealed partial class KilnEngine : IAsyncDisposable
{
    /// <summary>The name of the engine's <see cref="System.Diagnostics.Metrics.Meter"/>.</summary>
    public const string MeterName = "Kiln.Engine";

    private const string DisposedMessage = "The engine was disposed before the request finished.";

    private readonly KilnTokenizer _tokenizer;
    private readonly Channel<EngineCommand> _inbox =
        Channel.CreateUnbounded<EngineCommand>(new UnboundedChannelOptions { SingleReader = true, AllowSynchronousContinuations = false });
    private readonly Thread _loopThread;
    private readonly TaskCompletionSource _loopEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly EngineMetrics _metrics;
    private readonly bool _ownsPlan;
    private readonly KvCache? _kv; // null for a model without attention layers
    private readonly RecurrentStateCache? _state; // null for a model without recurrent layers
    private readonly int _sampleCapacity; // MaxRunningRequests + MaxQueuedRequests, capped at int.MaxValue
    private int _openSamples; // accepted and not yet ended; reserved by callers, given back by the loop
    private double _secondsBetweenCompletions; // published by the loop for the overload hint; 0 until measured
    private int _disposed;
    private volatile Exception? _fault;

    /// <summary>
    /// An engine for <paramref name="model"/>, with the plan <paramref name="compilePlan"/> makes for steps of the
    /// engine's token budget (e.g. <c>model.Compile</c>, or <c>n => new EagerPlan(model, n)</c> for the reference).
    /// </summary>
    public KilnEngine(IKilnModel model, Func<int, ICompiledPlan> compilePlan, KilnTokenizer tokenizer, EngineOptions? options = null)
        : this(model, compilePlan, tokenizer, options, ownsPlan: true)
    {
    }

    /// <summary>An engine over a plan already compiled for at least the engine's token budget; the caller keeps owning the plan.</summary>
    public KilnEngine(IKilnModel model, ICompiledPlan plan, KilnTokenizer tokenizer, EngineOptions? options = null)
        : this(model, _ => plan ?? throw new ArgumentNullException(nameof(plan)), tokenizer, options, ownsPlan: false)
    {
    }

    private KilnEngine(IKilnModel model, Func<int, ICompiledPlan> compilePlan, KilnTokenizer tokenizer, EngineOptions? options, bool ownsPlan)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(compilePlan);
        ArgumentNullException.ThrowIfNull(tokenizer);
        options ??= new EngineOptions();
        options.Validate();
        Options = options;
        _tokenizer = tokenizer;
        _sampleCapacity = (int)Math.Min(int.MaxValue, (long)options.MaxRunningRequests + options.MaxQueuedRequests);

        var shape = model.KvShape;
        var stateShape = model.StateShape ?? RecurrentStateShape.None;
        if (shape.Layers == 0 && stateShape.IsEmpty)
            throw new ArgumentException("The model keeps neither a KV cache nor recurrent state (an encoder): it has nothing to generate with; embed with it instead.", nameof(model));
        BlockPool pool;
        int maxContext;
        if (shape.Layers > 0)
        {
            KvCache.EnsureMemory(options.KvCacheBytes, $"KvCacheBytes ({options.KvCacheBytes})", "a smaller KvCacheBytes");
            long bytesPerBlock = shape.BytesPerBlock(options.BlockSize, options.KvStorage);
            long blockCount = options.KvCacheBytes / bytesPerBlock;
            if (blockCount < 1)
                throw new ArgumentOutOfRangeException(nameof(options), $"KvCacheBytes ({options.KvCacheBytes}) does not hold one KV block of {options.BlockSize} tokens ({bytesPerBlock} bytes for this model).");
            blockCount = Math.Min(blockCount, Array.MaxLength / ((long)options.BlockSize * shape.KvDim));
            pool = new BlockPool((int)blockCount, options.BlockSize);
            maxContext = Math.Min(options.MaxContext, pool.TokenCapacity);
        }
        else
        {
            // Recurrent layers only: the blocks store nothing and just count positions, as many as every running
            // request at the max context holds, so blocks never run out and never preempt.
            long blocks = (long)options.MaxRunningRequests * ((options.MaxContext + options.BlockSize - 1) / options.BlockSize);
            pool = new BlockPool((int)Math.Min(blocks, int.MaxValue / options.BlockSize), options.BlockSize);
            maxContext = Math.Min(options.MaxContext, pool.TokenCapacity);
        }
        // One state slot per running request: a request that is admitted always finds one.
        var stateSlots = stateShape.IsEmpty ? null : new StateSlotPool(options.MaxRunningRequests);
        _state = stateShape.IsEmpty ? null : stateShape.CreateCache(options.MaxRunningRequests);

        // Without chunking, a step must hold a whole longest prompt (a preempted request recomputes all its tokens).
        int tokenBudget = options.ChunkedPrefill ? options.TokenBudget : Math.Max(options.TokenBudget, maxContext + options.MaxRunningRequests);
        _scheduler = new ContinuousBatchScheduler(pool, new SchedulerOptions
        {
            TokenBudget = tokenBudget,
            MaxRunningRequests = options.MaxRunningRequests,
            MaxContext = maxContext,
            ChunkedPrefill = options.ChunkedPrefill,
            SharedPrefixAttention = options.SharedPrefixAttention && shape.Layers > 0, // sharing groups are of KV blocks
        }, stateSlots);

        _plan = compilePlan(tokenBudget) ?? throw new ArgumentException("The plan factory returned null.", nameof(compilePlan));
        _ownsPlan = ownsPlan;
        string? planProblem =
            _plan.MaxTokensPerStep < tokenBudget ? $"The plan takes {_plan.MaxTokensPerStep} tokens per step; the engine's steps hold up to {tokenBudget}."
            : _plan.VocabSize != model.VocabSize ? $"The plan produces {_plan.VocabSize} logits per row; the model's vocabulary has {model.VocabSize}."
            : null;
        if (planProblem is not null)
        {
            if (ownsPlan) _plan.Dispose();
            throw new ArgumentException(planProblem, nameof(compilePlan));
        }
        VocabSize = _plan.VocabSize;
        // A plan that keeps the block pool in its own memory (a GPU plan) makes the cache: it mirrors the pool's block
        // ids and holds no rows here. Any other plan reads and writes a host cache.
        try
        {
            if (shape.Layers > 0)
                _kv = _plan is IKvCacheProvider provider
                    ? provider.CreatePagedKvCache(pool.BlockCount, options.BlockSize, options.KvStorage, maxContext)
                    : shape.CreatePaged(pool.BlockCount, options.BlockSize, options.KvStorage, maxContext);
        }
        catch
        {
            if (ownsPlan) _plan.Dispose();
            throw;
        }

        int maxChunks = options.MaxRunningRequests;
        _context = _kv is null
            ? new AttentionContext(_state!, tokenBudget)
            : new AttentionContext(_kv, tokenBudget, maxBlockIds: maxChunks * pool.BlocksFor(_scheduler.MaxContext), _state);
        _stepTokens = new int[tokenBudget];
        _logits = new float[(long)maxChunks * VocabSize];
        _sampled = new int[maxChunks];
        _stepRequests = new EngineRequest[maxChunks];
        _active = new Dictionary<long, EngineRequest>(maxChunks * 2);
        _metrics = new EngineMetrics(options.MeterFactory, GetStatistics);
        PublishStatistics();

        _loopThread = new Thread(RunLoop) { IsBackground = true, Name = "Kiln engine loop" };
        _loopThread.Start();
    }

    public EngineOptions Options { get; }

    /// <summary>The tokenizer the engine encodes string prompts and decodes generated text with.</summary>
    public KilnTokenizer Tokenizer => _tokenizer;

    /// <summary>The paged KV storage (its block geometry is the scheduler's block pool's); throws for a model without attention layers.</summary>
    public KvCache Cache => _kv ?? throw new InvalidOperationException("This model has no attention layers, so the engine keeps no KV cache: its sequences' memory is their recurrent state (State).");

    /// <summary>Whether the model has attention layers, whose keys and values <see cref="Cache"/> holds.</summary>
    public bool HasKvCache => _kv is not null;

    /// <summary>The recurrent state of the running requests, one slot each; throws for a model without recurrent layers.</summary>
    public RecurrentStateCache State => _state ?? throw new InvalidOperationException("This model has no recurrent layers, so the engine keeps no recurrent state.");

    public int VocabSize { get; }

    /// <summary>Tokens one request may hold, prompt and generated: the options' max context, capped by the KV memory.</summary>
    public int MaxContext => _scheduler.MaxContext;

    /// <summary>Tokens computed per step at most (grown to a whole prompt when chunked prefill is off).</summary>
    public int TokenBudget => _scheduler.Options.TokenBudget;

    /// <summary>Whether the engine stopped after an unexpected error and takes no more requests (see <see cref="EngineFaultedException"/>).</summary>
    public bool IsFaulted => _fault is not null;

    /// <summary>
    /// Encodes <paramref name="prompt"/> (after BOS when the model file asks for it, <see cref="KilnTokenizer.AddBosToken"/>)
    /// and generates from it; see the id overload.
    /// </summary>
    public IAsyncEnumerable<GenerationUpdate> GenerateAsync(string prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        return GenerateAsync(_tokenizer.Encode(prompt, _tokenizer.AddBosToken), options, cancellationToken);
    }

    /// <summary>
    /// Queues a request and returns its stream: one update per generated token (its text delta, and logprob if asked
    /// for), then a final update with the finish reason and usage (per sample, when <see cref="GenerationOptions.N"/>
    /// asks for several). Cancelling <paramref name="cancellationToken"/>, or leaving the enumeration early, cancels
    /// the request: its KV blocks are freed by the next step and the stream ends with
    /// <see cref="FinishReason.Cancelled"/>. Throws at once, before anything streams, for a request that could never
    /// run (empty prompt, unknown token, a prompt that leaves no room to generate in the max context or the whole KV
    /// memory, more samples than the engine holds) and after disposal (<see cref="ObjectDisposedException"/>) or a
    /// fault (<see cref="EngineFaultedException"/>). Throws <see cref="EngineOverloadedException"/> at once, queueing
    /// nothing, when the engine already holds as many samples as <see cref="EngineOptions.MaxRunningRequests"/> +
    /// <see cref="EngineOptions.MaxQueuedRequests"/> allow.
    /// </summary>
    public IAsyncEnumerable<GenerationUpdate> GenerateAsync(int[] promptIds, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(promptIds);
        options ??= GenerationOptions.Greedy;
        ThrowIfUnavailable();
        cancellationToken.ThrowIfCancellationRequested();
        options.Validate(VocabSize);
        if (promptIds.Length == 0) throw new ArgumentException("The prompt must hold at least one token.", nameof(promptIds));
        foreach (int id in promptIds)
        {
            if ((uint)id >= (uint)VocabSize) throw new ArgumentOutOfRangeException(nameof(promptIds), $"Token id {id} is outside the vocabulary of {VocabSize}.");
        }
        if (promptIds.Length + 1 > MaxContext)
        {
            string limit = MaxContext == Options.MaxContext
                ? $"the max context of {MaxContext} tokens"
                : $"the KV memory's capacity of {MaxContext} tokens ({Cache.BlockCount} blocks × {Cache.BlockSize}; raise KvCacheBytes)";
            throw new ArgumentException($"The prompt has {promptIds.Length} tokens; with one token to generate that exceeds {limit}, so the request could never run.", nameof(promptIds));
        }

        if (options.N > _sampleCapacity)
            throw new ArgumentOutOfRangeException(nameof(options.N), options.N, $"N asks for more samples than the engine holds open ({_sampleCapacity}: MaxRunningRequests + MaxQueuedRequests), so the request could never be accepted.");

        ReserveSamples(options.N);
        var request = new RequestGroup(this, (int[])promptIds.Clone(), options, VocabSize, MaxContext, _tokenizer);
        // Registered before the request is queued, so the loop that ends it always finds the registration to drop;
        // a cancel that beats the request into the queue is caught when the loop adds it.
        if (cancellationToken.CanBeCanceled)
            request.CallerCancellation = cancellationToken.UnsafeRegister(static state => Cancel((RequestGroup)state!), request);
        if (!_inbox.Writer.TryWrite(new EngineCommand(CommandKind.Add, request)))
        {
            request.CallerCancellation.Dispose();
            Interlocked.Add(ref _openSamples, -options.N);
            ThrowIfUnavailable(orDisposed: true);
        }
        return ReadUpdates(request);
    }

    /// <summary>Counts <paramref name="samples"/> more as open, or refuses them when that would pass the engine's capacity.</summary>
    private void ReserveSamples(int samples)
    {
        int open = Volatile.Read(ref _openSamples);
        while (true)
        {
            if (open + samples > _sampleCapacity)
            {
                // The last samples' pace says when room for this many should come.
                double interval = Volatile.Read(ref _secondsBetweenCompletions);
                var retryAfter = interval > 0 ? TimeSpan.FromSeconds(interval * (open + samples - _sampleCapacity)) : TimeSpan.FromSeconds(1);
                throw new EngineOverloadedException(open, _sampleCapacity, retryAfter);
            }
            int seen = Interlocked.CompareExchange(ref _openSamples, open + samples, open);
            if (seen == open) return;
            open = seen;
        }
    }

    /// <summary>The engine's counters and gauges as of its latest step; safe from any thread.</summary>
    public EngineStatistics GetStatistics() => _statistics.Read();

    /// <summary>
    /// Stops the engine loop: every open request ends with <see cref="FinishReason.Cancelled"/> and a message saying
    /// the engine was disposed, and later calls to <see cref="GenerateAsync(int[], GenerationOptions?, CancellationToken)"/>
    /// throw <see cref="ObjectDisposedException"/>. Waits for a step in flight to finish.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            await _loopEnded.Task.ConfigureAwait(false);
            return;
        }
        _inbox.Writer.TryWrite(new EngineCommand(CommandKind.Shutdown, null));
        await _loopEnded.Task.ConfigureAwait(false);
        _metrics.Dispose();
    }

    private static void Cancel(RequestGroup request)
    {
        if (request.Completed || !request.TryMarkCancelRequested()) return;
        // After disposal the loop has ended every request already; nothing is listening.
        request.Engine._inbox.Writer.TryWrite(new EngineCommand(CommandKind.Cancel, request));
    }

    private static async IAsyncEnumerable<GenerationUpdate> ReadUpdates(RequestGroup request, [EnumeratorCancellation] CancellationToken enumerationToken = default)
    {
        using var enumerationCancellation = enumerationToken.CanBeCanceled
            ? enumerationToken.UnsafeRegister(static state => Cancel((RequestGroup)state!), request)
            : default;
        int finals = 0;
        try
        {
            var updates = request.Updates;
            // No token on the wait: a cancel is answered by a final Cancelled update, which the caller gets.
            while (await updates.WaitToReadAsync().ConfigureAwait(false))
            {
                while (updates.TryRead(out var update))
                {
                    if (update.IsFinal) finals++;
                    yield return update;
                }
            }
        }
        finally
        {
            // The caller stopped listening early: the request has no one left to generate for.
            if (finals < request.Samples.Length) Cancel(request);
        }
    }

    private void ThrowIfUnavailable(bool orDisposed = false)
    {
        if (_fault is { } fault) throw new EngineFaultedException(fault);
        if (orDisposed || Volatile.Read(ref _disposed) != 0) throw new ObjectDisposedException(nameof(KilnEngine));
    }

    private enum CommandKind
    {
        Add,
        Cancel,
        Shutdown,
    }

    private readonly record struct EngineCommand(CommandKind Kind, RequestGroup? Request);
}
