using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Engine.Serving;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;

namespace Kiln.Bench;

/// <summary>
/// <c>bench rnn-serve</c>: E-BATCH's comparison on Kiln's LSTM language model. One seeded workload (Poisson arrivals,
/// long-tailed prompt and output lengths) replayed three ways over the same compiled plan: (a) continuous batching in
/// the engine, where a finished sequence's state slot takes a waiting request at the next step; (b) static batches
/// padded to their longest prompt and output (a batch forms when the previous one is done; finished sequences keep
/// computing pad rows); (c) one request at a time. Throughput is generated tokens per second of the whole replay;
/// latency is each request's arrival to its last token.
/// </summary>
public static class RnnServeCommand
{
    public const string Usage =
        "usage: bench rnn-serve [--model FILE] [--threads N] [--json OUT] [--seed N] [--batch N] [--requests N] [--load X] [--quick]\n" +
        "  --model: a recurrent GGUF, lstm or mamba (default: make-model --arch lstm --shape 15m --format f32, written to a temporary file)\n" +
        "  --batch: running requests of the engine and the static batch size (default 16)\n" +
        "  --load: offered load over the engine's measured capacity, in percent (default 400: requests queue, as in E-BATCH's comparison; at 100 every mode keeps up and throughput is only the arrival rate)";

    private static readonly LengthDistribution Prompts = new(24, 0.8, 2, 192);
    private static readonly LengthDistribution Outputs = new(48, 0.9, 4, 320);
    private const int TokenBudget = 64;
    private const int StaticPrefillStep = 512;

    private sealed record Options(string? ModelPath, int Threads, string? JsonPath, int Seed, int Batch, int Requests, double Load);

    /// <summary>One mode's replay: generated tokens, the replay's seconds, each request's latency (ms).</summary>
    private sealed record Result(string Name, long GeneratedTokens, double Seconds, double[] LatencyMs)
    {
        public double TokensPerSecond => GeneratedTokens / Seconds;

        public double P50 => ServeResult.Percentile(LatencyMs, 0.50);

        public double P99 => ServeResult.Percentile(LatencyMs, 0.99);
    }

    public static int Run(ReadOnlySpan<string> args)
    {
        try
        {
            var values = new Dictionary<string, string>(StringComparer.Ordinal);
            for (int i = 0; i < args.Length; i++)
            {
                string name = args[i].StartsWith("--", StringComparison.Ordinal) ? args[i][2..] : throw new ArgumentException($"unexpected argument '{args[i]}'");
                string value = name is "quick" ? "true" : i + 1 < args.Length ? args[++i] : throw new ArgumentException($"--{name} needs a value");
                if (name is not ("model" or "threads" or "json" or "seed" or "batch" or "requests" or "load" or "quick")) throw new ArgumentException($"unknown option --{name}");
                if (!values.TryAdd(name, value)) throw new ArgumentException($"--{name} given twice");
            }
            int Number(string name, int fallback, int min, int max)
            {
                if (!values.TryGetValue(name, out string? text)) return fallback;
                return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n >= min && n <= max
                    ? n : throw new ArgumentException($"--{name} must be an integer from {min} to {max}, not '{text}'");
            }
            string? model = values.GetValueOrDefault("model");
            if (model is not null && !File.Exists(model)) throw new ArgumentException($"--model: file '{model}' not found");
            bool quick = values.ContainsKey("quick");
            var options = new Options(model, Number("threads", Math.Min(Environment.ProcessorCount, 2), 1, 64), values.GetValueOrDefault("json"),
                Number("seed", 1234, int.MinValue, int.MaxValue), Number("batch", 16, 1, TokenBudget), Number("requests", quick ? 24 : 96, 1, 100_000),
                Number("load", 400, 1, 1000) / 100.0);
            return RunAsync(options, Console.Out, Console.Error).GetAwaiter().GetResult();
        }
        catch (ArgumentException e) when (e is not ArgumentOutOfRangeException)
        {
            Console.Error.WriteLine($"bench rnn-serve: {e.Message}\n{Usage}");
            return 2;
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or ModelLoadException or ArgumentOutOfRangeException)
        {
            Console.Error.WriteLine($"bench rnn-serve: error: {e.Message}");
            return 1;
        }
    }

    private static async Task<int> RunAsync(Options options, TextWriter output, TextWriter log)
    {
        string path = options.ModelPath ?? Path.Combine(Path.GetTempPath(), $"kiln-rnn-serve-lstm-15m-{options.Seed}.gguf");
        bool temporary = options.ModelPath is null;
        if (temporary)
        {
            var lstm = SyntheticModel.Architecture("lstm");
            SyntheticModel.Write(path, lstm, lstm.Small, GgmlType.F32, options.Seed);
        }
        try
        {
            using var file = ModelFile.Open(path);
            var model = ModelCatalog.Load(file);
            if (model.StateShape.IsEmpty) throw new ArgumentException($"--model: {Path.GetFileName(path)} is {file.Architecture}, not a recurrent model");
            var tokenizer = KilnTokenizer.FromModelFile(file);
            string loadBefore = LoadAverage();
            log.WriteLine($"rnn-serve: {Path.GetFileName(path)}: {file.Architecture}, {model.StateShape}, vocab {model.VocabSize}; {options.Threads} threads, batch {options.Batch}; load average {loadBefore}");

            int maxSequence = Prompts.Max + Outputs.Max;
            var engineOptions = new EngineOptions { TokenBudget = TokenBudget, MaxRunningRequests = options.Batch, MaxContext = maxSequence };
            using var plan = model.Compile(new PlanOptions(StaticPrefillStep, options.Threads));

            // The arrival rate is a fraction of the engine's capacity, measured on a pilot of the same lengths arriving at once.
            var pilot = ServeWorkload.Poisson(2 * options.Batch, double.PositiveInfinity, Prompts, Outputs, model.VocabSize, options.Seed + 2);
            var pilotResult = await RunContinuous("pilot", model, plan, tokenizer, engineOptions, pilot);
            double rate = options.Load * pilot.Length / pilotResult.Seconds;
            var workload = ServeWorkload.Poisson(options.Requests, rate, Prompts, Outputs, model.VocabSize, options.Seed);
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"rnn-serve: {workload.Length} requests, Poisson {rate:F2} req/s ({options.Load:F2}× the engine's measured capacity), prompts median {Prompts.Median} (max {workload.Max(r => r.Prompt.Length)}), outputs median {Outputs.Median} (max {workload.Max(r => r.OutputTokens)}), seed {options.Seed}"));

            log.WriteLine("rnn-serve: (a) continuous batching: slots refilled each step...");
            var continuous = await RunContinuous("continuous", model, plan, tokenizer, engineOptions, workload);
            log.WriteLine($"rnn-serve: (b) static batches of {options.Batch}, padded to the longest...");
            var padded = RunStaticPadded(model, plan, workload, options.Batch);
            log.WriteLine("rnn-serve: (c) one request at a time...");
            var sequential = RunSequential(model, plan, workload);
            string loadAfter = LoadAverage();

            var results = new[] { continuous, padded, sequential };
            var c = CultureInfo.InvariantCulture;
            output.WriteLine();
            output.WriteLine("| mode | tok/s | latency p50 ms | latency p99 ms |");
            output.WriteLine("|---|---|---|---|");
            foreach (var r in results) output.WriteLine(string.Create(c, $"| {r.Name} | {r.TokensPerSecond:F1} | {r.P50:F1} | {r.P99:F1} |"));
            output.WriteLine(string.Create(c, $"target: continuous/static padded throughput {continuous.TokensPerSecond / padded.TokensPerSecond:F2}× (≥ 2); load average before {loadBefore}, after {loadAfter} (a shared machine: timings are noisy)"));
            if (options.JsonPath is not null) WriteJson(options.JsonPath, results, loadBefore, loadAfter, options);
            return 0;
        }
        finally
        {
            if (temporary) File.Delete(path);
        }
    }

    private static async Task<Result> RunContinuous(string name, IKilnModel model, ICompiledPlan plan, KilnTokenizer tokenizer, EngineOptions options, ServeRequest[] workload)
    {
        await using var engine = new KilnEngine(model, plan, tokenizer, options);
        await ServeRunners.Drain(engine.GenerateAsync(workload[0].Prompt, new GenerationOptions { MaxTokens = 4, IgnoreEndOfSequence = true })); // warm-up
        var latencies = new double[workload.Length];
        var clock = Stopwatch.StartNew();
        var runs = new List<Task>(workload.Length);
        long generated = 0;
        foreach (var request in workload)
        {
            await SleepUntil(clock, request.ArrivalSeconds);
            runs.Add(Task.Run(async () =>
            {
                int tokens = (await ServeRunners.Drain(engine.GenerateAsync(request.Prompt, new GenerationOptions { MaxTokens = request.OutputTokens, IgnoreEndOfSequence = true }))).Length;
                latencies[request.Index] = (clock.Elapsed.TotalSeconds - request.ArrivalSeconds) * 1000;
                Interlocked.Add(ref generated, tokens);
            }));
        }
        await Task.WhenAll(runs);
        return new Result(name, generated, clock.Elapsed.TotalSeconds, latencies);
    }

    /// <summary>
    /// Static batching with padding on the calling thread: when the previous batch is done, up to
    /// <paramref name="batchSize"/> arrived requests form a batch (or the next to arrive, alone). Every prompt computes
    /// the batch's longest prompt length and every sequence the longest output; pad rows run in pad state slots of
    /// their own, so they cost what padding costs without touching a real sequence's state. A request's latency ends
    /// at its own last token (kinder to static batching than waiting for the batch).
    /// </summary>
    private static Result RunStaticPadded(IKilnModel model, ICompiledPlan plan, ServeRequest[] workload, int batchSize)
    {
        var context = new AttentionContext(model.StateShape.CreateCache(2 * batchSize), plan.MaxTokensPerStep);
        var tokens = new int[plan.MaxTokensPerStep];
        var logits = new float[2 * batchSize * plan.VocabSize];
        var last = new int[batchSize];
        var latencies = new double[workload.Length];
        long generated = 0;
        var clock = Stopwatch.StartNew();
        int next = 0;
        while (next < workload.Length)
        {
            SleepUntil(clock, workload[next].ArrivalSeconds).GetAwaiter().GetResult();
            double now = clock.Elapsed.TotalSeconds;
            int count = 1;
            while (next + count < workload.Length && count < batchSize && workload[next + count].ArrivalSeconds <= now) count++;
            var batch = workload.AsSpan(next, count);
            next += count;
            int longestPrompt = 0, longestOutput = 0;
            foreach (var request in batch)
            {
                longestPrompt = Math.Max(longestPrompt, request.Prompt.Length);
                longestOutput = Math.Max(longestOutput, request.OutputTokens);
            }

            // Padded prefill: sequence s computes its prompt in slot s, then pads to the longest in pad slot batchSize + s.
            int filled = 0;
            context.Clear();
            for (int s = 0; s < count; s++)
            {
                var prompt = batch[s].Prompt;
                for (int position = 0; position < longestPrompt; position++)
                {
                    bool real = position < prompt.Length;
                    tokens[filled++] = real ? prompt[position] : 0;
                    context.Add(real ? position : position - prompt.Length, real ? s : batchSize + s, wantLogits: real && position == prompt.Length - 1);
                    if (filled == tokens.Length) filled = RunPrefillStep(plan, tokens, context, logits, last, batchSize, ref filled);
                }
            }
            if (filled > 0) RunPrefillStep(plan, tokens, context, logits, last, batchSize, ref filled);

            // Padded decode: every row computes until the longest output is done; a finished sequence's row is padding.
            for (int step = 1; step < longestOutput; step++)
            {
                context.Clear();
                for (int s = 0; s < count; s++)
                {
                    var request = batch[s];
                    bool real = step < request.OutputTokens;
                    tokens[s] = real ? last[s] : 0;
                    context.Add(real ? request.Prompt.Length + step - 1 : longestPrompt + step, real ? s : batchSize + s, wantLogits: true);
                }
                plan.Step(tokens.AsSpan(0, count), context, logits.AsSpan(0, count * plan.VocabSize));
                double at = clock.Elapsed.TotalSeconds;
                for (int s = 0; s < count; s++)
                {
                    last[s] = Sampler.ArgMax(logits.AsSpan(s * plan.VocabSize, plan.VocabSize));
                    if (step == batch[s].OutputTokens - 1) latencies[batch[s].Index] = (at - batch[s].ArrivalSeconds) * 1000;
                }
            }
            double end = clock.Elapsed.TotalSeconds;
            foreach (var request in batch)
            {
                if (request.OutputTokens == 1) latencies[request.Index] = (end - request.ArrivalSeconds) * 1000;
                generated += request.OutputTokens;
            }
        }
        return new Result("static_padded", generated, clock.Elapsed.TotalSeconds, latencies);
    }

    /// <summary>Runs the prefill step filled so far and keeps the greedy token of each real sequence whose prompt it ended.</summary>
    private static int RunPrefillStep(ICompiledPlan plan, int[] tokens, AttentionContext context, float[] logits, int[] last, int batchSize, ref int filled)
    {
        plan.Step(tokens.AsSpan(0, filled), context, logits.AsSpan(0, context.OutputCount * plan.VocabSize));
        for (int i = 0; i < context.OutputCount; i++)
        {
            int slot = context.StateSlot(context.SequenceOf(context.OutputRows[i]));
            if (slot < batchSize) last[slot] = Sampler.ArgMax(logits.AsSpan(i * plan.VocabSize, plan.VocabSize));
        }
        context.Clear();
        filled = 0;
        return 0;
    }

    /// <summary>One request at a time in arrival order: its prompt in steps of the plan's size, then one token per step.</summary>
    private static Result RunSequential(IKilnModel model, ICompiledPlan plan, ServeRequest[] workload)
    {
        var context = new AttentionContext(model.StateShape.CreateCache(1), plan.MaxTokensPerStep);
        var logits = new float[plan.VocabSize];
        var latencies = new double[workload.Length];
        long generated = 0;
        var clock = Stopwatch.StartNew();
        foreach (var request in workload)
        {
            SleepUntil(clock, request.ArrivalSeconds).GetAwaiter().GetResult();
            var prompt = request.Prompt;
            for (int start = 0; start < prompt.Length; start += plan.MaxTokensPerStep)
            {
                int count = Math.Min(plan.MaxTokensPerStep, prompt.Length - start);
                context.Clear();
                context.AddRecurrentChunk(0, start, count, wantLogits: start + count == prompt.Length);
                plan.Step(prompt.AsSpan(start, count), context, logits.AsSpan(0, context.OutputCount * plan.VocabSize));
            }
            int token = Sampler.ArgMax(logits);
            for (int step = 1; step < request.OutputTokens; step++)
            {
                context.Clear();
                context.AddRecurrentChunk(0, prompt.Length + step - 1, 1, wantLogits: true);
                plan.Step([token], context, logits);
                token = Sampler.ArgMax(logits);
            }
            latencies[request.Index] = (clock.Elapsed.TotalSeconds - request.ArrivalSeconds) * 1000;
            generated += request.OutputTokens;
        }
        return new Result("sequential", generated, clock.Elapsed.TotalSeconds, latencies);
    }

    private static async Task SleepUntil(Stopwatch clock, double seconds)
    {
        double wait = seconds - clock.Elapsed.TotalSeconds;
        if (wait > 0.002) await Task.Delay(TimeSpan.FromSeconds(wait - 0.001)).ConfigureAwait(false);
        while (clock.Elapsed.TotalSeconds < seconds) Thread.SpinWait(50);
    }

    /// <summary>The 1, 5 and 15 minute load averages (what uptime prints), or "unknown" off Linux.</summary>
    private static string LoadAverage()
    {
        try
        {
            return string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3));
        }
        catch (IOException)
        {
            return "unknown";
        }
        catch (UnauthorizedAccessException)
        {
            return "unknown";
        }
    }

    private static void WriteJson(string path, Result[] results, string loadBefore, string loadAfter, Options options)
    {
        using var stream = File.Create(path);
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        foreach (var r in results)
        {
            json.WriteStartObject(r.Name);
            json.WriteNumber("throughput_tok_s", Math.Round(r.TokensPerSecond, 2));
            json.WriteNumber("latency_p50_ms", Math.Round(r.P50, 3));
            json.WriteNumber("latency_p99_ms", Math.Round(r.P99, 3));
            json.WriteEndObject();
        }
        json.WriteNumber("continuous_over_static_padded", Math.Round(results[0].TokensPerSecond / results[1].TokensPerSecond, 3));
        json.WriteString("load_average_before", loadBefore);
        json.WriteString("load_average_after", loadAfter);
        json.WriteNumber("threads", options.Threads);
        json.WriteNumber("batch", options.Batch);
        json.WriteNumber("seed", options.Seed);
        json.WriteEndObject();
    }
}
