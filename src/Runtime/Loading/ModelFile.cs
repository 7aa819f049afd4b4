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

    /// <summary>The mapping <see cref="GetTensorBytes"/> reads from, which bound weights may keep; null when the bytes are not mapped (they are then copied).</summary>
    internal virtual MappedFile? Mapping => null;

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
        var stored = Mapping is { } mapping
            ? new StoredTensor(info.Type, mapping, info.Offset, storedBytes, elements)
            : new StoredTensor(info.Type, GetTensorBytes(info)[..checked((int)storedBytes)].ToArray());
        return new Tensor(stored, shape);
    }

    /// <summary>
    /// Opens a model file by its content: GGUF when it starts with the "GGUF" magic, otherwise a llama2.c
    /// checkpoint (whose tokenizer is <paramref name="tokenizerPath"/>, or found beside it). A missing or malformed
    /// file is a <see cref="ModelLoadException"/> naming the path.
    /// </summary>
    public static ModelFile Open(string path, string? tokenizerPath = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        Span<byte> magic = stackalloc byte[4];
        int read;
        using (var stream = MappedFile.OpenRead(path))
            read = stream.ReadAtLeast(magic, magic.Length, throwOnEndOfStream: false);
        return read == magic.Length && magic.SequenceEqual(GgufFile.Magic)
            ? new GgufFile(path)
            : new Llama2cFile(path, tokenizerPath);
    }

    public virtual void Dispose() => GC.SuppressFinalize(this);
}
