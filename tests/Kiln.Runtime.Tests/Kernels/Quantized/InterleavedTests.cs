using Kiln.Kernels.Quantized;
using Kiln.Tests;
using static Kiln.Runtime.Tests.Kernels.Quantized.QuantTestData;

namespace Kiln.Runtime.Tests.Kernels.Quantized;

/// <summary>
/// Repacked 4-row groups and their GEMM tiles, on each kernel path in turn: the scalar tile equals the plain scalar
/// dot bit for bit (same arithmetic, new layout), and every SIMD tile matches it and float64 on odd row and token
/// counts.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class InterleavedTests
{
    private const double Tolerance = 1e-9; // as DotTests: observed ≤ 2e-12

    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void Q8_0x4TilesMatchTheRowDots(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "The Q8_0x4 tile", KernelPathCases.AllPaths);
        CheckTiles<Q8_0, Q8_0x4>(path);
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void Q4_0x4TilesMatchTheRowDots(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "The Q4_0x4 tile", KernelPathCases.AllPaths);
        CheckTiles<Q4_0, Q4_0x4>(path);
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void A_RangeOfGroupsWritesOnlyItsRowsAtTheGivenStride(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "The Q4_0x4 tile", KernelPathCases.AllPaths);
        const int rows = 17, tokens = 5, k = 96, stride = 21;
        var encoded = Encode<Q4_0>(Matrix(rows, k, seed: 51), rows, k);
        var packed = new byte[Interleaved.ByteCount<Q4_0x4>(rows, k)];
        Interleaved.Repack<Q4_0x4>(encoded, rows, k, packed);
        var activations = Q8Activations.Quantize(Matrix(tokens, k, seed: 52), tokens, k, new byte[Q8Activations.ScratchBytes(tokens, k)]);

        var y = new float[tokens * stride];
        Array.Fill(y, float.NaN);
        Interleaved.Multiply<Q4_0x4>(packed, rows, activations, y, stride, firstGroup: 1, groupCount: 1, path); // rows 4..7
        Interleaved.Multiply<Q4_0x4>(packed, rows, activations, y, stride, firstGroup: 4, groupCount: 1, path); // row 16 alone
        for (int t = 0; t < tokens; t++)
            for (int column = 0; column < stride; column++)
            {
                bool written = column is >= 4 and < 8 or 16;
                Assert.Equal(written, !float.IsNaN(y[t * stride + column]));
                if (written)
                {
                    float expected = Q4_0.Dot(encoded.AsSpan(column * 18 * 3, 18 * 3), activations[t], KernelPath.Scalar);
                    Assert.True(Math.Abs(expected - y[t * stride + column]) <= 1e-5 * (1 + Math.Abs(expected)));
                }
            }
    }

    [Fact]
    public void LayoutIsPaddedToCacheLines()
    {
        Assert.Equal(64 + 3 * 64, Q4_0x4.GroupBytes(96));       // 24 bytes of scales padded to 64, then 3 × 64
        Assert.Equal(64 + 3 * 128, Q8_0x4.GroupBytes(96));
        Assert.Equal(1024 + 128 * 64, Q4_0x4.GroupBytes(4096)); // 128 blocks × 8 bytes of scales: already a multiple of 64
        Assert.Equal(5 * Q4_0x4.GroupBytes(64), Interleaved.ByteCount<Q4_0x4>(17, 64));
        Assert.Equal(0, Interleaved.GroupCount(0));
        Assert.Equal(5, Interleaved.GroupCount(17));
    }

    [Fact]
    public void BadShapesAreRejected()
    {
        var packed = new byte[Interleaved.ByteCount<Q8_0x4>(5, 64)];
        var scratch = new byte[Q8Activations.ScratchBytes(2, 64)];
        Assert.Throws<ArgumentException>(() => Interleaved.Repack<Q8_0x4>(new byte[5 * 68 - 1], 5, 64, packed));
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            Interleaved.Multiply<Q8_0x4>(packed, 5, Q8Activations.Quantize(new float[128], 2, 64, scratch), new float[10], 5, 1, 2, KernelPath.Scalar));
        Assert.Throws<ArgumentException>(() =>
            Interleaved.Multiply<Q8_0x4>(packed, 5, Q8Activations.Quantize(new float[128], 2, 64, scratch), new float[9], 5, 0, 2, KernelPath.Scalar));
    }

    private static void CheckTiles<TRow, TPacked>(KernelPath path) where TRow : IQuantizedFormat where TPacked : IInterleavedFormat
    {
        foreach (int k in Ks)
            foreach (int rows in RowCounts)
                foreach (int tokens in TokenCounts)
                {
                    int rowBytes = TRow.RowBytes(k);
                    var encoded = Encode<TRow>(Matrix(rows, k, seed: k * 53 + rows), rows, k);
                    var packed = new byte[Interleaved.ByteCount<TPacked>(rows, k)];
                    Interleaved.Repack<TPacked>(encoded, rows, k, packed);
                    var activations = Q8Activations.Quantize(Matrix(tokens, k, seed: k * 59 + tokens), tokens, k,
                        new byte[Q8Activations.ScratchBytes(tokens, k)], KernelPath.Scalar);
                    var expected = Reference(Decode<TRow>(encoded, rows, k), Decode(activations), rows, tokens, k);

                    var rowDots = new float[tokens * rows];
                    for (int t = 0; t < tokens; t++)
                        for (int r = 0; r < rows; r++)
                            rowDots[t * rows + r] = TRow.Dot(encoded.AsSpan(r * rowBytes, rowBytes), activations[t], KernelPath.Scalar);

                    var y = new float[tokens * rows];
                    Interleaved.Multiply<TPacked>(packed, rows, activations, y, rows, 0, Interleaved.GroupCount(rows), path);
                    string shape = $"{typeof(TPacked).Name} {path}: K {k}, rows {rows}, tokens {tokens}";
                    if (path == KernelPath.Scalar)
                        Assert.True(rowDots.AsSpan().SequenceEqual(y), $"{shape}: the scalar tile differs from the scalar row dot");
                    Assert.True(NormalizedError(y, expected) < Tolerance, $"{shape}: NMSE vs float64 {NormalizedError(y, expected)}");
                    Assert.True(NormalizedError(y, rowDots) < Tolerance, $"{shape}: NMSE vs scalar {NormalizedError(y, rowDots)}");
                }
    }
}
