using CsCheck;
using Kiln.Tests;

namespace Kiln.Runtime.Tests.Tensors;

/// <summary>
/// The reference attention reads a sequence's KV through its block table, so where the blocks are must not matter:
/// the same steps in the contiguous layout (a slot per sequence) and in the paged layout (small blocks, shuffled
/// ids) give bitwise the same outputs.
/// </summary>
public sealed class PagedAttentionTests
{
    private const int Heads = 4, KvHeads = 2, HeadDim = 4, KvDim = KvHeads * HeadDim;

    /// <param name="Lengths">Each sequence's total tokens.</param>
    /// <param name="ChunkSize">Tokens per sequence per step (its prompt is fed in chunks, then the step mixes all sequences).</param>
    public sealed record Case(int BlockSize, int[] Lengths, int ChunkSize, int ShuffleSeed);

    private static readonly Gen<Case> GenCase = Gen.Select(Gen.Int[1, 5], Gen.Int[1, 13].Array[1, 4], Gen.Int[1, 6], Gen.Int,
        (blockSize, lengths, chunk, seed) => new Case(blockSize, lengths, chunk, seed));

    [Fact]
    public void PagedWithShuffledBlockIdsGivesTheSameAttentionAsContiguous() =>
        SeededCases.Check(GenCase, seed: 300, count: 300, c => Assert.Equal(Run(c, paged: false, KvStorage.F32), Run(c, paged: true, KvStorage.F32)));

    [Theory]
    [InlineData(KvStorage.F16, 2e-3)]
    [InlineData(KvStorage.Int8, 3e-2)]
    public void CompressedStorageStaysCloseToF32(KvStorage storage, double tolerance)
    {
        var c = new Case(BlockSize: 3, Lengths: [11, 7, 12], ChunkSize: 4, ShuffleSeed: 3);
        var expected = Run(c, paged: true, KvStorage.F32);
        var actual = Run(c, paged: true, storage);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tolerance, $"output {i}: F32 {expected[i]}, {storage} {actual[i]}");
    }

    /// <summary>Feeds every sequence chunk by chunk, all sequences in each step, and returns every step's outputs concatenated.</summary>
    private static float[] Run(Case c, bool paged, KvStorage storage)
    {
        int sequences = c.Lengths.Length;
        int longest = c.Lengths.Max();
        int blocksPerSequence = (longest + c.BlockSize - 1) / c.BlockSize;
        KvCache cache;
        int[][] tables;
        if (paged)
        {
            // Every sequence's blocks drawn from one shuffled pool with spares, so ids interleave and are out of order.
            int blockCount = sequences * blocksPerSequence + 3;
            var ids = Enumerable.Range(0, blockCount).ToArray();
            new Random(c.ShuffleSeed).Shuffle(ids);
            tables = Enumerable.Range(0, sequences).Select(s => ids.Skip(s * blocksPerSequence).Take(blocksPerSequence).ToArray()).ToArray();
            cache = KvCache.Paged(layers: 2, blockCount, c.BlockSize, KvDim, storage, HeadDim);
        }
        else
        {
            tables = Enumerable.Range(0, sequences).Select(s => new[] { s }).ToArray();
            cache = new KvCache(layers: 2, sequences, longest, KvDim);
        }
        var context = new AttentionContext(cache, capacity: sequences * c.ChunkSize, maxBlockIds: sequences * blocksPerSequence);
        var random = new Random(17);
        var outputs = new List<float>();
        for (int start = 0; start < longest; start += c.ChunkSize)
        {
            context.Clear();
            for (int s = 0; s < sequences; s++)
            {
                int count = Math.Min(c.ChunkSize, c.Lengths[s] - start);
                if (count <= 0) continue;
                if (paged) context.AddChunk(tables[s], start, count, wantLogits: true);
                else for (int i = 0; i < count; i++) context.Add(start + i, slot: s, wantLogits: i == count - 1);
            }
            int tokens = context.TokenCount;
            for (int layer = 0; layer < 2; layer++)
            {
                var q = RandomTensor(random, tokens, Heads * HeadDim);
                var k = RandomTensor(random, tokens, KvDim);
                var v = RandomTensor(random, tokens, KvDim);
                outputs.AddRange(Ops.Attention(q, k, v, context, layer, Heads, KvHeads).Data);
            }
        }
        return outputs.ToArray();
    }

    private static Tensor RandomTensor(Random random, int rows, int cols)
    {
        var data = new float[rows * cols];
        for (int i = 0; i < data.Length; i++) data[i] = (float)(random.NextDouble() * 4 - 2);
        return new Tensor(data, rows, cols);
    }
}
