using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace Kiln.Tokenization;

/// <summary>
/// The few pieces of the protobuf wire format a SentencePiece ModelProto needs: varints, 32-bit floats,
/// length-delimited strings and nested messages. Fields are written in the order the caller gives.
/// </summary>
internal sealed class ProtobufWriter
{
    private const int VarintWireType = 0;
    private const int LengthDelimitedWireType = 2;
    private const int Fixed32WireType = 5;

    // A varint carries 7 bits per byte, so a 64-bit value needs at most 10 bytes.
    private const int MaxVarintBytes = 10;

    private readonly ArrayBufferWriter<byte> _buffer = new();

    public ReadOnlySpan<byte> WrittenSpan => _buffer.WrittenSpan;

    public void Clear() => _buffer.ResetWrittenCount();

    public void WriteInt32(int field, int value)
    {
        WriteTag(field, VarintWireType);
        // Protobuf sign-extends a negative int32 to 64 bits, so -1 takes the full ten bytes.
        WriteVarint(unchecked((ulong)(long)value));
    }

    public void WriteBool(int field, bool value)
    {
        WriteTag(field, VarintWireType);
        WriteVarint(value ? 1UL : 0UL);
    }

    public void WriteFloat(int field, float value)
    {
        WriteTag(field, Fixed32WireType);
        BinaryPrimitives.WriteSingleLittleEndian(_buffer.GetSpan(sizeof(float)), value);
        _buffer.Advance(sizeof(float));
    }

    public void WriteString(int field, string value)
    {
        WriteTag(field, LengthDelimitedWireType);
        int byteCount = Encoding.UTF8.GetByteCount(value);
        WriteVarint((ulong)byteCount);
        int written = Encoding.UTF8.GetBytes(value, _buffer.GetSpan(byteCount));
        _buffer.Advance(written);
    }

    /// <summary>Writes an already serialized message as a length-delimited field.</summary>
    public void WriteMessage(int field, ReadOnlySpan<byte> message)
    {
        WriteTag(field, LengthDelimitedWireType);
        WriteVarint((ulong)message.Length);
        _buffer.Write(message);
    }

    private void WriteTag(int field, int wireType) => WriteVarint(((ulong)field << 3) | (uint)wireType);

    private void WriteVarint(ulong value)
    {
        Span<byte> destination = _buffer.GetSpan(MaxVarintBytes);
        int length = 0;
        while (value >= 0x80)
        {
            destination[length++] = (byte)(value | 0x80);
            value >>= 7;
        }
        destination[length++] = (byte)value;
        _buffer.Advance(length);
    }
}
