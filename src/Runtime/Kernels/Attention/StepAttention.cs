using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Threading;

namespace Kiln.Kernels.Attention;

/// <summary>
/// An encoder's attention, as a parallel work struct: no KV cache, a step holds whole sequences packed one after
/// another, and each query attends to the k and v rows of its own sequence in the step (all of them, or up to its own
/// position when causal), read in place from the step's buffers. One item is a token and a chunk of its KV heads, as in
/// <see cref="PagedAttention"/>, and the same vector kernels score, soften and weigh; only where the rows come from differs.
/// <para>
/// Bidirectional attention without a window on the AVX-512 path (an encoder's) goes by sequence instead: one item is a
/// sequence and one KV head, computed as small GEMMs — the head's keys transposed once into scratch, then per block of
/// 4 queries the scores as outer products over the head's dimensions (no horizontal sums), each row's softmax, and the
/// weighted values with the block's outputs held in registers over every key. A sequence too long for its chunk's
/// scratch runs query by query as above, in the same item.
/// </para>
/// </summary>
public struct StepAttention : IParallelWork
{
    /// <summary>Work items are cut into at most this many chunks, each owning one row of score scratch.</summary>
    public const int MaxChunks = PagedAttention.MaxChunks;

    public FloatBuffer Q, K, V, Output, Scores;
    public AttentionContext Context;
    public int ScoresStride, ChunkSize, PerToken, KvPerItem, Heads, KvHeads, HeadDim, QCols, KvCols;
    public AttentionOptions Options;

    // Queries per block of the sequence form: the block's scores and outputs stay in registers.
    private const int QueryBlock = 4;

    private bool _bySequence;

    /// <summary>Floats of score scratch one chunk needs: every query head's row over the longest sequence a step can hold.</summary>
    public static int ScoresPerChunk(int maxTokensPerStep, int heads) => checked(maxTokensPerStep * heads);

    /// <summary>
    /// Items for <paramref name="tokens"/> tokens on <paramref name="threads"/> threads (see <see cref="PagedAttention.Plan"/>);
    /// sets <see cref="PerToken"/>, <see cref="KvPerItem"/> and <see cref="ChunkSize"/>, and returns the item count.
    /// </summary>
    public int Plan(int tokens, int threads)
    {
        _bySequence = !Options.Causal && Options.Window <= 0 && KernelPaths.Uses512Bits && HeadDim % 16 == 0 && Context.SequenceCount > 0;
        if (_bySequence)
        {
            // Items of a sequence and a KV head; a chunk's items share its scratch one after another.
            PerToken = KvHeads;
            KvPerItem = 1;
            int sequenceItems = Context.SequenceCount * KvHeads;
            ChunkSize = Math.Max(1, (sequenceItems + MaxChunks - 1) / MaxChunks);
            return sequenceItems;
        }
        int perToken = Math.Clamp((2 * threads + tokens - 1) / Math.Max(tokens, 1), 1, KvHeads);
        KvPerItem = (KvHeads + perToken - 1) / perToken;
        PerToken = (KvHeads + KvPerItem - 1) / KvPerItem;
        int items = tokens * PerToken;
        ChunkSize = Math.Max(1, (items + MaxChunks - 1) / MaxChunks);
        return items;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end)
    {
        if (_bySequence)
        {
            var scratch = Scores.Slice(start / ChunkSize * ScoresStride, ScoresStride);
            for (int item = start; item < end; item++) SequenceHead(item / KvHeads, item % KvHeads, scratch);
            return;
        }
        // Items come in chunks of ChunkSize from a multiple of it: the chunk's own scratch.
        var scores = Scores.Slice(start / ChunkSize * ScoresStride, ScoresStride);
        var positions = Context.Positions;
        var starts = Context.QueryIndptr;
        int group = Heads / KvHeads;
        for (int item = start; item < end; item++)
        {
            int t = item / PerToken, kv0 = item % PerToken * KvPerItem, kv1 = Math.Min(KvHeads, kv0 + KvPerItem);
            int sequence = Context.SequenceOf(t), first = starts[sequence];
            int last = Options.Causal ? first + positions[t] : starts[sequence + 1] - 1;
            if (Options.Window > 0) first = Math.Max(first, first + positions[t] - Options.Window + 1);
            int rows = last - first + 1, heads = (kv1 - kv0) * group, at = t * QCols + kv0 * group * HeadDim;
            int columns = (kv1 - kv0) * HeadDim, span = (rows - 1) * KvCols + columns;
            var query = Q.Slice(at, heads * HeadDim);
            var output = Output.Slice(at, heads * HeadDim);
            var weights = scores.Slice(0, heads * rows);
            VectorMath.AttentionScores(query, heads, HeadDim, group, K.Slice(first * KvCols + kv0 * HeadDim, span), KvCols, rows, Options.Scale, weights, rows, 0);
            if (Options.SoftCap > 0)
                for (int i = 0; i < weights.Length; i++) weights[i] = Options.SoftCap * Elementwise.Lanes.Tanh(weights[i] / Options.SoftCap);
            for (int h = 0; h < heads; h++) VectorMath.Softmax(weights.Slice(h * rows, rows));
            output.Clear();
            VectorMath.AttentionValues(weights, rows, 0, heads, HeadDim, group, V.Slice(first * KvCols + kv0 * HeadDim, span), KvCols, rows, output);
        }
    }

    /// <summary>One sequence's attention for KV head <paramref name="kv"/> and the query heads that read it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe void SequenceHead(int sequence, int kv, Span<float> scratch)
    {
        var starts = Context.QueryIndptr;
        int first = starts[sequence], length = starts[sequence + 1] - first, padded = (length + 15) & ~15;
        int group = Heads / KvHeads;
        if ((long)(HeadDim + QueryBlock) * padded > scratch.Length)
        {
            QueryByQuery(first, length, kv, scratch);
            return;
        }
        fixed (float* keysT = scratch)
        {
            // The head's keys transposed, [HeadDim, padded]: element d of 16 keys side by side; the padding keys are zeros.
            float* k = K.Pointer + (long)first * KvCols + kv * HeadDim;
            for (int j = 0; j < length; j++, k += KvCols)
                for (int d = 0; d < HeadDim; d++) keysT[d * padded + j] = k[d];
            for (int d = 0; d < HeadDim; d++)
                for (int j = length; j < padded; j++) keysT[d * padded + j] = 0f;
            float* scores = keysT + HeadDim * padded;
            float* values = V.Pointer + (long)first * KvCols + kv * HeadDim;
            for (int h = kv * group; h < (kv + 1) * group; h++)
            {
                for (int i = 0; i < length; i += QueryBlock)
                {
                    int count = Math.Min(QueryBlock, length - i);
                    float* queries = Q.Pointer + (long)(first + i) * QCols + h * HeadDim;
                    BlockScores(queries, count, keysT, padded, scores);
                    for (int q = 0; q < count; q++)
                    {
                        var row = new Span<float>(scores + q * padded, length);
                        if (Options.SoftCap > 0)
                            for (int j = 0; j < row.Length; j++) row[j] = Options.SoftCap * Elementwise.Lanes.Tanh(row[j] / Options.SoftCap);
                        VectorMath.Softmax(row);
                    }
                    BlockValues(scores, padded, count, length, values, Output.Pointer + (long)(first + i) * QCols + h * HeadDim);
                }
            }
        }
    }

    /// <summary>
    /// Scores of <paramref name="count"/> (1–4) queries against every key of the transposed head, scaled, into rows of
    /// <paramref name="padded"/>: per 32 keys, 8 sums in registers over the head's dimensions.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private readonly unsafe void BlockScores(float* queries, int count, float* keysT, int padded, float* scores)
    {
        // Rows past count repeat the last query: their sums are computed and never stored.
        float* q0 = queries, q1 = count > 1 ? queries + QCols : q0, q2 = count > 2 ? queries + 2 * QCols : q1, q3 = count > 3 ? queries + 3 * QCols : q2;
        var scale = Vector512.Create(Options.Scale);
        for (int j = 0; j < padded; j += 32)
        {
            bool two = j + 16 < padded;
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
            float* column = keysT + j;
            for (int d = 0; d < HeadDim; d++, column += padded)
            {
                var x = Vector512.Load(column);
                var y = two ? Vector512.Load(column + 16) : default;
                var v0 = Vector512.Create(q0[d]);
                var v1 = Vector512.Create(q1[d]);
                var v2 = Vector512.Create(q2[d]);
                var v3 = Vector512.Create(q3[d]);
                a0 = Vector512.FusedMultiplyAdd(x, v0, a0);
                a1 = Vector512.FusedMultiplyAdd(x, v1, a1);
                a2 = Vector512.FusedMultiplyAdd(x, v2, a2);
                a3 = Vector512.FusedMultiplyAdd(x, v3, a3);
                b0 = Vector512.FusedMultiplyAdd(y, v0, b0);
                b1 = Vector512.FusedMultiplyAdd(y, v1, b1);
                b2 = Vector512.FusedMultiplyAdd(y, v2, b2);
                b3 = Vector512.FusedMultiplyAdd(y, v3, b3);
            }
            (a0 * scale).Store(scores + j);
            if (count > 1) (a1 * scale).Store(scores + padded + j);
            if (count > 2) (a2 * scale).Store(scores + 2 * padded + j);
            if (count > 3) (a3 * scale).Store(scores + 3 * padded + j);
            if (!two) continue;
            (b0 * scale).Store(scores + j + 16);
            if (count > 1) (b1 * scale).Store(scores + padded + j + 16);
            if (count > 2) (b2 * scale).Store(scores + 2 * padded + j + 16);
            if (count > 3) (b3 * scale).Store(scores + 3 * padded + j + 16);
        }
    }

    /// <summary>
    /// Outputs of <paramref name="count"/> (1–4) queries: Σ_j weight·v_j over the <paramref name="length"/> keys, 32
    /// columns of the head at a time with the block's 8 sums in registers over every key.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private readonly unsafe void BlockValues(float* weights, int padded, int count, int length, float* values, float* output)
    {
        float* w0 = weights, w1 = count > 1 ? weights + padded : w0, w2 = count > 2 ? weights + 2 * padded : w1, w3 = count > 3 ? weights + 3 * padded : w2;
        for (int c = 0; c < HeadDim; c += 32)
        {
            bool two = c + 16 < HeadDim;
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
            float* row = values + c;
            for (int j = 0; j < length; j++, row += KvCols)
            {
                var x = Vector512.Load(row);
                var y = two ? Vector512.Load(row + 16) : default;
                var v0 = Vector512.Create(w0[j]);
                var v1 = Vector512.Create(w1[j]);
                var v2 = Vector512.Create(w2[j]);
                var v3 = Vector512.Create(w3[j]);
                a0 = Vector512.FusedMultiplyAdd(x, v0, a0);
                a1 = Vector512.FusedMultiplyAdd(x, v1, a1);
                a2 = Vector512.FusedMultiplyAdd(x, v2, a2);
                a3 = Vector512.FusedMultiplyAdd(x, v3, a3);
                b0 = Vector512.FusedMultiplyAdd(y, v0, b0);
                b1 = Vector512.FusedMultiplyAdd(y, v1, b1);
                b2 = Vector512.FusedMultiplyAdd(y, v2, b2);
                b3 = Vector512.FusedMultiplyAdd(y, v3, b3);
            }
            a0.Store(output + c);
            if (count > 1) a1.Store(output + QCols + c);
            if (count > 2) a2.Store(output + 2 * QCols + c);
            if (count > 3) a3.Store(output + 3 * QCols + c);
            if (!two) continue;
            b0.Store(output + c + 16);
            if (count > 1) b1.Store(output + QCols + c + 16);
            if (count > 2) b2.Store(output + 2 * QCols + c + 16);
            if (count > 3) b3.Store(output + 3 * QCols + c + 16);
        }
    }

    /// <summary>A sequence longer than the scratch holds transposed: each of its queries over KV head <paramref name="kv"/> as the token items do.</summary>
    private readonly void QueryByQuery(int first, int length, int kv, Span<float> scratch)
    {
        int group = Heads / KvHeads, at0 = kv * group * HeadDim, span = (length - 1) * KvCols + HeadDim;
        for (int t = first; t < first + length; t++)
        {
            int at = t * QCols + at0;
            var query = Q.Slice(at, group * HeadDim);
            var output = Output.Slice(at, group * HeadDim);
            var weights = scratch.Slice(0, group * length);
            VectorMath.AttentionScores(query, group, HeadDim, group, K.Slice(first * KvCols + kv * HeadDim, span), KvCols, length, Options.Scale, weights, length, 0);
            if (Options.SoftCap > 0)
                for (int i = 0; i < weights.Length; i++) weights[i] = Options.SoftCap * Elementwise.Lanes.Tanh(weights[i] / Options.SoftCap);
            for (int h = 0; h < group; h++) VectorMath.Softmax(weights.Slice(h * length, length));
            output.Clear();
            VectorMath.AttentionValues(weights, length, 0, group, HeadDim, group, V.Slice(first * KvCols + kv * HeadDim, span), KvCols, length, output);
        }
    }
}
