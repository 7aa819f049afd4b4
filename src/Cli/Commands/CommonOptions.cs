using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;

namespace Kiln.Cli.Commands;

/// <summary>Options several commands share. Each parses its own value, so a bad one is a usage error naming the option.</summary>
internal static class CommonOptions
{
    public static Option<string> Model() => new("--model", "-m")
    {
        Description = "A model file: GGUF, or a llama2.c .bin with its tokenizer beside it.",
        Required = true,
    };

    public static Option<int> MaxTokens(int defaultValue) => new("--max-tokens", "-n")
    {
        Description = "Tokens to generate at most.",
        DefaultValueFactory = _ => defaultValue,
        CustomParser = result => Parse(result, "a whole number, 1 or more", (string text, out int value) =>
            int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out value) && value >= 1),
    };

    public static Option<float> Temperature() => new("--temperature", "-t")
    {
        Description = "0 picks the most likely token (greedy, the default); higher values sample.",
        DefaultValueFactory = _ => 0f,
        CustomParser = result => Parse(result, "a number, 0 or more", (string text, out float value) =>
            float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out value) && value >= 0 && float.IsFinite(value)),
    };

    public static Option<ulong?> Seed() => new("--seed", "-s")
    {
        Description = "Seed for sampling: the same seed, prompt and options give the same text (default: a fresh seed).",
        CustomParser = result => Parse(result, "a whole number, 0 or more", (string text, out ulong value) =>
            ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out value)),
    };

    public delegate bool TryParser<T>(string text, out T value);

    /// <summary>The option's one token parsed by <paramref name="tryParse"/>, or an error saying what was expected.</summary>
    public static T Parse<T>(ArgumentResult result, string expected, TryParser<T> tryParse)
    {
        string text = result.Tokens.Count == 1 ? result.Tokens[0].Value : "";
        if (tryParse(text, out T value)) return value;
        string option = result.Parent is OptionResult parent ? parent.Option.Name : "the value";
        result.AddError($"{option} takes {expected}; got '{text}'.");
        return default!;
    }
}
