using System.ClientModel;
using System.ClientModel.Primitives;
using Kiln.Engine.Serving;
using Microsoft.AspNetCore.Builder;
using OpenAI;

namespace Kiln.Server.Tests;

/// <summary>
/// A Kiln server on a free loopback port of a real Kestrel, as <c>kiln serve</c> runs it, with clients for it: the
/// official OpenAI client (no retries, so a 429 reaches the test) and a plain <see cref="HttpClient"/>.
/// </summary>
internal sealed class LoopbackServer : IAsyncDisposable
{
    public const string ModelId = "stories260K";

    /// <summary>Engine limits small enough for fast tests, with room for 32 concurrent requests.</summary>
    public static EngineOptions SmallEngine { get; } = new() { KvCacheBytes = 8 << 20, TokenBudget = 64, MaxRunningRequests = 32, MaxContext = 512 };

    private LoopbackServer(WebApplication app, KilnServerModel model, Uri address)
    {
        App = app;
        Model = model;
        Address = address;
        Http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(60) };
        // A client that stops reading a stream closes its connection at once, rather than draining what is left.
        _openAiHttp = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { Timeout = TimeSpan.FromSeconds(60) };
    }

    private readonly HttpClient _openAiHttp;

    public WebApplication App { get; }

    public KilnServerModel Model { get; }

    /// <summary>The engine of a decoder's server.</summary>
    public KilnEngine Engine => Model.Engine ?? throw new InvalidOperationException($"{Model.Id} is an encoder: it has no engine.");

    /// <summary>The server's root, e.g. http://127.0.0.1:41234/.</summary>
    public Uri Address { get; }

    public HttpClient Http { get; }

    /// <summary>
    /// Starts a server over stories260K with <paramref name="options"/> (the port is always a free one), on the plan
    /// <paramref name="plan"/> makes (the compiled one by default); <paramref name="configure"/> sees the app before
    /// the Kiln endpoints are mapped, to add middleware.
    /// </summary>
    public static async Task<LoopbackServer> StartAsync(KilnServerOptions? options = null, Func<int, ICompiledPlan>? plan = null, Action<WebApplication>? configure = null)
    {
        options = (options ?? new KilnServerOptions { Engine = SmallEngine }) with { Host = "127.0.0.1", Port = 0 };
        var engine = new KilnEngine(Stories.Model, plan ?? Stories.CompilePlan, Stories.Tokenizer, options.Engine);
        return await StartAsync(new KilnServerModel(options.ModelId ?? ModelId, engine, Stories.Tokenizer), options, configure);
    }

    /// <summary>Starts a server for a model already made (and takes it over).</summary>
    public static async Task<LoopbackServer> StartAsync(KilnServerModel model, KilnServerOptions options, Action<WebApplication>? configure = null)
    {
        options = options with { Host = "127.0.0.1", Port = 0 };
        var app = KilnServer.CreateBuilder(options).Build();
        configure?.Invoke(app);
        app.MapKilnEndpoints(model, options);
        await app.StartAsync();
        return new LoopbackServer(app, model, new Uri(app.Urls.Single() + "/"));
    }

    /// <summary>The official OpenAI client pointed at this server's /v1.</summary>
    public OpenAIClient OpenAI(string apiKey = "no-key-needed") => new(new ApiKeyCredential(apiKey), new OpenAIClientOptions
    {
        Endpoint = new Uri(Address, "v1"),
        RetryPolicy = new ClientRetryPolicy(maxRetries: 0),
        Transport = new HttpClientPipelineTransport(_openAiHttp),
    });

    /// <summary>Waits for the engine to publish an idle pool: nothing running or waiting, every KV block free.</summary>
    public async Task<EngineStatistics> WaitUntilIdle()
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            var statistics = Engine.GetStatistics();
            if (statistics.KvBlocksUsed == 0 && statistics.RunningRequests == 0 && statistics.WaitingRequests == 0) return statistics;
            if (DateTime.UtcNow > deadline) Assert.Fail($"The engine never went idle: {statistics}");
            await Task.Delay(5);
        }
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        _openAiHttp.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
        await Model.DisposeAsync();
    }
}
