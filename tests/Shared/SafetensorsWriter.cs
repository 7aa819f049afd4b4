using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using Kiln.Loading;

namespace Kiln.Testing;

/// <summary>
/// Writes safetensors files as the format's reference writer does: an 8-byte little-endian header length, a JSON
/// header (tensors in the order added, data_offsets back to back, padded with spaces to a multiple of 8 bytes), then
/// the data. Tensors are given as row-major floats (shape outermost first) and stored as F32, F16 or BF16, or as raw
/// bytes under any dtype name.
/// </summary>
public sealed class SafetensorsWriter
{
    private readonly List<(string Name, string Dtype, long[] Shape, byte[] Data)> _tensors = [];
    private readonly List<(string Key, string Value)> _metadata = [];

    public IReadOnlyList<string> Names => _tensors.Select(t => t.Name).ToList();

    /// <summary>Adds <paramref name="values"/> (row-major, <paramref name="shape"/> outermost first) stored as <paramref name="type"/>.</summary>
    public SafetensorsWriter Add(string name, ReadOnlySpan<float> values, int[] shape, GgmlType type = GgmlType.F32)
    {
        string dtype = type switch
        {
            GgmlType.F32 => "F32",
            GgmlType.F16 => "F16",
            GgmlType.BF16 => "BF16",
            _ => throw new ArgumentException($"safetensors stores no {type}.", nameof(type)),
        };
        var data = new byte[values.Length * (type == GgmlType.F32 ? 4 : 2)];
        Quantize.FromFloat32(type, values, data);
        return AddRaw(name, dtype, data, shape.Select(d => (long)d).ToArray());
    }

    /// <summary>Adds bytes as they are, under <paramref name="dtype"/>'s name (for dtypes Kiln does not load).</summary>
    public SafetensorsWriter AddRaw(string name, string dtype, byte[] data, params long[] shape)
    {
        _tensors.Add((name, dtype, shape, data));
        return this;
    }

    public SafetensorsWriter AddMetadata(string key, string value)
    {
        _metadata.Add((key, value));
        return this;
    }

    /// <summary>The header JSON as written (before padding), for tests that edit it.</summary>
    public string HeaderJson()
    {
        var json = new StringBuilder("{");
        if (_metadata.Count > 0)
            json.Append("\"__metadata__\":{").AppendJoin(",", _metadata.Select(m => $"{Quote(m.Key)}:{Quote(m.Value)}")).Append("},");
        long offset = 0;
        for (int i = 0; i < _tensors.Count; i++)
        {
            var (name, dtype, shape, data) = _tensors[i];
            if (i > 0) json.Append(',');
            json.Append(CultureInfo.InvariantCulture,
                $"{Quote(name)}:{{\"dtype\":\"{dtype}\",\"shape\":[{string.Join(",", shape)}],\"data_offsets\":[{offset},{offset + data.Length}]}}");
            offset += data.Length;
        }
        return json.Append('}').ToString();
    }

    public byte[] ToBytes() => Assemble(HeaderJson(), _tensors.SelectMany(t => t.Data).ToArray());

    public void Write(string path) => File.WriteAllBytes(path, ToBytes());

    /// <summary>A file of <paramref name="headerJson"/> (space-padded to a multiple of 8) and <paramref name="data"/>.</summary>
    public static byte[] Assemble(string headerJson, byte[] data)
    {
        var header = Encoding.UTF8.GetBytes(headerJson);
        int padded = (header.Length + 7) / 8 * 8;
        var bytes = new byte[8 + padded + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)padded);
        header.CopyTo(bytes, 8);
        bytes.AsSpan(8 + header.Length, padded - header.Length).Fill((byte)' ');
        data.CopyTo(bytes, 8 + padded);
        return bytes;
    }

    private static string Quote(string text) => "\"" + System.Text.Json.JsonEncodedText.Encode(text) + "\"";
}
