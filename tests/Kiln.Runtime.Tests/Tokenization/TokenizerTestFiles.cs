using Kiln.Loading;
using Kiln.Tokenization;

namespace Kiln.Runtime.Tests.Tokenization;

/// <summary>The shipped model files the tokenizer tests read, and what is known about them.</summary>
internal static class TokenizerTestFiles
{
    public static string ModelPath(string name) => Path.Combine(AppContext.BaseDirectory, "models", name);

    /// <summary>"Once upon a time" as llama2.c encodes it with tok512 (stories260K.reference.txt).</summary>
    public static readonly int[] ReferencePromptIds = [1, 403, 407, 261, 378];

    /// <summary>The 64 greedy ids stories260K generates after the prompt (stories260K.reference.txt).</summary>
    public static readonly int[] ReferenceGeneratedIds =
    [
        432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322,
        265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267,
        337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13, 438, 310, 439, 419, 357, 336,
    ];

    /// <summary>The text of prompt and continuation, as the reference file spells it out.</summary>
    public static string ReferenceText()
    {
        string file = File.ReadAllText(ModelPath("stories260K.reference.txt"));
        const string header = "text (decoded like run.c: leading space stripped after BOS, <0xNN> -> byte):\n";
        int start = file.IndexOf(header, StringComparison.Ordinal);
        Assert.True(start >= 0, "the reference file has no text section");
        start += header.Length;
        int end = file.IndexOf("\n--- logits", start, StringComparison.Ordinal);
        return file[start..end];
    }

    public static KilnTokenizer FromModelFile(string name, string? tokenizerName = null)
    {
        using var file = ModelFile.Open(ModelPath(name), tokenizerName is null ? null : ModelPath(tokenizerName));
        return KilnTokenizer.FromModelFile(file);
    }

    /// <summary>The tok512 vocabulary as the llama2.c model file presents it, read from tok512.bin.</summary>
    public static KilnTokenizer Tok512FromLlama2cFile() => FromModelFile("stories260K.bin", "tok512.bin");

    /// <summary>The tokenizer of the GGUF file <paramref name="writer"/> writes (to a temporary file, deleted after).</summary>
    public static KilnTokenizer FromGguf(GgufWriter writer)
    {
        string path = Path.Combine(Path.GetTempPath(), $"kiln-tokenizer-{Guid.NewGuid():N}.gguf");
        try
        {
            writer.Write(path);
            using var file = ModelFile.Open(path);
            return KilnTokenizer.FromModelFile(file);
        }
        finally
        {
            File.Delete(path);
        }
    }
}

/// <summary>A model file that is only metadata, for tokenizer tests that need no tensors and no file on disk.</summary>
internal sealed class MetadataOnlyFile(Dictionary<string, object> metadata) : ModelFile(FakePath)
{
    public const string FakePath = "fake.gguf";

    public override string Architecture => "llama";

    public override IReadOnlyDictionary<string, TensorInfo> Tensors { get; } = new Dictionary<string, TensorInfo>();

    public override IReadOnlyDictionary<string, MetadataValue> Metadata { get; } =
        metadata.ToDictionary(entry => entry.Key, entry => new MetadataValue(entry.Value));

    public override ReadOnlySpan<byte> GetTensorBytes(TensorInfo tensor) => throw new NotSupportedException();
}
