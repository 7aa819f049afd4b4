using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Models;
using Kiln.Threading;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Kiln.Bench;

/// <summary>
/// Kiln and ONNX Runtime embedding the same token ids with all-MiniLM-L6-v2 (the package's ONNX file), alternating run
/// by run, medians in sentences/s: sentence-transformers' pipeline (encoder, mean pooling, L2 norm) end to end after
/// tokenization. ONNX Runtime takes a padded batch [32, longest] with an attention mask; Kiln packs the 32 sequences
/// into one step without padding. The fp32 FMA peak is measured in the same run, and each engine's useful FLOP/s
/// (matmuls and attention of the real tokens) shown against it.
/// </summary>
public static class EmbedCompare
{
    private const int WarmUpRuns = 3, Sentences = 32;

    private sealed record Workload(string Name, string Description, int[][] Ids);

    public static int Run(int threads, int runs, string? json, int seed, TextWriter output, TextWriter log, bool profile = false)
    {
        var (modelPath, _) = MiniLm.Files();
        var random = new Random(seed);
        // Ordinary word pieces of the vocabulary (ids 1996..29611: no special, unused or single-character tokens).
        int[] Sequence(int length) => [101, .. Enumerable.Range(0, length - 2).Select(_ => random.Next(1996, 29612)), 102];
        var workloads = new[]
        {
            new Workload("fixed_32x32", "32 sentences of exactly 32 tokens per call", Enumerable.Range(0, Sentences).Select(_ => Sequence(32)).ToArray()),
            new Workload("mixed_32", "32 sentences per call, lengths uniform in 8–256 tokens", Enumerable.Range(0, Sentences).Select(_ => Sequence(random.Next(8, 257))).ToArray()),
        };

        log.WriteLine($"embed-compare: all-MiniLM-L6-v2 ({modelPath}); {threads} threads, {runs} runs after {WarmUpRuns} warm-up runs, alternating");
        log.WriteLine("embed-compare: measuring the fp32 FMA peak (again after the runs; the best counts)...");
        double peak = MachineLimits.PeakFp32Flops(threads);
        var model = MiniLm.Load();
        using var plan = model.Compile(new PlanOptions(Sentences * MiniLm.MaxSequenceTokens, threads));
        using var sessionOptions = new SessionOptions
        {
            IntraOpNumThreads = threads,
            InterOpNumThreads = 1,
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
        };
        using var session = new InferenceSession(modelPath, sessionOptions);
        double flopsPerToken = 2.0 * model.LayerCount * (4L * model.Dim * model.Dim + 2L * model.Dim * model.Hidden);

        var results = new List<(Workload Workload, double Kiln, double Ort, double Flops, double Agreement)>();
        var profiles = new List<(Workload Workload, StepProfiler Profiler, double StepMs)>();
        foreach (var workload in workloads)
        {
            var kiln = new KilnRunner(plan, workload.Ids, model.Dim);
            using var ort = new OrtRunner(session, workload.Ids);
            double agreement = kiln.Embeddings().Zip(ort.Embeddings(), Cosine).Min();
            log.WriteLine($"embed-compare: {workload.Name}: {workload.Description}; lowest cosine Kiln vs ORT {agreement:F7}");
            for (int i = 0; i < WarmUpRuns; i++)
            {
                kiln.Time();
                ort.Time();
            }
            var kilnRuns = new double[runs];
            var ortRuns = new double[runs];
            for (int r = 0; r < runs; r++)
            {
                Compare.Settle();
                kilnRuns[r] = Sentences / kiln.Time();
                Compare.Settle();
                ortRuns[r] = Sentences / ort.Time();
                log.WriteLine($"embed-compare: {workload.Name} run {r + 1}/{runs}: kiln {kilnRuns[r]:F1}, ort {ortRuns[r]:F1} sentences/s");
            }
            if (profile)
            {
                // Separate runs after the timed ones: the profiler's marks cost a little, so they never touch the medians.
                var profiler = new StepProfiler(threads);
                // One profiled step first, then cleared: the profiler's own first-use costs (its code compiled, the
                // parts registered) would otherwise land in "step setup".
                StepProfiler.Attach(profiler);
                kiln.Time();
                StepProfiler.Detach();
                profiler.Reset();
                long ticks = 0;
                for (int r = 0; r < runs; r++)
                {
                    StepProfiler.Attach(profiler);
                    ticks += (long)(kiln.Time() * Stopwatch.Frequency);
                    StepProfiler.Detach();
                }
                profiles.Add((workload, profiler, 1000.0 * ticks / Stopwatch.Frequency / runs));
            }
            long tokens = workload.Ids.Sum(i => (long)i.Length);
            double attention = workload.Ids.Sum(i => 4.0 * i.Length * i.Length * model.Dim) * model.LayerCount;
            results.Add((workload, Median(kilnRuns), Median(ortRuns), tokens * flopsPerToken + attention, agreement));
        }
        peak = Math.Max(peak, MachineLimits.PeakFp32Flops(threads));

        output.WriteLine($"embed-compare: all-MiniLM-L6-v2, {threads} threads; fp32 FMA peak {peak / 1e9:F0} GFLOP/s (the roof; best of before and after)");
        output.WriteLine($"{"workload",-12} {"kiln sent/s",12} {"ort sent/s",11} {"ratio",7} {"kiln % roof",12} {"ort % roof",11}  {"min cosine",10}");
        foreach (var (workload, kilnRate, ortRate, flops, agreement) in results)
        {
            double perSentence = flops / Sentences;
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{workload.Name,-12} {kilnRate,12:F1} {ortRate,11:F1} {kilnRate / ortRate,6:F2}x {100 * kilnRate * perSentence / peak,11:F0}% {100 * ortRate * perSentence / peak,10:F0}%  {agreement,10:F7}"));
        }
        output.WriteLine("(% roof: the real tokens' matmul and attention FLOPs per second over the fp32 FMA peak; ONNX Runtime also computes its padding.)");
        foreach (var (workload, profiler, stepMs) in profiles) WriteProfile(output, workload, profiler, stepMs, model, peak);
        if (json is not null)
        {
            using var stream = File.Create(json);
            using var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
            writer.WriteStartObject();
            foreach (var (workload, kilnRate, ortRate, _, _) in results)
            {
                writer.WriteStartObject(workload.Name);
                writer.WriteNumber("kiln", Math.Round(kilnRate, 2));
                writer.WriteNumber("ort", Math.Round(ortRate, 2));
                writer.WriteNumber("ratio", Math.Round(kilnRate / ortRate, 4));
                writer.WriteEndObject();
            }
            writer.WriteEndObject();
            log.WriteLine($"embed-compare: wrote {json}");
        }
        return 0;
    }

    /// <summary>
    /// Where one Kiln step's time goes, part by part as the generated plan marks them (all layers summed): wall ms per
    /// step, its share, and for the matmuls and attention their useful GFLOP/s against the fp32 FMA peak of this run.
    /// </summary>
    private static void WriteProfile(TextWriter output, Workload workload, StepProfiler profiler, double stepMs, Bert model, double peak)
    {
        var c = CultureInfo.InvariantCulture;
        long tokens = workload.Ids.Sum(i => (long)i.Length);
        double attentionMacs = workload.Ids.Sum(i => 2.0 * i.Length * i.Length * model.Dim) * model.LayerCount;
        double MatmulMacs(string packed) => tokens * model.LayerCount * (double)(packed switch
        {
            "wqWkWv" => 3L * model.Dim * model.Dim,
            "wo" => (long)model.Dim * model.Dim,
            "up" or "down" => (long)model.Dim * model.Hidden,
            _ => 0,
        });
        double msPerTick = 1000.0 / Stopwatch.Frequency / profiler.Steps;
        output.WriteLine();
        output.WriteLine(string.Create(c, $"profile {workload.Name}: {tokens} tokens per step, {stepMs:F3} ms per profiled step ({profiler.Steps} steps); parts summed over {model.LayerCount} layers"));
        // Per thread, inside the part's pool runs: waiting for its first chunk (handoff) and for the other threads (barrier).
        string waitHeader = string.Join("", Enumerable.Range(0, profiler.ThreadCount).Select(t => $"{"hand t" + t,8}{"barr t" + t,8}"));
        output.WriteLine($"{"part",-24} {"ms/step",8} {"%step",6} {"runs",5} {"GFLOP",8} {"GFLOP/s",8} {"% peak",7}{waitHeader}");
        foreach (var part in profiler.Parts)
        {
            double ms = part.WallTicks * msPerTick;
            double macs = part.Name.StartsWith("matmul ", StringComparison.Ordinal) ? MatmulMacs(part.Name["matmul ".Length..])
                : part.Name == "attention" ? attentionMacs : 0;
            string costed = macs > 0
                ? string.Create(c, $"{2 * macs / 1e9,8:F3} {2 * macs / 1e6 / ms,8:F1} {100 * 2 * macs * 1e3 / ms / peak,6:F0}%")
                : $"{"-",8} {"-",8} {"-",7}";
            string waits = string.Join("", Enumerable.Range(0, profiler.ThreadCount).Select(t =>
                string.Create(c, $"{part.HandoffTicks[t] * msPerTick,8:F3}{part.BarrierTicks(t) * msPerTick,8:F3}")));
            output.WriteLine(string.Create(c, $"{part.Name,-24} {ms,8:F3} {100 * ms / stepMs,5:F1}% {(double)part.Runs / profiler.Steps,5:F0} {costed}{waits}"));
        }
        double inside = profiler.StepTicks * msPerTick;
        output.WriteLine(string.Create(c, $"{"(outside the plan's parts)",-24} {stepMs - inside,8:F3} {100 * (stepMs - inside) / stepMs,5:F1}%"));
    }

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static double Cosine(float[] a, float[] b)
    {
        double dot = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++)
        {
            dot += (double)a[i] * b[i];
            aa += (double)a[i] * a[i];
            bb += (double)b[i] * b[i];
        }
        return dot / Math.Sqrt(aa * bb);
    }

    /// <summary>Kiln: the 32 sequences packed into one step (the embeddings come out pooled and normalized).</summary>
    private sealed class KilnRunner(ICompiledPlan plan, int[][] ids, int dim)
    {
        private readonly int[] _tokens = ids.SelectMany(i => i).ToArray();
        private readonly AttentionContext _context = new(ids.Sum(i => i.Length));
        private readonly float[] _output = new float[ids.Length * dim];

        public double Time()
        {
            long start = Stopwatch.GetTimestamp();
            _context.Clear();
            foreach (var sequence in ids) _context.AddSequence(sequence.Length);
            plan.Step(_tokens, _context, _output);
            return Stopwatch.GetElapsedTime(start).TotalSeconds;
        }

        public IEnumerable<float[]> Embeddings()
        {
            Time();
            return Enumerable.Range(0, ids.Length).Select(s => _output.AsSpan(s * dim, dim).ToArray()).ToArray();
        }
    }

    /// <summary>ONNX Runtime: one padded batch with its attention mask, then mean pooling over the mask and L2 norm.</summary>
    private sealed class OrtRunner : IDisposable
    {
        private readonly InferenceSession _session;
        private readonly int[][] _ids;
        private readonly OrtValue _input, _mask, _types;
        private readonly Dictionary<string, OrtValue> _inputs;
        private readonly float[][] _pooled;

        public OrtRunner(InferenceSession session, int[][] ids)
        {
            _session = session;
            _ids = ids;
            int length = ids.Max(i => i.Length);
            var input = new long[ids.Length * length];
            var mask = new long[ids.Length * length];
            for (int b = 0; b < ids.Length; b++)
                for (int t = 0; t < ids[b].Length; t++)
                {
                    input[b * length + t] = ids[b][t];
                    mask[b * length + t] = 1;
                }
            long[] shape = [ids.Length, length];
            _input = OrtValue.CreateTensorValueFromMemory(input, shape);
            _mask = OrtValue.CreateTensorValueFromMemory(mask, shape);
            _types = OrtValue.CreateTensorValueFromMemory(new long[ids.Length * length], shape);
            _inputs = new() { ["input_ids"] = _input, ["attention_mask"] = _mask, ["token_type_ids"] = _types };
            _pooled = ids.Select(_ => Array.Empty<float>()).ToArray();
        }

        public double Time()
        {
            long start = Stopwatch.GetTimestamp();
            using var runOptions = new RunOptions();
            using var results = _session.Run(runOptions, _inputs, ["last_hidden_state"]);
            var hidden = results[0].GetTensorDataAsSpan<float>();
            var shape = results[0].GetTensorTypeAndShape().Shape;
            int length = (int)shape[1], dim = (int)shape[2];
            for (int b = 0; b < _ids.Length; b++)
            {
                var pooled = new float[dim];
                for (int t = 0; t < _ids[b].Length; t++)
                {
                    var row = hidden.Slice((b * length + t) * dim, dim);
                    for (int c = 0; c < dim; c++) pooled[c] += row[c];
                }
                float norm = MathF.Sqrt(pooled.Sum(v => v * v));
                for (int c = 0; c < dim; c++) pooled[c] /= norm; // the mean's 1/n cancels in the norm
                _pooled[b] = pooled;
            }
            return Stopwatch.GetElapsedTime(start).TotalSeconds;
        }

        public IEnumerable<float[]> Embeddings()
        {
            Time();
            return _pooled.Select(p => (float[])p.Clone()).ToArray();
        }

        public void Dispose()
        {
            _input.Dispose();
            _mask.Dispose();
            _types.Dispose();
        }
    }
}
