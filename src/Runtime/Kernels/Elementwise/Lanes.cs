using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Kiln.Kernels.Quantized;

namespace Kiln.Kernels.Elementwise;

/// <summary>
/// The math primitives the generator composes elementwise kernels from, one overload per width (Vector512,
/// Vector256, Vector128 and float), so a fused loop body renders the same at every width: e^x, ln x, tanh and erf.
/// Activations are not here — GELU, SiLU, sigmoid, softplus and soft-capping are built from these by the generator
/// (Kiln.Generators' elementwise emitter), so a new activation never needs a new runtime routine.
/// <para>
/// e^x is a polynomial inlined into the loop (the BCL's vector Exp is a call); tanh goes through double, where
/// 1 − 2/(e^2x + 1) keeps float32 accuracy without a cancellation near zero; erf's vectors stay in float (a series
/// near zero, the erfc approximation beyond), as GELU runs it on every output of an up projection.
/// </para>
/// </summary>
public static class Lanes
{
    /// <summary>
    /// True when generated loops take their Vector512 path: the active kernel path (<see cref="KernelPaths.Active"/>)
    /// is AVX-512. Read once per loop, never per element.
    /// </summary>
    public static bool Use512
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => KernelPaths.Uses512Bits;
    }

    /// <summary>True when generated loops take their Vector256 path (for what the 512-bit one left, or all of it): any vector path.</summary>
    public static bool Use256
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => KernelPaths.UsesVectors;
    }

    // ---- e^x: x = n·ln2 + r, |r| ≤ ln2/2, e^r by a degree-6 polynomial (relative error < 2e-7), 2^n into the exponent.
    // Inputs are clamped to ±87: e^87 is near float.MaxValue, and below −87 the exact result rounds to ~0 anyway.

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        x = Vector512.Min(Vector512.Max(x, Vector512.Create(-87f)), Vector512.Create(87f));
        Vector512<float> n = Vector512.Round(x * Vector512.Create(1.44269504f));
        Vector512<float> r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-0.693145752f), x);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-1.42860677e-6f), r);
        Vector512<float> p = Vector512.Create(1f / 720);
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1f / 120));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1f / 24));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1f / 6));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(0.5f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512<float>.One);
        p = Vector512.FusedMultiplyAdd(p, r, Vector512<float>.One);
        return (p.AsInt32() + (Vector512.ConvertToInt32(n) << 23)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        x = Vector256.Min(Vector256.Max(x, Vector256.Create(-87f)), Vector256.Create(87f));
        Vector256<float> n = Vector256.Round(x * Vector256.Create(1.44269504f));
        Vector256<float> r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-0.693145752f), x);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-1.42860677e-6f), r);
        Vector256<float> p = Vector256.Create(1f / 720);
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1f / 120));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1f / 24));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1f / 6));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(0.5f));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256<float>.One);
        p = Vector256.FusedMultiplyAdd(p, r, Vector256<float>.One);
        return (p.AsInt32() + (Vector256.ConvertToInt32(n) << 23)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Exp(Vector128<float> x)
    {
        x = Vector128.Min(Vector128.Max(x, Vector128.Create(-87f)), Vector128.Create(87f));
        Vector128<float> n = Vector128.Round(x * Vector128.Create(1.44269504f));
        Vector128<float> r = Vector128.FusedMultiplyAdd(n, Vector128.Create(-0.693145752f), x);
        r = Vector128.FusedMultiplyAdd(n, Vector128.Create(-1.42860677e-6f), r);
        Vector128<float> p = Vector128.Create(1f / 720);
        p = Vector128.FusedMultiplyAdd(p, r, Vector128.Create(1f / 120));
        p = Vector128.FusedMultiplyAdd(p, r, Vector128.Create(1f / 24));
        p = Vector128.FusedMultiplyAdd(p, r, Vector128.Create(1f / 6));
        p = Vector128.FusedMultiplyAdd(p, r, Vector128.Create(0.5f));
        p = Vector128.FusedMultiplyAdd(p, r, Vector128<float>.One);
        p = Vector128.FusedMultiplyAdd(p, r, Vector128<float>.One);
        return (p.AsInt32() + (Vector128.ConvertToInt32(n) << 23)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Exp(float x) => MathF.Exp(x);

    // ---- ln x (softplus): the BCL's, accurate to an ulp at every width.

    public static Vector512<float> Log(Vector512<float> x) => Vector512.Log(x);

    public static Vector256<float> Log(Vector256<float> x) => Vector256.Log(x);

    public static Vector128<float> Log(Vector128<float> x) => Vector128.Log(x);

    public static float Log(float x) => MathF.Log(x);

    // ---- tanh: 1 − 2/(e^(2|x|) + 1) in double, the sign put back (no cancellation near 0; ±1 past |x| ≈ 9).

    public static Vector512<float> Tanh(Vector512<float> x) =>
        Vector512.Narrow(Tanh(Vector512.WidenLower(x)), Tanh(Vector512.WidenUpper(x)));

    public static Vector256<float> Tanh(Vector256<float> x) =>
        Vector256.Narrow(Tanh(Vector256.WidenLower(x)), Tanh(Vector256.WidenUpper(x)));

    public static Vector128<float> Tanh(Vector128<float> x) =>
        Vector128.Narrow(Tanh(Vector128.WidenLower(x)), Tanh(Vector128.WidenUpper(x)));

    public static float Tanh(float x) => (float)Math.Tanh(x);

    private static Vector512<double> Tanh(Vector512<double> x)
    {
        Vector512<double> e = Vector512.Exp(Vector512.Abs(x) * 2.0);
        return Vector512.CopySign(Vector512<double>.One - Vector512.Create(2.0) / (e + Vector512<double>.One), x);
    }

    private static Vector256<double> Tanh(Vector256<double> x)
    {
        Vector256<double> e = Vector256.Exp(Vector256.Abs(x) * 2.0);
        return Vector256.CopySign(Vector256<double>.One - Vector256.Create(2.0) / (e + Vector256<double>.One), x);
    }

    private static Vector128<double> Tanh(Vector128<double> x)
    {
        Vector128<double> e = Vector128.Exp(Vector128.Abs(x) * 2.0);
        return Vector128.CopySign(Vector128<double>.One - Vector128.Create(2.0) / (e + Vector128<double>.One), x);
    }

    // ---- erf. Vectors in float (GELU's erf runs on every output of an up projection): below |x| = 1 the Maclaurin
    // series x·Σ cₙ·x²ⁿ (12 terms, the last below 1e-9), no cancellation near zero; above it 1 − erfc, with
    // erfc(|x|) = t·e^(−x² + P(t)), t = 1/(1 + |x|/2), a Chebyshev-fitted P of degree 9 (fractional error below
    // 1.2e-7) — erfc ≤ 0.16 there, so float's own error in P and e^x stays under 1e-7 of erf. The sign put back.
    // The scalar form (the reference path and loop tails) is the same erfc formula in double.

    // The coefficients are written out as literals, Horner unrolled: read from static arrays in a loop, the chains cost
    // array loads, bounds checks and loop control inside the GELU epilogue of every up projection's tile (kernels
    // compiled with AggressiveOptimization see such arrays as ordinary memory). The series' are 2/√π·(−1)ⁿ/(n!·(2n + 1))
    // and P's are ErfcCoefficients, each rounded to float (LanesTests checks both against those definitions).

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Erf(Vector512<float> x)
    {
        Vector512<float> a = Vector512.Abs(x), square = x * x;
        Vector512<float> series = Vector512.Create(-1.2290555e-09f);
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(1.4807193e-08f));
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(-1.6365844e-07f));
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(1.6462114e-06f));
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(-1.492565e-05f));
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(0.000120553326f));
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(-0.0008548327f));
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(0.005223978f));
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(-0.026866172f));
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(0.11283792f));
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(-0.37612638f));
        series = Vector512.FusedMultiplyAdd(series, square, Vector512.Create(1.1283792f));
        Vector512<float> t = Vector512<float>.One / Vector512.FusedMultiplyAdd(a, Vector512.Create(0.5f), Vector512<float>.One);
        Vector512<float> p = Vector512.Create(0.17087276f);
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(-0.82215226f));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(1.4885159f));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(-1.135204f));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(0.27886808f));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(-0.18628806f));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(0.09678418f));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(0.37409195f));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(1.0000237f));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(-1.2655122f));
        Vector512<float> tail = Vector512<float>.One - t * Exp(p - square);
        return Vector512.ConditionalSelect(Vector512.LessThan(a, Vector512<float>.One), x * series, Vector512.CopySign(tail, x));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Erf(Vector256<float> x)
    {
        Vector256<float> a = Vector256.Abs(x), square = x * x;
        Vector256<float> series = Vector256.Create(-1.2290555e-09f);
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(1.4807193e-08f));
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(-1.6365844e-07f));
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(1.6462114e-06f));
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(-1.492565e-05f));
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(0.000120553326f));
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(-0.0008548327f));
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(0.005223978f));
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(-0.026866172f));
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(0.11283792f));
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(-0.37612638f));
        series = Vector256.FusedMultiplyAdd(series, square, Vector256.Create(1.1283792f));
        Vector256<float> t = Vector256<float>.One / Vector256.FusedMultiplyAdd(a, Vector256.Create(0.5f), Vector256<float>.One);
        Vector256<float> p = Vector256.Create(0.17087276f);
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(-0.82215226f));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(1.4885159f));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(-1.135204f));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(0.27886808f));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(-0.18628806f));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(0.09678418f));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(0.37409195f));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(1.0000237f));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(-1.2655122f));
        Vector256<float> tail = Vector256<float>.One - t * Exp(p - square);
        return Vector256.ConditionalSelect(Vector256.LessThan(a, Vector256<float>.One), x * series, Vector256.CopySign(tail, x));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Erf(Vector128<float> x)
    {
        Vector128<float> a = Vector128.Abs(x), square = x * x;
        Vector128<float> series = Vector128.Create(-1.2290555e-09f);
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(1.4807193e-08f));
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(-1.6365844e-07f));
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(1.6462114e-06f));
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(-1.492565e-05f));
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(0.000120553326f));
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(-0.0008548327f));
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(0.005223978f));
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(-0.026866172f));
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(0.11283792f));
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(-0.37612638f));
        series = Vector128.FusedMultiplyAdd(series, square, Vector128.Create(1.1283792f));
        Vector128<float> t = Vector128<float>.One / Vector128.FusedMultiplyAdd(a, Vector128.Create(0.5f), Vector128<float>.One);
        Vector128<float> p = Vector128.Create(0.17087276f);
        p = Vector128.FusedMultiplyAdd(p, t, Vector128.Create(-0.82215226f));
        p = Vector128.FusedMultiplyAdd(p, t, Vector128.Create(1.4885159f));
        p = Vector128.FusedMultiplyAdd(p, t, Vector128.Create(-1.135204f));
        p = Vector128.FusedMultiplyAdd(p, t, Vector128.Create(0.27886808f));
        p = Vector128.FusedMultiplyAdd(p, t, Vector128.Create(-0.18628806f));
        p = Vector128.FusedMultiplyAdd(p, t, Vector128.Create(0.09678418f));
        p = Vector128.FusedMultiplyAdd(p, t, Vector128.Create(0.37409195f));
        p = Vector128.FusedMultiplyAdd(p, t, Vector128.Create(1.0000237f));
        p = Vector128.FusedMultiplyAdd(p, t, Vector128.Create(-1.2655122f));
        Vector128<float> tail = Vector128<float>.One - t * Exp(p - square);
        return Vector128.ConditionalSelect(Vector128.LessThan(a, Vector128<float>.One), x * series, Vector128.CopySign(tail, x));
    }

    public static float Erf(float x)
    {
        double a = Math.Abs((double)x), t = 1.0 / (1.0 + 0.5 * a);
        double erfc = t * Math.Exp(-a * a + ErfcPolynomial(t));
        return (float)Math.CopySign(1.0 - erfc, x);
    }

    // The exponent's polynomial in t, Horner form, in double for the scalar form (the vectors' literals are these rounded to float).
    internal static readonly double[] ErfcCoefficients =
    [
        -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
        0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
    ];

    private static double ErfcPolynomial(double t)
    {
        double p = ErfcCoefficients[^1];
        for (int i = ErfcCoefficients.Length - 2; i >= 0; i--) p = p * t + ErfcCoefficients[i];
        return p;
    }
}
