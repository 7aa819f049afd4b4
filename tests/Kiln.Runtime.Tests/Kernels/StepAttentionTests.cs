using Kiln.Kernels.Attention;
using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Threading;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.Runtime.Tests.Kernels;

/// <summary>
/// An encoder's attention over packed sequences against a double-precision reference (each query over its own
/// sequence's keys: scaled dots, soft cap, softmax, weighted values), on each kernel path: sequences of 1 to 70 tokens,
/// GQA, head sizes that take the by-sequence GEMM form on AVX-512 (multiples of 16) and one that keeps the per-token
/// form, MiniLM's 12 heads of 32 with query blocks of every width, soft caps, causal and windowed attention (per-token
/// items), and a scratch too small to hold a block of queries transposed beside its scores (that sequence query by query).
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class StepAttentionTests(ITestOutputHelper output)
{
    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    private const int Seed = 2207;

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void StepAttentionEqualsTheReference(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Step attention", KernelPathCases.NoVnniForm);
        output.WriteLine($"seed {Seed}");
        int[][] shapes = [[4, 4, 32], [4, 2, 48], [2, 1, 16], [3, 3, 24], [2, 2, 64]]; // heads, KV heads, head size
        for (int i = 0; i < shapes.Length; i++)
        {
            var random = new Random(Seed + i);
            int[] lengths = Enumerable.Range(0, random.Next(1, 6)).Select(_ => random.Next(1, 71)).ToArray();
            var options = new AttentionOptions(0.3f, Window: 0, SoftCap: i == 2 ? 5f : 0f, Causal: false);
            Check(random, lengths, shapes[i][0], shapes[i][1], shapes[i][2], options, scoresPerChunk: 0);
        }
        Check(new Random(Seed + 10), [9, 40, 3], 4, 2, 32, new AttentionOptions(0.25f, Causal: true), scoresPerChunk: 0);
        Check(new Random(Seed + 11), [9, 40, 3], 4, 2, 32, new AttentionOptions(0.25f, Window: 5, Causal: false), scoresPerChunk: 0);
        // Scratch of 41 × 32 floats: a block of 32 queries transposed beside its scores over the 40-token sequence's keys
        // does not fit ((32 + 40) × 32), over the others' it does ((32 + 9) × 32 at most).
        Check(new Random(Seed + 12), [9, 40, 3], 4, 2, 32, new AttentionOptions(0.25f, Causal: false), scoresPerChunk: 41 * 32);
        // MiniLM's shape (12 heads of 32): query blocks of exactly 32, of 16, of 17 (a second vector of one query), and
        // 32 then 1; and scores large enough that the softmax needs its max.
        Check(new Random(Seed + 13), [32, 32, 16, 17, 33], 12, 12, 32, new AttentionOptions(0.5f, Causal: false), scoresPerChunk: 0);
    }

    private void Check(Random random, int[] lengths, int heads, int kvHeads, int headDim, AttentionOptions options, int scoresPerChunk)
    {
        int tokens = lengths.Sum(), qCols = heads * headDim, kvCols = kvHeads * headDim;
        var context = new AttentionContext(tokens);
        foreach (int length in lengths) context.AddSequence(length);
        float[] q = Draw(random, tokens * qCols), k = Draw(random, tokens * kvCols), v = Draw(random, tokens * kvCols);
        // By default room for the by-sequence form's block of 32 queries transposed beside their scores over the longest sequence.
        if (scoresPerChunk == 0) scoresPerChunk = StepAttention.ScoresPerChunk(tokens, heads) + (headDim + lengths.Max()) * 32;
        int floats = 3 * tokens * qCols + 2 * tokens * kvCols + scoresPerChunk * StepAttention.MaxChunks;
        using var memory = new NativeBlock((long)floats * sizeof(float));
        int at = 0;
        FloatBuffer Take(int count)
        {
            var buffer = memory.Floats((long)at * sizeof(float), count);
            at += count;
            return buffer;
        }
        var attention = new StepAttention
        {
            Q = Take(tokens * qCols),
            K = Take(tokens * kvCols),
            V = Take(tokens * kvCols),
            Output = Take(tokens * qCols),
            Scores = Take(scoresPerChunk * StepAttention.MaxChunks),
            ScoresStride = scoresPerChunk,
            Context = context,
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            QCols = qCols,
            KvCols = kvCols,
            Options = options,
        };
        q.CopyTo(attention.Q.Span);
        k.CopyTo(attention.K.Span);
        v.CopyTo(attention.V.Span);
        attention.Output.Span.Fill(float.NaN);
        using var pool = new WorkerPool(2);
        int items = attention.Plan(tokens, pool.ThreadCount);
        pool.Run(items, attention.ChunkSize, attention);

        var expected = Reference(context, q, k, v, heads, kvHeads, headDim, options);
        string shape = $"{heads} heads ({kvHeads} KV) of {headDim}, sequences [{string.Join(", ", lengths)}], {options}";
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(attention.Output[i] - expected[i]) <= 2e-5 * Math.Max(1, Math.Abs(expected[i])),
                $"{shape}: output {i} is {attention.Output[i]}, expected {expected[i]}");
        output.WriteLine($"{shape}: {items} items, all within 2e-5");
    }

    private static float[] Draw(Random random, int count)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = (float)(random.NextDouble() * 4 - 2);
        return values;
    }

    private static double[] Reference(AttentionContext context, float[] q, float[] k, float[] v, int heads, int kvHeads, int headDim, AttentionOptions options)
    {
        int qCols = heads * headDim, kvCols = kvHeads * headDim, group = heads / kvHeads;
        var result = new double[context.TokenCount * qCols];
        var starts = context.QueryIndptr;
        for (int t = 0; t < context.TokenCount; t++)
        {
            int sequence = context.SequenceOf(t), first = starts[sequence], position = t - first;
            int last = options.Causal ? t : starts[sequence + 1] - 1;
            if (options.Window > 0) first = Math.Max(first, first + position - options.Window + 1);
            for (int h = 0; h < heads; h++)
            {
                int kv = h / group;
                var weights = new double[last - first + 1];
                for (int j = first; j <= last; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < headDim; d++) dot += (double)q[t * qCols + h * headDim + d] * k[j * kvCols + kv * headDim + d];
                    dot *= options.Scale;
                    if (options.SoftCap > 0) dot = options.SoftCap * Math.Tanh(dot / options.SoftCap);
                    weights[j - first] = dot;
                }
                double max = weights.Max(), sum = 0;
                for (int j = 0; j < weights.Length; j++) sum += weights[j] = Math.Exp(weights[j] - max);
                for (int j = first; j <= last; j++)
                    for (int d = 0; d < headDim; d++)
                        result[t * qCols + h * headDim + d] += weights[j - first] / sum * v[j * kvCols + kv * headDim + d];
            }
        }
        return result;
    }
}
