using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
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
/// sequence and one KV head, computed as small GEMMs — per block of up to 32 queries, the block transposed into scratch,
/// its scores transposed (Sᵀ = K·Qᵀ, one row of 32 queries per key) as outer products over the head's dimensions, the
/// softmax down the columns (16 queries per vector: no horizontal reductions, no masks), and the weighted values with
/// 8 queries' outputs held in registers over every key. A sequence too long for its chunk's scratch runs query by query
/// as above, in the same item.
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

    // Queries per block of the sequence form: two vectors of 16, side by side in each row of the block's scratch.
    private const int QueryBlock = 32;

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
            // The chunk's first item is asked for at once, and each next one while its predecessor computes.
            PrefetchItem(start);
            for (int item = start; item < end; item++)
            {
                if (item + 1 < end) PrefetchItem(item + 1);
                SequenceHead(item / KvHeads, item % KvHeads, scratch);
            }
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
            if (Options.SoftCap > 0) PagedAttention.SoftCap(weights, Options.SoftCap);
            for (int h = 0; h < heads; h++) VectorMath.Softmax(weights.Slice(h * rows, rows));
            output.Clear();
            VectorMath.AttentionValues(weights, rows, 0, heads, HeadDim, group, V.Slice(first * KvCols + kv0 * HeadDim, span), KvCols, rows, output);
        }
    }

    /// <summary>
    /// Asks for the q, k and v rows that item <paramref name="item"/> (a sequence and a KV head) reads: the QKV matmul
    /// has just written them, about half from the other core, and an item reads only its heads' few lines of each row
    /// (MiniLM: 128 of every 1536 bytes), a stride the hardware prefetcher barely follows. MiniLM's attention went from
    /// 3.4 to 2.6 ms per 32 × 32-token step (medians of 20 alternating profiled steps).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private readonly unsafe void PrefetchItem(int item)
    {
        if (!Sse.IsSupported) return;
        var starts = Context.QueryIndptr;
        int sequence = item / KvHeads, kv = item % KvHeads, group = Heads / KvHeads;
        int first = starts[sequence], length = starts[sequence + 1] - first;
        float* queries = Q.Pointer + (long)first * QCols + kv * group * HeadDim;
        float* keys = K.Pointer + (long)first * KvCols + kv * HeadDim;
        float* values = V.Pointer + (long)first * KvCols + kv * HeadDim;
        for (int t = 0; t < length; t++, queries += QCols, keys += KvCols, values += KvCols)
        {
            for (int d = 0; d < group * HeadDim; d += 16) Sse.Prefetch0(queries + d);
            for (int d = 0; d < HeadDim; d += 16)
            {
                Sse.Prefetch0(keys + d);
                Sse.Prefetch0(values + d);
            }
        }
    }

    /// <summary>One sequence's attention for KV head <paramref name="kv"/> and the query heads that read it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe void SequenceHead(int sequence, int kv, Span<float> scratch)
    {
        var starts = Context.QueryIndptr;
        int first = starts[sequence], length = starts[sequence + 1] - first;
        int group = Heads / KvHeads;
        if ((long)(HeadDim + length) * QueryBlock > scratch.Length)
        {
            QueryByQuery(first, length, kv, scratch);
            return;
        }
        fixed (float* queriesT = scratch)
        {
            // Per block of up to 32 queries: the block transposed, [HeadDim, 32], then its scores transposed, one row of
            // the block's queries per key: the softmax runs down the columns, every lane a query of its own.
            float* weightsT = queriesT + HeadDim * QueryBlock;
            float* keys = K.Pointer + (long)first * KvCols + kv * HeadDim;
            float* values = V.Pointer + (long)first * KvCols + kv * HeadDim;
            for (int h = kv * group; h < (kv + 1) * group; h++)
            {
                for (int i = 0; i < length; i += QueryBlock)
                {
                    int count = Math.Min(QueryBlock, length - i);
                    bool two = count > 16;
                    float* queries = Q.Pointer + (long)(first + i) * QCols + h * HeadDim;
                    for (int half = 0; half < (two ? 32 : 16); half += 16)
                        for (int d = 0; d < HeadDim; d += 16)
                            Transpose16(queries + (long)half * QCols + d, QCols, Math.Min(16, count - half), queriesT + d * QueryBlock + half, QueryBlock);
                    BlockScores(keys, length, queriesT, two, weightsT);
                    if (Options.SoftCap > 0) PagedAttention.SoftCap(new Span<float>(weightsT, length * QueryBlock), Options.SoftCap);
                    ColumnSoftmax(weightsT, length, two);
                    BlockValues(weightsT, count, length, values, Output.Pointer + (long)(first + i) * QCols + h * HeadDim);
                }
            }
        }
    }

    /// <summary>
    /// Scores of every key against a block of 16 or 32 (<paramref name="two"/>) transposed queries, scaled, one row of
    /// <see cref="QueryBlock"/> per key: per 8 keys, 16 sums in registers over the head's dimensions (8 keys × 32
    /// queries), the keys read in place from the step's rows.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private readonly unsafe void BlockScores(float* keys, int length, float* queriesT, bool two, float* weightsT)
    {
        var scale = Vector512.Create(Options.Scale);
        for (int j = 0; j < length; j += 8)
            AttentionTiles.OuterProduct(keys + (long)j * KvCols, KvCols, 1, Math.Min(8, length - j), queriesT, QueryBlock, HeadDim, two, scale,
                weightsT + j * QueryBlock, QueryBlock);
    }

    /// <summary>
    /// Outputs of <paramref name="count"/> queries: Σ_j weight·v_j over the <paramref name="length"/> keys, per 8
    /// queries and 32 columns of the head the 16 sums in registers over every key, each query's weights read down its
    /// column of the transposed block.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private readonly unsafe void BlockValues(float* weightsT, int count, int length, float* values, float* output)
    {
        for (int q = 0; q < count; q += 8)
            for (int c = 0; c < HeadDim; c += 32)
                AttentionTiles.OuterProduct(weightsT + q, 1, QueryBlock, Math.Min(8, count - q), values + c, KvCols, length, two: c + 16 < HeadDim,
                    Vector512<float>.One, output + (long)q * QCols + c, QCols);
    }

    /// <summary>
    /// The softmax of each query's scores in place, for a block of 16 or 32 (<paramref name="two"/>) queries held
    /// transposed (one row of <see cref="QueryBlock"/> per key, <paramref name="length"/> rows): the max, e^x and sum run
    /// down the columns, 16 queries per vector, with no horizontal reductions and no masks; e^x inlined
    /// (<see cref="Elementwise.Lanes.Exp(Vector512{float})"/>). Shared-prefix attention's online form
    /// (PagedAttention.OnlineSoftmaxColumns) with a fresh max and sum gives the same bits, but it walks the keys once per
    /// 16 columns; both halves per key here keep two e^x chains in flight (MiniLM's attention 3–5 % faster).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void ColumnSoftmax(float* weightsT, int length, bool two)
    {
        var max0 = Vector512.Create(float.NegativeInfinity);
        var max1 = max0;
        for (int j = 0; j < length; j++)
        {
            float* row = weightsT + j * QueryBlock;
            max0 = Vector512.Max(max0, Vector512.Load(row));
            if (two) max1 = Vector512.Max(max1, Vector512.Load(row + 16));
        }
        Vector512<float> sum0 = default, sum1 = default;
        for (int j = 0; j < length; j++)
        {
            float* row = weightsT + j * QueryBlock;
            var e0 = Elementwise.Lanes.Exp(Vector512.Load(row) - max0);
            e0.Store(row);
            sum0 += e0;
            if (two)
            {
                var e1 = Elementwise.Lanes.Exp(Vector512.Load(row + 16) - max1);
                e1.Store(row + 16);
                sum1 += e1;
            }
        }
        var scale0 = Vector512<float>.One / sum0;
        var scale1 = two ? Vector512<float>.One / sum1 : default;
        for (int j = 0; j < length; j++)
        {
            float* row = weightsT + j * QueryBlock;
            (Vector512.Load(row) * scale0).Store(row);
            if (two) (Vector512.Load(row + 16) * scale1).Store(row + 16);
        }
    }

    /// <summary>
    /// Rows [0, <paramref name="rows"/>) of a 16 × 16 block (<paramref name="stride"/> apart; the rest read as zeros)
    /// written transposed, 16 columns <paramref name="outputStride"/> apart: in registers, by interleaving 32-bit then
    /// 64-bit elements within each 128-bit lane and then exchanging the lanes, instead of 256 scalar moves. The rows stay
    /// in named registers: held in a stack array they made two round trips through memory (7% of MiniLM's attention).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Transpose16(float* input, int stride, int rows, float* output, int outputStride)
    {
        Vector512<float> r0 = Row(input, stride, rows, 0), r1 = Row(input, stride, rows, 1), r2 = Row(input, stride, rows, 2), r3 = Row(input, stride, rows, 3);
        Vector512<float> r4 = Row(input, stride, rows, 4), r5 = Row(input, stride, rows, 5), r6 = Row(input, stride, rows, 6), r7 = Row(input, stride, rows, 7);
        Vector512<float> r8 = Row(input, stride, rows, 8), r9 = Row(input, stride, rows, 9), r10 = Row(input, stride, rows, 10), r11 = Row(input, stride, rows, 11);
        Vector512<float> r12 = Row(input, stride, rows, 12), r13 = Row(input, stride, rows, 13), r14 = Row(input, stride, rows, 14), r15 = Row(input, stride, rows, 15);
        // After the two interleaves, r(4g + c) holds, in 128-bit lane l, column 4l + c of rows 4g..4g + 3.
        Interleave(ref r0, ref r1, ref r2, ref r3);
        Interleave(ref r4, ref r5, ref r6, ref r7);
        Interleave(ref r8, ref r9, ref r10, ref r11);
        Interleave(ref r12, ref r13, ref r14, ref r15);
        // Column 4l + c gathers lane l of r(c), r(4 + c), r(8 + c), r(12 + c).
        GatherLanes(r0, r4, r8, r12, output, outputStride);
        GatherLanes(r1, r5, r9, r13, output + outputStride, outputStride);
        GatherLanes(r2, r6, r10, r14, output + 2 * outputStride, outputStride);
        GatherLanes(r3, r7, r11, r15, output + 3 * outputStride, outputStride);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector512<float> Row(float* input, int stride, int rows, int i) =>
        i < rows ? Vector512.Load(input + (long)i * stride) : Vector512<float>.Zero;

    /// <summary>Four rows interleaved by 32-bit then 64-bit elements, within each 128-bit lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Interleave(ref Vector512<float> a, ref Vector512<float> b, ref Vector512<float> c, ref Vector512<float> d)
    {
        Vector512<float> t0 = Avx512F.UnpackLow(a, b), t1 = Avx512F.UnpackHigh(a, b);
        Vector512<float> t2 = Avx512F.UnpackLow(c, d), t3 = Avx512F.UnpackHigh(c, d);
        a = Avx512F.UnpackLow(t0.AsDouble(), t2.AsDouble()).AsSingle();
        b = Avx512F.UnpackHigh(t0.AsDouble(), t2.AsDouble()).AsSingle();
        c = Avx512F.UnpackLow(t1.AsDouble(), t3.AsDouble()).AsSingle();
        d = Avx512F.UnpackHigh(t1.AsDouble(), t3.AsDouble()).AsSingle();
    }

    /// <summary>Lane l of a, b, c and d side by side, for l = 0..3, stored at output rows 0, 4, 8 and 12: even lanes (0x88) and odd lanes (0xDD) twice.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void GatherLanes(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d, float* output, int outputStride)
    {
        Vector512<float> even0 = Avx512F.Shuffle4x128(a, b, 0x88), odd0 = Avx512F.Shuffle4x128(a, b, 0xDD);
        Vector512<float> even1 = Avx512F.Shuffle4x128(c, d, 0x88), odd1 = Avx512F.Shuffle4x128(c, d, 0xDD);
        Avx512F.Shuffle4x128(even0, even1, 0x88).Store(output);
        Avx512F.Shuffle4x128(odd0, odd1, 0x88).Store(output + (long)4 * outputStride);
        Avx512F.Shuffle4x128(even0, even1, 0xDD).Store(output + (long)8 * outputStride);
        Avx512F.Shuffle4x128(odd0, odd1, 0xDD).Store(output + (long)12 * outputStride);
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
            if (Options.SoftCap > 0) PagedAttention.SoftCap(weights, Options.SoftCap);
            for (int h = 0; h < group; h++) VectorMath.Softmax(weights.Slice(h * length, length));
            output.Clear();
            VectorMath.AttentionValues(weights, length, 0, group, HeadDim, group, V.Slice(first * KvCols + kv * HeadDim, span), KvCols, length, output);
        }
    }
}
