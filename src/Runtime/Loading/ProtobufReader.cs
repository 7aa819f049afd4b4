namespace Kiln.Loading;

/// <summary>
/// Reads protocol-buffer wire format from a span of a file, with every read bounds-checked: a truncated varint, a
/// length past the end of its message, a wire type the field cannot have, or a group (which ONNX never writes) is a
/// <see cref="ModelLoadException"/> naming the file, the field being read and its byte offset in the file. Only what
/// <see cref="OnnxModel"/> needs: varints, fixed 32/64-bit values, length-delimited fields, and skipping the rest.
/// </summary>
internal ref struct ProtobufReader
{
    public const int Varint = 0, Fixed64 = 1, LengthDelimited = 2, Fixed32 = 5;

    private readonly ReadOnlySpan<byte> _data;
    private readonly string _path;
    private readonly long _base;
    private int _position;

    /// <summary>A reader over <paramref name="data"/>, which starts at byte <paramref name="fileOffset"/> of <paramref name="path"/>.</summary>
    public ProtobufReader(ReadOnlySpan<byte> data, string path, long fileOffset)
    {
        _data = data;
        _path = path;
        _base = fileOffset;
        _position = 0;
    }

    public bool AtEnd => _position >= _data.Length;

    /// <summary>The file offset of the next byte.</summary>
    public long Offset => _base + _position;

    /// <summary>Reads a field's key; <paramref name="context"/> names the message for errors.</summary>
    public (int Field, int WireType) ReadKey(string context)
    {
        long at = Offset;
        ulong key = ReadVarint(context);
        int wireType = (int)(key & 7);
        ulong field = key >> 3;
        if (field is 0 or > int.MaxValue) throw Error(context, at, $"field number {field} is not a valid protobuf field.");
        if (wireType is not (Varint or Fixed64 or LengthDelimited or Fixed32))
            throw Error(context, at, $"field {field} has wire type {wireType}, which this format never writes (groups are not supported).");
        return ((int)field, wireType);
    }

    public ulong ReadVarint(string field)
    {
        long at = Offset;
        ulong value = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (_position >= _data.Length) throw Error(field, at, "the varint runs past the end of its message.");
            byte b = _data[_position++];
            value |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80) return value;
        }
        throw Error(field, at, "the varint is longer than 10 bytes.");
    }

    /// <summary>A varint read as a signed 64-bit integer (protobuf's int64: two's complement).</summary>
    public long ReadInt64(string field) => unchecked((long)ReadVarint(field));

    public uint ReadFixed32(string field) => System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(Take(4, field, "a fixed 32-bit value"));

    public ulong ReadFixed64(string field) => System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(Take(8, field, "a fixed 64-bit value"));

    /// <summary>A length-delimited field's bytes, and the file offset where they start.</summary>
    public Delimited ReadBytes(string field)
    {
        long at = Offset;
        ulong length = ReadVarint(field);
        if (length > (ulong)(_data.Length - _position))
            throw Error(field, at, $"a length of {length} bytes runs past the end of its message ({_data.Length - _position} bytes left).");
        long start = Offset;
        return new Delimited(Take((int)length, field, "bytes"), start);
    }

    public string ReadString(string field)
    {
        var (bytes, at) = ReadBytes(field);
        try
        {
            return new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (System.Text.DecoderFallbackException)
        {
            throw Error(field, at, "the string is not valid UTF-8.");
        }
    }

    /// <summary>Skips a field of <paramref name="wireType"/> the caller does not read.</summary>
    public void Skip(int wireType, string field)
    {
        switch (wireType)
        {
            case Varint: ReadVarint(field); break;
            case Fixed64: Take(8, field, "a fixed 64-bit value"); break;
            case Fixed32: Take(4, field, "a fixed 32-bit value"); break;
            default: ReadBytes(field); break;
        }
    }

    /// <summary>Throws unless a field has the wire type its schema gives it.</summary>
    public void Expect(int wireType, int expected, string field, long at)
    {
        if (wireType != expected) throw Error(field, at, $"has wire type {wireType}, expected {expected}.");
    }

    public ModelLoadException Error(string field, long at, string problem) => new(_path, field, at, problem);

    private ReadOnlySpan<byte> Take(int count, string field, string what)
    {
        if (count > _data.Length - _position) throw Error(field, Offset, $"{what} of {count} bytes runs past the end of its message.");
        var span = _data.Slice(_position, count);
        _position += count;
        return span;
    }
}

/// <summary>A length-delimited field's bytes and the file offset they start at.</summary>
internal readonly ref struct Delimited(ReadOnlySpan<byte> bytes, long offset)
{
    public ReadOnlySpan<byte> Bytes { get; } = bytes;

    public long Offset { get; } = offset;

    public void Deconstruct(out ReadOnlySpan<byte> bytes, out long offset)
    {
        bytes = Bytes;
        offset = Offset;
    }
}
