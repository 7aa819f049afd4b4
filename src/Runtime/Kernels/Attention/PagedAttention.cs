using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Kiln.Kernels.Elementwise;
using Kiln.Kernels.MatMul;
using Kiln.Threading;

namespace Kiln.Kernels.Attention;

/// <summary>
/// What one attention call of a compiled plan asks for beyond its tensors: the score scale, a sliding window, a soft
/// cap and causality — the options of <see cref="Ops.Attention"/>, with the same meanings.
/// </summary>
/// <param name="Scale">Multiplies q·k (the plan resolves Ops.Attention's 0 to 1/√HeadDim).</param>
/// <param name="Window">A query at position p sees p − Window + 1 .. p; 0: no window.</param>
/// <param name="SoftCap">Scores become SoftCap·tanh(s/SoftCap); 0: none.</param>
/// <param name="Causal">False: a query sees every position its sequence has written in this step.</param>
public readonly record struct AttentionOptions(float Scale, int Window = 0, float SoftCap = 0f, bool Causal = true);

/// <summary>
/// Grouped-query attention over a paged KV cache, as a parallel work struct: one item is a token and a chunk of its
/// KV heads; every query head of the chunk is scored against the same cached rows, read block by block through the
/// sequence's block table once for all of them (F16 rows widened in registers, int8 ones dequantized into scratch),
/// then softmax and the weighted sum of values. A plan fills one per attention call and runs it on its pool; the
/// rows it reads are the window the options leave visible.
/// </summary>
public struct PagedAttention : IParallelWork
{
    /// <summary>Work items are cut into at most this many chunks, each owning one row of score scratch.</summary>
    public const int MaxChunks = 32;

    public FloatBuffer Q, Output, Scores, Gather;
    public KvCache Cache;
    public AttentionContext Context;
    public int ScoresStride, GatherStride, ChunkSize, PerToken, KvPerItem, Layer, Heads, KvHeads, HeadDim, QCols, KvCols;
    public AttentionOptions Options;

    /// <summary>
    /// Items for <paramref name="tokens"/> tokens on <paramref name="threads"/> threads: each token's KV heads in a few
    /// chunks, so that one token's heads still spread over the threads (decode); sets <see cref="PerToken"/>,
    /// <see cref="KvPerItem"/> and <see cref="ChunkSize"/>, and returns the item count.
    /// </summary>
    public int Plan(int tokens, int threads)
    {
        int perToken = Math.Clamp((2 * threads + tokens - 1) / Math.Max(tokens, 1), 1, KvHeads);
        KvPerItem = (KvHeads + perToken - 1) / perToken;
        PerToken = (KvHeads + KvPerItem - 1) / KvPerItem;
        int items = tokens * PerToken;
        ChunkSize = Math.Max(1, (items + MaxChunks - 1) / MaxChunks);
        return items;
    }

    /// <summary>Floats of score scratch one chunk needs: every query head's row over <paramref name="maxContext"/> positions.</summary>
    public static int ScoresPerChunk(int maxContext, int heads) => checked(maxContext * heads);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end)
    {
        // Items come in chunks of ChunkSize from a multiple of it: the chunk's own scratch.
        int chunk = start / ChunkSize;
        var scores = Scores.Slice(chunk * ScoresStride, ScoresStride);
        var gather = Gather.Slice(chunk * GatherStride, GatherStride);
        var positions = Context.Positions;
        int group = Heads / KvHeads, blockSize = Cache.BlockSize;
        bool halves = Cache.Storage == KvStorage.F16;
        for (int item = start; item < end; item++)
        {
            int t = item / PerToken, kv0 = item % PerToken * KvPerItem, kv1 = Math.Min(KvHeads, kv0 + KvPerItem);
            int sequence = Context.SequenceOf(t);
            int last = Options.Causal ? positions[t] : Context.LastPosition(sequence);
            int first = Options.Window > 0 ? Math.Max(0, positions[t] - Options.Window + 1) : 0;
            int rows = last - first + 1, heads = (kv1 - kv0) * group, at = t * QCols + kv0 * group * HeadDim;
            int columns = (kv1 - kv0) * HeadDim;
            var blocks = Context.BlockTable(sequence); // a contiguous cache: one block per sequence
            var query = Q.Slice(at, heads * HeadDim);
            var output = Output.Slice(at, heads * HeadDim);
            var weights = scores.Slice(0, heads * rows);
            // Only this item's KV heads are read: F16 rows in place (widened in registers), int8 ones dequantized into scratch.
            for (int position = first; position <= last;)
            {
                int b = position / blockSize, offset = position % blockSize, count = Math.Min(blockSize - offset, last - position + 1);
                if (halves)
                    VectorMath.AttentionScores(query, heads, HeadDim, group, KvBlocks.HalfKeys(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns), KvCols, count, Options.Scale, weights, rows, position - first);
                else
                    VectorMath.AttentionScores(query, heads, HeadDim, group, KvBlocks.Keys(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns, gather), KvCols, count, Options.Scale, weights, rows, position - first);
                position += count;
            }
            if (Options.SoftCap > 0) SoftCap(weights, Options.SoftCap);
            for (int h = 0; h < heads; h++) VectorMath.Softmax(weights.Slice(h * rows, rows));
            output.Clear();
            for (int position = first; position <= last;)
            {
                int b = position / blockSize, offset = position % blockSize, count = Math.Min(blockSize - offset, last - position + 1);
                if (halves)
                    VectorMath.AttentionValues(weights, rows, position - first, heads, HeadDim, group, KvBlocks.HalfValues(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns), KvCols, count, output);
                else
                    VectorMath.AttentionValues(weights, rows, position - first, heads, HeadDim, group, KvBlocks.Values(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns, gather), KvCols, count, output);
                position += count;
            }
        }
    }

    /// <summary>s ← cap·tanh(s/cap) over every score (Gemma-2's attention logit soft-capping).</summary>
    private static void SoftCap(Span<float> scores, float cap)
    {
        float inverse = 1f / cap;
        int i = 0;
        if (Lanes.Use512)
        {
            Vector512<float> c = Vector512.Create(cap), r = Vector512.Create(inverse);
            ref float first = ref MemoryMarshal.GetReference(scores);
            for (; i + 16 <= scores.Length; i += 16)
                (c * Lanes.Tanh(Vector512.LoadUnsafe(ref first, (nuint)i) * r)).StoreUnsafe(ref first, (nuint)i);
        }
        for (; i < scores.Length; i++) scores[i] = cap * Lanes.Tanh(scores[i] * inverse);
    }
}
