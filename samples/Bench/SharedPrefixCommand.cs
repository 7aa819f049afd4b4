using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Kernels.Attention;
using Kiln.Kernels.MatMul;
using Kiln.Loading;
using Kiln.Threading;

namespace Kiln.Bench;

/// <summary>
/// Decode steps of <c>--seqs</c> sequences that share a <c>--prefix</c>-token prefix (the same KV blocks at the head
/// of every block table) and each hold <c>--suffix</c> tokens of their own: attention alone (every layer's, on the
/// step's cache contents) and whole steps, with the sharing groups named (shared-prefix attention) and without (each
/// sequence reads the prefix itself), alternating run by run; medians of <c>--runs</c>.
/// </summary>
public static class SharedPrefixCommand
{
    private const int BlockSize = 16, RepeatsPerRun = 3;

    public static int Run(string modelPath, int prefix, int sequences, int suffix, int threads, int runs, string? jsonPath, KvStorage storage, TextWriter output)
    {
        if (prefix < BlockSize || prefix % BlockSize != 0) throw new ArgumentException($"--prefix must be a positive multiple of the block size {BlockSize}, not {prefix}.");
        if (sequences < 2) throw new ArgumentException($"--seqs must be at least 2 (sharing needs two sequences), not {sequences}.");
        if (suffix < 0) throw new ArgumentException($"--suffix must not be negative, not {suffix}.");
        using var file = ModelFile.Open(modelPath);
        int stepTokens = Math.Max(sequences, 256);
        using var kiln = new KilnSession(file, maxTokensPerStep: stepTokens, threads, storage);
        int context = prefix + suffix + 1, prefixBlocks = prefix / BlockSize;
        int blocksPerSequence = (context + BlockSize - 1) / BlockSize, ownBlocks = blocksPerSequence - prefixBlocks;
        var cache = kiln.Model.KvShape.CreatePaged(prefixBlocks + sequences * ownBlocks, BlockSize, storage, maxContext: blocksPerSequence * BlockSize);
        var attention = new AttentionContext(cache, stepTokens, maxBlockIds: stepTokens * blocksPerSequence);
        var logitRows = new float[(long)kiln.VocabSize * stepTokens];
        ReadOnlySpan<float> Step(ReadOnlySpan<int> stepTokenIds, AttentionContext stepContext)
        {
            var rows = logitRows.AsSpan(0, stepContext.OutputCount * kiln.VocabSize);
            kiln.Plan.Step(stepTokenIds, stepContext, rows);
            return rows;
        }
        var tables = new int[sequences][];
        for (int s = 0; s < sequences; s++)
            tables[s] = [.. Enumerable.Range(0, prefixBlocks), .. Enumerable.Range(prefixBlocks + s * ownBlocks, ownBlocks)];

        // The prefix once (through sequence 0's table), then every sequence's own suffix, a few sequences per step.
        var random = new Random(1234);
        var tokens = new int[stepTokens];
        for (int start = 0; start < prefix; start += stepTokens)
        {
            int count = Math.Min(stepTokens, prefix - start);
            attention.Clear();
            attention.AddChunk(tables[0], start, count, wantLogits: true);
            Step(RandomTokens(random, tokens, count, kiln.VocabSize), attention);
        }
        for (int s = 0; s < sequences && suffix > 0;)
        {
            attention.Clear();
            int count = 0;
            for (; s < sequences && count + suffix <= stepTokens; s++, count += suffix) attention.AddChunk(tables[s], prefix, suffix, wantLogits: true);
            Step(RandomTokens(random, tokens, count, kiln.VocabSize), attention);
        }

        // The decode step timed: one token per sequence at position prefix + suffix (rewritten by every repeat).
        var decodeTokens = RandomTokens(random, new int[sequences], sequences, kiln.VocabSize).ToArray();
        void FillDecode(bool shared)
        {
            attention.Clear();
            for (int s = 0; s < sequences; s++) attention.AddChunk(tables[s], prefix + suffix, 1, wantLogits: true);
            if (shared) attention.AddSharedPrefix([.. Enumerable.Range(0, sequences)], prefixBlocks);
        }
        string arch = file.Architecture;
        int heads = file.TryGetInt($"{arch}.attention.head_count", out long h) ? (int)h : throw new InvalidOperationException($"{modelPath}: missing {arch}.attention.head_count");
        int kvHeads = file.TryGetInt($"{arch}.attention.head_count_kv", out long kv) ? (int)kv : heads;
        using var probe = new AttentionProbe(heads, kvHeads, cache, attention, threads, random);
        var logits = new float[2][];
        for (int pass = 0; pass < 2; pass++)
        {
            FillDecode(shared: pass == 1);
            logits[pass] = Step(decodeTokens, attention).ToArray();
        }
        double largestDifference = 0, largestAttentionDifference = 0;
        for (int i = 0; i < logits[0].Length; i++) largestDifference = Math.Max(largestDifference, Math.Abs(logits[0][i] - logits[1][i]));
        var attended = new float[2][];
        for (int pass = 0; pass < 2; pass++)
        {
            FillDecode(shared: pass == 1);
            probe.Attend();
            attended[pass] = probe.Output.ToArray();
        }
        for (int i = 0; i < attended[0].Length; i++) largestAttentionDifference = Math.Max(largestAttentionDifference, Math.Abs(attended[0][i] - attended[1][i]));

        var attentionMs = new List<double>[] { [], [] };
        var attentionCpuMs = new List<double>[] { [], [] };
        var process = Process.GetCurrentProcess();
        var stepSeconds = new List<double>[] { [], [] };
        for (int run = 0; run < runs; run++)
        {
            for (int pass = 0; pass < 2; pass++)
            {
                bool shared = (run + pass) % 2 == 1; // alternating which goes first
                FillDecode(shared);
                probe.Attend(); // warm
                process.Refresh();
                var cpuBefore = process.TotalProcessorTime;
                var clock = Stopwatch.StartNew();
                for (int r = 0; r < RepeatsPerRun; r++) probe.Attend();
                attentionMs[shared ? 1 : 0].Add(clock.Elapsed.TotalMilliseconds / RepeatsPerRun);
                process.Refresh();
                attentionCpuMs[shared ? 1 : 0].Add((process.TotalProcessorTime - cpuBefore).TotalMilliseconds / RepeatsPerRun);
                Step(decodeTokens, attention);
                clock.Restart();
                for (int r = 0; r < RepeatsPerRun; r++) Step(decodeTokens, attention);
                stepSeconds[shared ? 1 : 0].Add(clock.Elapsed.TotalSeconds / RepeatsPerRun);
            }
        }

        double attentionShared = Median(attentionMs[1]), attentionPerSequence = Median(attentionMs[0]);
        // The roofline of each path: the KV bytes it reads per step (shared: the prefix once, since the group items
        // split the KV heads between them, and each sequence's own rows; per sequence: every sequence its whole
        // context) against the read bandwidth, and the attention FLOPs (q·k and the weighted values, 4·HeadDim per
        // query head and position, alike for both) against the fp32 FMA peak, both measured now with the same threads.
        double bandwidth = MachineLimits.ReadBandwidth(threads), flopPeak = MachineLimits.PeakFp32Flops(threads);
        long bytesPerPosition = KvCache.BytesPerBlock(cache.Layers, 1, cache.KvDim, storage, cache.KvDim / kvHeads);
        int contextLength = prefix + suffix + 1;
        double bytesShared = (double)bytesPerPosition * (prefix + (long)sequences * (suffix + 1));
        double bytesPerSequence = (double)bytesPerPosition * sequences * contextLength;
        double flops = 4.0 * (cache.KvDim / kvHeads) * heads * contextLength * sequences * cache.Layers;
        double roofMsShared = 1e3 * Math.Max(bytesShared / bandwidth, flops / flopPeak), roofMsPerSequence = 1e3 * Math.Max(bytesPerSequence / bandwidth, flops / flopPeak);
        string Bound(double bytes) => bytes / bandwidth >= flops / flopPeak ? "bandwidth" : "FLOP";
        double stepShared = sequences / Median(stepSeconds[1]), stepPerSequence = sequences / Median(stepSeconds[0]);
        string load = File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Trim() : "unknown";
        output.WriteLine($"shared-prefix: {Path.GetFileName(modelPath)}, {sequences} sequences sharing {prefix} tokens, {suffix} of their own; {threads} threads, {storage} KV, medians of {runs} runs of {RepeatsPerRun}");
        output.WriteLine($"  attention per step (all layers): shared {attentionShared:F2} ms, per sequence {attentionPerSequence:F2} ms, ratio {attentionPerSequence / attentionShared:F2}x");
        output.WriteLine($"  attention CPU time (all threads, spins included; less sensitive to a busy machine): shared {Median(attentionCpuMs[1]):F2} ms, per sequence {Median(attentionCpuMs[0]):F2} ms, ratio {Median(attentionCpuMs[0]) / Median(attentionCpuMs[1]):F2}x");
        output.WriteLine($"  whole decode step:               shared {stepShared:F1} tok/s, per sequence {stepPerSequence:F1} tok/s, ratio {stepShared / stepPerSequence:F2}x");
        output.WriteLine($"  roofline: KV read per step shared {bytesShared / 1e6:F1} MB, per sequence {bytesPerSequence / 1e6:F1} MB; attention {flops / 1e9:F2} GFLOP; measured read bandwidth {bandwidth / 1e9:F1} GB/s, fp32 peak {flopPeak / 1e9:F0} GFLOP/s");
        output.WriteLine($"            shared roof {roofMsShared:F2} ms ({Bound(bytesShared)}-bound), at {100 * roofMsShared / attentionShared:F0}% of it; per sequence roof {roofMsPerSequence:F2} ms ({Bound(bytesPerSequence)}-bound), at {100 * roofMsPerSequence / attentionPerSequence:F0}% of it; roofline ratio {roofMsPerSequence / roofMsShared:F2}x");
        output.WriteLine($"  largest difference shared vs per sequence: attention output (last layer) {largestAttentionDifference:G3}, logits {largestDifference:G3}; load average: {load}");
        if (jsonPath is not null)
        {
            var report = new Dictionary<string, object>
            {
                ["attention_ms_shared"] = Round(attentionShared),
                ["attention_ms_per_sequence"] = Round(attentionPerSequence),
                ["attention_ratio"] = Round(attentionPerSequence / attentionShared),
                ["step_tok_s_shared"] = Round(stepShared),
                ["step_tok_s_per_sequence"] = Round(stepPerSequence),
                ["step_ratio"] = Round(stepShared / stepPerSequence),
                ["attention_cpu_ms_shared"] = Round(Median(attentionCpuMs[1])),
                ["attention_cpu_ms_per_sequence"] = Round(Median(attentionCpuMs[0])),
                ["prefix"] = prefix, ["seqs"] = sequences, ["suffix"] = suffix, ["threads"] = threads, ["runs"] = runs,
                ["kv_bytes_shared"] = bytesShared, ["kv_bytes_per_sequence"] = bytesPerSequence, ["attention_gflop"] = Round(flops / 1e9),
                ["read_bandwidth_gb_s"] = Round(bandwidth / 1e9), ["fp32_peak_gflop_s"] = Round(flopPeak / 1e9),
                ["attention_roof_ms_shared"] = Round(roofMsShared), ["attention_roof_ms_per_sequence"] = Round(roofMsPerSequence),
                ["attention_pct_of_roof_shared"] = Round(100 * roofMsShared / attentionShared), ["attention_pct_of_roof_per_sequence"] = Round(100 * roofMsPerSequence / attentionPerSequence),
                ["attention_roofline_ratio"] = Round(roofMsPerSequence / roofMsShared),
                ["kv_storage"] = storage.ToString(), ["largest_logit_difference"] = largestDifference, ["largest_attention_difference"] = largestAttentionDifference, ["load_average"] = load,
            };
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }) + "\n");
        }
        return 0;
    }

    private static double Round(double value) => Math.Round(value, 3);

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static ReadOnlySpan<int> RandomTokens(Random random, int[] tokens, int count, int vocab)
    {
        for (int i = 0; i < count; i++) tokens[i] = random.Next(1, vocab);
        return tokens.AsSpan(0, count);
    }

    /// <summary>
    /// The step's attention alone, every layer, as the compiled plan runs it (the same kernel, on a pool of the same
    /// size), over the cache the steps filled and random queries.
    /// </summary>
    private sealed class AttentionProbe : IDisposable
    {
        private readonly WorkerPool _pool;
        private readonly NativeBlock _memory;
        private readonly FloatBuffer _q, _output, _scores, _gather, _prefixStatistics;
        private readonly KvCache _cache;
        private readonly AttentionContext _context;
        private readonly int _heads, _kvHeads, _headDim, _scoresStride, _gatherStride, _layers;

        public AttentionProbe(int heads, int kvHeads, KvCache cache, AttentionContext context, int threads, Random random)
        {
            _cache = cache;
            _context = context;
            _layers = cache.Layers;
            _kvHeads = kvHeads;
            _headDim = cache.KvDim / kvHeads;
            _heads = heads;
            _pool = new WorkerPool(threads);
            int qCols = _heads * _headDim, tokens = context.Capacity;
            _scoresStride = PagedAttention.ScoresPerChunk(cache.MaxContext, _heads, _headDim);
            _gatherStride = KvBlocks.ScratchFloats(cache);
            long floats = 2L * tokens * qCols + (long)PagedAttention.MaxChunks * (_scoresStride + _gatherStride) + PagedAttention.PrefixStatisticsFloats(tokens, _heads);
            _memory = new NativeBlock(floats * sizeof(float));
            long at = 0;
            _q = _memory.Floats(at, tokens * qCols);
            at += (long)tokens * qCols * sizeof(float);
            _output = _memory.Floats(at, tokens * qCols);
            at += (long)tokens * qCols * sizeof(float);
            _scores = _memory.Floats(at, PagedAttention.MaxChunks * _scoresStride);
            at += (long)PagedAttention.MaxChunks * _scoresStride * sizeof(float);
            _gather = _memory.Floats(at, PagedAttention.MaxChunks * _gatherStride);
            at += (long)PagedAttention.MaxChunks * _gatherStride * sizeof(float);
            _prefixStatistics = _memory.Floats(at, PagedAttention.PrefixStatisticsFloats(tokens, _heads));
            var q = _q.Span;
            for (int i = 0; i < q.Length; i++) q[i] = (float)(random.NextDouble() * 2 - 1);
        }

        /// <summary>The latest <see cref="Attend"/>'s output rows for the step's tokens (its last layer's).</summary>
        public ReadOnlySpan<float> Output => _output.Span[..(_context.TokenCount * _heads * _headDim)];

        public void Attend()
        {
            int qCols = _heads * _headDim;
            for (int layer = 0; layer < _layers; layer++)
            {
                var work = new PagedAttention
                {
                    Q = _q, Output = _output, Scores = _scores, ScoresStride = _scoresStride, Gather = _gather, GatherStride = _gatherStride,
                    PrefixStatistics = _prefixStatistics, Cache = _cache, Context = _context, Layer = layer, Heads = _heads, KvHeads = _kvHeads, HeadDim = _headDim,
                    QCols = qCols, KvCols = _kvHeads * _headDim, Options = new AttentionOptions(1f / MathF.Sqrt(_headDim)),
                };
                work.Run(_pool, _context.TokenCount);
            }
        }

        public void Dispose()
        {
            _pool.Dispose();
            _memory.Dispose();
        }
    }
}
