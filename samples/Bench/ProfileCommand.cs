using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Loading;
using Kiln.Threading;

namespace Kiln.Bench;

/// <summary>
/// Where Kiln's time goes on compare's workloads: the same compiled plan, sizes and step loops as compare's Kiln side
/// (no llama.cpp), run with a <see cref="StepProfiler"/> attached, against the roof measured in the same run. Each part
/// of the step (every fused matmul's input preparation and tiles, the KV write, attention, the elementwise loops, the
/// bench's argmax and context setup) gets its wall time, its pool runs and each thread's wait in them; each matmul its
/// bytes and multiply-adds, the rate achieved and its own roof; and the workload's gap to its roof is split by part.
/// </summary>
public static class ProfileCommand
{
    /// <summary>One step loop of a workload, run as compare runs it: setup untimed, then timed steps, each through <paramref name="step"/>.</summary>
    private sealed record ProfiledWorkload(string Name, string Description, int StepsPerRun, int TokensPerRun, int RowsPerStep, int OutputsPerStep,
        Compare.PassWork Pass, double KvBytesPerStep, double AttentionFlopsPerStep, Action<StepClock> Run);

    /// <summary>The bench's own split of a timed loop: the plan's Step calls, the argmax over logits, the rest (context setup).</summary>
    private sealed class StepClock(StepProfiler? profiler)
    {
        public long LoopTicks, StepTicks, ArgMaxTicks;
        public int Steps;

        public StepProfiler? Profiler { get; } = profiler;

        public ReadOnlySpan<float> Step(KilnSession kiln, ReadOnlySpan<int> tokens, KilnContext context)
        {
            if (Profiler is not null) StepProfiler.Attach(Profiler);
            long start = Stopwatch.GetTimestamp();
            var logits = kiln.Step(tokens, context);
            StepTicks += Stopwatch.GetTimestamp() - start;
            StepProfiler.Detach();
            Steps++;
            return logits;
        }

        public int ArgMax(ReadOnlySpan<float> logits)
        {
            long start = Stopwatch.GetTimestamp();
            int best = Sampler.ArgMax(logits);
            ArgMaxTicks += Stopwatch.GetTimestamp() - start;
            return best;
        }
    }

    /// <summary>Which GGUF tensors each packed matmul of the Llama plan holds (its profile name is the packed field's).</summary>
    private static readonly Dictionary<string, string[]> LlamaTensors = new(StringComparer.Ordinal)
    {
        ["wqWkWv"] = ["attn_q", "attn_k", "attn_v"],
        ["wo"] = ["attn_output"],
        ["gateUp"] = ["ffn_gate", "ffn_up"],
        ["down"] = ["ffn_down"],
        ["output"] = ["output"],
    };

    public static int Run(string modelPath, IReadOnlyList<string> workloads, int threads, int runs, string? jsonPath, TextWriter output, TextWriter log)
    {
        var sizes = Compare.Sizes.Full;
        int maxBatch = workloads.Where(w => w.StartsWith("batched_decode_", StringComparison.Ordinal))
            .Select(w => int.Parse(w["batched_decode_".Length..], CultureInfo.InvariantCulture)).DefaultIfEmpty(1).Max();
        using var file = ModelFile.Open(modelPath);
        var info = ModelInfo.From(file);
        log.WriteLine($"profile: {Path.GetFileName(modelPath)}: {info.Summary}; {threads} threads; measuring the machine's limits...");
        var before = Compare.MachineReading.Measure(threads, info.UnpacksNibbles);
        using var kiln = new KilnSession(file, maxTokensPerStep: Math.Max(sizes.Prompt, maxBatch), threads, KvStorage.F16);

        var random = new Random(1234);
        int[] RandomTokens(int count)
        {
            var tokens = new int[count];
            for (int i = 0; i < count; i++) tokens[i] = random.Next(Math.Min(259, kiln.VocabSize - 1), kiln.VocabSize);
            return tokens;
        }

        var measured = new List<(ProfiledWorkload Workload, StepClock Profiled, StepClock Plain)>();
        foreach (string name in workloads)
        {
            var workload = name switch
            {
                "prefill_128" => Prefill(kiln, RandomTokens(sizes.Prompt), info),
                "decode_128" => Decode(kiln, RandomTokens(sizes.Prompt), sizes.Decode, info),
                _ => Batched(kiln, int.Parse(name["batched_decode_".Length..], CultureInfo.InvariantCulture), sizes.BatchedPrompt, sizes.BatchedDecode, RandomTokens, info, name),
            };
            log.WriteLine($"profile: {name}: {workload.Description}; {Compare.WarmUpRuns} warm-up runs, then {runs} plain and {runs} profiled, alternating...");
            for (int run = 0; run < Compare.WarmUpRuns; run++) workload.Run(new StepClock(null));
            var profiler = new StepProfiler(threads);
            var plain = new StepClock(null);
            var profiled = new StepClock(profiler);
            for (int run = 0; run < runs; run++)
            {
                Thread.Sleep(200); // compare's settle: the workers' spin ends before a measured run
                workload.Run(plain);
                Thread.Sleep(200);
                workload.Run(profiled);
            }
            measured.Add((workload, profiled, plain));
        }
        var limits = before.Best(Compare.MachineReading.Measure(threads, info.UnpacksNibbles));
        var peak = Compare.PeakFor(info, limits);
        string load = Compare.LoadAverage();

        var reports = measured.Select(m => Analyse(m.Workload, m.Profiled, m.Plain, file, info, limits.Bandwidth, peak)).ToList();
        var c = CultureInfo.InvariantCulture;
        output.WriteLine($"profile: {modelPath} ({info.Summary})");
        output.WriteLine(string.Create(c, $"threads: {threads}; KV cache F16; {runs} profiled runs after {Compare.WarmUpRuns} warm-up runs, alternating with {runs} unprofiled; load average {load} at the end"));
        output.WriteLine(string.Create(c, $"machine (this run): read bandwidth {limits.Bandwidth / 1e9:F1} GB/s, fp32 FMA peak {peak.Fp32Flops / 1e9:F0} GFLOP/s, int8 block-dot peak {peak.Int8Macs / 1e9:F0} GMAC/s ({peak.Int8Form} form); compute roof {peak.Bound}"));
        foreach (var report in reports) WriteReport(output, report, threads);
        WriteNotes(output);
        if (jsonPath is not null) WriteJson(jsonPath, modelPath, info, threads, runs, load, limits, peak, reports);
        return 0;
    }

    private static ProfiledWorkload Prefill(KilnSession kiln, int[] prompt, ModelInfo info)
    {
        var context = kiln.CreateContext(slots: 1, maxContext: prompt.Length + 8);
        void Run(StepClock clock)
        {
            context.SetSequence(slot: 0, startPosition: 0, count: prompt.Length);
            long start = Stopwatch.GetTimestamp();
            clock.Step(kiln, prompt, context);
            clock.LoopTicks += Stopwatch.GetTimestamp() - start;
        }
        var pass = Compare.PrefillWork(info, prompt.Length);
        return new ProfiledWorkload("prefill_128", $"one {prompt.Length}-token prompt in one step", 1, prompt.Length, prompt.Length, 1, pass,
            0, info.AttentionFlops(1) * prompt.Length * (prompt.Length + 1) / 2.0, Run);
    }

    private static ProfiledWorkload Decode(KilnSession kiln, int[] prompt, int count, ModelInfo info)
    {
        var context = kiln.CreateContext(slots: 1, maxContext: prompt.Length + count + 8);
        var one = new int[1];
        void Run(StepClock clock)
        {
            context.SetSequence(0, 0, prompt.Length);
            int token = Sampler.ArgMax(kiln.Step(prompt, context));
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < count; i++)
            {
                one[0] = token;
                context.SetSequence(0, prompt.Length + i, 1);
                token = clock.ArgMax(clock.Step(kiln, one, context));
            }
            clock.LoopTicks += Stopwatch.GetTimestamp() - start;
        }
        double averageContext = prompt.Length + (count + 1) / 2.0;
        return new ProfiledWorkload("decode_128", $"{count} greedy tokens, one at a time, after a {prompt.Length}-token prompt", count, count, 1, 1,
            Compare.DecodeWork(info, prompt.Length, count), info.KvBytesPerToken(averageContext), info.AttentionFlops(averageContext), Run);
    }

    private static ProfiledWorkload Batched(KilnSession kiln, int sequences, int promptLength, int steps, Func<int, int[]> randomTokens, ModelInfo info, string name)
    {
        if (sequences < 1 || sequences > kiln.Plan.MaxTokensPerStep) throw new ArgumentException($"{name}: 1 to {kiln.Plan.MaxTokensPerStep} sequences");
        var prompts = new int[sequences][];
        for (int s = 0; s < sequences; s++) prompts[s] = randomTokens(promptLength);
        var context = kiln.CreateContext(slots: sequences, maxContext: promptLength + steps + 1);
        var next = new int[sequences];
        void Run(StepClock clock)
        {
            for (int s = 0; s < sequences; s++)
            {
                context.SetSequence(s, 0, promptLength);
                next[s] = Sampler.ArgMax(kiln.Step(prompts[s], context));
            }
            long start = Stopwatch.GetTimestamp();
            for (int step = 0; step < steps; step++)
            {
                context.Clear();
                for (int s = 0; s < sequences; s++) context.Add(s, promptLength + step, count: 1, wantLogits: true);
                var logits = clock.Step(kiln, next, context);
                for (int s = 0; s < sequences; s++) next[s] = clock.ArgMax(kiln.Row(logits, s));
            }
            clock.LoopTicks += Stopwatch.GetTimestamp() - start;
        }
        double averageContext = promptLength + (steps + 1) / 2.0;
        return new ProfiledWorkload(name, $"{sequences} sequences × {steps} greedy steps together after {promptLength}-token prompts", steps, sequences * steps,
            sequences, sequences, Compare.BatchedWork(info, sequences, promptLength, steps),
            sequences * info.KvBytesPerToken(averageContext), sequences * info.AttentionFlops(averageContext), Run);
    }

    /// <summary>One part's figures per step (milliseconds; bytes and multiply-adds per step; roof ms 0 where compare's roofline counts nothing).</summary>
    private sealed record PartFigures(string Name, string Kind, double Ms, double RunsPerStep, double[] IdleMs, double[] HandoffMs, double[] BarrierMs,
        double Bytes, double Macs, double RoofMs, string Bound)
    {
        public double GapMs => Ms - RoofMs;
    }

    private sealed record WorkloadReport(ProfiledWorkload Workload, double TokensPerSecond, double PlainTokensPerSecond, Compare.Roofline Roof,
        double StepMs, double RoofStepMs, double PlanMs, List<PartFigures> Parts, double[] BusyMs, double[] HandoffMs, double[] BarrierMs, double[] IdleOutsideMs,
        double Bandwidth, double OpsPerSecond);

    private static WorkloadReport Analyse(ProfiledWorkload w, StepClock profiled, StepClock plain, ModelFile file, ModelInfo info, double bandwidth, Compare.ComputePeak peak)
    {
        var profiler = profiled.Profiler!;
        double msPerTick = 1000.0 / Stopwatch.Frequency;
        int steps = profiled.Steps;
        double PerStep(long ticks) => ticks * msPerTick / steps;
        double RoofMs(double bytes, double macs) => 1000 * Math.Max(bytes / bandwidth, 2 * macs / peak.OpsPerSecond);
        string BoundOf(double bytes, double macs) => bytes / bandwidth >= 2 * macs / peak.OpsPerSecond ? "BW" : peak.Bound;

        var parts = new List<PartFigures>();
        foreach (var part in profiler.Parts)
        {
            double ms = PerStep(part.WallTicks);
            var idle = Enumerable.Range(0, profiler.ThreadCount).Select(t => PerStep(part.IdleTicks(t))).ToArray();
            var handoff = Enumerable.Range(0, profiler.ThreadCount).Select(t => PerStep(part.HandoffTicks[t])).ToArray();
            var barrier = Enumerable.Range(0, profiler.ThreadCount).Select(t => PerStep(part.BarrierTicks(t))).ToArray();
            double runs = (double)part.Runs / steps;
            string kind;
            double bytes = 0, macs = 0, roof = 0;
            string bound = "";
            if (part.Name.StartsWith("matmul ", StringComparison.Ordinal))
            {
                kind = "matmul";
                (double weightBytes, double parameters) = MatmulWeights(file, part.Name["matmul ".Length..]);
                bytes = weightBytes;
                macs = parameters * (part.Name == "matmul output" ? w.OutputsPerStep : w.RowsPerStep);
            }
            else if (part.Name.StartsWith("input ", StringComparison.Ordinal)) kind = "norm+quantize";
            else if (part.Name is "attention")
            {
                kind = "attention";
                bytes = w.KvBytesPerStep;
                macs = w.AttentionFlopsPerStep / 2;
            }
            else if (part.Name is "kv write") kind = "attention";
            else if (part.Name == StepProfiler.SetupPart) kind = "step setup";
            else kind = "elementwise";
            if (bytes > 0 || macs > 0)
            {
                roof = RoofMs(bytes, macs);
                bound = BoundOf(bytes, macs);
            }
            parts.Add(new PartFigures(part.Name, kind, ms, runs, idle, handoff, barrier, bytes, macs, roof, bound));
        }
        double planMs = PerStep(profiler.StepTicks);
        double stepMs = PerStep(profiled.LoopTicks);
        // The bench's share of the timed loop: the Step call around the plan's own parts, the argmax, the context setup.
        parts.Add(new PartFigures("plan call (arguments checked)", "step setup", PerStep(profiled.StepTicks) - planMs, 0, [], [], [], 0, 0, 0, ""));
        if (profiled.ArgMaxTicks > 0) parts.Add(new PartFigures("argmax over logits (bench)", "sampling", PerStep(profiled.ArgMaxTicks), 0, [], [], [], 0, 0, 0, ""));
        double setup = stepMs - PerStep(profiled.StepTicks) - PerStep(profiled.ArgMaxTicks);
        if (setup > 0) parts.Add(new PartFigures("context setup (bench)", "bench", setup, 0, [], [], [], 0, 0, 0, ""));

        var busy = new double[profiler.ThreadCount];
        var handoffs = new double[profiler.ThreadCount];
        var barriers = new double[profiler.ThreadCount];
        var idleOutside = new double[profiler.ThreadCount];
        for (int t = 0; t < profiler.ThreadCount; t++)
        {
            foreach (var part in profiler.Parts)
            {
                busy[t] += PerStep(part.BusyTicks[t]);
                handoffs[t] += PerStep(part.HandoffTicks[t]);
                barriers[t] += PerStep(part.BarrierTicks(t));
            }
            idleOutside[t] = PerStep(profiler.OutsideRunIdleTicks[t]);
        }
        var roofline = w.Pass.Roof(bandwidth, peak);
        double tokensPerSecond = w.TokensPerRun * (double)profiled.Steps / w.StepsPerRun / (profiled.LoopTicks / (double)Stopwatch.Frequency);
        double plainTokensPerSecond = w.TokensPerRun * (double)plain.Steps / w.StepsPerRun / (plain.LoopTicks / (double)Stopwatch.Frequency);
        double roofStepMs = 1000.0 * w.Pass.Tokens / roofline.TokensPerSecond;
        return new WorkloadReport(w, tokensPerSecond, plainTokensPerSecond, roofline, stepMs, roofStepMs, planMs, parts, busy, handoffs, barriers, idleOutside, bandwidth, peak.OpsPerSecond);
    }

    /// <summary>The stored bytes and parameters of one packed matmul's tensors over every layer (the Llama plan's names).</summary>
    private static (double Bytes, double Parameters) MatmulWeights(ModelFile file, string packed)
    {
        if (!LlamaTensors.TryGetValue(packed, out var names)) return (0, 0);
        double bytes = 0, parameters = 0;
        foreach (var tensor in file.Tensors.Values)
        {
            foreach (string name in names)
            {
                bool match = name == "output"
                    ? tensor.Name == "output.weight" || (tensor.Name == "token_embd.weight" && !file.Tensors.ContainsKey("output.weight"))
                    : tensor.Name.StartsWith("blk.", StringComparison.Ordinal) && tensor.Name.EndsWith("." + name + ".weight", StringComparison.Ordinal);
                if (!match) continue;
                bytes += tensor.ByteLength;
                parameters += tensor.ElementCount;
            }
        }
        return (bytes, parameters);
    }

    private static void WriteReport(TextWriter o, WorkloadReport r, int threads)
    {
        var c = CultureInfo.InvariantCulture;
        var w = r.Workload;
        o.WriteLine();
        o.WriteLine($"== {w.Name}: {w.Description}");
        o.WriteLine(string.Create(c, $"kiln {r.TokensPerSecond:F1} tok/s profiled ({r.PlainTokensPerSecond:F1} unprofiled); roof {r.Roof.TokensPerSecond:F0} tok/s ({r.Roof.Bound}); {100 * r.TokensPerSecond / r.Roof.TokensPerSecond:F1}% of roof ({100 * r.PlainTokensPerSecond / r.Roof.TokensPerSecond:F1}% unprofiled)"));
        o.WriteLine(string.Create(c, $"per step ({w.RowsPerStep} rows, {w.OutputsPerStep} logits rows): {r.StepMs:F3} ms measured, {r.RoofStepMs:F3} ms at the roof; the plan's own parts {r.PlanMs:F3} ms"));
        // Per thread: its handoff (waiting for a run to reach it) and barrier (waiting for the others) inside the part's runs.
        string idleHeader = string.Join("", Enumerable.Range(0, threads).Select(t => $"{"hand t" + t,8}{"barr t" + t,8}"));
        o.WriteLine(string.Create(c, $"{"part",-30} {"kind",-13} {"ms/step",8} {"%step",6} {"runs",5}{idleHeader} {"MB",8} {"MMAC",9} {"GB/s",7} {"GMAC/s",7} {"roof ms",8} {"%roof",6} {"gap ms",8}"));
        foreach (var p in r.Parts)
        {
            string idle = string.Join("", Enumerable.Range(0, threads).Select(t => p.IdleMs.Length > t
                ? p.HandoffMs[t].ToString("F3", c).PadLeft(8) + p.BarrierMs[t].ToString("F3", c).PadLeft(8) : "       -       -"));
            bool costed = p.RoofMs > 0;
            o.WriteLine(string.Create(c,
                $"{p.Name,-30} {p.Kind,-13} {p.Ms,8:F3} {100 * p.Ms / r.StepMs,5:F1}% {p.RunsPerStep,5:F1}{idle} {(costed ? (p.Bytes / 1e6).ToString("F2", c) : "-"),8} {(costed ? (p.Macs / 1e6).ToString("F1", c) : "-"),9} {(costed ? (p.Bytes / 1e6 / p.Ms).ToString("F1", c) : "-"),7} {(costed ? (p.Macs / 1e6 / p.Ms).ToString("F1", c) : "-"),7} {(costed ? p.RoofMs.ToString("F3", c) + p.Bound[0] : "-"),8} {(costed ? (100 * p.RoofMs / p.Ms).ToString("F0", c) + "%" : "-"),6} {p.GapMs,8:F3}"));
        }
        o.WriteLine(string.Create(c, $"pool, per thread (t0 the caller): busy in runs {Join(r.BusyMs)} ms/step; handoff {Join(r.HandoffMs)}; barrier {Join(r.BarrierMs)}; waiting outside runs (caller working alone) {Join(r.IdleOutsideMs)}; {r.Parts.Sum(p => p.RunsPerStep):F1} runs/step"));
        double gap = r.StepMs - r.RoofStepMs;
        o.WriteLine(string.Create(c, $"gap to roof: {r.StepMs:F3} ms measured − {r.RoofStepMs:F3} ms roof = {gap:F3} ms/step; by part (measured − the part's own roof), largest first:"));
        foreach (var p in r.Parts.OrderByDescending(p => p.GapMs))
        {
            if (Math.Abs(p.GapMs) < 0.0005 * r.StepMs) continue;
            string idleNote = p.IdleMs.Length > 0 && p.IdleMs.Max() > 0.0005
                ? string.Create(c, $" (inside its runs, handoff {Join(p.HandoffMs)} ms, barrier {Join(p.BarrierMs)} ms)") : "";
            o.WriteLine(string.Create(c, $"  {p.Name,-30} {p.GapMs,8:F3} ms  {100 * p.GapMs / gap,5:F1}%{idleNote}"));
        }
        double overlap = r.Parts.Sum(p => p.RoofMs) - r.RoofStepMs;
        o.WriteLine(string.Create(c, $"  {"parts' roofs − workload roof",-30} {overlap,8:F3} ms  {100 * overlap / gap,5:F1}%  (the workload's roof takes the slower of all bytes and all ops at once; each part takes its own)"));
    }

    private static string Join(double[] values) => string.Join(" / ", values.Select(v => v.ToString("F3", CultureInfo.InvariantCulture)));

    private static void WriteNotes(TextWriter o)
    {
        o.WriteLine();
        o.WriteLine("parts: the generated Step marks each part it enters (StepProfiler): 'input X' prepares matmul X's input once (fused norm, Q8 quantization),");
        o.WriteLine("  'matmul X' runs its tiles and fused epilogues (X the packed weights: wqWkWv, wo, gateUp, down, output), 'kv write' stores this step's");
        o.WriteLine("  K/V rows, 'attention' the paged attention; the bench adds the plan call's argument checks, the argmax over each logits row and the");
        o.WriteLine("  context setup between steps. ms/step is wall time; inside the part's pool runs, hand tN is thread N's handoff (from the run's start to");
        o.WriteLine("  its first chunk: noticing the run, or waking up after its 250 µs spin) and barr tN its wait at the end for the other threads.");
        o.WriteLine("roofs: a matmul's is the slower of its stored weight bytes at the run's bandwidth and 2 × its multiply-adds at the compute peak;");
        o.WriteLine("  attention's its F16 KV bytes and QKᵀ + AV ops as compare counts them; other parts have none in compare's roofline (all their time is gap).");
    }

    private static void WriteJson(string path, string modelPath, ModelInfo info, int threads, int runs, string load, Compare.MachineReading limits,
        Compare.ComputePeak peak, List<WorkloadReport> reports)
    {
        using var stream = File.Create(path);
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        json.WriteString("model", modelPath);
        json.WriteString("summary", info.Summary);
        json.WriteNumber("threads", threads);
        json.WriteNumber("runs", runs);
        json.WriteString("load_average", load);
        json.WriteStartObject("machine");
        json.WriteNumber("bandwidth_gbs", Math.Round(limits.Bandwidth / 1e9, 2));
        json.WriteNumber("fp32_gflops", Math.Round(peak.Fp32Flops / 1e9, 1));
        json.WriteNumber("int8_gmacs", Math.Round(peak.Int8Macs / 1e9, 1));
        json.WriteString("compute_bound", peak.Bound);
        json.WriteEndObject();
        foreach (var r in reports)
        {
            json.WriteStartObject(r.Workload.Name);
            json.WriteNumber("kiln_tok_s", Math.Round(r.TokensPerSecond, 2));
            json.WriteNumber("kiln_unprofiled_tok_s", Math.Round(r.PlainTokensPerSecond, 2));
            json.WriteNumber("roof_tok_s", Math.Round(r.Roof.TokensPerSecond, 2));
            json.WriteString("bound", r.Roof.Bound);
            json.WriteNumber("kiln_pct_roof", Math.Round(100 * r.TokensPerSecond / r.Roof.TokensPerSecond, 2));
            json.WriteNumber("step_ms", Math.Round(r.StepMs, 4));
            json.WriteNumber("roof_step_ms", Math.Round(r.RoofStepMs, 4));
            json.WriteNumber("plan_ms", Math.Round(r.PlanMs, 4));
            json.WriteStartArray("parts");
            foreach (var p in r.Parts)
            {
                json.WriteStartObject();
                json.WriteString("name", p.Name);
                json.WriteString("kind", p.Kind);
                json.WriteNumber("ms_per_step", Math.Round(p.Ms, 4));
                json.WriteNumber("runs_per_step", Math.Round(p.RunsPerStep, 2));
                WriteArray(json, "idle_ms_per_thread", p.IdleMs);
                WriteArray(json, "handoff_ms_per_thread", p.HandoffMs);
                WriteArray(json, "barrier_ms_per_thread", p.BarrierMs);
                if (p.RoofMs > 0)
                {
                    json.WriteNumber("bytes", p.Bytes);
                    json.WriteNumber("macs", p.Macs);
                    json.WriteNumber("gb_s", Math.Round(p.Bytes / 1e6 / p.Ms, 2));
                    json.WriteNumber("gmac_s", Math.Round(p.Macs / 1e6 / p.Ms, 2));
                    json.WriteNumber("roof_ms", Math.Round(p.RoofMs, 4));
                    json.WriteString("bound", p.Bound);
                    json.WriteNumber("pct_roof", Math.Round(100 * p.RoofMs / p.Ms, 1));
                }
                json.WriteNumber("gap_ms", Math.Round(p.GapMs, 4));
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteStartObject("pool");
            WriteArray(json, "busy_ms_per_thread", r.BusyMs);
            WriteArray(json, "handoff_ms_per_thread", r.HandoffMs);
            WriteArray(json, "barrier_ms_per_thread", r.BarrierMs);
            WriteArray(json, "idle_outside_runs_ms_per_thread", r.IdleOutsideMs);
            json.WriteNumber("runs_per_step", Math.Round(r.Parts.Sum(p => p.RunsPerStep), 2));
            json.WriteEndObject();
            json.WriteNumber("gap_ms", Math.Round(r.StepMs - r.RoofStepMs, 4));
            json.WriteNumber("parts_roof_minus_workload_roof_ms", Math.Round(r.Parts.Sum(p => p.RoofMs) - r.RoofStepMs, 4));
            json.WriteEndObject();
        }
        json.WriteEndObject();
    }

    private static void WriteArray(Utf8JsonWriter json, string name, double[] values)
    {
        json.WriteStartArray(name);
        foreach (double v in values) json.WriteNumberValue(Math.Round(v, 4));
        json.WriteEndArray();
    }
}
