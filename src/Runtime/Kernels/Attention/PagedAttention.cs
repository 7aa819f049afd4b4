using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
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
/// one per attention call and runs it on its pool (<see cref="Run"/>); the rows it reads are the window the options
/// leave visible. A step's sharing groups first have their prefixes attended, once per group, in a run of their own.
/// </summary>
public struct PagedAttention : IParallelWork
{
    /// <summary>Work items are cut into at most this many chunks, each owning one row of score scratch.</summary>
    public const int MaxChunks = 32;

    public FloatBuffer Q, Output, Scores, Gather;

    /// <summary>
    /// Per token and query head, the shared prefix's softmax max and sum (token t's head h at 2·(t·Heads + h)), kept
    /// from the prefix run for the token run's merge: <see cref="PrefixStatisticsFloats"/> floats when a step has
    /// sharing groups; unused otherwise.
    /// </summary>
    public FloatBuffer PrefixStatistics;

    public KvCache Cache;
    public AttentionContext Context;
    public int ScoresStride, GatherStride, ChunkSize, PerToken, KvPerItem, Layer, Heads, KvHeads, HeadDim, QCols, KvCols;
    public AttentionOptions Options;

    /// <summary>Floats of <see cref="PrefixStatistics"/> a step of <paramref name="tokens"/> tokens needs (its widest attention's <paramref name="heads"/>).</summary>
    public static int PrefixStatisticsFloats(int tokens, int heads) => checked(2 * tokens * heads);

    /// <summary>
    /// Items for <paramref name="tokens"/> tokens on <paramref name="threads"/> threads, and returns their count:
    /// first, when the context names sharing groups (and no window hides part of a prefix), <see cref="PrefixItems"/>
    /// prefix items: a batch of a group's tokens (all of them when the scratch holds them) and a chunk of KV heads,
    /// reading the shared prefix once for the whole batch; then each token's KV heads in a few chunks, so that one
    /// token's heads still spread over the threads (decode), where a grouped token reads only its own positions and
    /// merges them with its prefix's part. Sets <see cref="PerToken"/>, <see cref="KvPerItem"/> and
    /// <see cref="ChunkSize"/> (the token items').
    /// </summary>
    public int Plan(int tokens, int threads)
    {
        _groupItems = 0;
        _groupBatch = 0;
        if (Context.SharedPrefixCount > 0 && Options.Window == 0) PlanSharedPrefixes(threads);
        if (_groupItems > 0 && PrefixStatistics.Length < PrefixStatisticsFloats(tokens, Heads))
            throw new InvalidOperationException($"PrefixStatistics holds {PrefixStatistics.Length} floats; a step of {tokens} tokens with sharing groups needs {PrefixStatisticsFloats(tokens, Heads)} (PrefixStatisticsFloats).");
        int perToken = Math.Clamp((2 * threads + tokens - 1) / Math.Max(tokens, 1), 1, KvHeads);
        KvPerItem = (KvHeads + perToken - 1) / perToken;
        PerToken = (KvHeads + KvPerItem - 1) / KvPerItem;
        // A chunk is a run of a thread's items (about 4 per thread), so that each item can fetch its successor's first rows.
        ChunkSize = Math.Max((tokens * PerToken + MaxChunks - 1) / MaxChunks, Math.Max(1, tokens * PerToken / (4 * threads)));
        _groupChunkSize = Math.Max(1, (_groupItems + MaxChunks - 1) / MaxChunks);
        return _groupItems + tokens * PerToken;
    }

    /// <summary>Items of the last <see cref="Plan"/> that attend sharing groups' prefixes: the first ones, run before the rest.</summary>
    public readonly int PrefixItems => _groupItems;

    /// <summary>
    /// Plans the call for <paramref name="tokens"/> tokens and runs it on <paramref name="pool"/>: the prefix items,
    /// if any, in a run of their own (a token's merge needs every KV chunk of its prefix part done), then the token items.
    /// </summary>
    public void Run(WorkerPool pool, int tokens)
    {
        int items = Plan(tokens, pool.ThreadCount);
        if (_groupItems > 0) RunItems(pool, 0, _groupItems, _groupChunkSize);
        RunItems(pool, _groupItems, items - _groupItems, ChunkSize);
    }

    private void RunItems(WorkerPool pool, int first, int count, int chunkSize)
    {
        _runFirstItem = first;
        _runChunkSize = chunkSize;
        pool.Run(count, chunkSize, this);
    }

    // The first _groupItems items are sharing groups' (batch of tokens, chunk of _groupKvPerItem KV heads) prefix
    // items; 0 when none. A group item scores _groupTileKeys prefix positions at a time, as register tiles when
    // _groupTiled. A pool run covers items _runFirstItem.. in chunks of _runChunkSize.
    private int _groupItems, _groupBatch, _groupKvPerItem, _groupKvChunks, _groupKvTogether, _groupTileKeys, _groupChunkSize, _runFirstItem, _runChunkSize;
    private bool _groupTiled;

    /// <summary>Whether the last <see cref="Plan"/> has sharing groups take their prefixes as register tiles (<see cref="PrefixTiles"/>).</summary>
    internal readonly bool PrefixAsTiles => _groupItems > 0 && _groupTiled;

    /// <summary>KV heads a tiled prefix item of the last <see cref="Plan"/> takes tile by tile together.</summary>
    internal readonly int PrefixKvHeadsTogether => PrefixAsTiles ? _groupKvTogether : 0;

    /// <summary>Prefix positions a group item scores at once: 64, whole blocks, at most the shortest prefix.</summary>
    private const int PrefixTileKeys = 64;

    /// <summary>
    /// Group items: the KV heads in as many chunks as there are threads (each chunk's prefix rows are then read once
    /// per step), and every token of a group in one batch when the score scratch holds it, else in smaller batches
    /// (<see cref="TiledScratch"/> on the AVX-512 path, with a tile of a block when 64 positions do not fit, then as
    /// many of the chunk's KV heads together as still fit; otherwise, or when not even one token fits that way, per
    /// token of one KV head its query and output rows and a tile of prefix scores). No groups when a single token
    /// does not fit.
    /// </summary>
    private void PlanSharedPrefixes(int threads)
    {
        int group = Heads / KvHeads, blockSize = Cache.BlockSize, mostTokens = 0, shortestPrefix = int.MaxValue, items = 0;
        for (int g = 0; g < Context.SharedPrefixCount; g++)
        {
            mostTokens = Math.Max(mostTokens, Context.SharedPrefixTokens(g).Length);
            shortestPrefix = Math.Min(shortestPrefix, Context.SharedPrefixLength(g));
        }
        int kvPerItem = (KvHeads + Math.Min(KvHeads, threads) - 1) / Math.Min(KvHeads, threads);
        int wholeTile = Math.Min(shortestPrefix, Math.Max(1, PrefixTileKeys / blockSize) * blockSize), tileKeys = wholeTile, batch = 0;
        _groupTiled = KernelPaths.Uses512Bits && HeadDim % 16 == 0;
        if (_groupTiled)
        {
            batch = TiledBatch(mostTokens, tileKeys);
            if (batch < 1 && tileKeys > blockSize) batch = TiledBatch(mostTokens, tileKeys = blockSize);
            _groupTiled = batch >= 1;
        }
        if (!_groupTiled)
        {
            tileKeys = wholeTile;
            batch = RowsBatch(tileKeys);
            if (batch < 1 && tileKeys > blockSize) batch = RowsBatch(tileKeys = blockSize);
        }
        if (batch < 1) return;
        _groupBatch = Math.Min(batch, mostTokens);
        _groupKvPerItem = kvPerItem;
        // As many of an item's KV heads tile by tile together as the scratch holds beside the batch (PrefixTiles).
        _groupKvTogether = 1;
        while (_groupTiled && _groupKvTogether < kvPerItem && TiledScratch(_groupBatch * group, HeadDim, tileKeys, _groupKvTogether + 1) <= ScoresStride) _groupKvTogether++;
        _groupKvChunks = (KvHeads + kvPerItem - 1) / kvPerItem;
        _groupTileKeys = tileKeys;
        for (int g = 0; g < Context.SharedPrefixCount; g++)
            items += (Context.SharedPrefixTokens(g).Length + _groupBatch - 1) / _groupBatch * _groupKvChunks;
        _groupItems = items;
    }

    /// <summary>
    /// The most tokens a row-by-row group item's scratch holds (<see cref="PrefixByRows"/>): per token of one KV head
    /// its query and output rows and a tile of prefix scores; 0 when not one.
    /// </summary>
    private readonly int RowsBatch(int tileKeys) => ScoresStride / (Heads / KvHeads * (2 * HeadDim + tileKeys));

    /// <summary>The most tokens (up to <paramref name="mostTokens"/>) a tiled group item's scratch holds; 0 when not one.</summary>
    private readonly int TiledBatch(int mostTokens, int tileKeys)
    {
        int batch = mostTokens;
        while (batch > 0 && TiledScratch(batch * Heads / KvHeads, HeadDim, tileKeys, kvHeads: 1) > ScoresStride) batch--;
        return batch;
    }

    /// <summary>
    /// Floats of scratch a tiled group item takes for <paramref name="rows"/> query rows of each of
    /// <paramref name="kvHeads"/> KV heads taken together (a batch's tokens times a KV head's query heads; see
    /// <see cref="PrefixTiles"/>): per KV head its state (<see cref="HeadState"/>), and a tile of transposed scores
    /// and of widened rows.
    /// </summary>
    private static long TiledScratch(int rows, int headDim, int tileKeys, int kvHeads)
    {
        long padded = (rows + 15) & ~15L;
        return (long)kvHeads * HeadState(rows, headDim) + tileKeys * (padded + headDim);
    }

    /// <summary>Query rows of a KV head that a chunk's scratch always holds as one tiled batch (two 16-wide columns of the tiles).</summary>
    private const int AssuredTiledRows = 32;

    /// <summary>KV heads a chunk's scratch always holds together in such a batch: a tile's rows are then read as runs of 4 heads' columns.</summary>
    private const int AssuredTiledKvHeads = 4;

    /// <summary>
    /// Floats of score scratch one chunk needs: every query head's row over <paramref name="maxContext"/> positions,
    /// and at least a tiled sharing-group item of <see cref="AssuredTiledRows"/> query rows for each of
    /// <see cref="AssuredTiledKvHeads"/> KV heads together (fewer when there are fewer heads). Without that floor a
    /// short context cut a group into batches of a token or two, each reading the whole prefix again (32 sequences
    /// sharing 128 positions took 3× the per-sequence time), and a head at a time read a 128-byte sliver of each
    /// prefix row (the 110m bench's shared attention took ≈12 % longer).
    /// </summary>
    public static int ScoresPerChunk(int maxContext, int heads, int headDim)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(heads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(headDim);
        return checked((int)Math.Max((long)maxContext * heads, TiledScratch(AssuredTiledRows, headDim, PrefixTileKeys, Math.Min(heads, AssuredTiledKvHeads))));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end)
    {
        // Items come in chunks of the run's chunk size from a multiple of it: the chunk's own scratch.
        int chunk = start / _runChunkSize;
        var scores = Scores.Slice(chunk * ScoresStride, ScoresStride);
        var gather = Gather.Slice(chunk * GatherStride, GatherStride);
        int group = Heads / KvHeads, blockSize = Cache.BlockSize;
        bool halves = Cache.Storage == KvStorage.F16, finite = Cache.HoldsOnlyFiniteHalves;
        for (int item = _runFirstItem + start; item < _runFirstItem + end; item++)
        {
            if (item < _groupItems)
            {
                PrefixItem(item, scores, gather);
                continue;
            }
            int tokenItem = item - _groupItems;
            int t = tokenItem / PerToken, kv0 = tokenItem % PerToken * KvPerItem, kv1 = Math.Min(KvHeads, kv0 + KvPerItem);
            int sequence = Context.SequenceOf(t);
            var (first, last) = Walk(t);
            bool afterPrefix = _groupItems > 0 && first > 0; // a grouped token (groups have no window): merged with its prefix's part
            int rows = last - first + 1, heads = (kv1 - kv0) * group, at = t * QCols + kv0 * group * HeadDim;
            int columns = (kv1 - kv0) * HeadDim;
            var blocks = Context.BlockTable(sequence); // a contiguous cache: one block per sequence
            var query = Q.Slice(at, heads * HeadDim);
            var output = Output.Slice(at, heads * HeadDim);
            var weights = scores.Slice(0, heads * rows);
            bool shortWalk = halves && (long)rows * columns * sizeof(short) <= ShortWalkBytes;
            if (shortWalk) PrefetchFirstRows(tokenItem, values: true);
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
            if (shortWalk && item + 1 < _runFirstItem + end) PrefetchFirstRows(item + 1 - _groupItems, values: false);
            if (afterPrefix) WeighAgainstPrefix(t, kv0 * group, heads, weights, rows, output);
            else
            {
                for (int h = 0; h < heads; h++) VectorMath.Softmax(weights.Slice(h * rows, rows));
                output.Clear();
            }
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
    /// The exact merge of a grouped token's own scores with its prefix part (log-sum-exp), for query heads
    /// <paramref name="firstHead"/>..+<paramref name="heads"/>: the prefix run left each head's accumulated values in
    /// <paramref name="output"/>, unnormalized, and its max and sum in <see cref="PrefixStatistics"/>. With m the larger
    /// max, the prefix part is weighted e^(m_prefix − m), the own scores become e^(s − m), and both are divided by the
    /// whole sum, so that adding the own weighted values finishes the row.
    /// </summary>
    private readonly void WeighAgainstPrefix(int token, int firstHead, int heads, Span<float> weights, int rows, Span<float> output)
    {
        var statistics = PrefixStatistics.Slice(StatisticsIndex(token, firstHead), 2 * heads);
        for (int h = 0; h < heads; h++)
        {
            var row = weights.Slice(h * rows, rows);
            float ownSum = VectorMath.ExpSum(row, out float ownMax);
            float prefixMax = statistics[2 * h], max = MathF.Max(prefixMax, ownMax);
            float prefixWeight = MathF.Exp(prefixMax - max), ownWeight = MathF.Exp(ownMax - max);
            float total = statistics[2 * h + 1] * prefixWeight + ownSum * ownWeight;
            VectorMath.Scale(output.Slice(h * HeadDim, HeadDim), prefixWeight / total);
            VectorMath.Scale(row, ownWeight / total);
        }
    }

    /// <summary>
    /// One prefix item: a batch of a sharing group's tokens and a chunk of KV heads. It reads each shared block once for
    /// the whole batch, a tile of <see cref="_groupTileKeys"/> positions at a time, with a running max and sum per
    /// score row (online softmax, as FlashAttention keeps it): as register tiles, a few KV heads at a time
    /// (<see cref="PrefixTiles"/>), on the AVX-512 path, else row by row, a KV head at a time (<see cref="PrefixByRows"/>). The accumulated
    /// values go to the output rows, unnormalized, and each row's max and sum to <see cref="PrefixStatistics"/>, for
    /// the token items to merge with the tokens' own positions (<see cref="WeighAgainstPrefix"/>).
    /// </summary>
    private readonly void PrefixItem(int item, Span<float> scratch, Span<float> gather)
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
        var prefixBlocks = Context.BlockTable(Context.SharedPrefixSequences(g)[0]);
        int prefix = Context.SharedPrefixLength(g);
        if (_groupTiled)
            for (int kv = kv0; kv < kv1; kv += _groupKvTogether)
            {
                int count = Math.Min(_groupKvTogether, kv1 - kv);
                PrefixTiles(tokens, kv, count, Math.Min(_groupKvTogether, kv1 - kv - count), prefixBlocks, prefix, scratch, gather, first: kv == kv0);
            }
        else
            for (int kv = kv0; kv < kv1; kv++) PrefixByRows(tokens, kv, prefixBlocks, prefix, scratch, gather);
    }

    /// <summary>Where query head <paramref name="head"/> of <paramref name="token"/> keeps its prefix max in <see cref="PrefixStatistics"/> (its sum next to it).</summary>
    private readonly int StatisticsIndex(int token, int head) => 2 * (token * Heads + head);

    /// <summary>
    /// The prefix part of a group item for KV heads <paramref name="kv0"/>..+<paramref name="kvCount"/> on the AVX-512
    /// path, as small GEMMs with no horizontal sums (<see cref="AttentionTiles.OuterProduct"/>). Each KV head's query
    /// rows are transposed once into scratch (element d of every row side by side, padded to 16 rows with zeros);
    /// then per tile of prefix positions, KV head by KV head (so that a tile's rows are read as runs of the heads'
    /// adjacent columns, not a head's sliver of each row at a time), the keys are widened once into scratch and the
    /// scores computed transposed, a row per key and a column per query, so that each query's running max and sum
    /// are kept lane-wise, 16 queries a vector, with no horizontal max or sum (<see cref="OnlineSoftmaxColumns"/>);
    /// then the values widened into the same scratch and each block of 8 queries' accumulators rescaled by its
    /// correction as the tile's weighted values are added. Each tile's successor is fetched into L2 while it is
    /// computed, and the last tile fetches the first of the item's next <paramref name="nextKvCount"/> KV heads.
    /// </summary>
    private readonly unsafe void PrefixTiles(ReadOnlySpan<int> tokens, int kv0, int kvCount, int nextKvCount, ReadOnlySpan<int> prefixBlocks, int prefix,
        Span<float> work, Span<float> gather, bool first)
    {
        int group = Heads / KvHeads, rows = tokens.Length * group, padded = (rows + 15) & ~15, tileKeys = _groupTileKeys, width = group * HeadDim;
        int perHead = HeadState(rows, HeadDim);
        var scoresT = work.Slice(kvCount * perHead, tileKeys * padded);
        var tileRows = work.Slice(kvCount * perHead + tileKeys * padded, tileKeys * HeadDim);
        bool halves = Cache.Storage == KvStorage.F16;
        if (halves && first) // the item's first tile, while the queries are transposed (later KV heads' come during the tile before)
            for (int j = 0; j < kvCount; j++)
                for (int p = 0; p < Math.Min(tileKeys, prefix); p += 8) PrefetchPrefixRows(prefixBlocks, p, Math.Min(8, Math.Min(tileKeys, prefix) - p), (kv0 + j) * HeadDim);
        // Finite F16 rows are widened short of the exponent rebias (Fp16.ToSingleUnrebiased, 3 operations instead of
        // 10), which goes into the queries (while each stays below 2^16, so times 2^112 is finite) and the weights.
        bool unrebiased = halves && Cache.HoldsOnlyFiniteHalves;
        for (int i = 0; i < tokens.Length && unrebiased; i++)
            unrebiased = VectorMath.Rebiasable(Q.Slice(tokens[i] * QCols + kv0 * width, kvCount * width), 1, kvCount * width, kvCount * width);
        float queryFactor = unrebiased ? Fp16.Rebias : 1f;
        var scale = Vector512.Create(Options.Scale);
        fixed (float* state = work, s = scoresT, k = tileRows)
        {
            // Per KV head j at state + j·perHead: its transposed queries, accumulators, running max, sum and correction.
            for (int j = 0; j < kvCount; j++)
            {
                float* qT = state + j * perHead;
                new Span<float>(qT, perHead).Clear();
                new Span<float>(qT + HeadDim * padded + rows * HeadDim, padded).Fill(float.NegativeInfinity);
                for (int i = 0; i < tokens.Length; i++)
                {
                    float* query = Q.Pointer + (long)tokens[i] * QCols + (kv0 + j) * width;
                    for (int h = 0; h < group; h++)
                        for (int d = 0; d < HeadDim; d++) qT[d * padded + i * group + h] = query[h * HeadDim + d] * queryFactor;
                }
            }
            for (int p0 = 0; p0 < prefix; p0 += tileKeys)
            {
                int keys = Math.Min(tileKeys, prefix - p0); // whole blocks: the tile and the prefix are
                // The tile after this one: these KV heads' next, or the next KV heads' first.
                bool lastTile = p0 + keys >= prefix;
                int next = lastTile ? 0 : p0 + keys, nextKv = lastTile ? kv0 + kvCount : kv0, nextHeads = lastTile ? nextKvCount : kvCount;
                int nextKeys = halves && nextHeads > 0 ? Math.Min(tileKeys, prefix - next) : 0;
                for (int j = 0; j < kvCount; j++)
                {
                    float* qT = state + j * perHead, o = qT + HeadDim * padded, max = o + rows * HeadDim, sum = max + padded, kept = sum + padded;
                    int column = (kv0 + j) * HeadDim;
                    TileRows(keys: true, prefixBlocks, p0, keys, column, tileRows, gather, unrebiased);
                    for (int key = 0; key < keys; key += 8)
                    {
                        // The next tile's rows, 8 at a time between the products: a burst would only stall on full miss buffers.
                        if (j < nextHeads && key < nextKeys) PrefetchPrefixRows(prefixBlocks, next + key, Math.Min(8, nextKeys - key), (nextKv + j) * HeadDim);
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
            var statistics = PrefixStatistics.Span;
            for (int j = 0; j < kvCount; j++)
            {
                float* o = state + j * perHead + HeadDim * padded, max = o + rows * HeadDim, sum = max + padded;
                int kv = kv0 + j;
                for (int r = 0; r < rows; r++)
                {
                    int at = StatisticsIndex(tokens[r / group], kv * group + r % group);
                    statistics[at] = max[r];
                    statistics[at + 1] = sum[r];
                }
                for (int i = 0; i < tokens.Length; i++) new ReadOnlySpan<float>(o + i * width, width).CopyTo(Output.Slice(tokens[i] * QCols + kv * width, width));
            }
        }
    }

    /// <summary>Floats of a tiled prefix item's state per KV head: its <paramref name="rows"/> query rows transposed (padded to 16), their accumulators, running max, sum and correction.</summary>
    private static int HeadState(int rows, int headDim)
    {
        int padded = (rows + 15) & ~15;
        return checked(headDim * padded + rows * headDim + 3 * padded);
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
    /// rest) of one KV head, fetched into L2 ahead of their tile: the prefix's blocks are apart and each row is read
    /// only in part, so the hardware prefetcher does not run ahead of the tiles; and the tiles' scratch fills L1.
    /// Straight from the block's rows, without the checked views the tiles read through: this runs 16 times a tile and
    /// head, and the views' checks cost as much as the fetches saved (≈0.5 ms of the 110m bench's ≈10).
    /// </summary>
    private readonly unsafe void PrefetchPrefixRows(ReadOnlySpan<int> blocks, int first, int count, int column)
    {
        if (!Sse.IsSupported) return;
        int blockSize = Cache.BlockSize, block = blocks[first / blockSize], offset = first % blockSize, rows = Math.Min(count, blockSize - offset);
        int lines = (HeadDim * sizeof(short) + 63) / 64;
        fixed (Half* keys = Cache.HalfKeyBlock(Layer, block), values = Cache.HalfValueBlock(Layer, block))
        {
            byte* key = (byte*)(keys + offset * KvCols + column), value = (byte*)(values + offset * KvCols + column);
            for (int r = 0; r < rows; r++, key += KvCols * sizeof(short), value += KvCols * sizeof(short))
                for (int line = 0; line < lines; line++)
                {
                    Sse.Prefetch1(key + 64 * line);
                    Sse.Prefetch1(value + 64 * line);
                }
        }
    }

    /// <summary>
    /// The prefix part of a group item for KV head <paramref name="kv"/> where <see cref="PrefixTiles"/> does not run
    /// (no AVX-512, a head size not a multiple of 16, or too little scratch): a tile of <see cref="_groupTileKeys"/>
    /// positions at a time, queries × keys scores (<see cref="VectorMath.AttentionScoresTile{T}"/>, the rows loaded
    /// once for every query), then per score row its running max and sum of exponentials (a new max rescales what the
    /// row has summed), then the tile's weighted values into the row's accumulator.
    /// </summary>
    private readonly void PrefixByRows(ReadOnlySpan<int> tokens, int kv, ReadOnlySpan<int> prefixBlocks, int prefix, Span<float> work, Span<float> gather)
    {
        int group = Heads / KvHeads, blockSize = Cache.BlockSize, tileKeys = _groupTileKeys, rows = tokens.Length * group, width = group * HeadDim, column = kv * HeadDim;
        bool halves = Cache.Storage == KvStorage.F16;
        var queries = work[..(rows * HeadDim)];
        var sums = work.Slice(rows * HeadDim, rows * HeadDim);
        var tile = work.Slice(2 * rows * HeadDim, rows * tileKeys);
        var statistics = PrefixStatistics.Span;
        for (int i = 0; i < tokens.Length; i++) Q.Slice(tokens[i] * QCols + column * group, width).CopyTo(queries.Slice(i * width, width));
        sums.Clear();
        for (int r = 0; r < rows; r++)
        {
            int at = StatisticsIndex(tokens[r / group], kv * group + r % group);
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
                int at = StatisticsIndex(tokens[r / group], kv * group + r % group);
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
    /// A walk whose keys (and values) take at most this many bytes fetches its first value rows as it starts and the
    /// next item's first keys as its values start (<see cref="PrefetchFirstRows"/>): within this reach they are still
    /// in L2 when read; a longer walk would only evict them first.
    /// </summary>
    private const int ShortWalkBytes = 256 * 1024;

    /// <summary>
    /// The first F16 rows that token item <paramref name="tokenItem"/> reads (<paramref name="values"/>: for its weighted
    /// sum, else its scores), as far as their block goes, fetched into L2 ahead of the walk: the walks of a step's own
    /// positions are short (a shared prefix's suffix: a few blocks), and a block's first rows would otherwise come as
    /// it starts. A short walk fetches its values' while it scores, and the next item's keys while it weighs.
    /// </summary>
    private readonly void PrefetchFirstRows(int tokenItem, bool values)
    {
        int t = tokenItem / PerToken, kv0 = tokenItem % PerToken * KvPerItem, columns = (Math.Min(KvHeads, kv0 + KvPerItem) - kv0) * HeadDim;
        (int first, int last) = Walk(t);
        int blockSize = Cache.BlockSize, block = Context.BlockTable(Context.SequenceOf(t))[first / blockSize], offset = first % blockSize;
        int rows = Math.Min(blockSize - offset, last - first + 1);
        var halves = values ? KvBlocks.HalfValues(Cache, Layer, block, offset, rows, kv0 * HeadDim, columns) : KvBlocks.HalfKeys(Cache, Layer, block, offset, rows, kv0 * HeadDim, columns);
        VectorMath.PrefetchRowsToL2(halves, KvCols, rows, columns);
    }

    /// <summary>
    /// The positions token <paramref name="t"/>'s item reads: up to its own (causal) or its sequence's last, from the
    /// window's start, or after its sharing group's prefix (which the prefix run has attended), or from 0.
    /// </summary>
    private readonly (int First, int Last) Walk(int t)
    {
        int sequence = Context.SequenceOf(t), position = Context.Positions[t];
        int last = Options.Causal ? position : Context.LastPosition(sequence);
        int first = Options.Window > 0 ? Math.Max(0, position - Options.Window + 1) : _groupItems > 0 ? Context.SharedPrefixLengthOf(sequence) : 0;
        return (first, last);
    }

    /// <summary>
    /// F16 rows of a per-sequence walk's next block, fetched a block ahead (a paged cache's blocks are apart, so the
    /// hardware prefetcher cannot follow): its keys while the current block is scored, its values while weighed.
    /// </summary>
    private readonly void PrefetchNextBlock(int block, int rows, int firstColumn, int columns, bool values) =>
        VectorMath.PrefetchNextBlock(values ? KvBlocks.HalfValues(Cache, Layer, block, 0, rows, firstColumn, columns) : KvBlocks.HalfKeys(Cache, Layer, block, 0, rows, firstColumn, columns),
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
