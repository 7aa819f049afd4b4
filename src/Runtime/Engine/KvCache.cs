using System.Numerics.Tensors;
using Kiln.Kernels.Quantized;

namespace Kiln;

/// <summary>How a <see cref="KvCache"/> stores its keys and values.</summary>
public enum KvStorage
{
    /// <summary>Full precision: rows are read and written in place as float spans.</summary>
    F32,

    /// <summary>IEEE half precision: half the memory, about three decimal digits.</summary>
    F16,

    /// <summary>Signed bytes with one float scale per token and head (max |x| / 127): about a quarter of the memory.</summary>
    Int8,
}

/// <summary>
/// The key/value cache of the attention layers, as a row store: per layer, <see cref="RowCount"/> rows of
/// <see cref="KvDim"/> keys and as many values, one row per token position of some sequence. Rows come in blocks of
/// <see cref="BlockSize"/>; which block holds which positions of which sequence is the
/// <see cref="AttentionContext"/>'s business (its block tables), so one storage serves both layouts:
/// <list type="bullet">
/// <item><b>contiguous</b> (<c>new KvCache(layers, slots, maxContext, kvDim)</c>): one block of
/// <see cref="MaxContext"/> rows per slot, block id = slot; position p of slot s is row s·MaxContext + p, and
/// <see cref="Keys"/>/<see cref="Values"/> hand out a slot's rows as one span;</item>
/// <item><b>paged</b> (<see cref="Paged"/>): many small blocks shared out by a block pool; a sequence's positions
/// are scattered over its blocks, so rows are found through the context (<see cref="AttentionContext.KvRow(int, int)"/>).</item>
/// </list>
/// </summary>
public sealed class KvCache
{
    // F32: per layer [RowCount × KvDim]. F16 and Int8 keep their own arrays; the others stay null.
    private readonly float[][]? _keys;
    private readonly float[][]? _values;
    private readonly Half[][]? _halfKeys;
    private readonly Half[][]? _halfValues;
    private readonly sbyte[][]? _byteKeys;
    private readonly sbyte[][]? _byteValues;
    private readonly float[][]? _keyScales;   // Int8: per layer [RowCount × ScaleGroups]
    private readonly float[][]? _valueScales;

    /// <summary>A contiguous cache: <paramref name="slots"/> sequences of up to <paramref name="maxContext"/> positions each.</summary>
    /// <exception cref="InsufficientMemoryException">It would take more memory than the machine has (nothing is allocated).</exception>
    public KvCache(int layers, int slots, int maxContext, int kvDim)
        : this(layers, blockCount: slots, blockSize: maxContext, kvDim, KvStorage.F32, scaleGroupSize: kvDim, isPaged: false)
    {
    }

    private KvCache(int layers, int blockCount, int blockSize, int kvDim, KvStorage storage, int scaleGroupSize, bool isPaged, int maxContext = 0,
        IKvBlockStore? blockStore = null)
    {
        if (layers <= 0 || blockCount <= 0 || blockSize <= 0 || kvDim <= 0)
            throw new ArgumentOutOfRangeException(nameof(layers), $"KV cache dimensions must be positive: layers {layers}, {(isPaged ? "blocks" : "slots")} {blockCount}, {(isPaged ? "block size" : "context")} {blockSize}, kvDim {kvDim}.");
        if (!Enum.IsDefined(storage)) throw new ArgumentOutOfRangeException(nameof(storage), storage, "Unknown KV storage.");
        if (scaleGroupSize <= 0 || kvDim % scaleGroupSize != 0)
            throw new ArgumentOutOfRangeException(nameof(scaleGroupSize), $"The int8 scale group ({scaleGroupSize}, the head dimension) must divide the row of {kvDim}.");
        long rows = (long)blockCount * blockSize;
        if (blockStore is null) EnsureMemory((double)BytesPerBlock(layers, 1, kvDim, storage, scaleGroupSize) * rows,
            $"A KV cache of {layers} layers × {rows} positions × {kvDim} ({storage})", isPaged ? "fewer blocks" : "a shorter context or fewer slots");
        if (blockStore is null && rows * kvDim > Array.MaxLength)
            throw new ArgumentOutOfRangeException(isPaged ? nameof(blockCount) : nameof(blockSize), $"A KV cache layer of {blockCount}×{blockSize} rows of {kvDim} exceeds one array; use fewer {(isPaged ? "blocks" : "slots or a shorter context")}.");

        Layers = layers;
        BlockCount = blockCount;
        BlockSize = blockSize;
        KvDim = kvDim;
        Storage = storage;
        IsPaged = isPaged;
        ScaleGroupSize = scaleGroupSize;
        RowCount = checked((int)rows);
        BlockStore = blockStore;
        if (maxContext < 0 || maxContext > RowCount)
            throw new ArgumentOutOfRangeException(nameof(maxContext), $"A sequence's max context ({maxContext}) must be positive and at most the cache's {RowCount} rows.");
        MaxContext = !isPaged ? blockSize : maxContext > 0 ? maxContext : RowCount;
        if (blockStore is not null) return; // the rows live where the store keeps them
        int length = RowCount * kvDim;
        switch (storage)
        {
            case KvStorage.F32:
                _keys = Allocate<float>(layers, length);
                _values = Allocate<float>(layers, length);
                break;
            case KvStorage.F16:
                _halfKeys = Allocate<Half>(layers, length);
                _halfValues = Allocate<Half>(layers, length);
                break;
            case KvStorage.Int8:
                _byteKeys = Allocate<sbyte>(layers, length);
                _byteValues = Allocate<sbyte>(layers, length);
                _keyScales = Allocate<float>(layers, RowCount * ScaleGroups);
                _valueScales = Allocate<float>(layers, RowCount * ScaleGroups);
                break;
        }
    }

    /// <summary>
    /// A paged cache of <paramref name="blockCount"/> blocks of <paramref name="blockSize"/> rows, for a block pool
    /// with the same geometry. <paramref name="headDim"/> is the int8 scale group (one scale per token and head);
    /// other storages ignore it. <paramref name="maxContext"/> is the longest sequence it serves (0: every row), which
    /// sizes the kernels' per-query score rows.
    /// </summary>
    /// <exception cref="InsufficientMemoryException">It would take more memory than the machine has (nothing is allocated).</exception>
    public static KvCache Paged(int layers, int blockCount, int blockSize, int kvDim, KvStorage storage = KvStorage.F32, int headDim = 0, int maxContext = 0) =>
        new(layers, blockCount, blockSize, kvDim, storage, headDim > 0 ? headDim : kvDim, isPaged: true, maxContext);

    /// <summary>
    /// A cache whose rows live in <paramref name="blockStore"/>'s memory (a GPU plan's device pool), not in this
    /// process: it keeps the geometry the engine and the attention context work with, holds no rows itself (row
    /// accessors throw), and hands block copies (copy-on-write) to the store. <paramref name="paged"/> false makes it
    /// contiguous (each of the <paramref name="blockCount"/> blocks one sequence's <paramref name="blockSize"/> rows).
    /// </summary>
    public static KvCache External(int layers, int blockCount, int blockSize, int kvDim, KvStorage storage, int headDim, int maxContext, bool paged, IKvBlockStore blockStore)
    {
        ArgumentNullException.ThrowIfNull(blockStore);
        return new(layers, blockCount, blockSize, kvDim, storage, headDim > 0 ? headDim : kvDim, paged, paged ? maxContext : 0, blockStore);
    }

    /// <summary>Bytes one block takes over all layers, keys and values (and int8 scales): how a memory budget becomes a block count.</summary>
    public static long BytesPerBlock(int layers, int blockSize, int kvDim, KvStorage storage = KvStorage.F32, int headDim = 0)
    {
        long elements = 2L * layers * blockSize * kvDim;
        return storage switch
        {
            KvStorage.F32 => elements * sizeof(float),
            KvStorage.F16 => elements * 2,
            KvStorage.Int8 => elements + 2L * layers * blockSize * (kvDim / (headDim > 0 ? headDim : kvDim)) * sizeof(float),
            _ => throw new ArgumentOutOfRangeException(nameof(storage), storage, "Unknown KV storage."),
        };
    }

    /// <summary>
    /// Throws <see cref="InsufficientMemoryException"/>, before anything is allocated, when <paramref name="bytes"/> of
    /// KV memory exceed all the memory this process may use (the machine's, or its container's limit): a clear error
    /// instead of an out-of-memory crash halfway through, for a context length or memory budget that cannot fit.
    /// </summary>
    internal static void EnsureMemory(double bytes, string what, string remedy)
    {
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > available)
            throw new InsufficientMemoryException(
                $"{what} needs {bytes / (1 << 30):0.##} GiB, more than the {available / (double)(1 << 30):0.##} GiB of memory this machine has; use {remedy}.");
    }

    public int Layers { get; }

    /// <summary>Where the rows live when not in this process (<see cref="External"/>); null for a cache that holds its own rows.</summary>
    public IKvBlockStore? BlockStore { get; }

    public int KvDim { get; }

    public KvStorage Storage { get; }

    /// <summary>True for a cache made by <see cref="Paged"/>: sequences span many blocks, so there are no per-slot spans.</summary>
    public bool IsPaged { get; }

    public int BlockCount { get; }

    /// <summary>Rows per block; a contiguous cache's block is a whole slot (<see cref="MaxContext"/> rows).</summary>
    public int BlockSize { get; }

    /// <summary>Rows per layer: <see cref="BlockCount"/> × <see cref="BlockSize"/>.</summary>
    public int RowCount { get; }

    /// <summary>Elements sharing one int8 scale (the head dimension).</summary>
    public int ScaleGroupSize { get; }

    private int ScaleGroups => KvDim / ScaleGroupSize;

    /// <summary>Contiguous: the sequence slots (one block each). Paged: the block count, each block addressable as a one-block sequence.</summary>
    public int Slots => BlockCount;

    /// <summary>
    /// The most positions one sequence can hold, and so the longest row of attention scores: a slot's length when
    /// contiguous; when paged, the max context it was made for (every row of the cache by default).
    /// </summary>
    public int MaxContext { get; }

    /// <summary>Keys of one row, in place (F32 storage only; others go through <see cref="ReadKey(int, int, Span{float})"/>/<see cref="WriteKey"/>).</summary>
    public Span<float> KeyRow(int layer, int row) => Floats(_keys, layer, row);

    /// <summary>Values of one row, in place (F32 storage only; others go through <see cref="ReadValue(int, int, Span{float})"/>/<see cref="WriteValue"/>).</summary>
    public Span<float> ValueRow(int layer, int row) => Floats(_values, layer, row);

    /// <summary>
    /// Keys of every row of one layer, [RowCount, KvDim] in place (F32 only): what a kernel walks with a sequence's
    /// block table (position p at row <c>blocks[p / BlockSize] · BlockSize + p % BlockSize</c>).
    /// </summary>
    public Span<float> LayerKeys(int layer) => LayerOf(_keys, layer);

    /// <summary>Values of every row of one layer, [RowCount, KvDim] in place (F32 only).</summary>
    public Span<float> LayerValues(int layer) => LayerOf(_values, layer);

    /// <summary>
    /// Keys of every row of one block, [BlockSize, KvDim] in place (F32 only): a block's rows are consecutive, so a
    /// kernel reads a sequence block by block through its block table.
    /// </summary>
    public Span<float> KeyBlock(int layer, int block) => BlockRows(_keys, layer, block);

    /// <summary>Values of every row of one block, [BlockSize, KvDim] in place (F32 only).</summary>
    public Span<float> ValueBlock(int layer, int block) => BlockRows(_values, layer, block);

    /// <summary>
    /// F16 storage: true while every half written is finite (no value reached ±65520 or was NaN), so the attention
    /// kernels may widen rows with the exponent rebias left out (it cannot turn a half's ±∞ or NaN into a float one).
    /// A single non-finite write turns it off for good: those kernels then widen every half exactly.
    /// </summary>
    public bool HoldsOnlyFiniteHalves { get; private set; } = true;

    /// <summary>F16 storage: keys of every row of one block, [BlockSize, KvDim] halves in place.</summary>
    internal ReadOnlySpan<Half> HalfKeyBlock(int layer, int block) => BlockRows(_halfKeys, layer, block);

    /// <summary>F16 storage: values of every row of one block, [BlockSize, KvDim] halves in place.</summary>
    internal ReadOnlySpan<Half> HalfValueBlock(int layer, int block) => BlockRows(_halfValues, layer, block);

    /// <summary>Stores a token's keys in <paramref name="row"/>, converting to the cache's storage.</summary>
    public void WriteKey(int layer, int row, ReadOnlySpan<float> keys) => Write(_keys, _halfKeys, _byteKeys, _keyScales, layer, row, keys);

    public void WriteValue(int layer, int row, ReadOnlySpan<float> values) => Write(_values, _halfValues, _byteValues, _valueScales, layer, row, values);

    /// <summary>Reads a row's keys back as floats (exact for F32; dequantized otherwise).</summary>
    public void ReadKey(int layer, int row, Span<float> destination)
    {
        CheckWholeRow(destination.Length);
        ReadKey(layer, row, 0, destination);
    }

    public void ReadValue(int layer, int row, Span<float> destination)
    {
        CheckWholeRow(destination.Length);
        ReadValue(layer, row, 0, destination);
    }

    /// <summary>
    /// Reads keys <paramref name="firstColumn"/>.. of a row (as many as <paramref name="destination"/> holds) as floats:
    /// the KV heads one attention work item needs, without dequantizing the rest of the row.
    /// </summary>
    public void ReadKey(int layer, int row, int firstColumn, Span<float> destination) =>
        Read(_keys, _halfKeys, _byteKeys, _keyScales, layer, row, firstColumn, destination);

    public void ReadValue(int layer, int row, int firstColumn, Span<float> destination) =>
        Read(_values, _halfValues, _byteValues, _valueScales, layer, row, firstColumn, destination);

    /// <summary>Copies every layer's keys and values of one block into another: the copy half of copy-on-write.</summary>
    public void CopyBlock(int sourceBlock, int destinationBlock)
    {
        if ((uint)sourceBlock >= (uint)BlockCount || (uint)destinationBlock >= (uint)BlockCount)
            throw new ArgumentOutOfRangeException(nameof(sourceBlock), $"The KV cache has {BlockCount} blocks; asked to copy block {sourceBlock} into {destinationBlock}.");
        if (BlockStore is not null)
        {
            BlockStore.CopyBlock(sourceBlock, destinationBlock);
            return;
        }
        int length = BlockSize * KvDim;
        for (int layer = 0; layer < Layers; layer++)
        {
            CopyRange(_keys, layer, sourceBlock * length, destinationBlock * length, length);
            CopyRange(_values, layer, sourceBlock * length, destinationBlock * length, length);
            CopyRange(_halfKeys, layer, sourceBlock * length, destinationBlock * length, length);
            CopyRange(_halfValues, layer, sourceBlock * length, destinationBlock * length, length);
            CopyRange(_byteKeys, layer, sourceBlock * length, destinationBlock * length, length);
            CopyRange(_byteValues, layer, sourceBlock * length, destinationBlock * length, length);
            int scales = BlockSize * ScaleGroups;
            CopyRange(_keyScales, layer, sourceBlock * scales, destinationBlock * scales, scales);
            CopyRange(_valueScales, layer, sourceBlock * scales, destinationBlock * scales, scales);
        }
    }

    /// <summary>Contiguous F32 cache: the keys of one slot at one position.</summary>
    public Span<float> Key(int layer, int slot, int position) => KeyRow(layer, SlotRow(layer, slot, position));

    /// <summary>Contiguous F32 cache: the values of one slot at one position.</summary>
    public Span<float> Value(int layer, int slot, int position) => ValueRow(layer, SlotRow(layer, slot, position));

    /// <summary>Contiguous F32 cache: all positions of one slot in one layer, [MaxContext, KvDim].</summary>
    public Span<float> Keys(int layer, int slot) => SlotRows(_keys, layer, slot);

    /// <summary>Contiguous F32 cache: all positions of one slot in one layer, [MaxContext, KvDim].</summary>
    public Span<float> Values(int layer, int slot) => SlotRows(_values, layer, slot);

    public override string ToString() =>
        $"KvCache({(BlockStore is not null ? $"in {BlockStore}, " : "")}{(IsPaged ? $"paged, {BlockCount} blocks of {BlockSize}" : $"contiguous, {Slots} slots of {MaxContext}")}, {Layers} layers, rows of {KvDim}, {Storage})";

    private int SlotRow(int layer, int slot, int position)
    {
        if ((uint)slot >= (uint)Slots || (uint)position >= (uint)BlockSize)
            throw new ArgumentOutOfRangeException(nameof(position), $"KV cache has {Layers} layers, {Slots} slots and {BlockSize} positions; asked for layer {layer}, slot {slot}, position {position}.");
        return slot * BlockSize + position;
    }

    private Span<float> SlotRows(float[][]? storage, int layer, int slot)
    {
        if (IsPaged)
            throw new InvalidOperationException("A paged KV cache has no contiguous per-slot span: a sequence's positions are scattered over its blocks. Find rows through the attention context (AttentionContext.KvRow) and read them with KeyRow/ValueRow.");
        SlotRow(layer, slot, 0);
        return LayerOf(storage, layer).AsSpan(slot * BlockSize * KvDim, BlockSize * KvDim);
    }

    private Span<T> BlockRows<T>(T[][]? storage, int layer, int block)
    {
        if ((uint)block >= (uint)BlockCount)
            throw new ArgumentOutOfRangeException(nameof(block), $"KV cache has {BlockCount} blocks; asked for block {block}.");
        return LayerOf(storage, layer).AsSpan(block * BlockSize * KvDim, BlockSize * KvDim);
    }

    private Span<float> Floats(float[][]? storage, int layer, int row)
    {
        if ((uint)row >= (uint)RowCount)
            throw new ArgumentOutOfRangeException(nameof(row), $"KV cache has {Layers} layers and {RowCount} rows; asked for layer {layer}, row {row}.");
        return LayerOf(storage, layer).AsSpan(row * KvDim, KvDim);
    }

    private T[] LayerOf<T>(T[][]? storage, int layer)
    {
        if (BlockStore is not null)
            throw new InvalidOperationException($"This KV cache's rows live in {BlockStore}, not in this process: only the plan that made it reads and writes them.");
        if (storage is null)
            throw new InvalidOperationException($"This KV cache stores {Storage}: rows are not floats in place; use ReadKey/ReadValue and WriteKey/WriteValue.");
        if ((uint)layer >= (uint)Layers)
            throw new ArgumentOutOfRangeException(nameof(layer), $"KV cache has {Layers} layers; asked for layer {layer}.");
        return storage[layer];
    }

    private void Write(float[][]? floats, Half[][]? halves, sbyte[][]? bytes, float[][]? scales, int layer, int row, ReadOnlySpan<float> source)
    {
        CheckRow(layer, row);
        CheckWholeRow(source.Length);
        int offset = row * KvDim;
        if (floats is not null)
        {
            source.CopyTo(floats[layer].AsSpan(offset, KvDim));
        }
        else if (halves is not null)
        {
            TensorPrimitives.ConvertToHalf(source, halves[layer].AsSpan(offset, KvDim));
            // 65520 is the smallest magnitude that rounds to a half's infinity; NaN fails the comparison too.
            if (HoldsOnlyFiniteHalves && !(MathF.Abs(TensorPrimitives.MaxMagnitude(source)) < 65520f)) HoldsOnlyFiniteHalves = false;
        }
        else
        {
            var destination = bytes![layer].AsSpan(offset, KvDim);
            var rowScales = scales![layer].AsSpan(row * ScaleGroups, ScaleGroups);
            for (int group = 0; group < rowScales.Length; group++)
            {
                int start = group * ScaleGroupSize;
                float max = 0;
                for (int i = start; i < start + ScaleGroupSize; i++) max = MathF.Max(max, MathF.Abs(source[i]));
                float scale = max / 127f;
                float inverse = scale == 0 ? 0 : 1 / scale;
                rowScales[group] = scale;
                for (int i = start; i < start + ScaleGroupSize; i++)
                    destination[i] = (sbyte)Math.Clamp(MathF.Round(source[i] * inverse), -127, 127);
            }
        }
    }

    private void Read(float[][]? floats, Half[][]? halves, sbyte[][]? bytes, float[][]? scales, int layer, int row, int firstColumn, Span<float> destination)
    {
        CheckRow(layer, row);
        if ((uint)firstColumn > (uint)KvDim || destination.Length > KvDim - firstColumn)
            throw new ArgumentOutOfRangeException(nameof(firstColumn), $"A KV row holds {KvDim} elements; asked for {destination.Length} from column {firstColumn}.");
        int offset = row * KvDim + firstColumn;
        if (floats is not null)
        {
            floats[layer].AsSpan(offset, destination.Length).CopyTo(destination);
        }
        else if (halves is not null)
        {
            Fp16.ToSingle(halves[layer].AsSpan(offset, destination.Length), destination);
        }
        else
        {
            var source = bytes![layer].AsSpan(offset, destination.Length);
            var rowScales = scales![layer].AsSpan(row * ScaleGroups, ScaleGroups);
            for (int i = 0; i < source.Length; i++) destination[i] = source[i] * rowScales[(firstColumn + i) / ScaleGroupSize];
        }
    }

    private void CheckRow(int layer, int row)
    {
        if (BlockStore is not null)
            throw new InvalidOperationException($"This KV cache's rows live in {BlockStore}, not in this process: only the plan that made it reads and writes them.");
        if ((uint)layer >= (uint)Layers || (uint)row >= (uint)RowCount)
            throw new ArgumentOutOfRangeException(nameof(row), $"KV cache has {Layers} layers and {RowCount} rows; asked for layer {layer}, row {row}.");
    }

    private void CheckWholeRow(int length)
    {
        if (length != KvDim)
            throw new ArgumentException($"A KV row holds {KvDim} elements; got a span of {length}.");
    }

    private static void CopyRange<T>(T[][]? storage, int layer, int source, int destination, int length)
    {
        if (storage is not null) storage[layer].AsSpan(source, length).CopyTo(storage[layer].AsSpan(destination, length));
    }

    private static T[][] Allocate<T>(int layers, int length)
    {
        var result = new T[layers][];
        for (int layer = 0; layer < layers; layer++) result[layer] = new T[length];
        return result;
    }
}

/// <summary>
/// Keeps a <see cref="KvCache"/>'s rows outside the process (a GPU plan's device memory): the cache forwards the one
/// row operation its owner (the engine) does itself, copying a block for copy-on-write.
/// </summary>
public interface IKvBlockStore
{
    /// <summary>Copies every layer's keys and values of one block into another.</summary>
    void CopyBlock(int sourceBlock, int destinationBlock);
}
