using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

// The GEMM and VectorMath tests force each kernel path in turn (KernelPaths.Force).
[assembly: InternalsVisibleTo("Kiln.Generators.Tests")]
[assembly: InternalsVisibleTo("Kiln.EndToEnd.Tests")]

namespace Kiln.Kernels.Quantized;

/// <summary>
/// Which instruction set a kernel runs on. The row kernels take one so op tests can run each path against
/// <see cref="Scalar"/>, the oracle; the others (the GEMMs and their input preparation, <see cref="VectorMath"/>)
/// take <see cref="KernelPaths.Active"/>, which is <see cref="KernelPaths.Best"/> outside tests.
/// </summary>
public enum KernelPath
{
    /// <summary>Plain C#, one element at a time: the readable reference every other path is tested against.</summary>
    Scalar,

    /// <summary>AVX2 + FMA on 256-bit vectors; int8 dots through vpmaddubsw/vpmaddwd.</summary>
    Avx2,

    /// <summary>AVX-VNNI (VEX, 256-bit): int8 dots through vpdpbusd. Float formats have no integer work and run the AVX2 code.</summary>
    AvxVnni,

    /// <summary>AVX-512F/BW on 512-bit vectors; int8 dots through vpmaddubsw/vpmaddwd.</summary>
    Avx512BW,
}

/// <summary>What the running machine supports, and which path the kernels take.</summary>
public static class KernelPaths
{
    /// <summary>
    /// The fastest supported path: AVX-512BW (twice the width of AVX-VNNI's vpdpbusd, which .NET exposes only on
    /// 256-bit vectors) where .NET also accelerates 512-bit vectors, then AVX-VNNI, then AVX2, then scalar.
    /// </summary>
    public static KernelPath Best { get; } =
        IsSupported(KernelPath.Avx512BW) && Vector512.IsHardwareAccelerated ? KernelPath.Avx512BW :
        IsSupported(KernelPath.AvxVnni) ? KernelPath.AvxVnni :
        IsSupported(KernelPath.Avx2) ? KernelPath.Avx2 :
        KernelPath.Scalar;

    // Written only by Force; kernels read it once per call (input quantization once per block), never per element.
    private static KernelPath s_active = Best;

    /// <summary>
    /// The path the kernels that choose their own take: <see cref="Best"/>, unless a test forced another. A kernel
    /// without a form of its own for it runs its next narrower one (no GEMM has an AVX-VNNI form; the BF16 GEMM
    /// has no AVX2 one).
    /// </summary>
    public static KernelPath Active => s_active;

    /// <summary>The active path has 512-bit vector code (AVX-512).</summary>
    internal static bool Uses512Bits => s_active == KernelPath.Avx512BW;

    /// <summary>The active path has vector code (at least 256 bits: AVX2).</summary>
    internal static bool UsesVectors => s_active != KernelPath.Scalar;

    /// <summary>
    /// Test-only: every kernel takes <paramref name="path"/> until the returned scope is disposed. Process-wide, so
    /// the plans' worker threads take it too, and tests that force a path must not run alongside other kernel tests.
    /// </summary>
    internal static ForcedPath Force(KernelPath path)
    {
        if (!IsSupported(path)) throw Unsupported(path);
        var previous = s_active;
        s_active = path; // published to the worker threads by the pool's hand-off, as the work itself is
        return new ForcedPath(previous);
    }

    /// <summary>Restores the path that was active before <see cref="Force"/>.</summary>
    internal readonly struct ForcedPath(KernelPath previous) : IDisposable
    {
        public void Dispose() => s_active = previous;
    }

    /// <summary>True when every instruction <paramref name="path"/> uses exists on this machine.</summary>
    public static bool IsSupported(KernelPath path) => path switch
    {
        KernelPath.Scalar => true,
        KernelPath.Avx2 => Avx2.IsSupported && Fma.IsSupported,
        KernelPath.AvxVnni => AvxVnni.IsSupported && Avx2.IsSupported && Fma.IsSupported,
        KernelPath.Avx512BW => Avx512BW.IsSupported && Avx512DQ.IsSupported && Avx512F.VL.IsSupported,
        _ => false,
    };

    internal static Exception Unsupported(KernelPath path) =>
        Enum.IsDefined(path)
            ? new PlatformNotSupportedException($"This machine does not support the {path} kernel path.")
            : new ArgumentOutOfRangeException(nameof(path), path, "Not a kernel path.");
}
