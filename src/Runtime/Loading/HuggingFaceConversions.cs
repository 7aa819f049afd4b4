namespace Kiln.Loading;

/// <summary>
/// The conversions a definition declares with <c>[Weight(..., FromHuggingFace = HuggingFaceConversion.X)]</c>: the
/// generated Load applies them to a weight read from a Hugging Face checkpoint, so it holds what llama.cpp's converter
/// writes into the GGUF of the same checkpoint and the forward computes with one layout whatever the file. Each keeps
/// the stored copy (<see cref="Tensor.Stored"/>) in step where it can, so a compiled plan still packs the checkpoint's
/// own 16-bit values. A weight the conversion does not fit is a <see cref="ModelLoadException"/> naming it.
/// </summary>
public static class HuggingFaceConversions
{
    /// <summary>
    /// Interleaves each head's rotary halves: row <c>s·h/2 + i</c> of a head of <paramref name="headSize"/> rows becomes
    /// row <c>2i + s</c> (llama.cpp's permute of Llama's q and k), so a rope on adjacent pairs turns what Hugging Face's
    /// rotate_half turns. A vector (a bias) is permuted the same way.
    /// </summary>
    public static Tensor RopeHalvesToPairs(ModelFile file, string name, Tensor tensor, int headSize)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensor.Rank is not (1 or 2))
            throw Error(file, name, $"has shape [{string.Join(", ", tensor.Shape)}]; only a matrix or a vector has rows to reorder per head.");
        int rows = tensor.Shape[0];
        if (headSize <= 0 || headSize % 2 != 0 || rows % headSize != 0)
            throw Error(file, name, $"its {rows} rows do not split into heads of {headSize} rows with two rotary halves each.");

        int rowLength = tensor.Rank == 1 ? 1 : tensor.Cols;
        int half = headSize / 2;
        StoredTensor? stored = null;
        if (tensor.Stored is { } source)
        {
            // Whole rows move, so the stored bytes reorder as they are, whatever the format.
            int storedRow = checked((int)GgmlTypeTraits.Of(source.Type).ByteCount(rowLength));
            var bytes = new byte[source.ByteCount];
            var from = source.Bytes;
            for (int head = 0; head < rows; head += headSize)
                for (int i = 0; i < half; i++)
                    for (int s = 0; s < 2; s++)
                        from.Slice((head + s * half + i) * storedRow, storedRow).CopyTo(bytes.AsSpan((head + 2 * i + s) * storedRow, storedRow));
            stored = new StoredTensor(source.Type, bytes);
            if (!tensor.HasFloatData) return new Tensor(stored, (int[])tensor.Shape.Clone()); // no float32 copy made for it
        }
        var data = new float[tensor.Data.Length];
        for (int head = 0; head < rows; head += headSize)
            for (int i = 0; i < half; i++)
                for (int s = 0; s < 2; s++)
                    Array.Copy(tensor.Data, (long)(head + s * half + i) * rowLength, data, (long)(head + 2 * i + s) * rowLength, rowLength);
        return new Tensor(data, (int[])tensor.Shape.Clone()) { Stored = stored };
    }

    /// <summary>A matrix stored [in, out] (GPT-2's Conv1D) as [out, in], the layout of a Linear weight.</summary>
    public static Tensor Transpose(ModelFile file, string name, Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensor.Rank != 2)
            throw Error(file, name, $"has shape [{string.Join(", ", tensor.Shape)}]; only a matrix transposes.");
        int rows = tensor.Shape[0], cols = tensor.Shape[1];

        // Element-wise formats transpose byte for byte; a block format cannot, and is packed from the float values.
        StoredTensor? stored = null;
        if (tensor.Stored is { } source && !GgmlTypeTraits.Of(source.Type).IsQuantized)
        {
            int size = GgmlTypeTraits.Of(source.Type).BlockBytes;
            var bytes = new byte[source.ByteCount];
            var from = source.Bytes;
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++)
                    from.Slice((r * cols + c) * size, size).CopyTo(bytes.AsSpan((c * rows + r) * size, size));
            stored = new StoredTensor(source.Type, bytes);
            if (!tensor.HasFloatData) return new Tensor(stored, cols, rows); // no float32 copy made for it
        }
        var data = new float[tensor.Data.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                data[(long)c * rows + r] = tensor.Data[(long)r * cols + c];
        return new Tensor(data, cols, rows) { Stored = stored };
    }

    /// <summary>
    /// A norm weight stored as its offset from one (Gemma's RMSNorm scales by 1 + w) as the scale itself, added in
    /// float32 as transformers computes it (and llama.cpp's converter, after widening BF16 to float32, writes it). The
    /// sum has no stored form; plans use the float values.
    /// </summary>
    public static Tensor AddOne(ModelFile file, string name, Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(tensor);
        var data = new float[tensor.Data.Length];
        for (int i = 0; i < data.Length; i++) data[i] = tensor.Data[i] + 1f;
        return new Tensor(data, (int[])tensor.Shape.Clone());
    }

    private static ModelLoadException Error(ModelFile file, string name, string problem) =>
        new(file.Path, $"tensor '{name}'", file.Tensors.TryGetValue(name, out var info) ? info.Offset : null, problem);
}
