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

    public static TheoryData<int> VectorWidths => new() { 16, 8, 4 };

    /// <summary>
    /// The vectors' erf, whose coefficients are literals, equals bit for bit the same formula evaluated here from the
    /// coefficients' definitions (2/√π·(−1)ⁿ/(n!·(2n + 1)) for the series, the scalar form's erfc polynomial rounded to
    /// float) by the same Estrin scheme, |x| clamped to 4 for the erfc: a mistyped coefficient, even one too small for
    /// the approximation bound to notice, fails here.
    /// </summary>
    [SkippableTheory]
    [MemberData(nameof(VectorWidths))]
    public void ErfVectorsUseTheDefinedCoefficients(int width)
    {
        SkipUnlessAccelerated(width);
        var series = new float[12];
        double factorial = 1;
        for (int n = 0; n < series.Length; n++)
        {
            if (n > 0) factorial *= n;
            series[n] = (float)(2 / Math.Sqrt(Math.PI) * (n % 2 == 0 ? 1 : -1) / (factorial * (2 * n + 1)));
        }
        float[] erfc = Array.ConvertAll(Lanes.ErfcCoefficients, c => (float)c);
        foreach (double point in Points)
        {
            var x = Vector128.Create((float)point);
            Vector128<float> a = Vector128.Abs(x), clamped = Vector128.Min(a, Vector128.Create(4f));
            Vector128<float> s = Estrin(series, x * x);
            Vector128<float> t = Vector128<float>.One / Vector128.FusedMultiplyAdd(clamped, Vector128.Create(0.5f), Vector128<float>.One);
            Vector128<float> p = Estrin(erfc, t);
            Vector128<float> tail = Vector128<float>.One - t * Lanes.Exp(p - clamped * clamped);
            float expected = Vector128.ConditionalSelect(Vector128.LessThan(a, Vector128<float>.One), x * s, Vector128.CopySign(tail, x)).ToScalar();
            foreach (float lane in Apply(width, (float)point, Lanes.Erf, Lanes.Erf, Lanes.Erf, Lanes.Erf))
                Assert.True(BitConverter.SingleToInt32Bits(lane) == BitConverter.SingleToInt32Bits(expected), $"erf({(float)point}) at width {width} = {lane}, the defined coefficients give {expected}");
        }
    }

    /// <summary>
    /// Σ cᵢ·yⁱ by Estrin's scheme: adjacent pairs c₂ᵢ + c₂ᵢ₊₁·y, then adjacent pairs of those with y², y⁴, … (an odd
    /// last term carried up unchanged) until one is left.
    /// </summary>
    private static Vector128<float> Estrin(float[] coefficients, Vector128<float> y)
    {
        var terms = Array.ConvertAll(coefficients, Vector128.Create);
        for (Vector128<float> power = y; terms.Length > 1; power *= power)
        {
            var next = new Vector128<float>[(terms.Length + 1) / 2];
            for (int i = 0; i < terms.Length / 2; i++) next[i] = Vector128.FusedMultiplyAdd(terms[2 * i + 1], power, terms[2 * i]);
            if (terms.Length % 2 == 1) next[^1] = terms[^1];
            terms = next;
        }
        return terms[0];
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

    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    /// <summary>
    /// Σx², mean and variance against the eager norms' sums, on each path, for rows that end in every part of the
    /// vector loops (rounds of 32, one of 16, a scalar tail; 384 is MiniLM's row) and far from zero mean.
    /// </summary>
    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void RowStatisticsAreTheEagerNormsSums(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Row statistics", KernelPathCases.NoVnniForm);
        const int seed = 11;
        output.WriteLine($"seed {seed}");
        var random = new Random(seed);
        foreach (int count in new[] { 190, 384, 48, 16, 7, 1 })
        {
            float offset = count == 48 ? 40f : 0f;
            var values = new float[count + 13];
            for (int i = 0; i < values.Length; i++) values[i] = offset + (float)(random.NextDouble() * 6 - 3);
            using var memory = new NativeBlock(values.Length * sizeof(float));
            var buffer = memory.Floats(0, values.Length);
            values.CopyTo(buffer.Span);

            double squares = 0, sum = 0;
            for (int i = 5; i < 5 + count; i++) { squares += (double)values[i] * values[i]; sum += values[i]; }
            double mean = sum / count, variance = 0;
            for (int i = 5; i < 5 + count; i++) variance += (values[i] - mean) * (values[i] - mean);
            variance /= count;

            Assert.Equal(squares, RowStatistics.SumOfSquares(buffer, 5, count), 1e-9 * Math.Max(1, squares));
            Assert.Equal(1.0 / Math.Sqrt(squares / count + 1e-5), RowStatistics.InverseRms(buffer, 5, count, 1e-5), 1e-12);
            RowStatistics.Moments(buffer, 5, count, out double m, out double v);
            Assert.Equal(mean, m, 1e-12 * Math.Max(1, Math.Abs(mean)));
            Assert.Equal(variance, v, 1e-9);
            Assert.Throws<ArgumentOutOfRangeException>(() => RowStatistics.SumOfSquares(buffer, 20, count));
            output.WriteLine($"{count} values (mean {mean:F3}): within 1e-12 / 1e-9");
        }
    }
}
