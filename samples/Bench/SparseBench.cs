using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Kernels.MatMul;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Threading;

namespace Kiln.Bench;

/// <summary>
/// Sparse against dense on one pruned file (make-model --sparsity): the same model compiled twice, once packed in the
/// file's sparse pattern (2:4 when every matrix is 2:4, else block-sparse) and once dense (PlanOptions.Sparsity =
/// None: the same zeros, multiplied), timed alternating run by run; the ratios of the medians, beside each
/// workload's roofline ratio (the bytes and multiply-adds the sparse layout saves, against the machine's measured
/// read bandwidth and int8 block-dot peak).
/// </summary>
public static class SparseBench
{
    private const int WarmUpRuns = 2, Prompt = 128, DecodePrompt = 16, DecodeTokens = 16, Sequences = 32, BatchedPrompt = 8, BatchedSteps = 4;

    private sealed record Workload(string Name, int Tokens, Func<ICompiledPlan, AttentionContext, double> Run);

    public static int Run(string modelPath, int threads, int runs, string? jsonPath, TextWriter output, TextWriter log)
    {
        var c = CultureInfo.InvariantCulture;
        using var file = ModelFile.Open(modelPath);
        var model = ModelCatalog.Load(file);
        var (pattern, key, byteRatio, macRatio) = Pattern(model, file, threads);
        log.WriteLine($"sparse: {Path.GetFileName(modelPath)}: {key}; {threads} threads, {runs} runs after {WarmUpRuns} warm-up runs, alternating dense/sparse");

        using var dense = model.Compile(new PlanOptions(Prompt, threads) { Sparsity = SparsePattern.None });
        using var sparse = model.Compile(new PlanOptions(Prompt, threads) { Sparsity = pattern });
        var logits = new float[(long)Prompt * model.VocabSize];
        int vocab = model.VocabSize;
        var random = new Random(1234);
        int[] Tokens(int count) => Enumerable.Range(0, count).Select(_ => random.Next(Math.Min(259, vocab - 1), vocab)).ToArray();
        int[] prompt = Tokens(Prompt), decodePrompt = Tokens(DecodePrompt), batchedPrompt = Tokens(BatchedPrompt);
        var one = new int[1];
        var batch = new int[Sequences];

        int ArgMax(int row)
        {
            int best = 0;
            for (int i = 1; i < vocab; i++) if (logits[(long)row * vocab + i] > logits[(long)row * vocab + best]) best = i;
            return best;
        }

        var workloads = new[]
        {
            new Workload("decode", DecodeTokens, (plan, context) =>
            {
                context.Clear();
                for (int p = 0; p < DecodePrompt; p++) context.Add(p, 0, p == DecodePrompt - 1);
                plan.Step(decodePrompt, context, logits);
                int token = ArgMax(0);
                long start = Stopwatch.GetTimestamp();
                for (int i = 0; i < DecodeTokens; i++)
                {
                    one[0] = token;
                    context.Clear();
                    context.Add(DecodePrompt + i, 0, true);
                    plan.Step(one, context, logits);
                    token = ArgMax(0);
                }
                return Stopwatch.GetElapsedTime(start).TotalSeconds;
            }),
            new Workload("prefill", Prompt, (plan, context) =>
            {
                context.Clear();
                for (int p = 0; p < Prompt; p++) context.Add(p, 0, p == Prompt - 1);
                long start = Stopwatch.GetTimestamp();
                plan.Step(prompt, context, logits);
                return Stopwatch.GetElapsedTime(start).TotalSeconds;
            }),
            new Workload("batched32", Sequences * BatchedSteps, (plan, context) =>
            {
                for (int s = 0; s < Sequences; s++)
                {
                    context.Clear();
                    for (int p = 0; p < BatchedPrompt; p++) context.Add(p, s, p == BatchedPrompt - 1);
                    plan.Step(batchedPrompt, context, logits);
                    batch[s] = ArgMax(0);
                }
                long start = Stopwatch.GetTimestamp();
                for (int step = 0; step < BatchedSteps; step++)
                {
                    context.Clear();
                    for (int s = 0; s < Sequences; s++) context.Add(BatchedPrompt + step, s, true);
                    plan.Step(batch, context, logits);
                    for (int s = 0; s < Sequences; s++) batch[s] = ArgMax(s);
                }
                return Stopwatch.GetElapsedTime(start).TotalSeconds;
            }),
        };

        log.WriteLine("sparse: measuring read bandwidth and the int8 block-dot peak...");
        double bandwidth = MachineLimits.ReadBandwidth(threads), int8Peak = MachineLimits.PeakInt8BlockMacs(threads, nibbles: false);
        double denseBytes = DenseMatrixBytes(file);
        double macsPerToken = denseBytes / 34 * 32; // Q8_0: 34 bytes per 32 weights
        output.WriteLine($"model: {modelPath}; pattern {key}; {threads} threads; uptime: {Uptime()}");
        output.WriteLine(string.Create(c, $"machine: read bandwidth {bandwidth / 1e9:F1} GB/s, int8 block-dot peak {int8Peak / 1e9:F0} GMAC/s; packed dense matrices {denseBytes / 1e6:F0} MB, sparse {denseBytes * byteRatio / 1e6:F0} MB ({byteRatio:P0})"));
        var json = new Dictionary<string, double>();
        var roofline = new Dictionary<string, double>();
        foreach (var workload in workloads)
        {
            bool batched = workload.Name == "batched32";
            var denseCache = new AttentionContext(model.CreateKvCache(batched ? Sequences : 1, batched ? 16 : Prompt + 16), Prompt);
            var sparseCache = new AttentionContext(model.CreateKvCache(batched ? Sequences : 1, batched ? 16 : Prompt + 16), Prompt);
            for (int run = 0; run < WarmUpRuns; run++)
            {
                workload.Run(dense, denseCache);
                workload.Run(sparse, sparseCache);
            }
            var denseRuns = new double[runs];
            var sparseRuns = new double[runs];
            for (int run = 0; run < runs; run++)
            {
                // Alternate which goes first: a neighbour's burst on this shared machine then falls on both alike.
                Thread.Sleep(100);
                if (run % 2 == 0) denseRuns[run] = workload.Tokens / workload.Run(dense, denseCache);
                Thread.Sleep(100);
                sparseRuns[run] = workload.Tokens / workload.Run(sparse, sparseCache);
                if (run % 2 == 1) { Thread.Sleep(100); denseRuns[run] = workload.Tokens / workload.Run(dense, denseCache); }
                log.WriteLine(string.Create(c, $"sparse: {workload.Name} run {run + 1}/{runs}: dense {denseRuns[run]:F1} tok/s, sparse {sparseRuns[run]:F1} tok/s"));
            }
            double denseMedian = Median(denseRuns), sparseMedian = Median(sparseRuns), ratio = sparseMedian / denseMedian;
            json[workload.Name + "_ratio"] = Math.Round(ratio, 3);
            // The roofline of each: one pass over the weights serves the step's tokens; the slower of bytes and multiply-adds bounds it.
            int tokensPerPass = workload.Name switch { "decode" => 1, "prefill" => Prompt, _ => Sequences };
            double Roof(double bytes, double macs) => tokensPerPass / Math.Max(bytes / bandwidth, macs * tokensPerPass / int8Peak);
            double denseRoof = Roof(denseBytes, macsPerToken), sparseRoof = Roof(denseBytes * byteRatio, macsPerToken * macRatio);
            roofline[workload.Name + "_roofline_ratio"] = Math.Round(sparseRoof / denseRoof, 3);
            roofline[workload.Name + "_dense_pct_of_roof"] = Math.Round(100 * denseMedian / denseRoof, 1);
            roofline[workload.Name + "_sparse_pct_of_roof"] = Math.Round(100 * sparseMedian / sparseRoof, 1);
            output.WriteLine(string.Create(c,
                $"{workload.Name,-10} dense {denseMedian,8:F1} tok/s ({denseMedian / denseRoof:P0} of its roof {denseRoof:F0})  sparse {sparseMedian,8:F1} tok/s ({sparseMedian / sparseRoof:P0} of its roof {sparseRoof:F0})  ratio {ratio:F2}  roofline ratio {sparseRoof / denseRoof:F2} ({(denseBytes / bandwidth >= macsPerToken * tokensPerPass / int8Peak ? "BW" : "int8")}-bound dense)"));
        }
        output.WriteLine($"uptime at the end: {Uptime()}");
        if (jsonPath is not null)
        {
            var document = new Dictionary<string, Dictionary<string, double>>
            {
                // The three ratios first (the keys), then the roofline they are read against.
                [key] = new(json.Concat(roofline))
                {
                    ["bytes_ratio"] = Math.Round(byteRatio, 3), ["dense_matrix_mb"] = Math.Round(denseBytes / 1e6, 1),
                    ["read_bandwidth_gb_s"] = Math.Round(bandwidth / 1e9, 2), ["int8_peak_gmac_s"] = Math.Round(int8Peak / 1e9, 1),
                },
            };
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(document, new JsonSerializerOptions { WriteIndented = true }) + "\n");
            log.WriteLine($"sparse: wrote {jsonPath}");
        }
        return 0;
    }

    /// <summary>
    /// The 2:4 decode kernels alone (sparse --kernels), without a plan around them: every matrix of the 110m shape (12
    /// layers of fused QKV, output projection, fused gate/up and down, then the vocabulary; 116 MB dense, more than the
    /// caches), random weights magnitude-pruned 2:4 (seeded), packed dense and 2:4. One sweep is one decode token's
    /// GEMVs on the worker pool, split as a plan splits them; sweeps alternate dense and sparse after 3 warm-up pairs.
    /// The medians' ratio is read against the bytes' ratio: the roof when both layouts read memory at the same rate.
    /// </summary>
    public static int RunKernels(int threads, int runs, TextWriter output, TextWriter log)
    {
        var c = CultureInfo.InvariantCulture;
        const int layers = 12, seed = 42;
        log.WriteLine($"sparse --kernels: packing the 110m shapes dense and 2:4 (seed {seed})...");
        var dense = new List<PackedMatrix>();
        var sparse = new List<PackedMatrix>();
        var random = new Random(seed);
        var shapes = KernelsCommand.Shapes;
        try
        {
            for (int i = 0; i < layers * (shapes.Length - 1) + 1; i++)
            {
                var (_, rows, k) = i < layers * (shapes.Length - 1) ? shapes[i % (shapes.Length - 1)] : shapes[^1];
                var values = new float[(long)rows * k];
                for (long e = 0; e < values.Length; e++) values[e] = (float)(random.NextDouble() - 0.5);
                var pruned = SparseWeights.Prune(new Tensor(values, rows, k), SparsePattern.TwoFour);
                var d = new PackedMatrix(PackedFormat.Q8_0, rows, k);
                dense.Add(d);
                d.Pack(0, pruned);
                var s = new PackedMatrix(PackedFormat.Q8_0, rows, k, SparsePattern.TwoFour);
                sparse.Add(s);
                s.Pack(0, pruned);
                s.FinishPacking();
            }
            int maxK = shapes.Max(shape => shape.K);
            using var pool = new WorkerPool(threads);
            using var memory = new NativeBlock((maxK + shapes.Max(shape => (long)shape.Rows)) * sizeof(float));
            var x = memory.Floats(0, maxK);
            for (int i = 0; i < maxK; i++) x[i] = (float)(random.NextDouble() - 0.5);
            var scratches = new Dictionary<int, (GemmScratch Scratch, GemmInput Input)>();
            foreach (int k in shapes.Select(shape => shape.K).Distinct())
            {
                var scratch = new GemmScratch(1, k);
                scratches[k] = (scratch, scratch.Prepare(PackedFormat.Q8_0, memory.Floats(0, k), k, 1, k, null, 0, pool));
            }
            var y = memory.Floats((long)maxK * sizeof(float), shapes.Max(shape => shape.Rows));
            double Sweep(List<PackedMatrix> matrices)
            {
                long start = Stopwatch.GetTimestamp();
                foreach (var m in matrices)
                    pool.Run(m.Groups, Gemm.ChunkSize(m, 1, threads), new KernelsCommand.MatMulWork { Weights = m, Input = scratches[m.K].Input, Output = y, Rows = m.Rows });
                return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            }
            for (int i = 0; i < 3; i++) { Sweep(dense); Sweep(sparse); }
            var denseMs = new double[runs];
            var sparseMs = new double[runs];
            for (int run = 0; run < runs; run++)
            {
                // Alternate which goes first: a neighbour's burst on this shared machine then falls on both alike.
                if (run % 2 == 0) { denseMs[run] = Sweep(dense); sparseMs[run] = Sweep(sparse); }
                else { sparseMs[run] = Sweep(sparse); denseMs[run] = Sweep(dense); }
            }
            foreach (var (scratch, _) in scratches.Values) scratch.Dispose();
            double denseBytes = dense.Sum(m => (double)m.ByteCount), sparseBytes = sparse.Sum(m => (double)m.ByteCount);
            double denseMedian = Median(denseMs), sparseMedian = Median(sparseMs);
            output.WriteLine($"sparse --kernels: 110m shapes, one decode token's GEMVs, {threads} threads, medians of {runs} alternating sweeps; uptime: {Uptime()}");
            output.WriteLine(string.Create(c, $"dense  {denseMedian,7:F3} ms  {denseBytes / denseMedian / 1e6,5:F1} GB/s  ({denseBytes / 1e6:F0} MB)"));
            output.WriteLine(string.Create(c, $"2:4    {sparseMedian,7:F3} ms  {sparseBytes / sparseMedian / 1e6,5:F1} GB/s  ({sparseBytes / 1e6:F0} MB)"));
            output.WriteLine(string.Create(c, $"ratio {denseMedian / sparseMedian:F3} (bytes ratio {denseBytes / sparseBytes:F3}: the roof at equal GB/s); uptime at the end: {Uptime()}"));
            return 0;
        }
        finally
        {
            foreach (var m in dense) m.Dispose();
            foreach (var m in sparse) m.Dispose();
        }
    }

    /// <summary>
    /// The file's pattern: 2:4 when a 2:4 plan compiles (every packed row holds at most 2 nonzero values in 4), else
    /// block-sparse; the key names it ("2:4_q8_0", "block_80_q8_0" with the zero blocks' percentage), and the
    /// fractions of the dense bytes and multiply-adds the sparse layout keeps.
    /// </summary>
    private static (SparsePattern Pattern, string Key, double ByteRatio, double MacRatio) Pattern(IKilnModel model, ModelFile file, int threads)
    {
        try
        {
            using var probe = model.Compile(new PlanOptions(1, threads) { Sparsity = SparsePattern.TwoFour });
            return (SparsePattern.TwoFour, "2:4_q8_0", 176.0 / 272, 0.5);
        }
        catch (InvalidOperationException)
        {
            double kept = KeptTileFraction(file);
            return (SparsePattern.Blocks, string.Create(CultureInfo.InvariantCulture, $"block_{Math.Round(100 * (1 - kept)):F0}_q8_0"), kept, kept);
        }
    }

    /// <summary>Bytes of the Q8_0 matrices a plan packs (every 2-D tensor but an untied embedding table).</summary>
    private static double DenseMatrixBytes(ModelFile file)
    {
        bool tied = !file.Tensors.ContainsKey("output.weight");
        double bytes = 0;
        foreach (var (name, info) in file.Tensors)
            if (info.Dimensions.Length == 2 && (tied || name != "token_embd.weight")) bytes += info.ElementCount / 32.0 * 34;
        return bytes;
    }

    /// <summary>The fraction of 4-row × 32 tiles holding a nonzero value, over the matrices a plan packs.</summary>
    private static double KeptTileFraction(ModelFile file)
    {
        bool tied = !file.Tensors.ContainsKey("output.weight");
        long kept = 0, total = 0;
        foreach (var (name, info) in file.Tensors)
        {
            if (info.Dimensions.Length != 2 || !tied && name == "token_embd.weight") continue;
            var tensor = file.LoadTensor(name); // over the mapping: read 4 rows at a time, never decoded whole
            int rows = tensor.Rows, k = tensor.Cols;
            var tile = new float[4 * k];
            for (int r0 = 0; r0 < rows; r0 += 4)
            {
                int count = Math.Min(4, rows - r0);
                for (int r = 0; r < count; r++) tensor.ReadRow(r0 + r, tile.AsSpan(r * k, k));
                for (int c0 = 0; c0 < k; c0 += 32)
                {
                    bool any = false;
                    for (int r = 0; r < count && !any; r++)
                        for (int col = c0; col < Math.Min(k, c0 + 32) && !any; col++) any = tile[r * k + col] != 0;
                    total++;
                    if (any) kept++;
                }
            }
        }
        return total == 0 ? 1 : (double)kept / total;
    }

    private static string Uptime()
    {
        try
        {
            return File.Exists("/proc/loadavg") ? "load average " + string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";
        }
        catch (IOException)
        {
            return "n/a";
        }
    }

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }
}
