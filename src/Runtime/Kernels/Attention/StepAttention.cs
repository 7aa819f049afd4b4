using System.Runtime.CompilerServices;
using Kiln.Kernels.MatMul;
using Kiln.Threading;

namespace Kiln.Kernels.Attention;

/// <summary>
/// An encoder's attention, as a parallel work struct: no KV cache, a step holds whole sequences packed one after
/// another, and each query attends to the k and v rows of its own sequence in the step (all of them, or up to its own
/// position when causal), read in place from the step's buffers. One item is a token and a chunk of its KV heads, as in
/// <see cref="PagedAttention"/>, and the same vector kernels score, soften and weigh; only where the rows come from differs.
/// </summary>
public struct StepAttention : IParallelWork
{
    /// <summary>Work items are cut into at most this many chunks, each owning one row of score scratch.</summary>
    public const int MaxChunks = PagedAttention.MaxChunks;

    public FloatBuffer Q, K, V, Output, Scores;
    public AttentionContext Context;
    public int ScoresStride, ChunkSize, PerToken, KvPerItem, Heads, KvHeads, HeadDim, QCols, KvCols;
    public AttentionOptions Options;

    /// <summary>Floats of score scratch one chunk needs: every query head's row over the longest sequence a step can hold.</summary>
    public static int ScoresPerChunk(int maxTokensPerStep, int heads) => checked(maxTokensPerStep * heads);

    /// <summary>
    /// Items for <paramref name="tokens"/> tokens on <paramref name="threads"/> threads (see <see cref="PagedAttention.Plan"/>);
    /// sets <see cref="PerToken"/>, <see cref="KvPerItem"/> and <see cref="ChunkSize"/>, and returns the item count.
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end)
    {
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
}
