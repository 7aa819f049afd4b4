using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Kiln.Kernels.Quantized;

/// <summary>
/// IEEE half-precision scales, read the way a hot loop can afford. <c>(float)Half</c> is a call into a software
/// routine in .NET 10 and .NET exposes no F16C conversion, so the kernels widen by moving bits instead: the
/// exponent and mantissa shift into float position and one multiply by 2^112 re-biases the exponent, which is
/// exact for normal and subnormal halves alike.
/// </summary>
public static class Fp16
{
    private const float ExponentRebias = 5.192296858534828E+33f; // 2^(127 − 15)
    private const uint FloatInfinityOrNaN = 0x7C00u << 13;        // the half exponent field all ones, shifted

    /// <summary>The float32 value of the half whose bits are <paramref name="bits"/>, exactly as <c>(float)Half</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(ushort bits)
    {
        uint magnitude = (uint)(bits & 0x7FFF) << 13;
        uint widened = magnitude >= FloatInfinityOrNaN
            ? magnitude | 0x7F80_0000
            : BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(magnitude) * ExponentRebias);
        return BitConverter.UInt32BitsToSingle(widened | (uint)(bits & 0x8000) << 16);
    }

    /// <summary>Four halves (zero-extended into 32-bit lanes) to float32, lane by lane, as <see cref="ToSingle(ushort)"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> ToSingle(Vector128<uint> bits)
    {
        Vector128<uint> magnitude = (bits & Vector128.Create(0x7FFFu)) << 13;
        Vector128<uint> finite = (magnitude.AsSingle() * Vector128.Create(ExponentRebias)).AsUInt32();
        Vector128<uint> widened = Vector128.ConditionalSelect(
            Vector128.GreaterThanOrEqual(magnitude, Vector128.Create(FloatInfinityOrNaN)),
            magnitude | Vector128.Create(0x7F80_0000u),
            finite);
        return (widened | ((bits & Vector128.Create(0x8000u)) << 16)).AsSingle();
    }

    /// <summary>Sixteen halves (zero-extended into 32-bit lanes) to float32, lane by lane, as <see cref="ToSingle(ushort)"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ToSingle(Vector512<uint> bits)
    {
        Vector512<uint> magnitude = (bits & Vector512.Create(0x7FFFu)) << 13;
        Vector512<uint> finite = (magnitude.AsSingle() * Vector512.Create(ExponentRebias)).AsUInt32();
        Vector512<uint> widened = Vector512.ConditionalSelect(
            Vector512.GreaterThanOrEqual(magnitude, Vector512.Create(FloatInfinityOrNaN)),
            magnitude | Vector512.Create(0x7F80_0000u),
            finite);
        return (widened | ((bits & Vector512.Create(0x8000u)) << 16)).AsSingle();
    }

    /// <summary>2^112, the factor <see cref="ToSingleUnrebiased"/> leaves out: exactly what its results fall short of.</summary>
    public const float Rebias = ExponentRebias;

    /// <summary>
    /// Sixteen finite halves (sign-extended into 32-bit lanes) to float32 times 2^-112, exactly: the sign, exponent and
    /// mantissa moved into float position (a subnormal half lands as a subnormal float) without the multiply that
    /// re-biases the exponent — three integer operations where <see cref="ToSingle(Vector512{uint})"/> takes ten. A
    /// caller folds <see cref="Rebias"/> into a factor of its own (a query, a weight): q·2^112 times k·2^-112 is the
    /// same real product, rounded the same. A half's ±∞ or NaN comes out finite, so only rows known finite may go this way.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ToSingleUnrebiased(Vector512<int> bits) =>
        ((bits << 13) & Vector512.Create(unchecked((int)0x8FFF_E000))).AsSingle(); // the sign's copies in bits 30..28 cleared

    /// <summary>Eight halves (zero-extended into 32-bit lanes) to float32, lane by lane, as <see cref="ToSingle(ushort)"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ToSingle(Vector256<uint> bits)
    {
        Vector256<uint> magnitude = (bits & Vector256.Create(0x7FFFu)) << 13;
        Vector256<uint> finite = (magnitude.AsSingle() * Vector256.Create(ExponentRebias)).AsUInt32();
        Vector256<uint> widened = Vector256.ConditionalSelect(
            Vector256.GreaterThanOrEqual(magnitude, Vector256.Create(FloatInfinityOrNaN)),
            magnitude | Vector256.Create(0x7F80_0000u),
            finite);
        return (widened | ((bits & Vector256.Create(0x8000u)) << 16)).AsSingle();
    }

    /// <summary>
    /// Widens <paramref name="source"/> into <paramref name="destination"/> (same length), exactly as <c>(float)Half</c>
    /// element by element, 32 halves per step on the AVX-512 path (<see cref="KernelPaths.Active"/>): how an F16 KV cache is read.
    /// </summary>
    public static void ToSingle(ReadOnlySpan<Half> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("The destination is shorter than the source.", nameof(destination));
        var bits = MemoryMarshal.Cast<Half, ushort>(source);
        ref ushort from = ref MemoryMarshal.GetReference(bits);
        ref float to = ref MemoryMarshal.GetReference(destination);
        int i = 0, length = bits.Length;
        if (KernelPaths.Uses512Bits)
        {
            for (; i <= length - 32; i += 32)
            {
                var (lower, upper) = Vector512.Widen(Vector512.LoadUnsafe(ref from, (nuint)i));
                ToSingle(lower).StoreUnsafe(ref to, (nuint)i);
                ToSingle(upper).StoreUnsafe(ref to, (nuint)(i + 16));
            }
        }
        else if (KernelPaths.UsesVectors)
        {
            for (; i <= length - 16; i += 16)
            {
                var (lower, upper) = Vector256.Widen(Vector256.LoadUnsafe(ref from, (nuint)i));
                ToSingle(lower).StoreUnsafe(ref to, (nuint)i);
                ToSingle(upper).StoreUnsafe(ref to, (nuint)(i + 8));
            }
        }
        for (; i < length; i++) Unsafe.Add(ref to, i) = ToSingle(Unsafe.Add(ref from, i));
    }

    /// <summary>The half nearest <paramref name="value"/> (ties to even), as bits: how GGML stores a block scale.</summary>
    public static ushort FromSingle(float value) => BitConverter.HalfToUInt16Bits((Half)value);
}
