using System.Globalization;
using System.Net;

namespace Kiln.Server.Tests;

/// <summary>/metrics is Prometheus text of the engine's instruments, counting exactly what the engine did.</summary>
[Collection(AloneCollection.Name)]
public sealed class MetricsTests
{
    [Fact]
    public async Task MetricsArePrometheusTextOfTheEngineInstruments()
    {
        await using var server = await LoopbackServer.StartAsync();
        using (var completion = await server.Http.PostJsonAsync("v1/completions", """{"prompt": "Lily", "max_tokens": 8, "temperature": 0}"""))
            Assert.Equal(HttpStatusCode.OK, completion.StatusCode);
        var idle = await server.WaitUntilIdle();

        using var response = await server.Http.GetAsync("metrics");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
        string text = await response.Content.ReadAsStringAsync();
        foreach (string name in new[]
        {
            "kiln_engine_generated_tokens_total", "kiln_engine_computed_tokens_total", "kiln_engine_finished_requests_total",
            "kiln_engine_time_to_first_token_milliseconds_bucket", "kiln_engine_time_between_tokens_milliseconds_count",
            "kiln_engine_requests_running", "kiln_engine_requests_waiting", "kiln_engine_kv_blocks_used", "kiln_engine_kv_blocks_free",
            "kiln_engine_prefix_cache_hit_rate",
        })
        {
            Assert.Contains("\n" + name, text);
        }
        Assert.Contains("# TYPE kiln_engine_generated_tokens_total counter", text);

        // This server's engine is the only one in the process: one series, and exactly its tokens.
        Assert.Equal(8, idle.GeneratedTokens);
        Assert.Equal(idle.GeneratedTokens, Sample(text, "kiln_engine_generated_tokens_total"));
        Assert.Equal(0, Sample(text, "kiln_engine_kv_blocks_used"));
        Assert.Equal(0, Sample(text, "kiln_engine_requests_running"));
    }

    /// <summary>The value of the one sample line of <paramref name="metric"/> (any labels).</summary>
    private static double Sample(string text, string metric)
    {
        var lines = text.Split('\n').Where(line => line.StartsWith(metric + "{", StringComparison.Ordinal) || line.StartsWith(metric + " ", StringComparison.Ordinal)).ToArray();
        Assert.True(lines.Length == 1, $"{metric}: expected one sample line, got {lines.Length}:\n{string.Join('\n', lines)}");
        return double.Parse(lines[0].Split(' ')[1], CultureInfo.InvariantCulture);
    }
}
