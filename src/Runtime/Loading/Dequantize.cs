using System.Runtime.InteropServices;

namespace Kiln.Loading;

/// <summary>Converts stored tensor bytes to float32.</summary>
public static class Dequantize
{
    public static void ToFloat32(GgmlType type, ReadOnlySpan<byte> source, Span<float> destination)
    {
        switch (type)
        {
            case GgmlType.F32:
                MemoryMarshal.Cast<byte, float>(source)[..destination.Length].CopyTo(destination);
                break;
            default:
                throw new NotSupportedException($"Dequantizing {type} is not supported.");
        }
    }
}
