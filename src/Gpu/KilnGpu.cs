using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace Kiln.Gpu;

/// <summary>Where GPU plans run: an ILGPU context with CUDA and a small CPU accelerator, and the accelerators from it.</summary>
public static class KilnGpu
{
    /// <summary>
    /// The CPU accelerator the tests run plans on: one group of two threads (ILGPU's smallest warp). Every kernel
    /// loops over its units, so a launch costs what its work costs, not a thread hand-off per unit.
    /// </summary>
    public static CPUDevice CpuDevice { get; } = new(numThreadsPerWarp: 2, numWarpsPerMultiprocessor: 1, numMultiprocessors: 1);

    /// <summary>
    /// A context with every CUDA device the driver shows (none, without one) and <see cref="CpuDevice"/>; ILGPU's
    /// algorithms library maps e^x and ln to the GPU's instructions.
    /// </summary>
    public static Context CreateContext() =>
        Context.Create(builder => builder.Cuda().CPU(CpuDevice).Optimize(OptimizationLevel.O2).EnableAlgorithms());

    /// <summary>
    /// The accelerator <paramref name="kind"/> names: "cuda" (the first CUDA device) or "cpu" (<see cref="CpuDevice"/>).
    /// Throws <see cref="InvalidOperationException"/> saying so when no CUDA device is visible.
    /// </summary>
    public static Accelerator CreateAccelerator(Context context, string kind)
    {
        ArgumentNullException.ThrowIfNull(context);
        switch (kind)
        {
            case "cpu":
                return context.GetCPUDevice(0).CreateAccelerator(context);
            case "cuda":
                var devices = context.GetCudaDevices();
                if (devices.Count == 0)
                    throw new InvalidOperationException("No CUDA device is visible to ILGPU (no NVIDIA driver, or libcuda.so not on the library path).");
                return devices[0].CreateAccelerator(context);
            default:
                throw new ArgumentException($"An accelerator is \"cuda\" or \"cpu\", not \"{kind}\".", nameof(kind));
        }
    }

    /// <summary>
    /// Compiles an explicitly grouped kernel to PTX for <paramref name="architecture"/> without a GPU (what the CUDA
    /// accelerator would load): a kernel that uses something the CUDA backend lacks fails here, on any machine.
    /// </summary>
    public static string CompilePtx(Context context, MethodInfo kernel, CudaArchitecture? architecture = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(kernel);
        var target = architecture ?? CudaArchitecture.SM_90;
        var backend = new PTXBackend(context, new CudaCapabilityContext(target), target, CudaInstructionSet.ISA_80, null);
        var compiled = (PTXCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(kernel), KernelSpecialization.Empty);
        return compiled.PTXAssembly;
    }
}
