using ILGPU;
using ILGPU.Runtime;

namespace Kiln.Gpu;

/// <summary>
/// A KV cache's rows in device memory: per layer, every block's rows of keys, then of values (float32), row
/// <c>block·BlockSize + offset</c> as the attention context numbers them. The host <see cref="KvCache"/> that
/// fronts it (<see cref="KvCache.External"/>) holds the geometry and no rows; its block copies (copy-on-write) come
/// here as device-to-device copies on the plan's stream.
/// </summary>
public sealed class GpuKvPool : IKvBlockStore, IDisposable
{
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _keys;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _values;

    internal GpuKvPool(GpuPlan owner, Accelerator accelerator, int layers, int blockCount, int blockSize, int kvDim)
    {
        Owner = owner;
        Layers = layers;
        BlockSize = blockSize;
        KvDim = kvDim;
        RowCount = (long)blockCount * blockSize;
        long length = layers * RowCount * kvDim;
        _keys = accelerator.Allocate1D<float>(length);
        _values = accelerator.Allocate1D<float>(length);
        // A position attention reads was always written first; zeros keep a bad table from reading garbage.
        _keys.MemSetToZero();
        _values.MemSetToZero();
    }

    /// <summary>The plan whose steps read and write these rows.</summary>
    public GpuPlan Owner { get; }

    public int Layers { get; }

    public int BlockSize { get; }

    public int KvDim { get; }

    public long RowCount { get; }

    /// <summary>Keys of every row of one layer, [RowCount, KvDim].</summary>
    public ArrayView<float> LayerKeys(int layer) => _keys.View.AsContiguous().SubView(layer * RowCount * KvDim, RowCount * KvDim);

    public ArrayView<float> LayerValues(int layer) => _values.View.AsContiguous().SubView(layer * RowCount * KvDim, RowCount * KvDim);

    public void CopyBlock(int sourceBlock, int destinationBlock)
    {
        long rows = (long)BlockSize * KvDim;
        for (int layer = 0; layer < Layers; layer++)
        {
            long layerStart = layer * RowCount * KvDim;
            _keys.View.AsContiguous().SubView(layerStart + sourceBlock * rows, rows).CopyTo(_keys.View.AsContiguous().SubView(layerStart + destinationBlock * rows, rows));
            _values.View.AsContiguous().SubView(layerStart + sourceBlock * rows, rows).CopyTo(_values.View.AsContiguous().SubView(layerStart + destinationBlock * rows, rows));
        }
    }

    public override string ToString() => $"the device memory of {Owner.Accelerator.Name}";

    public void Dispose()
    {
        _keys.Dispose();
        _values.Dispose();
    }
}
