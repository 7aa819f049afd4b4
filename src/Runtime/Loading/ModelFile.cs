namespace Kiln.Loading;

/// <summary>Which names a model file gives its tensors and metadata keys.</summary>
public enum ModelNaming
{
    /// <summary>llama.cpp's: "blk.0.attn_q.weight", "llama.embedding_length" (GGUF; llama.c checkpoints are given them).</summary>
    Gguf,

    /// <summary>Hugging Face's: "model.layers.0.self_attn.q_proj.weight", config.json's "hidden_size" (safetensors).</summary>
    HuggingFace,
}

/// <summary>
/// A model file opened for binding: metadata and named tensors, in one of two namings (<see cref="Naming"/>): GGUF's
/// keys and tensor names (llama2.c checkpoints synthesize them), or a Hugging Face checkpoint's. The generated binder
/// of every [Model] reads hyperparameters with TryGet* and weights with LoadTensor, by the names its definition
/// declares for that naming.
/// </summary>
public abstract class ModelFile : IDisposable
{
    protected ModelFile(string path) => Path = path;

    /// <summary>The file (or checkpoint directory) this was read from (named in every error).</summary>
    public string Path { get; }

    /// <summary>The names its tensors and metadata keys use.</summary>
    public virtual ModelNaming Naming => ModelNaming.Gguf;

    /// <summary>Kiln's architecture name (GGUF general.architecture), e.g. "llama".</summary>
    public abstract string Architecture { get; }

    public abstract IReadOnlyDictionary<string, TensorInfo> Tensors { get; }

    public abstract IReadOnlyDictionary<string, MetadataValue> Metadata { get; }

    /// <summary>The raw bytes of a tensor, in its stored format.</summary>
    public abstract ReadOnlySpan<byte> GetTensorBytes(TensorInfo tensor);

    /// <summary>
    /// The mapping <see cref="GetTensorBytes"/> reads <paramref name="tensor"/> from (its offset counted in it), which
    /// bound weights may keep; null when the bytes are not mapped (they are then copied).
    /// </summary>
    internal virtual MappedFile? MappingOf(TensorInfo tensor) => null;

    public bool TryGetInt(string key, out long value)
    {
        if (Metadata.TryGetValue(key, out var entry) && entry.TryGetInt64(out value)) return true;
        value = 0;
        return false;
    }

    public bool TryGetFloat(string key, out double value)
    {
        if (Metadata.TryGetValue(key, out var entry) && entry.TryGetDouble(out value)) return true;
        value = 0;
        return false;
    }

    public bool TryGetString(string key, out string value)
    {
        if (Metadata.TryGetValue(key, out var entry) && entry.TryGetString(out value)) return true;
        value = "";
        return false;
    }

    /// <summary>
    /// A tensor, row-major, with the file's dimensions reversed (GGUF ne = [in, out] becomes shape [out, in]). A vector
    /// (norm weights, biases) is decoded to float32 at once; a matrix stays in its stored format over the file's
    /// memory mapping (<see cref="Tensor.Stored"/>, which keeps the mapping alive after the file is disposed): read by
    /// rows when used, packed from its bytes by compiled plans, never copied to float32 whole. Throws
    /// <see cref="ModelLoadException"/> when absent or stored in a format without a decoder.
    /// </summary>
    public Tensor LoadTensor(string name)
    {
        if (!Tensors.TryGetValue(name, out var info))
            throw new ModelLoadException(Path, $"tensor '{name}'", null, "not found in the file.");
        if (!Dequantize.IsSupported(info.Type))
            throw new ModelLoadException(Path, $"tensor '{name}' type", info.Offset, $"{info.Type} tensors cannot be dequantized yet.");
        long elements = info.ElementCount;

        var shape = new int[info.Dimensions.Length];
        for (int i = 0; i < shape.Length; i++)
        {
            long extent = info.Dimensions[shape.Length - 1 - i];
            if (extent is < 0 or > int.MaxValue) // possible beside a zero extent, which keeps the element count small
                throw new ModelLoadException(Path, $"tensor '{name}'", info.Offset, $"dimension {extent} does not fit a tensor shape.");
            shape[i] = (int)extent;
        }
        if (shape.Length <= 1)
        {
            if (elements > Array.MaxLength)
                throw new ModelLoadException(Path, $"tensor '{name}'", info.Offset, $"{elements} elements do not fit in one float32 array.");
            var data = new float[elements];
            Dequantize.ToFloat32(info.Type, GetTensorBytes(info), data);
            return new Tensor(data, shape);
        }
        long storedBytes = GgmlTypeTraits.Of(info.Type).ByteCount(elements);
        var stored = MappingOf(info) is { } mapping
            ? new StoredTensor(info.Type, mapping, info.Offset, storedBytes, elements)
            : new StoredTensor(info.Type, GetTensorBytes(info)[..checked((int)storedBytes)].ToArray());
        return new Tensor(stored, shape);
    }

    /// <summary>
    /// Opens a model by its content: an .onnx file is an ONNX export's weights (<see cref="OnnxModel"/>); a directory, a .json file or a file that begins like a safetensors header is a
    /// Hugging Face checkpoint (<see cref="SafetensorsModel"/>); GGUF when it starts with the "GGUF" magic; otherwise a
    /// llama2.c checkpoint (whose tokenizer is <paramref name="tokenizerPath"/>, or found beside it). A missing or
    /// malformed file is a <see cref="ModelLoadException"/> naming the path.
    /// </summary>
    public static ModelFile Open(string path, string? tokenizerPath = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Directory.Exists(path) || path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) return new SafetensorsModel(path);
        if (path.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase)) return new OnnxModel(path);
        Span<byte> start = stackalloc byte[SafetensorsModel.SniffBytes];
        int read;
        using (var stream = MappedFile.OpenRead(path))
            read = stream.ReadAtLeast(start, start.Length, throwOnEndOfStream: false);
        if (read >= 4 && start[..4].SequenceEqual(GgufFile.Magic)) return new GgufFile(path);
        if (SafetensorsModel.LooksLikeSafetensors(start[..read]) || path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            return new SafetensorsModel(path);
        return new Llama2cFile(path, tokenizerPath);
    }

    public virtual void Dispose() => GC.SuppressFinalize(this);
}
