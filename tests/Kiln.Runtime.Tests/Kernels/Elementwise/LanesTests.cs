using System.Runtime.Intrinsics;
using Kiln.Kernels.Elementwise;
using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.Runtime.Tests.Kernels.Elementwise;

/// <summary>
/// The primitives generated loops are composed from, at every width, against double-precision references; and the
/// row statistics against the eager norms' own sums.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class LanesTests(ITestOutputHelper output)
{
    private static readonly double[] Points = MakePoints();

    private static double[] MakePoints()
    {
        var points = new List<double>();
        for (double x = -30; x <= 30; x += 0.0371) points.Add(x);
        points.AddRange([0, 1e-8, -1e-8, 1e-4, -1e-4, 0.5, -0.5, 87, -87, 90, -90]);
        return points.ToArray();
    }

    public static TheoryData<int> Widths => new() { 16, 8, 4, 1 };

    private static void SkipUnlessAccelerated(int width) =>
        Skip.IfNot(width switch { 16 => Vector512.IsHardwareAccelerated, 8 => Vector256.IsHardwareAccelerated, 4 => Vector128.IsHardwareAccelerated, _ => true },
            $"This machine does not accelerate {width * 32}-bit vectors, so no path runs that width here.");

    /// <summary>Applies the width's overload lane by lane (a vector filled with one point in every lane, then each lane checked).</summary>
    private static float[] Apply(int width, float x, Func<Vector512<float>, Vector512<float>> v512, Func<Vector256<float>, Vector256<float>> v256,
        Func<Vector128<float>, Vector128<float>> v128, Func<float, float> scalar)
    {
        var lanes = new float[Math.Max(width, 1)];
        switch (width)
        {
            case 16: v512(Vector512.Create(x)).CopyTo(lanes); break;
            case 8: v256(Vector256.Create(x)).CopyTo(lanes); break;
            case 4: v128(Vector128.Create(x)).CopyTo(lanes); break;
            default: lanes[0] = scalar(x); break;
        }
        return lanes;
    }

    private void Check(string name, int width, Func<double, double> reference, double relative, double absolute,
        Func<Vector512<float>, Vector512<float>> v512, Func<Vector256<float>, Vector256<float>> v256,
        Func<Vector128<float>, Vector128<float>> v128, Func<float, float> scalar, Func<double, bool>? domain = null)
    {
        double worst = 0;
        foreach (double point in Points)
        {
            if (domain is not null && !domain(point)) continue;
            float x = (float)point;
            double expected = reference(x);
            foreach (float lane in Apply(width, x, v512, v256, v128, scalar))
            {
                double error = Math.Abs(lane - expected);
                Assert.True(error <= absolute + relative * Math.Abs(expected), $"{name}({x}) at width {width} = {lane}, expected {expected}");
                worst = Math.Max(worst, error / (absolute + relative * Math.Abs(expected)));
            }
        }
        output.WriteLine($"{name}, width {width}: worst error {worst:P0} of the bound");
    }

    [SkippableTheory]
    [MemberData(nameof(Widths))]
    public void ExpIsWithinTwoMillionthsRelative(int width)
    {
        SkipUnlessAccelerated(width);
        Check("exp", width, x => Math.Exp(Math.Clamp(x, -87, 87)), 3e-7, 1e-38, Lanes.Exp, Lanes.Exp, Lanes.Exp, Lanes.Exp, x => Math.Abs(x) <= 87);
    }

    [SkippableTheory]
    [MemberData(nameof(Widths))]
    public void TanhIsExactToFloatRoundingEvenNearZero(int width)
    {
        SkipUnlessAccelerated(width);
        Check("tanh", width, Math.Tanh, 1.2e-7, 1e-30, Lanes.Tanh, Lanes.Tanh, Lanes.Tanh, Lanes.Tanh);
    }

    [SkippableTheory]
    [MemberData(nameof(Widths))]
    public void ErfIsWithinItsApproximationBound(int width)
    {
        SkipUnlessAccelerated(width);
        Check("erf", width, x => ErfReference(x), 0, 2.5e-7, Lanes.Erf, Lanes.Erf, Lanes.Erf, Lanes.Erf);
    }

    [SkippableTheory]
    [MemberData(nameof(Widths))]
    public void LogIsExactToAnUlp(int width)
    {
        SkipUnlessAccelerated(width);
        Check("log", width, Math.Log, 2.4e-7, 1e-30, Lanes.Log, Lanes.Log, Lanes.Log, Lanes.Log, x => x > 0);
    }

    /// <summary>erf from the eager reference's own double implementation (a series and a continued fraction).</summary>
    private static double ErfReference(double x) => ErrorFunction.Erf(x);

    [SkippableTheory]
    [MemberData(nameof(KernelPathCases.All), MemberType = typeof(KernelPathCases))]
    public void GeneratedLoopsTakeTheActivePathsWidth(KernelPath path)
    {
        KernelPathCases.SkipUnlessSupported(path);
        using (KernelPaths.Force(path))
        {
            Assert.Equal(path == KernelPath.Avx512BW, Lanes.Use512);
            Assert.Equal(path != KernelPath.Scalar, Lanes.Use256);
        }
        Assert.Equal(KernelPaths.Best == KernelPath.Avx512BW, Lanes.Use512);
    }

    [Fact]
    public unsafe void RowStatisticsAreTheEagerNormsSums()
    {
        var random = new Random(11);
        var values = new float[203];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(random.NextDouble() * 6 - 3);
        using var memory = new NativeBlock(values.Length * sizeof(float));
        var buffer = memory.Floats(0, values.Length);
        values.CopyTo(buffer.Span);

        double squares = 0, sum = 0;
        for (int i = 5; i < 5 + 190; i++) { squares += (double)values[i] * values[i]; sum += values[i]; }
        double mean = sum / 190, variance = 0;
        for (int i = 5; i < 5 + 190; i++) variance += (values[i] - mean) * (values[i] - mean);
        variance /= 190;

        Assert.Equal(squares, RowStatistics.SumOfSquares(buffer, 5, 190), 1e-9);
        Assert.Equal(1.0 / Math.Sqrt(squares / 190 + 1e-5), RowStatistics.InverseRms(buffer, 5, 190, 1e-5), 1e-12);
        RowStatistics.Moments(buffer, 5, 190, out double m, out double v);
        Assert.Equal(mean, m, 1e-12);
        Assert.Equal(variance, v, 1e-9);
        Assert.Throws<ArgumentOutOfRangeException>(() => RowStatistics.SumOfSquares(buffer, 20, 190));
    }
}
