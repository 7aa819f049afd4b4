using Kiln.Loading;

namespace Kiln.Models;

/// <summary>
/// The model definitions this sample ships, by the architecture a file names (GGUF general.architecture): the one
/// place a tool looks a file's definition up. A new definition is one line in <see cref="Loaders"/>.
/// </summary>
public static class ModelCatalog
{
    private static readonly (string Architecture, string Definition, Func<ModelFile, IKilnModel> Load)[] Loaders =
    [
        ("llama", nameof(Llama), file => Llama.Load(file)),
        ("gpt2", nameof(Gpt2), file => Gpt2.Load(file)),
        ("qwen2", nameof(Qwen2), file => Qwen2.Load(file)),
        ("qwen3", nameof(Qwen3), file => Qwen3.Load(file)),
        ("gemma2", nameof(Gemma2), file => Gemma2.Load(file)),
        ("phi3", nameof(Phi3), file => Phi3.Load(file)),
        ("bert", nameof(Bert), file => Bert.Load(file)),
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
    public static string DefinitionFor(ModelFile file) => Find(file).Definition;

    private static (string Architecture, string Definition, Func<ModelFile, IKilnModel> Load) Find(ModelFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        foreach (var entry in Loaders)
            if (entry.Architecture == file.Architecture) return entry;
        string found = file.Architecture.Length == 0 ? "no architecture" : $"\"{file.Architecture}\"";
        throw new ModelLoadException(file.Path, "general.architecture", null,
            $"{found} has no Kiln model definition; supported: {string.Join(", ", Architectures)}.");
    }
}
