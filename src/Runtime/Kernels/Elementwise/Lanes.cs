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
/// 1 − 2/(e^2x + 1) keeps float32 accuracy without a cancellation near zero; erf is one rational function in float at
/// every width, as GELU runs it on every output of an up projection.
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

    // ---- erf: one branch-free rational function, erf(x) ≈ x·P(x²)/Q(x²) with P of degree 7 and Q of degree 4 in x²,
    // |x| clamped to 3.92 — beyond it erf is within 3e-8 of ±1, under an ulp of 1. GELU runs it on every output of an
    // up projection, in the matmul's epilogue, so it is built to be cheap there: 11 multiply-adds, 5 multiplies and one
    // division, no e^x, no select between two approximations. The coefficients were fitted for this project (a
    // linearized least-squares fit with Lawson reweighting towards the minimax, in 40-digit arithmetic; relative error
    // 9e-9 before rounding them to float); float's own rounding in P and Q dominates what is left: at most 2.9e-7 from
    // the exact erf over a dense grid (LanesTests). The scalar form is the same operations in the same order, so every
    // width gives the same bits. Odd in x by construction, small arguments keep their relative accuracy (x·P(0)/1).
    //
    // The coefficients are literals: read from static arrays, the chains cost loads and bounds checks inside the GELU
    // epilogue of every up projection's tile. P and Q are evaluated by Estrin's scheme — pairs c₂ᵢ + c₂ᵢ₊₁·y, then
    // pairs of those with y², y⁴ — a chain of 3 multiply-adds each instead of 7 and 4, so a tile's 24 epilogues overlap
    // instead of waiting on each other's latency. ErfNumerator and ErfDenominator are their definition; LanesTests
    // evaluates the same scheme from them, rounded to float, bit for bit against every width.

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Erf(Vector512<float> x)
    {
        Vector512<float> clamped = Vector512.Min(Vector512.Max(x, Vector512.Create(-ErfClamp)), Vector512.Create(ErfClamp)), y = clamped * clamped, y2 = y * y, y4 = y2 * y2;
        Vector512<float> p0 = Vector512.FusedMultiplyAdd(Vector512.Create(0.13967544f), y, Vector512.Create(1.1283791f));
        Vector512<float> p1 = Vector512.FusedMultiplyAdd(Vector512.Create(0.0015325517f), y, Vector512.Create(0.04411549f));
        Vector512<float> p2 = Vector512.FusedMultiplyAdd(Vector512.Create(-3.7164182e-06f), y, Vector512.Create(0.00013533987f));
        Vector512<float> p3 = Vector512.FusedMultiplyAdd(Vector512.Create(-8.508493e-10f), y, Vector512.Create(8.227747e-08f));
        Vector512<float> q0 = Vector512.FusedMultiplyAdd(Vector512.Create(0.45711714f), y, Vector512<float>.One);
        Vector512<float> q1 = Vector512.FusedMultiplyAdd(Vector512.Create(0.009941995f), y, Vector512.Create(0.09147058f));
        p0 = Vector512.FusedMultiplyAdd(p1, y2, p0);
        p2 = Vector512.FusedMultiplyAdd(p3, y2, p2);
        q0 = Vector512.FusedMultiplyAdd(q1, y2, q0);
        Vector512<float> p = Vector512.FusedMultiplyAdd(p2, y4, p0), q = Vector512.FusedMultiplyAdd(Vector512.Create(0.00054599455f), y4, q0);
        return clamped * p / q;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Erf(Vector256<float> x)
    {
        Vector256<float> clamped = Vector256.Min(Vector256.Max(x, Vector256.Create(-ErfClamp)), Vector256.Create(ErfClamp)), y = clamped * clamped, y2 = y * y, y4 = y2 * y2;
        Vector256<float> p0 = Vector256.FusedMultiplyAdd(Vector256.Create(0.13967544f), y, Vector256.Create(1.1283791f));
        Vector256<float> p1 = Vector256.FusedMultiplyAdd(Vector256.Create(0.0015325517f), y, Vector256.Create(0.04411549f));
        Vector256<float> p2 = Vector256.FusedMultiplyAdd(Vector256.Create(-3.7164182e-06f), y, Vector256.Create(0.00013533987f));
        Vector256<float> p3 = Vector256.FusedMultiplyAdd(Vector256.Create(-8.508493e-10f), y, Vector256.Create(8.227747e-08f));
        Vector256<float> q0 = Vector256.FusedMultiplyAdd(Vector256.Create(0.45711714f), y, Vector256<float>.One);
        Vector256<float> q1 = Vector256.FusedMultiplyAdd(Vector256.Create(0.009941995f), y, Vector256.Create(0.09147058f));
        p0 = Vector256.FusedMultiplyAdd(p1, y2, p0);
        p2 = Vector256.FusedMultiplyAdd(p3, y2, p2);
        q0 = Vector256.FusedMultiplyAdd(q1, y2, q0);
        Vector256<float> p = Vector256.FusedMultiplyAdd(p2, y4, p0), q = Vector256.FusedMultiplyAdd(Vector256.Create(0.00054599455f), y4, q0);
        return clamped * p / q;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Erf(Vector128<float> x)
    {
        Vector128<float> clamped = Vector128.Min(Vector128.Max(x, Vector128.Create(-ErfClamp)), Vector128.Create(ErfClamp)), y = clamped * clamped, y2 = y * y, y4 = y2 * y2;
        Vector128<float> p0 = Vector128.FusedMultiplyAdd(Vector128.Create(0.13967544f), y, Vector128.Create(1.1283791f));
        Vector128<float> p1 = Vector128.FusedMultiplyAdd(Vector128.Create(0.0015325517f), y, Vector128.Create(0.04411549f));
        Vector128<float> p2 = Vector128.FusedMultiplyAdd(Vector128.Create(-3.7164182e-06f), y, Vector128.Create(0.00013533987f));
        Vector128<float> p3 = Vector128.FusedMultiplyAdd(Vector128.Create(-8.508493e-10f), y, Vector128.Create(8.227747e-08f));
        Vector128<float> q0 = Vector128.FusedMultiplyAdd(Vector128.Create(0.45711714f), y, Vector128<float>.One);
        Vector128<float> q1 = Vector128.FusedMultiplyAdd(Vector128.Create(0.009941995f), y, Vector128.Create(0.09147058f));
        p0 = Vector128.FusedMultiplyAdd(p1, y2, p0);
        p2 = Vector128.FusedMultiplyAdd(p3, y2, p2);
        q0 = Vector128.FusedMultiplyAdd(q1, y2, q0);
        Vector128<float> p = Vector128.FusedMultiplyAdd(p2, y4, p0), q = Vector128.FusedMultiplyAdd(Vector128.Create(0.00054599455f), y4, q0);
        return clamped * p / q;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Erf(float x)
    {
        float clamped = Math.Clamp(x, -ErfClamp, ErfClamp), y = clamped * clamped, y2 = y * y, y4 = y2 * y2;
        float p0 = MathF.FusedMultiplyAdd(0.13967544f, y, 1.1283791f);
        float p1 = MathF.FusedMultiplyAdd(0.0015325517f, y, 0.04411549f);
        float p2 = MathF.FusedMultiplyAdd(-3.7164182e-06f, y, 0.00013533987f);
        float p3 = MathF.FusedMultiplyAdd(-8.508493e-10f, y, 8.227747e-08f);
        float q0 = MathF.FusedMultiplyAdd(0.45711714f, y, 1f);
        float q1 = MathF.FusedMultiplyAdd(0.009941995f, y, 0.09147058f);
        p0 = MathF.FusedMultiplyAdd(p1, y2, p0);
        p2 = MathF.FusedMultiplyAdd(p3, y2, p2);
        q0 = MathF.FusedMultiplyAdd(q1, y2, q0);
        float p = MathF.FusedMultiplyAdd(p2, y4, p0), q = MathF.FusedMultiplyAdd(0.00054599455f, y4, q0);
        return clamped * p / q;
    }

    /// <summary>|x| is clamped here before erf's rational function: erf(3.92) = 1 − 3e-8.</summary>
    internal const float ErfClamp = 3.92f;

    /// <summary>erf's P, coefficients of x⁰, x², … x¹⁴ as fitted; the vectors' literals are these rounded to float.</summary>
    internal static readonly double[] ErfNumerator =
    [
        1.128379156655932, 0.13967544086697575, 0.044115490535183766, 0.001532551760636249,
        0.0001353398642791241, -3.716418239142501e-06, 8.227746667194817e-08, -8.508492601631739e-10,
    ];

    /// <summary>erf's Q, coefficients of x⁰, x², … x⁸ as fitted (the first is 1).</summary>
    internal static readonly double[] ErfDenominator =
    [
        1, 0.4571171454824211, 0.0914705765481241, 0.009941995174579868, 0.0005459945406492948,
    ];
}
