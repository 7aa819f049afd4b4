using System.CommandLine;
using System.Diagnostics.Metrics;
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
        var command = new Command("serve", "Serve a model over an OpenAI-compatible HTTP API (completions and chat completions).") { model, host, port, apiKey, maxQueue };
        command.SetAction((result, cancellation) => ServeAsync(console, result.GetValue(model)!, new KilnServerOptions
        {
            Host = result.GetValue(host)!,
            Port = result.GetValue(port),
            ApiKey = result.GetValue(apiKey),
            Engine = defaults.Engine with { MaxQueuedRequests = result.GetValue(maxQueue) },
        }, cancellation));
        return command;
    }

    private static async Task<int> ServeAsync(CliConsole console, string path, KilnServerOptions options, CancellationToken cancellation)
    {
        var app = KilnServer.CreateBuilder(options).Build();
        await using (app)
        {
            // The engine reports on the app's meters, which /metrics exports.
            var engineOptions = options.Engine with { MeterFactory = app.Services.GetRequiredService<IMeterFactory>() };
            var phases = new Phases(console);
            using var loaded = LoadedModel.Load(path, phases);
            var engine = loaded.CreateEngine(engineOptions, phases);
            await using var served = new KilnServerModel(options.ModelId ?? Path.GetFileNameWithoutExtension(path), engine, loaded.Tokenizer);
            app.MapKilnEndpoints(served, options);
            await app.StartAsync(cancellation);
            foreach (string url in app.Urls)
                console.Error.WriteLine($"kiln: serving {served.Id} at {url}/v1 (Ctrl+C stops)");
            await app.WaitForShutdownAsync(cancellation);
        }
        return ExitCodes.Ok;
    }
}
