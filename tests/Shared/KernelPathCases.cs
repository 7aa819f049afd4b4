using Kiln.Kernels.Quantized;

namespace Kiln.Tests;

/// <summary>
/// Every test that forces a kernel path (<see cref="KernelPaths.Force"/>) runs in this collection: one at a time, and
/// never beside another collection's tests, since a forced path is process-wide.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class KernelPathCollection
{
    public const string Name = "Kernel paths";
}

/// <summary>
/// Runs a kernel test once per path, compared with the scalar oracle. A path is reported skipped, with the reason,
/// when the kernel has no code of its own for it or this machine cannot run it; it never passes untested.
/// </summary>
internal static class KernelPathCases
{
    /// <summary>Every path, narrowest first; as forms, those of the kernels with code of their own for each (the int8 dots and tiles).</summary>
    public static readonly KernelPath[] AllPaths = [KernelPath.Scalar, KernelPath.Avx2, KernelPath.AvxVnni, KernelPath.Avx512BW];

    /// <summary>Every path, for [MemberData].</summary>
    public static TheoryData<KernelPath> All => new(AllPaths);

    /// <summary>Kernels without integer dots, or whose int8 work needs no vpdpbusd: AVX-VNNI runs their AVX2 code.</summary>
    public static readonly KernelPath[] NoVnniForm = [KernelPath.Scalar, KernelPath.Avx2, KernelPath.Avx512BW];

    /// <summary>
    /// Forces <paramref name="path"/> until the scope is disposed, after skipping the test where <paramref name="kernel"/>
    /// has no form for it among <paramref name="forms"/> or the machine lacks its instructions.
    /// </summary>
    public static KernelPaths.ForcedPath Force(KernelPath path, string kernel, KernelPath[] forms)
    {
        if (Array.IndexOf(forms, path) < 0)
        {
            KernelPath fallback = forms.Where(form => form < path).Max();
            throw new SkipException($"{kernel} has no {path} form: on that path it runs its {fallback} code, which the {fallback} case tests.");
        }
        SkipUnlessSupported(path);
        return KernelPaths.Force(path);
    }

    public static void SkipUnlessSupported(KernelPath path) =>
        Skip.IfNot(KernelPaths.IsSupported(path), $"This machine lacks {Instructions(path)}, so the {path} path cannot run here.");

    public static string Instructions(KernelPath path) => path switch
    {
        KernelPath.Avx2 => "AVX2 and FMA",
        KernelPath.AvxVnni => "AVX-VNNI (with AVX2 and FMA)",
        KernelPath.Avx512BW => "AVX-512 F, BW, DQ and VL",
        _ => "nothing",
    };
}
