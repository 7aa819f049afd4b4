using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Gpu;
using Kiln.Loading;
using Kiln.Models;

namespace Kiln.Bench;

/// <summary>
/// The GPU plan's two checks. <c>gpu-agree</c>: the GPU plan against the CPU plan on the same file, teacher-forced
/// (a prefill, then decodes), every wanted logit compared. <c>gpu-compare</c>: Kiln on CUDA at the shapes of the
/// PyTorch peer (shared/gpu/torch_llama.py), beside the peer's figures and the roof of each workload, from a copy
/// kernel and an FMA kernel timed in the same run.
/// </summary>
internal static class GpuCommands
{
    private const float AgreeTolerance = 1e-3f;

    public static int Run(string[] args)
    {
        try
        {
            var options = Parse(args.AsSpan(1), args[0] == "gpu-agree" ? ["accelerator", "model", "json", "positions"] : ["model", "json", "torch", "runs"]);
            return args[0] == "gpu-agree" ? Agree(options) : Compare(options);
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"bench {args[0]}: {e.Message}");
            return 2;
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or ModelLoadException or NotSupportedException)
        {
            Console.Error.WriteLine($"bench {args[0]}: error: {e.Message}");
            return 1;
        }
    }

    private static Dictionary<string, string> Parse(ReadOnlySpan<string> args, string[] known)
    {
        var options = new Dictionary<string, string>();
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i].StartsWith("--", StringComparison.Ordinal) ? args[i][2..] : throw new ArgumentException($"unexpected argument '{args[i]}'");
            if (!known.Contains(name)) throw new ArgumentException($"unknown option --{name} (expected --{string.Join(", --", known)})");
            if (i + 1 >= args.Length) throw new ArgumentException($"--{name} needs a value");
            options[name] = args[++i];
        }
        return options;
    }

    private static string Required(Dictionary<string, string> options, string name) =>
        options.TryGetValue(name, out var value) ? value : throw new ArgumentException($"--{name} is required");

    private static IKilnGpuModel LoadModel(ModelFile file) =>
        ModelCatalog.Load(file) as IKilnGpuModel ?? throw new NotSupportedException($"The {file.Architecture} definition has no GPU plan.");

    // ---- gpu-agree -----------------------------------------------------------------------------------------------

    private static int Agree(Dictionary<string, string> options)
    {
        string kind = Required(options, "accelerator");
        string path = Required(options, "model");
        string json = Required(options, "json");
        int positions = int.Parse(options.GetValueOrDefault("positions", "32"), CultureInfo.InvariantCulture);
        if (positions < 2) throw new ArgumentException("--positions must be at least 2");

        using var file = ModelFile.Open(path);
        var model = LoadModel(file);
        using var context = KilnGpu.CreateContext();
        using var accelerator = KilnGpu.CreateAccelerator(context, kind);
        Console.Error.WriteLine($"gpu-agree: {file.Architecture} from {path} on {accelerator.Name} ({accelerator.AcceleratorType})");
        int prefill = positions / 2, maxTokens = prefill;
        using var cpu = model.Compile(new PlanOptions(maxTokens));
        using var gpu = model.CompileGpu(accelerator, new GpuPlanOptions(maxTokens));
        var cpuContext = new AttentionContext(model.CreateKvCache(1, positions), maxTokens);
        var gpuContext = new AttentionContext(gpu.CreateKvCache(1, positions), maxTokens);
        var random = new Random(12345);
        int[] tokens = Enumerable.Range(0, positions).Select(_ => random.Next(model.VocabSize)).ToArray();
        var expected = new float[maxTokens * model.VocabSize];
        var actual = new float[maxTokens * model.VocabSize];
        float worst = 0;
        int compared = 0;
        // A prefill wanting every row, then one position per step.
        for (int start = 0; start < positions;)
        {
            int count = start == 0 ? prefill : 1;
            cpuContext.Clear();
            gpuContext.Clear();
            for (int i = 0; i < count; i++)
            {
                cpuContext.Add(start + i, 0, wantLogits: true);
                gpuContext.Add(start + i, 0, wantLogits: true);
            }
            cpu.Step(tokens.AsSpan(start, count), cpuContext, expected);
            gpu.Step(tokens.AsSpan(start, count), gpuContext, actual);
            for (int i = 0; i < count * model.VocabSize; i++)
            {
                float difference = MathF.Abs(expected[i] - actual[i]);
                worst = float.IsNaN(difference) ? float.PositiveInfinity : MathF.Max(worst, difference);
            }
            compared += count;
            start += count;
        }
        var result = new JsonObject
        {
            ["accelerator"] = kind,
            ["device"] = accelerator.Name,
            ["model"] = Path.GetFileName(path),
            ["positions"] = compared,
            ["max_abs_dlogit"] = worst,
            ["tolerance"] = AgreeTolerance,
            ["agrees"] = worst <= AgreeTolerance,
        };
        File.WriteAllText(json, result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine($"gpu-agree {kind}: {compared} positions, max |Δlogit| {worst:E2} ({(worst <= AgreeTolerance ? "within" : "OUTSIDE")} {AgreeTolerance:E0})");
        return worst <= AgreeTolerance ? 0 : 1;
    }

    // ---- gpu-compare ---------------------------------------------------------------------------------------------

    private const int Prompt = 128, Decode = 128, Batch = 32;

    private static int Compare(Dictionary<string, string> options)
    {
        string path = Required(options, "model");
        string json = Required(options, "json");
        int runs = int.Parse(options.GetValueOrDefault("runs", "5"), CultureInfo.InvariantCulture);
        using var context = KilnGpu.CreateContext();
        using var accelerator = KilnGpu.CreateAccelerator(context, "cuda");
        using var file = ModelFile.Open(path);
        var clock = Stopwatch.StartNew();
        var model = LoadModel(file);
        Console.Error.WriteLine($"gpu-compare: loaded {path} in {clock.Elapsed.TotalSeconds:F1} s; {accelerator.Name}, {accelerator.NumMultiprocessors} SMs");
        clock.Restart();
        using var plan = model.CompileGpu(accelerator, new GpuPlanOptions(Prompt));
        Console.Error.WriteLine($"gpu-compare: plan compiled in {clock.Elapsed.TotalSeconds:F1} s ({plan.WeightBytes / 1e9:F2} GB of weights, {plan.MatMulParameters / 1e6:F0}M matmul weights)");

        var (copyBytesPerSecond, flopsPerSecond) = MeasureRoofs(accelerator);
        Console.Error.WriteLine($"gpu-compare: copy {copyBytesPerSecond / 1e9:F0} GB/s (read + write), FMA {flopsPerSecond / 1e12:F1} TFLOP/s fp32");

        var cache = plan.CreateKvCache(Batch, Prompt + Decode + 1);
        var workloads = new JsonObject();
        var peer = PeerFigures(options.GetValueOrDefault("torch"), model);
        double flopsPerToken = 2.0 * plan.MatMulParameters;
        long kvBytesPerPosition = 2L * model.KvShape.Layers * model.KvShape.KvDim * sizeof(float);

        // prefill_128: one sequence's 128 tokens in one step.
        double prefill = Median(runs, () => Time(() => Prefill(plan, cache, 0)) ) ;
        Add(workloads, "prefill_128", Prompt / prefill, peer, "prefill_128",
            Roof(flopsPerSecond / (flopsPerToken), "compute", copyBytesPerSecond / ((double)plan.WeightBytes / Prompt), "bandwidth"));

        // decode_128: 128 tokens after a 128-token prompt, one per step; the logits come back after each.
        var logits = new float[Batch * model.VocabSize];
        long launchesBefore = 0, launchesAfter = 0;
        double decode = Median(runs, () =>
        {
            Prefill(plan, cache, 0);
            launchesBefore = plan.Launches;
            double seconds = Time(() => DecodeSteps(plan, cache, 1, logits));
            launchesAfter = plan.Launches;
            return seconds;
        });
        double decodeBytes = plan.WeightBytes + kvBytesPerPosition * (Prompt + Decode / 2.0);
        Add(workloads, "decode_128", Decode / decode, peer, "decode_128",
            Roof(copyBytesPerSecond / decodeBytes, "bandwidth", flopsPerSecond / flopsPerToken, "compute"));

        // batched_decode_32: 32 sequences with 128-token prompts, 128 steps of 32 tokens.
        double batched = Median(Math.Max(1, runs / 2), () =>
        {
            for (int s = 0; s < Batch; s++) Prefill(plan, cache, s);
            return Time(() => DecodeSteps(plan, cache, Batch, logits));
        });
        double batchedBytes = plan.WeightBytes + Batch * kvBytesPerPosition * (Prompt + Decode / 2.0);
        Add(workloads, "batched_decode_32", Batch * Decode / batched, peer, "batched_decode_32",
            Roof(copyBytesPerSecond * Batch / batchedBytes, "bandwidth", flopsPerSecond / flopsPerToken, "compute"));

        double launchesPerStep = (launchesAfter - launchesBefore) / (double)Decode;
        var result = new JsonObject
        {
            ["model"] = Path.GetFileName(path),
            ["device"] = accelerator.Name,
            ["weight_bytes"] = plan.WeightBytes,
            ["matmul_parameters"] = plan.MatMulParameters,
            ["copy_gbps"] = Math.Round(copyBytesPerSecond / 1e9, 1),
            ["fp32_fma_tflops"] = Math.Round(flopsPerSecond / 1e12, 2),
            ["launches_per_decode_step"] = Math.Round(launchesPerStep, 1),
            ["torch_key"] = peer?.Key,
            ["workloads"] = workloads,
        };
        File.WriteAllText(json, result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine($"gpu-compare {Path.GetFileName(path)} on {accelerator.Name} ({launchesPerStep:F0} launches and copies per decode step; torch: {peer?.Key ?? "no figures"})");
        Console.WriteLine($"{"workload",-18} {"kiln tok/s",12} {"torch tok/s",12} {"ratio",7} {"roof tok/s",12} {"bound",10} {"of roof",8}");
        foreach (var (name, node) in workloads)
        {
            var w = node!.AsObject();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{name,-18} {(double)w["kiln_tok_s"]!,12:F0} {Text(w["torch_tok_s"], "F0"),12} {Text(w["ratio"], "F2"),7} {(double)w["roof_tok_s"]!,12:F0} {(string)w["bound"]!,10} {(double)w["of_roof"]!,8:P0}"));
        }
        return 0;
    }

    private static string Text(JsonNode? node, string format) => node is null ? "-" : ((double)node).ToString(format, CultureInfo.InvariantCulture);

    private static (double TokensPerSecond, string Bound) Roof(double first, string firstBound, double second, string secondBound) =>
        first <= second ? (first, firstBound) : (second, secondBound);

    private static void Add(JsonObject workloads, string name, double tokensPerSecond, (string Key, JsonObject Figures)? peer, string peerName, (double TokensPerSecond, string Bound) roof)
    {
        double? torch = peer?.Figures[peerName]?.GetValue<double>();
        workloads[name] = new JsonObject
        {
            ["kiln_tok_s"] = Math.Round(tokensPerSecond, 1),
            ["torch_tok_s"] = torch,
            ["ratio"] = torch is > 0 ? Math.Round(tokensPerSecond / torch.Value, 2) : null,
            ["roof_tok_s"] = Math.Round(roof.TokensPerSecond, 1),
            ["bound"] = roof.Bound,
            ["of_roof"] = Math.Round(tokensPerSecond / roof.TokensPerSecond, 3),
        };
        Console.Error.WriteLine($"gpu-compare: {name} {tokensPerSecond:F0} tok/s (torch {torch?.ToString("F0", CultureInfo.InvariantCulture) ?? "-"}, roof {roof.TokensPerSecond:F0} {roof.Bound})");
    }

    /// <summary>The peer's figures for this shape (torch_llama.py's fp32 entries: "110m/float32", "tinyllama1.1b/float32").</summary>
    private static (string Key, JsonObject Figures)? PeerFigures(string? path, IKilnModel model)
    {
        if (path is null || !File.Exists(path)) return null;
        var root = JsonNode.Parse(File.ReadAllText(path))?.AsObject();
        string shape = model.KvShape.Layers >= 20 ? "tinyllama1.1b" : "110m";
        string key = shape + "/float32";
        return root?[key] is JsonObject figures ? (key, figures) : null;
    }

    private static double Median(int runs, Func<double> run)
    {
        run(); // warm up: kernels compiled, caches grown
        var times = new double[Math.Max(runs, 1)];
        for (int i = 0; i < times.Length; i++) times[i] = run();
        Array.Sort(times);
        return times[times.Length / 2];
    }

    private static double Time(Action action)
    {
        var clock = Stopwatch.StartNew();
        action();
        return clock.Elapsed.TotalSeconds;
    }

    private static readonly float[] PrefillLogits = new float[1 << 16];

    private static void Prefill(GpuPlan plan, KvCache cache, int slot)
    {
        var context = new AttentionContext(cache, Prompt);
        var tokens = new int[Prompt];
        for (int i = 0; i < Prompt; i++) tokens[i] = (i * 7919 + slot * 31 + 3) % plan.VocabSize;
        context.SetSequence(slot, 0, Prompt);
        plan.Step(tokens, context, PrefillLogits.Length >= plan.VocabSize ? PrefillLogits : new float[plan.VocabSize]);
    }

    /// <summary>128 steps of one token for each of <paramref name="sequences"/> sequences, the next token the argmax of the last logits.</summary>
    private static void DecodeSteps(GpuPlan plan, KvCache cache, int sequences, float[] logits)
    {
        var context = new AttentionContext(cache, sequences);
        var tokens = new int[sequences];
        for (int s = 0; s < sequences; s++) tokens[s] = (s * 13 + 5) % plan.VocabSize;
        int vocab = plan.VocabSize;
        for (int step = 0; step < Decode; step++)
        {
            context.Clear();
            for (int s = 0; s < sequences; s++) context.Add(Prompt + step, s, wantLogits: true);
            plan.Step(tokens, context, logits);
            for (int s = 0; s < sequences; s++)
            {
                var row = logits.AsSpan(s * vocab, vocab);
                int best = 0;
                for (int i = 1; i < row.Length; i++) if (row[i] > row[best]) best = i;
                tokens[s] = best;
            }
        }
    }

    // ---- The card's roofs, measured here -------------------------------------------------------------------------

    private static (double CopyBytesPerSecond, double FlopsPerSecond) MeasureRoofs(Accelerator accelerator)
    {
        const long floats = 1L << 28; // 1 GiB each way
        using var source = accelerator.Allocate1D<float>(floats);
        using var destination = accelerator.Allocate1D<float>(floats);
        source.MemSetToZero();
        var copy = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>>(CopyKernel);
        var fma = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, int>(FmaKernel);
        double copySeconds = Median(10, () =>
        {
            var clock = Stopwatch.StartNew();
            copy((int)floats, source.View, destination.View);
            accelerator.Synchronize();
            return clock.Elapsed.TotalSeconds;
        });
        const int threads = 1 << 22, iterations = 4096;
        double fmaSeconds = Median(10, () =>
        {
            var clock = Stopwatch.StartNew();
            fma(threads, destination.View, iterations);
            accelerator.Synchronize();
            return clock.Elapsed.TotalSeconds;
        });
        // Each iteration: 8 independent FMAs of 2 FLOPs.
        return (2.0 * floats * sizeof(float) / copySeconds, 16.0 * iterations * threads / fmaSeconds);
    }

    private static void CopyKernel(Index1D i, ArrayView<float> source, ArrayView<float> destination) => destination[i] = source[i];

    private static void FmaKernel(Index1D i, ArrayView<float> output, int iterations)
    {
        float a = i * 1e-9f, b = a + 0.1f, c = a + 0.2f, d = a + 0.3f, e = a + 0.4f, f = a + 0.5f, g = a + 0.6f, h = a + 0.7f;
        for (int n = 0; n < iterations; n++)
        {
            a = a * 0.999f + 0.001f;
            b = b * 0.999f + 0.001f;
            c = c * 0.999f + 0.001f;
            d = d * 0.999f + 0.001f;
            e = e * 0.999f + 0.001f;
            f = f * 0.999f + 0.001f;
            g = g * 0.999f + 0.001f;
            h = h * 0.999f + 0.001f;
        }
        output[i] = a + b + c + d + e + f + g + h;
    }
}
