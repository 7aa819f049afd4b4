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
/// sequence and one KV head, computed as small GEMMs — the head's keys transposed once into scratch, then per block of
/// 8 queries the scores as outer products over the head's dimensions (no horizontal sums), each row's softmax, and the
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
    private const int QueryBlock = 8;

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
            for (int j = 0; j < padded; j += 16)
                for (int d = 0; d < HeadDim; d += 16)
                    Transpose16(k + (long)j * KvCols + d, KvCols, Math.Min(16, length - j), keysT + (long)d * padded + j, padded);
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
                        if (Options.SoftCap > 0)
                        {
                            var row = new Span<float>(scores + q * padded, length);
                            for (int j = 0; j < row.Length; j++) row[j] = Options.SoftCap * Elementwise.Lanes.Tanh(row[j] / Options.SoftCap);
                        }
                        Softmax(scores + q * padded, length);
                    }
                    BlockValues(scores, padded, count, length, values, Output.Pointer + (long)(first + i) * QCols + h * HeadDim);
                }
            }
        }
    }

    /// <summary>
    /// Scores of <paramref name="count"/> (1–8) queries against every key of the transposed head, scaled, into rows of
    /// <paramref name="padded"/>: per 32 keys, 16 sums in registers over the head's dimensions.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private readonly unsafe void BlockScores(float* queries, int count, float* keysT, int padded, float* scores)
    {
        var scale = Vector512.Create(Options.Scale);
        for (int j = 0; j < padded; j += 32)
            AttentionTiles.OuterProduct(queries, QCols, 1, count, keysT + j, padded, HeadDim, two: j + 16 < padded, scale, scores + j, padded);
    }

    /// <summary>
    /// Outputs of <paramref name="count"/> (1–8) queries: Σ_j weight·v_j over the <paramref name="length"/> keys, 32
    /// columns of the head at a time with the block's 16 sums in registers over every key.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private readonly unsafe void BlockValues(float* weights, int padded, int count, int length, float* values, float* output)
    {
        for (int c = 0; c < HeadDim; c += 32)
            AttentionTiles.OuterProduct(weights, padded, 1, count, values + c, KvCols, length, two: c + 16 < HeadDim, Vector512<float>.One, output + c, QCols);
    }

    /// <summary>
    /// Rows [0, <paramref name="rows"/>) of a 16 × 16 block (<paramref name="stride"/> apart; the rest read as zeros)
    /// written transposed, 16 columns <paramref name="outputStride"/> apart: in registers, by interleaving 32-bit then
    /// 64-bit elements within each 128-bit lane and then exchanging the lanes, instead of 256 scalar moves.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Transpose16(float* input, int stride, int rows, float* output, int outputStride)
    {
        Vector512<float>* r = stackalloc Vector512<float>[16];
        for (int i = 0; i < 16; i++) r[i] = i < rows ? Vector512.Load(input + (long)i * stride) : Vector512<float>.Zero;
        // After the two interleaves, r[4g + c] holds, in 128-bit lane l, column 4l + c of rows 4g..4g + 3.
        for (int i = 0; i < 16; i += 4)
        {
            Vector512<float> t0 = Avx512F.UnpackLow(r[i], r[i + 1]), t1 = Avx512F.UnpackHigh(r[i], r[i + 1]);
            Vector512<float> t2 = Avx512F.UnpackLow(r[i + 2], r[i + 3]), t3 = Avx512F.UnpackHigh(r[i + 2], r[i + 3]);
            r[i] = Avx512F.UnpackLow(t0.AsDouble(), t2.AsDouble()).AsSingle();
            r[i + 1] = Avx512F.UnpackHigh(t0.AsDouble(), t2.AsDouble()).AsSingle();
            r[i + 2] = Avx512F.UnpackLow(t1.AsDouble(), t3.AsDouble()).AsSingle();
            r[i + 3] = Avx512F.UnpackHigh(t1.AsDouble(), t3.AsDouble()).AsSingle();
        }
        // Column 4l + c gathers lane l of r[c], r[4 + c], r[8 + c], r[12 + c]: even lanes (0x88) and odd lanes (0xDD) twice.
        for (int c = 0; c < 4; c++)
        {
            Vector512<float> even0 = Avx512F.Shuffle4x128(r[c], r[4 + c], 0x88), odd0 = Avx512F.Shuffle4x128(r[c], r[4 + c], 0xDD);
            Vector512<float> even1 = Avx512F.Shuffle4x128(r[8 + c], r[12 + c], 0x88), odd1 = Avx512F.Shuffle4x128(r[8 + c], r[12 + c], 0xDD);
            Avx512F.Shuffle4x128(even0, even1, 0x88).Store(output + (long)c * outputStride);
            Avx512F.Shuffle4x128(odd0, odd1, 0x88).Store(output + (long)(4 + c) * outputStride);
            Avx512F.Shuffle4x128(even0, even1, 0xDD).Store(output + (long)(8 + c) * outputStride);
            Avx512F.Shuffle4x128(odd0, odd1, 0xDD).Store(output + (long)(12 + c) * outputStride);
        }
    }

    /// <summary>
    /// One row's softmax in place over its first <paramref name="length"/> scores, 16 at a time with the row's last
    /// vector masked (the rows are padded to 16): e^x inlined (<see cref="Elementwise.Lanes.Exp(Vector512{float})"/>),
    /// where the shared row softmax makes four calls and one more per vector for the BCL's e^x.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Softmax(float* row, int length)
    {
        var lanes = Vector512.Create(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        var negativeInfinity = Vector512.Create(float.NegativeInfinity);
        var max = negativeInfinity;
        for (int j = 0; j < length; j += 16)
            max = Vector512.Max(max, Vector512.ConditionalSelect(Vector512.LessThan(lanes, Vector512.Create(length - j)).AsSingle(), Vector512.Load(row + j), negativeInfinity));
        max = Vector512.Max(max, Avx512F.Shuffle4x128(max, max, 0x4E)); // each 128-bit lane against the one two away
        max = Vector512.Max(max, Avx512F.Shuffle4x128(max, max, 0xB1)); // and its neighbour: every lane holds the 4 lanes' max
        var quarter = max.GetLower().GetLower();
        quarter = Vector128.Max(quarter, Vector128.Shuffle(quarter, Vector128.Create(2, 3, 0, 1)));
        quarter = Vector128.Max(quarter, Vector128.Shuffle(quarter, Vector128.Create(1, 0, 3, 2)));
        var rowMax = Vector512.Create(quarter.ToScalar());
        var sum = Vector512<float>.Zero;
        for (int j = 0; j < length; j += 16)
        {
            var e = Vector512.ConditionalSelect(Vector512.LessThan(lanes, Vector512.Create(length - j)).AsSingle(),
                Elementwise.Lanes.Exp(Vector512.Load(row + j) - rowMax), Vector512<float>.Zero);
            e.Store(row + j);
            sum += e;
        }
        var scale = Vector512.Create(1f / Vector512.Sum(sum));
        for (int j = 0; j < length; j += 16) (Vector512.Load(row + j) * scale).Store(row + j);
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
