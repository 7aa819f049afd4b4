using Kiln.Loading;

namespace Kiln;

/// <summary>
/// A dense row-major tensor: the value type of eager (reference) execution. Activations in a [Forward] method are
/// [T, features] tensors of float32 <see cref="Data"/>. A weight bound from a model file stays in the file's stored
/// format (<see cref="Stored"/>, over the memory-mapped file): the eager ops read it a row at a time
/// (<see cref="ReadRow"/>), compiled plans pack it from its stored bytes, and no float32 copy of it exists unless
/// someone asks for <see cref="Data"/>.
/// </summary>
public sealed class Tensor
{
    private float[]? _data;

    public Tensor(float[] data, params int[] shape)
    {
        ArgumentNullException.ThrowIfNull(data);
        Shape = CheckShape(shape, data.Length, nameof(data));
        _data = data;
    }

    /// <summary>A tensor whose values are <paramref name="stored"/>'s, decoded when read.</summary>
    public Tensor(StoredTensor stored, params int[] shape)
    {
        ArgumentNullException.ThrowIfNull(stored);
        Shape = CheckShape(shape, stored.ElementCount, nameof(stored));
        if (stored.ElementCount > 0 && Shape[^1] % GgmlTypeTraits.Of(stored.Type).BlockElements != 0)
            throw new ArgumentException($"Rows of {Shape[^1]} values are not whole {stored.Type} blocks.", nameof(shape));
        Stored = stored;
    }

    public static Tensor Zeros(params int[] shape)
    {
        long count = 1;
        foreach (int d in shape) count *= d;
        return new Tensor(new float[count], shape);
    }

    /// <summary>
    /// The float32 values. For a tensor made from <see cref="Stored"/> bytes alone (a weight bound from a file) this
    /// decodes the whole tensor on first use and keeps it: the kernels and the eager ops never ask, they read rows.
    /// </summary>
    public float[] Data
    {
        get
        {
            if (_data is not null) return _data;
            var values = new float[Stored!.ElementCount];
            if (values.Length > 0) Stored.Decode(0, values.Length / Cols, Cols, values); // every row of every outer index
            return Interlocked.CompareExchange(ref _data, values, null) ?? values;
        }
    }

    /// <summary>True when the float32 values exist in memory (made from them, or <see cref="Data"/> was read).</summary>
    public bool HasFloatData => _data is not null;

    /// <summary>
    /// The tensor as the model file stored it; null for tensors made in memory. A compiled plan packs a layout equal to
    /// the stored format from these bytes, so its weights are bit-identical to the file's.
    /// </summary>
    public StoredTensor? Stored { get; init; }

    /// <summary>Dimensions, outermost first.</summary>
    public int[] Shape { get; }

    public int Rank => Shape.Length;

    /// <summary>Number of rows of a 2-D tensor (1 for a vector).</summary>
    public int Rows => Shape.Length == 1 ? 1 : Shape[0];

    /// <summary>Length of the innermost dimension.</summary>
    public int Cols => Shape[^1];

    /// <summary>Row <paramref name="row"/> of <see cref="Data"/> (which a stored-only tensor decodes whole: prefer <see cref="ReadRow"/>).</summary>
    public Span<float> Row(int row) => Data.AsSpan(row * Cols, Cols);

    /// <summary>Writes row <paramref name="row"/>'s float32 values into <paramref name="destination"/>: from memory, or decoded from the stored bytes.</summary>
    public void ReadRow(int row, Span<float> destination)
    {
        if ((uint)row >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(row), $"Row {row} is outside the {Rows} rows of {this}.");
        if (destination.Length != Cols) throw new ArgumentException($"A row holds {Cols} values, not {destination.Length}.", nameof(destination));
        if (_data is not null) _data.AsSpan(row * Cols, Cols).CopyTo(destination);
        else Stored!.Decode(row, 1, Cols, destination);
    }

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

    private static int[] CheckShape(int[] shape, long elements, string what)
    {
        ArgumentNullException.ThrowIfNull(shape);
        long count = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"Negative dimension in shape [{string.Join(", ", shape)}].", nameof(shape));
            count *= d;
        }
        if (count != elements)
            throw new ArgumentException($"Shape [{string.Join(", ", shape)}] holds {count} elements but the {what} has {elements}.", what);
        return shape;
    }
}

/// <summary>
/// A tensor's bytes in its stored format — GGML blocks, rows of the innermost dimension back to back — either over a
/// model file's memory mapping (which it keeps alive) or in an array of its own.
/// </summary>
public sealed unsafe class StoredTensor
{
    private readonly byte[]? _bytes;
    private readonly MappedFile? _file;
    private readonly byte* _start;
    private readonly long _offset;

    /// <summary>Bytes of <paramref name="type"/> held in memory (a whole number of blocks).</summary>
    public StoredTensor(GgmlType type, byte[] bytes)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        var traits = GgmlTypeTraits.Of(type);
        if (bytes.Length % traits.BlockBytes != 0)
            throw new ArgumentException($"{bytes.Length} bytes are not whole {type} blocks of {traits.BlockBytes}.", nameof(bytes));
        Type = type;
        _bytes = bytes;
        ByteCount = bytes.Length;
        ElementCount = bytes.Length / traits.BlockBytes * (long)traits.BlockElements;
    }

    /// <summary>Bytes [<paramref name="offset"/>, +<paramref name="byteCount"/>) of a mapped file, which the tensor keeps mapped.</summary>
    internal StoredTensor(GgmlType type, MappedFile file, long offset, long byteCount, long elements)
    {
        Type = type;
        _file = file;
        _start = file.Lend() + offset;
        _offset = offset;
        ByteCount = byteCount;
        ElementCount = elements;
    }

    public GgmlType Type { get; }

    public long ByteCount { get; }

    public long ElementCount { get; }

    /// <summary>All the bytes (a tensor of up to 2 GB; larger ones are read by rows, <see cref="RowBytes"/>).</summary>
    public ReadOnlySpan<byte> Bytes => ByteCount <= int.MaxValue
        ? Slice(0, (int)ByteCount)
        : throw new InvalidOperationException($"{ByteCount} bytes exceed one span; read the tensor by rows.");

    /// <summary>The bytes of rows [<paramref name="first"/>, +<paramref name="count"/>) of <paramref name="cols"/> values each.</summary>
    public ReadOnlySpan<byte> RowBytes(int first, int count, int cols)
    {
        long rowBytes = GgmlTypeTraits.Of(Type).ByteCount(cols);
        long start = first * rowBytes, length = count * rowBytes;
        if (first < 0 || count < 0 || start + length > ByteCount || length > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(count), $"Rows [{first}, {first}+{count}) of {cols} {Type} values do not lie within {ByteCount} bytes.");
        return Slice(start, (int)length);
    }

    /// <summary>Decodes rows [<paramref name="first"/>, +<paramref name="count"/>) of <paramref name="cols"/> values into float32.</summary>
    public void Decode(int first, int count, int cols, Span<float> destination)
    {
        for (int done = 0; done < count;)
        {
            // At most ~1 GB of stored bytes per call, so every span fits.
            int rows = (int)Math.Max(1, Math.Min(count - done, (1L << 30) / Math.Max(1, GgmlTypeTraits.Of(Type).ByteCount(cols))));
            Dequantize.ToFloat32(Type, RowBytes(first + done, rows, cols), destination.Slice(done * cols, rows * cols));
            done += rows;
        }
        GC.KeepAlive(this); // the mapping stays while its bytes are read
    }

    /// <summary>
    /// Lets the OS drop these bytes' resident pages (a compiled plan calls it once it has packed them): they read the
    /// same on the next touch. Nothing happens for bytes held in memory, or off Linux.
    /// </summary>
    public void ReleasePages() => _file?.ReleasePages(_offset, ByteCount);

    /// <summary>As <see cref="ReleasePages()"/>, for rows [<paramref name="first"/>, +<paramref name="count"/>) of <paramref name="cols"/> values.</summary>
    public void ReleasePages(int first, int count, int cols)
    {
        long rowBytes = GgmlTypeTraits.Of(Type).ByteCount(cols);
        _file?.ReleasePages(_offset + first * rowBytes, count * rowBytes);
    }

    private ReadOnlySpan<byte> Slice(long start, int length) =>
        _bytes is not null ? _bytes.AsSpan((int)start, length) : new ReadOnlySpan<byte>(_start + start, length);
}
