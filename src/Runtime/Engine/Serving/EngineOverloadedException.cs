namespace Kiln.Engine.Serving;

/// <summary>
/// The engine's waiting queue is full (<see cref="EngineOptions.MaxQueuedRequests"/>): the request was refused before
/// anything was queued, and nothing the engine had accepted was dropped. Try again after <see cref="RetryAfter"/>
/// (an HTTP server answers 429 Too Many Requests with it as Retry-After).
/// </summary>
public sealed class EngineOverloadedException(int openSamples, int capacity, TimeSpan retryAfter)
    : InvalidOperationException($"The engine is full: {openSamples} samples are open, running or waiting, of the {capacity} it holds (MaxRunningRequests + MaxQueuedRequests); retry in about {retryAfter.TotalSeconds:0.#} s.")
{
    /// <summary>Samples the engine held open when it refused the request.</summary>
    public int OpenSamples { get; } = openSamples;

    /// <summary>Samples the engine holds open at most: <see cref="EngineOptions.MaxRunningRequests"/> + <see cref="EngineOptions.MaxQueuedRequests"/>.</summary>
    public int Capacity { get; } = capacity;

    /// <summary>
    /// About how long until the engine has room for the request: the recent interval between finished samples, times
    /// the samples the request needs beyond the free room; a second when the engine has no history yet.
    /// </summary>
    public TimeSpan RetryAfter { get; } = retryAfter;
}
