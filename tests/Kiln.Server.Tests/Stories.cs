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
    public static (string Text, int[] Tokens, int PromptTokens) Greedy(string prompt, int maxTokens) =>
        Greedy(Tokenizer.Encode(prompt, Tokenizer.AddBosToken), maxTokens);

    /// <summary>The greedy continuation of prompt ids, as <see cref="Greedy(string, int)"/>.</summary>
    public static (string Text, int[] Tokens, int PromptTokens) Greedy(int[] ids, int maxTokens)
    {
        int[] tokens;
        lock (GeneratorLock)
        {
            _generator ??= new TokenGenerator(Model, CompilePlan(64), maxContext: 512);
            tokens = _generator.Generate(ids, maxTokens, SamplingOptions.Greedy, Tokenizer.EosId).ToArray();
        }
        return (Decode(tokens, after: ids[^1]), tokens, ids.Length);
    }

    /// <summary>Generated tokens' text, streamed as the engine decodes them after the prompt's last token.</summary>
    public static string Decode(IEnumerable<int> tokens, int after)
    {
        var decoder = Tokenizer.CreateStreamingDecoder(previousId: after);
        var text = new System.Text.StringBuilder();
        foreach (int token in tokens) text.Append(decoder.Append(token));
        return text.Append(decoder.Flush()).ToString();
    }

    /// <summary>
    /// A temporary copy of stories260K.gguf with <paramref name="chatTemplate"/> as tokenizer.chat_template and the
    /// tokens of <paramref name="controlTokens"/> renamed and made control tokens; the caller deletes it.
    /// </summary>
    public static string WriteModelWith(string chatTemplate, IReadOnlyDictionary<int, string> controlTokens)
    {
        using var source = ModelFile.Open(ModelPath);
        var writer = new GgufWriter();
        foreach (var (name, entry) in source.Metadata)
        {
            object value = entry.Value;
            if (name == "tokenizer.ggml.tokens")
            {
                string[] tokens = [.. (IEnumerable<string>)value];
                foreach (var (id, text) in controlTokens) tokens[id] = text;
                value = tokens;
            }
            else if (name == "tokenizer.ggml.token_type")
            {
                int[] types = [.. (IEnumerable<int>)value];
                foreach (int id in controlTokens.Keys) types[id] = (int)TokenType.Control;
                value = types;
            }
            writer.AddMetadata(name, value);
        }
        writer.AddMetadata(Kiln.Chat.ChatTemplate.MetadataKey, chatTemplate);
        foreach (var (name, info) in source.Tensors) writer.AddEncodedTensor(name, info.Type, source.GetTensorBytes(info), info.Dimensions);
        string path = Path.Combine(Path.GetTempPath(), $"kiln-server-{Guid.NewGuid():N}.gguf");
        writer.Write(path);
        return path;
    }
}
