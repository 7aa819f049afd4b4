using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;

namespace Kiln.Bench;

/// <summary>What <c>bench soak</c> was asked for.</summary>
/// <param name="Requests">Requests of the soak proper (a warm-up of about a tenth more runs first).</param>
/// <param name="Concurrency">Clients at once, each sending its next request when its last one ends.</param>
/// <param name="CancelFraction">Requests whose client cancels (after a drawn number of tokens, possibly none).</param>
public sealed record SoakOptions(int Requests, int Concurrency, double CancelFraction, int Seed)
{
    /// <summary>Requests whose client stops reading: a while (then reads on), or for good (dropping the stream).</summary>
    public double StopReadingFraction { get; init; } = 0.1;

    /// <summary>A request that takes longer is a hang, and fails.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>
    /// The most tokens a request asks for (four in five ask for at most a third of it): 96 by default, less where a soak
    /// must be quick (the test suite's) rather than long-winded.
    /// </summary>
    public int MaxNewTokens
    {
        get;
        init => field = value >= 3 ? value : throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), value, "a soak's requests need room for 3 new tokens at least");
    } = 96;

    /// <summary>Requests of one warm-up round; rounds repeat until the serving process stops compiling (see <see cref="Soak"/>).</summary>
    public int WarmUpRequests => Math.Clamp(Requests / 10, 32, 500);

    /// <summary>The most warm-up rounds; the RSS after the last one is the baseline the end is compared with.</summary>
    public int MaxWarmUpRounds { get; init; } = 8;
}

/// <summary>How a soak client misbehaves, if at all, once it has seen <see cref="SoakRequest.FaultAfter"/> tokens.</summary>
public enum SoakFault
{
    None,

    /// <summary>Cancels the request and reads the stream to its end.</summary>
    Cancel,

    /// <summary>Stops reading for <see cref="SoakRequest.StallMilliseconds"/>, then reads to the end.</summary>
    Stall,

    /// <summary>Stops reading and drops the stream without cancelling: the engine or server must notice.</summary>
    Abandon,
}

/// <summary>
/// One request of the soak: a prompt (token ids; over HTTP a chat's user text instead, half the time), its sampling
/// settings, and how its client behaves. Every request carries a seed, so that what it generates is reproducible
/// alone whatever its temperature (see <see cref="Soak"/>).
/// </summary>
public sealed record SoakRequest(int Index, int[] Prompt, string? ChatText, GenerationOptions Options, bool Stream,
    SoakFault Fault, int FaultAfter, int StallMilliseconds)
{
    public override string ToString() =>
        $"#{Index} ({Prompt.Length}-token prompt{(ChatText is null ? "" : ", chat")}, max {Options.MaxTokens}, n {Options.N}, T {Options.Temperature:0.##}, " +
        $"top_k {Options.TopK}, top_p {Options.TopP:0.##}, min_p {Options.MinP:0.##}, rep {Options.RepetitionPenalty:0.##}, seed {Options.Seed}, " +
        $"stops [{string.Join(", ", Options.StopStrings ?? [])}], {Options.Priority}{(Stream ? "" : ", whole")}, {Fault}{(Fault == SoakFault.None ? "" : $" after {FaultAfter}")})";
}

/// <summary>How a request ended for its client.</summary>
public enum SoakOutcomeKind
{
    /// <summary>Every sample finished (stop or length); <see cref="SoakOutcome.Output"/> says what it generated.</summary>
    Completed,

    /// <summary>The client cancelled or dropped it, and it ended so.</summary>
    Cancelled,

    /// <summary>An error, a wrong ending, a timeout, or (found later) an output that differs from the request run alone.</summary>
    Failed,
}

/// <summary>
/// A request's end: for a completed one its output, one line per sample — the engine's token ids and finish reason,
/// or over HTTP the choice's text and finish reason — compared whole with the same request run alone.
/// </summary>
public sealed record SoakOutcome(SoakOutcomeKind Kind, string Output, string? Problem = null)
{
    public static SoakOutcome Failed(string problem) => new(SoakOutcomeKind.Failed, "", problem);

    public static SoakOutcome Cancelled { get; } = new(SoakOutcomeKind.Cancelled, "");
}

/// <summary>A surface the soak drives: the engine in process, or a Kiln server over HTTP.</summary>
public interface ISoakClient
{
    /// <summary>Runs one request; with <paramref name="faults"/> off its client behaves whatever the request says.</summary>
    Task<SoakOutcome> RunAsync(SoakRequest request, bool faults, CancellationToken cancellationToken);

    /// <summary>Waits for nothing to run or wait, then says how many KV blocks are still held (0 unless leaked).</summary>
    Task<int> HeldBlocksWhenIdleAsync(CancellationToken cancellationToken);

    /// <summary>The serving process's resident set, in MiB, measured as alike as the surface allows (after a GC in process).</summary>
    Task<double> ResidentMegabytesAsync(CancellationToken cancellationToken);

    /// <summary>Where the serving process's memory is, as far as the surface tells (managed heap, threads, ...), for the log.</summary>
    Task<string> MemoryDetailAsync(CancellationToken cancellationToken);

    /// <summary>Methods the serving process's JIT has compiled so far (tiered re-compilations included), or null if it does not say.</summary>
    Task<long?> CompiledMethodsAsync(CancellationToken cancellationToken);
}

/// <summary>The soak's result, with the issue's key names; <see cref="Problems"/> lists the first failures.</summary>
public sealed record SoakReport(int Requests, int Completed, int Cancelled, int Failed, int LeakedBlocks, double RssStartMb, double RssEndMb,
    double DurationSeconds, IReadOnlyList<string> Problems)
{
    /// <summary>RSS at the end over RSS after warm-up.</summary>
    public double RssGrowth => RssEndMb / RssStartMb;

    public string ToJson()
    {
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteNumber("requests", Requests);
            json.WriteNumber("completed", Completed);
            json.WriteNumber("cancelled", Cancelled);
            json.WriteNumber("failed", Failed);
            json.WriteNumber("leaked_blocks", LeakedBlocks);
            json.WriteNumber("rss_start_mb", Math.Round(RssStartMb, 1));
            json.WriteNumber("rss_end_mb", Math.Round(RssEndMb, 1));
            json.WriteNumber("duration_s", Math.Round(DurationSeconds, 1));
            json.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }
}

/// <summary>
/// A soak under load with faults: seeded requests of random lengths, priorities, sample counts, stop strings and
/// sampling settings from a fixed number of concurrent clients, some of which cancel mid-stream or stop reading. Then,
/// at idle: the KV blocks still held (a leak), the RSS against the RSS after a warm-up, and every completed request run
/// again alone, whose output must be the same token for token.
/// <para>
/// Why seeded sampling rather than temperature 0 only: every request carries its own seed, and the engine's outputs do
/// not depend on the batch (each row is computed on its own, the sampler is per request), so a request at temperature
/// 0.9 with top-p reproduces alone exactly as a greedy one does. Checking them all covers the sampler paths (top-k,
/// top-p, min-p, repetition penalty, n samples forked from one prompt), not only argmax; a greedy-only soak would not
/// notice a sampler reading another request's logits.
/// </para>
/// </summary>
public static class Soak
{
    /// <summary>Texts the soak's requests stop at (common in TinyStories, so that stops do happen).</summary>
    private static readonly string[] StopTexts = [".", ",", " the", " and", "!", "\n", " Lily", "ed ", " was", "\""];

    /// <summary>
    /// The engine a soak runs on in process (and its tests' server): every client running at once, KV memory of one block
    /// of 16 tokens a client where a request holds 2 or more (a prompt of 1 to 64 tokens, and up to 4 samples of their
    /// own blocks), so that preemption and recomputation happen under load; never less than the 40 blocks the largest
    /// request needs alone (64 prompt tokens, 4 samples of 96 new ones).
    /// </summary>
    public static EngineOptions EngineOptionsFor(IKilnModel model, int concurrency) => new()
    {
        BlockSize = 16,
        MaxContext = 256,
        MaxRunningRequests = concurrency,
        TokenBudget = Math.Max(128, concurrency),
        KvCacheBytes = Math.Max(40L, concurrency) * model.KvShape.BytesPerBlock(16),
    };

    private static readonly string[] ChatWords =
        ["Once", "upon", "a", "time", "there", "was", "little", "girl", "named", "Lily", "she", "liked", "to", "play", "with", "her", "dog",
         "in", "the", "park", "one", "day", "saw", "big", "red", "ball", "Tell", "me", "story", "about", "cat", "sun", "happy", "."];

    /// <summary>
    /// The soak's requests, drawn from <paramref name="seed"/>: prompts of 1 to 64 tokens (ids 3 and up, after BOS half
    /// the time; over HTTP, a chat half the time), 1 to <see cref="SoakOptions.MaxNewTokens"/> new tokens (most of them a third of it or fewer), n of 1 to 4 (mostly 1), sampling
    /// greedy or not with and without top-k, top-p, min-p and repetition penalty, stop strings and stop tokens
    /// sometimes, logprobs sometimes, both priorities; the fault of each client as <paramref name="options"/> asks.
    /// </summary>
    public static SoakRequest[] Workload(int count, int seed, int vocabSize, SoakOptions options, bool http)
    {
        var random = new Random(seed);
        var requests = new SoakRequest[count];
        for (int i = 0; i < count; i++)
        {
            int promptLength = random.Next(100) < 70 ? random.Next(1, 17) : random.Next(17, 65);
            var prompt = new int[promptLength];
            for (int t = 0; t < prompt.Length; t++) prompt[t] = random.Next(3, vocabSize);
            if (random.Next(2) == 0) prompt[0] = 1;
            string? chat = http && random.Next(2) == 0
                ? string.Join(' ', Enumerable.Range(0, random.Next(1, 12)).Select(_ => ChatWords[random.Next(ChatWords.Length)]))
                : null;
            int shortest = options.MaxNewTokens / 3;
            int maxTokens = random.Next(100) < 80 ? random.Next(1, shortest + 1) : random.Next(shortest + 1, options.MaxNewTokens + 1);
            bool greedy = random.Next(100) < 40;
            var generation = new GenerationOptions
            {
                MaxTokens = maxTokens,
                Temperature = greedy ? 0f : (float)(0.2 + 1.3 * random.NextDouble()),
                TopK = random.Next(100) < 30 ? random.Next(1, 50) : 0,
                TopP = random.Next(100) < 30 ? (float)(0.5 + 0.5 * random.NextDouble()) : 1f,
                MinP = random.Next(100) < 20 ? (float)(0.2 * random.NextDouble()) : 0f,
                RepetitionPenalty = random.Next(100) < 20 ? (float)(1 + 0.3 * random.NextDouble()) : 1f,
                Seed = (ulong)random.NextInt64(),
                N = random.Next(100) < 75 ? 1 : random.Next(2, 5),
                StopStrings = random.Next(100) < 35 ? Enumerable.Range(0, random.Next(1, 3)).Select(_ => StopTexts[random.Next(StopTexts.Length)]).Distinct().ToArray() : null,
                // The HTTP API has no stop tokens; its chats stop at end-of-turn tokens of their own.
                StopTokens = !http && random.Next(100) < 10 ? [random.Next(3, vocabSize)] : null,
                Logprobs = random.Next(100) < 15,
                Priority = random.Next(100) < 30 ? RequestPriority.Batch : RequestPriority.Interactive,
            };
            if (generation.Logprobs) generation = generation with { TopLogprobs = random.Next(0, 6) };
            bool stream = !http || random.Next(100) < 80;

            double draw = random.NextDouble();
            var fault = draw < options.CancelFraction ? SoakFault.Cancel
                : draw < options.CancelFraction + options.StopReadingFraction ? (random.Next(2) == 0 ? SoakFault.Stall : SoakFault.Abandon)
                : SoakFault.None;
            if (!stream && fault is SoakFault.Stall or SoakFault.Abandon) fault = SoakFault.Cancel; // a whole answer has no stream to stop reading
            int faultAfter = random.Next(0, maxTokens * generation.N + 1);
            requests[i] = new SoakRequest(i, prompt, chat, generation, stream, fault, faultAfter, random.Next(20, 300));
        }
        return requests;
    }

    /// <summary>
    /// Runs the warm-up, the soak and the check of every completed request alone on one of <paramref name="references"/>,
    /// each running one request at a time (alone means nothing else in flight on that surface, so a reference may be
    /// <paramref name="client"/> itself, or separate engines checking side by side). Progress goes to <paramref name="log"/>.
    /// </summary>
    /// <remarks>
    /// The RSS baseline is the serving process at rest after the warm-up, and the end is measured the same way, so what
    /// differs is what serving 10,000 requests left behind. Two things that are not the server's are kept out of it:
    /// the driver's own records (in process they share the heap; the requests are drawn and a fixed-size slot for each
    /// one's end is allocated before the baseline, and outputs are written to a temporary file, not kept), and the JIT's
    /// tiered re-compilation of hot methods, which goes on for a while after their first calls (see
    /// <see cref="WarmUpAsync"/>).
    /// </remarks>
    public static async Task<SoakReport> RunAsync(ISoakClient client, IReadOnlyList<ISoakClient> references, int vocabSize, SoakOptions options, bool http,
        TextWriter log, CancellationToken cancellationToken = default)
    {
        if (references.Count == 0) throw new ArgumentException("the soak needs a reference to run requests alone on", nameof(references));
        var problems = new List<string>();
        var requests = Workload(options.Requests, options.Seed, vocabSize, options, http);
        var ends = new SoakEnd[requests.Length];
        using var outputs = new SoakOutputFile();

        await WarmUpAsync(client, outputs, vocabSize, options, http, problems, log, cancellationToken);
        int leakedAfterWarmUp = await client.HeldBlocksWhenIdleAsync(cancellationToken);
        if (leakedAfterWarmUp != 0) problems.Add($"warm-up: {leakedAfterWarmUp} KV blocks held at idle");
        double rssStart = await client.ResidentMegabytesAsync(cancellationToken);
        log.WriteLine($"soak: after warm-up: {await client.MemoryDetailAsync(cancellationToken)}");

        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"soak: {requests.Length} requests, {options.Concurrency} clients, seed {options.Seed}: {requests.Count(r => r.Fault == SoakFault.Cancel)} cancel, " +
            $"{requests.Count(r => r.Fault == SoakFault.Stall)} stall, {requests.Count(r => r.Fault == SoakFault.Abandon)} abandon; RSS after warm-up {rssStart:F1} MB"));
        var clock = Stopwatch.StartNew();
        await RunAllAsync(client, outputs, requests, ends, options, cancellationToken, done => log.WriteLine($"soak: {done}/{requests.Length} done, {clock.Elapsed.TotalSeconds:F0} s"));
        double seconds = clock.Elapsed.TotalSeconds;
        int leaked = await client.HeldBlocksWhenIdleAsync(cancellationToken);
        double rssEnd = await client.ResidentMegabytesAsync(cancellationToken);
        log.WriteLine($"soak: at the end: {await client.MemoryDetailAsync(cancellationToken)}");
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"soak: done in {seconds:F1} s; {leaked} KV blocks held at idle; RSS {rssEnd:F1} MB. Running each completed request alone ({references.Count} at a time, each on its own surface)..."));

        // The oracle: the same request alone, its client well-behaved. Reference k checks every k-th completed request.
        var aloneClock = Stopwatch.StartNew();
        int[] completed = [.. Enumerable.Range(0, requests.Length).Where(i => ends[i].Kind == SoakOutcomeKind.Completed)];
        int checkedAlone = 0;
        await Task.WhenAll(references.Select(async (reference, k) =>
        {
            for (int position = k; position < completed.Length; position += references.Count)
            {
                int i = completed[position];
                var alone = await RunOneAsync(reference, requests[i], faults: false, options, cancellationToken);
                if (alone.Kind != SoakOutcomeKind.Completed)
                    ends[i] = SoakEnd.Failed($"alone it did not complete: {alone.Problem ?? alone.Kind.ToString()}");
                else if (outputs.Read(ends[i].Output) is var soaked && alone.Output != soaked)
                    ends[i] = SoakEnd.Failed($"its output differs from the request run alone:\n  soak:  {Clip(soaked)}\n  alone: {Clip(alone.Output)}");
                int now = Interlocked.Increment(ref checkedAlone);
                if (now % 1000 == 0) log.WriteLine($"soak: {now} checked alone, {aloneClock.Elapsed.TotalSeconds:F0} s");
            }
        }));
        log.WriteLine($"soak: {checkedAlone} completed requests checked alone in {aloneClock.Elapsed.TotalSeconds:F1} s");
        Note(problems, requests, ends, "soak");

        return new SoakReport(requests.Length,
            ends.Count(e => e.Kind == SoakOutcomeKind.Completed),
            ends.Count(e => e.Kind == SoakOutcomeKind.Cancelled),
            ends.Count(e => e.Kind == SoakOutcomeKind.Failed),
            leaked, rssStart, rssEnd, seconds, problems);
    }

    /// <summary>
    /// Warm-up rounds of <see cref="SoakOptions.WarmUpRequests"/> fresh requests until one leaves the serving process's
    /// count of compiled methods nearly where it was (at most 1 % or 10 more): tiered compilation re-compiles hot
    /// methods for a while after their first calls, and a round takes a second or two, so one round ends long before
    /// the code does. At most <see cref="SoakOptions.MaxWarmUpRounds"/>; one where the surface does not say.
    /// </summary>
    private static async Task WarmUpAsync(ISoakClient client, SoakOutputFile outputs, int vocabSize, SoakOptions options, bool http, List<string> problems, TextWriter log,
        CancellationToken cancellationToken)
    {
        long? before = await client.CompiledMethodsAsync(cancellationToken);
        for (int round = 1; ; round++)
        {
            var warmUp = Workload(options.WarmUpRequests, options.Seed + round, vocabSize, options, http);
            var ends = new SoakEnd[warmUp.Length];
            await RunAllAsync(client, outputs, warmUp, ends, options, cancellationToken);
            Note(problems, warmUp, ends, $"warm-up round {round}");
            long? after = await client.CompiledMethodsAsync(cancellationToken);
            string compiled = after is { } all && before is { } earlier ? $"; {all - earlier} more methods compiled, {all} in all" : "";
            log.WriteLine($"soak: warm-up round {round}: {warmUp.Length} requests, {options.Concurrency} clients{compiled}");
            if (after is null || before is null || round >= options.MaxWarmUpRounds || after - before <= Math.Max(10, after.Value / 100)) return;
            before = after;
        }
    }

    private static async Task RunAllAsync(ISoakClient client, SoakOutputFile outputs, SoakRequest[] requests, SoakEnd[] ends, SoakOptions options,
        CancellationToken cancellationToken, Action<int>? progress = null)
    {
        int done = 0;
        await Parallel.ForEachAsync(Enumerable.Range(0, requests.Length),
            new ParallelOptions { MaxDegreeOfParallelism = options.Concurrency, CancellationToken = cancellationToken },
            async (i, token) =>
            {
                var outcome = await RunOneAsync(client, requests[i], faults: true, options, token);
                ends[i] = new SoakEnd(outcome.Kind, outcome.Kind == SoakOutcomeKind.Completed ? outputs.Write(outcome.Output) : default, outcome.Problem);
                int now = Interlocked.Increment(ref done);
                if (now % 1000 == 0) progress?.Invoke(now);
            });
    }

    private static async Task<SoakOutcome> RunOneAsync(ISoakClient client, SoakRequest request, bool faults, SoakOptions options, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.RequestTimeout);
        try
        {
            return await client.RunAsync(request, faults, timeout.Token);
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            return SoakOutcome.Failed($"no end after {options.RequestTimeout.TotalSeconds:F0} s");
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return SoakOutcome.Failed($"{e.GetType().Name}: {e.Message}");
        }
    }

    private static void Note(List<string> problems, SoakRequest[] requests, SoakEnd[] ends, string phase)
    {
        for (int i = 0; i < ends.Length && problems.Count < 20; i++)
        {
            if (ends[i].Kind == SoakOutcomeKind.Failed) problems.Add($"{phase} request {requests[i]}: {ends[i].Problem}");
        }
    }

    /// <summary>What the soak keeps of a request's end: its kind, where its output is in the <see cref="SoakOutputFile"/>, and a failure's reason.</summary>
    private readonly record struct SoakEnd(SoakOutcomeKind Kind, (long Offset, int Length) Output, string? Problem)
    {
        public static SoakEnd Failed(string problem) => new(SoakOutcomeKind.Failed, default, problem);
    }

    /// <summary>
    /// The outputs of completed requests, in a temporary file (deleted when disposed) rather than in memory: through the
    /// engine API the driver shares the process whose RSS is judged, and 8,000 outputs would be a few MB of it.
    /// </summary>
    private sealed class SoakOutputFile : IDisposable
    {
        private readonly FileStream _file = new(Path.Combine(Path.GetTempPath(), $"kiln-soak-{Guid.NewGuid():N}.txt"), FileMode.CreateNew,
            FileAccess.ReadWrite, FileShare.None, bufferSize: 1, FileOptions.DeleteOnClose);
        private readonly Lock _gate = new();
        private long _end;

        public (long Offset, int Length) Write(string output)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(output);
            lock (_gate)
            {
                long offset = _end;
                RandomAccess.Write(_file.SafeFileHandle, bytes, offset);
                _end += bytes.Length;
                return (offset, bytes.Length);
            }
        }

        public string Read((long Offset, int Length) output)
        {
            byte[] bytes = new byte[output.Length];
            int read = RandomAccess.Read(_file.SafeFileHandle, bytes, output.Offset);
            return read == bytes.Length ? Encoding.UTF8.GetString(bytes) : throw new IOException($"the soak's output file ended at {output.Offset + read}, short of a {output.Length}-byte output");
        }

        public void Dispose() => _file.Dispose();
    }

    private static string Clip(string text) => text.Length <= 400 ? text : text[..400] + "…";
}
