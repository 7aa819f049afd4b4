using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;

namespace Kiln.Bench;

/// <summary>Soak clients of a <see cref="KilnEngine"/> in this process: <see cref="KilnEngine.GenerateAsync(int[], GenerationOptions?, CancellationToken)"/> streams.</summary>
public sealed class EngineSoakClient(KilnEngine engine) : ISoakClient
{
    public async Task<SoakOutcome> RunAsync(SoakRequest request, bool faults, CancellationToken cancellationToken)
    {
        var fault = faults ? request.Fault : SoakFault.None;
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var tokens = new List<int>[request.Options.N];
        var endings = new FinishReason[request.Options.N];
        for (int i = 0; i < tokens.Length; i++) tokens[i] = [];
        bool cancelled = false;
        var updates = engine.GenerateAsync(request.Prompt, request.Options, cancel.Token).GetAsyncEnumerator(CancellationToken.None);
        try
        {
            int seen = 0;
            if (request.FaultAfter == 0 && await Misbehave() is { } early) return early; // queued, and at once...
            while (await updates.MoveNextAsync())
            {
                var update = updates.Current;
                if (update.IsFinal)
                {
                    endings[update.Index] = update.FinishReason;
                    if (update.FinishReason == FinishReason.Error) return SoakOutcome.Failed($"sample {update.Index} ended with an error: {update.ErrorMessage}");
                    continue;
                }
                tokens[update.Index].Add(update.TokenId);
                if (++seen == request.FaultAfter && await Misbehave() is { } outcome) return outcome;
            }
        }
        finally
        {
            await updates.DisposeAsync();
        }
        return Outcome(tokens, endings, cancelled);

        // The client's fault, once it has seen FaultAfter tokens; an outcome when it stops reading for good.
        async Task<SoakOutcome?> Misbehave()
        {
            switch (fault)
            {
                case SoakFault.Cancel:
                    cancel.Cancel(); // and read on: the stream ends with Cancelled
                    cancelled = true;
                    break;
                case SoakFault.Stall:
                    await Task.Delay(request.StallMilliseconds, cancellationToken);
                    break;
                case SoakFault.Abandon:
                    return SoakOutcome.Cancelled; // disposing the enumerator drops the request
            }
            return null;
        }
    }

    private static SoakOutcome Outcome(List<int>[] tokens, FinishReason[] endings, bool cancelled)
    {
        if (endings.Contains(FinishReason.Cancelled))
            return cancelled ? SoakOutcome.Cancelled : SoakOutcome.Failed($"cancelled, but nobody cancelled it (endings {string.Join(", ", endings)})");
        if (endings.Contains(FinishReason.None)) return SoakOutcome.Failed($"a stream ended without a final update (endings {string.Join(", ", endings)})");
        var output = new StringBuilder();
        for (int i = 0; i < tokens.Length; i++) output.Append(CultureInfo.InvariantCulture, $"[{i}] {endings[i]}: {string.Join(' ', tokens[i])}\n");
        return new SoakOutcome(SoakOutcomeKind.Completed, output.ToString());
    }

    public async Task<int> HeldBlocksWhenIdleAsync(CancellationToken cancellationToken)
    {
        // The loop publishes its statistics after each step; a last cancel is applied by one more step.
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            var statistics = engine.GetStatistics();
            bool idle = statistics.RunningRequests == 0 && statistics.WaitingRequests == 0;
            if (idle && statistics.KvBlocksUsed == 0 || DateTime.UtcNow > deadline) return statistics.KvBlocksUsed;
            await Task.Delay(10, cancellationToken);
        }
    }

    public Task<double> ResidentMegabytesAsync(CancellationToken cancellationToken) => Task.FromResult(ResidentMegabytesAfterGc());

    public Task<long?> CompiledMethodsAsync(CancellationToken cancellationToken) => Task.FromResult<long?>(System.Runtime.JitInfo.GetCompiledMethodCount());

    public Task<string> MemoryDetailAsync(CancellationToken cancellationToken)
    {
        var gc = GC.GetGCMemoryInfo(GCKind.Any);
        using var process = System.Diagnostics.Process.GetCurrentProcess();
        return Task.FromResult(string.Create(CultureInfo.InvariantCulture,
            $"managed heap {gc.HeapSizeBytes / 1048576.0:F1} MB (GC committed {gc.TotalCommittedBytes / 1048576.0:F1} MB), {process.Threads.Count} threads " +
            $"({ThreadPool.ThreadCount} in the pool), {System.Runtime.JitInfo.GetCompiledMethodCount()} methods compiled ({System.Runtime.JitInfo.GetCompiledILBytes() / 1024} KB of IL)"));
    }

    /// <summary>
    /// This process's RSS after an aggressive full collection, so that neither garbage nor the free memory the GC keeps
    /// committed for later counts: a soak of 2,000 requests grew the committed GC memory by 5.6 MB where the live heap
    /// grew by 1 MB, which a forced collection left in the RSS.
    /// </summary>
    public static double ResidentMegabytesAfterGc()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        return Environment.WorkingSet / (1024.0 * 1024.0);
    }
}

/// <summary>
/// Soak clients of a Kiln server: /v1/completions with the prompt's token ids, or /v1/chat/completions with the
/// request's chat text, streamed (server-sent events) or whole. Its outputs are each choice's text and finish reason.
/// KV blocks and RSS come from the server's /metrics (kiln_engine_* gauges, and the runtime's working set).
/// </summary>
public sealed class HttpSoakClient : ISoakClient, IDisposable
{
    private readonly HttpClient _http;

    public HttpSoakClient(Uri server, int concurrency)
    {
        // A client that stops reading closes its connection at once, rather than draining what is left.
        _http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 2 * concurrency + 4, MaxResponseDrainSize = 0 })
        {
            BaseAddress = server,
            Timeout = Timeout.InfiniteTimeSpan,
        };
    }

    public void Dispose() => _http.Dispose();

    public async Task<SoakOutcome> RunAsync(SoakRequest request, bool faults, CancellationToken cancellationToken)
    {
        var fault = faults ? request.Fault : SoakFault.None;
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using var message = new HttpRequestMessage(HttpMethod.Post, request.ChatText is null ? "v1/completions" : "v1/chat/completions")
        {
            Content = new ByteArrayContent(Body(request)) { Headers = { ContentType = new("application/json") } },
        };
        if (!request.Stream && fault == SoakFault.Cancel) cancel.CancelAfter(request.FaultAfter); // milliseconds into the wait for a whole answer

        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(message, request.Stream ? HttpCompletionOption.ResponseHeadersRead : HttpCompletionOption.ResponseContentRead, cancel.Token);
        }
        catch (OperationCanceledException) when (fault == SoakFault.Cancel && !cancellationToken.IsCancellationRequested)
        {
            return SoakOutcome.Cancelled;
        }
        using (response)
        {
            if (response.StatusCode != HttpStatusCode.OK)
                return SoakOutcome.Failed($"HTTP {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync(cancellationToken)}");
            var choices = new Dictionary<int, (StringBuilder Text, string? Finish)>();
            if (!request.Stream)
            {
                using var whole = JsonDocument.Parse(await response.Content.ReadAsByteArrayAsync(cancellationToken));
                Collect(whole.RootElement, choices, streamed: false);
                return Outcome(choices, request.Options.N);
            }

            if (request.FaultAfter == 0 && fault is SoakFault.Cancel or SoakFault.Abandon)
            {
                cancel.Cancel();
                return SoakOutcome.Cancelled; // the response is dropped unread: the server must cancel the request
            }
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancellationToken));
            int seen = 0;
            bool done = false;
            try
            {
                while (await reader.ReadLineAsync(cancel.Token) is { } line)
                {
                    if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
                    if (line == "data: [DONE]")
                    {
                        done = true;
                        break;
                    }
                    using var chunk = JsonDocument.Parse(line.AsMemory(6));
                    if (chunk.RootElement.TryGetProperty("error", out var error)) return SoakOutcome.Failed($"error event: {error}");
                    if (!Collect(chunk.RootElement, choices, streamed: true) || ++seen != request.FaultAfter) continue;
                    switch (fault)
                    {
                        case SoakFault.Cancel:
                            cancel.Cancel(); // the connection is aborted: the server must cancel the request
                            return SoakOutcome.Cancelled;
                        case SoakFault.Stall:
                            await Task.Delay(request.StallMilliseconds, cancellationToken);
                            break;
                        case SoakFault.Abandon:
                            return SoakOutcome.Cancelled; // disposing the response drops the connection, unread
                    }
                }
            }
            catch (OperationCanceledException) when (fault == SoakFault.Cancel && cancel.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                return SoakOutcome.Cancelled;
            }
            if (!done) return SoakOutcome.Failed("the event stream ended without [DONE]");
            return Outcome(choices, request.Options.N);
        }
    }

    /// <summary>Adds a chunk's (or a whole answer's) choices; true when it carried generated text.</summary>
    private static bool Collect(JsonElement root, Dictionary<int, (StringBuilder Text, string? Finish)> choices, bool streamed)
    {
        bool text = false;
        foreach (var choice in root.GetProperty("choices").EnumerateArray())
        {
            int index = choice.GetProperty("index").GetInt32();
            if (!choices.TryGetValue(index, out var entry)) choices[index] = entry = (new StringBuilder(), null);
            string? piece = choice.TryGetProperty("text", out var completion) ? completion.GetString()
                : choice.TryGetProperty(streamed ? "delta" : "message", out var delta) && delta.TryGetProperty("content", out var content) ? content.GetString()
                : null;
            if (!string.IsNullOrEmpty(piece))
            {
                entry.Text.Append(piece);
                text = true;
            }
            if (choice.TryGetProperty("finish_reason", out var finish) && finish.ValueKind == JsonValueKind.String)
                choices[index] = (entry.Text, finish.GetString());
        }
        return text;
    }

    private static SoakOutcome Outcome(Dictionary<int, (StringBuilder Text, string? Finish)> choices, int n)
    {
        var output = new StringBuilder();
        for (int i = 0; i < n; i++)
        {
            if (!choices.TryGetValue(i, out var choice) || choice.Finish is null) return SoakOutcome.Failed($"choice {i} has no finish_reason");
            output.Append(CultureInfo.InvariantCulture, $"[{i}] {choice.Finish}: {JsonSerializer.Serialize(choice.Text.ToString())}\n");
        }
        return new SoakOutcome(SoakOutcomeKind.Completed, output.ToString());
    }

    private static byte[] Body(SoakRequest request)
    {
        var o = request.Options;
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream))
        {
            json.WriteStartObject();
            if (request.ChatText is { } chat)
            {
                json.WriteStartArray("messages");
                json.WriteStartObject();
                json.WriteString("role", "user");
                json.WriteString("content", chat);
                json.WriteEndObject();
                json.WriteEndArray();
                json.WriteNumber("max_completion_tokens", o.MaxTokens);
                if (o.Logprobs)
                {
                    json.WriteBoolean("logprobs", true);
                    json.WriteNumber("top_logprobs", o.TopLogprobs);
                }
            }
            else
            {
                json.WriteStartArray("prompt");
                foreach (int id in request.Prompt) json.WriteNumberValue(id);
                json.WriteEndArray();
                json.WriteNumber("max_tokens", o.MaxTokens);
                if (o.Logprobs) json.WriteNumber("logprobs", Math.Min(o.TopLogprobs, 5));
            }
            json.WriteNumber("temperature", o.Temperature);
            json.WriteNumber("top_p", o.TopP);
            json.WriteNumber("top_k", o.TopK);
            json.WriteNumber("min_p", o.MinP);
            json.WriteNumber("repetition_penalty", o.RepetitionPenalty);
            json.WriteNumber("seed", unchecked((long)o.Seed!.Value));
            json.WriteNumber("n", o.N);
            if (o.StopStrings is { Count: > 0 } stops)
            {
                json.WriteStartArray("stop");
                foreach (string stop in stops) json.WriteStringValue(stop);
                json.WriteEndArray();
            }
            json.WriteBoolean("stream", request.Stream);
            json.WriteEndObject();
        }
        return stream.ToArray();
    }

    public async Task<int> HeldBlocksWhenIdleAsync(CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            var metrics = await MetricsAsync(cancellationToken);
            double used = metrics.GetValueOrDefault("kiln_engine_kv_blocks_used", double.NaN);
            bool idle = metrics.GetValueOrDefault("kiln_engine_requests_running") == 0 && metrics.GetValueOrDefault("kiln_engine_requests_waiting") == 0;
            if (double.IsNaN(used)) throw new InvalidOperationException("the server's /metrics has no kiln_engine_kv_blocks_used gauge.");
            if (idle && used == 0 || DateTime.UtcNow > deadline) return (int)used;
            await Task.Delay(50, cancellationToken);
        }
    }

    public async Task<double> ResidentMegabytesAsync(CancellationToken cancellationToken)
    {
        var metrics = await MetricsAsync(cancellationToken);
        return metrics.TryGetValue("dotnet_process_memory_working_set_bytes", out double bytes)
            ? bytes / (1024.0 * 1024.0)
            : throw new InvalidOperationException("the server's /metrics has no dotnet_process_memory_working_set_bytes (the System.Runtime meter).");
    }

    public async Task<long?> CompiledMethodsAsync(CancellationToken cancellationToken)
    {
        var metrics = await MetricsAsync(cancellationToken);
        return metrics.TryGetValue("dotnet_jit_compiled_methods", out double count) ? (long)count : null;
    }

    public async Task<string> MemoryDetailAsync(CancellationToken cancellationToken)
    {
        var metrics = await MetricsAsync(cancellationToken);
        var detail = new StringBuilder();
        foreach (string name in (ReadOnlySpan<string>)["dotnet_gc_last_collection_heap_size_bytes", "dotnet_gc_last_collection_memory_committed_size_bytes",
                     "dotnet_thread_pool_thread_count", "dotnet_jit_compiled_methods"])
        {
            if (metrics.TryGetValue(name, out double value)) detail.Append(CultureInfo.InvariantCulture, $"{(detail.Length == 0 ? "" : ", ")}{name} {value:0.#}");
        }
        return detail.Length == 0 ? "no runtime metrics at /metrics" : detail.ToString();
    }

    /// <summary>The server's Prometheus text: each sample's metric name (unit suffixes dropped) and value; the first of a name wins.</summary>
    private async Task<Dictionary<string, double>> MetricsAsync(CancellationToken cancellationToken)
    {
        string text = await _http.GetStringAsync("metrics", cancellationToken);
        var values = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (string line in text.Split('\n'))
        {
            if (line.Length == 0 || line[0] == '#') continue;
            int space = line.LastIndexOf(' ');
            if (space <= 0 || !double.TryParse(line.AsSpan(space + 1), NumberStyles.Float, CultureInfo.InvariantCulture, out double value)) continue;
            string name = line[..space];
            int labels = name.IndexOf('{');
            if (labels >= 0) name = name[..labels];
            foreach (string unit in (ReadOnlySpan<string>)["_ratio", "_total"])
                if (name.EndsWith(unit, StringComparison.Ordinal)) name = name[..^unit.Length];
            values.TryAdd(name, value);
        }
        return values;
    }
}
