namespace Kiln.Runtime.Tests.Engine;

public sealed class KvCacheTests
{
    [Fact]
    public void AContiguousCacheIsOneBlockPerSlotAndItsSlotSpansAreItsRows()
    {
        var cache = new KvCache(layers: 2, slots: 3, maxContext: 5, kvDim: 4);
        Assert.False(cache.IsPaged);
        Assert.Equal((3, 5, 15, 5, 3), (cache.BlockCount, cache.BlockSize, cache.RowCount, cache.MaxContext, cache.Slots));

        cache.Key(1, slot: 2, position: 4).Fill(7);
        cache.Value(1, slot: 2, position: 4).Fill(8);
        Assert.Equal(7, cache.KeyRow(1, 2 * 5 + 4)[3]);
        Assert.Equal(8, cache.ValueRow(1, 2 * 5 + 4)[0]);
        Assert.Equal(5 * 4, cache.Keys(1, 2).Length);
        Assert.Equal(7, cache.Keys(1, 2)[4 * 4]);
        Assert.Equal(8, cache.Values(1, 2)[^1]);
        Assert.Equal(0, cache.KeyRow(0, 2 * 5 + 4)[0]); // layers are separate
    }

    [Fact]
    public void AnF16CacheSaysWhileEveryHalfItHoldsIsFinite()
    {
        var cache = KvCache.Paged(layers: 2, blockCount: 2, blockSize: 2, kvDim: 4, KvStorage.F16);
        Assert.True(cache.HoldsOnlyFiniteHalves);
        cache.WriteKey(0, 0, [65504f, -65519f, 1e-8f, 0f]); // the largest half, the last value rounding to it, a subnormal's underflow
        cache.WriteValue(1, 3, [-65504f, 2f, 3f, 4f]);
        Assert.True(cache.HoldsOnlyFiniteHalves);
        Assert.Equal(Half.MinValue, (Half)ReadKey(cache, 0, 0)[1]);
        cache.WriteValue(1, 2, [1f, -65520f, 3f, 4f]); // rounds to −∞
        Assert.False(cache.HoldsOnlyFiniteHalves);
        Assert.Equal(float.NegativeInfinity, ReadValue(cache, 1, 2)[1]);
        cache.WriteValue(1, 2, [1f, 2f, 3f, 4f]);
        Assert.False(cache.HoldsOnlyFiniteHalves); // the rows may still hold it elsewhere: it stays off

        var nan = KvCache.Paged(layers: 1, blockCount: 1, blockSize: 1, kvDim: 2, KvStorage.F16);
        nan.WriteKey(0, 0, [float.NaN, 0f]);
        Assert.False(nan.HoldsOnlyFiniteHalves);
    }

    private static float[] ReadKey(KvCache cache, int layer, int row)
    {
        var keys = new float[cache.KvDim];
        cache.ReadKey(layer, row, keys);
        return keys;
    }

    private static float[] ReadValue(KvCache cache, int layer, int row)
    {
        var values = new float[cache.KvDim];
        cache.ReadValue(layer, row, values);
        return values;
    }

    [Fact]
    public void APagedCacheHasNoSlotSpansAndSaysWhereToLook()
    {
        var cache = KvCache.Paged(layers: 1, blockCount: 6, blockSize: 4, kvDim: 2);
        Assert.True(cache.IsPaged);
        Assert.Equal(24, cache.MaxContext); // by default one sequence may span every row
        Assert.Equal(10, KvCache.Paged(1, 6, 4, 2, maxContext: 10).MaxContext);
        Assert.Throws<ArgumentOutOfRangeException>(() => KvCache.Paged(1, 6, 4, 2, maxContext: 25));
        var error = Assert.Throws<InvalidOperationException>(() => cache.Keys(0, 0).Length);
        Assert.Contains("KvRow", error.Message);
        Assert.Throws<InvalidOperationException>(() => cache.Values(0, 1).Length);
        cache.ValueRow(0, 2 * 4 + 3).Fill(5);
        Assert.Equal(4 * 2, cache.ValueBlock(0, 2).Length);
        Assert.Equal(5, cache.ValueBlock(0, 2)[3 * 2 + 1]);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.KeyBlock(0, 6).Length);
        Assert.Equal(24 * 2, cache.LayerValues(0).Length);
        Assert.Equal(5, cache.LayerValues(0)[(2 * 4 + 3) * 2]);
        // A block is still addressable as a one-block sequence.
        cache.Key(0, slot: 5, position: 3).Fill(1);
        Assert.Equal(1, cache.KeyRow(0, 23)[1]);
    }

    [Fact]
    public void OutOfRangeAccessIsRejected()
    {
        var cache = new KvCache(1, 2, 4, 2);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Key(0, 2, 0).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Key(0, 0, 4).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Key(1, 0, 0).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.KeyRow(0, 8).Length);
        Assert.Throws<ArgumentException>(() => cache.WriteKey(0, 0, new float[3]));
        Assert.Throws<ArgumentOutOfRangeException>(() => new KvCache(0, 1, 1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => KvCache.Paged(1, 2, 2, kvDim: 6, KvStorage.Int8, headDim: 4));
    }

    [Fact]
    public void ACacheLargerThanTheMachineIsRefusedBeforeAnythingIsAllocated()
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        // 1000 layers × 10^6 positions × 1024 floats, keys and values: 8 TB.
        var error = Assert.Throws<InsufficientMemoryException>(() => new KvCache(layers: 1000, slots: 1, maxContext: 1_000_000, kvDim: 1024));
        Assert.Contains("1000 layers × 1000000 positions × 1024 (F32)", error.Message);
        Assert.Contains("GiB of memory this machine has", error.Message);
        Assert.Throws<InsufficientMemoryException>(() => KvCache.Paged(layers: 1000, blockCount: 100_000, blockSize: 16, kvDim: 1024, KvStorage.Int8, headDim: 64));
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20, "the refused caches allocated");
    }

    [Theory]
    [InlineData(KvStorage.F32, 0)]
    [InlineData(KvStorage.F16, 1e-3)]
    [InlineData(KvStorage.Int8, 1.0 / 127)]
    public void RowsReadBackWithinTheStoragePrecision(KvStorage storage, double relativeTolerance)
    {
        var cache = KvCache.Paged(layers: 2, blockCount: 3, blockSize: 2, kvDim: 8, storage, headDim: 4);
        var random = new Random(5);
        var written = new float[8];
        var read = new float[8];
        for (int row = 0; row < cache.RowCount; row++)
        {
            // The second head is 100× smaller than the first: per-head scales keep its precision.
            for (int i = 0; i < 8; i++) written[i] = (float)(random.NextDouble() * 2 - 1) * (i < 4 ? 3 : 0.03f);
            cache.WriteKey(1, row, written);
            cache.WriteValue(1, row, written);
            cache.ReadKey(1, row, read);
            AssertWithinPrecision("key", row);
            cache.ReadValue(1, row, read);
            AssertWithinPrecision("value", row);
        }
        if (storage != KvStorage.F32)
            Assert.Throws<InvalidOperationException>(() => cache.KeyRow(0, 0).Length);

        void AssertWithinPrecision(string kind, int row)
        {
            for (int i = 0; i < 8; i++)
            {
                double headMax = i < 4 ? 3 : 0.03;
                Assert.True(Math.Abs(read[i] - written[i]) <= relativeTolerance * headMax, $"{storage} {kind} row {row} element {i}: wrote {written[i]}, read {read[i]}");
            }
        }
    }

    [Theory]
    [InlineData(KvStorage.F32)]
    [InlineData(KvStorage.F16)]
    [InlineData(KvStorage.Int8)]
    public void CopyBlockCopiesEveryLayerKeysAndValues(KvStorage storage)
    {
        var cache = KvCache.Paged(layers: 2, blockCount: 3, blockSize: 2, kvDim: 4, storage, headDim: 2);
        float[] row = [1, -2, 0.5f, 4];
        for (int layer = 0; layer < 2; layer++)
        {
            cache.WriteKey(layer, 1 * 2 + 1, row);
            cache.WriteValue(layer, 1 * 2 + 0, row);
        }
        cache.CopyBlock(sourceBlock: 1, destinationBlock: 2);
        var read = new float[4];
        var expected = new float[4];
        for (int layer = 0; layer < 2; layer++)
        {
            cache.ReadKey(layer, 1 * 2 + 1, expected);
            cache.ReadKey(layer, 2 * 2 + 1, read);
            Assert.Equal(expected, read);
            cache.ReadValue(layer, 1 * 2 + 0, expected);
            cache.ReadValue(layer, 2 * 2 + 0, read);
            Assert.Equal(expected, read);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.CopyBlock(0, 3));
    }

    [Fact]
    public void BytesPerBlockCountsKeysValuesAndScales()
    {
        Assert.Equal(2L * 3 * 16 * 64 * 4, KvCache.BytesPerBlock(3, 16, 64));
        Assert.Equal(2L * 3 * 16 * 64 * 2, KvCache.BytesPerBlock(3, 16, 64, KvStorage.F16));
        Assert.Equal(2L * 3 * 16 * 64 + 2L * 3 * 16 * 4 * 4, KvCache.BytesPerBlock(3, 16, 64, KvStorage.Int8, headDim: 16));
    }
}
