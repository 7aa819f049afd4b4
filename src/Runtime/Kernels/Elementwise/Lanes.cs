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
    // Inputs are clamped to ±87: e^87 is near float.MaxValue, and below −87 the exact result rounds to ~0 anyway. So
    // |n| ≤ 126 and the native conversion is exact: the saturating one costs three more instructions per vector.

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
        return (p.AsInt32() + (Vector512.ConvertToInt32Native(n) << 23)).AsSingle();
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
        return (p.AsInt32() + (Vector256.ConvertToInt32Native(n) << 23)).AsSingle();
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
        return (p.AsInt32() + (Vector128.ConvertToInt32Native(n) << 23)).AsSingle();
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
    // Beyond |x| = 4 erfc (< 1.6e-8) is below half an ulp of 1, so |x| is clamped there: the result is the same 1, and
    // e^(−x²) never reaches the subnormal range, where every multiply takes a slow path (GELU of large outputs
    // ran 2.4× slower). The scalar form (the reference path and loop tails) is the same erfc formula in double.

    // The coefficients are written out as literals: read from static arrays in a loop, the chains cost array loads,
    // bounds checks and loop control inside the GELU epilogue of every up projection's tile (kernels compiled with
    // AggressiveOptimization see such arrays as ordinary memory). Both polynomials are evaluated by Estrin's scheme —
    // pairs c₂ᵢ + c₂ᵢ₊₁·y, then pairs of those with y², y⁴, y⁸ — not Horner's: a chain of 4 multiply-adds instead of
    // 10–12, so a tile's 24 epilogues overlap instead of waiting on each other's latency (the fused GELU cost halved).
    // The series' coefficients are 2/√π·(−1)ⁿ/(n!·(2n + 1)) and P's are ErfcCoefficients, each rounded to float
    // (LanesTests evaluates the same scheme from those definitions, bit for bit).

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Erf(Vector512<float> x)
    {
        Vector512<float> a = Vector512.Abs(x), square = x * x, square2 = square * square, square4 = square2 * square2;
        Vector512<float> s0 = Vector512.FusedMultiplyAdd(Vector512.Create(-0.37612638f), square, Vector512.Create(1.1283792f));
        Vector512<float> s1 = Vector512.FusedMultiplyAdd(Vector512.Create(-0.026866172f), square, Vector512.Create(0.11283792f));
        Vector512<float> s2 = Vector512.FusedMultiplyAdd(Vector512.Create(-0.0008548327f), square, Vector512.Create(0.005223978f));
        Vector512<float> s3 = Vector512.FusedMultiplyAdd(Vector512.Create(-1.492565e-05f), square, Vector512.Create(0.000120553326f));
        Vector512<float> s4 = Vector512.FusedMultiplyAdd(Vector512.Create(-1.6365844e-07f), square, Vector512.Create(1.6462114e-06f));
        Vector512<float> s5 = Vector512.FusedMultiplyAdd(Vector512.Create(-1.2290555e-09f), square, Vector512.Create(1.4807193e-08f));
        s0 = Vector512.FusedMultiplyAdd(s1, square2, s0);
        s2 = Vector512.FusedMultiplyAdd(s3, square2, s2);
        s4 = Vector512.FusedMultiplyAdd(s5, square2, s4);
        s0 = Vector512.FusedMultiplyAdd(s2, square4, s0);
        Vector512<float> series = Vector512.FusedMultiplyAdd(s4, square4 * square4, s0);
        Vector512<float> clamped = Vector512.Min(a, Vector512.Create(4f));
        Vector512<float> t = Vector512<float>.One / Vector512.FusedMultiplyAdd(clamped, Vector512.Create(0.5f), Vector512<float>.One), t2 = t * t, t4 = t2 * t2;
        Vector512<float> p0 = Vector512.FusedMultiplyAdd(Vector512.Create(1.0000237f), t, Vector512.Create(-1.2655122f));
        Vector512<float> p1 = Vector512.FusedMultiplyAdd(Vector512.Create(0.09678418f), t, Vector512.Create(0.37409195f));
        Vector512<float> p2 = Vector512.FusedMultiplyAdd(Vector512.Create(0.27886808f), t, Vector512.Create(-0.18628806f));
        Vector512<float> p3 = Vector512.FusedMultiplyAdd(Vector512.Create(1.4885159f), t, Vector512.Create(-1.135204f));
        Vector512<float> p4 = Vector512.FusedMultiplyAdd(Vector512.Create(0.17087276f), t, Vector512.Create(-0.82215226f));
        p0 = Vector512.FusedMultiplyAdd(p1, t2, p0);
        p2 = Vector512.FusedMultiplyAdd(p3, t2, p2);
        p0 = Vector512.FusedMultiplyAdd(p2, t4, p0);
        Vector512<float> p = Vector512.FusedMultiplyAdd(p4, t4 * t4, p0);
        Vector512<float> tail = Vector512<float>.One - t * Exp(p - clamped * clamped);
        return Vector512.ConditionalSelect(Vector512.LessThan(a, Vector512<float>.One), x * series, Vector512.CopySign(tail, x));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Erf(Vector256<float> x)
    {
        Vector256<float> a = Vector256.Abs(x), square = x * x, square2 = square * square, square4 = square2 * square2;
        Vector256<float> s0 = Vector256.FusedMultiplyAdd(Vector256.Create(-0.37612638f), square, Vector256.Create(1.1283792f));
        Vector256<float> s1 = Vector256.FusedMultiplyAdd(Vector256.Create(-0.026866172f), square, Vector256.Create(0.11283792f));
        Vector256<float> s2 = Vector256.FusedMultiplyAdd(Vector256.Create(-0.0008548327f), square, Vector256.Create(0.005223978f));
        Vector256<float> s3 = Vector256.FusedMultiplyAdd(Vector256.Create(-1.492565e-05f), square, Vector256.Create(0.000120553326f));
        Vector256<float> s4 = Vector256.FusedMultiplyAdd(Vector256.Create(-1.6365844e-07f), square, Vector256.Create(1.6462114e-06f));
        Vector256<float> s5 = Vector256.FusedMultiplyAdd(Vector256.Create(-1.2290555e-09f), square, Vector256.Create(1.4807193e-08f));
        s0 = Vector256.FusedMultiplyAdd(s1, square2, s0);
        s2 = Vector256.FusedMultiplyAdd(s3, square2, s2);
        s4 = Vector256.FusedMultiplyAdd(s5, square2, s4);
        s0 = Vector256.FusedMultiplyAdd(s2, square4, s0);
        Vector256<float> series = Vector256.FusedMultiplyAdd(s4, square4 * square4, s0);
        Vector256<float> clamped = Vector256.Min(a, Vector256.Create(4f));
        Vector256<float> t = Vector256<float>.One / Vector256.FusedMultiplyAdd(clamped, Vector256.Create(0.5f), Vector256<float>.One), t2 = t * t, t4 = t2 * t2;
        Vector256<float> p0 = Vector256.FusedMultiplyAdd(Vector256.Create(1.0000237f), t, Vector256.Create(-1.2655122f));
        Vector256<float> p1 = Vector256.FusedMultiplyAdd(Vector256.Create(0.09678418f), t, Vector256.Create(0.37409195f));
        Vector256<float> p2 = Vector256.FusedMultiplyAdd(Vector256.Create(0.27886808f), t, Vector256.Create(-0.18628806f));
        Vector256<float> p3 = Vector256.FusedMultiplyAdd(Vector256.Create(1.4885159f), t, Vector256.Create(-1.135204f));
        Vector256<float> p4 = Vector256.FusedMultiplyAdd(Vector256.Create(0.17087276f), t, Vector256.Create(-0.82215226f));
        p0 = Vector256.FusedMultiplyAdd(p1, t2, p0);
        p2 = Vector256.FusedMultiplyAdd(p3, t2, p2);
        p0 = Vector256.FusedMultiplyAdd(p2, t4, p0);
        Vector256<float> p = Vector256.FusedMultiplyAdd(p4, t4 * t4, p0);
        Vector256<float> tail = Vector256<float>.One - t * Exp(p - clamped * clamped);
        return Vector256.ConditionalSelect(Vector256.LessThan(a, Vector256<float>.One), x * series, Vector256.CopySign(tail, x));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Erf(Vector128<float> x)
    {
        Vector128<float> a = Vector128.Abs(x), square = x * x, square2 = square * square, square4 = square2 * square2;
        Vector128<float> s0 = Vector128.FusedMultiplyAdd(Vector128.Create(-0.37612638f), square, Vector128.Create(1.1283792f));
        Vector128<float> s1 = Vector128.FusedMultiplyAdd(Vector128.Create(-0.026866172f), square, Vector128.Create(0.11283792f));
        Vector128<float> s2 = Vector128.FusedMultiplyAdd(Vector128.Create(-0.0008548327f), square, Vector128.Create(0.005223978f));
        Vector128<float> s3 = Vector128.FusedMultiplyAdd(Vector128.Create(-1.492565e-05f), square, Vector128.Create(0.000120553326f));
        Vector128<float> s4 = Vector128.FusedMultiplyAdd(Vector128.Create(-1.6365844e-07f), square, Vector128.Create(1.6462114e-06f));
        Vector128<float> s5 = Vector128.FusedMultiplyAdd(Vector128.Create(-1.2290555e-09f), square, Vector128.Create(1.4807193e-08f));
        s0 = Vector128.FusedMultiplyAdd(s1, square2, s0);
        s2 = Vector128.FusedMultiplyAdd(s3, square2, s2);
        s4 = Vector128.FusedMultiplyAdd(s5, square2, s4);
        s0 = Vector128.FusedMultiplyAdd(s2, square4, s0);
        Vector128<float> series = Vector128.FusedMultiplyAdd(s4, square4 * square4, s0);
        Vector128<float> clamped = Vector128.Min(a, Vector128.Create(4f));
        Vector128<float> t = Vector128<float>.One / Vector128.FusedMultiplyAdd(clamped, Vector128.Create(0.5f), Vector128<float>.One), t2 = t * t, t4 = t2 * t2;
        Vector128<float> p0 = Vector128.FusedMultiplyAdd(Vector128.Create(1.0000237f), t, Vector128.Create(-1.2655122f));
        Vector128<float> p1 = Vector128.FusedMultiplyAdd(Vector128.Create(0.09678418f), t, Vector128.Create(0.37409195f));
        Vector128<float> p2 = Vector128.FusedMultiplyAdd(Vector128.Create(0.27886808f), t, Vector128.Create(-0.18628806f));
        Vector128<float> p3 = Vector128.FusedMultiplyAdd(Vector128.Create(1.4885159f), t, Vector128.Create(-1.135204f));
        Vector128<float> p4 = Vector128.FusedMultiplyAdd(Vector128.Create(0.17087276f), t, Vector128.Create(-0.82215226f));
        p0 = Vector128.FusedMultiplyAdd(p1, t2, p0);
        p2 = Vector128.FusedMultiplyAdd(p3, t2, p2);
        p0 = Vector128.FusedMultiplyAdd(p2, t4, p0);
        Vector128<float> p = Vector128.FusedMultiplyAdd(p4, t4 * t4, p0);
        Vector128<float> tail = Vector128<float>.One - t * Exp(p - clamped * clamped);
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
