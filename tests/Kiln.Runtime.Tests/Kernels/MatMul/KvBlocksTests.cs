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

        var scratch = new float[KvBlocks.ScratchFloats(cache) + 1];
        var expected = new float[KvDim];
        for (int layer = 0; layer < Layers; layer++)
            for (int block = 0; block < Blocks; block++)
            {
                int rows = block == 1 ? BlockSize - 2 : BlockSize; // a partial block, as the last one of a sequence
                var keys = KvBlocks.Keys(cache, layer, block, rows, scratch).ToArray();
                var values = KvBlocks.Values(cache, layer, block, rows, scratch).ToArray();
                Assert.Equal(rows * KvDim, keys.Length);
                for (int r = 0; r < rows; r++)
                {
                    cache.ReadKey(layer, block * BlockSize + r, expected);
                    Assert.Equal(expected, keys.AsSpan(r * KvDim, KvDim).ToArray());
                    cache.ReadValue(layer, block * BlockSize + r, expected);
                    Assert.Equal(expected, values.AsSpan(r * KvDim, KvDim).ToArray());
                }
            }
    }

    [Fact]
    public void F16BlockOutOfRangeThrows()
    {
        var cache = KvCache.Paged(1, 2, 4, 16, KvStorage.F16);
        var scratch = new float[KvBlocks.ScratchFloats(cache)];
        Assert.Throws<ArgumentOutOfRangeException>(() => KvBlocks.Keys(cache, 0, 2, 4, scratch).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => KvBlocks.Values(cache, 0, 0, 5, scratch).Length);
    }
}
