using Kiln.Kernels;
using Kiln.Kernels.Quantized;
using Kiln.Tests;

namespace Kiln.Generators.Tests;

/// <summary>
/// Every building block the generated kernels call, through the entry point they call, on each kernel path in turn
/// (Vector512, Vector256, scalar), against float64 and the scalar path (the oracle), on odd lengths so that the
/// remainder loops run. AVX-VNNI has no float work and runs the Vector256 code.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class VectorMathTests
{
    private static readonly int[] Lengths = [0, 1, 7, 15, 16, 17, 33, 100, 1000];

    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    private static float[] Random(int length, int seed, float scale = 1f)
    {
        var random = new Random(seed);
        var values = new float[length];
        for (int i = 0; i < length; i++) values[i] = (float)(random.NextDouble() * 2 - 1) * scale;
        return values;
    }

    /// <summary>Close within float rounding of a length-n reduction: relative to the sum of magnitudes.</summary>
    private static void AssertClose(double expected, double actual, double magnitude, string what)
    {
        double tolerance = 1e-6 * Math.Max(1, magnitude);
        Assert.True(Math.Abs(expected - actual) <= tolerance, $"{what}: expected {expected}, got {actual} (tolerance {tolerance})");
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void Dot(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "VectorMath.Dot", KernelPathCases.NoVnniForm);
        foreach (int length in Lengths)
        {
            var a = Random(length, 1);
            var b = Random(length, 2);
            double magnitude = a.Zip(b, (x, y) => Math.Abs((double)x * y)).Sum();
            double exact = a.Zip(b, (x, y) => (double)x * y).Sum();
            float actual = VectorMath.Dot(a, b);
            AssertClose(exact, actual, magnitude, $"{path}, length {length}, float64");
            AssertClose(VectorMath.DotScalar(a, b), actual, magnitude, $"{path}, length {length}, scalar");
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void SumOfSquares(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "VectorMath.SumOfSquares", KernelPathCases.NoVnniForm);
        foreach (int length in Lengths)
        {
            var x = Random(length, 3);
            double exact = x.Sum(v => (double)v * v);
            float actual = VectorMath.SumOfSquares(x);
            AssertClose(exact, actual, exact, $"{path}, length {length}, float64");
            AssertClose(VectorMath.SumOfSquaresScalar(x), actual, exact, $"{path}, length {length}, scalar");
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void ScaleAdd(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "VectorMath.ScaleAdd", KernelPathCases.NoVnniForm);
        foreach (int length in Lengths)
        {
            var source = Random(length, 4);
            var start = Random(length, 5);
            var scalar = (float[])start.Clone();
            VectorMath.ScaleAddScalar(scalar, source, 0.37f);
            var actual = (float[])start.Clone();
            VectorMath.ScaleAdd(actual, source, 0.37f);
            for (int i = 0; i < length; i++)
            {
                AssertClose(start[i] + 0.37 * source[i], actual[i], 1, $"{path}, length {length}, [{i}] float64");
                AssertClose(scalar[i], actual[i], 1, $"{path}, length {length}, [{i}] scalar");
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void Softmax(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "VectorMath.Softmax", KernelPathCases.NoVnniForm);
        foreach (int length in Lengths)
        {
            var start = Random(length, 6, scale: 20f);
            double max = length > 0 ? start.Max() : 0, sum = start.Sum(v => Math.Exp(v - max));
            var scalar = (float[])start.Clone();
            VectorMath.SoftmaxScalar(scalar);
            var actual = (float[])start.Clone();
            VectorMath.Softmax(actual);
            if (length > 0) AssertClose(1.0, actual.Sum(v => (double)v), length, $"{path}, length {length}: sums to one");
            for (int i = 0; i < length; i++)
            {
                AssertClose(Math.Exp(start[i] - max) / sum, actual[i], 1, $"{path}, length {length}, [{i}] float64");
                AssertClose(scalar[i], actual[i], 1, $"{path}, length {length}, [{i}] scalar");
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void SoftmaxOfEqualLargeScoresIsUniform(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "VectorMath.Softmax", KernelPathCases.NoVnniForm);
        var scores = Enumerable.Repeat(1e4f, 33).ToArray();
        VectorMath.Softmax(scores);
        Assert.All(scores, s => Assert.Equal(1f / 33, s, 1e-6f));
    }

    [Fact]
    public void LengthMismatchThrows()
    {
        Assert.Throws<ArgumentException>(() => VectorMath.DotScalar(new float[3], new float[4]));
        Assert.Throws<ArgumentException>(() => VectorMath.DotVector512(new float[3], new float[4]));
        Assert.Throws<ArgumentException>(() => VectorMath.ScaleAddVector256(new float[3], new float[4], 1f));
    }
}
