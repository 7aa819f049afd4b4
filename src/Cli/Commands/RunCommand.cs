using System.CommandLine;
using System.Diagnostics;
using Kiln.Cli.Loading;
using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;

namespace Kiln.Cli.Commands;

/// <summary>
/// kiln run: continues a prompt and streams the text to stdout (the prompt first, then each token's text as it
/// comes); load, compile and speed figures go to stderr. Generation goes through <see cref="KilnEngine"/>, the path
/// kiln serve takes, so at temperature 0 the text is the server's for the same prompt.
/// </summary>
internal static class RunCommand
{
    /// <summary>Prompt tokens computed in one step at most: longer prompts are prefilled in chunks.</summary>
    private const int MaxTokensPerStep = 256;

    public static Command Create(CliConsole console)
    {
        var model = CommonOptions.Model();
        var prompt = new Option<string>("--prompt", "-p") { Description = "The text to continue.", Required = true };
        var maxTokens = CommonOptions.MaxTokens(defaultValue: 128);
        var temperature = CommonOptions.Temperature();
        var seed = CommonOptions.Seed();
        var command = new Command("run", "Continue a prompt and stream the text to stdout.") { model, prompt, maxTokens, temperature, seed };
        command.SetAction((result, cancellation) => RunAsync(console, result.GetValue(model)!, result.GetValue(prompt)!,
            new GenerationOptions { MaxTokens = result.GetValue(maxTokens), Temperature = result.GetValue(temperature), Seed = result.GetValue(seed) },
            cancellation));
        return command;
    }

    private static async Task<int> RunAsync(CliConsole console, string path, string prompt, GenerationOptions generation, CancellationToken cancellation)
    {
        var phases = new Phases(console);
        using var loaded = LoadedModel.Load(path, phases);
        int[] promptIds = loaded.Tokenizer.Encode(prompt, loaded.Tokenizer.AddBosToken);
        int context = loaded.TrainedContext ?? int.MaxValue;
        if (promptIds.Length >= context)
            throw new CliException($"the prompt has {promptIds.Length} tokens, which leaves no room to generate in the model's context of {context} tokens.");

        // The KV cache holds this run (prompt and max tokens, within the trained context), not the whole context a
        // file may declare, which can be far beyond the machine's memory.
        int maxContext = (int)Math.Min(context, (long)promptIds.Length + generation.MaxTokens);
        var options = EngineSizing.ForContext(loaded.Model, maxContext, tokenBudget: Math.Clamp(promptIds.Length, 1, MaxTokensPerStep), maxRunningRequests: 1)
            with { PrefixCaching = false };
        await using var engine = loaded.CreateEngine(options, phases);

        var clock = Stopwatch.StartNew();
        double firstTokenMs = 0;
        console.Out.Write(prompt);
        GenerationUsage usage = default;
        FinishReason finish = FinishReason.None;
        await foreach (var update in engine.GenerateAsync(promptIds, generation, cancellation))
        {
            if (update.IsFinal)
            {
                if (update.FinishReason == FinishReason.Error) throw new CliException($"generation failed: {update.ErrorMessage}");
                usage = update.Usage ?? default;
                finish = update.FinishReason;
                break;
            }
            if (firstTokenMs == 0) firstTokenMs = clock.Elapsed.TotalMilliseconds;
            console.Out.Write(update.Text);
            console.Out.Flush();
        }
        console.Out.WriteLine();
        cancellation.ThrowIfCancellationRequested();
        double seconds = clock.Elapsed.TotalSeconds;
        double decodeSeconds = Math.Max(seconds - firstTokenMs / 1000, 1e-9);
        console.Error.WriteLine($"kiln: {usage.PromptTokens} prompt + {usage.CompletionTokens} generated tokens in {seconds:F3} s " +
                                $"(first token after {firstTokenMs:F0} ms, then {Math.Max(usage.CompletionTokens - 1, 0) / decodeSeconds:F1} tokens/s); " +
                                $"stopped: {Describe(finish)}");
        return ExitCodes.Ok;
    }

    private static string Describe(FinishReason finish) => finish switch
    {
        FinishReason.Length => "max tokens or context reached",
        FinishReason.Stop => "end of text",
        FinishReason.Cancelled => "cancelled",
        _ => finish.ToString(),
    };
}
