namespace Kiln.Kernels.Quantized;

/// <summary>
/// One row of the traits table (ggml's <c>type_traits</c>): how a weight format lays out a row of K elements in
/// blocks, and how a row goes to and from float32. Implemented by one struct per format (<see cref="Q8_0"/>,
/// <see cref="Q4_0"/>, <see cref="BF16"/>, <see cref="F32"/>) so generic drivers resolve every call at JIT time.
/// </summary>
public interface IWeightFormat
{
    /// <summary>Elements per block (32 for the quantized formats, 1 for the plain ones).</summary>
    static abstract int BlockElements { get; }

    /// <summary>Bytes per block.</summary>
    static abstract int BlockBytes { get; }

    /// <summary>Bytes of a row of <paramref name="k"/> elements; throws <see cref="ArgumentException"/> when K is not a whole number of blocks.</summary>
    static abstract int RowBytes(int k);

    /// <summary>Encodes <paramref name="source"/> (K elements) into exactly <c>RowBytes(K)</c> bytes of <paramref name="destination"/>.</summary>
    static abstract void QuantizeRow(ReadOnlySpan<float> source, Span<byte> destination);

    /// <summary>Decodes <paramref name="source"/> (<c>RowBytes(K)</c> bytes) into K floats.</summary>
    static abstract void DequantizeRow(ReadOnlySpan<byte> source, Span<float> destination);
}

/// <summary>A block-quantized format whose rows dot against activations quantized once to <see cref="Q8Row"/> blocks (ggml's <c>vec_dot_type = Q8_0</c>).</summary>
public interface IQuantizedFormat : IWeightFormat
{
    /// <summary>Σ row[i]·x[i] over the K = <c>activations.K</c> elements, on <paramref name="path"/>.</summary>
    static abstract float Dot(ReadOnlySpan<byte> row, Q8Row activations, KernelPath path);
}

/// <summary>A plain floating-point format whose rows dot against float32 activations directly.</summary>
public interface IFloatFormat : IWeightFormat
{
    /// <summary>Σ row[i]·x[i] over the K = <c>activations.Length</c> elements, on <paramref name="path"/>.</summary>
    static abstract float Dot(ReadOnlySpan<byte> row, ReadOnlySpan<float> activations, KernelPath path);
}
