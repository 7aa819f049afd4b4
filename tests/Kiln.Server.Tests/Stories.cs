using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;

namespace Kiln.Server.Tests;

/// <summary>The shipped stories260K model, loaded once for every server of the tests, and what it generates alone.</summary>
internal static class Stories
{
    private static readonly Lazy<(Llama Model, KilnTokenizer Tokenizer)> Loaded = new(() =>
    {
        using var file = ModelFile.Open(ModelPath);
        return (Llama.Load(file), KilnTokenizer.FromModelFile(file));
    });

    private static readonly object GeneratorLock = new();
    private static TokenGenerator? _generator;

    public static string ModelPath => Path.Combine(AppContext.BaseDirectory, "models", "stories260K.gguf");

    public static Llama Model => Loaded.Value.Model;

    public static KilnTokenizer Tokenizer => Loaded.Value.Tokenizer;

    /// <summary>The compiled plan the test servers run, on two threads (the machines running the tests have few cores).</summary>
    public static ICompiledPlan CompilePlan(int maxTokensPerStep) => Model.Compile(new PlanOptions(maxTokensPerStep, Threads: 2));

    /// <summary>
    /// The greedy text the model writes after <paramref name="prompt"/> run alone: the prompt encoded as the engine
    /// encodes a string, <see cref="TokenGenerator"/> over a contiguous KV cache, stopping at EOS, decoded as a stream.
    /// </summary>
    public static (string Text, int[] Tokens, int PromptTokens) Greedy(string prompt, int maxTokens)
    {
        int[] ids = Tokenizer.Encode(prompt, Tokenizer.AddBosToken);
        int[] tokens;
        lock (GeneratorLock)
        {
            _generator ??= new TokenGenerator(Model, CompilePlan(64), maxContext: 512);
            tokens = _generator.Generate(ids, maxTokens, SamplingOptions.Greedy, Tokenizer.EosId).ToArray();
        }
        var decoder = Tokenizer.CreateStreamingDecoder(previousId: ids[^1]);
        var text = new System.Text.StringBuilder();
        foreach (int token in tokens) text.Append(decoder.Append(token));
        text.Append(decoder.Flush());
        return (text.ToString(), tokens, ids.Length);
    }
}
