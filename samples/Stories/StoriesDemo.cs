using System.Diagnostics;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;

namespace Kiln.Stories;

/// <summary>
/// The default demo: load a Llama file, compile it with the generated plan, continue a prompt. Text goes to
/// <c>output</c>, everything else (load and speed figures, errors) to <c>log</c>.
/// </summary>
public static class StoriesDemo
{
    public const int ExitOk = 0, ExitFailed = 1, ExitBadArguments = 2;

    private const int MaxTokensPerStep = 64;

    private static readonly string[] StockPrompts =
    [
        "Once upon a time",
        "Tom and Lily went to the park",
        "The little dog was sad because",
    ];

    public static int Run(string[] args, TextWriter output, TextWriter log)
    {
        if (!StoriesOptions.TryParse(args, out var options, out string error))
        {
            log.WriteLine($"stories: {error} Run with --help for usage.");
            return ExitBadArguments;
        }
        if (options.Help)
        {
            output.WriteLine(StoriesOptions.Usage);
            return ExitOk;
        }
        if (!File.Exists(options.ModelPath))
        {
            log.WriteLine($"stories: model file not found: {options.ModelPath}");
            return ExitFailed;
        }
        if (options.TokenizerPath is { } tokenizerPath && !File.Exists(tokenizerPath))
        {
            log.WriteLine($"stories: tokenizer file not found: {tokenizerPath}");
            return ExitFailed;
        }
        try
        {
            return Generate(options, output, log);
        }
        catch (ModelLoadException e)
        {
            log.WriteLine($"stories: cannot use the model: {e.Message}");
            return ExitFailed;
        }
        catch (InsufficientMemoryException e)
        {
            log.WriteLine($"stories: {e.Message}");
            return ExitFailed;
        }
    }

    private static int Generate(StoriesOptions options, TextWriter output, TextWriter log)
    {
        var clock = Stopwatch.StartNew();
        using var file = ModelFile.Open(options.ModelPath, options.TokenizerPath);
        var model = Llama.Load(file);
        var tokenizer = KilnTokenizer.FromModelFile(file);
        double loadMs = clock.Elapsed.TotalMilliseconds;

        clock.Restart();
        using ICompiledPlan plan = options.Eager ? new EagerPlan(model, MaxTokensPerStep) : model.Compile(MaxTokensPerStep);
        log.WriteLine($"stories: {Path.GetFileName(options.ModelPath)}: llama, dim {model.Dim}, {model.LayerCount} layers, " +
                      $"{model.Heads} heads ({model.KvHeadCount} KV), vocab {model.VocabSize}; loaded in {loadMs:F0} ms, " +
                      $"{(options.Eager ? "eager reference" : "compiled plan")} ready in {clock.Elapsed.TotalMilliseconds:F0} ms");
        if (options.Report) log.WriteLine(plan.FusionReport);

        string[] prompts = options.Prompt is { } prompt ? [prompt] : StockPrompts;
        int[][] promptIds = Array.ConvertAll(prompts, p => tokenizer.Encode(p));
        int context = Math.Max(1, model.Context), longest = promptIds.Max(ids => ids.Length);
        if (longest >= context)
        {
            log.WriteLine($"stories: the prompt has {longest} tokens, which leaves no room to generate in the model's context of {context} tokens.");
            return ExitFailed;
        }
        // The KV cache holds what this run generates (the longest prompt and max tokens), not the whole context the file
        // declares, which may be far beyond this machine's memory.
        var generator = new TokenGenerator(model, plan, maxContext: (int)Math.Min(context, (long)longest + options.MaxTokens));
        var sampling = new SamplingOptions { Temperature = options.Temperature, TopP = options.TopP, Seed = options.Seed };
        if (options.Prompt is not null)
        {
            log.WriteLine($"stories: {Continue(prompts[0], promptIds[0], generator, tokenizer, sampling, options.MaxTokens, output)}");
            return ExitOk;
        }

        int totalTokens = 0;
        double totalSeconds = 0;
        for (int i = 0; i < prompts.Length; i++)
        {
            var speed = Continue(prompts[i], promptIds[i], generator, tokenizer, sampling, options.MaxTokens, output);
            output.WriteLine();
            log.WriteLine($"stories: {speed}");
            totalTokens += speed.Tokens;
            totalSeconds += speed.Seconds;
        }
        output.WriteLine($"{totalTokens} tokens in {totalSeconds:F3} s: {totalTokens / totalSeconds:F1} tokens/s");
        return ExitOk;
    }

    /// <summary>Writes the prompt, then each new token's text as it comes.</summary>
    private static Speed Continue(string prompt, int[] ids, TokenGenerator generator, KilnTokenizer tokenizer, SamplingOptions sampling, int maxTokens, TextWriter output)
    {
        output.Write(prompt);
        var decoder = tokenizer.CreateStreamingDecoder(ids[^1]);
        var clock = Stopwatch.StartNew();
        int count = 0;
        foreach (int id in generator.Generate(ids, maxTokens, sampling, stopToken: tokenizer.EosId))
        {
            output.Write(decoder.Append(id));
            output.Flush();
            count++;
        }
        output.Write(decoder.Flush());
        output.WriteLine();
        double seconds = clock.Elapsed.TotalSeconds;
        return new Speed(ids.Length, count, seconds);
    }

    private sealed record Speed(int PromptTokens, int Tokens, double Seconds)
    {
        public override string ToString() =>
            $"{PromptTokens} prompt + {Tokens} generated tokens in {Seconds:F3} s: {Tokens / Math.Max(Seconds, 1e-9):F1} tokens/s";
    }
}
