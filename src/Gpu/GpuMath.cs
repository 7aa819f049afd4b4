using System.Runtime.CompilerServices;
using ILGPU;

namespace Kiln.Gpu;

/// <summary>
/// The math a GPU kernel body calls: the primitives the generator composes activations from (e^x, ln, tanh, erf),
/// written so that ILGPU compiles them for CUDA (e^x and ln map to the hardware's exp2/log2 through ILGPU.Algorithms)
/// and its CPU accelerator runs them as they are. tanh and erf are spelled out from e^x: CUDA's own tanh is an
/// approximation a thousand times coarser than the CPU kernels'.
/// </summary>
public static class GpuMath
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Exp(float x) => MathF.Exp(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Log(float x) => MathF.Log(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Abs(float x) => x < 0f ? -x : x;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Max(float a, float b) => a > b ? a : b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Neg(float x) => -x;

    /// <summary>tanh from e^(−2|x|) (no cancellation for large |x|), with its series near 0 where 1 − e^(−2|x|) would cancel.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Tanh(float x)
    {
        float a = Abs(x);
        float result;
        if (a < 0.0625f)
        {
            float x2 = a * a;
            result = a * (1f + x2 * (-1f / 3f + x2 * (2f / 15f - x2 * (17f / 315f))));
        }
        else
        {
            float e = Exp(-2f * a);
            result = (1f - e) / (1f + e);
        }
        return x < 0f ? -result : result;
    }

    /// <summary>erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Erf(float x)
    {
        float a = Abs(x);
        float t = 1f / (1f + 0.3275911f * a);
        float polynomial = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
        float result = 1f - polynomial * Exp(-a * a);
        return x < 0f ? -result : result;
    }

    /// <summary>1/√x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ReciprocalSqrt(float x) => 1f / MathF.Sqrt(x);

    /// <summary>
    /// <paramref name="x"/> rounded to the nearest IEEE half (ties to even), as a float: how GGML stores a Q8 block's
    /// scale, and how an F16 KV cache keeps a value. Integer arithmetic, so both accelerators round alike.
    /// </summary>
    public static float RoundToHalf(float x)
    {
        uint bits = Interop.FloatAsInt(x);
        uint sign = bits & 0x80000000u, magnitude = bits & 0x7FFFFFFFu;
        if (magnitude >= 0x7F800000u) return x; // infinity, NaN
        if (magnitude < 0x38800000u)
        {
            // Below half's smallest normal, 2^-14: multiples of 2^-24, rounded by the float adder (ties to even).
            float scaled = Interop.IntAsFloat(magnitude) * 16777216f; // exact: a power of two
            float rounded = (scaled + 8388608f) - 8388608f;
            return Interop.IntAsFloat(sign | Interop.FloatAsInt(rounded * (1f / 16777216f)));
        }
        // Keep 10 of the 23 mantissa bits, rounding to nearest even; a carry moves into the exponent.
        uint kept = (magnitude + 0xFFFu + ((magnitude >> 13) & 1u)) & ~0x1FFFu;
        if (kept >= 0x47800000u) kept = 0x7F800000u; // past 65504: infinity
        return Interop.IntAsFloat(sign | kept);
    }

    /// <summary>The IEEE half with bits <paramref name="bits"/> (low 16) as a float, exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float HalfToFloat(uint bits) => Interop.IntAsFloat((ushort)bits);

    /// <summary>
    /// The bits of the IEEE half nearest <paramref name="x"/> (ties to even): <see cref="RoundToHalf"/> re-encoded.
    /// </summary>
    public static uint FloatToHalfBits(float x)
    {
        uint bits = Interop.FloatAsInt(RoundToHalf(x));
        uint sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7FFFFFFFu;
        if (magnitude >= 0x7F800000u) return sign | (magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u);
        if (magnitude < 0x38800000u)
            return sign | (uint)(Interop.IntAsFloat(magnitude) * 16777216f); // subnormal: a whole number of 2^-24
        return sign | ((magnitude - 0x38000000u) >> 13);
    }

    /// <summary>round(x) with halves away from zero, as GGML quantizes (|x| ≤ 127.5 here).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int RoundAway(float x) => x < 0f ? -(int)(0.5f - x) : (int)(x + 0.5f);
}
