using System.Runtime.InteropServices;
using System.Text;

namespace Kiln.Loading;

/// <summary>
/// Builds a GGUF v3 file: metadata of every GGUF value type and tensors quantized from float32 (or given already
/// encoded). Output follows what llama.cpp expects: little-endian, tensor names under 64 bytes, rows of whole
/// blocks, every tensor's data aligned (and padded) to <see cref="Alignment"/>.
/// </summary>
public sealed class GgufWriter
{
    /// <summary>GGML's limit on a tensor name, counting its terminating NUL.</summary>
    public const int MaxTensorNameBytes = 64;

    private const uint Version = 3;

    private readonly List<KeyValuePair<string, object>> _metadata = [];
    private readonly HashSet<string> _metadataKeys = new(StringComparer.Ordinal);
    private readonly List<PendingTensor> _tensors = [];
    private readonly HashSet<string> _tensorNames = new(StringComparer.Ordinal);

    private sealed record PendingTensor(string Name, GgmlType Type, long[] Dimensions, byte[] Data);

    /// <param name="alignment">Tensor data alignment, a power of two; other than 32 it is recorded as <c>general.alignment</c>.</param>
    public GgufWriter(int alignment = GgufFile.DefaultAlignment)
    {
        if (alignment <= 0 || !int.IsPow2(alignment))
            throw new ArgumentOutOfRangeException(nameof(alignment), alignment, "Alignment must be a positive power of two.");
        Alignment = alignment;
        if (alignment != GgufFile.DefaultAlignment) AddMetadata("general.alignment", (uint)alignment);
    }

    public int Alignment { get; }

    /// <summary>
    /// Adds a metadata entry. <paramref name="value"/> is a byte, sbyte, ushort, short, uint, int, ulong, long,
    /// float, double, bool or string (stored as that GGUF type), an array of one of them, or an object[] whose
    /// elements are arrays (a nested array) — the same shapes <see cref="GgufFile"/> reads back.
    /// </summary>
    public GgufWriter AddMetadata(string key, object value)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        ArgumentNullException.ThrowIfNull(value);
        if (value is MetadataValue wrapped) value = wrapped.Value;
        if (key == "general.alignment" && (value is not uint alignment || alignment != Alignment))
            throw new ArgumentException("general.alignment is set through the constructor's alignment.", nameof(key));
        CheckValue(value, nameof(value), depth: 0);
        if (!_metadataKeys.Add(key)) throw new ArgumentException($"Metadata key '{key}' was already added.", nameof(key));
        _metadata.Add(new(key, value));
        return this;
    }

    /// <summary>
    /// Adds a tensor stored as <paramref name="type"/>, encoded from <paramref name="values"/>.
    /// <paramref name="dimensions"/> are in GGML order: ne[0], the row length, first.
    /// </summary>
    public GgufWriter AddTensor(string name, GgmlType type, ReadOnlySpan<float> values, params ReadOnlySpan<long> dimensions)
    {
        if (!Quantize.IsSupported(type)) throw new ArgumentException($"Cannot encode {type} tensors.", nameof(type));
        var traits = CheckTensor(name, type, dimensions);
        long elements = ElementCount(dimensions);
        if (elements != values.Length)
            throw new ArgumentException($"Tensor '{name}': dimensions [{string.Join(", ", dimensions.ToArray())}] hold {elements} values but {values.Length} were given.", nameof(values));
        var data = new byte[traits.ByteCount(elements)];
        Quantize.FromFloat32(type, values, data);
        return Add(new PendingTensor(name, type, dimensions.ToArray(), data));
    }

    /// <summary>Adds a row-major tensor (shape outermost first, as <see cref="ModelFile.LoadTensor"/> returns it) stored as <paramref name="type"/>.</summary>
    public GgufWriter AddTensor(string name, Tensor tensor, GgmlType type = GgmlType.F32)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var dimensions = new long[tensor.Rank];
        for (int i = 0; i < dimensions.Length; i++) dimensions[i] = tensor.Shape[tensor.Rank - 1 - i];
        return AddTensor(name, type, tensor.Data, dimensions);
    }

    /// <summary>Adds a tensor whose bytes are already in <paramref name="type"/>'s stored format (any known GGML type).</summary>
    public GgufWriter AddEncodedTensor(string name, GgmlType type, ReadOnlySpan<byte> data, params ReadOnlySpan<long> dimensions)
    {
        var traits = CheckTensor(name, type, dimensions);
        long bytes = traits.ByteCount(ElementCount(dimensions));
        if (bytes != data.Length)
            throw new ArgumentException($"Tensor '{name}': {type} [{string.Join(", ", dimensions.ToArray())}] takes {bytes} bytes but {data.Length} were given.", nameof(data));
        return Add(new PendingTensor(name, type, dimensions.ToArray(), data.ToArray()));
    }

    /// <summary>Writes the file to <paramref name="path"/>, replacing any file there.</summary>
    public void Write(string path)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, bufferSize: 1 << 16);
        Write(stream);
    }

    /// <summary>Writes the file to <paramref name="stream"/> (which need not be seekable).</summary>
    public void Write(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        // The header (metadata and tensor directory) is small: build it in memory so its length, and so every
        // tensor's aligned offset, is known before anything reaches the stream.
        var header = new MemoryStream();
        using (var writer = new BinaryWriter(header, Encoding.UTF8, leaveOpen: true))
        {
            writer.Write(GgufFile.Magic);
            writer.Write(Version);
            writer.Write((ulong)_tensors.Count);
            writer.Write((ulong)_metadata.Count);
            foreach (var (key, value) in _metadata)
            {
                WriteString(writer, key);
                writer.Write((uint)TypeOf(value));
                WriteValue(writer, value);
            }

            long offset = 0;
            foreach (var tensor in _tensors)
            {
                WriteString(writer, tensor.Name);
                writer.Write((uint)tensor.Dimensions.Length);
                foreach (long extent in tensor.Dimensions) writer.Write((ulong)extent);
                writer.Write((uint)tensor.Type);
                writer.Write((ulong)offset);
                offset += AlignUp(tensor.Data.Length);
            }
        }

        header.WriteTo(stream);
        WritePadding(stream, header.Length);
        foreach (var tensor in _tensors)
        {
            stream.Write(tensor.Data);
            WritePadding(stream, tensor.Data.Length);
        }
        stream.Flush();
    }

    private long AlignUp(long length) => (length + Alignment - 1) / Alignment * Alignment;

    private void WritePadding(Stream stream, long length)
    {
        Span<byte> zeros = stackalloc byte[256];
        zeros.Clear();
        for (long pad = AlignUp(length) - length; pad > 0; pad -= zeros.Length)
            stream.Write(zeros[..(int)Math.Min(pad, zeros.Length)]);
    }

    private GgmlTypeTraits CheckTensor(string name, GgmlType type, ReadOnlySpan<long> dimensions)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (Encoding.UTF8.GetByteCount(name) >= MaxTensorNameBytes)
            throw new ArgumentException($"Tensor name '{name}' is {MaxTensorNameBytes} bytes or longer; GGML cannot hold it.", nameof(name));
        if (_tensorNames.Contains(name)) throw new ArgumentException($"Tensor '{name}' was already added.", nameof(name));
        if (!GgmlTypeTraits.TryGet(type, out var traits)) throw new ArgumentException($"Unknown GGML type {type}.", nameof(type));
        if (dimensions.Length is 0 or > GgufFile.MaxDimensions)
            throw new ArgumentException($"Tensor '{name}' has {dimensions.Length} dimensions; GGUF allows 1 to {GgufFile.MaxDimensions}.", nameof(dimensions));
        foreach (long extent in dimensions)
            if (extent < 0) throw new ArgumentException($"Tensor '{name}' has a negative dimension.", nameof(dimensions));
        if (dimensions[0] % traits.BlockElements != 0)
            throw new ArgumentException($"Tensor '{name}': rows of {dimensions[0]} values are not whole {type} blocks of {traits.BlockElements}.", nameof(dimensions));
        return traits;
    }

    private GgufWriter Add(PendingTensor tensor)
    {
        _tensorNames.Add(tensor.Name);
        _tensors.Add(tensor);
        return this;
    }

    private static long ElementCount(ReadOnlySpan<long> dimensions)
    {
        long count = 1;
        foreach (long extent in dimensions) count = checked(count * extent);
        return count;
    }

    private static GgufValueType TypeOf(object value) => value switch
    {
        byte => GgufValueType.UInt8,
        sbyte => GgufValueType.Int8,
        ushort => GgufValueType.UInt16,
        short => GgufValueType.Int16,
        uint => GgufValueType.UInt32,
        int => GgufValueType.Int32,
        float => GgufValueType.Float32,
        bool => GgufValueType.Bool,
        string => GgufValueType.String,
        ulong => GgufValueType.UInt64,
        long => GgufValueType.Int64,
        double => GgufValueType.Float64,
        Array => GgufValueType.Array,
        _ => throw new ArgumentException($"{value.GetType().Name} is not a GGUF metadata type."),
    };

    // Matched on the exact type: the runtime lets an sbyte[] pass for a byte[], an int[] for a uint[], and so on.
    private static GgufValueType ElementTypeOf(Array array)
    {
        Type type = array.GetType();
        if (type == typeof(byte[])) return GgufValueType.UInt8;
        if (type == typeof(sbyte[])) return GgufValueType.Int8;
        if (type == typeof(ushort[])) return GgufValueType.UInt16;
        if (type == typeof(short[])) return GgufValueType.Int16;
        if (type == typeof(uint[])) return GgufValueType.UInt32;
        if (type == typeof(int[])) return GgufValueType.Int32;
        if (type == typeof(float[])) return GgufValueType.Float32;
        if (type == typeof(bool[])) return GgufValueType.Bool;
        if (type == typeof(string[])) return GgufValueType.String;
        if (type == typeof(ulong[])) return GgufValueType.UInt64;
        if (type == typeof(long[])) return GgufValueType.Int64;
        if (type == typeof(double[])) return GgufValueType.Float64;
        if (type == typeof(object[])) return GgufValueType.Array;
        throw new ArgumentException($"{type.Name} is not a GGUF metadata array type.");
    }

    private static void CheckValue(object value, string parameter, int depth)
    {
        if (TypeOf(value) != GgufValueType.Array) return;
        var array = (Array)value;
        if (array.Rank != 1) throw new ArgumentException("Metadata arrays must be one-dimensional.", parameter);
        switch (ElementTypeOf(array))
        {
            case GgufValueType.String:
                foreach (string? text in (string[])array)
                    if (text is null) throw new ArgumentException("Metadata string arrays cannot hold null.", parameter);
                break;
            case GgufValueType.Array:
                if (depth + 1 >= GgufFile.MaxArrayNesting) throw new ArgumentException("Metadata arrays nest too deep.", parameter);
                foreach (object? element in (object[])array)
                {
                    if (element is not Array) throw new ArgumentException("A nested metadata array (object[]) must hold only arrays.", parameter);
                    CheckValue(element, parameter, depth + 1);
                }
                break;
        }
    }

    private static void WriteString(BinaryWriter writer, string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        writer.Write((ulong)bytes.Length);
        writer.Write(bytes);
    }

    private static void WriteValue(BinaryWriter writer, object value)
    {
        switch (value)
        {
            case byte v: writer.Write(v); break;
            case sbyte v: writer.Write(v); break;
            case ushort v: writer.Write(v); break;
            case short v: writer.Write(v); break;
            case uint v: writer.Write(v); break;
            case int v: writer.Write(v); break;
            case float v: writer.Write(v); break;
            case bool v: writer.Write(v); break;
            case string v: WriteString(writer, v); break;
            case ulong v: writer.Write(v); break;
            case long v: writer.Write(v); break;
            case double v: writer.Write(v); break;
            case Array array: WriteArray(writer, array); break;
        }
    }

    private static void WriteArray(BinaryWriter writer, Array array)
    {
        writer.Write((uint)ElementTypeOf(array));
        writer.Write((ulong)array.Length);
        switch (array)
        {
            case string[] texts:
                foreach (string text in texts) WriteString(writer, text);
                break;
            case object[] arrays:
                foreach (object inner in arrays) WriteArray(writer, (Array)inner);
                break;
            default:
                // Numeric and bool arrays are stored exactly as they lie in memory on a little-endian machine.
                writer.Write(AsBytes(array));
                break;
        }
    }

    private static ReadOnlySpan<byte> AsBytes(Array array) =>
        MemoryMarshal.CreateReadOnlySpan(ref MemoryMarshal.GetArrayDataReference(array), Buffer.ByteLength(array));
}
