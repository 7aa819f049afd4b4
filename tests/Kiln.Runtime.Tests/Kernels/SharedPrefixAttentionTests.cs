using Kiln.Kernels;
using Kiln.Kernels.Attention;
using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Tests;
using Kiln.Threading;
using Xunit.Abstractions;

namespace Kiln.Runtime.Tests.Kernels;

/// <summary>
/// Shared-prefix attention against the per-sequence path: the same step, with its sharing groups named and without,
/// gives the same outputs within float rounding (the prefix's softmax and the suffix's are merged by log-sum-exp, so
/// sums come in another order). Random seeded steps mix groups, ungrouped sequences, chunks of several tokens, every KV
/// storage, GQA, soft caps and non-causal attention, on each kernel path.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class SharedPrefixAttentionTests(ITestOutputHelper output)
{
    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    private const int Seed = 1507, Cases = 60;

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void SharedPrefixAttentionEqualsPerSequenceAttention(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Shared-prefix attention", KernelPathCases.NoVnniForm);
        output.WriteLine($"seed {Seed} ({Cases} cases)");
        for (int i = 0; i < Cases; i++)
        {
            var random = new Random(Seed + i);
            var step = Step.Draw(random);
            AssertSharedEqualsPerSequence(step, step.Storage == KvStorage.F32 ? 2e-5 : 5e-5, $"seed {Seed + i}, {step}");
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void ALongPrefixSharedByManyTokensEqualsPerSequenceAttention(KernelPath path)
    {
        // 320 shared positions: five tiles of 64, so each query's running max grows from tile to tile and its
        // accumulators are rescaled; 20 sequences of 1–3 tokens: more query rows than one 32-wide column of the
        // tiles, with a 16-wide remainder; head sizes with a 16-wide half (48) and a single 16 (16); GQA. Scratch for
        // every token in one batch (a context of 8192 positions).
        using var forced = KernelPathCases.Force(path, "Shared-prefix attention", KernelPathCases.NoVnniForm);
        output.WriteLine($"seed {Seed}");
        int draw = 0;
        foreach (var storage in new[] { KvStorage.F32, KvStorage.F16, KvStorage.Int8 })
            foreach (var (heads, kvHeads, headDim, softCap) in new[] { (2, 2, 64, 0f), (4, 2, 48, 0f), (3, 3, 16, 3f) })
            {
                using var step = new Step(new Random(Seed + draw++), blockSize: 16, heads, kvHeads, headDim, storage, softCap, causal: true,
                    groupSizes: [20], prefixBlocks: [20], loneSequences: 1, maxContext: 8192, wholePrefix: true);
                var context = step.Context(groups: true);
                var attention = step.Kernel(context, new AttentionOptions(0.25f));
                attention.Plan(context.TokenCount, threads: 2);
                Assert.Equal(path == KernelPath.Avx512BW, attention.PrefixAsTiles);
                AssertSharedEqualsPerSequence(step, storage == KvStorage.F32 ? 2e-5 : 5e-5, $"seed {Seed + draw - 1}, {step}");
            }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void AQueriesByKeysTileGivesEachQuerysOwnScores(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Shared-prefix attention", KernelPathCases.NoVnniForm);
        var random = new Random(Seed);
        output.WriteLine($"seed {Seed}");
        foreach (var (count, headDim, positions) in new[] { (8, 16, 16), (9, 64, 7), (33, 64, 16), (12, 128, 40), (5, 32, 16), (16, 48, 33) })
        {
            int stride = headDim + 16, scoreStride = positions + 3;
            var queries = new float[count * headDim];
            var keys = new float[positions * stride];
            for (int i = 0; i < queries.Length; i++) queries[i] = (float)(random.NextDouble() * 2 - 1);
            for (int i = 0; i < keys.Length; i++) keys[i] = (float)(random.NextDouble() * 2 - 1);
            var halves = keys.Select(v => (Half)v).ToArray();
            foreach (bool half in new[] { false, true })
            {
                var scores = new float[count * scoreStride];
                if (half) VectorMath.AttentionScoresTile<Half>(queries, count, headDim, halves, stride, positions, 0.5f, scores, scoreStride, 2);
                else VectorMath.AttentionScoresTile<float>(queries, count, headDim, keys, stride, positions, 0.5f, scores, scoreStride, 2);
                for (int q = 0; q < count; q++)
                    for (int p = 0; p < positions; p++)
                    {
                        double expected = 0;
                        for (int d = 0; d < headDim; d++) expected += queries[q * headDim + d] * (half ? (float)halves[p * stride + d] : keys[p * stride + d]);
                        expected *= 0.5;
                        Assert.True(Math.Abs(scores[q * scoreStride + 2 + p] - expected) <= 1e-5 * headDim, $"{count}×{positions} of {headDim}, half {half}: score [{q}, {p}] is {scores[q * scoreStride + 2 + p]}, expected {expected}");
                    }
                Assert.All(Enumerable.Range(0, count), q => Assert.Equal(0f, scores[q * scoreStride])); // before firstPosition: untouched
            }
        }
    }

    [Fact]
    public void AGroupTooLargeForTheScratchIsTakenInBatches()
    {
        // Scratch rows of 48 positions per head (96 floats per chunk, below the floor a plan's scratch has): a batch
        // holds one token (its query and output rows and a tile of 32 prefix scores), so each of the 2
        // KV-head chunks takes the tokens one by one.
        using var step = new Step(new Random(Seed), blockSize: 4, heads: 2, kvHeads: 2, headDim: 16, KvStorage.F16, softCap: 0, causal: true,
            groupSizes: [6], prefixBlocks: [8], loneSequences: 1, maxContext: 48, wholePrefix: true, scoresStride: 48 * 2);
        output.WriteLine($"seed {Seed}: {step}");
        var context = step.Context(groups: true);
        var attention = step.Kernel(context, new AttentionOptions(0.25f));
        attention.Plan(context.TokenCount, threads: 2);
        Assert.Equal(context.SharedPrefixTokens(0).Length * 2, attention.PrefixItems); // the group was split into batches
        AssertSharedEqualsPerSequence(step, 5e-5, $"seed {Seed}, {step}");
    }

    [SkippableFact]
    public void AGroupTooLargeForTheTilesScratchIsTakenInTiledBatches()
    {
        // 700 positions of 2 heads (1400 floats per chunk, below a plan's floor): the register tiles' scratch (a
        // 32-position tile of transposed scores and widened rows, the queries transposed and padded to 16) holds 4
        // tokens of a KV head, not the 6–18 of the group, so each of the 2 KV-head chunks takes them in several
        // batches, still as tiles.
        using var forced = KernelPathCases.Force(KernelPath.Avx512BW, "Shared-prefix attention", KernelPathCases.NoVnniForm);
        using var step = new Step(new Random(Seed), blockSize: 4, heads: 2, kvHeads: 2, headDim: 16, KvStorage.F16, softCap: 0, causal: true,
            groupSizes: [6], prefixBlocks: [8], loneSequences: 1, maxContext: 700, wholePrefix: true, scoresStride: 700 * 2);
        output.WriteLine($"seed {Seed}: {step}");
        var context = step.Context(groups: true);
        var attention = step.Kernel(context, new AttentionOptions(0.25f));
        attention.Plan(context.TokenCount, threads: 2);
        Assert.True(attention.PrefixAsTiles);
        Assert.True(attention.PrefixItems > 2, $"{attention.PrefixItems} prefix items: the group was not split into batches");
        AssertSharedEqualsPerSequence(step, 5e-5, $"seed {Seed}, {step}");
    }

    [SkippableFact]
    public void AShortContextStillTakesAGroupInOneTiledBatchPerKvChunk()
    {
        // The 110m shape (12 heads of 64) with a context of under 200 positions: every query head's row is 2,112 floats,
        // too few for one token's tiles, which once cut the group into batches of a token, each reading the whole prefix
        // again. A plan's scratch (ScoresPerChunk) holds 32 query rows of 4 KV heads: 10 sequences of 1–3 tokens are one
        // batch for each of the 2 KV-head chunks.
        using var forced = KernelPathCases.Force(KernelPath.Avx512BW, "Shared-prefix attention", KernelPathCases.NoVnniForm);
        using var step = new Step(new Random(Seed), blockSize: 16, heads: 12, kvHeads: 12, headDim: 64, KvStorage.F16, softCap: 0, causal: true,
            groupSizes: [10], prefixBlocks: [8], loneSequences: 0, maxContext: 176, wholePrefix: true);
        output.WriteLine($"seed {Seed}: {step}");
        var context = step.Context(groups: true);
        var attention = step.Kernel(context, new AttentionOptions(0.125f));
        Assert.True(PagedAttention.ScoresPerChunk(176, 12, 64) > 176 * 12);
        attention.Plan(context.TokenCount, threads: 2);
        Assert.Equal(2, attention.PrefixItems);
        Assert.True(attention.PrefixAsTiles);
        Assert.Equal(4, attention.PrefixKvHeadsTogether); // each chunk's 6 KV heads in passes of 4 and 2
        AssertSharedEqualsPerSequence(step, 5e-5, $"seed {Seed}, {step}");
    }

    [Fact]
    public void AGroupHasItemsOfItsOwnAndAWindowKeepsThePerSequencePath()
    {
        using var step = new Step(new Random(Seed), blockSize: 4, heads: 4, kvHeads: 2, headDim: 16, KvStorage.F32, softCap: 0, causal: true,
            groupSizes: [3], prefixBlocks: [2], loneSequences: 1);
        var context = step.Context(groups: true);
        var attention = step.Kernel(context, new AttentionOptions(0.25f));
        int items = attention.Plan(context.TokenCount, threads: 2);
        // Every token keeps its per-token items (a grouped one's read only its own positions); the group's tokens
        // first share one prefix batch per chunk of KV heads, as many chunks as threads (at most one per KV head):
        // each chunk's prefix rows are read once per step.
        Assert.Equal(2, attention.PrefixItems);
        Assert.Equal(context.TokenCount * attention.PerToken + 2, items);
        foreach (var (threads, chunks) in new[] { (1, 1), (8, 2) })
        {
            int planned = attention.Plan(context.TokenCount, threads);
            Assert.Equal(chunks, attention.PrefixItems);
            Assert.Equal(context.TokenCount * attention.PerToken + chunks, planned);
        }
        var windowed = step.Kernel(context, new AttentionOptions(0.25f, Window: 5));
        int windowedItems = windowed.Plan(context.TokenCount, threads: 2);
        Assert.Equal(0, windowed.PrefixItems);
        Assert.Equal(context.TokenCount * windowed.PerToken, windowedItems);
    }

    [Fact]
    public void GroupsNeedRoomForThePrefixStatisticsAndNothingElseDoes()
    {
        // The token items merge with statistics the prefix run left: a kernel without room for them must say so, not
        // read past its buffer; a step without groups needs none.
        using var step = new Step(new Random(Seed), blockSize: 4, heads: 4, kvHeads: 2, headDim: 16, KvStorage.F32, softCap: 0, causal: true,
            groupSizes: [3], prefixBlocks: [2], loneSequences: 1);
        var context = step.Context(groups: true);
        var attention = step.Kernel(context, new AttentionOptions(0.25f));
        int needed = PagedAttention.PrefixStatisticsFloats(context.TokenCount, heads: 4);
        using var tooSmall = new NativeBlock((needed - 1L) * sizeof(float));
        attention.PrefixStatistics = tooSmall.Floats(0, needed - 1);
        var error = Assert.Throws<InvalidOperationException>(() => attention.Plan(context.TokenCount, threads: 2));
        Assert.Contains($"holds {needed - 1} floats", error.Message);
        Assert.Contains($"needs {needed}", error.Message);
        var ungrouped = step.Kernel(step.Context(groups: false), new AttentionOptions(0.25f));
        ungrouped.PrefixStatistics = default;
        int items = ungrouped.Plan(context.TokenCount, threads: 2);
        Assert.Equal(context.TokenCount * ungrouped.PerToken, items);
    }

    [Fact]
    public void AddSharedPrefixRejectsWhatIsNotShared()
    {
        var cache = KvCache.Paged(layers: 1, blockCount: 8, blockSize: 2, kvDim: 4);
        var context = new AttentionContext(cache, capacity: 8, maxBlockIds: 16);
        context.AddChunk([0, 1, 2], startPosition: 4, count: 1, wantLogits: true);
        context.AddChunk([0, 3, 5], startPosition: 4, count: 1, wantLogits: true);
        context.AddChunk([0, 1, 4], startPosition: 3, count: 2, wantLogits: true);
        Assert.Contains("at least two", Assert.Throws<ArgumentException>(() => context.AddSharedPrefix([0], prefixBlocks: 1)).Message);
        Assert.Contains("named twice", Assert.Throws<ArgumentException>(() => context.AddSharedPrefix([0, 0], prefixBlocks: 1)).Message);
        Assert.Contains("does not begin with the same 2", Assert.Throws<ArgumentException>(() => context.AddSharedPrefix([0, 1], prefixBlocks: 2)).Message);
        Assert.Contains("position 3, inside the 4 shared positions", Assert.Throws<ArgumentException>(() => context.AddSharedPrefix([0, 2], prefixBlocks: 2)).Message);
        Assert.Equal(0, context.SharedPrefixCount);
        context.AddSharedPrefix([0, 1], prefixBlocks: 1);
        Assert.Contains("already in a sharing group", Assert.Throws<ArgumentException>(() => context.AddSharedPrefix([1, 2], prefixBlocks: 1)).Message);
        Assert.Equal(2, context.SharedPrefixLength(0));
        Assert.Equal([2, 2, 0], new[] { context.SharedPrefixLengthOf(0), context.SharedPrefixLengthOf(1), context.SharedPrefixLengthOf(2) });
        Assert.Equal([2, 3], context.UngroupedTokens.ToArray());
        context.Clear();
        Assert.Equal(0, context.SharedPrefixCount);
        context.AddChunk([0, 1, 2], startPosition: 4, count: 1, wantLogits: true);
        context.AddChunk([0, 1, 4], startPosition: 4, count: 1, wantLogits: true);
        Assert.Equal(0, context.SharedPrefixLengthOf(0)); // cleared with the step
        context.AddSharedPrefix([0, 1], prefixBlocks: 2);
        Assert.Equal(4, context.SharedPrefixLengthOf(1));
        Assert.Equal(0, context.UngroupedTokens.Length);
    }

    /// <summary>The step attended with its sharing groups named and without: the same outputs within <paramref name="tolerance"/> (relative past 1).</summary>
    private static void AssertSharedEqualsPerSequence(Step step, double tolerance, string what)
    {
        var perSequence = step.Attend(groups: false);
        var shared = step.Attend(groups: true);
        for (int j = 0; j < shared.Length; j++)
            Assert.True(Math.Abs(shared[j] - perSequence[j]) <= tolerance * Math.Max(1, Math.Abs(perSequence[j])),
                $"{what}: output {j} is {shared[j]} shared, {perSequence[j]} per sequence");
    }

    /// <summary>
    /// One step over a paged cache: sharing groups (sequences whose tables begin with the same blocks, then blocks of
    /// their own) and lone sequences, each with some KV written by earlier steps and a chunk of new tokens.
    /// </summary>
    private sealed class Step : IDisposable
    {
        private readonly List<(int[] Table, int Written, int Count)> _sequences = [];
        private readonly List<(int[] Sequences, int PrefixBlocks)> _groups = [];
        private readonly float[] _queries;
        private readonly string _description;
        private readonly int _scoresStride; // 0: as a plan sizes it (PagedAttention.ScoresPerChunk)

        public Step(Random random, int blockSize, int heads, int kvHeads, int headDim, KvStorage storage, float softCap, bool causal,
            int[] groupSizes, int[] prefixBlocks, int loneSequences, int maxContext = 256, bool wholePrefix = false, int scoresStride = 0)
        {
            _scoresStride = scoresStride;
            BlockSize = blockSize;
            Heads = heads;
            KvHeads = kvHeads;
            HeadDim = headDim;
            Storage = storage;
            SoftCap = softCap;
            Causal = causal;
            Cache = KvCache.Paged(layers: 1, blockCount: 512, blockSize, kvHeads * headDim, storage, headDim, maxContext);
            int nextBlock = 0;
            int[] NewBlocks(int count)
            {
                var ids = Enumerable.Range(nextBlock, count).ToArray();
                nextBlock += count;
                return ids;
            }
            for (int g = 0; g < groupSizes.Length; g++)
            {
                var prefix = NewBlocks(prefixBlocks[g]);
                WriteRows(random, prefix, 0, prefixBlocks[g] * blockSize);
                var members = new int[groupSizes[g]];
                for (int m = 0; m < members.Length; m++)
                {
                    members[m] = AddSequence(random, prefix, prefixBlocks[g] * blockSize + random.Next(0, 2 * blockSize + 1), NewBlocks);
                }
                // A fork's members may share more than the group names; the kernel must read the rest per sequence.
                _groups.Add((members, wholePrefix ? prefixBlocks[g] : random.Next(1, prefixBlocks[g] + 1)));
            }
            for (int s = 0; s < loneSequences; s++) AddSequence(random, [], random.Next(0, 3 * blockSize), NewBlocks);
            int tokens = _sequences.Sum(s => s.Count);
            _queries = new float[tokens * heads * headDim];
            for (int i = 0; i < _queries.Length; i++) _queries[i] = (float)(random.NextDouble() * 2 - 1);
            _description = $"block {blockSize}, {heads}/{kvHeads} heads of {headDim}, {storage}, cap {softCap}, causal {causal}, groups [{string.Join("; ", _groups.Select(g => $"{string.Join(",", g.Sequences)} over {g.PrefixBlocks}"))}], sequences [{string.Join("; ", _sequences.Select(s => $"{s.Written}+{s.Count}"))}]";
        }

        public int BlockSize { get; }
        public int Heads { get; }
        public int KvHeads { get; }
        public int HeadDim { get; }
        public KvStorage Storage { get; }
        public float SoftCap { get; }
        public bool Causal { get; }
        public KvCache Cache { get; }

        public static Step Draw(Random random)
        {
            int[] blockSizes = [1, 2, 3, 4, 16];
            (int Heads, int KvHeads)[] shapes = [(4, 2), (2, 2), (4, 1), (3, 3)];
            int[] headDims = [4, 16, 32, 64, 128];
            var shape = shapes[random.Next(shapes.Length)];
            int groups = random.Next(1, 3);
            return new Step(random, blockSizes[random.Next(blockSizes.Length)], shape.Heads, shape.KvHeads, headDims[random.Next(headDims.Length)],
                (KvStorage)new[] { KvStorage.F32, KvStorage.F16, KvStorage.Int8 }[random.Next(3)], random.Next(4) == 0 ? 3f : 0f, random.Next(4) != 0,
                Enumerable.Range(0, groups).Select(_ => random.Next(2, 5)).ToArray(), Enumerable.Range(0, groups).Select(_ => random.Next(1, 4)).ToArray(),
                random.Next(0, 3));
        }

        public override string ToString() => _description;

        /// <summary>The step's context, with its sharing groups named or not.</summary>
        public AttentionContext Context(bool groups)
        {
            var context = new AttentionContext(Cache, capacity: 64, maxBlockIds: 1024);
            foreach (var (table, written, count) in _sequences) context.AddChunk(table, written, count, wantLogits: true);
            if (groups)
                foreach (var (sequences, prefixBlocks) in _groups) context.AddSharedPrefix(sequences, prefixBlocks);
            return context;
        }

        public PagedAttention Kernel(AttentionContext context, AttentionOptions options)
        {
            int tokens = context.TokenCount, qCols = Heads * HeadDim;
            int scoresStride = _scoresStride > 0 ? _scoresStride : PagedAttention.ScoresPerChunk(Cache.MaxContext, Heads, HeadDim);
            int gatherStride = KvBlocks.ScratchFloats(Cache);
            long floats = 2L * tokens * qCols + (long)PagedAttention.MaxChunks * (scoresStride + gatherStride) + PagedAttention.PrefixStatisticsFloats(tokens, Heads);
            _memory?.Dispose();
            _memory = new NativeBlock(floats * sizeof(float));
            var q = _memory.Floats(0, tokens * qCols);
            _queries.CopyTo(q.Span);
            long at = (long)tokens * qCols * sizeof(float);
            var output = _memory.Floats(at, tokens * qCols);
            at += (long)tokens * qCols * sizeof(float);
            var scores = _memory.Floats(at, PagedAttention.MaxChunks * scoresStride);
            at += (long)PagedAttention.MaxChunks * scoresStride * sizeof(float);
            var gather = _memory.Floats(at, PagedAttention.MaxChunks * gatherStride);
            at += (long)PagedAttention.MaxChunks * gatherStride * sizeof(float);
            return new PagedAttention
            {
                Q = q, Output = output, Scores = scores, ScoresStride = scoresStride, Gather = gather, GatherStride = gatherStride,
                PrefixStatistics = _memory.Floats(at, PagedAttention.PrefixStatisticsFloats(tokens, Heads)),
                Cache = Cache, Context = context, Layer = 0, Heads = Heads, KvHeads = KvHeads, HeadDim = HeadDim, QCols = qCols,
                KvCols = KvHeads * HeadDim, Options = options,
            };
        }

        private NativeBlock? _memory;

        /// <summary>Runs the kernel on a pool of 2 threads and returns every token's output row.</summary>
        public float[] Attend(bool groups)
        {
            var context = Context(groups);
            var attention = Kernel(context, new AttentionOptions(1f / MathF.Sqrt(HeadDim), SoftCap: SoftCap, Causal: Causal));
            using var pool = new WorkerPool(2);
            attention.Run(pool, context.TokenCount);
            return attention.Output.Span.ToArray();
        }

        public void Dispose() => _memory?.Dispose();

        private int AddSequence(Random random, int[] prefix, int written, Func<int, int[]> newBlocks)
        {
            int count = random.Next(1, 4), total = written + count;
            int own = (total + BlockSize - 1) / BlockSize - prefix.Length;
            var table = prefix.Concat(newBlocks(own)).ToArray();
            WriteRows(random, table, prefix.Length * BlockSize, total);
            _sequences.Add((table, written, count));
            return _sequences.Count - 1;
        }

        private void WriteRows(Random random, int[] table, int from, int to)
        {
            var row = new float[Cache.KvDim];
            for (int position = from; position < to; position++)
            {
                int cacheRow = table[position / BlockSize] * BlockSize + position % BlockSize;
                for (int i = 0; i < row.Length; i++) row[i] = (float)(random.NextDouble() * 2 - 1);
                Cache.WriteKey(0, cacheRow, row);
                for (int i = 0; i < row.Length; i++) row[i] = (float)(random.NextDouble() * 2 - 1);
                Cache.WriteValue(0, cacheRow, row);
            }
        }
    }
}
