using System.Globalization;
using Kiln.Engine.Serving;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;

namespace Kiln.Bench;

/// <summary>
/// <c>bench soak</c>: <see cref="Soak"/> through the engine API in this process, or through a running Kiln server
/// (<c>--url</c>, e.g. <c>kiln serve</c>). Prints the JSON report (and writes it to <c>--json</c>); exits 1 when a
/// target is missed: a failed request, a KV block held at idle, or RSS at the end more than 10 % above the warm-up's.
/// </summary>
public static class SoakCommand
{
    /// <summary>
    /// Engines checking completed requests alone side by side (each one request at a time): a single request of a small
    /// model keeps a core busy for a fraction of each step, so four of them finish the check sooner even on two cores.
    /// </summary>
    private const int AloneEngines = 4;

    public const string Usage =
        "usage: bench soak --model FILE [--requests 10000] [--concurrency 64] [--cancel-fraction 0.2] [--url http://127.0.0.1:PORT] [--json OUT] [--seed N] [--threads N]\n" +
        "  without --url: the engine API in this process (compiled plan on --threads, default 2), its KV memory small enough to preempt;\n" +
        "  with --url: the server there (--model still gives the vocabulary the prompts are drawn from).";

    public static int Run(ReadOnlySpan<string> args)
    {
        try
        {
            var values = new Dictionary<string, string>(StringComparer.Ordinal);
            for (int i = 0; i < args.Length; i++)
            {
                string name = args[i].StartsWith("--", StringComparison.Ordinal) ? args[i][2..] : throw new ArgumentException($"unexpected argument '{args[i]}'");
                string value = i + 1 < args.Length ? args[++i] : throw new ArgumentException($"--{name} needs a value");
                if (name is not ("model" or "requests" or "concurrency" or "cancel-fraction" or "url" or "json" or "seed" or "threads")) throw new ArgumentException($"unknown option --{name}");
                if (!values.TryAdd(name, value)) throw new ArgumentException($"--{name} given twice");
            }
            int Number(string name, int fallback, int min, int max)
            {
                if (!values.TryGetValue(name, out string? text)) return fallback;
                return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n >= min && n <= max
                    ? n : throw new ArgumentException($"--{name} must be an integer from {min} to {max}, not '{text}'");
            }
            string model = values.GetValueOrDefault("model") ?? throw new ArgumentException("--model is required");
            if (!File.Exists(model)) throw new ArgumentException($"--model: file '{model}' not found");
            double cancelFraction = 0.2;
            if (values.TryGetValue("cancel-fraction", out string? fraction)
                && (!double.TryParse(fraction, NumberStyles.Float, CultureInfo.InvariantCulture, out cancelFraction) || cancelFraction is < 0 or > 0.9))
                throw new ArgumentException($"--cancel-fraction must be a number from 0 to 0.9, not '{fraction}'");
            Uri? url = null;
            if (values.TryGetValue("url", out string? address) && (!Uri.TryCreate(address.EndsWith('/') ? address : address + "/", UriKind.Absolute, out url) || url.Scheme is not ("http" or "https")))
                throw new ArgumentException($"--url must be an http:// address, not '{address}'");
            var options = new SoakOptions(Number("requests", 10000, 1, 10_000_000), Number("concurrency", 64, 1, 1024), cancelFraction, Number("seed", 14, int.MinValue, int.MaxValue - 1));
            return RunAsync(model, url, Number("threads", 2, 1, 64), options, values.GetValueOrDefault("json"), Console.Out, Console.Error).GetAwaiter().GetResult();
        }
        catch (ArgumentException e) when (e is not ArgumentOutOfRangeException)
        {
            Console.Error.WriteLine($"bench soak: {e.Message}\n{Usage}");
            return 2;
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or ModelLoadException or HttpRequestException)
        {
            Console.Error.WriteLine($"bench soak: error: {e.Message}");
            return 1;
        }
    }

    public static async Task<int> RunAsync(string modelPath, Uri? url, int threads, SoakOptions options, string? jsonPath, TextWriter output, TextWriter log)
    {
        using var file = ModelFile.Open(modelPath);
        var tokenizer = KilnTokenizer.FromModelFile(file);
        SoakReport report;
        if (url is null)
        {
            var model = ModelCatalog.Load(file);
            var engineOptions = Soak.EngineOptionsFor(model, options.Concurrency);
            log.WriteLine($"soak: engine API, {Path.GetFileName(modelPath)}, compiled plan on {threads} threads, {engineOptions.MaxRunningRequests} running at most, " +
                          $"KV {engineOptions.KvCacheBytes / model.KvShape.BytesPerBlock(16)} blocks of 16; alone runs on {AloneEngines} more engines without prefix caching, one request each at a time");
            await using var engine = new KilnEngine(model, tokens => model.Compile(new PlanOptions(tokens, threads)), tokenizer, engineOptions);
            var alone = new KilnEngine[AloneEngines];
            try
            {
                for (int i = 0; i < alone.Length; i++)
                    alone[i] = new KilnEngine(model, tokens => model.Compile(new PlanOptions(tokens, threads)), tokenizer, engineOptions with { PrefixCaching = false });
                report = await Soak.RunAsync(new EngineSoakClient(engine), [.. alone.Select(e => new EngineSoakClient(e))], tokenizer.VocabSize, options, http: false, log);
                log.WriteLine($"soak: the soak's engine at the end: {engine.GetStatistics()}");
            }
            finally
            {
                foreach (var e in alone) if (e is not null) await e.DisposeAsync();
            }
        }
        else
        {
            log.WriteLine($"soak: HTTP, {url}; alone runs on the same server with nothing else in flight");
            using var client = new HttpSoakClient(url, options.Concurrency);
            report = await Soak.RunAsync(client, [client], tokenizer.VocabSize, options, http: true, log);
        }

        string json = report.ToJson();
        output.WriteLine(json);
        if (jsonPath is not null) await File.WriteAllTextAsync(jsonPath, json + "\n");
        foreach (string problem in report.Problems) log.WriteLine($"soak: FAILED {problem}");
        bool met = report.Failed == 0 && report.LeakedBlocks == 0 && report.RssGrowth <= 1.1 && report.Problems.Count == 0;
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"soak: targets {(met ? "met" : "MISSED")}: failed {report.Failed} (0), leaked blocks {report.LeakedBlocks} (0), RSS end/start {report.RssGrowth:F3} (≤ 1.10)"));
        return met ? 0 : 1;
    }
}
