namespace Kiln;

/// <summary>
/// A model definition bound to a model file's weights. The source generator implements this on every [Model]
/// class: hyperparameter and weight binding, cache creation, and compilation into a fused plan.
/// </summary>
public interface IKilnModel
{
    /// <summary>Number of logits per output row.</summary>
    int VocabSize { get; }

    /// <summary>The geometry every KV cache for this model has, contiguous or paged.</summary>
    KvCacheShape KvShape { get; }

    /// <summary>
    /// What each sequence keeps for the model's recurrent layers (LSTM, GRU, SSM), beside or instead of KV rows:
    /// <see cref="RecurrentStateShape.None"/> for a model of attention layers only. Its KV shape has no layers when it
    /// has no attention.
    /// </summary>
    RecurrentStateShape StateShape => RecurrentStateShape.None;

    /// <summary>A contiguous cache shaped for this model's attention layers: <paramref name="slots"/> sequences of up to <paramref name="maxContext"/> positions.</summary>
    KvCache CreateKvCache(int slots, int maxContext);

    /// <summary>The eager reference forward pass: returns [OutputCount, Vocab] logits.</summary>
    Tensor ForwardEager(ReadOnlySpan<int> tokens, AttentionContext context);

    /// <summary>
    /// Compiles the fused plan, sized for at most <paramref name="maxTokensPerStep"/> tokens in one step, on
    /// <see cref="Environment.ProcessorCount"/> threads.
    /// </summary>
    ICompiledPlan Compile(int maxTokensPerStep);

    /// <summary>Compiles the fused plan with explicit <paramref name="options"/> (step size, threads).</summary>
    ICompiledPlan Compile(PlanOptions options);
}

/// <summary>
/// A model's KV-cache geometry: <paramref name="Layers"/> attention layers, rows of <paramref name="KvDim"/> keys
/// (and as many values) per token, in heads of <paramref name="HeadDim"/> (the int8 storage's scale group; 0 when the
/// model has no attention).
/// </summary>
public readonly record struct KvCacheShape(int Layers, int KvDim, int HeadDim)
{
    /// <summary>One block of <paramref name="slots"/> × <paramref name="maxContext"/> rows per slot, F32.</summary>
    public KvCache CreateContiguous(int slots, int maxContext) => new(AttentionLayers(), slots, maxContext, KvDim);

    /// <summary>A paged cache for a block pool of <paramref name="blockCount"/> blocks of <paramref name="blockSize"/> positions.</summary>
    public KvCache CreatePaged(int blockCount, int blockSize, KvStorage storage = KvStorage.F32, int maxContext = 0) =>
        KvCache.Paged(AttentionLayers(), blockCount, blockSize, KvDim, storage, HeadDim, maxContext);

    // A hybrid file whose layers all take the recurrent branch has the default shape: say so, not "layers 0".
    private int AttentionLayers() => Layers > 0 ? Layers : throw new NotSupportedException(
        "This model, as its file describes it, has no attention layers: it keeps no KV cache. Its memory is its recurrent state (StateShape.CreateCache), or use AttentionContext.ForSlots.");

    /// <summary>Bytes one block of <paramref name="blockSize"/> positions takes in <paramref name="storage"/>, all layers, keys and values.</summary>
    public long BytesPerBlock(int blockSize, KvStorage storage = KvStorage.F32) =>
        KvCache.BytesPerBlock(Layers, blockSize, KvDim, storage, HeadDim);
}

/// <summary>
/// How a plan is compiled: the most tokens one step may hold (it sizes the arena and scratch) and the threads its
/// worker pool runs on, the calling thread included (0: <see cref="Environment.ProcessorCount"/>).
/// </summary>
public sealed record PlanOptions(int MaxTokensPerStep, int Threads = 0)
{
    /// <summary>
    /// The sparse layout of every Linear weight whose layout is Q8_0 or chosen from the file (<see cref="WeightFormat.AsStored"/>),
    /// whatever its [Sparse] says: <see cref="SparsePattern.None"/> packs them dense (the twin a sparse plan is compared
    /// with). Null: each weight as its definition asks. Weights are not checked or pruned for it: a 2:4 plan over a
    /// weight that is not 2:4 throws when it is compiled.
    /// </summary>
    public SparsePattern? Sparsity { get; init; }

    /// <summary>The thread count a plan uses: <see cref="Threads"/>, or every processor when it is 0.</summary>
    public int ResolvedThreads => Threads > 0 ? Threads : Environment.ProcessorCount;

    /// <summary>Throws when a value is out of range (a step holds at least one token; threads are 0 or more).</summary>
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxTokensPerStep, nameof(MaxTokensPerStep));
        ArgumentOutOfRangeException.ThrowIfNegative(Threads, nameof(Threads));
    }
}

/// <summary>
/// A model compiled by the generator: fused kernels over one preallocated arena, run on the plan's own worker pool.
/// Dispose it to stop the pool's threads and free its native memory.
/// </summary>
public interface ICompiledPlan : IDisposable
{
    int MaxTokensPerStep { get; }

    int VocabSize { get; }

    /// <summary>What the generator fused and which layout each weight got, and why.</summary>
    string FusionReport { get; }

    /// <summary>
    /// Runs one step over <paramref name="tokens"/> (one per context token) and writes
    /// [context.OutputCount, VocabSize] logits. Allocates nothing.
    /// </summary>
    void Step(ReadOnlySpan<int> tokens, AttentionContext context, Span<float> logits);
}

/// <summary>
/// A plan that keeps keys and values in its own memory (a GPU plan: the block pool lives in device memory). Whoever
/// drives it (<see cref="TokenGenerator"/>, the engine) asks it for the cache, which then holds no rows on the host
/// (<see cref="KvCache.External"/>); a step with a cache the plan did not make is refused.
/// </summary>
public interface IKvCacheProvider
{
    /// <summary>A contiguous cache: <paramref name="slots"/> sequences of up to <paramref name="maxContext"/> positions.</summary>
    KvCache CreateKvCache(int slots, int maxContext);

    /// <summary>A paged cache of <paramref name="blockCount"/> blocks of <paramref name="blockSize"/> positions (sequences of up to <paramref name="maxContext"/>).</summary>
    KvCache CreatePagedKvCache(int blockCount, int blockSize, KvStorage storage, int maxContext);
}
