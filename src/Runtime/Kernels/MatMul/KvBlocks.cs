using System.Runtime.CompilerServices;
using Kiln.Kernels.Quantized;

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
        return cache.Storage switch
        {
            KvStorage.F32 => cache.KeyBlock(layer, block)[..(rows * cache.KvDim)],
            KvStorage.F16 => Widen(HalfKeys(cache), cache, layer, block, rows, scratch),
            _ => ReadRows(cache, layer, block, rows, scratch, keys: true),
        };
    }

    /// <summary>Values of the first <paramref name="rows"/> rows of <paramref name="block"/> in <paramref name="layer"/>.</summary>
    public static ReadOnlySpan<float> Values(KvCache cache, int layer, int block, int rows, Span<float> scratch)
    {
        ArgumentNullException.ThrowIfNull(cache);
        return cache.Storage switch
        {
            KvStorage.F32 => cache.ValueBlock(layer, block)[..(rows * cache.KvDim)],
            KvStorage.F16 => Widen(HalfValues(cache), cache, layer, block, rows, scratch),
            _ => ReadRows(cache, layer, block, rows, scratch, keys: false),
        };
    }

    /// <summary>Floats of scratch one chunk of attention work needs for <paramref name="cache"/> (0 when rows are read in place).</summary>
    public static int ScratchFloats(KvCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        return cache.Storage == KvStorage.F32 ? 0 : checked(cache.BlockSize * cache.KvDim);
    }

    // F16: the block's rows are consecutive halves; one vectorized widening instead of a (float)Half call per element.
    private static ReadOnlySpan<float> Widen(Half[][] storage, KvCache cache, int layer, int block, int rows, Span<float> scratch)
    {
        if ((uint)block >= (uint)cache.BlockCount || (uint)rows > (uint)cache.BlockSize)
            throw new ArgumentOutOfRangeException(nameof(block), $"KV cache has {cache.BlockCount} blocks of {cache.BlockSize} rows; asked for {rows} rows of block {block}.");
        int length = rows * cache.KvDim;
        Fp16.ToSingle(storage[layer].AsSpan(block * cache.BlockSize * cache.KvDim, length), scratch[..length]);
        return scratch[..length];
    }

    private static ReadOnlySpan<float> ReadRows(KvCache cache, int layer, int block, int rows, Span<float> scratch, bool keys)
    {
        int kvDim = cache.KvDim, first = block * cache.BlockSize;
        for (int r = 0; r < rows; r++)
        {
            if (keys) cache.ReadKey(layer, first + r, scratch.Slice(r * kvDim, kvDim));
            else cache.ReadValue(layer, first + r, scratch.Slice(r * kvDim, kvDim));
        }
        return scratch[..(rows * kvDim)];
    }

    // KvCache keeps its F16 rows private and offers only a row-at-a-time ReadKey; the kernels read its arrays directly.
    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_halfKeys")]
    private static extern ref Half[][] HalfKeys(KvCache cache);

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_halfValues")]
    private static extern ref Half[][] HalfValues(KvCache cache);
}
