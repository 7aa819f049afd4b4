using System.Globalization;

namespace Kiln.Stories;

/// <summary>The demo's command line. Parsing never throws: a bad argument becomes one clear line.</summary>
internal sealed record StoriesOptions
{
    public const string Usage =
        """
        Usage: dotnet run --project samples/Stories -- [options]
          --prompt TEXT        continue TEXT (without it: a few stock prompts and their speed)
          --max-tokens N       tokens to generate (default 64)
          --temperature T      0 = greedy (default); > 0 samples
          --top-p P            nucleus sampling cutoff in (0, 1] (default 1)
          --seed N             seed for sampling (default 42)
          --model PATH         a GGUF file or a llama2.c .bin (default: the shipped stories260K.gguf)
          --tokenizer PATH     llama2.c tokenizer .bin for a .bin model (default: found beside it)
          --eager              run the eager reference ops instead of the compiled plan
          --report             print the compiled plan's fusion report to stderr
        """;

    public string? Prompt { get; init; }
    public int MaxTokens { get; init; } = 64;
    public float Temperature { get; init; }
    public float TopP { get; init; } = 1f;
    public ulong Seed { get; init; } = 42;
    public string ModelPath { get; init; } = Path.Combine(AppContext.BaseDirectory, "models", "stories260K.gguf");
    public string? TokenizerPath { get; init; }
    public bool Eager { get; init; }
    public bool Report { get; init; }
    public bool Help { get; init; }

    public static bool TryParse(string[] args, out StoriesOptions options, out string error)
    {
        options = new StoriesOptions();
        error = "";
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i];
            switch (name)
            {
                case "--help" or "-h": options = options with { Help = true }; continue;
                case "--eager": options = options with { Eager = true }; continue;
                case "--report": options = options with { Report = true }; continue;
            }
            if (i + 1 >= args.Length)
            {
                error = name.StartsWith("--", StringComparison.Ordinal) && IsValueOption(name)
                    ? $"{name} needs a value."
                    : $"unknown argument '{name}'.";
                return false;
            }
            string value = args[++i];
            switch (name)
            {
                case "--prompt":
                    options = options with { Prompt = value };
                    break;
                case "--max-tokens" when int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int maxTokens) && maxTokens > 0:
                    options = options with { MaxTokens = maxTokens };
                    break;
                case "--temperature" when float.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out float temperature) && temperature >= 0 && float.IsFinite(temperature):
                    options = options with { Temperature = temperature };
                    break;
                case "--top-p" when float.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out float topP) && topP > 0 && topP <= 1:
                    options = options with { TopP = topP };
                    break;
                case "--seed" when ulong.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out ulong seed):
                    options = options with { Seed = seed };
                    break;
                case "--model":
                    options = options with { ModelPath = value };
                    break;
                case "--tokenizer":
                    options = options with { TokenizerPath = value };
                    break;
                default:
                    error = IsValueOption(name)
                        ? $"{name} got '{value}', which is not valid (see --help)."
                        : $"unknown argument '{name}'.";
                    return false;
            }
        }
        return true;
    }

    private static bool IsValueOption(string name) =>
        name is "--prompt" or "--max-tokens" or "--temperature" or "--top-p" or "--seed" or "--model" or "--tokenizer";
}
