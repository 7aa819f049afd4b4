namespace Kiln;

/// <summary>
/// A dense row-major float32 tensor: the value type of eager (reference) execution. Weights bound from a model
/// file are dequantized into one; activations in a [Forward] method are [T, features] tensors.
/// </summary>
public sealed class Tensor
{
    public Tensor(float[] data, params int[] shape)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(shape);
        long count = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"Negative dimension in shape [{string.Join(", ", shape)}].", nameof(shape));
            count *= d;
        }
        if (count != data.Length)
            throw new ArgumentException($"Shape [{string.Join(", ", shape)}] holds {count} elements but the data has {data.Length}.", nameof(data));
        Data = data;
        Shape = shape;
    }

    public static Tensor Zeros(params int[] shape)
    {
        long count = 1;
        foreach (int d in shape) count *= d;
        return new Tensor(new float[count], shape);
    }

    public float[] Data { get; }

    /// <summary>
    /// The tensor as the model file stored it, when that was not float32 (a quantized or 16-bit format); null for
    /// float32 tensors and tensors made in memory. <see cref="Data"/> always holds the float32 values (the eager
    /// reference computes with those); a compiled plan packs a layout equal to the stored format from these bytes,
    /// so its weights are bit-identical to the file's.
    /// </summary>
    public StoredTensor? Stored { get; init; }

    /// <summary>Dimensions, outermost first.</summary>
    public int[] Shape { get; }

    public int Rank => Shape.Length;

    /// <summary>Number of rows of a 2-D tensor (1 for a vector).</summary>
    public int Rows => Shape.Length == 1 ? 1 : Shape[0];

    /// <summary>Length of the innermost dimension.</summary>
    public int Cols => Shape[^1];

    public Span<float> Row(int row) => Data.AsSpan(row * Cols, Cols);

    public float this[int row, int col] => Data[row * Cols + col];

    // Elementwise arithmetic: the same ops as Ops.Add/Sub/Mul/Div (a row vector broadcasts over the rows).
    public static Tensor operator +(Tensor a, Tensor b) => Ops.Add(a, b);

    public static Tensor operator -(Tensor a, Tensor b) => Ops.Sub(a, b);

    public static Tensor operator *(Tensor a, Tensor b) => Ops.Mul(a, b);

    public static Tensor operator /(Tensor a, Tensor b) => Ops.Div(a, b);

    public static Tensor operator +(Tensor a, float b) => Ops.Add(a, b);

    public static Tensor operator +(float a, Tensor b) => Ops.Add(b, a);

    public static Tensor operator -(Tensor a, float b) => Ops.Sub(a, b);

    public static Tensor operator -(float a, Tensor b) => Ops.Sub(a, b);

    public static Tensor operator *(Tensor a, float b) => Ops.Mul(a, b);

    public static Tensor operator *(float a, Tensor b) => Ops.Mul(b, a);

    public static Tensor operator /(Tensor a, float b) => Ops.Div(a, b);

    public static Tensor operator /(float a, Tensor b) => Ops.Div(a, b);

    public static Tensor operator -(Tensor a) => Ops.Neg(a);

    public override string ToString() => $"Tensor[{string.Join(", ", Shape)}]";
}

/// <summary>A tensor's bytes in its stored format: GGML blocks, rows of the innermost dimension back to back.</summary>
public sealed class StoredTensor
{
    public StoredTensor(Kiln.Loading.GgmlType type, byte[] bytes)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        Type = type;
        Bytes = bytes;
    }

    public Kiln.Loading.GgmlType Type { get; }

    /// <summary>A copy of the stored bytes (the file may be closed once the model is bound).</summary>
    public byte[] Bytes { get; }
}
