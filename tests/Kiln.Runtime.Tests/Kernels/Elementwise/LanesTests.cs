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
        Check("erf", width, x => ErfReference(x), 0, ErfBound, Lanes.Erf, Lanes.Erf, Lanes.Erf, Lanes.Erf);
    }

    // What Lanes.Erf's comment promises (2.9e-7 measured): float's rounding in P, Q and the division, over the fit's own 9e-9.
    private const double ErfBound = 3e-7;

    /// <summary>
    /// erf within <see cref="ErfBound"/> of the double reference absolutely, and within 4e-7 of it relatively where
    /// |erf| is below ½ (GELU's 1 + erf of negative inputs needs no more), on a dense grid: every 2⁻¹⁷ over
    /// [−4.5, 4.5] (the clamp at 3.92 included), and 2000 points spaced evenly in log over [1e-30, 0.5].
    /// The vectors are filled with 16, 8 or 4 consecutive points, so lanes differ.
    /// </summary>
    [SkippableTheory]
    [MemberData(nameof(Widths))]
    public void ErfIsWithinItsBoundOnADenseGrid(int width)
    {
        SkipUnlessAccelerated(width);
        var points = new List<float>();
        for (int i = -(int)(4.5 * (1 << 17)); i <= (int)(4.5 * (1 << 17)); i++) points.Add(i / (float)(1 << 17));
        for (int i = 0; i < 2000; i++)
        {
            float tiny = (float)Math.Exp(Math.Log(1e-30) + i * (Math.Log(0.5) - Math.Log(1e-30)) / 1999);
            points.Add(tiny);
            points.Add(-tiny);
        }
        while (points.Count % 16 != 0) points.Add(0);
        float[] xs = points.ToArray(), ys = new float[xs.Length];
        for (int i = 0; i < xs.Length; i += Math.Max(width, 1))
        {
            switch (width)
            {
                case 16: Lanes.Erf(Vector512.Create(xs.AsSpan(i, 16))).CopyTo(ys.AsSpan(i)); break;
                case 8: Lanes.Erf(Vector256.Create(xs.AsSpan(i, 8))).CopyTo(ys.AsSpan(i)); break;
                case 4: Lanes.Erf(Vector128.Create(xs.AsSpan(i, 4))).CopyTo(ys.AsSpan(i)); break;
                default: ys[i] = Lanes.Erf(xs[i]); break;
            }
        }
        double worst = 0, worstRelative = 0;
        float worstAt = 0;
        for (int i = 0; i < xs.Length; i++)
        {
            double expected = ErfReference(xs[i]), error = Math.Abs(ys[i] - expected);
            if (error > worst) (worst, worstAt) = (error, xs[i]);
            if (Math.Abs(expected) < 0.5 && expected != 0) worstRelative = Math.Max(worstRelative, error / Math.Abs(expected));
            Assert.True(Math.Sign(ys[i]) == Math.Sign(xs[i]), $"erf({xs[i]}) at width {width} = {ys[i]}: the sign of x lost");
        }
        output.WriteLine($"erf, width {width}, {xs.Length} points: max abs error {worst:E3} (at {worstAt}), max relative error below |erf| = ½ {worstRelative:E3}");
        Assert.True(worst <= ErfBound, $"erf's max abs error {worst:E3} at {worstAt} exceeds {ErfBound:E1}");
        Assert.True(worstRelative <= 4e-7, $"erf's max relative error {worstRelative:E3} below |erf| = ½ exceeds 4e-7");
    }

    [SkippableTheory]
    [MemberData(nameof(Widths))]
    public void LogIsExactToAnUlp(int width)
    {
        SkipUnlessAccelerated(width);
        Check("log", width, Math.Log, 2.4e-7, 1e-30, Lanes.Log, Lanes.Log, Lanes.Log, Lanes.Log, x => x > 0);
    }

    /// <summary>
    /// Every width's erf, whose coefficients are literals, equals bit for bit the same formula evaluated here from the
    /// coefficients' definitions (<see cref="Lanes.ErfNumerator"/>, <see cref="Lanes.ErfDenominator"/>, rounded to
    /// float) by the same Estrin scheme, x clamped to ±<see cref="Lanes.ErfClamp"/>: a mistyped coefficient, even one
    /// too small for the approximation bound to notice, fails here, and so does a width computing differently.
    /// </summary>
    [SkippableTheory]
    [MemberData(nameof(Widths))]
    public void ErfUsesTheDefinedCoefficientsAtEveryWidth(int width)
    {
        SkipUnlessAccelerated(width);
        float[] numerator = Array.ConvertAll(Lanes.ErfNumerator, c => (float)c), denominator = Array.ConvertAll(Lanes.ErfDenominator, c => (float)c);
        foreach (double point in Points)
        {
            var x = Vector128.Create((float)point);
            Vector128<float> clamped = Vector128.Min(Vector128.Max(x, Vector128.Create(-Lanes.ErfClamp)), Vector128.Create(Lanes.ErfClamp));
            Vector128<float> y = clamped * clamped;
            float expected = (clamped * Estrin(numerator, y) / Estrin(denominator, y)).ToScalar();
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
