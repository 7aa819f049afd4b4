using Kiln.Kernels.MatMul;

namespace Kiln.Runtime.Tests.Kernels.MatMul;

/// <summary>The attention kernels' block reads equal the cache's own row reads, in every storage.</summary>
public sealed class KvBlocksTests
{
    [Theory]
    [InlineData(KvStorage.F32)]
    [InlineData(KvStorage.F16)]
    [InlineData(KvStorage.Int8)]
    public void BlocksReadAsTheRows(KvStorage storage)
    {
        const int Layers = 2, Blocks = 3, BlockSize = 5, KvDim = 40;
        var cache = KvCache.Paged(Layers, Blocks, BlockSize, KvDim, storage, headDim: 8);
        var random = new Random(3);
        var row = new float[KvDim];
        for (int layer = 0; layer < Layers; layer++)
            for (int r = 0; r < Blocks * BlockSize; r++)
            {
                for (int i = 0; i < KvDim; i++) row[i] = (float)(random.NextDouble() * 4 - 2);
                cache.WriteKey(layer, r, row);
                for (int i = 0; i < KvDim; i++) row[i] = (float)(random.NextDouble() * 4 - 2);
                cache.WriteValue(layer, r, row);
            }

        var scratch = new float[BlockSize * KvDim + 1]; // Keys/Values dequantize F16 too when asked
        var expected = new float[KvDim];
        // The whole row, and one work item's heads (columns 8..24: heads 1 and 2 of 8 wide); from a block's first row, and
        // from a later one (a sliding window's first visible position).
        foreach (var (firstColumn, columns) in new[] { (0, KvDim), (8, 16) })
            foreach (int firstRow in new[] { 0, 2 })
                for (int layer = 0; layer < Layers; layer++)
                    for (int block = 0; block < Blocks; block++)
                    {
                        int rows = (block == 1 ? BlockSize - 2 : BlockSize) - firstRow; // a partial block, as the last one of a sequence
                        var keys = KvBlocks.Keys(cache, layer, block, firstRow, rows, firstColumn, columns, scratch).ToArray();
                        var values = KvBlocks.Values(cache, layer, block, firstRow, rows, firstColumn, columns, scratch).ToArray();
                        float[]? halfKeys = storage == KvStorage.F16
                            ? Array.ConvertAll(KvBlocks.HalfKeys(cache, layer, block, firstRow, rows, firstColumn, columns).ToArray(), h => (float)h)
                            : null;
                        Assert.Equal((rows - 1) * KvDim + columns, keys.Length);
                        for (int r = 0; r < rows; r++)
                        {
                            cache.ReadKey(layer, block * BlockSize + firstRow + r, expected);
                            Assert.Equal(expected.AsSpan(firstColumn, columns).ToArray(), keys.AsSpan(r * KvDim, columns).ToArray());
                            if (halfKeys is not null) Assert.Equal(expected.AsSpan(firstColumn, columns).ToArray(), halfKeys.AsSpan(r * KvDim, columns).ToArray());
                            cache.ReadValue(layer, block * BlockSize + firstRow + r, expected);
                            Assert.Equal(expected.AsSpan(firstColumn, columns).ToArray(), values.AsSpan(r * KvDim, columns).ToArray());
                        }
                    }
    }

    [Theory]
    [InlineData(KvStorage.F16)]
    [InlineData(KvStorage.Int8)]
    public void ARowsColumnsReadAsTheWholeRowDoes(KvStorage storage)
    {
        var cache = KvCache.Paged(1, 1, 2, 32, storage, headDim: 8);
        var row = new float[32];
        for (int i = 0; i < row.Length; i++) row[i] = MathF.Sin(i) * 3;
        cache.WriteKey(0, 1, row);
        var whole = new float[32];
        cache.ReadKey(0, 1, whole);
        var part = new float[13];
        cache.ReadKey(0, 1, 11, part);
        Assert.Equal(whole.AsSpan(11, 13).ToArray(), part);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.ReadKey(0, 1, 20, part));
        Assert.Throws<ArgumentException>(() => cache.ReadKey(0, 1, part));
    }

    [Fact]
    public void F16BlockOutOfRangeThrows()
    {
        var cache = KvCache.Paged(1, 2, 4, 16, KvStorage.F16);
        Assert.Equal(0, KvBlocks.ScratchFloats(cache)); // read in place by the kernels
        var scratch = new float[4 * 16];
        Assert.Throws<ArgumentOutOfRangeException>(() => KvBlocks.Keys(cache, 0, 2, 0, 4, 0, 16, scratch).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => KvBlocks.Values(cache, 0, 0, 0, 5, 0, 16, scratch).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => KvBlocks.Values(cache, 0, 0, 0, 4, 8, 9, scratch).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => KvBlocks.HalfKeys(cache, 0, 0, 2, 3, 0, 16).Length); // rows 2..4 of a 4-row block
    }
}
