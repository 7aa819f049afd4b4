using System.Runtime.Intrinsics;
using Kiln.Kernels.Quantized;
using Kiln.Tests;

namespace Kiln.Runtime.Tests.Kernels.Quantized;

/// <summary>The kernels' bit-moving fp16 widening equals the BCL conversion on all 65536 halves, on each kernel path.</summary>
[Collection(KernelPathCollection.Name)]
public sealed class Fp16Tests
{
    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    [Fact]
    public void EveryHalfWidensExactly()
    {
        for (int bits = 0; bits <= ushort.MaxValue; bits += 4)
        {
            var vector = Fp16.ToSingle(Vector128.Create((uint)bits, (uint)bits + 1, (uint)bits + 2, (uint)bits + 3));
            for (int lane = 0; lane < 4; lane++)
            {
                float expected = (float)BitConverter.UInt16BitsToHalf((ushort)(bits + lane));
                AssertSame(expected, Fp16.ToSingle((ushort)(bits + lane)), bits + lane);
                AssertSame(expected, vector.GetElement(lane), bits + lane);
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void SpansOfEveryHalfWidenExactly(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Widening an F16 span", KernelPathCases.NoVnniForm);
        // 65536 halves plus a tail that is not a whole vector, from an odd offset: the vector loop and the scalar tail.
        var halves = new Half[65536 + 37];
        for (int i = 0; i < halves.Length; i++) halves[i] = BitConverter.UInt16BitsToHalf((ushort)(i * 40503));
        var floats = new float[halves.Length];
        Fp16.ToSingle(halves.AsSpan(1), floats.AsSpan(1));
        for (int i = 1; i < halves.Length; i++) AssertSame((float)halves[i], floats[i], BitConverter.HalfToUInt16Bits(halves[i]));
        Assert.Equal(0f, floats[0]);
    }

    private static void AssertSame(float expected, float actual, int bits)
    {
        if (float.IsNaN(expected)) Assert.True(float.IsNaN(actual), $"0x{bits:X4}");
        else Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(actual), $"0x{bits:X4}: {expected} vs {actual}");
    }
}
