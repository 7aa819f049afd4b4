using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace Kiln.Loading;

/// <summary>
/// A GGUF file (versions 2 and 3, little-endian), memory-mapped. The header, metadata and tensor directory are
/// parsed and validated up front: every count, length, dimension, type id and tensor range is checked against the
/// file before it is used, so a malformed file fails with a <see cref="ModelLoadException"/> naming the field and
/// byte offset instead of crashing or allocating without bound. Tensor bytes are spans over the mapping, valid
/// until <see cref="Dispose"/>.
/// </summary>
public sealed unsafe class GgufFile : ModelFile
{
    /// <summary>"GGUF" as the file's first four bytes.</summary>
    public static ReadOnlySpan<byte> Magic => "GGUF"u8;

    /// <summary>Tensor data alignment when the file has no <c>general.alignment</c>.</summary>
    public const int DefaultAlignment = 32;

    /// <summary>GGML's limit on tensor rank.</summary>
    public const int MaxDimensions = 4;

    // Nested arrays are legal but never deep in practice; the cap keeps a crafted file from exhausting the stack.
    internal const int MaxArrayNesting = 8;

    private readonly MappedFile _file;
    private readonly Dictionary<string, MetadataValue> _metadata;
    private readonly Dictionary<string, TensorInfo> _tensors;

    /// <summary>Opens and validates <paramref name="path"/>.</summary>
    public GgufFile(string path) : base(path)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("GGUF reading assumes a little-endian machine.");
        _file = MappedFile.Open(path);
        try
        {
            var reader = new Reader(path, _file.Start, _file.Length);
            ReadHeader(reader, out uint version, out long tensorCount, out long metadataCount);
            Version = version;
            _metadata = ReadMetadata(reader, metadataCount, out int alignment);
            Alignment = alignment;
            _tensors = ReadTensorDirectory(reader, tensorCount, alignment, out long dataOffset);
            DataOffset = dataOffset;
        }
        catch
        {
            _file.Dispose();
            throw;
        }
    }

    /// <summary>The GGUF version (2 or 3).</summary>
    public uint Version { get; }

    /// <summary>Alignment of tensor data, from <c>general.alignment</c> or <see cref="DefaultAlignment"/>.</summary>
    public int Alignment { get; }

    /// <summary>Absolute byte offset where the tensor data section starts.</summary>
    public long DataOffset { get; }

    public override string Architecture => TryGetString("general.architecture", out string name) ? name : "";

    public override IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;

    public override IReadOnlyDictionary<string, MetadataValue> Metadata => _metadata;

    public override ReadOnlySpan<byte> GetTensorBytes(TensorInfo tensor) => _file.TensorBytes(Path, tensor);

    internal override MappedFile? MappingOf(TensorInfo tensor) => _file;

    public override void Dispose()
    {
        _file.Dispose();
        base.Dispose();
    }

    private static void ReadHeader(Reader reader, out uint version, out long tensorCount, out long metadataCount)
    {
        var magic = reader.ReadBytes(4, "header magic");
        if (!magic.SequenceEqual(Magic))
            throw reader.Error("header magic", 0, $"expected \"GGUF\" but found {Convert.ToHexString(magic)}; not a GGUF file.");

        long at = reader.Position;
        version = reader.ReadUInt32("header version");
        if (version is 1)
            throw reader.Error("header version", at, "GGUF version 1 (32-bit counts) is not supported; convert the file again with a current llama.cpp.");
        if (version is not (2 or 3))
        {
            string problem = BinaryPrimitives.ReverseEndianness(version) is 2 or 3
                ? "the file is big-endian GGUF, which is not supported."
                : $"version {version} is not supported (expected 2 or 3).";
            throw reader.Error("header version", at, problem);
        }

        // Every directory entry takes a minimum number of bytes, so a count larger than the rest of the file can
        // hold is rejected before anything is allocated for it.
        tensorCount = reader.ReadCount("header tensor count", MinTensorInfoBytes);
        metadataCount = reader.ReadCount("header metadata count", MinMetadataEntryBytes);
    }

    private const int MinTensorInfoBytes = 8 + 4 + 4 + 8;        // name length, n_dims, type, offset
    private const int MinMetadataEntryBytes = 8 + 4 + 1;         // key length, value type, smallest value

    private static Dictionary<string, MetadataValue> ReadMetadata(Reader reader, long count, out int alignment)
    {
        var metadata = new Dictionary<string, MetadataValue>(InitialCapacity(count), StringComparer.Ordinal);
        alignment = DefaultAlignment;
        for (long i = 0; i < count; i++)
        {
            long keyAt = reader.Position;
            string key = reader.ReadString($"metadata key #{i} name");
            string label = $"metadata key #{i} '{key}'";
            if (metadata.ContainsKey(key))
                throw reader.Error(label, keyAt, "the key appears twice.");

            long typeAt = reader.Position;
            var type = (GgufValueType)reader.ReadUInt32($"{label} value type");
            object value = ReadValue(reader, type, typeAt, label, depth: 0);

            if (key == "general.alignment")
                alignment = CheckAlignment(reader, label, typeAt, value);
            else if (key == "general.architecture" && value is not string)
                throw reader.Error(label, typeAt, $"expected a string but found {type}.");

            metadata.Add(key, new MetadataValue(value));
        }
        return metadata;
    }

    private static int CheckAlignment(Reader reader, string label, long at, object value)
    {
        if (value is not uint alignment)
            throw reader.Error(label, at, "general.alignment must be a uint32.");
        if (alignment == 0 || !uint.IsPow2(alignment) || alignment > 1u << 30)
            throw reader.Error(label, at, $"alignment {alignment} is not a power of two in [1, 2^30].");
        return (int)alignment;
    }

    private static object ReadValue(Reader reader, GgufValueType type, long typeAt, string label, int depth) => type switch
    {
        GgufValueType.UInt8 => reader.ReadBytes(1, label)[0],
        GgufValueType.Int8 => (sbyte)reader.ReadBytes(1, label)[0],
        GgufValueType.UInt16 => BinaryPrimitives.ReadUInt16LittleEndian(reader.ReadBytes(2, label)),
        GgufValueType.Int16 => BinaryPrimitives.ReadInt16LittleEndian(reader.ReadBytes(2, label)),
        GgufValueType.UInt32 => reader.ReadUInt32(label),
        GgufValueType.Int32 => BinaryPrimitives.ReadInt32LittleEndian(reader.ReadBytes(4, label)),
        GgufValueType.Float32 => BinaryPrimitives.ReadSingleLittleEndian(reader.ReadBytes(4, label)),
        GgufValueType.UInt64 => reader.ReadUInt64(label),
        GgufValueType.Int64 => BinaryPrimitives.ReadInt64LittleEndian(reader.ReadBytes(8, label)),
        GgufValueType.Float64 => BinaryPrimitives.ReadDoubleLittleEndian(reader.ReadBytes(8, label)),
        GgufValueType.Bool => reader.ReadBool(label),
        GgufValueType.String => reader.ReadString($"{label} string"),
        GgufValueType.Array => ReadArray(reader, label, depth),
        _ => throw reader.Error($"{label} value type", typeAt, $"unknown value type id {(uint)type}."),
    };

    private static Array ReadArray(Reader reader, string label, int depth)
    {
        long typeAt = reader.Position;
        var elementType = (GgufValueType)reader.ReadUInt32($"{label} array element type");
        int elementBytes = elementType switch
        {
            GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
            GgufValueType.UInt16 or GgufValueType.Int16 => 2,
            GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
            GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 => 8,
            GgufValueType.String => 8,        // at least the length prefix
            GgufValueType.Array => 4 + 8,     // at least the element type and count
            _ => throw reader.Error($"{label} array element type", typeAt, $"unknown value type id {(uint)elementType}."),
        };
        if (elementType == GgufValueType.Array && depth + 1 >= MaxArrayNesting)
            throw reader.Error($"{label} array element type", typeAt, $"arrays nest more than {MaxArrayNesting} deep.");

        long count = reader.ReadCount($"{label} array count", elementBytes);
        int length = (int)count; // ReadCount bounds it by the bytes left, and by Array.MaxLength
        switch (elementType)
        {
            case GgufValueType.UInt8: return reader.ReadArray<byte>(length, label);
            case GgufValueType.Int8: return reader.ReadArray<sbyte>(length, label);
            case GgufValueType.UInt16: return reader.ReadArray<ushort>(length, label);
            case GgufValueType.Int16: return reader.ReadArray<short>(length, label);
            case GgufValueType.UInt32: return reader.ReadArray<uint>(length, label);
            case GgufValueType.Int32: return reader.ReadArray<int>(length, label);
            case GgufValueType.Float32: return reader.ReadArray<float>(length, label);
            case GgufValueType.UInt64: return reader.ReadArray<ulong>(length, label);
            case GgufValueType.Int64: return reader.ReadArray<long>(length, label);
            case GgufValueType.Float64: return reader.ReadArray<double>(length, label);
            case GgufValueType.Bool: return reader.ReadBoolArray(length, label);
            case GgufValueType.String:
            {
                var values = new string[length];
                for (int i = 0; i < values.Length; i++) values[i] = reader.ReadArrayString(label, i);
                return values;
            }
            default:
            {
                var values = new object[length];
                for (int i = 0; i < values.Length; i++) values[i] = ReadArray(reader, $"{label} element #{i}", depth + 1);
                return values;
            }
        }
    }

    // Counts are already bounded by the file's length; this also keeps a large-but-lying count from reserving
    // memory up front (entries are only stored as they are actually read).
    private static int InitialCapacity(long count) => (int)Math.Min(count, 4096);

    private static Dictionary<string, TensorInfo> ReadTensorDirectory(Reader reader, long count, int alignment, out long dataOffset)
    {
        if (count > reader.Remaining / MinTensorInfoBytes)
            throw reader.Error("header tensor count", 8, $"{count} tensors cannot fit in the {reader.Remaining} bytes left after the metadata.");

        var entries = new List<(TensorInfo Info, long OffsetFieldAt)>(InitialCapacity(count));
        var tensors = new Dictionary<string, TensorInfo>(InitialCapacity(count), StringComparer.Ordinal);
        for (long i = 0; i < count; i++)
        {
            long nameAt = reader.Position;
            string name = reader.ReadString($"tensor #{i} name");
            string label = $"tensor '{name}'";
            if (tensors.ContainsKey(name))
                throw reader.Error($"tensor #{i} '{name}' name", nameAt, "the tensor name appears twice.");

            long rankAt = reader.Position;
            uint rank = reader.ReadUInt32($"{label} n_dims");
            if (rank > MaxDimensions)
                throw reader.Error($"{label} n_dims", rankAt, $"{rank} dimensions; at most {MaxDimensions} are allowed.");

            var dimensions = new long[rank];
            long elements = 1;
            for (int k = 0; k < dimensions.Length; k++)
            {
                long dimensionAt = reader.Position;
                string field = $"{label} dimension {k}";
                ulong extent = reader.ReadUInt64(field);
                if (extent > long.MaxValue)
                    throw reader.Error(field, dimensionAt, $"extent {extent} is negative as an int64.");
                if (extent != 0 && elements > long.MaxValue / (long)extent)
                    throw reader.Error(field, dimensionAt, "the element count overflows 64 bits.");
                dimensions[k] = (long)extent;
                elements *= (long)extent;
            }

            long typeAt = reader.Position;
            uint typeId = reader.ReadUInt32($"{label} type");
            if (!GgmlTypeTraits.TryGet((GgmlType)typeId, out var traits))
                throw reader.Error($"{label} type", typeAt, $"unknown GGML type id {typeId}.");
            // GGML quantizes row by row, so each row (ne[0] values) must be whole blocks.
            long rowLength = rank == 0 ? 1 : dimensions[0];
            if (rowLength % traits.BlockElements != 0)
                throw reader.Error($"{label} dimension 0", rankAt + 4,
                    $"rows of {rowLength} values are not a whole number of {traits.Type} blocks of {traits.BlockElements}.");
            long blocks = elements / traits.BlockElements;
            if (blocks > long.MaxValue / traits.BlockBytes)
                throw reader.Error($"{label} element count", rankAt, "the byte size overflows 64 bits.");

            long offsetAt = reader.Position;
            ulong offset = reader.ReadUInt64($"{label} offset");
            if (offset % (ulong)alignment != 0)
                throw reader.Error($"{label} offset", offsetAt, $"data offset {offset} is not a multiple of the alignment {alignment}.");
            if (offset > long.MaxValue)
                throw reader.Error($"{label} offset", offsetAt, $"data offset {offset} is beyond any file.");

            var info = new TensorInfo(name, traits.Type, dimensions, (long)offset, blocks * traits.BlockBytes);
            tensors.Add(name, info);
            entries.Add((info, offsetAt));
        }

        // The data section starts at the next alignment boundary; tensor offsets are relative to it.
        dataOffset = (reader.Position + alignment - 1) / alignment * alignment;
        long fileLength = reader.Length;
        foreach (var (info, offsetAt) in entries)
        {
            long available = fileLength - dataOffset;
            if (info.Offset > available || info.ByteLength > available - info.Offset)
                throw reader.Error($"tensor '{info.Name}' offset", offsetAt,
                    $"its {info.ByteLength} bytes at data offset {info.Offset} (absolute {dataOffset + info.Offset}) run past the end of the {fileLength}-byte file.");
            tensors[info.Name] = info with { Offset = dataOffset + info.Offset };
        }
        return tensors;
    }

    /// <summary>A bounds-checked little-endian cursor over the mapping; every read names its field when it fails.</summary>
    private sealed class Reader(string path, byte* start, long length)
    {
        private static readonly Encoding Utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false);

        public long Position { get; private set; }

        public long Length => length;

        public long Remaining => length - Position;

        public ModelLoadException Error(string field, long at, string problem) => new(path, field, at, problem);

        public ReadOnlySpan<byte> ReadBytes(int count, string field)
        {
            if (count > Remaining)
                throw Error(field, Position, $"needs {count} bytes but only {Remaining} remain; the file is truncated.");
            var bytes = new ReadOnlySpan<byte>(start + Position, count);
            Position += count;
            return bytes;
        }

        public uint ReadUInt32(string field) => BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4, field));

        public ulong ReadUInt64(string field) => BinaryPrimitives.ReadUInt64LittleEndian(ReadBytes(8, field));

        public bool ReadBool(string field)
        {
            long at = Position;
            byte value = ReadBytes(1, field)[0];
            return value switch
            {
                0 => false,
                1 => true,
                _ => throw Error(field, at, $"bool byte is {value}, not 0 or 1."),
            };
        }

        public bool[] ReadBoolArray(int count, string label)
        {
            long at = Position;
            var bytes = ReadBytes(count, $"{label} array data");
            var values = new bool[count];
            for (int i = 0; i < bytes.Length; i++)
            {
                if (bytes[i] > 1) throw Error($"{label} element #{i}", at + i, $"bool byte is {bytes[i]}, not 0 or 1.");
                values[i] = bytes[i] == 1;
            }
            return values;
        }

        /// <summary>A uint64 count of items taking at least <paramref name="minItemBytes"/> each, checked against the bytes left.</summary>
        public long ReadCount(string field, int minItemBytes)
        {
            long at = Position;
            ulong count = ReadUInt64(field);
            long fits = Remaining / minItemBytes;
            if (count > (ulong)Math.Min(fits, Array.MaxLength))
                throw Error(field, at, $"count {count} cannot fit in the {Remaining} bytes left in the file.");
            return (long)count;
        }

        public string ReadString(string field)
        {
            long at = Position;
            ulong byteCount = ReadUInt64($"{field} length");
            if (byteCount > (ulong)Remaining || byteCount > int.MaxValue)
                throw Error($"{field} length", at, $"string length {byteCount} exceeds the {Remaining} bytes left in the file.");
            return Utf8.GetString(ReadBytes((int)byteCount, field));
        }

        /// <summary>Element <paramref name="index"/> of a string array; the field name is only built on failure.</summary>
        public string ReadArrayString(string arrayLabel, int index)
        {
            long at = Position;
            if (Remaining < 8)
                throw Error($"{arrayLabel} element #{index} string length", at, $"needs 8 bytes but only {Remaining} remain; the file is truncated.");
            ulong byteCount = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(start + at, 8));
            Position += 8;
            if (byteCount > (ulong)Remaining || byteCount > int.MaxValue)
                throw Error($"{arrayLabel} element #{index} string length", at, $"string length {byteCount} exceeds the {Remaining} bytes left in the file.");
            var text = new ReadOnlySpan<byte>(start + Position, (int)byteCount);
            Position += (long)byteCount;
            return Utf8.GetString(text);
        }

        public T[] ReadArray<T>(int count, string label) where T : unmanaged
        {
            long at = Position;
            long byteCount = (long)count * sizeof(T);
            if (byteCount > Remaining)
                throw Error($"{label} array data", at, $"{count} elements need {byteCount} bytes but only {Remaining} remain; the file is truncated.");
            if (byteCount > int.MaxValue)
                throw Error($"{label} array data", at, $"{count} elements ({byteCount} bytes) is more than one metadata array may hold.");
            var values = new T[count];
            new ReadOnlySpan<byte>(start + at, (int)byteCount).CopyTo(MemoryMarshal.AsBytes(values.AsSpan()));
            Position += byteCount;
            return values;
        }
    }
}

/// <summary>GGUF metadata value type ids.</summary>
internal enum GgufValueType : uint
{
    UInt8 = 0,
    Int8 = 1,
    UInt16 = 2,
    Int16 = 3,
    UInt32 = 4,
    Int32 = 5,
    Float32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    UInt64 = 10,
    Int64 = 11,
    Float64 = 12,
}
