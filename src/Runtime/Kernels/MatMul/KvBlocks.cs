namespace Kiln.Kernels.MatMul;

/// <summary>
/// The rows of one KV-cache block as the attention kernels read them: from a first column on (one work item's KV
/// heads), row r's columns starting at r·KvDim. F32 rows are read in place; F16 and int8 ones are dequantized into the
/// caller's scratch, only the columns asked for. A contiguous cache is one block per sequence; a paged one many small
/// blocks found through the step's block tables.
/// </summary>
public static class KvBlocks
{
    /// <summary>Keys <paramref name="firstColumn"/>..+<paramref name="columns"/> of the first <paramref name="rows"/> rows of <paramref name="block"/> in <paramref name="layer"/>.</summary>
    public static ReadOnlySpan<float> Keys(KvCache cache, int layer, int block, int rows, int firstColumn, int columns, Span<float> scratch) =>
        Read(cache, layer, block, rows, firstColumn, columns, scratch, keys: true);

    /// <summary>Values <paramref name="firstColumn"/>..+<paramref name="columns"/> of the first <paramref name="rows"/> rows of <paramref name="block"/> in <paramref name="layer"/>.</summary>
    public static ReadOnlySpan<float> Values(KvCache cache, int layer, int block, int rows, int firstColumn, int columns, Span<float> scratch) =>
        Read(cache, layer, block, rows, firstColumn, columns, scratch, keys: false);

    /// <summary>Floats of scratch one chunk of attention work needs for <paramref name="cache"/> (0 when rows are read in place).</summary>
    public static int ScratchFloats(KvCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        return cache.Storage == KvStorage.F32 ? 0 : checked(cache.BlockSize * cache.KvDim);
    }

    private static ReadOnlySpan<float> Read(KvCache cache, int layer, int block, int rows, int firstColumn, int columns, Span<float> scratch, bool keys)
    {
        ArgumentNullException.ThrowIfNull(cache);
        int kvDim = cache.KvDim;
        if ((uint)block >= (uint)cache.BlockCount || rows < 1 || rows > cache.BlockSize)
            throw new ArgumentOutOfRangeException(nameof(block), $"KV cache has {cache.BlockCount} blocks of {cache.BlockSize} rows; asked for {rows} rows of block {block}.");
        if (firstColumn < 0 || columns < 1 || columns > kvDim - firstColumn)
            throw new ArgumentOutOfRangeException(nameof(columns), $"A KV row holds {kvDim} elements; asked for {columns} from column {firstColumn}.");
        int length = (rows - 1) * kvDim + columns;
        if (cache.Storage == KvStorage.F32)
            return (keys ? cache.KeyBlock(layer, block) : cache.ValueBlock(layer, block)).Slice(firstColumn, length);

        int first = block * cache.BlockSize;
        for (int r = 0; r < rows; r++)
        {
            var destination = scratch.Slice(r * kvDim, columns);
            if (keys) cache.ReadKey(layer, first + r, firstColumn, destination);
            else cache.ReadValue(layer, first + r, firstColumn, destination);
        }
        return scratch[..length];
    }
}
