using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Kiln.Engine.Serving;
using Kiln.Server.Protocol;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;

namespace Kiln.Server;

/// <summary>
/// An OpenAI-compatible HTTP server over one model: <c>GET /v1/models</c>; for a decoder, run by a
/// <see cref="KilnEngine"/>, <c>POST /v1/completions</c> and <c>POST /v1/chat/completions</c> (whole or streamed as
/// server-sent events); for an encoder, <c>POST /v1/embeddings</c>; <c>GET /health</c>, and <c>GET /metrics</c> in
/// Prometheus text from the engine's "Kiln.Engine" meter. Each kind answers the other's endpoints 400.
/// </summary>
/// <example>
/// One line for a command-line host: <c>await KilnServer.RunAsync("model.gguf", new KilnServerOptions { Port = 8080 }, cancellationToken);</c>
/// Or piece by piece, to add middleware of one's own:
/// <code>
/// var builder = KilnServer.CreateBuilder(options);
/// var app = builder.Build();
/// await using var model = KilnServerModel.Load(path, options.Engine);
/// app.MapKilnEndpoints(model, options);
/// await app.RunAsync();
/// </code>
/// </example>
public static class KilnServer
{
    /// <summary>
    /// Loads <paramref name="modelPath"/>, serves it at <see cref="KilnServerOptions.Host"/>:<see cref="KilnServerOptions.Port"/>
    /// until <paramref name="cancellationToken"/> is cancelled or the process is asked to stop (Ctrl+C, SIGTERM),
    /// then stops the engine. The listening address is logged once bound.
    /// </summary>
    public static async Task RunAsync(string modelPath, KilnServerOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var app = CreateBuilder(options).Build();
        await using (app.ConfigureAwait(false))
        {
            var meters = app.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
            var model = KilnServerModel.Load(modelPath, options.Engine with { MeterFactory = meters }, options.ModelId);
            await using (model.ConfigureAwait(false))
            {
                app.MapKilnEndpoints(model, options);
                await app.RunAsync(cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// A slim ASP.NET Core builder listening only where <paramref name="options"/> say (loopback by default), with the
    /// services <see cref="MapKilnEndpoints"/> needs (<see cref="AddKilnServer"/>) and request logging kept to warnings.
    /// </summary>
    public static WebApplicationBuilder CreateBuilder(KilnServerOptions options, string[]? args = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder(args ?? []);
        builder.WebHost.ConfigureKestrel(kestrel => Listen(kestrel, options.Host, options.Port));
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Services.AddKilnServer();
        return builder;
    }

    /// <summary>
    /// Registers what the endpoints need: the Prometheus exporter of the engine's meter, ASP.NET Core's own HTTP meters,
    /// and the runtime's (working set, GC heap), so that a soak or an operator can watch memory over time.
    /// </summary>
    public static IServiceCollection AddKilnServer(this IServiceCollection services)
    {
        services.AddOpenTelemetry().WithMetrics(metrics => metrics
            .AddMeter(KilnEngine.MeterName, "Microsoft.AspNetCore.Hosting", "Microsoft.AspNetCore.Server.Kestrel", "System.Runtime")
            // Every scrape sees the engine as it is now.
            .AddPrometheusExporter(exporter => exporter.ScrapeResponseCacheDurationMilliseconds = 0));
        return services;
    }

    /// <summary>
    /// Maps the OpenAI-compatible endpoints for <paramref name="model"/>, with the API key check of
    /// <paramref name="options"/> on every /v1 route, plus /health and /metrics (which need <see cref="AddKilnServer"/>).
    /// </summary>
    public static IEndpointRouteBuilder MapKilnEndpoints(this IEndpointRouteBuilder endpoints, KilnServerModel model, KilnServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        byte[]? apiKey = options.ApiKey is null ? null : Encoding.UTF8.GetBytes(options.ApiKey);
        RequestDelegate Protected(RequestDelegate handler) => apiKey is null ? handler : context =>
            IsAuthorized(context.Request, apiKey) ? handler(context) : Unauthorized(context.Response);

        endpoints.MapGet("/v1/models", Protected(context => WriteJson(context.Response, json =>
        {
            json.WriteString("object", "list");
            json.WriteStartArray("data");
            json.WriteStartObject();
            WriteModel(json, model);
            json.WriteEndObject();
            json.WriteEndArray();
        })));
        endpoints.MapGet("/v1/models/{id}", Protected(context =>
            (string?)context.Request.RouteValues["id"] == model.Id
                ? WriteJson(context.Response, json => WriteModel(json, model))
                : CompletionEndpoint.ModelNotFound((string?)context.Request.RouteValues["id"] ?? "").WriteAsync(context.Response)));
        endpoints.MapPost("/v1/completions", Protected(new CompletionEndpoint(model, ApiKind.Completions).HandleAsync));
        endpoints.MapPost("/v1/chat/completions", Protected(new CompletionEndpoint(model, ApiKind.Chat).HandleAsync));
        endpoints.MapPost("/v1/embeddings", Protected(new EmbeddingsEndpoint(model).HandleAsync));
        endpoints.MapGet("/health", context => !model.IsEncoder && model.Engine.IsFaulted
            ? new OpenAiException(StatusCodes.Status503ServiceUnavailable, "The engine stopped after an error and takes no more requests.", type: "server_error").WriteAsync(context.Response)
            : WriteJson(context.Response, json => json.WriteString("status", "ok")));
        endpoints.MapPrometheusScrapingEndpoint("/metrics");
        return endpoints;
    }

    private static void Listen(Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions kestrel, string host, int port)
    {
        if (host is "*" or "0.0.0.0") kestrel.ListenAnyIP(port);
        else if (host == "localhost") kestrel.ListenLocalhost(port);
        else if (IPAddress.TryParse(host, out var address)) kestrel.Listen(address, port);
        else throw new ArgumentException($"Host '{host}' is not an IP address, \"localhost\" or \"*\".", nameof(host));
    }

    /// <summary>Whether the request carries "Authorization: Bearer &lt;key&gt;", compared in constant time.</summary>
    private static bool IsAuthorized(HttpRequest request, byte[] apiKey)
    {
        const string Scheme = "Bearer ";
        string? header = request.Headers.Authorization;
        if (header is null || !header.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase)) return false;
        byte[] given = Encoding.UTF8.GetBytes(header[Scheme.Length..].Trim());
        return CryptographicOperations.FixedTimeEquals(given, apiKey);
    }

    private static Task Unauthorized(HttpResponse response) =>
        new OpenAiException(StatusCodes.Status401Unauthorized, "Missing or incorrect API key: send it as 'Authorization: Bearer <key>'.", code: "invalid_api_key")
            .WriteAsync(response);

    private static void WriteModel(Utf8JsonWriter json, KilnServerModel model)
    {
        json.WriteString("id", model.Id);
        json.WriteString("object", "model");
        json.WriteNumber("created", model.Created.ToUnixTimeSeconds());
        json.WriteString("owned_by", "kiln");
        json.WriteNumber("max_model_len", model.MaxSequenceTokens);
    }

    private static Task WriteJson(HttpResponse response, Action<Utf8JsonWriter> writeFields)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        using (var json = new Utf8JsonWriter(buffer, JsonOutput.Options))
        {
            json.WriteStartObject();
            writeFields(json);
            json.WriteEndObject();
        }
        response.ContentType = "application/json";
        return response.Body.WriteAsync(buffer.WrittenMemory).AsTask();
    }
}
