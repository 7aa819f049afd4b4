using Kiln.Loading;
using Kiln.Models;

namespace Kiln.Bench;

/// <summary>
/// Kiln on one model file: its architecture's generated binder (<see cref="ModelCatalog"/>), one compiled plan on a worker pool of exactly the bench's
/// thread count, and a logits buffer. KV caches are paged with a fixed block table per slot, in the storage chosen
/// here: F16 (llama.cpp's default and compare's) or F32; the generated attention reads both in place.
/// </summary>
public sealed class KilnSession : IDisposable
{
    private readonly float[] _logits;

    public KilnSession(ModelFile file, int maxTokensPerStep, int threads, KvStorage kvStorage = KvStorage.F32)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(threads);
        Model = ModelCatalog.Load(file);
        Plan = Model.Compile(new PlanOptions(maxTokensPerStep, threads));
        Threads = threads;
        KvStorage = kvStorage;
        _logits = new float[(long)Plan.VocabSize * maxTokensPerStep];
    }

    public IKilnModel Model { get; }

    public ICompiledPlan Plan { get; }

    public int Threads { get; }

    public KvStorage KvStorage { get; }

    public int VocabSize => Plan.VocabSize;

    /// <summary>
    /// A context over a paged cache of <paramref name="slots"/> sequences of up to <paramref name="maxContext"/>
    /// positions: slot s owns block s, one block per sequence (fewest kernel calls; measured fastest for decode on the
    /// 110m model: 16-row blocks cost 15%), so a step names a sequence by slot (<see cref="KilnContext.SetSequence"/>,
    /// <see cref="KilnContext.Add"/>).
    /// </summary>
    public KilnContext CreateContext(int slots, int maxContext)
    {
        // A model without attention layers (LSTM, Mamba) keeps only its recurrent state, one state slot per sequence; a
        // hybrid (Jamba) both: slot s owns KV block s and state slot s.
        int blockSize = (maxContext + 15) / 16 * 16;
        var cache = Model.KvShape.Layers == 0 ? null : Model.KvShape.CreatePaged(slots, blockSize, KvStorage, maxContext: blockSize);
        return new KilnContext(AttentionContext.ForSlots(Model, slots, blockSize, Plan.MaxTokensPerStep, cache));
    }

    /// <summary>Runs one step; returns the logits of the context's output rows, [OutputCount × Vocab].</summary>
    public ReadOnlySpan<float> Step(ReadOnlySpan<int> tokens, KilnContext context)
    {
        var logits = _logits.AsSpan(0, context.Attention.OutputCount * VocabSize);
        Plan.Step(tokens, context.Attention, logits);
        return logits;
    }

    public ReadOnlySpan<float> Row(ReadOnlySpan<float> logits, int row) => logits.Slice(row * VocabSize, VocabSize);

    public void Dispose() => (Plan as IDisposable)?.Dispose();
}

/// <summary>An <see cref="AttentionContext"/> over a paged cache where slot s owns block s, a whole sequence.</summary>
public sealed class KilnContext
{
    private readonly int[] _blockIds;

    public KilnContext(AttentionContext attention)
    {
        Attention = attention;
        _blockIds = new int[attention.HasCache ? attention.Cache.BlockCount : 0];
        for (int i = 0; i < _blockIds.Length; i++) _blockIds[i] = i;
    }

    public AttentionContext Attention { get; }

    public KvCache Cache => Attention.Cache;

    public void Clear() => Attention.Clear();

    /// <summary>Fills the step with one sequence's consecutive tokens from <paramref name="startPosition"/>; only the last token's logits are wanted.</summary>
    public void SetSequence(int slot, int startPosition, int count)
    {
        Attention.Clear();
        Add(slot, startPosition, count, wantLogits: true);
    }

    /// <summary>Adds <paramref name="count"/> consecutive tokens of slot <paramref name="slot"/>'s sequence to the step.</summary>
    public void Add(int slot, int startPosition, int count, bool wantLogits)
    {
        if (Attention.HasCache) Attention.AddChunk(BlockTable(slot), startPosition, count, wantLogits);
        else Attention.AddRecurrentChunk(slot, startPosition, count, wantLogits);
    }

    private ReadOnlySpan<int> BlockTable(int slot) => _blockIds.AsSpan(slot, 1);
}
