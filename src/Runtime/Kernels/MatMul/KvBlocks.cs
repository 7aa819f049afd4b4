namespace Kiln.Kernels.MatMul;

/// <summary>
/// The rows of one KV-cache block as the attention kernels read them: [rows, KvDim] floats, in place for F32 storage,
/// read (dequantized) into the caller's scratch for the F16 and int8 storages. A contiguous cache is one block per
/// sequence; a paged one many small blocks found through the step's block tables.
/// </summary>
public static class KvBlocks
{
    /// <summary>Keys of the first <paramref name="rows"/> rows of <paramref name="block"/> in <paramref name="layer"/>.</summary>
    public static ReadOnlySpan<float> Keys(KvCache cache, int layer, int block, int rows, Span<float> scratch)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (cache.Storage == KvStorage.F32) return cache.KeyBlock(layer, block)[..(rows * cache.KvDim)];
        int kvDim = cache.KvDim, first = block * cache.BlockSize;
        for (int r = 0; r < rows; r++) cache.ReadKey(layer, first + r, scratch.Slice(r * kvDim, kvDim));
        return scratch[..(rows * kvDim)];
    }

    /// <summary>Values of the first <paramref name="rows"/> rows of <paramref name="block"/> in <paramref name="layer"/>.</summary>
    public static ReadOnlySpan<float> Values(KvCache cache, int layer, int block, int rows, Span<float> scratch)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (cache.Storage == KvStorage.F32) return cache.ValueBlock(layer, block)[..(rows * cache.KvDim)];
        int kvDim = cache.KvDim, first = block * cache.BlockSize;
        for (int r = 0; r < rows; r++) cache.ReadValue(layer, first + r, scratch.Slice(r * kvDim, kvDim));
        return scratch[..(rows * kvDim)];
    }

    /// <summary>Floats of scratch one chunk of attention work needs for <paramref name="cache"/> (0 when rows are read in place).</summary>
    public static int ScratchFloats(KvCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        return cache.Storage == KvStorage.F32 ? 0 : checked(cache.BlockSize * cache.KvDim);
    }
}
