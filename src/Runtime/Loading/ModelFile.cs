namespace Kiln.Loading;

/// <summary>
/// A model file opened for binding: metadata (GGUF keys; other formats synthesize the same keys) and named
/// tensors. The generated binder of every [Model] reads hyperparameters with TryGet* and weights with LoadTensor.
/// </summary>
public abstract class ModelFile : IDisposable
{
    protected ModelFile(string path) => Path = path;

    /// <summary>The file this was read from (named in every error).</summary>
    public string Path { get; }

    /// <summary>The architecture name (GGUF general.architecture), e.g. "llama".</summary>
    public abstract string Architecture { get; }

    public abstract IReadOnlyDictionary<string, TensorInfo> Tensors { get; }

    public abstract IReadOnlyDictionary<string, MetadataValue> Metadata { get; }

    /// <summary>The raw bytes of a tensor, in its stored format.</summary>
    public abstract ReadOnlySpan<byte> GetTensorBytes(TensorInfo tensor);

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
    /// A tensor dequantized to float32, row-major, with the file's dimensions reversed (GGUF ne = [in, out]
    /// becomes shape [out, in]). Throws <see cref="ModelLoadException"/> when absent.
    /// </summary>
    public Tensor LoadTensor(string name)
    {
        if (!Tensors.TryGetValue(name, out var info))
            throw new ModelLoadException(Path, $"tensor '{name}'", null, "not found in the file.");
        var shape = new int[info.Dimensions.Length];
        for (int i = 0; i < shape.Length; i++) shape[i] = checked((int)info.Dimensions[shape.Length - 1 - i]);
        var data = new float[info.ElementCount];
        Dequantize.ToFloat32(info.Type, GetTensorBytes(info), data);
        return new Tensor(data, shape);
    }

    public virtual void Dispose() => GC.SuppressFinalize(this);
}
