using System.Globalization;
using System.Text.Json;
using Kiln.Engine.Serving;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;

namespace Kiln.Bench;

/// <summary>What <c>bench serve</c> was asked for.</summary>
public sealed record ServeOptions(string ModelPath, int Threads, string? JsonPath, bool Quick, int Seed, int Batch, bool Eager, double Load = 0.9, int TokenBudget = 0,
    bool SharedPromptOnly = false);

/// <summary>
/// <c>bench serve</c>: the batching engine under a seeded workload (Poisson arrivals, long-tailed prompt and output
/// lengths), replayed against (a) the engine, (b) static batching with padding over the same plan, (c) the engine
/// with chunked prefill off (prefill first: steps that admit prompts compute them whole and the running decodes wait);
/// then a shared-system-prompt workload with the prefix cache on and off; then requests that all share a long system
/// prompt decoding together, with shared-prefix attention on and off.
/// </summary>
public static class ServeCommand
{
    public const string Usage =
        "usage: bench serve --model FILE --threads N [--json OUT] [--quick] [--seed N] [--batch N] [--load X] [--budget N] [--eager] [--shared-prompt-only]\n" +
        "  --batch: running requests of the engine and the static batch size (default 16)\n" +
        "  --load: offered load over the engine's measured capacity, in percent (default 90: busy, not saturated)\n" +
        "  --budget: tokens per engine step with chunked prefill (default 64, quick 32): the time-between-tokens bound\n" +
        "  --eager: the eager reference plan instead of the compiled one (slow; for checking the harness)\n" +
        "  --shared-prompt-only: only the shared-system-prompt workload (shared-prefix attention on and off)";

    /// <summary>
    /// The workload's shape. Full: chat-like, long-tailed prompts and outputs long enough that many requests decode at
    /// once, the regime where how a prefill shares steps with decodes decides the time between tokens. The token
    /// budget is what a step may cost: on two cores a 64-token step takes about as long as a few decode steps, and
    /// steps of 64 tokens or more cost about the same per token, so chunking at 64 bounds the time between tokens
    /// without giving up throughput. The shared-system-prompt workload: rounds of a batch of requests that share a
    /// <see cref="SharedPromptLength"/>-token prompt, each with a 16-token question, generating
    /// <see cref="SharedOutput"/> tokens together.
    /// </summary>
    private sealed record Sizes(int Requests, LengthDistribution Prompts, LengthDistribution Outputs, int TokenBudget, int PrefixRequests, int PrefixLength,
        int SharedPromptLength, int SharedOutput, int SharedRounds)
    {
        public static Sizes Full { get; } = new(80, new(256, 0.8, 16, 1024), new(128, 0.8, 8, 512), 64, 6, 1024, 1024, 64, 3);
        public static Sizes Quick { get; } = new(24, new(48, 0.8, 4, 256), new(32, 0.8, 4, 96), 32, 3, 256, 256, 16, 2);
    }

    /// <summary>Tokens per step of static batching's padded prefill.</summary>
    private const int StaticPrefillStep = 512;

    /// <summary>Parses the arguments after "serve"; returns the exit code (2 for a usage error, 1 for a failure).</summary>
    public static int Run(ReadOnlySpan<string> args)
    {
        try
        {
            var values = new Dictionary<string, string>(StringComparer.Ordinal);
            for (int i = 0; i < args.Length; i++)
            {
                string name = args[i].StartsWith("--", StringComparison.Ordinal) ? args[i][2..] : throw new ArgumentException($"unexpected argument '{args[i]}'");
                string value = name is "quick" or "eager" or "shared-prompt-only" ? "true" : i + 1 < args.Length ? args[++i] : throw new ArgumentException($"--{name} needs a value");
                if (name is not ("model" or "threads" or "json" or "quick" or "seed" or "batch" or "load" or "budget" or "eager" or "shared-prompt-only")) throw new ArgumentException($"unknown option --{name}");
                if (!values.TryAdd(name, value)) throw new ArgumentException($"--{name} given twice");
            }
            int Number(string name, int fallback, int min, int max)
            {
                if (!values.TryGetValue(name, out string? text)) return fallback;
                return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n >= min && n <= max
                    ? n : throw new ArgumentException($"--{name} must be an integer from {min} to {max}, not '{text}'");
            }
            string model = values.GetValueOrDefault("model") ?? throw new ArgumentException("--model is required");
            if (!File.Exists(model)) throw new ArgumentException($"--model: file '{model}' not found");
            int threads = Number("threads", -1, 1, 64);
            if (threads < 0) throw new ArgumentException("--threads is required");
            var options = new ServeOptions(model, threads, values.GetValueOrDefault("json"), values.ContainsKey("quick"), Number("seed", 1234, int.MinValue, int.MaxValue),
                Number("batch", 16, 1, 256), values.ContainsKey("eager"), Number("load", 90, 1, 1000) / 100.0, Number("budget", 0, 1, 65536),
                values.ContainsKey("shared-prompt-only"));
            return RunAsync(options, Console.Out, Console.Error).GetAwaiter().GetResult();
        }
        catch (ArgumentException e) when (e is not ArgumentOutOfRangeException)
        {
            Console.Error.WriteLine($"bench serve: {e.Message}\n{Usage}");
            return 2;
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or ModelLoadException or ArgumentOutOfRangeException)
        {
            Console.Error.WriteLine($"bench serve: error: {e.Message}");
            return 1;
        }
    }

    public static async Task<int> RunAsync(ServeOptions options, TextWriter output, TextWriter log)
    {
        var sizes = options.Quick ? Sizes.Quick : Sizes.Full;
        if (options.TokenBudget > 0) sizes = sizes with { TokenBudget = options.TokenBudget };
        if (sizes.TokenBudget < options.Batch) throw new ArgumentException($"--budget ({sizes.TokenBudget}) must be at least --batch ({options.Batch}): every running request decodes each step");
        using var file = ModelFile.Open(options.ModelPath);
        var model = ModelCatalog.Load(file);
        var tokenizer = KilnTokenizer.FromModelFile(file);
        Func<int, ICompiledPlan> compile = options.Eager
            ? tokens => new EagerPlan(model, tokens)
            : tokens => model.Compile(new PlanOptions(tokens, options.Threads));
        // The context the model was trained for, as llama.cpp reads it ({arch}.context_length; 2048 when absent).
        int context = file.TryGetInt($"{file.Architecture}.context_length", out long trained) && trained > 0 ? (int)Math.Min(trained, int.MaxValue) : 2048;
        // A model without attention layers (a Mamba) has no KV cache: its sequences' memory is their state slots.
        bool attention = model.KvShape.Layers > 0;
        // A cached KV prefix can be reused only where no recurrent state must be computed over it (the scheduler turns
        // prefix caching off for a model with state slots: a hybrid such as Jamba recomputes its Mamba layers' state).
        bool reusesKv = attention && model.StateShape.IsEmpty;
        string state = model.StateShape.IsEmpty ? "" : $" ({model.StateShape})";
        log.WriteLine($"serve: {Path.GetFileName(options.ModelPath)}: {file.Architecture}, {model.KvShape.Layers} attention layers{state}, vocab {model.VocabSize}, context {context}; " +
                      $"{(options.Eager ? "EAGER reference plan" : "compiled plan")}, {options.Threads} threads{(options.Quick ? ", QUICK sizes" : "")}");

        // Lengths fit the model's context: a prompt and its output together at most.
        var prompts = sizes.Prompts.AtMost(context / 2);
        var outputs = sizes.Outputs.AtMost(context / 2 - 1);
        int maxSequence = prompts.Max + outputs.Max;

        // Every system gets the same KV memory: what static batching reserves, a batch of whole sequences.
        long kvBytes = (long)options.Batch * ((maxSequence + 15) / 16) * model.KvShape.BytesPerBlock(16);
        var engineOptions = new EngineOptions
        {
            BlockSize = 16,
            TokenBudget = sizes.TokenBudget,
            MaxRunningRequests = options.Batch,
            MaxContext = maxSequence,
        };
        if (attention) engineOptions = engineOptions with { KvCacheBytes = kvBytes };
        if (options.SharedPromptOnly)
        {
            if (!reusesKv) throw new ArgumentException($"--shared-prompt-only measures attention over a shared KV prefix; {Path.GetFileName(options.ModelPath)} ({file.Architecture}) {(attention ? "keeps recurrent state, so no prefix is shared" : "has no attention layers")}");
            var (on, off) = await RunSharedPrompt(model, tokenizer, compile, engineOptions, sizes, context, options, log);
            PrintSharedPrompt(output, on, off, sizes, context, options);
            if (options.JsonPath is not null) WriteJson(options.JsonPath, [on, off], null);
            return 0;
        }

        // Calibration: the engine's capacity measured, not modelled: a pilot of the same lengths (another seed), all
        // arriving at once. The arrival rate is a fraction of it (by default busy but not saturated, where latency
        // percentiles mean something); static batching, with less capacity, is saturated by the same stream.
        var pilot = ServeWorkload.Poisson(2 * options.Batch, double.PositiveInfinity, prompts, outputs, model.VocabSize, options.Seed + 2);
        log.WriteLine($"serve: calibrating: {pilot.Length} requests at once through the engine...");
        double capacity = (await ServeRunners.RunEngine("pilot", model, tokenizer, compile, engineOptions, pilot)).RequestsPerSecond;
        double rate = options.Load * capacity;
        var workload = ServeWorkload.Poisson(sizes.Requests, rate, prompts, outputs, model.VocabSize, options.Seed);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"serve: workload: {workload.Length} requests, Poisson {rate:F2} req/s ({options.Load:F2}× the engine's measured {capacity:F2} req/s), prompts median {prompts.Median} (max {workload.Max(r => r.Prompt.Length)}), outputs median {outputs.Median} (max {workload.Max(r => r.OutputTokens)}), seed {options.Seed}"));

        var results = new List<ServeResult>();
        log.WriteLine("serve: (a) continuous batching, chunked prefill...");
        results.Add(await ServeRunners.RunEngine("continuous", model, tokenizer, compile, engineOptions, workload));
        using (var alonePlan = compile(sizes.TokenBudget))
            ServeRunners.RequireEachEqualsItsRunAlone(model, alonePlan, workload, results[0], maxSequence);
        log.WriteLine($"serve: every continuous-batching request's output equals its run alone ({workload.Length} requests)");
        log.WriteLine($"serve: (b) static batching with padding, batches of {options.Batch}...");
        // Its padded prefill has no decodes to hold back: big steps (per-token cost is flat from ~64 tokens up).
        using (var staticPlan = compile(Math.Max(StaticPrefillStep, options.Batch)))
            results.Add(ServeRunners.RunStaticPadded("static_padded", model, staticPlan, workload, options.Batch, maxSequence));
        log.WriteLine("serve: (c) continuous batching, chunked prefill off (prefill first: whole prompts, decodes wait)...");
        results.Add(await ServeRunners.RunEngine("no_chunking", model, tokenizer, compile, engineOptions with { ChunkedPrefill = false }, workload));

        if (!reusesKv)
        {
            // Prefix caching and shared-prefix attention are about reusing attention layers' KV: nothing to measure here.
            log.WriteLine($"serve: {(attention ? "recurrent state (no prefix caching)" : "no attention layers")}: the prefix-cache and shared-system-prompt runs are skipped");
            Print(output, results, null, 0, options);
            if (options.JsonPath is not null) WriteJson(options.JsonPath, results, null);
            return 0;
        }
        int prefixLength = Math.Min(sizes.PrefixLength, context - 64);
        var prefixWorkload = ServeWorkload.SharedPrefix(sizes.PrefixRequests, prefixLength, suffixLength: 16, outputTokens: 8, model.VocabSize, options.Seed + 1);
        var prefixOptions = engineOptions with { MaxContext = prefixLength + 64, KvCacheBytes = Math.Max(kvBytes, 4L * ((prefixLength + 64 + 15) / 16) * model.KvShape.BytesPerBlock(16)) };
        log.WriteLine($"serve: shared {prefixLength}-token system prompt, {prefixWorkload.Length} requests one at a time, prefix cache on then off...");
        double hitMs = await ServeRunners.RunPrefix(model, tokenizer, compile, prefixOptions, prefixWorkload);
        double missMs = await ServeRunners.RunPrefix(model, tokenizer, compile, prefixOptions with { PrefixCaching = false }, prefixWorkload);
        var (sharedOn, sharedOff) = await RunSharedPrompt(model, tokenizer, compile, engineOptions, sizes, context, options, log);

        Print(output, results, (hitMs, missMs), prefixLength, options);
        PrintSharedPrompt(output, sharedOn, sharedOff, sizes, context, options);
        if (options.JsonPath is not null) WriteJson(options.JsonPath, [.. results, sharedOn, sharedOff], (hitMs, missMs));
        return 0;
    }

    /// <summary>
    /// Rounds of a batch of requests sharing one long system prompt (cached once), on two engines alike but for
    /// EngineOptions.SharedPrefixAttention, alternating (<see cref="ServeRunners.RunSharedPrompt"/>). KV memory: the
    /// prompt's blocks once, each request's own blocks twice over, so nothing is preempted.
    /// </summary>
    private static async Task<(ServeResult On, ServeResult Off)> RunSharedPrompt(IKilnModel model, KilnTokenizer tokenizer, Func<int, ICompiledPlan> compile,
        EngineOptions engineOptions, Sizes sizes, int context, ServeOptions options, TextWriter log)
    {
        const int Question = 16;
        int length = SharedPromptLength(sizes, context);
        int rounds = sizes.SharedRounds;
        var workload = ServeWorkload.SharedPrefix(rounds * options.Batch, length, Question, sizes.SharedOutput, model.VocabSize, options.Seed + 3);
        int ownBlocks = (Question + sizes.SharedOutput + 15) / 16 + 1;
        long blocks = (length + 15) / 16 + 2L * (options.Batch + 2) * ownBlocks;
        var sharedOptions = engineOptions with
        {
            MaxContext = length + Question + sizes.SharedOutput + 16,
            KvCacheBytes = blocks * model.KvShape.BytesPerBlock(16),
        };
        log.WriteLine($"serve: shared {length}-token system prompt, {rounds} rounds of {options.Batch} requests at once × {sizes.SharedOutput} tokens, shared-prefix attention on and off alternating...");
        return await ServeRunners.RunSharedPrompt(model, tokenizer, compile, sharedOptions, workload[0].Prompt[..length], workload, options.Batch);
    }

    private static int SharedPromptLength(Sizes sizes, int context) => Math.Min(sizes.SharedPromptLength, context - sizes.SharedOutput - 48);

    private static void PrintSharedPrompt(TextWriter output, ServeResult on, ServeResult off, Sizes sizes, int context, ServeOptions options)
    {
        var c = CultureInfo.InvariantCulture;
        output.WriteLine();
        output.WriteLine(string.Create(c, $"shared system prompt ({SharedPromptLength(sizes, context)} tokens; {sizes.SharedRounds} rounds of {options.Batch} requests at once, a 16-token question and {sizes.SharedOutput} tokens each; alternating):"));
        output.WriteLine("| shared-prefix attention | tok/s | TTFT p50 ms | TBT p50 ms | TBT p99 ms | preemptions |");
        output.WriteLine("|---|---|---|---|---|---|");
        foreach (var (label, r) in new[] { ("on", on), ("off", off) })
            output.WriteLine(string.Create(c, $"| {label} | {r.TokensPerSecond:F1} | {r.TtftP50:F1} | {r.TbtP50:F2} | {r.TbtP99:F2} | {r.Preemptions} |"));
        output.WriteLine(string.Create(c, $"on/off: throughput {on.TokensPerSecond / off.TokensPerSecond:F2}×, TBT p50 {off.TbtP50 / on.TbtP50:F2}× shorter, p99 {off.TbtP99 / on.TbtP99:F2}× shorter; load average {LoadAverage()}"));
    }

    private static string LoadAverage()
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

    private static void Print(TextWriter output, List<ServeResult> results, (double HitMs, double MissMs)? prefix, int prefixLength, ServeOptions options)
    {
        var c = CultureInfo.InvariantCulture;
        output.WriteLine();
        output.WriteLine("| system | req/s | tok/s | TTFT p50 ms | TTFT p99 ms | TBT p50 ms | TBT p99 ms | KV util | preemptions |");
        output.WriteLine("|---|---|---|---|---|---|---|---|---|");
        foreach (var r in results)
        {
            output.WriteLine(string.Create(c,
                $"| {r.Name} | {r.RequestsPerSecond:F2} | {r.TokensPerSecond:F1} | {r.TtftP50:F1} | {r.TtftP99:F1} | {r.TbtP50:F2} | {r.TbtP99:F2} | {r.KvUtilization:P0} | {r.Preemptions} |"));
        }
        if (prefix is (double hitMs, double missMs))
            output.WriteLine(string.Create(c, $"prefix cache ({prefixLength}-token shared prompt): TTFT hit {hitMs:F1} ms, miss {missMs:F1} ms"));
        string prefixTarget = prefix is (double hit, double miss)
            ? string.Create(c, $"prefix miss/hit TTFT {miss / hit:F1}× (≥ 5)") : "prefix cache n/a (no KV prefix to reuse)";
        var continuous = results[0];
        var padded = results[1];
        var unchunked = results[2];
        output.WriteLine(string.Create(c, $"targets{(options.Quick ? " (judged on the full sizes; --quick is a smoke test with few, short requests)" : "")}: " +
            $"continuous/static throughput {continuous.TokensPerSecond / padded.TokensPerSecond:F2}× (≥ 2), " +
            $"no-chunking/chunked p99 TBT {unchunked.TbtP99 / continuous.TbtP99:F2}× (≥ 2; throughput chunked/no-chunking {continuous.TokensPerSecond / unchunked.TokensPerSecond:F2}×), " +
            $"{prefixTarget}"));
        output.WriteLine($"KV util: engine = KV positions held / positions of the blocks in use; static = real tokens / padded batch rows. {options.Threads} threads; timings on a shared machine are noisy.");
    }

    private static void WriteJson(string path, IEnumerable<ServeResult> results, (double HitMs, double MissMs)? prefix)
    {
        using var stream = File.Create(path);
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        foreach (var r in results)
        {
            json.WriteStartObject(r.Name);
            json.WriteNumber("throughput_tok_s", Math.Round(r.TokensPerSecond, 2));
            json.WriteNumber("ttft_p50_ms", Math.Round(r.TtftP50, 3));
            json.WriteNumber("ttft_p99_ms", Math.Round(r.TtftP99, 3));
            json.WriteNumber("tbt_p50_ms", Math.Round(r.TbtP50, 3));
            json.WriteNumber("tbt_p99_ms", Math.Round(r.TbtP99, 3));
            json.WriteEndObject();
        }
        if (prefix is { } cache)
        {
            json.WriteStartObject("prefix_cache");
            json.WriteNumber("ttft_hit_ms", Math.Round(cache.HitMs, 3));
            json.WriteNumber("ttft_miss_ms", Math.Round(cache.MissMs, 3));
            json.WriteEndObject();
        }
        json.WriteEndObject();
    }
}
