namespace Kiln.Kernels.MatMul;

/// <summary>
/// The rows of one KV-cache block as the attention kernels read them: from a first column on (one work item's KV
/// heads), row r's columns starting at r·KvDim. F32 rows are read in place, and so are F16 ones through
/// <see cref="HalfKeys"/>/<see cref="HalfValues"/> (the attention kernels widen them in registers); otherwise rows are
/// dequantized into the caller's scratch, only the columns asked for. A contiguous cache is one block per sequence; a paged one many small
/// blocks found through the step's block tables.
/// </summary>
public static class KvBlocks
{
    /// <summary>Keys <paramref name="firstColumn"/>..+<paramref name="columns"/> of rows <paramref name="firstRow"/>..+<paramref name="rows"/> of <paramref name="block"/> in <paramref name="layer"/>.</summary>
    public static ReadOnlySpan<float> Keys(KvCache cache, int layer, int block, int firstRow, int rows, int firstColumn, int columns, Span<float> scratch) =>
        Read(cache, layer, block, firstRow, rows, firstColumn, columns, scratch, keys: true);

    /// <summary>Values <paramref name="firstColumn"/>..+<paramref name="columns"/> of rows <paramref name="firstRow"/>..+<paramref name="rows"/> of <paramref name="block"/> in <paramref name="layer"/>.</summary>
    public static ReadOnlySpan<float> Values(KvCache cache, int layer, int block, int firstRow, int rows, int firstColumn, int columns, Span<float> scratch) =>
        Read(cache, layer, block, firstRow, rows, firstColumn, columns, scratch, keys: false);

    /// <summary>F16 storage: keys <paramref name="firstColumn"/>..+<paramref name="columns"/> of rows <paramref name="firstRow"/>..+<paramref name="rows"/> of <paramref name="block"/>, as stored (halves in place).</summary>
    public static ReadOnlySpan<Half> HalfKeys(KvCache cache, int layer, int block, int firstRow, int rows, int firstColumn, int columns)
    {
        int length = CheckHalf(cache, block, firstRow, rows, firstColumn, columns);
        return cache.HalfKeyBlock(layer, block).Slice(firstRow * cache.KvDim + firstColumn, length);
    }

    /// <summary>F16 storage: values <paramref name="firstColumn"/>..+<paramref name="columns"/> of rows <paramref name="firstRow"/>..+<paramref name="rows"/> of <paramref name="block"/>, as stored (halves in place).</summary>
    public static ReadOnlySpan<Half> HalfValues(KvCache cache, int layer, int block, int firstRow, int rows, int firstColumn, int columns)
    {
        int length = CheckHalf(cache, block, firstRow, rows, firstColumn, columns);
        return cache.HalfValueBlock(layer, block).Slice(firstRow * cache.KvDim + firstColumn, length);
    }

    /// <summary>
    /// Floats of scratch one chunk of attention work needs for <paramref name="cache"/>: a block's rows for int8, which
    /// is dequantized through <see cref="Keys"/>/<see cref="Values"/>; 0 for F32 and F16, which the kernels read in place.
    /// </summary>
    public static int ScratchFloats(KvCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        return cache.Storage == KvStorage.Int8 ? checked(cache.BlockSize * cache.KvDim) : 0;
    }

    private static int CheckHalf(KvCache cache, int block, int firstRow, int rows, int firstColumn, int columns)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (cache.Storage != KvStorage.F16) throw new InvalidOperationException($"This KV cache stores {cache.Storage}, not F16.");
        return Check(cache, block, firstRow, rows, firstColumn, columns);
    }

    /// <summary>Validates a block read; returns the span length it covers: (rows − 1) whole rows and the columns of the last.</summary>
    private static int Check(KvCache cache, int block, int firstRow, int rows, int firstColumn, int columns)
    {
        int kvDim = cache.KvDim;
        if ((uint)block >= (uint)cache.BlockCount || firstRow < 0 || rows < 1 || rows > cache.BlockSize - firstRow)
            throw new ArgumentOutOfRangeException(nameof(block), $"KV cache has {cache.BlockCount} blocks of {cache.BlockSize} rows; asked for rows {firstRow}..+{rows} of block {block}.");
        if (firstColumn < 0 || columns < 1 || columns > kvDim - firstColumn)
            throw new ArgumentOutOfRangeException(nameof(columns), $"A KV row holds {kvDim} elements; asked for {columns} from column {firstColumn}.");
        return (rows - 1) * kvDim + columns;
    }

    private static ReadOnlySpan<float> Read(KvCache cache, int layer, int block, int firstRow, int rows, int firstColumn, int columns, Span<float> scratch, bool keys)
    {
        ArgumentNullException.ThrowIfNull(cache);
        int kvDim = cache.KvDim, length = Check(cache, block, firstRow, rows, firstColumn, columns);
        if (cache.Storage == KvStorage.F32)
            return (keys ? cache.KeyBlock(layer, block) : cache.ValueBlock(layer, block)).Slice(firstRow * kvDim + firstColumn, length);

        int first = block * cache.BlockSize + firstRow;
        for (int r = 0; r < rows; r++)
        {
            var destination = scratch.Slice(r * kvDim, columns);
            if (keys) cache.ReadKey(layer, first + r, firstColumn, destination);
            else cache.ReadValue(layer, first + r, firstColumn, destination);
        }
        return scratch[..length];
    }
}
