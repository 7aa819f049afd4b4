using Kiln.Kernels;
using Kiln.Kernels.Attention;
using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Tests;
using Kiln.Threading;
using Xunit.Abstractions;

namespace Kiln.Runtime.Tests.Kernels;

/// <summary>
/// The paged attention kernel's per-sequence path against the eager reference <see cref="Ops.Attention"/> (scores,
/// softmax and values in double, over the same cached rows): a change to how the kernel walks K and V rows (tiles,
/// online softmax) must keep it within float rounding. Random seeded steps span long sequences (up to 199 positions),
/// blocks of 1 to 64 positions, every KV storage, GQA, windows, soft caps and non-causal attention, on each kernel path.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class PagedAttentionKernelTests(ITestOutputHelper output)
{
    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    private const int Seed = 2611, Cases = 40;

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void PerSequenceAttentionEqualsTheReference(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Paged attention", KernelPathCases.NoVnniForm);
        output.WriteLine($"seed {Seed} ({Cases} cases)");
        for (int i = 0; i < Cases; i++)
        {
            var random = new Random(Seed + i);
            int[] blockSizes = [1, 3, 16, 64];
            (int Heads, int KvHeads)[] shapes = [(4, 2), (2, 2), (4, 1), (3, 3)];
            int[] headDims = [4, 16, 64];
            var shape = shapes[random.Next(shapes.Length)];
            int blockSize = blockSizes[random.Next(blockSizes.Length)], headDim = headDims[random.Next(headDims.Length)];
            var storage = new[] { KvStorage.F32, KvStorage.F16, KvStorage.Int8 }[random.Next(3)];
            var lengths = Enumerable.Range(0, random.Next(1, 4)).Select(_ => random.Next(1, 200)).ToArray();
            int window = random.Next(3) == 0 ? random.Next(1, 90) : 0;
            float softCap = random.Next(4) == 0 ? 3f : 0f;
            bool causal = random.Next(4) != 0;
            string description = $"seed {Seed + i}: block {blockSize}, {shape.Heads}/{shape.KvHeads} heads of {headDim}, {storage}, " +
                $"lengths [{string.Join(",", lengths)}], window {window}, cap {softCap}, causal {causal}";

            var (expected, actual) = Attend(random, blockSize, shape.Heads, shape.KvHeads, headDim, storage, lengths, new AttentionOptions(1f / MathF.Sqrt(headDim), window, softCap, causal));
            double tolerance = storage == KvStorage.F32 ? 2e-5 : 5e-5;
            for (int j = 0; j < expected.Length; j++)
                Assert.True(Math.Abs(actual[j] - expected[j]) <= tolerance * Math.Max(1, Math.Abs(expected[j])),
                    $"{description}: output {j} is {actual[j]}, the reference {expected[j]}");
        }
    }

    /// <summary>
    /// Every sequence's tokens in one step over a paged cache: the reference writes their K and V and attends; the
    /// kernel then attends over the same rows with the same queries. Returns (reference, kernel) outputs.
    /// </summary>
    private static (float[] Expected, float[] Actual) Attend(Random random, int blockSize, int heads, int kvHeads, int headDim, KvStorage storage,
        int[] lengths, AttentionOptions options)
    {
        int kvDim = kvHeads * headDim, qCols = heads * headDim, tokens = lengths.Sum(), maxContext = lengths.Max();
        int blocksPerSequence = (maxContext + blockSize - 1) / blockSize;
        var cache = KvCache.Paged(layers: 1, blockCount: lengths.Length * blocksPerSequence, blockSize, kvDim, storage, headDim, maxContext);
        var context = new AttentionContext(cache, capacity: tokens, maxBlockIds: lengths.Length * blocksPerSequence);
        for (int s = 0; s < lengths.Length; s++)
            context.AddChunk(Enumerable.Range(s * blocksPerSequence, blocksPerSequence).ToArray(), startPosition: 0, lengths[s], wantLogits: true);
        var q = RandomTensor(random, tokens, qCols);
        var expected = Ops.Attention(q, RandomTensor(random, tokens, kvDim), RandomTensor(random, tokens, kvDim), context, layer: 0, heads, kvHeads,
            options.Scale, options.Window, options.SoftCap, options.Causal).Data;

        int scoresStride = PagedAttention.ScoresPerChunk(cache.MaxContext, heads, headDim), gatherStride = KvBlocks.ScratchFloats(cache);
        long scratch = (long)PagedAttention.MaxChunks * (scoresStride + gatherStride);
        using var memory = new NativeBlock((2L * tokens * qCols + scratch) * sizeof(float));
        var queries = memory.Floats(0, tokens * qCols);
        q.Data.CopyTo(queries.Span);
        var attention = new PagedAttention
        {
            Q = queries, Output = memory.Floats((long)tokens * qCols * sizeof(float), tokens * qCols),
            Scores = memory.Floats(2L * tokens * qCols * sizeof(float), PagedAttention.MaxChunks * scoresStride), ScoresStride = scoresStride,
            Gather = memory.Floats((2L * tokens * qCols + (long)PagedAttention.MaxChunks * scoresStride) * sizeof(float), PagedAttention.MaxChunks * gatherStride),
            GatherStride = gatherStride, Cache = cache, Context = context, Layer = 0, Heads = heads, KvHeads = kvHeads, HeadDim = headDim,
            QCols = qCols, KvCols = kvDim, Options = options,
        };
        using var pool = new WorkerPool(2);
        attention.Run(pool, tokens);
        return (expected, attention.Output.Span.ToArray());
    }

    private static Tensor RandomTensor(Random random, int rows, int cols)
    {
        var data = new float[rows * cols];
        for (int i = 0; i < data.Length; i++) data[i] = (float)(random.NextDouble() * 4 - 2);
        return new Tensor(data, rows, cols);
    }
}
