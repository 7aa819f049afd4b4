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

    /// <summary>Dimensions, outermost first.</summary>
    public int[] Shape { get; }

    public int Rank => Shape.Length;

    /// <summary>Number of rows of a 2-D tensor (1 for a vector).</summary>
    public int Rows => Shape.Length == 1 ? 1 : Shape[0];

    /// <summary>Length of the innermost dimension.</summary>
    public int Cols => Shape[^1];

    public Span<float> Row(int row) => Data.AsSpan(row * Cols, Cols);

    public float this[int row, int col] => Data[row * Cols + col];

    public static Tensor operator +(Tensor a, Tensor b) => Ops.Add(a, b);

    public static Tensor operator *(Tensor a, Tensor b) => Ops.Mul(a, b);

    public override string ToString() => $"Tensor[{string.Join(", ", Shape)}]";
}
