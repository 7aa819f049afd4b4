using Kiln.Loading;
using Xunit.Abstractions;

namespace Kiln.Gpu.Tests;

/// <summary>
/// Every kernel a GPU plan loads compiles to PTX for the H100/H200 (SM_90), here, without a GPU: the CPU accelerator
/// runs kernels as .NET code, so only this shows that CUDA's backend takes them (no unsupported intrinsic, no
/// managed object). Every family's F32 plan and Llama's in each other layout cover every kernel kind.
/// </summary>
[Collection(GpuTestAccelerator.Collection)]
public sealed class PtxCompileTests(GpuTestAccelerator gpu, ITestOutputHelper output)
{
    [Fact]
    public void EveryKernelCompilesForSm90()
    {
        var kernels = new Dictionary<string, System.Reflection.MethodInfo>();
        var plans = TinyFamilies.Names.Select(f => (f, GgmlType.F32))
            .Concat(new[] { GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_0 }.Select(t => ("llama", t)));
        foreach (var (family, type) in plans)
        {
            var model = TinyFamilies.Load(new EncodedModelFile(TinyFamilies.File(family, seed: 1), type));
            using var plan = model.CompileGpu(gpu.Accelerator, new GpuPlanOptions(4));
            // The attention kernels load with the first step.
            var context = new AttentionContext(plan.CreateKvCache(1, 8), 4);
            context.SetSequence(0, 0, 2);
            plan.Step([1, 2], context, new float[model.VocabSize]);
            foreach (var kernel in plan.Kernels) kernels.TryAdd(kernel.ToString()!, kernel);
        }
        foreach (var kernel in kernels.Values)
        {
            string ptx = KilnGpu.CompilePtx(gpu.Context, kernel);
            Assert.Contains(".entry", ptx);
            output.WriteLine($"{kernel.DeclaringType?.Name}.{kernel.Name}: {ptx.Length} characters of PTX{(ptx.Contains(".local") ? ", uses local memory" : "")}");
        }
        output.WriteLine($"{kernels.Count} kernels");
    }
}
