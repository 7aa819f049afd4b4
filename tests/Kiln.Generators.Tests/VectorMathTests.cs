using Kiln.Kernels;

namespace Kiln.Generators.Tests;

/// <summary>
/// Every building block the generated kernels call: the Vector512 and Vector256 paths against the scalar path (the
/// oracle), on odd lengths so that the remainder loops run. Each path is called directly, whatever the machine picks.
/// </summary>
public sealed class VectorMathTests
{
    public static TheoryData<int> Lengths => new() { 0, 1, 7, 15, 16, 17, 33, 100, 1000 };

    private static float[] Random(int length, int seed, float scale = 1f)
    {
        var random = new Random(seed);
        var values = new float[length];
        for (int i = 0; i < length; i++) values[i] = (float)(random.NextDouble() * 2 - 1) * scale;
        return values;
    }

    /// <summary>Close within float rounding of a length-n reduction: relative to the sum of magnitudes.</summary>
    private static void AssertClose(double expected, double actual, double magnitude, string path)
    {
        double tolerance = 1e-6 * Math.Max(1, magnitude);
        Assert.True(Math.Abs(expected - actual) <= tolerance, $"{path}: expected {expected}, got {actual} (tolerance {tolerance})");
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void Dot(int length)
    {
        var a = Random(length, 1);
        var b = Random(length, 2);
        double magnitude = a.Zip(b, (x, y) => Math.Abs((double)x * y)).Sum();
        float expected = VectorMath.DotScalar(a, b);
        AssertClose(expected, VectorMath.DotVector512(a, b), magnitude, "Vector512");
        AssertClose(expected, VectorMath.DotVector256(a, b), magnitude, "Vector256");
        AssertClose(expected, VectorMath.Dot(a, b), magnitude, "dispatch");
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void SumOfSquares(int length)
    {
        var x = Random(length, 3);
        double magnitude = x.Sum(v => (double)v * v);
        float expected = VectorMath.SumOfSquaresScalar(x);
        AssertClose(expected, VectorMath.SumOfSquaresVector512(x), magnitude, "Vector512");
        AssertClose(expected, VectorMath.SumOfSquaresVector256(x), magnitude, "Vector256");
        AssertClose(expected, VectorMath.SumOfSquares(x), magnitude, "dispatch");
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void ScaleAdd(int length)
    {
        var source = Random(length, 4);
        var start = Random(length, 5);
        var expected = (float[])start.Clone();
        VectorMath.ScaleAddScalar(expected, source, 0.37f);
        foreach (var (name, path) in new (string, Action<float[]>)[]
        {
            ("Vector512", d => VectorMath.ScaleAddVector512(d, source, 0.37f)),
            ("Vector256", d => VectorMath.ScaleAddVector256(d, source, 0.37f)),
            ("dispatch", d => VectorMath.ScaleAdd(d, source, 0.37f)),
        })
        {
            var actual = (float[])start.Clone();
            path(actual);
            for (int i = 0; i < length; i++) AssertClose(expected[i], actual[i], 1, $"{name}[{i}]");
        }
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void Softmax(int length)
    {
        var start = Random(length, 6, scale: 20f);
        var expected = (float[])start.Clone();
        VectorMath.SoftmaxScalar(expected);
        if (length > 0) AssertClose(1.0, expected.Sum(v => (double)v), length, "scalar sums to one");
        foreach (var (name, path) in new (string, Action<float[]>)[]
        {
            ("Vector512", d => VectorMath.SoftmaxVector512(d)),
            ("Vector256", d => VectorMath.SoftmaxVector256(d)),
            ("dispatch", d => VectorMath.Softmax(d)),
        })
        {
            var actual = (float[])start.Clone();
            path(actual);
            for (int i = 0; i < length; i++) AssertClose(expected[i], actual[i], 1, $"{name}[{i}]");
        }
    }

    [Fact]
    public void SoftmaxOfEqualLargeScoresIsUniform()
    {
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
