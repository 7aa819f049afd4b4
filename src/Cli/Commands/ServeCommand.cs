using System.CommandLine;
using System.Diagnostics.Metrics;
using Kiln.Chat;
using Kiln.Cli.Loading;
using Kiln.Engine.Serving;
using Kiln.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Kiln.Cli.Commands;

/// <summary>
/// kiln serve: the OpenAI-compatible server of <see cref="KilnServer"/> over one model file, until Ctrl+C. The model
/// is loaded with the CLI's progress display; the address is printed once the server listens.
/// </summary>
internal static class ServeCommand
{
    public static Command Create(CliConsole console)
    {
        var model = CommonOptions.Model();
        var defaults = new KilnServerOptions();
        var host = new Option<string>("--host") { Description = "The address to listen on (\"0.0.0.0\" or \"*\": every interface).", DefaultValueFactory = _ => defaults.Host };
        var port = new Option<int>("--port")
        {
            Description = "The TCP port (0: any free one).",
            DefaultValueFactory = _ => defaults.Port,
            CustomParser = result => CommonOptions.Parse(result, "a port number from 0 to 65535", (string text, out int value) =>
                int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out value) && value <= 65535),
        };
        var apiKey = new Option<string?>("--api-key") { Description = "Require 'Authorization: Bearer KEY' on every /v1 request." };
        var maxQueue = new Option<int>("--max-queue")
        {
            Description = "Requests waiting beyond the running ones; past it a request is answered 429.",
            DefaultValueFactory = _ => defaults.Engine.MaxQueuedRequests,
            CustomParser = result => CommonOptions.Parse(result, "a whole number, 1 or more", (string text, out int value) =>
                int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out value) && value >= 1),
        };
        var context = new Option<int?>("--context")
        {
            Description = $"The longest sequence, prompt and reply, in tokens (default: the file's trained context, at most {DefaultContextCap}).",
            CustomParser = result => CommonOptions.Parse<int?>(result, "a whole number, 2 or more", (string text, out int? value) => TryParseAtLeast(text, 2, out value)),
        };
        var parallel = new Option<int>("--parallel")
        {
            Description = "Requests (samples) decoded together in one batch; more wait in the queue.",
            DefaultValueFactory = _ => defaults.Engine.MaxRunningRequests,
            CustomParser = result => CommonOptions.Parse(result, "a whole number, 1 or more", (string text, out int value) =>
                int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out value) && value >= 1),
        };
        var kvCache = new Option<int?>("--kv-cache-mb")
        {
            Description = $"Memory for the KV cache, in MiB (default: room for {DefaultFullContexts} sequences of the whole context; past it the engine preempts and recomputes).",
            CustomParser = result => CommonOptions.Parse<int?>(result, "a whole number of MiB, 1 or more", (string text, out int? value) => TryParseAtLeast(text, 1, out value)),
        };
        var command = new Command("serve", "Serve a model over an OpenAI-compatible HTTP API (completions and chat completions).")
        {
            model, host, port, apiKey, maxQueue, context, parallel, kvCache,
        };
        command.SetAction((result, cancellation) => ServeAsync(console, result.GetValue(model)!, new KilnServerOptions
        {
            Host = result.GetValue(host)!,
            Port = result.GetValue(port),
            ApiKey = result.GetValue(apiKey),
            Engine = defaults.Engine with { MaxQueuedRequests = result.GetValue(maxQueue), MaxRunningRequests = result.GetValue(parallel) },
        }, new Sizing(result.GetValue(context), result.GetValue(kvCache)), cancellation));
        return command;
    }

    private static bool TryParseAtLeast(string text, int least, out int? value)
    {
        bool valid = int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int parsed) && parsed >= least;
        value = parsed;
        return valid;
    }

    /// <summary>The default context when the file states a longer one: long contexts are asked for, not assumed.</summary>
    private const int DefaultContextCap = 8192;

    /// <summary>Sequences of the whole context the default KV memory holds at once.</summary>
    private const int DefaultFullContexts = 4;

    /// <summary>What the command line asked of the engine's memory; null: the defaults above.</summary>
    private readonly record struct Sizing(int? Context, int? KvCacheMiB);

    private static EngineOptions SizeEngine(LoadedModel loaded, EngineOptions options, Sizing sizing)
    {
        int context = sizing.Context ?? Math.Min(loaded.TrainedContext ?? options.MaxContext, DefaultContextCap);
        long blocksPerContext = (context + options.BlockSize - 1) / options.BlockSize;
        long bytesPerBlock = loaded.Model.KvShape.BytesPerBlock(options.BlockSize, options.KvStorage);
        long kvBytes = sizing.KvCacheMiB is int mib
            ? (long)mib << 20
            : Math.Max(1, blocksPerContext * bytesPerBlock * Math.Min(DefaultFullContexts, options.MaxRunningRequests));
        return options with { MaxContext = context, KvCacheBytes = kvBytes, TokenBudget = Math.Max(options.TokenBudget, options.MaxRunningRequests) };
    }

    private static async Task<int> ServeAsync(CliConsole console, string path, KilnServerOptions options, Sizing sizing, CancellationToken cancellation)
    {
        var app = KilnServer.CreateBuilder(options).Build();
        await using (app)
        {
            // The engine reports on the app's meters, which /metrics exports.
            var phases = new Phases(console);
            using var loaded = LoadedModel.Load(path, phases);
            var engineOptions = SizeEngine(loaded, options.Engine, sizing) with { MeterFactory = app.Services.GetRequiredService<IMeterFactory>() };
            var template = ChatTemplate.FromModelFile(loaded.File, loaded.Tokenizer);
            var engine = loaded.CreateEngine(engineOptions, phases);
            await using var served = new KilnServerModel(options.ModelId ?? Path.GetFileNameWithoutExtension(path), engine, loaded.Tokenizer, template);
            app.MapKilnEndpoints(served, options);
            await app.StartAsync(cancellation);
            foreach (string url in app.Urls)
                console.Error.WriteLine($"kiln: serving {served.Id} at {url}/v1 (Ctrl+C stops)");
            await app.WaitForShutdownAsync(cancellation);
        }
        return ExitCodes.Ok;
    }
}
