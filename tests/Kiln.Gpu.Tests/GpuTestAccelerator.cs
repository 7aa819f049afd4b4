using ILGPU;
using ILGPU.Runtime;

namespace Kiln.Gpu.Tests;

/// <summary>One ILGPU context and CPU accelerator for every test of the collection (making one takes a while).</summary>
public sealed class GpuTestAccelerator : IDisposable
{
    public const string Collection = "ILGPU CPU accelerator";

    public GpuTestAccelerator()
    {
        Context = KilnGpu.CreateContext();
        Accelerator = KilnGpu.CreateAccelerator(Context, "cpu");
    }

    public Context Context { get; }

    public Accelerator Accelerator { get; }

    public void Dispose()
    {
        Accelerator.Dispose();
        Context.Dispose();
    }
}

[CollectionDefinition(GpuTestAccelerator.Collection)]
public sealed class GpuTestCollection : ICollectionFixture<GpuTestAccelerator>;
