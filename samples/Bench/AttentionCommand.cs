using System.Diagnostics;
using System.Globalization;
using Kiln.Kernels.Attention;
using Kiln.Kernels.MatMul;
using Kiln.Threading;

namespace Kiln.Bench;

/// <summary>
/// The decode attention kernel alone (<see cref="PagedAttention"/>'s per-sequence path), on the 110m model's shape: 12
/// layers of 12 heads of 64, an F16 cache, one token attending to a context of each given length, through blocks of
/// the given sizes (16 rows as the server pages them, or one block per sequence as compare's sessions hold them), on
/// Kiln's worker pool as a plan runs it. Best of 5 runs of 50 steps; its KV bytes over that time against nothing else:
/// the matmuls stream the weights between layers in a real step, so these rows come from cache here, from memory there.
/// </summary>
internal static class AttentionCommand
{
    private const int Layers = 12, Heads = 12, HeadDim = 64, KvDim = Heads * HeadDim, Steps = 50, Runs = 5;

    public static int Run(int threads, int[] contexts, int[] blockSizes, TextWriter output)
    {
        var c = CultureInfo.InvariantCulture;
        using var pool = new WorkerPool(threads);
        output.WriteLine(string.Create(c, $"attention: PagedAttention decode, 110m shape ({Layers} layers, {Heads} heads of {HeadDim}, F16 KV), {threads} threads, best of {Runs} × {Steps} steps"));
        output.WriteLine(string.Create(c, $"{"context",8} {"block",6} {"µs/step",9} {"µs/layer",9} {"KV GB/s",8}"));
        foreach (int context in contexts)
            foreach (int requested in blockSizes)
            {
                int blockSize = requested == 0 ? (context + 15) / 16 * 16 : requested;
                double seconds = Measure(context, blockSize, threads, pool);
                double kvBytes = 2.0 * Layers * context * KvDim * sizeof(short);
                output.WriteLine(string.Create(c,
                    $"{context,8} {(requested == 0 ? "whole" : blockSize.ToString(c)),6} {seconds * 1e6,9:F1} {seconds * 1e6 / Layers,9:F2} {kvBytes / seconds / 1e9,8:F1}"));
            }
        output.WriteLine();
        output.WriteLine("block: rows per cache block (whole: one block per sequence); KV GB/s: every layer's K and V rows read once per step.");
        return 0;
    }

    /// <summary>Seconds per step (all layers), the best run's mean.</summary>
    private static double Measure(int context, int blockSize, int threads, WorkerPool pool)
    {
        int blocks = (context + blockSize - 1) / blockSize;
        // The blocks in shuffled order, as a server's pool hands them out: no stride from one block to the next.
        var table = Enumerable.Range(0, blocks).ToArray();
        new Random(7).Shuffle(table);
        var cache = KvCache.Paged(Layers, blocks, blockSize, KvDim, KvStorage.F16, HeadDim, blocks * blockSize);
        var random = new Random(11);
        var row = new float[KvDim];
        for (int layer = 0; layer < Layers; layer++)
            for (int position = 0; position < context; position++)
            {
                int at = table[position / blockSize] * blockSize + position % blockSize;
                for (int i = 0; i < KvDim; i++) row[i] = (float)(random.NextDouble() * 2 - 1);
                cache.WriteKey(layer, at, row);
                for (int i = 0; i < KvDim; i++) row[i] = (float)(random.NextDouble() * 2 - 1);
                cache.WriteValue(layer, at, row);
            }
        var attentionContext = new AttentionContext(cache, capacity: 1, maxBlockIds: blocks);
        attentionContext.AddChunk(table, context - 1, 1, wantLogits: true);
        int scoresStride = PagedAttention.ScoresPerChunk(cache.MaxContext, Heads, HeadDim), gatherStride = KvBlocks.ScratchFloats(cache);
        using var memory = new NativeBlock((2L * KvDim + (long)PagedAttention.MaxChunks * (scoresStride + gatherStride)) * sizeof(float));
        var query = memory.Floats(0, KvDim);
        for (int i = 0; i < KvDim; i++) query.Span[i] = (float)(random.NextDouble() * 2 - 1);
        var attention = new PagedAttention
        {
            Q = query, Output = memory.Floats((long)KvDim * sizeof(float), KvDim),
            Scores = memory.Floats(2L * KvDim * sizeof(float), PagedAttention.MaxChunks * scoresStride), ScoresStride = scoresStride,
            Gather = memory.Floats((2L * KvDim + (long)PagedAttention.MaxChunks * scoresStride) * sizeof(float), PagedAttention.MaxChunks * gatherStride),
            GatherStride = gatherStride, Cache = cache, Context = attentionContext, Heads = Heads, KvHeads = Heads, HeadDim = HeadDim,
            QCols = KvDim, KvCols = KvDim, Options = new AttentionOptions(1f / MathF.Sqrt(HeadDim)),
        };
        double best = double.MaxValue;
        for (int run = -1; run < Runs; run++) // run −1 warms up
        {
            long start = Stopwatch.GetTimestamp();
            for (int step = 0; step < Steps; step++)
                for (int layer = 0; layer < Layers; layer++)
                {
                    attention.Layer = layer;
                    attention.Run(pool, tokens: 1);
                }
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds / Steps;
            if (run >= 0) best = Math.Min(best, seconds);
        }
        return best;
    }

    /// <summary>
    /// An encoder's attention alone (<see cref="StepAttention"/>, bidirectional, no KV cache), on all-MiniLM-L6-v2's shape
    /// (12 heads of 32): per shape, <c>sequences</c> packed sequences of <c>length</c> tokens in one step, q, k and v in
    /// one row each per token as the step's buffers hold them. Median of 9 runs of 200 layers on Kiln's worker pool,
    /// and its useful FLOP/s (4·length²·dim per sequence: scores and weighted values).
    /// </summary>
    public static int RunEncoder(int threads, (int Sequences, int Length)[] shapes, TextWriter output)
    {
        const int heads = 12, headDim = 32, dim = heads * headDim, layers = 200, runs = 9;
        var c = CultureInfo.InvariantCulture;
        using var pool = new WorkerPool(threads);
        output.WriteLine(string.Create(c, $"attention: StepAttention encoder, MiniLM shape ({heads} heads of {headDim}), {threads} threads, median of {runs} × {layers} layers"));
        output.WriteLine(string.Create(c, $"{"shape",10} {"ms/layer",9} {"GFLOP/s",8}"));
        foreach (var (sequences, length) in shapes)
        {
            int tokens = sequences * length, scoresStride = StepAttention.ScoresPerChunk(tokens, heads);
            var context = new AttentionContext(tokens);
            for (int s = 0; s < sequences; s++) context.AddSequence(length);
            using var memory = new NativeBlock((4L * tokens * dim + (long)StepAttention.MaxChunks * scoresStride) * sizeof(float));
            FloatBuffer Slot(int index) => memory.Floats((long)index * tokens * dim * sizeof(float), tokens * dim);
            var random = new Random(5);
            for (int slot = 0; slot < 3; slot++)
                for (int i = 0; i < tokens * dim; i++) Slot(slot).Span[i] = (float)(random.NextDouble() * 4 - 2);
            var attention = new StepAttention
            {
                Q = Slot(0), K = Slot(1), V = Slot(2), Output = Slot(3),
                Scores = memory.Floats(4L * tokens * dim * sizeof(float), StepAttention.MaxChunks * scoresStride), ScoresStride = scoresStride,
                Context = context, Heads = heads, KvHeads = heads, HeadDim = headDim, QCols = dim, KvCols = dim,
                Options = new AttentionOptions(1f / MathF.Sqrt(headDim), Causal: false),
            };
            var times = new double[runs];
            for (int run = -1; run < runs; run++) // run −1 warms up
            {
                long start = Stopwatch.GetTimestamp();
                for (int layer = 0; layer < layers; layer++)
                {
                    int items = attention.Plan(tokens, pool.ThreadCount);
                    pool.Run(items, attention.ChunkSize, attention);
                }
                if (run >= 0) times[run] = Stopwatch.GetElapsedTime(start).TotalSeconds / layers;
            }
            Array.Sort(times);
            double seconds = times[runs / 2], flops = 4.0 * length * length * dim * sequences;
            output.WriteLine(string.Create(c, $"{sequences + "x" + length,10} {seconds * 1e3,9:F4} {flops / seconds / 1e9,8:F1}"));
        }
        output.WriteLine();
        output.WriteLine("shape: sequences x tokens each, packed in one step; GFLOP/s: the scores' and weighted values' multiply-adds, 2 FLOPs each.");
        return 0;
    }
}
