using Kiln.Loading;

namespace Kiln.Models;

/// <summary>
/// The model definitions this sample ships, by the architecture a file names (GGUF general.architecture): the one
/// place a tool looks a file's definition up. A new definition is one line in <see cref="Loaders"/>.
/// </summary>
public static class ModelCatalog
{
    private static readonly (string Architecture, Func<ModelFile, IKilnModel> Load)[] Loaders =
    [
        ("llama", file => Llama.Load(file)),
        ("gpt2", file => Gpt2.Load(file)),
        ("qwen2", file => Qwen2.Load(file)),
        ("qwen3", file => Qwen3.Load(file)),
        ("gemma2", file => Gemma2.Load(file)),
        ("phi3", file => Phi3.Load(file)),
        ("bert", file => Bert.Load(file)),
    ];

    /// <summary>The architectures <see cref="Load"/> accepts.</summary>
    public static IReadOnlyList<string> Architectures { get; } = Array.AsReadOnly(Array.ConvertAll(Loaders, entry => entry.Architecture));

    /// <summary>
    /// Binds <paramref name="file"/> to the definition of its architecture. Throws <see cref="ModelLoadException"/>
    /// on general.architecture when no definition here has that name.
    /// </summary>
    public static IKilnModel Load(ModelFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        foreach (var (architecture, load) in Loaders)
            if (architecture == file.Architecture) return load(file);
        string found = file.Architecture.Length == 0 ? "no architecture" : $"\"{file.Architecture}\"";
        throw new ModelLoadException(file.Path, "general.architecture", null,
            $"{found} has no Kiln model definition; supported: {string.Join(", ", Architectures)}.");
    }
}
