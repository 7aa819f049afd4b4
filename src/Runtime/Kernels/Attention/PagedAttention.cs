using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Kiln.Kernels.Elementwise;
using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
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
/// sequence's block table once for all of them (F16 rows widened in registers — short of the exponent rebias, folded
/// into the query and the weights, while the cache holds only finite halves — int8 ones dequantized into scratch),
/// then softmax and the weighted sum of values; F16 walks fetch each next block's rows while reading one. A plan fills
/// one per attention call and runs it on its pool; the rows it reads are the window the options leave visible.
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
    /// <see cref="KvPerItem"/> and <see cref="ChunkSize"/>, and returns the item count. When the context names sharing
    /// groups (and no window hides part of a prefix), each group adds items of its own: a batch of its tokens (all of
    /// them when the scratch holds them) and a chunk of KV heads, reading the shared prefix once for the whole batch;
    /// the group's tokens get no per-token items.
    /// </summary>
    public int Plan(int tokens, int threads)
    {
        _groupItems = 0;
        _groupBatch = 0;
        if (Context.SharedPrefixCount > 0 && Options.Window == 0) PlanSharedPrefixes(threads);
        int independent = _groupItems > 0 ? Context.UngroupedTokens.Length : tokens;
        int perToken = Math.Clamp((2 * threads + independent - 1) / Math.Max(independent, 1), 1, KvHeads);
        KvPerItem = (KvHeads + perToken - 1) / perToken;
        PerToken = (KvHeads + KvPerItem - 1) / KvPerItem;
        _independentItems = independent * PerToken;
        int items = _independentItems + _groupItems;
        ChunkSize = Math.Max(1, (items + MaxChunks - 1) / MaxChunks);
        return items;
    }

    // Items past _independentItems are sharing groups' (batch of tokens, chunk of _groupKvPerItem KV heads) items; 0
    // when none. A group item scores _groupTileKeys prefix positions at a time, as register tiles when _groupTiled.
    private int _independentItems, _groupItems, _groupBatch, _groupKvPerItem, _groupKvChunks, _groupTileKeys;
    private bool _groupTiled;

    /// <summary>Whether the last <see cref="Plan"/> has sharing groups take their prefixes as register tiles (<see cref="PrefixTiles"/>).</summary>
    internal readonly bool PrefixAsTiles => _groupItems > 0 && _groupTiled;

    /// <summary>Prefix positions a group item scores at once: 64, whole blocks, at most the shortest prefix.</summary>
    private const int PrefixTileKeys = 64;

    /// <summary>
    /// Group items: the KV heads in as many chunks as there are threads (each chunk's prefix rows are then read once
    /// per step), and every token of a group in one batch when the score scratch holds it, else in smaller batches
    /// (<see cref="TiledScratch"/> on the AVX-512 path, with a tile of a block when 64 positions do not fit; otherwise,
    /// or when not even one token fits that way, per batch token and head the prefix's max and sum, per token of one
    /// KV head its query and output rows and a tile of prefix scores); a batch token's suffix scores must fit beside
    /// the statistics too. No groups when a single token does not fit.
    /// </summary>
    private void PlanSharedPrefixes(int threads)
    {
        int group = Heads / KvHeads, blockSize = Cache.BlockSize, mostTokens = 0, shortestPrefix = int.MaxValue, longestSuffix = 0, items = 0;
        for (int g = 0; g < Context.SharedPrefixCount; g++)
        {
            mostTokens = Math.Max(mostTokens, Context.SharedPrefixTokens(g).Length);
            int prefix = Context.SharedPrefixLength(g);
            shortestPrefix = Math.Min(shortestPrefix, prefix);
            foreach (int sequence in Context.SharedPrefixSequences(g))
                longestSuffix = Math.Max(longestSuffix, Context.LastPosition(sequence) + 1 - prefix);
        }
        int kvPerItem = (KvHeads + Math.Min(KvHeads, threads) - 1) / Math.Min(KvHeads, threads), heads = kvPerItem * group;
        int wholeTile = Math.Min(shortestPrefix, Math.Max(1, PrefixTileKeys / blockSize) * blockSize), tileKeys = wholeTile, batch = 0;
        _groupTiled = KernelPaths.Uses512Bits && HeadDim % 16 == 0;
        if (_groupTiled)
        {
            batch = TiledBatch(mostTokens, heads, longestSuffix, tileKeys);
            if (batch < 1 && tileKeys > blockSize) batch = TiledBatch(mostTokens, heads, longestSuffix, tileKeys = blockSize);
            _groupTiled = batch >= 1;
        }
        if (!_groupTiled)
        {
            tileKeys = wholeTile;
            batch = RowsBatch(heads, longestSuffix, tileKeys);
            if (batch < 1 && tileKeys > blockSize) batch = RowsBatch(heads, longestSuffix, tileKeys = blockSize);
        }
        if (batch < 1) return;
        _groupBatch = Math.Min(batch, mostTokens);
        _groupKvPerItem = kvPerItem;
        _groupKvChunks = (KvHeads + kvPerItem - 1) / kvPerItem;
        _groupTileKeys = tileKeys;
        for (int g = 0; g < Context.SharedPrefixCount; g++)
            items += (Context.SharedPrefixTokens(g).Length + _groupBatch - 1) / _groupBatch * _groupKvChunks;
        _groupItems = items;
    }

    /// <summary>
    /// The most tokens a row-by-row group item's scratch holds (<see cref="PrefixByRows"/>): per token and head the
    /// prefix's max and sum beside its suffix scores, and per token of one KV head its query and output rows and a
    /// tile of prefix scores; 0 when not one.
    /// </summary>
    private readonly int RowsBatch(int heads, int longestSuffix, int tileKeys) =>
        Math.Min((ScoresStride - heads * longestSuffix) / (2 * heads), ScoresStride / (2 * heads + Heads / KvHeads * (2 * HeadDim + tileKeys)));

    /// <summary>The most tokens (up to <paramref name="mostTokens"/>) a tiled group item's scratch holds; 0 when not one.</summary>
    private readonly int TiledBatch(int mostTokens, int heads, int longestSuffix, int tileKeys)
    {
        int batch = mostTokens;
        while (batch > 0 && (TiledScratch(batch, heads, Heads / KvHeads, HeadDim, tileKeys) > ScoresStride || 2L * batch * heads + (long)heads * longestSuffix > ScoresStride)) batch--;
        return batch;
    }

    /// <summary>
    /// Floats of scratch a tiled group item of <paramref name="batch"/> tokens takes (see <see cref="PrefixTiles"/>):
    /// per token and head of its chunk the prefix's max and sum; for one KV head at a time its query rows transposed
    /// (padded to 16), their output accumulators, running max, sum and correction, and a tile of transposed scores
    /// and of widened rows.
    /// </summary>
    private static long TiledScratch(long batch, int heads, int group, int headDim, int tileKeys)
    {
        long rows = batch * group, padded = (rows + 15) & ~15L;
        return 2L * batch * heads + headDim * padded + rows * headDim + 3 * padded + tileKeys * (padded + headDim);
    }

    /// <summary>Query rows of one KV head that a chunk's scratch always holds as one tiled batch (two 16-wide columns of the tiles).</summary>
    private const int AssuredTiledRows = 32;

    /// <summary>
    /// Floats of score scratch one chunk needs: every query head's row over <paramref name="maxContext"/> positions,
    /// and at least a tiled sharing-group item of <see cref="AssuredTiledRows"/> query rows with every head in its
    /// chunk. Without that floor a short context cut a group into batches of a token or two, each reading the whole
    /// prefix again: 32 sequences sharing 128 positions took 3× the per-sequence time.
    /// </summary>
    public static int ScoresPerChunk(int maxContext, int heads, int headDim)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(heads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(headDim);
        return checked((int)Math.Max((long)maxContext * heads, TiledScratch(AssuredTiledRows, heads, group: 1, headDim, PrefixTileKeys)));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end)
    {
        // Items come in chunks of ChunkSize from a multiple of it: the chunk's own scratch.
        int chunk = start / ChunkSize;
        var scores = Scores.Slice(chunk * ScoresStride, ScoresStride);
        var gather = Gather.Slice(chunk * GatherStride, GatherStride);
        var positions = Context.Positions;
        int group = Heads / KvHeads, blockSize = Cache.BlockSize;
        bool halves = Cache.Storage == KvStorage.F16, finite = Cache.HoldsOnlyFiniteHalves;
        var independentTokens = _groupItems > 0 ? Context.UngroupedTokens : default;
        for (int item = start; item < end; item++)
        {
            if (item >= _independentItems)
            {
                SharedPrefixItem(item - _independentItems, scores, gather);
                continue;
            }
            int t = _groupItems > 0 ? independentTokens[item / PerToken] : item / PerToken, kv0 = item % PerToken * KvPerItem, kv1 = Math.Min(KvHeads, kv0 + KvPerItem);
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
                if (halves && position + count <= last)
                    PrefetchNextBlock(blocks[b + 1], Math.Min(blockSize, last - position - count + 1), kv0 * HeadDim, columns, values: false);
                if (halves)
                    VectorMath.AttentionScores(query, heads, HeadDim, group, KvBlocks.HalfKeys(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns), KvCols, count, Options.Scale, weights, rows, position - first, finite);
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
                if (halves && position + count <= last)
                    PrefetchNextBlock(blocks[b + 1], Math.Min(blockSize, last - position - count + 1), kv0 * HeadDim, columns, values: true);
                if (halves)
                    VectorMath.AttentionValues(weights, rows, position - first, heads, HeadDim, group, KvBlocks.HalfValues(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns), KvCols, count, output, finite);
                else
                    VectorMath.AttentionValues(weights, rows, position - first, heads, HeadDim, group, KvBlocks.Values(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns, gather), KvCols, count, output);
                position += count;
            }
        }
    }

    /// <summary>
    /// One sharing-group item: a batch of the group's tokens and a chunk of KV heads. The prefix part, KV head by KV
    /// head, reads each shared block once for the whole batch, a tile of <see cref="_groupTileKeys"/> positions at a
    /// time, with a running max and sum per score row (online softmax, as FlashAttention keeps it): as register tiles
    /// (<see cref="PrefixTiles"/>) on the AVX-512 path, else row by row (<see cref="PrefixByRows"/>); the accumulators
    /// go to the output rows, unnormalized. The suffix part is per token, every head of the chunk over the same rows
    /// (read once, as the per-sequence path reads them), and the two are merged exactly: with m = max(m_prefix,
    /// m_suffix), the parts are weighted e^(m_part − m) and the sum divided by their weighted sums of exponentials
    /// (log-sum-exp).
    /// </summary>
    private readonly void SharedPrefixItem(int item, Span<float> scratch, Span<float> gather)
    {
        int g = 0, batches;
        while (item >= (batches = (Context.SharedPrefixTokens(g).Length + _groupBatch - 1) / _groupBatch) * _groupKvChunks)
        {
            item -= batches * _groupKvChunks;
            g++;
        }
        int kv0 = item % _groupKvChunks * _groupKvPerItem, kv1 = Math.Min(KvHeads, kv0 + _groupKvPerItem), first = item / _groupKvChunks * _groupBatch;
        var groupTokens = Context.SharedPrefixTokens(g);
        var tokens = groupTokens.Slice(first, Math.Min(_groupBatch, groupTokens.Length - first));
        int group = Heads / KvHeads, blockSize = Cache.BlockSize, prefix = Context.SharedPrefixLength(g), heads = (kv1 - kv0) * group;
        bool halves = Cache.Storage == KvStorage.F16, finite = Cache.HoldsOnlyFiniteHalves;
        var prefixBlocks = Context.BlockTable(Context.SharedPrefixSequences(g)[0]);
        // Scratch: per (token, head of the chunk) the prefix's max and Σ e^(s − max), row r's of KV head kv at
        // 2·((r / group)·heads + (kv − kv0)·group + r % group); then the prefix part's work for one KV head at a
        // time; later one token's suffix score rows.
        var statistics = scratch[..(2 * tokens.Length * heads)];
        var work = scratch[(2 * tokens.Length * heads)..];
        for (int kv = kv0; kv < kv1; kv++)
        {
            if (_groupTiled) PrefixTiles(tokens, kv, prefixBlocks, prefix, statistics, (kv - kv0) * group, heads, work, gather, first: kv == kv0, last: kv == kv1 - 1);
            else PrefixByRows(tokens, kv, prefixBlocks, prefix, statistics, (kv - kv0) * group, heads, work, gather);
        }

        // Suffix part, token by token over every head of the chunk, in the scratch the prefix is done with; then the merge.
        var positions = Context.Positions;
        int columns = (kv1 - kv0) * HeadDim;
        for (int i = 0; i < tokens.Length; i++)
        {
            int t = tokens[i], sequence = Context.SequenceOf(t);
            int last = Options.Causal ? positions[t] : Context.LastPosition(sequence), length = last - prefix + 1;
            var blocks = Context.BlockTable(sequence);
            var query = Q.Slice(t * QCols + kv0 * group * HeadDim, heads * HeadDim);
            var output = Output.Slice(t * QCols + kv0 * group * HeadDim, heads * HeadDim);
            var suffix = work[..(heads * length)];
            if (halves)
            {
                // This token's first values, and the next token's first keys: blocks of their own, away from these.
                PrefetchNextBlock(blocks[prefix / blockSize], Math.Min(blockSize, length), kv0 * HeadDim, columns, values: true);
                if (i + 1 < tokens.Length)
                {
                    int next = Context.SequenceOf(tokens[i + 1]), nextLast = Options.Causal ? positions[tokens[i + 1]] : Context.LastPosition(next);
                    PrefetchNextBlock(Context.BlockTable(next)[prefix / blockSize], Math.Min(blockSize, nextLast - prefix + 1), kv0 * HeadDim, columns, values: false);
                }
            }
            for (int position = prefix; position <= last;)
            {
                int b = position / blockSize, offset = position % blockSize, count = Math.Min(blockSize - offset, last - position + 1);
                if (halves && position + count <= last)
                    PrefetchNextBlock(blocks[b + 1], Math.Min(blockSize, last - position - count + 1), kv0 * HeadDim, columns, values: false);
                if (halves)
                    VectorMath.AttentionScores(query, heads, HeadDim, group, KvBlocks.HalfKeys(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns), KvCols, count, Options.Scale, suffix, length, position - prefix, finite);
                else
                    VectorMath.AttentionScores(query, heads, HeadDim, group, KvBlocks.Keys(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns, gather), KvCols, count, Options.Scale, suffix, length, position - prefix);
                position += count;
            }
            if (Options.SoftCap > 0) SoftCap(suffix, Options.SoftCap);
            var tokenStatistics = statistics.Slice(2 * i * heads, 2 * heads);
            for (int h = 0; h < heads; h++)
            {
                float suffixSum = VectorMath.ExpSum(suffix.Slice(h * length, length), out float suffixMax);
                float prefixMax = tokenStatistics[2 * h], max = MathF.Max(prefixMax, suffixMax);
                float prefixWeight = MathF.Exp(prefixMax - max), suffixWeight = MathF.Exp(suffixMax - max);
                VectorMath.Scale(output.Slice(h * HeadDim, HeadDim), prefixWeight);
                VectorMath.Scale(suffix.Slice(h * length, length), suffixWeight);
                tokenStatistics[2 * h + 1] = tokenStatistics[2 * h + 1] * prefixWeight + suffixSum * suffixWeight;
            }
            for (int position = prefix; position <= last;)
            {
                int b = position / blockSize, offset = position % blockSize, count = Math.Min(blockSize - offset, last - position + 1);
                if (halves && position + count <= last)
                    PrefetchNextBlock(blocks[b + 1], Math.Min(blockSize, last - position - count + 1), kv0 * HeadDim, columns, values: true);
                if (halves)
                    VectorMath.AttentionValues(suffix, length, position - prefix, heads, HeadDim, group, KvBlocks.HalfValues(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns), KvCols, count, output, finite);
                else
                    VectorMath.AttentionValues(suffix, length, position - prefix, heads, HeadDim, group, KvBlocks.Values(Cache, Layer, blocks[b], offset, count, kv0 * HeadDim, columns, gather), KvCols, count, output);
                position += count;
            }
            for (int h = 0; h < heads; h++) VectorMath.Scale(output.Slice(h * HeadDim, HeadDim), 1f / tokenStatistics[2 * h + 1]);
        }
    }

    /// <summary>
    /// Where score row <paramref name="r"/> (token r / group, query head r mod group) of the KV head whose rows start at
    /// <paramref name="statisticsAt"/> of an item's <paramref name="heads"/> keeps its prefix max (and, next to it, its sum).
    /// </summary>
    private static int StatisticsIndex(int r, int group, int heads, int statisticsAt) => 2 * (r / group * heads + statisticsAt + r % group);

    /// <summary>
    /// The prefix part of a group item for KV head <paramref name="kv"/> on the AVX-512 path, as small GEMMs with no
    /// horizontal sums (<see cref="AttentionTiles.OuterProduct"/>). The batch's query rows are transposed once into
    /// scratch (element d of every row side by side, padded to 16 rows with zeros); then per tile of prefix positions
    /// the keys are widened once into scratch and the scores computed transposed, a row per key and a column per
    /// query, so that each query's running max and sum are kept lane-wise, 16 queries a vector, with no horizontal
    /// max or sum (<see cref="OnlineSoftmaxColumns"/>); then the values widened into the same scratch and each
    /// block of 8 queries' accumulators rescaled by its correction as the tile's weighted values are added. Each tile's
    /// successor is fetched while it is computed, across KV heads too: <paramref name="first"/> and
    /// <paramref name="last"/> say whether this is the item's first KV head (no tile before fetched its first one) and last.
    /// </summary>
    private readonly unsafe void PrefixTiles(ReadOnlySpan<int> tokens, int kv, ReadOnlySpan<int> prefixBlocks, int prefix, Span<float> statistics, int statisticsAt,
        int heads, Span<float> work, Span<float> gather, bool first, bool last)
    {
        int group = Heads / KvHeads, rows = tokens.Length * group, padded = (rows + 15) & ~15, tileKeys = _groupTileKeys, width = group * HeadDim, column = kv * HeadDim;
        var queriesT = work[..(HeadDim * padded)];
        var sums = work.Slice(HeadDim * padded, rows * HeadDim);
        var runningMax = work.Slice(HeadDim * padded + rows * HeadDim, padded);
        var runningSum = work.Slice(HeadDim * padded + rows * HeadDim + padded, padded);
        var correction = work.Slice(HeadDim * padded + rows * HeadDim + 2 * padded, padded);
        var scoresT = work.Slice(HeadDim * padded + rows * HeadDim + 3 * padded, tileKeys * padded);
        var tileRows = work.Slice(HeadDim * padded + rows * HeadDim + 3 * padded + tileKeys * padded, tileKeys * HeadDim);
        // Finite F16 rows are widened short of the exponent rebias (Fp16.ToSingleUnrebiased, 3 operations instead of
        // 10), which goes into the queries (while each stays below 2^16, so times 2^112 is finite) and the weights.
        if (Cache.Storage == KvStorage.F16 && first) // the item's first tile, while the queries are transposed (later KV heads' come during the one before)
            for (int p = 0; p < Math.Min(tileKeys, prefix); p += 8) PrefetchPrefixRows(prefixBlocks, p, Math.Min(8, Math.Min(tileKeys, prefix) - p), column);
        bool unrebiased = Cache.Storage == KvStorage.F16 && Cache.HoldsOnlyFiniteHalves;
        for (int i = 0; i < tokens.Length && unrebiased; i++)
            unrebiased = VectorMath.Rebiasable(Q.Slice(tokens[i] * QCols + column * group, width), 1, width, width);
        float queryFactor = unrebiased ? Fp16.Rebias : 1f;
        queriesT.Clear();
        sums.Clear();
        runningMax.Fill(float.NegativeInfinity);
        runningSum.Clear();
        var scale = Vector512.Create(Options.Scale);
        fixed (float* qT = queriesT, s = scoresT, k = tileRows, o = sums, max = runningMax, sum = runningSum, kept = correction)
        {
            for (int i = 0; i < tokens.Length; i++)
            {
                float* query = Q.Pointer + (long)tokens[i] * QCols + column * group;
                for (int j = 0; j < group; j++)
                    for (int d = 0; d < HeadDim; d++) qT[d * padded + i * group + j] = query[j * HeadDim + d] * queryFactor;
            }
            for (int p0 = 0; p0 < prefix; p0 += tileKeys)
            {
                int keys = Math.Min(tileKeys, prefix - p0); // whole blocks: the tile and the prefix are
                // The tile after this one: this KV head's next, or the next KV head's first.
                int next = p0 + keys < prefix ? p0 + keys : 0, nextColumn = p0 + keys < prefix ? column : column + HeadDim;
                int nextKeys = Cache.Storage == KvStorage.F16 && (p0 + keys < prefix || !last) ? Math.Min(tileKeys, prefix - next) : 0;
                TileRows(keys: true, prefixBlocks, p0, keys, column, tileRows, gather, unrebiased);
                for (int key = 0; key < keys; key += 8)
                {
                    // The next tile's rows, 8 at a time between the products: a burst would only stall on full miss buffers.
                    if (key < nextKeys) PrefetchPrefixRows(prefixBlocks, next + key, Math.Min(8, nextKeys - key), nextColumn);
                    for (int q = 0; q < padded; q += 32)
                        AttentionTiles.OuterProduct(k + key * HeadDim, HeadDim, 1, Math.Min(8, keys - key), qT + q, padded, HeadDim, two: q + 16 < padded, scale, s + key * padded + q, padded);
                }
                if (Options.SoftCap > 0) SoftCap(scoresT[..(keys * padded)], Options.SoftCap);
                OnlineSoftmaxColumns(s, keys, padded, max, sum, kept, queryFactor);
                TileRows(keys: false, prefixBlocks, p0, keys, column, tileRows, gather, unrebiased);
                for (int q = 0; q < rows; q += 8)
                    for (int d = 0; d < HeadDim; d += 32)
                        AttentionTiles.OuterProduct(s + q, 1, padded, Math.Min(8, rows - q), k + d, HeadDim, keys, two: d + 16 < HeadDim, Vector512<float>.One, o + q * HeadDim + d, HeadDim, kept + q);
            }
        }
        for (int r = 0; r < rows; r++)
        {
            int at = StatisticsIndex(r, group, heads, statisticsAt);
            statistics[at] = runningMax[r];
            statistics[at + 1] = runningSum[r];
        }
        for (int i = 0; i < tokens.Length; i++) sums.Slice(i * width, width).CopyTo(Output.Slice(tokens[i] * QCols + column * group, width));
    }

    /// <summary>
    /// Each column's online softmax step over a tile of <paramref name="keys"/> rows of transposed scores (a column per
    /// query, <paramref name="padded"/> wide), 16 columns a vector: the column's new max, its scores replaced by
    /// e^(s − max), its running sum corrected by e^(old max − max) and the tile's exponentials added; the correction
    /// is kept for the accumulators (0 on a column's first tile, which has nothing to correct: −∞ − −∞ would be NaN).
    /// The weights are stored times <paramref name="weightFactor"/> (the rebias that unrebiased values leave out).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void OnlineSoftmaxColumns(float* scoresT, int keys, int padded, float* runningMax, float* runningSum, float* correction, float weightFactor)
    {
        var factor = Vector512.Create(weightFactor);
        var negativeInfinity = Vector512.Create(float.NegativeInfinity);
        for (int q = 0; q < padded; q += 16)
        {
            var previous = Vector512.Load(runningMax + q);
            var max = previous;
            for (int key = 0; key < keys; key++) max = Vector512.Max(max, Vector512.Load(scoresT + key * padded + q));
            var sum = Vector512<float>.Zero;
            for (int key = 0; key < keys; key++)
            {
                var e = Lanes.Exp(Vector512.Load(scoresT + key * padded + q) - max);
                (e * factor).Store(scoresT + key * padded + q);
                sum += e;
            }
            var kept = Vector512.ConditionalSelect(Vector512.Equals(previous, negativeInfinity), Vector512<float>.Zero, Lanes.Exp(previous - max));
            kept.Store(correction + q);
            Vector512.FusedMultiplyAdd(Vector512.Load(runningSum + q), kept, sum).Store(runningSum + q);
            max.Store(runningMax + q);
        }
    }

    /// <summary>
    /// Prefix positions <paramref name="first"/>..+<paramref name="count"/> (whole blocks) of one KV head (its columns
    /// from <paramref name="column"/>) as floats into <paramref name="tile"/>, HeadDim apart: F16 widened in registers
    /// (<paramref name="unrebiased"/>: short of the exponent rebias), int8 dequantized, F32 copied — once for every
    /// query of the batch, and contiguous across the prefix's blocks.
    /// </summary>
    private readonly void TileRows(bool keys, ReadOnlySpan<int> blocks, int first, int count, int column, Span<float> tile, Span<float> gather, bool unrebiased)
    {
        int blockSize = Cache.BlockSize;
        for (int p = first; p < first + count; p += blockSize)
        {
            int block = blocks[p / blockSize], rows = Math.Min(blockSize, first + count - p);
            var destination = tile.Slice((p - first) * HeadDim, rows * HeadDim);
            if (Cache.Storage == KvStorage.F16)
            {
                var halves = keys ? KvBlocks.HalfKeys(Cache, Layer, block, 0, rows, column, HeadDim) : KvBlocks.HalfValues(Cache, Layer, block, 0, rows, column, HeadDim);
                ref short from = ref Unsafe.As<Half, short>(ref MemoryMarshal.GetReference(halves));
                ref float to = ref MemoryMarshal.GetReference(destination);
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < HeadDim; c += 16)
                    {
                        // Sign-extended: ToSingle reads only the low 16 bits, ToSingleUnrebiased wants the sign copied up.
                        var bits = Vector512.WidenLower(Vector256.LoadUnsafe(ref from, (nuint)(r * KvCols + c)).ToVector512Unsafe());
                        (unrebiased ? Fp16.ToSingleUnrebiased(bits) : Fp16.ToSingle(bits.AsUInt32())).StoreUnsafe(ref to, (nuint)(r * HeadDim + c));
                    }
            }
            else
            {
                var floats = keys ? KvBlocks.Keys(Cache, Layer, block, 0, rows, column, HeadDim, gather) : KvBlocks.Values(Cache, Layer, block, 0, rows, column, HeadDim, gather);
                for (int r = 0; r < rows; r++) floats.Slice(r * KvCols, HeadDim).CopyTo(destination.Slice(r * HeadDim, HeadDim));
            }
        }
    }

    /// <summary>
    /// F16 keys and values of prefix positions <paramref name="first"/>..+<paramref name="count"/> (within one block's
    /// rest) of one KV head, fetched ahead of their tile: the prefix's blocks are apart and each row is read only in
    /// part, so the hardware prefetcher does not run ahead of the tiles.
    /// </summary>
    private readonly void PrefetchPrefixRows(ReadOnlySpan<int> blocks, int first, int count, int column)
    {
        int blockSize = Cache.BlockSize, block = blocks[first / blockSize], offset = first % blockSize, rows = Math.Min(count, blockSize - offset);
        PrefetchNextBlock(block, rows, column, HeadDim, values: false, offset);
        PrefetchNextBlock(block, rows, column, HeadDim, values: true, offset);
    }

    /// <summary>
    /// The prefix part of a group item for KV head <paramref name="kv"/> where <see cref="PrefixTiles"/> does not run
    /// (no AVX-512, a head size not a multiple of 16, or too little scratch): a tile of <see cref="_groupTileKeys"/>
    /// positions at a time, queries × keys scores (<see cref="VectorMath.AttentionScoresTile{T}"/>, the rows loaded
    /// once for every query), then per score row its running max and sum of exponentials (a new max rescales what the
    /// row has summed), then the tile's weighted values into the row's accumulator.
    /// </summary>
    private readonly void PrefixByRows(ReadOnlySpan<int> tokens, int kv, ReadOnlySpan<int> prefixBlocks, int prefix, Span<float> statistics, int statisticsAt,
        int heads, Span<float> work, Span<float> gather)
    {
        int group = Heads / KvHeads, blockSize = Cache.BlockSize, tileKeys = _groupTileKeys, rows = tokens.Length * group, width = group * HeadDim, column = kv * HeadDim;
        bool halves = Cache.Storage == KvStorage.F16;
        var queries = work[..(rows * HeadDim)];
        var sums = work.Slice(rows * HeadDim, rows * HeadDim);
        var tile = work.Slice(2 * rows * HeadDim, rows * tileKeys);
        for (int i = 0; i < tokens.Length; i++) Q.Slice(tokens[i] * QCols + column * group, width).CopyTo(queries.Slice(i * width, width));
        sums.Clear();
        for (int r = 0; r < rows; r++)
        {
            int at = StatisticsIndex(r, group, heads, statisticsAt);
            statistics[at] = float.NegativeInfinity;
            statistics[at + 1] = 0;
        }
        for (int p0 = 0; p0 < prefix; p0 += tileKeys)
        {
            int keys = Math.Min(tileKeys, prefix - p0); // whole blocks: the tile and the prefix are
            for (int p = p0; p < p0 + keys; p += blockSize)
            {
                if (halves)
                    VectorMath.AttentionScoresTile(queries, rows, HeadDim, KvBlocks.HalfKeys(Cache, Layer, prefixBlocks[p / blockSize], 0, blockSize, column, HeadDim), KvCols, blockSize, Options.Scale, tile, tileKeys, p - p0);
                else
                    VectorMath.AttentionScoresTile(queries, rows, HeadDim, KvBlocks.Keys(Cache, Layer, prefixBlocks[p / blockSize], 0, blockSize, column, HeadDim, gather), KvCols, blockSize, Options.Scale, tile, tileKeys, p - p0);
            }
            for (int r = 0; r < rows; r++)
            {
                var scores = tile.Slice(r * tileKeys, keys);
                if (Options.SoftCap > 0) SoftCap(scores, Options.SoftCap);
                int at = StatisticsIndex(r, group, heads, statisticsAt);
                float runningMax = statistics[at], max = MathF.Max(runningMax, VectorMath.Max(scores));
                if (max > runningMax && runningMax > float.NegativeInfinity)
                {
                    float rescale = MathF.Exp(runningMax - max);
                    VectorMath.Scale(sums.Slice(r * HeadDim, HeadDim), rescale);
                    statistics[at + 1] *= rescale;
                }
                statistics[at] = max;
                statistics[at + 1] += VectorMath.ExpSum(scores, max);
            }
            for (int p = p0; p < p0 + keys; p += blockSize)
            {
                if (halves)
                    VectorMath.AttentionValuesTile(tile, tileKeys, p - p0, rows, HeadDim, KvBlocks.HalfValues(Cache, Layer, prefixBlocks[p / blockSize], 0, blockSize, column, HeadDim), KvCols, blockSize, sums);
                else
                    VectorMath.AttentionValuesTile(tile, tileKeys, p - p0, rows, HeadDim, KvBlocks.Values(Cache, Layer, prefixBlocks[p / blockSize], 0, blockSize, column, HeadDim, gather), KvCols, blockSize, sums);
            }
        }
        for (int i = 0; i < tokens.Length; i++) sums.Slice(i * width, width).CopyTo(Output.Slice(tokens[i] * QCols + column * group, width));
    }

    /// <summary>
    /// F16 rows of a per-sequence walk's next block, fetched a block ahead (a paged cache's blocks are apart, so the
    /// hardware prefetcher cannot follow): its keys while the current block is scored, its values while weighed.
    /// </summary>
    private readonly void PrefetchNextBlock(int block, int rows, int firstColumn, int columns, bool values, int offset = 0) =>
        VectorMath.PrefetchNextBlock(values ? KvBlocks.HalfValues(Cache, Layer, block, offset, rows, firstColumn, columns) : KvBlocks.HalfKeys(Cache, Layer, block, offset, rows, firstColumn, columns),
            KvCols, rows, columns, values);

    /// <summary>s ← cap·tanh(s/cap) over every score (Gemma-2's attention logit soft-capping); <see cref="StepAttention"/>'s too.</summary>
    internal static void SoftCap(Span<float> scores, float cap)
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
