using System.Diagnostics.Metrics;

namespace Kiln.Engine.Serving;

/// <summary>
/// The engine's instruments on the "Kiln.Engine" meter. Histograms and counters are recorded by the engine loop
/// (no tags, so recording allocates nothing); gauges are observed on the collector's thread from the loop's latest
/// published statistics.
/// </summary>
internal sealed class EngineMetrics : IDisposable
{
    private readonly Meter _meter;

    public EngineMetrics(IMeterFactory? factory, Func<EngineStatistics> statistics)
    {
        _meter = factory?.Create(KilnEngine.MeterName) ?? new Meter(KilnEngine.MeterName);
        TimeToFirstToken = _meter.CreateHistogram<double>("kiln.engine.time_to_first_token", "ms", "From a request's arrival to its first generated token.");
        TimeBetweenTokens = _meter.CreateHistogram<double>("kiln.engine.time_between_tokens", "ms", "Between consecutive generated tokens of one request.");
        GeneratedTokens = _meter.CreateCounter<long>("kiln.engine.generated_tokens", "{token}", "Tokens generated, all requests together (its rate is the throughput in tokens/s).");
        ComputedTokens = _meter.CreateCounter<long>("kiln.engine.computed_tokens", "{token}", "Tokens run through the model: prompt chunks, recomputation after preemption, and decodes.");
        FinishedRequests = _meter.CreateCounter<long>("kiln.engine.finished_requests", "{request}", "Requests ended, by finish reason.");
        _meter.CreateObservableGauge("kiln.engine.requests.running", () => statistics().RunningRequests, "{request}", "Requests holding KV blocks and scheduled every step.");
        _meter.CreateObservableGauge("kiln.engine.requests.waiting", () => statistics().WaitingRequests, "{request}", "Requests queued for admission (new or preempted).");
        _meter.CreateObservableGauge("kiln.engine.kv_blocks.used", () => statistics().KvBlocksUsed, "{block}", "KV blocks held by running requests.");
        _meter.CreateObservableGauge("kiln.engine.kv_blocks.free", () => statistics().KvBlocksFree, "{block}", "KV blocks no request holds (some still hold a cached prefix).");
        _meter.CreateObservableGauge("kiln.engine.kv_blocks.cached", () => statistics().KvBlocksCached, "{block}", "KV blocks registered in the prefix cache, held or free.");
        _meter.CreateObservableGauge("kiln.engine.prefix_cache.hit_rate", () => statistics().PrefixCacheHitRate, null, "Prompt tokens found in the prefix cache over prompt tokens looked up.");
    }

    public Histogram<double> TimeToFirstToken { get; }

    public Histogram<double> TimeBetweenTokens { get; }

    public Counter<long> GeneratedTokens { get; }

    public Counter<long> ComputedTokens { get; }

    public Counter<long> FinishedRequests { get; }

    public void Dispose() => _meter.Dispose();
}
