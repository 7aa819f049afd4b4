namespace Kiln;

/// <summary>
/// erf in double for the eager reference (.NET has no Math.Erf): its Maclaurin series below |x| = 2 (at most ~54×
/// cancellation there, so ~1e-14 absolute), and erfc's continued fraction above (1 − erf(x) is then below 5e-3).
/// </summary>
internal static class ErrorFunction
{
    private const double TwoOverSqrtPi = 1.1283791670955126; // 2/√π

    public static double Erf(double x)
    {
        if (double.IsNaN(x)) return double.NaN;
        double a = Math.Abs(x);
        double value = a < 2 ? Series(a) : 1.0 - ContinuedFractionErfc(a);
        return x < 0 ? -value : value;
    }

    // erf(x) = 2/√π · Σ (−1)ⁿ x^(2n+1) / (n!·(2n+1))
    private static double Series(double x)
    {
        double x2 = x * x, power = x, sum = x;
        for (int n = 1; n < 60; n++)
        {
            power *= -x2 / n;
            double term = power / (2 * n + 1);
            sum += term;
            if (Math.Abs(term) < 1e-17 * Math.Abs(sum)) break;
        }
        return TwoOverSqrtPi * sum;
    }

    // erfc(x) = e^(−x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …)))), evaluated from a fixed depth backwards.
    private static double ContinuedFractionErfc(double x)
    {
        if (x > 27) return 0; // e^(−x²) underflows
        double f = x;
        for (int k = 80; k >= 1; k--) f = x + k / 2.0 / f;
        return Math.Exp(-x * x) / Math.Sqrt(Math.PI) / f;
    }
}
