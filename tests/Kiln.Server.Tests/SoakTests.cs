using Kiln.Bench;
using Kiln.Engine.Serving;
using Xunit.Abstractions;

namespace Kiln.Server.Tests;

/// <summary>
/// <c>bench soak</c> small (the 10,000-request runs are in the README): 64 concurrent clients on stories260K, a fifth
/// cancelling mid-stream and a tenth stopping reading, 500 requests through the engine API (its KV memory too small for
/// them all, so that requests are preempted and recomputed) and 250 through a loopback server.
/// No request fails, no KV block is held at idle, and every completed request generates what it generates alone
/// (seeded sampling, so temperature above 0 too). RSS is printed, not judged: the test host runs other tests beside it.
/// </summary>
/// <remarks>
/// Alone (<see cref="AloneCollection"/>): the loopback server's /metrics once lacked kiln_engine_kv_blocks_used after
/// the soak while other tests' servers started and stopped beside it.
/// </remarks>
[Collection(AloneCollection.Name)]
public sealed class SoakTests(ITestOutputHelper output)
{
    /// <summary>Shorter requests than the bench's (at most 24 new tokens) so that both soaks take about a minute on a 2-core machine.</summary>
    private static readonly SoakOptions Options = new(Requests: 500, Concurrency: 64, CancelFraction: 0.2, Seed: 14) { MaxNewTokens = 24 };

    /// <summary>Over HTTP, whose check of every request alone runs one at a time on the one server, half as many.</summary>
    private static readonly SoakOptions HttpOptions = Options with { Requests = 250 };

    [Fact]
    public async Task Engine_soak_of_500_requests_with_cancels_and_stalled_readers()
    {
        var engineOptions = Soak.EngineOptionsFor(Stories.Model, Options.Concurrency);
        await using var engine = new KilnEngine(Stories.Model, Stories.CompilePlan, Stories.Tokenizer, engineOptions);
        // Requests are checked alone on engines of their own, side by side, each running one request at a time.
        await using var alone1 = new KilnEngine(Stories.Model, Stories.CompilePlan, Stories.Tokenizer, engineOptions with { PrefixCaching = false });
        await using var alone2 = new KilnEngine(Stories.Model, Stories.CompilePlan, Stories.Tokenizer, engineOptions with { PrefixCaching = false });
        await using var alone3 = new KilnEngine(Stories.Model, Stories.CompilePlan, Stories.Tokenizer, engineOptions with { PrefixCaching = false });

        var report = await Soak.RunAsync(new EngineSoakClient(engine), [new EngineSoakClient(alone1), new EngineSoakClient(alone2), new EngineSoakClient(alone3)],
            Stories.Tokenizer.VocabSize, Options, http: false, Log());

        Check(report, Options);
        output.WriteLine($"The soak's engine at the end: {engine.GetStatistics()}");
        Assert.True(engine.GetStatistics().Preemptions > 0, "the KV memory was meant to be too small for every client at once");
    }

    [Fact]
    public async Task Http_soak_of_250_requests_with_cancels_and_dropped_connections()
    {
        await using var server = await LoopbackServer.StartAsync(new KilnServerOptions { Engine = Soak.EngineOptionsFor(Stories.Model, Options.Concurrency) });
        using var client = new HttpSoakClient(server.Address, Options.Concurrency);

        var report = await Soak.RunAsync(client, [client], Stories.Tokenizer.VocabSize, HttpOptions, http: true, Log());

        Check(report, HttpOptions);
        Assert.True(report.RssStartMb > 0, "the server's /metrics reports its working set");
    }

    private void Check(SoakReport report, SoakOptions options)
    {
        output.WriteLine(report.ToJson());
        Assert.True(report.Problems.Count == 0, string.Join("\n", report.Problems));
        Assert.Equal(0, report.Failed);
        Assert.Equal(0, report.LeakedBlocks);
        Assert.Equal(options.Requests, report.Completed + report.Cancelled);
        Assert.InRange(report.Cancelled, options.Requests / 10, options.Requests / 2);
    }

    private TextWriter Log() => new OutputWriter(output);

    /// <summary>The soak's progress lines into the test's output.</summary>
    private sealed class OutputWriter(ITestOutputHelper output) : StringWriter
    {
        public override void WriteLine(string? value) => output.WriteLine(value ?? "");
    }
}
