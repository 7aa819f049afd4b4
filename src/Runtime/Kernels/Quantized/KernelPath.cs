using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.Quantized;

/// <summary>
/// Which instruction set a kernel runs on. Every kernel takes one so op tests can run each path against
/// <see cref="Scalar"/>, the oracle; production code passes <see cref="KernelPaths.Best"/>.
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

/// <summary>What the running machine supports.</summary>
public static class KernelPaths
{
    /// <summary>
    /// The fastest supported path: AVX-512BW (twice the width of AVX-VNNI's vpdpbusd, which .NET exposes only on
    /// 256-bit vectors), then AVX-VNNI, then AVX2, then scalar.
    /// </summary>
    public static KernelPath Best { get; } =
        IsSupported(KernelPath.Avx512BW) ? KernelPath.Avx512BW :
        IsSupported(KernelPath.AvxVnni) ? KernelPath.AvxVnni :
        IsSupported(KernelPath.Avx2) ? KernelPath.Avx2 :
        KernelPath.Scalar;

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
