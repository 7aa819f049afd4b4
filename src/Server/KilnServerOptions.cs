using Kiln.Engine.Serving;

namespace Kiln.Server;

/// <summary>How a Kiln server listens, whom it lets in, and how its engine shares out work.</summary>
public sealed record KilnServerOptions
{
    /// <summary>The address Kestrel binds: loopback unless told otherwise ("0.0.0.0" or "*" for every interface).</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>The TCP port; 0 lets the system pick a free one (read it back from <c>app.Urls</c> after start).</summary>
    public int Port { get; init; } = 8080;

    /// <summary>
    /// When set, every /v1 request must carry <c>Authorization: Bearer</c> this key, or it is answered 401.
    /// /health and /metrics stay open, for probes and scrapers.
    /// </summary>
    public string? ApiKey { get; init; }

    /// <summary>The id clients name the model by; null: the model file's name without its extension.</summary>
    public string? ModelId { get; init; }

    /// <summary>
    /// The engine's memory, batching and queue limits (<see cref="EngineOptions.MaxQueuedRequests"/> bounds the waiting
    /// queue: past it a request is answered 429 with Retry-After). The server sets <see cref="EngineOptions.MeterFactory"/>.
    /// </summary>
    public EngineOptions Engine { get; init; } = new();

    internal void Validate()
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(Host, nameof(Host));
        ArgumentOutOfRangeException.ThrowIfNegative(Port, nameof(Port));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(Port, 65535, nameof(Port));
        if (ApiKey is not null) ArgumentException.ThrowIfNullOrWhiteSpace(ApiKey, nameof(ApiKey));
        if (ModelId is not null) ArgumentException.ThrowIfNullOrWhiteSpace(ModelId, nameof(ModelId));
        ArgumentNullException.ThrowIfNull(Engine, nameof(Engine));
    }
}
