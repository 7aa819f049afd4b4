using System.Runtime.InteropServices;
using Kiln.Kernels.Quantized;
using Kiln.Tests;
using static Kiln.Runtime.Tests.Kernels.Quantized.QuantTestData;

namespace Kiln.Runtime.Tests.Kernels.Quantized;

/// <summary>
/// Quantizing a matmul's input once into Q8 blocks, on each kernel path in turn: the scalar bits on every path, and
/// the same quants as Q8_0's reference quantizer.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class ActivationTests
{
    private const string Kernel = "Q8 activation quantization";

    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void EveryPathProducesTheScalarBits(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, Kernel, KernelPathCases.NoVnniForm);
        const int tokens = 5, k = 4096;
        var x = Matrix(tokens, k, seed: 21);
        x[7] = 127f; x[8] = -63.5f; x[9] = 0.5f; x[10] = -0.5f;   // a block of exact halves, d = 1

        var expected = Q8Activations.Quantize(x, tokens, k, new byte[Q8Activations.ScratchBytes(tokens, k)], KernelPath.Scalar);
        var actual = Q8Activations.Quantize(x, tokens, k, new byte[Q8Activations.ScratchBytes(tokens, k)]); // the forced path
        Assert.True(expected.Quants.SequenceEqual(actual.Quants), $"{path}: quants differ from the scalar ones");
        Assert.True(expected.Scales.SequenceEqual(actual.Scales), $"{path}: scales differ from the scalar ones");
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void QuantsMatchQ8_0(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, Kernel, KernelPathCases.NoVnniForm);
        foreach (int k in Ks)
        {
            var x = Matrix(1, k, seed: 22 + k);
            var row = Q8Activations.Quantize(x, 1, k, new byte[Q8Activations.ScratchBytes(1, k)], path)[0];
            var q8 = new byte[Q8_0.RowBytes(k)];
            Q8_0.QuantizeRow(x, q8);
            for (int block = 0; block < k / 32; block++)
            {
                var weights = MemoryMarshal.Cast<byte, sbyte>(q8.AsSpan(block * 34 + 2, 32));
                Assert.True(weights.SequenceEqual(row.Quants.Slice(block * 32, 32)), $"{path} K {k}, block {block}");
                Assert.Equal(BitConverter.ToUInt16(q8, block * 34), Fp16.FromSingle(row.Scales[block]));
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void HandMadeBlockRoundsHalvesAwayFromZero(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, Kernel, KernelPathCases.NoVnniForm);
        var x = new float[32];
        (x[0], x[1], x[2], x[3], x[4]) = (127f, -63.5f, 0.5f, -0.5f, 2.5f);
        var row = Q8Activations.Quantize(x, 1, 32, new byte[Q8Activations.ScratchBytes(1, 32)], path)[0];
        Assert.Equal([127, -64, 1, -1, 3], row.Quants[..5].ToArray());
        Assert.Equal(1f, row.Scales[0]);
    }

    [Fact]
    public void ViewsSliceTokens()
    {
        const int tokens = 3, k = 64;
        Assert.Equal(tokens * (k + 2 * sizeof(float)), Q8Activations.ScratchBytes(tokens, k));
        var x = Matrix(tokens, k, seed: 23);
        var all = Q8Activations.Quantize(x, tokens, k, new byte[Q8Activations.ScratchBytes(tokens, k)]);
        var tail = all.Slice(1, 2);
        Assert.Equal((2, k, 2), (tail.Tokens, tail.K, tail.BlocksPerToken));
        Assert.True(all[2].Quants.SequenceEqual(tail[1].Quants));
        Assert.True(all[2].Scales.SequenceEqual(tail[1].Scales));

        var single = new Q8Activations(new byte[Q8Activations.ScratchBytes(tokens, k)], tokens, k);
        single.QuantizeToken(2, x.AsSpan(2 * k, k), KernelPath.Scalar);
        Assert.True(all[2].Quants.SequenceEqual(single[2].Quants));
    }

    [Fact]
    public void ShortScratchIsRejected()
    {
        Assert.Throws<ArgumentException>(() => { new Q8Activations(new byte[Q8Activations.ScratchBytes(2, 64) - 1], 2, 64); });
        Assert.Throws<ArgumentException>(() => { Q8Activations.Quantize(new float[63], 1, 64, new byte[1024]); });
    }
}
