using System.ClientModel;
using System.Diagnostics.Metrics;
using System.Net;
using System.Text.Json;
using Kiln.Engine.Serving;
using Kiln.Testing;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Kiln.Server.Tests;

/// <summary>What the server refuses and how (400, 401, 404, 429), what it reports (/v1/models, /health; /metrics is <see cref="MetricsTests"/>), and what a client leaving does.</summary>
public sealed class LimitsTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task ModelsListTheOneModelAndHealthSaysOk()
    {
        await using var server = await LoopbackServer.StartAsync();
        var models = server.OpenAI().GetOpenAIModelClient();

        var listed = (await models.GetModelsAsync()).Value;
        Assert.Equal("stories260K", Assert.Single(listed).Id);
        Assert.Equal("kiln", listed[0].OwnedBy);
        Assert.Equal("stories260K", (await models.GetModelAsync("stories260K")).Value.Id);
        var missing = await Assert.ThrowsAsync<ClientResultException>(() => models.GetModelAsync("gpt-4o"));
        Assert.Equal(404, missing.Status);

        using var health = await server.Http.GetAsync("health");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        Assert.Equal("ok", JsonDocument.Parse(await health.Content.ReadAsStringAsync()).RootElement.GetProperty("status").GetString());
    }

    [Fact]
    public async Task BadRequestsAreAnswered400WithAnOpenAiErrorNamingTheField()
    {
        await using var server = await LoopbackServer.StartAsync();
        string tooLong = "[" + string.Join(",", Enumerable.Repeat(Stories.Tokenizer.Encode("Lily")[^1], 512)) + "]";
        var cases = new (string Body, string? Param, string? Code)[]
        {
            ("""{"prompt": "Lily", "max_tokens": 4""", null, null),                       // malformed JSON
            ("""["Lily"]""", null, null),                                                // not an object
            ("""{"prompt": "Lily", "temperature": -0.5}""", "temperature", null),
            ("""{"prompt": "Lily", "temperature": "warm"}""", "temperature", null),
            ("""{"prompt": "Lily", "max_tokens": 0}""", "max_tokens", null),
            ("""{"prompt": "Lily", "max_tokens": -3}""", "max_tokens", null),
            ($$"""{"prompt": {{tooLong}}}""", "prompt", "context_length_exceeded"),      // 512 tokens fill the context
            ("""{"prompt": [1, 99999]}""", "prompt", null),                              // outside the vocabulary
            ("""{"max_tokens": 4}""", "prompt", null),
            ("""{"prompt": ["Lily", "Ben"]}""", "prompt", null),
            ("""{"prompt": "Lily", "top_p": 0}""", "top_p", null),
            ("""{"prompt": "Lily", "n": 0}""", "n", null),
            ("""{"prompt": "Lily", "stop": [""]}""", "stop", null),
            ("""{"prompt": "Lily", "logprobs": 6}""", "logprobs", null),
            ("""{"prompt": "Lily", "stream_options": {"include_usage": true}}""", "stream_options", null),
            ("""{"prompt": "Lily", "presence_penalty": 0.5}""", "presence_penalty", "unsupported_parameter"),
            ("""{"prompt": "Lily", "echo": true}""", "echo", "unsupported_parameter"),
        };
        foreach (var (body, param, code) in cases)
        {
            using var response = await server.Http.PostJsonAsync("v1/completions", body);
            var (status, error) = await ServerEvents.ReadErrorAsync(response);
            Assert.True(status == 400, $"{body}: {status}");
            Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
            Assert.True(param == error.GetProperty("param").GetString(), $"{body}: param {error.GetProperty("param")}, {error.GetProperty("message")}");
            Assert.Equal(code, error.GetProperty("code").GetString());
        }
        // Nothing was queued, and the engine still serves.
        var statistics = await server.WaitUntilIdle();
        Assert.Equal(0, statistics.GeneratedTokens);
        using var fine = await server.Http.PostJsonAsync("v1/completions", """{"prompt": "Lily", "max_tokens": 2}""");
        Assert.Equal(HttpStatusCode.OK, fine.StatusCode);
    }

    [Fact]
    public async Task AnUnknownModelIs404()
    {
        await using var server = await LoopbackServer.StartAsync();
        using var response = await server.Http.PostJsonAsync("v1/completions", """{"model": "gpt-4o's <große>", "prompt": "Lily"}""");
        var (status, error) = await ServerEvents.ReadErrorAsync(response);
        Assert.Equal(404, status);
        Assert.Equal("model", error.GetProperty("param").GetString());
        Assert.Equal("model_not_found", error.GetProperty("code").GetString());
        Assert.Contains("gpt-4o's <große>", error.GetProperty("message").GetString());
        // Bodies are JSON for programs, not HTML: text is written as it is, not \u-escaped.
        Assert.Contains("gpt-4o's <große>", await response.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task WithAnApiKeyAMissingOrWrongBearerTokenIs401()
    {
        await using var server = await LoopbackServer.StartAsync(new KilnServerOptions { ApiKey = "sekrit", Engine = LoopbackServer.SmallEngine });

        var wrong = await Assert.ThrowsAsync<ClientResultException>(() => server.OpenAI("not-sekrit").GetOpenAIModelClient().GetModelsAsync());
        Assert.Equal(401, wrong.Status);
        Assert.Equal("stories260K", Assert.Single((await server.OpenAI("sekrit").GetOpenAIModelClient().GetModelsAsync()).Value).Id);

        using var missing = await server.Http.PostJsonAsync("v1/completions", """{"prompt": "Lily", "max_tokens": 2}""");
        var (status, error) = await ServerEvents.ReadErrorAsync(missing);
        Assert.Equal(401, status);
        Assert.Equal("invalid_api_key", error.GetProperty("code").GetString());
        Assert.Equal("Bearer", missing.Headers.WwwAuthenticate.Single().Scheme);
        using var right = await server.Http.PostJsonAsync("v1/completions", """{"prompt": "Lily", "max_tokens": 2}""", apiKey: "sekrit");
        Assert.Equal(HttpStatusCode.OK, right.StatusCode);

        // Probes and scrapers need no key.
        Assert.Equal(HttpStatusCode.OK, (await server.Http.GetAsync("health")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await server.Http.GetAsync("metrics")).StatusCode);
    }

    [Fact]
    public async Task AFullQueueIs429WithRetryAfterAndWhatWasAcceptedStillFinishes()
    {
        // One runs and one waits; the held plan keeps both open while a third arrives.
        HeldPlan? plan = null;
        var options = new KilnServerOptions { Engine = LoopbackServer.SmallEngine with { MaxRunningRequests = 1, MaxQueuedRequests = 1 } };
        await using var server = await LoopbackServer.StartAsync(options, tokens => plan = new HeldPlan(Stories.CompilePlan(tokens), holdFromStep: 2, Patience));
        const string request = """{"prompt": "Once upon a time", "max_tokens": 10, "temperature": 0, "stream": true}""";

        // A streamed answer starts (headers sent) only once the engine has taken the request.
        using var running = await server.Http.PostJsonAsync("v1/completions", request, streamed: true);
        using var waiting = await server.Http.PostJsonAsync("v1/completions", request, streamed: true);
        Assert.Equal(HttpStatusCode.OK, running.StatusCode);
        Assert.Equal(HttpStatusCode.OK, waiting.StatusCode);

        using var refused = await server.Http.PostJsonAsync("v1/completions", request);
        var (status, error) = await ServerEvents.ReadErrorAsync(refused);
        Assert.Equal(429, status);
        Assert.Equal("rate_limit_exceeded", error.GetProperty("code").GetString());
        Assert.Equal(TimeSpan.FromSeconds(1), refused.Headers.RetryAfter?.Delta); // no request has finished yet to time

        plan!.Release();
        string expected = Stories.Greedy("Once upon a time", 10).Text;
        foreach (var accepted in new[] { running, waiting })
        {
            var events = await ServerEvents.ReadEventsAsync(accepted);
            Assert.Equal("[DONE]", events[^1]);
            Assert.Equal(expected, string.Concat(events[..^1].Select(e => JsonDocument.Parse(e).RootElement.GetProperty("choices")[0].GetProperty("text").GetString())));
        }
    }

    [Fact]
    public async Task AClientLeavingAStreamCancelsItsRequestAndFreesItsBlocks()
    {
        const string prompt = "Once upon a time";
        int fullLength = Stories.Greedy(prompt, 200).Tokens.Length;
        Assert.True(fullLength > 40, $"the greedy story ends after {fullLength} tokens; the test needs a longer one");

        // The plan holds from its fifth step until the server has seen the client go.
        using var meters = new TestMeterFactory();
        var finished = meters.Count("kiln.engine.finished_requests");
        HeldPlan? plan = null;
        var aborted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var options = new KilnServerOptions { Engine = LoopbackServer.SmallEngine with { MeterFactory = meters } };
        await using var server = await LoopbackServer.StartAsync(options, tokens => plan = new HeldPlan(Stories.CompilePlan(tokens), holdFromStep: 5, Patience),
            app => app.Use((context, next) =>
            {
                context.RequestAborted.Register(() => aborted.TrySetResult());
                return next(context);
            }));

        // A client that closes its connection at once when it stops reading, rather than draining the rest.
        using var client = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = server.Address };
        var response = await client.PostJsonAsync("v1/completions", $$"""{"prompt": "{{prompt}}", "max_tokens": 200, "temperature": 0, "stream": true}""", streamed: true);
        var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        Assert.StartsWith("data: {", await reader.ReadLineAsync().WaitAsync(Patience));
        Assert.StartsWith("data: {", (await reader.ReadLineAsync().WaitAsync(Patience), await reader.ReadLineAsync().WaitAsync(Patience)).Item2);
        response.Dispose();

        await aborted.Task.WaitAsync(Patience);
        plan!.Release();
        var idle = await server.WaitUntilIdle();
        Assert.Equal(0, idle.KvBlocksUsed);
        Assert.InRange(idle.GeneratedTokens, 2, fullLength - 1);
        Assert.Equal(1, finished.Value("reason", "cancelled"));
    }

    /// <summary>Meters of one engine only (engines of other tests run meanwhile), and the counters they record.</summary>
    private sealed class TestMeterFactory : IMeterFactory
    {
        private readonly List<Meter> _meters = [];
        private readonly MeterListener _listener = new();
        private readonly Dictionary<string, RecordedCounter> _counters = new();

        public TestMeterFactory()
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Scope == this && _counters.ContainsKey(instrument.Name)) listener.EnableMeasurementEvents(instrument);
            };
            _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) => _counters[instrument.Name].Add(value, tags));
            _listener.Start();
        }

        /// <summary>Records the counter <paramref name="name"/> of meters made from now on.</summary>
        public RecordedCounter Count(string name) => _counters[name] = new RecordedCounter();

        public Meter Create(MeterOptions options)
        {
            var meter = new Meter(new MeterOptions(options.Name) { Version = options.Version, Tags = options.Tags, Scope = this });
            lock (_meters) _meters.Add(meter);
            return meter;
        }

        public void Dispose()
        {
            _listener.Dispose();
            lock (_meters) _meters.ForEach(m => m.Dispose());
        }
    }

    private sealed class RecordedCounter
    {
        private readonly List<(long Value, KeyValuePair<string, object?>[] Tags)> _measurements = [];

        public void Add(long value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            lock (_measurements) _measurements.Add((value, tags.ToArray()));
        }

        /// <summary>The sum of the measurements tagged <paramref name="key"/> = <paramref name="value"/>.</summary>
        public long Value(string key, string value)
        {
            lock (_measurements) return _measurements.Where(m => m.Tags.Any(t => t.Key == key && (string?)t.Value == value)).Sum(m => m.Value);
        }
    }
}
