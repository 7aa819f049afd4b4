using System.Text.Json;

namespace Kiln.Loading;

/// <summary>
/// A Hugging Face config.json as model metadata. Keys stay as the config spells them ("hidden_size"); a nested
/// object's keys are dotted ("rope_scaling.rope_type"); a null is the same as an absent key. Two statements are
/// normalized to what they mean, so that the definition checks see only what changes the math:
/// <list type="bullet">
/// <item><c>"use_sliding_window": false</c> (Qwen) means the <c>sliding_window</c> and <c>max_window_layers</c> beside it
/// are not in force: both are dropped.</item>
/// <item><c>layer_types</c> (newer transformers) that are all "full_attention" state nothing; ones where every p-th layer
/// is full and the others slide are <c>sliding_window_pattern</c> = p (GGUF's key for it); any other pattern is kept,
/// and a definition that does not read it rejects the file.</item>
/// </list>
/// </summary>
internal static class HuggingFaceConfig
{
    /// <summary>
    /// A checkpoint's <c>architectures[0]</c> and the Kiln architecture that binds it: the general.architecture
    /// llama.cpp's converter writes for the same checkpoint. Mistral converts as "llama" (same names, same rope).
    /// </summary>
    public static readonly IReadOnlyList<(string HuggingFace, string Kiln)> Architectures =
    [
        ("LlamaForCausalLM", "llama"),
        ("MistralForCausalLM", "llama"),
        ("GPT2LMHeadModel", "gpt2"),
        ("Qwen2ForCausalLM", "qwen2"),
        ("Qwen3ForCausalLM", "qwen3"),
        ("Gemma2ForCausalLM", "gemma2"),
        ("Phi3ForCausalLM", "phi3"),
    ];

    /// <summary>A read config: its metadata, the architecture it names and Kiln's name for it.</summary>
    public sealed record Contents(Dictionary<string, MetadataValue> Metadata, string HuggingFaceArchitecture, string Architecture);

    /// <summary>Reads and checks <paramref name="path"/>; every problem is a <see cref="ModelLoadException"/> naming the key and its byte offset.</summary>
    public static Contents Read(string path)
    {
        byte[] bytes;
        using (var stream = MappedFile.OpenRead(path))
        {
            // Configs are a few kilobytes; the cap keeps a wrong file from being read whole.
            const int MaxConfigBytes = 16 << 20;
            if (stream.Length > MaxConfigBytes)
                throw new ModelLoadException(path, "config", 0, $"{stream.Length} bytes is far too long for a model config.");
            bytes = new byte[stream.Length];
            stream.ReadExactly(bytes);
        }
        var root = LocatedJson.Parse(path, bytes, 0, "config");
        if (root.Kind != JsonValueKind.Object)
            throw new ModelLoadException(path, "config", root.Offset, $"the config is {root}, not a JSON object.");

        var metadata = new Dictionary<string, MetadataValue>(StringComparer.Ordinal);
        Flatten(root, "", metadata);
        string huggingFace = ReadArchitecture(path, root, out string architecture);
        NormalizeSlidingWindow(metadata);
        NormalizeLayerTypes(metadata);
        return new Contents(metadata, huggingFace, architecture);
    }

    private static string ReadArchitecture(string path, LocatedJson root, out string architecture)
    {
        var names = root["architectures"];
        if (names is null || names.Kind != JsonValueKind.Array || names.Items.Count == 0 || names.Items[0].Kind != JsonValueKind.String)
            throw new ModelLoadException(path, "architectures", names?.Offset ?? root.Offset,
                $"expected a list of model class names such as [\"LlamaForCausalLM\"], found {names?.ToString() ?? "no such key"}.");
        var first = names.Items[0];
        foreach (var (huggingFace, kiln) in Architectures)
        {
            if (huggingFace != first.Text) continue;
            architecture = kiln;
            return huggingFace;
        }
        throw new ModelLoadException(path, "architectures", first.Offset,
            $"\"{first.Text}\" has no Kiln architecture; known: {string.Join(", ", Architectures.Select(a => a.HuggingFace))}.");
    }

    private static void Flatten(LocatedJson value, string prefix, Dictionary<string, MetadataValue> metadata)
    {
        foreach (var member in value.Members)
        {
            string key = prefix + member.Name;
            var item = member.Value;
            if (item.Kind == JsonValueKind.Object) Flatten(item, key + ".", metadata);
            else if (Scalar(item) is { } scalar) metadata[key] = new MetadataValue(scalar) { Offset = item.Offset };
            else if (item.Kind == JsonValueKind.Array) metadata[key] = new MetadataValue(ArrayOf(item)) { Offset = item.Offset };
        }
    }

    /// <summary>A string, bool, long (an integer) or double; null for null, objects and arrays.</summary>
    private static object? Scalar(LocatedJson value) => value.Kind switch
    {
        JsonValueKind.String => value.Text,
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        JsonValueKind.Number => value.Integer is long integer ? (object)integer : value.Number, // boxed as it is: a long stays a long
        _ => null,
    };

    /// <summary>An array typed by its elements (string[], long[], double[], bool[]), or object[] of their values and descriptions.</summary>
    private static Array ArrayOf(LocatedJson array)
    {
        var items = array.Items;
        if (items.All(i => i.Kind == JsonValueKind.String)) return items.Select(i => i.Text).ToArray();
        if (items.All(i => i.Kind == JsonValueKind.Number && i.Integer is not null)) return items.Select(i => i.Integer!.Value).ToArray();
        if (items.All(i => i.Kind == JsonValueKind.Number)) return items.Select(i => i.Number).ToArray();
        if (items.All(i => i.Kind is JsonValueKind.True or JsonValueKind.False)) return items.Select(i => i.Kind == JsonValueKind.True).ToArray();
        return items.Select(i => Scalar(i) ?? i.ToString()).ToArray();
    }

    private static void NormalizeSlidingWindow(Dictionary<string, MetadataValue> metadata)
    {
        if (!metadata.TryGetValue("use_sliding_window", out var use) || use.Value is not false) return;
        metadata.Remove("sliding_window");
        metadata.Remove("max_window_layers");
    }

    private static void NormalizeLayerTypes(Dictionary<string, MetadataValue> metadata)
    {
        const string Key = "layer_types", Full = "full_attention", Sliding = "sliding_attention";
        if (!metadata.TryGetValue(Key, out var value) || value.Value is not string[] types || types.Length == 0) return;
        if (Array.TrueForAll(types, t => t == Full))
        {
            metadata.Remove(Key);
            return;
        }
        int period = Array.IndexOf(types, Full) + 1;
        if (period < 2) return; // the first layer is full (or none is): not a sliding pattern
        for (int layer = 0; layer < types.Length; layer++)
            if (types[layer] != (layer % period < period - 1 ? Sliding : Full)) return;
        if (metadata.TryGetValue("sliding_window_pattern", out var stated) && !(stated.TryGetInt64(out long p) && p == period)) return;
        metadata.Remove(Key);
        metadata["sliding_window_pattern"] = new MetadataValue((long)period) { Offset = value.Offset };
    }
}
