using System.Runtime.InteropServices;
using Kiln.Kernels.Quantized;
using Kiln.Loading;

namespace Kiln.Gpu.Tests;

/// <summary>
/// A model file whose matrices are stored in another GGML type: every 2-D tensor whose rows fit the type's blocks is
/// re-encoded (F16 rounded, Q8_0 and Q4_0 by the runtime's reference quantizers); vectors and the rest stay F32.
/// The same file then loads into plans with that layout, as a real F16 or quantized GGUF would.
/// </summary>
public sealed class EncodedModelFile : ModelFile
{
    private readonly ModelFile _source;
    private readonly Dictionary<string, TensorInfo> _tensors = new();
    private readonly Dictionary<string, byte[]> _bytes = new();

    public EncodedModelFile(ModelFile source, GgmlType type) : base(source.Path)
    {
        _source = source;
        foreach (var (name, info) in source.Tensors)
        {
            int cols = (int)info.Dimensions[0];
            bool encode = type != GgmlType.F32 && info.Dimensions.Length == 2 && (type == GgmlType.F16 || cols % 32 == 0);
            if (!encode)
            {
                _tensors[name] = info;
                continue;
            }
            var values = MemoryMarshal.Cast<byte, float>(source.GetTensorBytes(info));
            int rows = (int)(info.ElementCount / cols);
            int rowBytes = type switch { GgmlType.F16 => cols * 2, GgmlType.Q8_0 => Q8_0.RowBytes(cols), _ => Kiln.Kernels.Quantized.Q4_0.RowBytes(cols) };
            var bytes = new byte[(long)rows * rowBytes];
            for (int r = 0; r < rows; r++)
            {
                var row = values.Slice(r * cols, cols);
                var destination = bytes.AsSpan(r * rowBytes, rowBytes);
                switch (type)
                {
                    case GgmlType.F16:
                        for (int i = 0; i < cols; i++) MemoryMarshal.Write(destination[(2 * i)..], BitConverter.HalfToUInt16Bits((Half)row[i]));
                        break;
                    case GgmlType.Q8_0:
                        Q8_0.QuantizeRow(row, destination);
                        break;
                    default:
                        Kiln.Kernels.Quantized.Q4_0.QuantizeRow(row, destination);
                        break;
                }
            }
            _bytes[name] = bytes;
            _tensors[name] = info with { Type = type, ByteLength = bytes.Length };
        }
    }

    public override string Architecture => _source.Architecture;

    public override IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;

    public override IReadOnlyDictionary<string, MetadataValue> Metadata => _source.Metadata;

    public override ReadOnlySpan<byte> GetTensorBytes(TensorInfo tensor) =>
        _bytes.TryGetValue(tensor.Name, out var bytes) ? bytes : _source.GetTensorBytes(tensor);
}
