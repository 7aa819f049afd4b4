using System.Reflection;
using System.Text.Json;
using Kiln.Embeddings;
using Kiln.Loading;
using Kiln.Tokenization;

namespace Kiln.Models;

/// <summary>
/// The model definitions this sample ships, by the architecture a file names (GGUF general.architecture): the one
/// place a tool looks a file's definition up. A new definition is one line in <see cref="Loaders"/>.
/// </summary>
public static class ModelCatalog
{
    private static readonly (string Architecture, Type Definition, Func<ModelFile, IKilnModel> Load)[] Loaders =
    [
        ("llama", typeof(Llama), file => Llama.Load(file)),
        ("gpt2", typeof(Gpt2), file => Gpt2.Load(file)),
        ("qwen2", typeof(Qwen2), file => Qwen2.Load(file)),
        ("qwen3", typeof(Qwen3), file => Qwen3.Load(file)),
        ("gemma2", typeof(Gemma2), file => Gemma2.Load(file)),
        ("phi3", typeof(Phi3), file => Phi3.Load(file)),
        ("bert", typeof(Bert), file => Bert.Load(file)),
        ("lstm", typeof(Lstm), file => Lstm.Load(file)),
        ("mamba", typeof(Mamba), file => Mamba.Load(file)),
        ("jamba", typeof(Jamba), file => Jamba.Load(file)),
    ];

    /// <summary>The architectures <see cref="Load"/> accepts.</summary>
    public static IReadOnlyList<string> Architectures { get; } = Array.AsReadOnly(Array.ConvertAll(Loaders, entry => entry.Architecture));

    /// <summary>
    /// Binds <paramref name="file"/> to the definition of its architecture. Throws <see cref="ModelLoadException"/>
    /// on general.architecture when no definition here has that name.
    /// </summary>
    public static IKilnModel Load(ModelFile file) => Find(file).Load(file);

    /// <summary>
    /// The name of the definition <see cref="Load"/> would bind <paramref name="file"/> to (e.g. "Llama"), without
    /// binding it. Throws <see cref="ModelLoadException"/> as <see cref="Load"/> does when there is none.
    /// </summary>
    public static string DefinitionFor(ModelFile file) => Find(file).Definition.Name;

    /// <summary>
    /// What <paramref name="file"/>'s definition computes, as its [Model] attribute says: a decoder generates text, an
    /// encoder embeds it. Throws <see cref="ModelLoadException"/> as <see cref="Load"/> does when there is no definition.
    /// </summary>
    public static ModelKind KindOf(ModelFile file) => Find(file).Definition.GetCustomAttribute<ModelAttribute>()!.Kind;

    /// <summary>
    /// An embedding generator over an encoder file (see <see cref="KindOf"/>): the model bound and compiled with
    /// <paramref name="plan"/> (default: steps of 8192 tokens on every processor), the file's WordPiece tokenizer
    /// (<see cref="BertWordPiece.FromModelFile"/>), texts cut at <paramref name="maxSequenceTokens"/> (default:
    /// <see cref="SequenceLimit"/>), embeddings named <paramref name="id"/>.
    /// </summary>
    /// <exception cref="ModelLoadException">The file is no encoder, or cannot be bound, or has no vocabulary.</exception>
    public static KilnEmbeddingGenerator CreateEmbeddingGenerator(ModelFile file, string id, PlanOptions? plan = null, int? maxSequenceTokens = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        var kind = KindOf(file);
        if (kind != ModelKind.Encoder)
            throw new ModelLoadException(file.Path, "general.architecture", null, $"\"{file.Architecture}\" is a {kind.ToString().ToLowerInvariant()} ({DefinitionFor(file)}): it generates text; embeddings come from an encoder.");
        var tokenizer = BertWordPiece.FromModelFile(file);
        int limit = maxSequenceTokens ?? SequenceLimit(file);
        var model = Load(file);
        plan ??= new PlanOptions(Math.Max(DefaultEmbeddingStepTokens, limit));
        var compiled = model.Compile(plan);
        try
        {
            return new KilnEmbeddingGenerator(compiled, tokenizer, limit, id);
        }
        catch
        {
            compiled.Dispose();
            throw;
        }
    }

    private const int DefaultEmbeddingStepTokens = 8192;

    /// <summary>
    /// The longest text, in tokens with [CLS] and [SEP], an encoder file embeds by default: sentence-transformers'
    /// max_seq_length from a sentence_bert_config.json beside the file (or in its checkpoint directory), else the
    /// positions the model was trained for ({arch}.context_length, or a Hugging Face config's max_position_embeddings).
    /// </summary>
    public static int SequenceLimit(ModelFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        string directory = Directory.Exists(file.Path) ? file.Path : Path.GetDirectoryName(Path.GetFullPath(file.Path))!;
        string config = Path.Combine(directory, SentenceTransformersConfig);
        if (File.Exists(config))
        {
            try
            {
                using var json = JsonDocument.Parse(File.ReadAllText(config));
                if (json.RootElement.TryGetProperty("max_seq_length", out var length) && length.TryGetInt32(out int tokens) && tokens >= 2) return tokens;
                throw new ModelLoadException(config, "max_seq_length", null, "should be an integer of 2 or more.");
            }
            catch (JsonException e)
            {
                throw new ModelLoadException(config, "json", null, $"does not parse: {e.Message}", e);
            }
        }
        string key = file.Naming == ModelNaming.HuggingFace ? "max_position_embeddings" : $"{file.Architecture}.context_length";
        return file.TryGetInt(key, out long positions) && positions is >= 2 and <= int.MaxValue
            ? (int)positions
            : throw new ModelLoadException(file.Path, key, null, "is missing or below 2: the longest text the model embeds is unknown.");
    }

    /// <summary>The file sentence-transformers saves beside a model with its max_seq_length.</summary>
    public const string SentenceTransformersConfig = "sentence_bert_config.json";

    private static (string Architecture, Type Definition, Func<ModelFile, IKilnModel> Load) Find(ModelFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        foreach (var entry in Loaders)
            if (entry.Architecture == file.Architecture) return entry;
        string found = file.Architecture.Length == 0 ? "no architecture" : $"\"{file.Architecture}\"";
        throw new ModelLoadException(file.Path, "general.architecture", null,
            $"{found} has no Kiln model definition; supported: {string.Join(", ", Architectures)}.");
    }
}
