using System.Runtime.Intrinsics;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// What a matmul does with each finished tile, right after it is computed and while it is still in registers: an
/// operator struct (TensorPrimitives style) that the generated plan writes per fused epilogue — a plain store, a
/// residual add, rope on adjacent pairs, silu(gate)·up — so the kernels of <see cref="Gemm"/> call it directly.
/// </summary>
public interface ITileEpilogue
{
    /// <summary>
    /// Takes the sums of packed rows [<paramref name="row"/>, <paramref name="row"/> + 4) (<paramref name="row"/> a
    /// multiple of 4) for token <paramref name="token"/> of the matmul's input. Each (row group, token) comes exactly
    /// once per run, in no promised order, possibly on any thread.
    /// </summary>
    void Store(int row, int token, Vector128<float> sums);

    /// <summary>
    /// Takes the sums of packed rows [<paramref name="row"/>, <paramref name="row"/> + 16) (<paramref name="row"/> a
    /// multiple of 4) for token <paramref name="token"/>: four groups at once, as the F32 panel kernel computes them,
    /// so the epilogue runs at Vector512 (it may hand them to <see cref="Store"/> group by group). It stands for those
    /// four groups' calls of <see cref="Store"/>.
    /// </summary>
    void Store16(int row, int token, Vector512<float> sums);
}
