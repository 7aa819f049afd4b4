using Kiln.Kernels.Quantized;
using Kiln.Tests;
using static Kiln.Runtime.Tests.Kernels.Quantized.QuantTestData;

namespace Kiln.Runtime.Tests.Kernels.Quantized;

/// <summary>
/// Row·activation dots: every format on each kernel path in turn against the scalar path and against float64
/// arithmetic on the dequantized values, over odd shapes, by ggml's normalized error.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class DotTests
{
    // Float32 sums of up to 4096 products: observed NMSE ≤ 2e-11 on every path; one wrong block or lane is > 1e-3.
    private const double Tolerance = 1e-9;

    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void Q8_0MatchesScalarAndFloat64(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "The Q8_0 dot", KernelPathCases.AllPaths);
        CheckQuantized<Q8_0>(path);
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void Q4_0MatchesScalarAndFloat64(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "The Q4_0 dot", KernelPathCases.AllPaths);
        CheckQuantized<Q4_0>(path);
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void F32MatchesScalarAndFloat64(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "The F32 dot", KernelPathCases.NoVnniForm);
        CheckFloat<F32>(path);
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void BF16MatchesScalarAndFloat64(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "The BF16 dot", KernelPathCases.NoVnniForm);
        CheckFloat<BF16>(path);
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void HandMadeBlocksDotExactly(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "The int8 dots", KernelPathCases.AllPaths);
        // Q8_0 weights d = 1: [127, −64, 1, −1, 3, 0…]; activations d = 1: the same values.
        var x = new float[32];
        (x[0], x[1], x[2], x[3], x[4]) = (127f, -63.5f, 0.5f, -0.5f, 2.5f);
        var q8 = new byte[34];
        Q8_0.QuantizeRow(x, q8);
        var q4 = new byte[18];
        Q4_0.QuantizeRow([-8f, 3f, .. new float[30]], q4); // d = 1: weights [−8, 3, 0…]
        var activations = Q8Activations.Quantize(x, 1, 32, new byte[Q8Activations.ScratchBytes(1, 32)]);
        Assert.Equal(127f * 127 + 64 * 64 + 1 + 1 + 9, Q8_0.Dot(q8, activations[0])); // the forced path
        Assert.Equal(-8f * 127 + 3 * -64, Q4_0.Dot(q4, activations[0]));
    }

    [SkippableTheory]
    [InlineData(KernelPath.Avx2)]
    [InlineData(KernelPath.AvxVnni)]
    [InlineData(KernelPath.Avx512BW)]
    public void AMissingPathIsRefused(KernelPath path)
    {
        Skip.If(KernelPaths.IsSupported(path), $"This machine has {KernelPathCases.Instructions(path)}: refusing the {path} path is checked on machines without them.");
        var scratch = new byte[Q8Activations.ScratchBytes(1, 32)];
        Q8Activations Zeros() => Q8Activations.Quantize(new float[32], 1, 32, scratch, KernelPath.Scalar);
        Assert.Throws<PlatformNotSupportedException>(() => Q8_0.Dot(new byte[34], Zeros()[0], path));
        Assert.Throws<PlatformNotSupportedException>(() => Q4_0.Dot(new byte[18], Zeros()[0], path));
        Assert.Throws<PlatformNotSupportedException>(() => F32.Dot(new float[32], new float[32], path));
        Assert.Throws<PlatformNotSupportedException>(() => BF16.Dot(new ushort[32], new float[32], path));
        Assert.Throws<PlatformNotSupportedException>(() => { Q8Activations.Quantize(new float[32], 1, 32, scratch, path); });
        Assert.Throws<PlatformNotSupportedException>(() =>
            Interleaved.Multiply<Q4_0x4>(new byte[Interleaved.ByteCount<Q4_0x4>(4, 32)], 4, Zeros(), new float[4], 4, 0, 1, path));
        Assert.Throws<PlatformNotSupportedException>(() => KernelPaths.Force(path));
        Assert.Equal(KernelPaths.Best, KernelPaths.Active);
    }

    [Fact]
    public void UnknownPathsAreRefusedAndTheBestPathRuns()
    {
        var scratch = new byte[Q8Activations.ScratchBytes(1, 32)];
        Assert.Throws<ArgumentOutOfRangeException>(() => Q8_0.Dot(new byte[34], Q8Activations.Quantize(new float[32], 1, 32, scratch)[0], (KernelPath)42));
        Assert.Throws<ArgumentOutOfRangeException>(() => KernelPaths.Force((KernelPath)42));
        Assert.True(KernelPaths.IsSupported(KernelPaths.Best));
        Assert.Equal(KernelPaths.Best, KernelPaths.Active); // no test left a forced path behind
        using (KernelPaths.Force(KernelPath.Scalar)) Assert.Equal(KernelPath.Scalar, KernelPaths.Active);
        Assert.Equal(KernelPaths.Best, KernelPaths.Active);
    }

    private static void CheckQuantized<TFormat>(KernelPath path) where TFormat : IQuantizedFormat
    {
        foreach (int k in Ks)
            foreach (int rows in RowCounts)
                foreach (int tokens in TokenCounts)
                {
                    int rowBytes = TFormat.RowBytes(k);
                    var weights = Matrix(rows, k, seed: k * 31 + rows);
                    var encoded = Encode<TFormat>(weights, rows, k);
                    var activations = Q8Activations.Quantize(Matrix(tokens, k, seed: k * 37 + tokens), tokens, k,
                        new byte[Q8Activations.ScratchBytes(tokens, k)], KernelPath.Scalar);
                    var expected = Reference(Decode<TFormat>(encoded, rows, k), Decode(activations), rows, tokens, k);

                    var actual = new float[tokens * rows];
                    var scalar = new float[tokens * rows];
                    for (int t = 0; t < tokens; t++)
                        for (int r = 0; r < rows; r++)
                        {
                            var row = encoded.AsSpan(r * rowBytes, rowBytes);
                            actual[t * rows + r] = TFormat.Dot(row, activations[t], path);
                            scalar[t * rows + r] = TFormat.Dot(row, activations[t], KernelPath.Scalar);
                        }
                    string shape = $"{typeof(TFormat).Name} {path}: K {k}, rows {rows}, tokens {tokens}";
                    Assert.True(NormalizedError(actual, expected) < Tolerance, $"{shape}: NMSE vs float64 {NormalizedError(actual, expected)}");
                    Assert.True(NormalizedError(actual, scalar) < Tolerance, $"{shape}: NMSE vs scalar {NormalizedError(actual, scalar)}");
                }
    }

    private static void CheckFloat<TFormat>(KernelPath path) where TFormat : IFloatFormat
    {
        // Float formats take any K: the SIMD paths' remainder loops get their own shapes.
        foreach (int k in (int[])[1, 7, 17, 33, .. Ks, 100, 4097])
            foreach (int rows in RowCounts)
                foreach (int tokens in TokenCounts)
                {
                    int rowBytes = TFormat.RowBytes(k);
                    var encoded = Encode<TFormat>(Matrix(rows, k, seed: k * 41 + rows), rows, k);
                    var x = Matrix(tokens, k, seed: k * 43 + tokens);
                    var widened = new double[x.Length];
                    for (int i = 0; i < x.Length; i++) widened[i] = x[i];
                    var expected = Reference(Decode<TFormat>(encoded, rows, k), widened, rows, tokens, k);

                    var actual = new float[tokens * rows];
                    var scalar = new float[tokens * rows];
                    for (int t = 0; t < tokens; t++)
                        for (int r = 0; r < rows; r++)
                        {
                            var row = encoded.AsSpan(r * rowBytes, rowBytes);
                            actual[t * rows + r] = TFormat.Dot(row, x.AsSpan(t * k, k), path);
                            scalar[t * rows + r] = TFormat.Dot(row, x.AsSpan(t * k, k), KernelPath.Scalar);
                        }
                    string shape = $"{typeof(TFormat).Name} {path}: K {k}, rows {rows}, tokens {tokens}";
                    Assert.True(NormalizedError(actual, expected) < Tolerance, $"{shape}: NMSE vs float64 {NormalizedError(actual, expected)}");
                    Assert.True(NormalizedError(actual, scalar) < Tolerance, $"{shape}: NMSE vs scalar {NormalizedError(actual, scalar)}");
                }
    }
}

/// <summary>The hot path allocates nothing: quantize once, dot, multiply tiles, all into caller buffers.</summary>
public sealed class KernelAllocationTests
{
    [Fact]
    public void KernelsDoNotAllocate()
    {
        const int rows = 5, tokens = 3, k = 256;
        var x = QuantTestData.Matrix(tokens, k, seed: 61);
        var weights = QuantTestData.Encode<Q4_0>(QuantTestData.Matrix(rows, k, seed: 62), rows, k);
        var packed = new byte[Interleaved.ByteCount<Q4_0x4>(rows, k)];
        Interleaved.Repack<Q4_0x4>(weights, rows, k, packed);
        var scratch = new byte[Q8Activations.ScratchBytes(tokens, k)];
        var y = new float[tokens * rows];
        var floats = QuantTestData.Matrix(1, k, seed: 63);

        float sink = 0;
        void Step()
        {
            var activations = Q8Activations.Quantize(x, tokens, k, scratch);
            sink += Q4_0.Dot(weights.AsSpan(0, Q4_0.RowBytes(k)), activations[0]);
            Interleaved.Multiply<Q4_0x4>(packed, rows, activations, y);
            sink += F32.Dot(floats, x.AsSpan(0, k));
        }
        Step(); // JIT
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 20; i++) Step();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.False(float.IsNaN(sink));
    }
}
