using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using Kiln.Engine.Serving;
using Kiln.Tokenization;

namespace Kiln.Bench;

/// <summary>What one replay of a workload measured. Latencies in milliseconds; <see cref="Outputs"/>: each request's tokens, where the replay keeps them.</summary>
public sealed record ServeResult(string Name, int Requests, long GeneratedTokens, double Seconds, double[] TtftMs, double[] TbtMs, double KvUtilization, long Preemptions,
    int[][]? Outputs = null)
{
    public double RequestsPerSecond => Requests / Seconds;

    public double TokensPerSecond => GeneratedTokens / Seconds;

    public double TtftP50 => Percentile(TtftMs, 0.50);

    public double TtftP99 => Percentile(TtftMs, 0.99);

    public double TbtP50 => Percentile(TbtMs, 0.50);

    public double TbtP99 => Percentile(TbtMs, 0.99);

    /// <summary>Nearest-rank percentile (NaN for no samples).</summary>
    public static double Percentile(double[] samples, double fraction)
    {
        if (samples.Length == 0) return double.NaN;
        var sorted = (double[])samples.Clone();
        Array.Sort(sorted);
        return sorted[Math.Clamp((int)Math.Ceiling(fraction * sorted.Length) - 1, 0, sorted.Length - 1)];
    }
}

/// <summary>Replays workloads against the engine and against static batching with padding, over the same plan kernels.</summary>
public static class ServeRunners
{
    /// <summary>
    /// Submits each request at its arrival time and waits for all to finish. Latencies come from the engine's own
    /// "Kiln.Engine" histograms (recorded on the engine loop when a token is produced), so the callers' thread hops
    /// are not in them; KV utilization is sampled from the engine's statistics while requests are in flight.
    /// </summary>
    public static async Task<ServeResult> RunEngine(string name, IKilnModel model, KilnTokenizer tokenizer, Func<int, ICompiledPlan> compile, EngineOptions options, ServeRequest[] workload)
    {
        using var latencies = new LatencyRecorder();
        await using var engine = new KilnEngine(model, compile, tokenizer, options);
        // Warm-up outside the timing: JIT and first-touch of the arena and cache.
        await Drain(engine.GenerateAsync(workload[0].Prompt[..Math.Min(8, workload[0].Prompt.Length)], new GenerationOptions { MaxTokens = 4, IgnoreEndOfSequence = true }));
        latencies.Clear();
        var before = engine.GetStatistics();

        var clock = Stopwatch.StartNew();
        using var sampling = new CancellationTokenSource();
        var utilization = SampleUtilization(engine, sampling.Token);
        var runs = new List<Task<int[]>>(workload.Length);
        foreach (var request in workload)
        {
            await SleepUntil(clock, request.ArrivalSeconds);
            runs.Add(Drain(engine.GenerateAsync(request.Prompt, new GenerationOptions { MaxTokens = request.OutputTokens, IgnoreEndOfSequence = true })));
        }
        int[][] outputs = await Task.WhenAll(runs);
        double seconds = clock.Elapsed.TotalSeconds;
        sampling.Cancel();
        double kvUtilization = await utilization;

        var after = engine.GetStatistics();
        return new ServeResult(name, workload.Length, after.GeneratedTokens - before.GeneratedTokens, seconds,
            latencies.TimeToFirstToken, latencies.TimeBetweenTokens, kvUtilization, after.Preemptions - before.Preemptions, outputs);
    }

    /// <summary>
    /// The shared-prefix workload, one request at a time so that time to first token is the prefill alone: with the
    /// prefix cache on, the first request computes the prefix and the rest hit it; with it off, every one misses.
    /// Returns the median time to first token over the requests after the first.
    /// </summary>
    public static async Task<double> RunPrefix(IKilnModel model, KilnTokenizer tokenizer, Func<int, ICompiledPlan> compile, EngineOptions options, ServeRequest[] workload)
    {
        using var latencies = new LatencyRecorder();
        await using var engine = new KilnEngine(model, compile, tokenizer, options);
        await Drain(engine.GenerateAsync(workload[0].Prompt[..8], new GenerationOptions { MaxTokens = 2, IgnoreEndOfSequence = true })); // warm-up
        var ttft = new List<double>();
        foreach (var request in workload)
        {
            latencies.Clear();
            await Drain(engine.GenerateAsync(request.Prompt, new GenerationOptions { MaxTokens = request.OutputTokens, IgnoreEndOfSequence = true }));
            ttft.Add(latencies.TimeToFirstToken.Single());
        }
        return ServeResult.Percentile([.. ttft.Skip(1)], 0.5);
    }

    /// <summary>
    /// Requests that all begin with one long <paramref name="systemPrompt"/>, decoding together, replayed on two engines
    /// that differ only in <see cref="EngineOptions.SharedPrefixAttention"/>: round by round (<paramref name="batch"/>
    /// requests submitted at once), alternating which engine goes first, so a neighbour's burst on a shared machine
    /// falls on both alike. Each engine first computes the system prompt once (prefix caching on), so every request's
    /// block table begins with the same cached blocks: the sharing the shared-prefix kernel reads once per step. A
    /// warm-up pair sharing the prompt compiles the grouped path before the timing. Latencies and throughput are over
    /// all rounds of each engine.
    /// </summary>
    public static async Task<(ServeResult On, ServeResult Off)> RunSharedPrompt(IKilnModel model, KilnTokenizer tokenizer, Func<int, ICompiledPlan> compile,
        EngineOptions options, int[] systemPrompt, ServeRequest[] workload, int batch)
    {
        using var latencies = new LatencyRecorder();
        await using var on = new KilnEngine(model, compile, tokenizer, options with { PrefixCaching = true, SharedPrefixAttention = true });
        await using var off = new KilnEngine(model, compile, tokenizer, options with { PrefixCaching = true, SharedPrefixAttention = false });
        KilnEngine[] engines = [on, off];
        var warmUp = new GenerationOptions { MaxTokens = 4, IgnoreEndOfSequence = true };
        foreach (var engine in engines)
        {
            await Drain(engine.GenerateAsync(systemPrompt, new GenerationOptions { MaxTokens = 1, IgnoreEndOfSequence = true }));
            await Task.WhenAll(Drain(engine.GenerateAsync([.. systemPrompt, systemPrompt[^1]], warmUp)), Drain(engine.GenerateAsync([.. systemPrompt, systemPrompt[^2]], warmUp)));
        }
        var ttft = new[] { new List<double>(), new List<double>() };
        var tbt = new[] { new List<double>(), new List<double>() };
        var seconds = new double[2];
        var generated = new long[2];
        var preemptions = new long[2];
        int rounds = workload.Length / batch;
        for (int round = 0; round < rounds; round++)
        {
            var requests = workload.AsMemory(round * batch, batch);
            for (int turn = 0; turn < 2; turn++)
            {
                int which = (round + turn) % 2;
                var engine = engines[which];
                var before = engine.GetStatistics();
                latencies.Clear();
                var clock = Stopwatch.StartNew();
                var runs = new Task[batch];
                for (int i = 0; i < batch; i++)
                {
                    var request = requests.Span[i];
                    runs[i] = Drain(engine.GenerateAsync(request.Prompt, new GenerationOptions { MaxTokens = request.OutputTokens, IgnoreEndOfSequence = true }));
                }
                await Task.WhenAll(runs);
                seconds[which] += clock.Elapsed.TotalSeconds;
                var after = engine.GetStatistics();
                generated[which] += after.GeneratedTokens - before.GeneratedTokens;
                preemptions[which] += after.Preemptions - before.Preemptions;
                ttft[which].AddRange(latencies.TimeToFirstToken);
                tbt[which].AddRange(latencies.TimeBetweenTokens);
            }
        }
        ServeResult Result(string name, int which) =>
            new(name, rounds * batch, generated[which], seconds[which], [.. ttft[which]], [.. tbt[which]], double.NaN, preemptions[which]);
        return (Result("shared_prompt_on", 0), Result("shared_prompt_off", 1));
    }

    /// <summary>
    /// Static batching with padding, on the calling thread over the same plan: whenever the previous batch is done,
    /// up to <paramref name="batchSize"/> requests that have arrived form a batch (or the next one to arrive, alone,
    /// if none is waiting); every prompt is padded to the batch's longest, and the batch decodes until its longest
    /// output is done, finished sequences still computing. Pad tokens sit after a shorter prompt (the work equals
    /// left padding under a mask; the outputs of padded rows are not used).
    /// </summary>
    public static ServeResult RunStaticPadded(string name, IKilnModel model, ICompiledPlan plan, ServeRequest[] workload, int batchSize, int maxContext)
    {
        var context = AttentionContext.ForSlots(model, batchSize, maxContext, plan.MaxTokensPerStep);
        var tokens = new int[plan.MaxTokensPerStep];
        var logits = new float[batchSize * plan.VocabSize];
        var last = new int[batchSize];
        var ttft = new List<double>();
        var tbt = new List<double>();
        long generated = 0;
        double heldRows = 0, reservedRows = 0;

        // Warm-up outside the timing.
        context.SetSequence(0, 0, 1);
        plan.Step(tokens.AsSpan(0, 1), context, logits);

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
            if (longestPrompt + longestOutput > maxContext)
                throw new InvalidOperationException($"A padded batch needs {longestPrompt + longestOutput} positions; the static cache holds {maxContext}.");

            // Padded prefill: every sequence computes longestPrompt positions, in steps of the plan's size.
            int filled = 0;
            context.Clear();
            for (int s = 0; s < count; s++)
            {
                for (int position = 0; position < longestPrompt; position++)
                {
                    var prompt = batch[s].Prompt;
                    tokens[filled++] = position < prompt.Length ? prompt[position] : 0;
                    context.Add(position, s, wantLogits: position == longestPrompt - 1);
                    if (filled == tokens.Length) filled = RunPrefillStep(plan, tokens, context, logits, last, ref filled);
                }
            }
            if (filled > 0) RunPrefillStep(plan, tokens, context, logits, last, ref filled);
            double firstToken = clock.Elapsed.TotalSeconds;
            foreach (var request in batch) ttft.Add((firstToken - request.ArrivalSeconds) * 1000);
            long stepStart = Stopwatch.GetTimestamp();

            // Padded decode: all sequences step together until the longest output is done.
            for (int step = 1; step < longestOutput; step++)
            {
                context.Clear();
                for (int s = 0; s < count; s++)
                {
                    tokens[s] = last[s];
                    context.Add(longestPrompt + step - 1, s, wantLogits: true);
                }
                plan.Step(tokens.AsSpan(0, count), context, logits.AsSpan(0, count * plan.VocabSize));
                for (int s = 0; s < count; s++) last[s] = Sampler.ArgMax(logits.AsSpan(s * plan.VocabSize, plan.VocabSize));
                long stepEnd = Stopwatch.GetTimestamp();
                double stepMs = Stopwatch.GetElapsedTime(stepStart, stepEnd).TotalMilliseconds;
                stepStart = stepEnd;
                foreach (var request in batch)
                {
                    if (step < request.OutputTokens) tbt.Add(stepMs);
                    heldRows += request.Prompt.Length + Math.Min(step, request.OutputTokens);
                }
                reservedRows += count * (longestPrompt + longestOutput);
            }
            foreach (var request in batch) generated += request.OutputTokens;
        }
        return new ServeResult(name, workload.Length, generated, clock.Elapsed.TotalSeconds, [.. ttft], [.. tbt],
            reservedRows == 0 ? 0 : heldRows / reservedRows, Preemptions: 0);
    }

    /// <summary>Runs the prefill step filled so far, keeps the greedy token of each sequence whose prompt it ended, and starts a new step.</summary>
    private static int RunPrefillStep(ICompiledPlan plan, int[] tokens, AttentionContext context, float[] logits, int[] last, ref int filled)
    {
        plan.Step(tokens.AsSpan(0, filled), context, logits.AsSpan(0, context.OutputCount * plan.VocabSize));
        for (int i = 0; i < context.OutputCount; i++)
        {
            int slot = context.Slots[context.OutputRows[i]];
            last[slot] = Sampler.ArgMax(logits.AsSpan(i * plan.VocabSize, plan.VocabSize));
        }
        context.Clear();
        filled = 0;
        return 0;
    }

    /// <summary>A request's streamed tokens; a request that ends other than by its length is the benchmark's error.</summary>
    internal static async Task<int[]> Drain(IAsyncEnumerable<GenerationUpdate> updates)
    {
        var tokens = new List<int>();
        await foreach (var update in updates.ConfigureAwait(false))
        {
            if (update.FinishReason is not (Kiln.Engine.Scheduling.FinishReason.None or Kiln.Engine.Scheduling.FinishReason.Length))
                throw new InvalidOperationException($"a benchmark request ended with {update.FinishReason}: {update.ErrorMessage}");
            if (!update.IsFinal) tokens.Add(update.TokenId);
        }
        return tokens.ToArray();
    }

    /// <summary>
    /// Every request's output from <paramref name="result"/> against the same request generated alone (greedy, one
    /// sequence, <see cref="TokenGenerator"/> over <paramref name="plan"/>): batching must not change what a request
    /// gets. Throws, naming the first request and token that differ.
    /// </summary>
    public static void RequireEachEqualsItsRunAlone(IKilnModel model, ICompiledPlan plan, ServeRequest[] workload, ServeResult result, int maxContext)
    {
        var outputs = result.Outputs ?? throw new ArgumentException($"the {result.Name} replay kept no outputs", nameof(result));
        var generator = new TokenGenerator(model, plan, maxContext);
        for (int i = 0; i < workload.Length; i++)
        {
            int[] alone = generator.Generate(workload[i].Prompt, workload[i].OutputTokens, SamplingOptions.Greedy).ToArray();
            int differs = 0;
            while (differs < Math.Min(alone.Length, outputs[i].Length) && alone[differs] == outputs[i][differs]) differs++;
            if (differs < alone.Length || differs < outputs[i].Length)
                throw new InvalidOperationException($"{result.Name}: request {i} (prompt of {workload[i].Prompt.Length} tokens) differs from its run alone at output token {differs} of {alone.Length}.");
        }
    }

    /// <summary>Mean KV utilization over the samples taken while any block was in use.</summary>
    private static async Task<double> SampleUtilization(KilnEngine engine, CancellationToken stop)
    {
        double sum = 0;
        int samples = 0;
        while (!stop.IsCancellationRequested)
        {
            var statistics = engine.GetStatistics();
            if (statistics.KvBlocksUsed > 0)
            {
                sum += statistics.KvUtilization;
                samples++;
            }
            try { await Task.Delay(5, stop).ConfigureAwait(false); }
            catch (OperationCanceledException) { break; }
        }
        return samples == 0 ? 0 : sum / samples;
    }

    private static async Task SleepUntil(Stopwatch clock, double seconds)
    {
        double wait = seconds - clock.Elapsed.TotalSeconds;
        if (wait > 0.002) await Task.Delay(TimeSpan.FromSeconds(wait - 0.001)).ConfigureAwait(false);
        while (clock.Elapsed.TotalSeconds < seconds) Thread.SpinWait(50);
    }

    /// <summary>Collects the engine's time-to-first-token and time-between-tokens histograms as they are recorded.</summary>
    private sealed class LatencyRecorder : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly ConcurrentQueue<double> _ttft = new();
        private readonly ConcurrentQueue<double> _tbt = new();

        public LatencyRecorder()
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == KilnEngine.MeterName && instrument.Name is "kiln.engine.time_to_first_token" or "kiln.engine.time_between_tokens")
                    listener.EnableMeasurementEvents(instrument);
            };
            _listener.SetMeasurementEventCallback<double>((instrument, value, _, _) =>
                (instrument.Name == "kiln.engine.time_to_first_token" ? _ttft : _tbt).Enqueue(value));
            _listener.Start();
        }

        public double[] TimeToFirstToken => [.. _ttft];

        public double[] TimeBetweenTokens => [.. _tbt];

        public void Clear()
        {
            _ttft.Clear();
            _tbt.Clear();
        }

        public void Dispose() => _listener.Dispose();
    }
}
