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
        var data = new float[tensor.Data.Length];
        byte[]? stored = null;
        int storedRow = 0;
        if (tensor.Stored is { } source)
        {
            storedRow = (int)GgmlTypeTraits.Of(source.Type).ByteCount(rowLength);
            stored = new byte[source.Bytes.Length];
        }
        for (int head = 0; head < rows; head += headSize)
        {
            for (int i = 0; i < half; i++)
            {
                for (int s = 0; s < 2; s++)
                {
                    int from = head + s * half + i, to = head + 2 * i + s;
                    Array.Copy(tensor.Data, (long)from * rowLength, data, (long)to * rowLength, rowLength);
                    if (stored is not null) Array.Copy(tensor.Stored!.Bytes, (long)from * storedRow, stored, (long)to * storedRow, storedRow);
                }
            }
        }
        return new Tensor(data, (int[])tensor.Shape.Clone()) { Stored = stored is null ? null : new StoredTensor(tensor.Stored!.Type, stored) };
    }

    /// <summary>A matrix stored [in, out] (GPT-2's Conv1D) as [out, in], the layout of a Linear weight.</summary>
    public static Tensor Transpose(ModelFile file, string name, Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensor.Rank != 2)
            throw Error(file, name, $"has shape [{string.Join(", ", tensor.Shape)}]; only a matrix transposes.");
        int rows = tensor.Shape[0], cols = tensor.Shape[1];
        var data = new float[tensor.Data.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                data[(long)c * rows + r] = tensor.Data[(long)r * cols + c];

        // Element-wise formats transpose byte for byte; a block format cannot, and is packed from the float values.
        StoredTensor? stored = null;
        if (tensor.Stored is { } source && !GgmlTypeTraits.Of(source.Type).IsQuantized)
        {
            int size = GgmlTypeTraits.Of(source.Type).BlockBytes;
            var bytes = new byte[source.Bytes.Length];
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++)
                    Array.Copy(source.Bytes, ((long)r * cols + c) * size, bytes, ((long)c * rows + r) * size, size);
            stored = new StoredTensor(source.Type, bytes);
        }
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
