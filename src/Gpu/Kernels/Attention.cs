using ILGPU;

namespace Kiln.Gpu.Kernels;

/// <summary>
/// One step's attention metadata in device memory, as the host uploads it once per step: per token its position
/// and sequence; per sequence where its block ids start and the last position any of its tokens holds (what a
/// non-causal query sees up to); every sequence's block ids, table after table.
/// </summary>
public struct GpuStepContext
{
    public ArrayView<int> Tokens, Positions, Sequences, OutputRows, BlockStarts, LastPositions, BlockIds;
    public int TokenCount, OutputCount, BlockSize;

    /// <summary>The cache row of <paramref name="position"/> in token <paramref name="token"/>'s sequence.</summary>
    public readonly long Row(int token, int position)
    {
        int sequence = Sequences[token];
        return (long)BlockIds[BlockStarts[sequence] + position / BlockSize] * BlockSize + position % BlockSize;
    }
}

/// <summary>One attention call: its tensors, the cache layer, and <see cref="Kiln.Kernels.Attention.AttentionOptions"/>' meanings.</summary>
public struct GpuAttention
{
    public ArrayView<float> Q, K, V, Output, Keys, Values, Scores;
    public int Heads, KvHeads, HeadDim, QCols, KvCols, KvDim, ScoresStride, Window, Causal, Lanes;
    public float Scale, SoftCap;
}

/// <summary>
/// Paged attention in device memory. A step first writes its tokens' k and v rows into the cache
/// (<see cref="WriteRows"/>); then <see cref="Attend"/> works one unit per (token, query head): its lanes score the
/// visible positions (each lane its own positions, reading each position's row through the sequence's block table),
/// take the softmax, and sum the values (each lane its own columns). Sliding windows, soft caps, scales and
/// non-causal sequences mean what the CPU kernel's options mean.
/// </summary>
public static class GpuAttentionKernels
{
    /// <summary>Token t's k and v rows into its position's cache row; a unit is a token.</summary>
    public static void WriteRows(GpuStepContext step, GpuAttention a)
    {
        int lanes = a.Lanes, lane = GpuLaunch.Lane(lanes), stride = GpuLaunch.Workers(lanes);
        for (int t = GpuLaunch.Worker(lanes); t < step.TokenCount; t += stride)
        {
            long row = step.Row(t, step.Positions[t]) * a.KvDim;
            long from = (long)t * a.KvCols;
            for (int c = lane; c < a.KvDim; c += lanes)
            {
                a.Keys[row + c] = a.K[from + c];
                a.Values[row + c] = a.V[from + c];
            }
        }
    }

    public static void Attend(GpuStepContext step, GpuAttention a)
    {
        int lanes = a.Lanes, lane = GpuLaunch.Lane(lanes), stride = GpuLaunch.Workers(lanes), worker = GpuLaunch.Worker(lanes);
        int units = step.TokenCount * a.Heads, group = a.Heads / a.KvHeads, d = a.HeadDim;
        // Each worker owns one row of score scratch, reused for every unit it takes.
        long scores = (long)worker * a.ScoresStride;
        for (int unit = worker; unit < units; unit += stride)
        {
            int t = unit / a.Heads, h = unit % a.Heads;
            int position = step.Positions[t];
            int last = a.Causal != 0 ? position : step.LastPositions[step.Sequences[t]];
            int first = a.Window > 0 && position - a.Window + 1 > 0 ? position - a.Window + 1 : 0;
            long query = (long)t * a.QCols + (long)h * d;
            int column = h / group * d;
            float best = float.NegativeInfinity;
            for (int p = first + lane; p <= last; p += lanes)
            {
                long row = step.Row(t, p) * a.KvDim + column;
                float dot = 0f;
                for (int i = 0; i < d; i++) dot += a.Q[query + i] * a.Keys[row + i];
                float score = dot * a.Scale;
                if (a.SoftCap > 0f) score = a.SoftCap * GpuMath.Tanh(score / a.SoftCap);
                a.Scores[scores + p - first] = score;
                best = GpuMath.Max(best, score);
            }
            best = GpuLaunch.Max(best, lanes);
            float total = 0f;
            for (int p = first + lane; p <= last; p += lanes)
            {
                float weight = GpuMath.Exp(a.Scores[scores + p - first] - best);
                a.Scores[scores + p - first] = weight;
                total += weight;
            }
            total = GpuLaunch.Sum(total, lanes);
            // Every lane reads every weight next: the warp's writes must land first.
            if (lanes > 1) Warp.Barrier();
            float inverse = 1f / total;
            for (int i = lane; i < d; i += lanes)
            {
                float sum = 0f;
                for (int p = first; p <= last; p++) sum += a.Scores[scores + p - first] * a.Values[step.Row(t, p) * a.KvDim + column + i];
                a.Output[query + i] = sum * inverse;
            }
            if (lanes > 1) Warp.Barrier(); // the next unit overwrites the scores
        }
    }

    /// <summary>Rows of a and b side by side (Ops.Concat); a unit is a row.</summary>
    public static void Concat(ArrayView<float> a, ArrayView<float> b, ArrayView<float> output, int rows, int aCols, int bCols, int lanes)
    {
        int lane = GpuLaunch.Lane(lanes), stride = GpuLaunch.Workers(lanes), cols = aCols + bCols;
        for (int t = GpuLaunch.Worker(lanes); t < rows; t += stride)
            for (int c = lane; c < cols; c += lanes)
                output[(long)t * cols + c] = c < aCols ? a[(long)t * aCols + c] : b[(long)t * bCols + c - aCols];
    }
}
