using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.Quantized;

/// <summary>
/// The steps that differ between the AVX2 and AVX-VNNI kernels, as an operator struct (TensorPrimitives style).
/// Kernels are written once, generic over this, and the JIT specializes each. Every method sums byte products
/// in groups of four into 8 int32 lanes.
/// </summary>
internal interface IInt8Dot256
{
    /// <summary>Σ u·s per lane: the unsigned×signed dot.</summary>
    static abstract Vector256<int> Dot(Vector256<byte> unsigned, Vector256<sbyte> signed);

    /// <summary>What <see cref="DotMinusEight"/> needs to take 8·a off; computed once per activation block and shared by every row.</summary>
    static abstract Vector256<int> PrepareMinusEight(Vector256<sbyte> activations);

    /// <summary>Σ (q − 8)·a per lane for Q4_0 nibbles q in 0..15: exact, and lanes stay as small as a signed dot's.</summary>
    static abstract Vector256<int> DotMinusEight(Vector256<byte> nibbles, Vector256<sbyte> activations, Vector256<int> prepared);
}

/// <summary>vpmaddubsw (pairs into int16) then vpmaddwd by ones (pairs into int32).</summary>
/// <remarks>vpmaddubsw saturates its int16 pair sums; every caller keeps |u·s| pairs ≤ 2·128·127 = 32512.</remarks>
internal readonly struct MaddubsDot : IInt8Dot256
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Dot(Vector256<byte> unsigned, Vector256<sbyte> signed) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(unsigned, signed), Vector256.Create((short)1));

    // The offset comes off in int16, between the two multiplies: pair sums of (q − 8)·a stay within ±2032.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> PrepareMinusEight(Vector256<sbyte> activations) =>
        Avx2.MultiplyAddAdjacent(Vector256.Create((byte)8), activations).AsInt32();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> DotMinusEight(Vector256<byte> nibbles, Vector256<sbyte> activations, Vector256<int> prepared) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(nibbles, activations) - prepared.AsInt16(), Vector256.Create((short)1));
}

/// <summary>vpdpbusd: the same sums in one instruction, without the int16 saturation.</summary>
internal readonly struct VnniDot : IInt8Dot256
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Dot(Vector256<byte> unsigned, Vector256<sbyte> signed) =>
        AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, unsigned, signed);

    // −Σ8·a becomes the accumulator vpdpbusd starts from: one instruction per row.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> PrepareMinusEight(Vector256<sbyte> activations) =>
        Vector256<int>.Zero - AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Vector256.Create((byte)8), activations);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> DotMinusEight(Vector256<byte> nibbles, Vector256<sbyte> activations, Vector256<int> prepared) =>
        AvxVnni.MultiplyWideningAndAdd(prepared, nibbles, activations);
}

/// <summary>The AVX-512BW int8 building blocks, and the nibble and sign handling every width shares.</summary>
internal static class Int8
{
    /// <summary>64 unsigned×signed byte products summed in fours into 16 int32 lanes (vpmaddubsw, vpmaddwd).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> Dot(Vector512<byte> unsigned, Vector512<sbyte> signed) =>
        Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(unsigned, signed), Vector512.Create((short)1));

    /// <summary>64 signed×signed byte products summed in fours into 16 int32 lanes: |w|·(a·sign w), as <see cref="Dot"/> takes them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> SignedDot(Vector512<sbyte> weights, Vector512<sbyte> activations) =>
        Dot(Avx512BW.Abs(weights), ApplySign(activations, weights));

    /// <inheritdoc cref="MaddubsDot.PrepareMinusEight"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<short> PrepareMinusEight(Vector512<sbyte> activations) =>
        Avx512BW.MultiplyAddAdjacent(Vector512.Create((byte)8), activations);

    /// <summary>Σ (q − 8)·a per lane for Q4_0 nibbles q in 0..15; <paramref name="prepared"/> from <see cref="PrepareMinusEight"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> DotMinusEight(Vector512<byte> nibbles, Vector512<sbyte> activations, Vector512<short> prepared) =>
        Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(nibbles, activations) - prepared, Vector512.Create((short)1));

    /// <summary>
    /// <paramref name="value"/> negated where <paramref name="sign"/> is negative: with |sign| this turns a
    /// signed×signed product into the unsigned×signed one vpmaddubsw takes (w·a = |w|·(a·sign w)). AVX-512 has no
    /// vpsignb; this compiles to a compare into a mask register and one masked subtract (where w = 0, |w| = 0
    /// already zeroes the product).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<sbyte> ApplySign(Vector512<sbyte> value, Vector512<sbyte> sign) =>
        Vector512.ConditionalSelect(Vector512.LessThan(sign, Vector512<sbyte>.Zero), Vector512<sbyte>.Zero - value, value);

    /// <summary>The 16 bytes of a Q4_0 block's nibbles as its 32 quants 0..15 in element order: low nibbles, then high.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> UnpackNibbles(Vector128<byte> packed) =>
        Vector256.Create(packed, (packed.AsUInt16() >>> 4).AsByte()) & Vector256.Create((byte)0x0F);

    /// <summary>Two Q4_0 blocks' nibbles as their 64 quants in element order: [lo₀ hi₀ lo₁ hi₁].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> UnpackNibbles(Vector128<byte> first, Vector128<byte> second)
    {
        Vector256<byte> packed = Vector256.Create(first, second);
        Vector512<uint> halves = Vector512.Create(packed, (packed.AsUInt16() >>> 4).AsByte()).AsUInt32(); // [p₀ p₁ p₀>>4 p₁>>4]
        return Avx512F.Shuffle4x128(halves, halves, 0b11_01_10_00).AsByte() & Vector512.Create((byte)0x0F);
    }
}

/// <summary>Block scales for the kernels: fp16 weight scales widened four at a time and spread over lanes.</summary>
internal static class Scales
{
    /// <summary>Lane i reads element i / 8: spreads [c₀ c₁ c₂ c₃] so each of the first two blocks (or rows) of a 512-bit vector gets its own.</summary>
    public static Vector512<int> FirstPair => Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);

    /// <inheritdoc cref="FirstPair"/>
    public static Vector512<int> SecondPair => Vector512.Create(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);

    /// <summary>Four consecutive fp16 scales (an interleaved group's block), as floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector128<float> LoadFour(byte* scales) =>
        Fp16.ToSingle(Vector128.WidenLower(Vector128.CreateScalar(*(ulong*)scales).AsUInt16()));

    /// <summary>
    /// d_w·d_a for four consecutive blocks of a plain row (fp16 scale at the head of each <paramref name="blockBytes"/>-byte
    /// block) and their activation scales: one vector conversion instead of four scalar ones.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector512<float> CombineFour(byte* firstBlock, int blockBytes, float* activationScales)
    {
        var halves = Vector128.Create(*(ushort*)firstBlock, *(ushort*)(firstBlock + blockBytes),
            *(ushort*)(firstBlock + 2 * blockBytes), (uint)*(ushort*)(firstBlock + 3 * blockBytes));
        return (Fp16.ToSingle(halves) * Vector128.Load(activationScales)).ToVector256Unsafe().ToVector512Unsafe();
    }
}
