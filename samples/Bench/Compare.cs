using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Kiln.Loading;

namespace Kiln.Bench;

public sealed record ComparisonOptions(string ModelPath, int Threads, int Runs, string? JsonPath, IReadOnlyList<string> Workloads, bool Quick, int Seed)
{
    /// <summary>
    /// Kiln's KV-cache storage. F16 by default: llama.cpp's default, so both engines read the same bytes per cached
    /// element (the generated attention reads the halves in place, widening them in registers). F32 reads twice them.
    /// </summary>
    public KvStorage KvStorage { get; init; } = KvStorage.F16;

    public static readonly string[] AllWorkloads = ["prefill_128", "decode_128", "batched_decode_8", "batched_decode_32"];
}

/// <summary>
/// Kiln and llama.cpp on the same file and thread count, alternating run by run, medians compared with each
/// other and with the machine's roofline.
/// </summary>
public static class Compare
{
    /// <summary>Sizes of one run; --quick shrinks them (the workload names stay).</summary>
    internal sealed record Sizes(int Prompt, int Decode, int BatchedPrompt, int BatchedDecode)
    {
        public static Sizes Full { get; } = new(128, 128, 16, 128);
        public static Sizes Quick { get; } = new(32, 16, 8, 8);
    }

    /// <summary>One workload: how many tokens a run produces or consumes, and one timed run per engine (seconds; setup untimed).</summary>
    private sealed record Workload(string Name, int TokensPerRun, string Description, PassWork Work, Func<double> RunKiln, Func<double> RunLlamaCpp, IDisposable? Resources);

    /// <summary>What one pass of a workload moves and computes: its roofline, once the machine's limits are known.</summary>
    internal sealed record PassWork(int Tokens, double Bytes, double Flops)
    {
        /// <summary>The attainable rate: the slower of moving the pass's bytes and doing its FLOPs.</summary>
        public Roofline Roof(double bandwidth, ComputePeak peak)
        {
            double memorySeconds = Bytes / bandwidth, computeSeconds = Flops / peak.OpsPerSecond;
            return new Roofline(Tokens / Math.Max(memorySeconds, computeSeconds), memorySeconds >= computeSeconds ? "BW" : peak.Bound);
        }
    }

    internal sealed record Roofline(double TokensPerSecond, string Bound);

    /// <summary>The compute roof a file's matmuls run under (ops/s, and its label in the table), with both measured peaks for the header.</summary>
    internal sealed record ComputePeak(double OpsPerSecond, string Bound, double Fp32Flops, double Int8Macs, string Int8Form);

    /// <summary>The machine's limits at the bench's thread count; int8 in the weight format's form (Q4_0 nibbles or Q8_0 bytes).</summary>
    internal sealed record MachineReading(double Bandwidth, double Fp32Peak, double Int8Peak)
    {
        public static MachineReading Measure(int threads, bool nibbles) =>
            new(MachineLimits.ReadBandwidth(threads), MachineLimits.PeakFp32Flops(threads), MachineLimits.PeakInt8BlockMacs(threads, nibbles));

        /// <summary>Each limit the higher of two readings: a peak is the best seen.</summary>
        public MachineReading Best(MachineReading other) =>
            new(Math.Max(Bandwidth, other.Bandwidth), Math.Max(Fp32Peak, other.Fp32Peak), Math.Max(Int8Peak, other.Int8Peak));
    }

    private sealed record Result(string Name, string Description, int Tokens, double Kiln, double LlamaCpp, PassWork Work, double[] KilnRuns, double[] LlamaRuns);

    internal const int WarmUpRuns = 3;

    public static int Run(ComparisonOptions options, TextWriter output, TextWriter log)
    {
        var sizes = options.Quick ? Sizes.Quick : Sizes.Full;
        int maxBatch = options.Workloads.Where(w => w.StartsWith("batched_decode_", StringComparison.Ordinal))
            .Select(w => int.Parse(w["batched_decode_".Length..], CultureInfo.InvariantCulture)).DefaultIfEmpty(1).Max();

        using var file = ModelFile.Open(options.ModelPath);
        var info = ModelInfo.From(file);
        log.WriteLine($"compare: {Path.GetFileName(options.ModelPath)}: {info.Summary}; {options.Threads} threads, {options.Runs} runs after {WarmUpRuns} warm-up runs{(options.Quick ? ", QUICK sizes" : "")}");

        log.WriteLine("compare: measuring read bandwidth (1 GiB), fp32 FMA peak and int8 block-dot peak (again after the runs; the best counts)...");
        bool nibbles = info.UnpacksNibbles;
        var before = MachineReading.Measure(options.Threads, nibbles);

        log.WriteLine("compare: loading Kiln (ModelCatalog.Load + Compile; untimed)...");
        var loadClock = Stopwatch.StartNew();
        using var kiln = new KilnSession(file, maxTokensPerStep: Math.Max(sizes.Prompt, maxBatch), options.Threads, options.KvStorage);
        log.WriteLine($"compare: Kiln ready in {loadClock.Elapsed.TotalSeconds:F1} s; loading llama.cpp (untimed)...");
        using var weights = LlamaCpp.LoadWeights(options.ModelPath, options.Threads);
        if (weights.Vocab.Count != kiln.VocabSize)
            throw new InvalidOperationException($"vocabulary sizes differ: Kiln {kiln.VocabSize}, llama.cpp {weights.Vocab.Count}");

        var agreement = CheckAgreement(kiln, weights, options.Threads, info);
        log.WriteLine($"compare: {agreement}");

        var random = new Random(options.Seed);
        int[] RandomTokens(int count)
        {
            var tokens = new int[count];
            for (int i = 0; i < count; i++) tokens[i] = random.Next(Math.Min(259, kiln.VocabSize - 1), kiln.VocabSize);
            return tokens;
        }

        var results = new List<Result>();
        foreach (string name in options.Workloads)
        {
            var workload = name switch
            {
                "prefill_128" => Prefill(kiln, weights, options.Threads, RandomTokens(sizes.Prompt), info),
                "decode_128" => Decode(kiln, weights, options.Threads, RandomTokens(sizes.Prompt), sizes.Decode, info),
                _ => Batched(kiln, weights, options.Threads, int.Parse(name["batched_decode_".Length..], CultureInfo.InvariantCulture),
                    sizes.BatchedPrompt, sizes.BatchedDecode, RandomTokens, info, name),
            };
            using var resources = workload.Resources;
            log.WriteLine($"compare: {name}: {workload.Description}; {WarmUpRuns} warm-up runs each...");
            // Several, not one: .NET compiles the plan's less frequent paths (one call per layer) at tier 0 first and
            // recompiles them in the background over the first few steps, which also takes a core from the run.
            for (int run = 0; run < WarmUpRuns; run++)
            {
                workload.RunKiln();
                workload.RunLlamaCpp();
            }
            var kilnRuns = new double[options.Runs];
            var llamaRuns = new double[options.Runs];
            for (int run = 0; run < options.Runs; run++)
            {
                Settle();
                kilnRuns[run] = workload.TokensPerRun / workload.RunKiln();
                Settle();
                llamaRuns[run] = workload.TokensPerRun / workload.RunLlamaCpp();
                log.WriteLine($"compare: {name} run {run + 1}/{options.Runs}: kiln {kilnRuns[run]:F1} tok/s, llama.cpp {llamaRuns[run]:F1} tok/s");
            }
            results.Add(new Result(name, workload.Description, workload.TokensPerRun, Median(kilnRuns), Median(llamaRuns), workload.Work, kilnRuns, llamaRuns));
        }

        // This host's speed drifts with its neighbours: a peak is the best seen, before or after the runs.
        var limits = before.Best(MachineReading.Measure(options.Threads, nibbles));
        var peak = PeakFor(info, limits);

        WriteTable(output, options, kiln, info, limits.Bandwidth, peak, results, agreement);
        if (options.JsonPath is not null)
            WriteJson(options.JsonPath, results.Select(r =>
            {
                var roof = r.Work.Roof(limits.Bandwidth, peak);
                return new WorkloadFigures(r.Name, r.Kiln, r.LlamaCpp, roof.TokensPerSecond, roof.Bound);
            }));
        return 0;
    }

    /// <summary>
    /// Both engines run the same short prompt and greedy continuation: the timings mean something only if they
    /// compute the same model. Reports the largest logit difference and whether the greedy tokens agree.
    /// </summary>
    private static string CheckAgreement(KilnSession kiln, LLama.LLamaWeights weights, int threads, ModelInfo info)
    {
        const int Steps = 16;
        int first = Math.Min(259, kiln.VocabSize - 1), span = Math.Max(1, kiln.VocabSize - first);
        int[] prompt = [1, .. Enumerable.Range(0, 7).Select(i => first + (i * 7919) % span)];
        var result = SideBySide.Run(kiln, weights, threads, prompt, Steps);
        string line = $"agreement: Kiln ({kiln.KvStorage} KV cache) vs llama.cpp (F32 KV cache), {prompt.Length}-token prompt + {Steps} greedy steps: {result.Summary()}";
        if (result.AgreedSteps < Steps)
            line += string.Create(CultureInfo.InvariantCulture, $" (first difference at Kiln top-2 gap {result.KilnTopGap[result.AgreedSteps]:G3})");
        if (!info.WeightFormats.Contains("F32", StringComparison.Ordinal) || info.WeightFormats.Contains(','))
            line += "\n  quantized weights: both engines quantize activations to Q8 blocks alike (fp16 scales), but the greedy path runs on an F16 KV cache in Kiln and F32 in llama.cpp, so near-ties can flip";
        return line;
    }

    /// <summary>The compute roof a file's matmuls run under, from the machine's measured limits.</summary>
    internal static ComputePeak PeakFor(ModelInfo info, MachineReading limits)
    {
        string int8Form = info.UnpacksNibbles ? "Q4_0, nibbles unpacked" : "Q8_0";
        // Quantized files multiply in int8: their compute roof is the int8 block-dot rate (2 ops per multiply-add).
        return info.IsQuantized && limits.Int8Peak > 0
            ? new ComputePeak(2 * limits.Int8Peak, "INT8", limits.Fp32Peak, limits.Int8Peak, int8Form)
            : new ComputePeak(limits.Fp32Peak, "FLOP", limits.Fp32Peak, limits.Int8Peak, int8Form);
    }

    /// <summary>prefill_128's pass: one pass over the weights serves the whole prompt; attention is causal over the prompt itself.</summary>
    internal static PassWork PrefillWork(ModelInfo info, int promptLength) =>
        new(promptLength, info.WeightBytes, promptLength * info.MatmulFlopsPerToken + info.AttentionFlops(1) * promptLength * (promptLength + 1) / 2.0);

    /// <summary>decode_128's pass: one token, the weights once and its KV rows at the run's mean context.</summary>
    internal static PassWork DecodeWork(ModelInfo info, int promptLength, int count)
    {
        double averageContext = promptLength + (count + 1) / 2.0;
        return new PassWork(1, info.WeightBytes + info.KvBytesPerToken(averageContext), info.MatmulFlopsPerToken + info.AttentionFlops(averageContext));
    }

    /// <summary>batched_decode_N's pass: one step of N tokens, the weights once and every sequence's KV rows at the run's mean context.</summary>
    internal static PassWork BatchedWork(ModelInfo info, int sequences, int promptLength, int steps)
    {
        double averageContext = promptLength + (steps + 1) / 2.0;
        return new PassWork(sequences, info.WeightBytes + sequences * info.KvBytesPerToken(averageContext),
            sequences * (info.MatmulFlopsPerToken + info.AttentionFlops(averageContext)));
    }

    private static Workload Prefill(KilnSession kiln, LLama.LLamaWeights weights, int threads, int[] prompt, ModelInfo info)
    {
        int context = prompt.Length + 8;
        var kilnContext = kiln.CreateContext(slots: 1, maxContext: context);
        var llama = new LlamaCppSession(weights, threads, RoundUp(context, 256), sequences: 1, batchSize: Math.Max(prompt.Length, 128));
        double KilnRun()
        {
            kilnContext.SetSequence(slot: 0, startPosition: 0, count: prompt.Length);
            long start = Stopwatch.GetTimestamp();
            kiln.Step(prompt, kilnContext);
            return Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        double LlamaRun()
        {
            llama.Clear();
            llama.BeginBatch();
            llama.AddSequence(prompt, 0, 0);
            long start = Stopwatch.GetTimestamp();
            llama.Decode();
            return Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        var roof = PrefillWork(info, prompt.Length);
        return new Workload("prefill_128", prompt.Length, $"one {prompt.Length}-token prompt in one step", roof, KilnRun, LlamaRun, llama);
    }

    private static Workload Decode(KilnSession kiln, LLama.LLamaWeights weights, int threads, int[] prompt, int count, ModelInfo info)
    {
        int context = prompt.Length + count + 8;
        var kilnContext = kiln.CreateContext(slots: 1, maxContext: context);
        var llama = new LlamaCppSession(weights, threads, RoundUp(context, 256), sequences: 1, batchSize: Math.Max(prompt.Length, 128));
        var one = new int[1];
        double KilnRun()
        {
            kilnContext.SetSequence(0, 0, prompt.Length);
            int token = Sampler.ArgMax(kiln.Step(prompt, kilnContext));
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < count; i++)
            {
                one[0] = token;
                kilnContext.SetSequence(0, prompt.Length + i, 1);
                token = Sampler.ArgMax(kiln.Step(one, kilnContext));
            }
            return Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        double LlamaRun()
        {
            llama.Clear();
            llama.BeginBatch();
            int index = llama.AddSequence(prompt, 0, 0);
            llama.Decode();
            int token = Sampler.ArgMax(llama.Logits(index));
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < count; i++)
            {
                llama.BeginBatch();
                index = llama.Add(token, prompt.Length + i, 0, wantLogits: true);
                llama.Decode();
                token = Sampler.ArgMax(llama.Logits(index));
            }
            return Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        var roof = DecodeWork(info, prompt.Length, count);
        return new Workload("decode_128", count, $"{count} greedy tokens, one at a time, after a {prompt.Length}-token prompt", roof, KilnRun, LlamaRun, llama);
    }

    private static Workload Batched(KilnSession kiln, LLama.LLamaWeights weights, int threads, int sequences, int promptLength, int steps,
        Func<int, int[]> randomTokens, ModelInfo info, string name)
    {
        if (sequences < 1 || sequences > kiln.Plan.MaxTokensPerStep) throw new ArgumentException($"{name}: 1 to {kiln.Plan.MaxTokensPerStep} sequences");
        var prompts = new int[sequences][];
        for (int s = 0; s < sequences; s++) prompts[s] = randomTokens(promptLength);
        int perSequence = promptLength + steps + 1;
        var kilnContext = kiln.CreateContext(slots: sequences, maxContext: perSequence);
        // One unified KV cache shared by all sequences (KVUnified), big enough for every sequence's whole run.
        var llama = new LlamaCppSession(weights, threads, RoundUp(sequences * perSequence, 256), sequences, batchSize: Math.Max(sequences * promptLength, 128));
        var next = new int[sequences];
        var indices = new int[sequences];
        double KilnRun()
        {
            for (int s = 0; s < sequences; s++)
            {
                kilnContext.SetSequence(s, 0, promptLength);
                next[s] = Sampler.ArgMax(kiln.Step(prompts[s], kilnContext));
            }
            long start = Stopwatch.GetTimestamp();
            for (int step = 0; step < steps; step++)
            {
                kilnContext.Clear();
                for (int s = 0; s < sequences; s++) kilnContext.Add(s, promptLength + step, count: 1, wantLogits: true);
                var logits = kiln.Step(next, kilnContext);
                for (int s = 0; s < sequences; s++) next[s] = Sampler.ArgMax(kiln.Row(logits, s));
            }
            return Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        double LlamaRun()
        {
            llama.Clear();
            llama.BeginBatch();
            for (int s = 0; s < sequences; s++) indices[s] = llama.AddSequence(prompts[s], 0, s);
            llama.Decode();
            for (int s = 0; s < sequences; s++) next[s] = Sampler.ArgMax(llama.Logits(indices[s]));
            long start = Stopwatch.GetTimestamp();
            for (int step = 0; step < steps; step++)
            {
                llama.BeginBatch();
                for (int s = 0; s < sequences; s++) indices[s] = llama.Add(next[s], promptLength + step, s, wantLogits: true);
                llama.Decode();
                for (int s = 0; s < sequences; s++) next[s] = Sampler.ArgMax(llama.Logits(indices[s]));
            }
            return Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        var roof = BatchedWork(info, sequences, promptLength, steps);
        return new Workload(name, sequences * steps, $"{sequences} sequences × {steps} greedy steps together after {promptLength}-token prompts", roof, KilnRun, LlamaRun, llama);
    }

    internal static string LoadAverage()
    {
        try
        {
            return File.Exists("/proc/loadavg") ? string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";
        }
        catch (IOException)
        {
            return "n/a";
        }
    }

    /// <summary>
    /// An untimed pause before every measured run (embed-compare's too: ONNX Runtime's intra-op threads also spin
    /// after a run): llama.cpp's CPU backend runs on libgomp, whose idle threads keep
    /// spinning for a while after a decode (GOMP_SPINCOUNT), and Kiln's workers spin 250 µs; without the pause the
    /// next engine's run starts on a 2-core machine that the other's threads still occupy (Kiln's prefill_128 measured
    /// ~1000 tok/s alternating against ~1500 alone).
    /// </summary>
    internal static void Settle() => Thread.Sleep(200);

    private static int RoundUp(int value, int multiple) => (value + multiple - 1) / multiple * multiple;

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    private static void WriteTable(TextWriter output, ComparisonOptions options, KilnSession kiln, ModelInfo info, double bandwidth, ComputePeak peak, List<Result> results, string agreement)
    {
        var c = CultureInfo.InvariantCulture;
        output.WriteLine($"model: {options.ModelPath} ({info.Summary})");
        output.WriteLine(string.Create(c, $"threads: {options.Threads} (Kiln's worker pool; llama.cpp Threads/BatchThreads); KV cache: Kiln {kiln.KvStorage}, llama.cpp F16; runs: {options.Runs} measured after {WarmUpRuns} warm-up runs each, alternating kiln/llama.cpp with a 200 ms pause before each; medians{(options.Quick ? "; QUICK sizes (workload names kept, token counts below)" : "")}"));
        output.WriteLine(string.Create(c, $"machine: read bandwidth {bandwidth / 1e9:F1} GB/s, fp32 FMA peak {peak.Fp32Flops / 1e9:F0} GFLOP/s, int8 block-dot peak {peak.Int8Macs / 1e9:F0} GMAC/s ({peak.Int8Form} form) ({options.Threads} threads, best of 8, 5 and 5 before the runs and as many after); {Environment.ProcessorCount} logical CPUs, load average {LoadAverage()} at the end"));
        output.WriteLine();
        output.WriteLine(string.Create(c, $"{"workload",-18} {"tokens",6} {"kiln tok/s",11} {"llama.cpp tok/s",16} {"kiln/llama",10} {"roofline tok/s",17} {"kiln %roof",10} {"llama %roof",11}"));
        output.WriteLine(new string('-', 18 + 6 + 11 + 16 + 10 + 17 + 10 + 11 + 7));
        foreach (var r in results)
        {
            var roof = r.Work.Roof(bandwidth, peak);
            output.WriteLine(string.Create(c,
                $"{r.Name,-18} {r.Tokens,6} {r.Kiln,11:F1} {r.LlamaCpp,16:F1} {r.Kiln / r.LlamaCpp,10:F3} {roof.TokensPerSecond.ToString("F0", c) + " (" + roof.Bound + ")",17} {100 * r.Kiln / roof.TokensPerSecond,9:F1}% {100 * r.LlamaCpp / roof.TokensPerSecond,10:F1}%"));
        }
        output.WriteLine(agreement);
        output.WriteLine();
        output.WriteLine(string.Create(c, $"roofline: tok/s = tokens per pass / max(bytes / bandwidth, FLOPs / compute peak); (BW), (FLOP) or (INT8) says which bound."));
        output.WriteLine("  compute peak: fp32 FMA for F32 files; for quantized files 2 × the int8 block-dot rate, on L1 data, in the cheapest form");
        output.WriteLine("  Kiln's kernels use for that format (Q4_0: an 8-row strip's nibbles, eight vpmaddubsw against broadcast activations summed in");
        output.WriteLine("  int16, one vpmaddwd; Q8_0: |w| against activations signed by w, each vpmaddubsw widened alone; then int→float and FMA with");
        output.WriteLine("  the scales): the int8 ceiling without VNNI. K-quant files (Q4_K/Q5_K/Q6_K) take the Q4_0 form: their quants are unpacked too.");
        output.WriteLine(string.Create(c, $"  bytes: the file's matmul weights once per pass ({info.WeightBytes / 1e6:F1} MB, incl. the output matrix, as stored: {info.WeightFormats})"));
        output.WriteLine("         + each decoded token's KV-cache reads at 2 bytes/element (F16, llama.cpp's default), at the run's mean context.");
        output.WriteLine(string.Create(c, $"  FLOPs: 2 × {info.MatmulParameters / 1e6:F1} M matmul parameters per token + attention (4 × layers × q width × context)."));
        output.WriteLine("  decode_128 is bandwidth-bound (one pass per token); prefill_128 (one pass for the whole prompt) and batched_decode_N");
        output.WriteLine("  (one pass per step of N tokens) take whichever bound is slower. llama.cpp's AVX-512 build may use instructions");
        output.WriteLine("  .NET does not offer, so its %roof can pass 100.");
        output.WriteLine(string.Create(c, $"kiln: the generated, compiled plan (fused kernels over one arena, Compile(new PlanOptions(max tokens per step, {kiln.Threads}))),"));
        output.WriteLine(string.Create(c, $"      run on its worker pool of {kiln.Threads} threads (the caller + {kiln.Threads - 1}), the same count as llama.cpp's; weights packed at load"));
        output.WriteLine("      in the file's own format, F32 four rows interleaved, the quantized ones eight (Q8_0×8, Q4_0×8, Q4_K/Q5_K/Q6_K×8); each quantized matmul's input");
        output.WriteLine("      is quantized once (Q8 blocks with fp16 scales; Q8_K super-blocks for the K-quants, as GGML's) and dotted in int8 (256-bit");
        output.WriteLine("      vpmaddubsw + vpmaddwd against broadcast activations; no VNNI in .NET 10).");
        output.WriteLine(string.Create(c, $"      KV cache: paged, {kiln.KvStorage}, one block per sequence (AttentionContext.AddChunk), read in place;"));
        output.WriteLine("      llama.cpp's is F16, its default" + (kiln.KvStorage == KvStorage.F16 ? ": the same bytes per cached element." : ": Kiln reads twice its bytes per cached element."));
        output.WriteLine("noise: on a busy machine (load average above the thread count) llama.cpp's spinning thread barriers suffer most;");
        output.WriteLine("       per-run figures are on stderr.");
    }

    /// <summary>One workload's medians (tok/s) and its roof (tok/s, and the bound that sets it: BW, INT8 or FLOP).</summary>
    public sealed record WorkloadFigures(string Name, double Kiln, double LlamaCpp, double Roof, string Bound);

    /// <summary>
    /// The JSON --json writes: per workload, both engines' tok/s and their ratio, the roof with its bound, and each
    /// engine's percentage of it, as the table prints them.
    /// </summary>
    public static void WriteJson(string path, IEnumerable<WorkloadFigures> workloads)
    {
        using var stream = File.Create(path);
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        foreach (var w in workloads)
        {
            json.WriteStartObject(w.Name);
            json.WriteNumber("kiln", Math.Round(w.Kiln, 3));
            json.WriteNumber("llamacpp", Math.Round(w.LlamaCpp, 3));
            json.WriteNumber("ratio", Math.Round(w.Kiln / w.LlamaCpp, 4));
            json.WriteNumber("roof", Math.Round(w.Roof, 3));
            json.WriteString("bound", w.Bound);
            json.WriteNumber("kiln_pct_roof", Math.Round(100 * w.Kiln / w.Roof, 2));
            json.WriteNumber("llamacpp_pct_roof", Math.Round(100 * w.LlamaCpp / w.Roof, 2));
            json.WriteEndObject();
        }
        json.WriteEndObject();
    }
}

/// <summary>What the roofline needs from a model file: matmul weight bytes and parameters, attention sizes.</summary>
public sealed record ModelInfo(string Summary, double WeightBytes, double MatmulParameters, int Layers, int QDim, int KvDim, string WeightFormats,
    bool IsQuantized = false, bool UnpacksNibbles = false)
{

    public double MatmulFlopsPerToken => 2 * MatmulParameters;

    /// <summary>QKᵀ and attention·V for one token over <paramref name="context"/> positions, every layer.</summary>
    public double AttentionFlops(double context) => 4.0 * Layers * QDim * context;

    /// <summary>One token's KV-cache reads over <paramref name="context"/> positions at F16.</summary>
    public double KvBytesPerToken(double context) => 2.0 * Layers * KvDim * context * 2;

    public static ModelInfo From(ModelFile file)
    {
        long Int(string key) => file.TryGetInt(key, out long v) ? v : throw new InvalidOperationException($"{file.Path}: missing {key}");
        string arch = file.Architecture;
        int dim = (int)Int($"{arch}.embedding_length"), layers = (int)Int($"{arch}.block_count"), heads = (int)Int($"{arch}.attention.head_count");
        int kvHeads = file.TryGetInt($"{arch}.attention.head_count_kv", out long kv) ? (int)kv : heads;
        int headDim = dim / heads;

        double bytes = 0, parameters = 0;
        bool quantized = false, nibbles = false;
        var formats = new SortedDictionary<string, int>(StringComparer.Ordinal);
        bool hasOutput = file.Tensors.ContainsKey("output.weight");
        foreach (var tensor in file.Tensors.Values)
        {
            // Every 2-D weight is a matmul operand, except the embedding table (a row gather) unless it doubles as the output.
            if (tensor.Dimensions.Length < 2) continue;
            if (tensor.Name == "token_embd.weight" && hasOutput) continue;
            bytes += tensor.ByteLength;
            parameters += tensor.ElementCount;
            string type = tensor.Type.ToString();
            formats[type] = formats.GetValueOrDefault(type) + 1;
            // Quantized weights multiply in int8 (activations quantized to Q8 blocks); all but Q8_0 unpack sub-byte quants first.
            quantized |= GgmlTypeTraits.Of(tensor.Type).IsQuantized;
            nibbles |= GgmlTypeTraits.Of(tensor.Type).IsQuantized && tensor.Type != GgmlType.Q8_0;
        }
        var vocab = file.Tensors.TryGetValue("token_embd.weight", out var embedding) ? embedding.Dimensions[^1] : 0;
        string summary = string.Create(CultureInfo.InvariantCulture,
            $"{arch}, dim {dim}, {layers} layers, {heads}/{kvHeads} heads, vocab {vocab}, {parameters / 1e6:F1} M matmul parameters, {string.Join("+", formats.Keys)}");
        return new ModelInfo(summary, bytes, parameters, layers, heads * headDim, kvHeads * headDim,
            string.Join(", ", formats.Select(f => $"{f.Value}×{f.Key}")), quantized, nibbles);
    }
}
