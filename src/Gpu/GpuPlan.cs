using ILGPU;
using ILGPU.Runtime;
using Kiln.Gpu.Kernels;

namespace Kiln.Gpu;

/// <summary>
/// How a GPU plan is compiled: the most tokens one step holds, and how kernels share their work. Lanes per work unit
/// (0: a warp on CUDA, one thread on ILGPU's CPU accelerator), threads per group and groups per launch (0: chosen
/// from the device).
/// </summary>
public sealed record GpuPlanOptions(int MaxTokensPerStep, int Lanes = 0, int GroupSize = 0, int MaxGroups = 0)
{
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxTokensPerStep, nameof(MaxTokensPerStep));
        ArgumentOutOfRangeException.ThrowIfNegative(Lanes, nameof(Lanes));
        ArgumentOutOfRangeException.ThrowIfNegative(GroupSize, nameof(GroupSize));
        ArgumentOutOfRangeException.ThrowIfNegative(MaxGroups, nameof(MaxGroups));
    }
}

/// <summary>A model definition that the generator also compiled for the GPU (its project references Kiln.Gpu).</summary>
public interface IKilnGpuModel : IKilnModel
{
    /// <summary>Uploads the bound weights in the GPU layouts and loads the plan's kernels on <paramref name="accelerator"/>.</summary>
    GpuPlan CompileGpu(Accelerator accelerator, GpuPlanOptions options);
}

/// <summary>
/// What every generated GPU plan shares: the step contract of <see cref="ICompiledPlan"/> over device memory. A step
/// uploads its token ids, positions and block tables in one copy, runs the generated launches (matmuls with their
/// fused prologues and epilogues, the elementwise kernels, paged attention over the device KV pool), and copies the
/// wanted rows' logits back: nothing else crosses the bus, and nothing is allocated once the buffers fit.
/// The KV cache lives in device memory: make it with <see cref="CreateKvCache"/> or <see cref="CreatePagedKvCache"/>
/// (the engine and <see cref="TokenGenerator"/> do, through <see cref="IKvCacheProvider"/>).
/// </summary>
public abstract class GpuPlan : ICompiledPlan, IKvCacheProvider
{
    private readonly KvCacheShape _kvShape;
    private readonly int _maxGroups;
    private readonly Dictionary<Tensor, MemoryBuffer1D<float, Stride1D.Dense>> _vectors = new(ReferenceEqualityComparer.Instance);
    private readonly List<GpuKvPool> _pools = new();
    private readonly List<RopeTable> _ropes = new();
    private readonly List<System.Reflection.MethodInfo> _kernels = new();
    private MemoryBuffer1D<int, Stride1D.Dense>? _stepInts;
    private int[] _hostInts = [];
    private MemoryBuffer1D<float, Stride1D.Dense> _logits = null!;
    private MemoryBuffer1D<float, Stride1D.Dense>? _arena;
    private MemoryBuffer1D<int, Stride1D.Dense>? _q8Quants;
    private MemoryBuffer1D<float, Stride1D.Dense>? _q8Scales;
    private MemoryBuffer1D<float, Stride1D.Dense>? _scores;
    private int _scoresContext;
    private Action<KernelConfig, GpuStepContext, GpuAttention>? _writeRows, _attend;
    private Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>? _concat;
    private bool _disposed;

    protected GpuPlan(Accelerator accelerator, GpuPlanOptions options, KvCacheShape kvShape)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Accelerator = accelerator;
        Options = options;
        MaxTokensPerStep = options.MaxTokensPerStep;
        _kvShape = kvShape;
        bool cuda = accelerator.AcceleratorType == AcceleratorType.Cuda;
        Lanes = options.Lanes > 0 ? options.Lanes : cuda ? accelerator.WarpSize : 1;
        if (Lanes != 1 && Lanes != accelerator.WarpSize)
            throw new ArgumentException($"Lanes per work unit must be 1 or the warp size ({accelerator.WarpSize}), not {Lanes}.", nameof(options));
        int groupSize = options.GroupSize > 0 ? options.GroupSize : cuda ? 256 : accelerator.MaxNumThreadsPerGroup;
        GroupSize = Math.Min(groupSize, accelerator.MaxNumThreadsPerGroup) / accelerator.WarpSize * accelerator.WarpSize;
        if (GroupSize < Lanes) throw new ArgumentException($"A group of {GroupSize} threads is smaller than a work unit's {Lanes} lanes.", nameof(options));
        _maxGroups = options.MaxGroups > 0 ? options.MaxGroups : cuda ? accelerator.NumMultiprocessors * 8 : accelerator.NumMultiprocessors;
    }

    public Accelerator Accelerator { get; }

    public GpuPlanOptions Options { get; }

    public int MaxTokensPerStep { get; }

    public abstract int VocabSize { get; }

    public abstract string FusionReport { get; }

    /// <summary>Threads working one unit: a warp on CUDA, 1 on the CPU accelerator (see <see cref="GpuLaunch"/>).</summary>
    public int Lanes { get; }

    /// <summary>Threads per group.</summary>
    public int GroupSize { get; }

    /// <summary>Every kernel method the plan loaded (tests compile each for CUDA without a GPU).</summary>
    public IReadOnlyList<System.Reflection.MethodInfo> Kernels => _kernels;

    /// <summary>Launches so far (kernels and device copies), for measuring how many a step takes.</summary>
    public long Launches { get; private set; }

    public KvCache CreateKvCache(int slots, int maxContext)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(slots);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxContext);
        return NewCache(slots, maxContext, KvStorage.F32, maxContext, paged: false);
    }

    public KvCache CreatePagedKvCache(int blockCount, int blockSize, KvStorage storage, int maxContext)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockCount);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        return NewCache(blockCount, blockSize, storage, maxContext, paged: true);
    }

    private KvCache NewCache(int blockCount, int blockSize, KvStorage storage, int maxContext, bool paged)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (storage != KvStorage.F32)
            throw new NotSupportedException($"A GPU plan keeps its KV cache in float32 device memory; {storage} storage is a CPU plan's option.");
        if (_kvShape.Layers == 0) throw new InvalidOperationException("This model has no attention layers: it needs no KV cache.");
        var pool = new GpuKvPool(this, Accelerator, _kvShape.Layers, blockCount, blockSize, _kvShape.KvDim);
        _pools.Add(pool);
        return KvCache.External(_kvShape.Layers, blockCount, blockSize, _kvShape.KvDim, storage, _kvShape.HeadDim, maxContext, paged, pool);
    }

    public void Step(ReadOnlySpan<int> tokens, AttentionContext context, Span<float> logits)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(context);
        int t = tokens.Length, o = context.OutputCount;
        if (t != context.TokenCount) throw new ArgumentException($"The step has {t} tokens but its context describes {context.TokenCount}.", nameof(tokens));
        if (t > MaxTokensPerStep) throw new ArgumentException($"The step has {t} tokens; this plan was compiled for at most {MaxTokensPerStep}.", nameof(tokens));
        if (logits.Length < (long)o * VocabSize)
            throw new ArgumentException($"logits holds {logits.Length} floats; the step needs {o} rows of {VocabSize}.", nameof(logits));
        GpuKvPool? pool = null;
        if (_kvShape.Layers > 0)
        {
            pool = context.Cache.BlockStore as GpuKvPool;
            if (pool is null || pool.Owner != this)
                throw new ArgumentException($"A GPU plan steps over a KV cache in its own device memory; {context.Cache} is not one it made (use the plan's CreateKvCache or CreatePagedKvCache).", nameof(context));
        }
        for (int i = 0; i < t; i++)
        {
            if ((uint)tokens[i] >= (uint)VocabSize)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"Token id {tokens[i]} at position {i} is outside the vocabulary (0..{VocabSize - 1}).");
        }
        var step = Upload(tokens, context);
        int longest = 0;
        foreach (int position in context.Positions) longest = Math.Max(longest, position + 1);
        foreach (var rope in _ropes) rope.Ensure(Accelerator, longest);
        if (pool is not null && _scoresContext < context.Cache.MaxContext) GrowScores(context.Cache.MaxContext);
        Run(tokens, context, step, pool);
        if (o > 0)
        {
            _logits.View.AsContiguous().SubView(0, (long)o * VocabSize).CopyToCPU(logits[..(o * VocabSize)]);
            Launches++;
        }
        Accelerator.Synchronize();
    }

    /// <summary>The generated launches of one step (<paramref name="tokens"/> and <paramref name="context"/> for host-side checks).</summary>
    protected abstract void Run(ReadOnlySpan<int> tokens, AttentionContext context, GpuStepContext step, GpuKvPool? pool);

    /// <summary>Checks the step's positions against tables gathered by position (GPT-2's position embedding).</summary>
    protected static void CheckPositions(GpuStepContext step, ReadOnlySpan<int> positions, int rows, string table)
    {
        foreach (int position in positions)
        {
            if ((uint)position >= (uint)rows)
                throw new ArgumentOutOfRangeException(nameof(positions), $"Position {position} is beyond the {rows} positions the embedding table {table} holds.");
        }
    }

    // ---- What generated plans build with -------------------------------------------------------------------------

    /// <summary>Counts a packed matrix into <see cref="WeightBytes"/> and <see cref="MatMulParameters"/>.</summary>
    protected void Track(GpuMatrix matrix)
    {
        ArgumentNullException.ThrowIfNull(matrix);
        WeightBytes += matrix.ByteCount;
        MatMulParameters += (long)matrix.Rows * matrix.K;
    }

    /// <summary>Bytes of matmul weights in device memory: what one decode step must read at least.</summary>
    public long WeightBytes { get; private set; }

    /// <summary>Weights of every matmul (padding included): a token costs twice as many FLOPs.</summary>
    public long MatMulParameters { get; private set; }

    /// <summary>A float tensor (a norm's weight, a bias, an embedding table) in device memory, uploaded once.</summary>
    protected ArrayView<float> Device(Tensor tensor)
    {
        if (!_vectors.TryGetValue(tensor, out var buffer))
        {
            buffer = Accelerator.Allocate1D(tensor.Data);
            _vectors.Add(tensor, buffer);
        }
        return buffer.View.AsContiguous();
    }

    /// <summary>Allocates the arena (<paramref name="floats"/> floats) and the logits rows.</summary>
    protected void AllocateArena(long floats, int vocab)
    {
        _arena = Accelerator.Allocate1D<float>(Math.Max(floats, 1));
        _logits = Accelerator.Allocate1D<float>((long)MaxTokensPerStep * vocab);
    }

    /// <summary>A view of the arena: rows of a buffer at its slot's offset.</summary>
    protected ArrayView<float> Arena(long offset, long length) => _arena!.View.AsContiguous().SubView(offset, Math.Max(length, 1));

    /// <summary>The logits rows the last matmul writes.</summary>
    protected ArrayView<float> Logits(long length) => _logits.View.AsContiguous().SubView(0, Math.Max(length, 1));

    /// <summary>Room for Q8 activations of rows up to <paramref name="maxK"/> (a quantized matmul's prepared input).</summary>
    protected void AllocateQ8(int maxK)
    {
        _q8Quants = Accelerator.Allocate1D<int>((long)MaxTokensPerStep * Math.Max(maxK / 4, 1));
        _q8Scales = Accelerator.Allocate1D<float>((long)MaxTokensPerStep * Math.Max(maxK / 32, 1));
    }

    internal Q8Activations Q8Scratch => _q8Quants is null
        ? throw new InvalidOperationException("The plan has no Q8 activation scratch.")
        : new Q8Activations { Quants = _q8Quants.View.AsContiguous(), Scales = _q8Scales!.View.AsContiguous() };

    /// <summary>A rope table: cos and sin per position and pair, computed in double as the eager op does, grown as positions need.</summary>
    protected RopeTable AddRope(int headDim, int rotary, double freqBase)
    {
        var rope = new RopeTable(headDim, rotary, freqBase);
        _ropes.Add(rope);
        return rope;
    }

    /// <summary>Loads (compiles, on CUDA) an explicitly grouped kernel of one parameter, and records it.</summary>
    protected internal Action<KernelConfig, T1> Load<T1>(Action<T1> kernel) where T1 : struct
    {
        _kernels.Add(kernel.Method);
        return Accelerator.LoadStreamKernel(kernel);
    }

    protected internal Action<KernelConfig, T1, T2> Load<T1, T2>(Action<T1, T2> kernel) where T1 : struct where T2 : struct
    {
        _kernels.Add(kernel.Method);
        return Accelerator.LoadStreamKernel(kernel);
    }

    protected internal Action<KernelConfig, T1, T2, T3, T4> Load<T1, T2, T3, T4>(Action<T1, T2, T3, T4> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct
    {
        _kernels.Add(kernel.Method);
        return Accelerator.LoadStreamKernel(kernel);
    }

    protected internal Action<KernelConfig, T1, T2, T3, T4, T5> Load<T1, T2, T3, T4, T5>(Action<T1, T2, T3, T4, T5> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct
    {
        _kernels.Add(kernel.Method);
        return Accelerator.LoadStreamKernel(kernel);
    }

    protected internal Action<KernelConfig, T1, T2, T3, T4, T5, T6, T7> Load<T1, T2, T3, T4, T5, T6, T7>(Action<T1, T2, T3, T4, T5, T6, T7> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct
    {
        _kernels.Add(kernel.Method);
        return Accelerator.LoadStreamKernel(kernel);
    }

    /// <summary>The launch shape for <paramref name="units"/> work units: enough groups to cover them, at most what the device keeps busy.</summary>
    public KernelConfig Config(long units)
    {
        long groups = (units * Lanes + GroupSize - 1) / GroupSize;
        Launches++;
        return new KernelConfig((int)Math.Clamp(groups, 1, _maxGroups), GroupSize);
    }

    /// <summary>Copies a buffer's rows into another (a loop-carried or merged value that could not share its buffer).</summary>
    protected void Copy(ArrayView<float> source, ArrayView<float> destination)
    {
        source.CopyTo(destination);
        Launches++;
    }

    /// <summary>Rows of a and b side by side.</summary>
    protected void Concat(ArrayView<float> a, ArrayView<float> b, ArrayView<float> output, int rows, int aCols, int bCols)
    {
        _concat ??= Load<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(GpuAttentionKernels.Concat);
        _concat(Config(rows), a, b, output, rows, aCols, bCols, Lanes);
    }

    /// <summary>The step's k and v rows into the cache layer, then attention for every (token, head).</summary>
    protected void Attention(GpuStepContext step, GpuKvPool? pool, int layer, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        int heads, int kvHeads, int qCols, int kvCols, Kiln.Kernels.Attention.AttentionOptions options)
    {
        if (pool is null) throw new InvalidOperationException("Attention without a KV cache.");
        if ((uint)layer >= (uint)pool.Layers) throw new InvalidOperationException($"Attention layer {layer} is outside the cache's {pool.Layers} layers.");
        _writeRows ??= Load<GpuStepContext, GpuAttention>(GpuAttentionKernels.WriteRows);
        _attend ??= Load<GpuStepContext, GpuAttention>(GpuAttentionKernels.Attend);
        int headDim = qCols / heads;
        var arguments = new GpuAttention
        {
            Q = q, K = k, V = v, Output = output,
            Keys = pool.LayerKeys(layer), Values = pool.LayerValues(layer), Scores = _scores!.View.AsContiguous(),
            Heads = heads, KvHeads = kvHeads, HeadDim = headDim, QCols = qCols, KvCols = kvCols, KvDim = pool.KvDim,
            ScoresStride = _scoresContext, Window = options.Window, Causal = options.Causal ? 1 : 0, Lanes = Lanes,
            Scale = options.Scale, SoftCap = options.SoftCap,
        };
        _writeRows(Config(step.TokenCount), step, arguments);
        _attend(Config((long)step.TokenCount * heads), step, arguments);
    }

    private void GrowScores(int maxContext)
    {
        _scores?.Dispose();
        _scoresContext = maxContext;
        long workers = (long)_maxGroups * GroupSize / Lanes;
        _scores = Accelerator.Allocate1D<float>(workers * maxContext);
    }

    /// <summary>Copies the step's ids, positions and block tables to device memory in one transfer.</summary>
    private GpuStepContext Upload(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        int t = tokens.Length, o = context.OutputCount, s = context.SequenceCount, blocks = context.BlockIds.Length;
        int length = 4 * t + 2 * s + 1 + blocks;
        if (_hostInts.Length < length)
        {
            _hostInts = new int[Math.Max(length, 2 * _hostInts.Length)];
            _stepInts?.Dispose();
            _stepInts = Accelerator.Allocate1D<int>(_hostInts.Length);
        }
        var ints = _hostInts.AsSpan();
        tokens.CopyTo(ints);
        context.Positions.CopyTo(ints[t..]);
        context.Sequences.CopyTo(ints[(2 * t)..]);
        context.OutputRows.CopyTo(ints[(3 * t)..]);
        context.BlockIndptr.CopyTo(ints[(4 * t)..]);
        for (int i = 0; i < s; i++) ints[4 * t + s + 1 + i] = context.LastPosition(i);
        context.BlockIds.CopyTo(ints[(4 * t + 2 * s + 1)..]);
        var view = _stepInts!.View.AsContiguous();
        view.SubView(0, length).CopyFromCPU(ints[..length]);
        Launches++;
        return new GpuStepContext
        {
            Tokens = view.SubView(0, Math.Max(t, 1)),
            Positions = view.SubView(t, Math.Max(t, 1)),
            Sequences = view.SubView(2 * t, Math.Max(t, 1)),
            OutputRows = view.SubView(3 * t, Math.Max(o, 1)),
            BlockStarts = view.SubView(4 * t, s + 1),
            LastPositions = view.SubView(4 * t + s + 1, Math.Max(s, 1)),
            BlockIds = view.SubView(4 * t + 2 * s + 1, Math.Max(blocks, 1)),
            TokenCount = t,
            OutputCount = o,
            BlockSize = context.Cache.BlockSize,
        };
    }

    /// <summary>Frees the plan's device memory (weights, arena, caches it made). Steps after this throw.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        DisposeWeights();
        foreach (var buffer in _vectors.Values) buffer.Dispose();
        foreach (var pool in _pools) pool.Dispose();
        foreach (var rope in _ropes) rope.Dispose();
        _stepInts?.Dispose();
        _logits?.Dispose();
        _arena?.Dispose();
        _q8Quants?.Dispose();
        _q8Scales?.Dispose();
        _scores?.Dispose();
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees the generated plan's packed matrices.</summary>
    protected abstract void DisposeWeights();

    /// <summary>cos/sin per position and pair for one rotary embedding, as floats of the double-precision angles.</summary>
    protected sealed class RopeTable : IDisposable
    {
        private readonly double[] _inverseFrequency;
        private MemoryBuffer1D<float, Stride1D.Dense>? _cos, _sin;

        internal RopeTable(int headDim, int rotary, double freqBase)
        {
            if (headDim <= 0 || rotary <= 0 || rotary % 2 != 0 || rotary > headDim)
                throw new InvalidOperationException($"Rope: {rotary} rotary dimensions must be even, positive and at most the head dimension {headDim}.");
            HeadDim = headDim;
            Rotary = rotary;
            Half = rotary / 2;
            _inverseFrequency = new double[Half];
            for (int pair = 0; pair < Half; pair++) _inverseFrequency[pair] = Math.Pow(freqBase, -2.0 * pair / rotary);
        }

        public int HeadDim { get; }

        public int Rotary { get; }

        public int Half { get; }

        public int Positions { get; private set; }

        public ArrayView<float> Cos => _cos!.View.AsContiguous();

        public ArrayView<float> Sin => _sin!.View.AsContiguous();

        internal void Ensure(Accelerator accelerator, int positions)
        {
            if (positions <= Positions) return;
            int count = Math.Max(positions, Math.Max(2 * Positions, 256));
            var cos = new float[(long)count * Half];
            var sin = new float[(long)count * Half];
            for (int p = 0; p < count; p++)
            {
                for (int pair = 0; pair < Half; pair++)
                {
                    double angle = p * _inverseFrequency[pair];
                    cos[p * Half + pair] = (float)Math.Cos(angle);
                    sin[p * Half + pair] = (float)Math.Sin(angle);
                }
            }
            _cos?.Dispose();
            _sin?.Dispose();
            _cos = accelerator.Allocate1D(cos);
            _sin = accelerator.Allocate1D(sin);
            Positions = count;
        }

        public void Dispose()
        {
            _cos?.Dispose();
            _sin?.Dispose();
        }
    }
}
