using Kiln.Loading;
using Kiln.Tokenization;

namespace Kiln.Fuzz;

/// <summary>
/// The parsers fuzzed, one entry each. The runtime's one protobuf reader is ONNX's (ProtobufReader under OnnxModel); a
/// SentencePiece vocabulary is not read from a tokenizer.model but comes from a GGUF's (or llama2.c's) arrays and is
/// written as a ModelProto in memory for Microsoft.ML.Tokenizers, so the tokenizer's target is the GGUF tokenizer
/// metadata that builds it.
/// </summary>
public static class FuzzTargets
{
    public static readonly FuzzTarget[] All =
    [
        new("gguf", "model.gguf", path => UseAll(new GgufFile(path)), Seeds.Gguf),
        new("llama2c", "model.bin", path => UseAll(new Llama2cFile(path)), Seeds.Llama2c),
        new("safetensors", SafetensorsModel.SingleFileName, path => UseAll(new SafetensorsModel(path)), Seeds.Safetensors,
            new Dictionary<string, byte[]> { [SafetensorsModel.ConfigFileName] = Seeds.LlamaConfig }),
        new("config", SafetensorsModel.ConfigFileName, path => UseAll(new SafetensorsModel(path)), Seeds.Configs,
            new Dictionary<string, byte[]> { [SafetensorsModel.SingleFileName] = Seeds.SmallSafetensors }),
        new("tokenizer", "tokenizer.gguf", UseTokenizer, Seeds.Tokenizers),
        new("onnx", "model.onnx", path => UseAll(new OnnxModel(path)), Seeds.Onnx),
    ];

    public static FuzzTarget Find(string name) =>
        Array.Find(All, t => t.Name == name)
        ?? throw new ArgumentException($"No fuzz target '{name}'; there are {string.Join(", ", All.Select(t => t.Name))}.", nameof(name));

    /// <summary>Reads everything a loader offers: metadata, every tensor's bytes, and every tensor Kiln can decode, decoded.</summary>
    private static void UseAll(ModelFile file)
    {
        using (file)
        {
            _ = file.Architecture;
            foreach (var (_, value) in file.Metadata) _ = value.ToString();
            foreach (var (name, tensor) in file.Tensors)
            {
                _ = file.GetTensorBytes(tensor);
                if (Dequantize.IsSupported(tensor.Type)) file.LoadTensor(name);
            }
        }
    }

    /// <summary>Builds the file's tokenizer and runs text through it both ways.</summary>
    private static void UseTokenizer(string path)
    {
        using var file = new GgufFile(path);
        KilnTokenizer tokenizer;
        try
        {
            tokenizer = KilnTokenizer.FromModelFile(file);
        }
        catch (ModelLoadException absent) when (absent.Offset is null && !file.Metadata.ContainsKey(absent.Field))
        {
            return; // a key the file lacks has no byte to point at; the rejection names the key
        }
        foreach (bool parseSpecial in (ReadOnlySpan<bool>)[false, true])
        {
            int[] ids = tokenizer.Encode("Once upon a time, <s> héllo\n\t  wörld 123 <|im_end|> 🙂", addBos: true, parseSpecial);
            _ = tokenizer.Decode(ids);
        }
        var everyToken = new int[tokenizer.VocabSize];
        for (int id = 0; id < everyToken.Length; id++) everyToken[id] = id;
        _ = tokenizer.Decode(everyToken);
    }
}
