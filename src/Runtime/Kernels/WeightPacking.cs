namespace Kiln.Kernels;

/// <summary>
/// Load-time repacking of F32 weights into the layouts the generated kernels read (the fusion report of each
/// generated model says which layout each weight got). Row-major [Out, In] throughout; "fold" multiplies column i
/// by a norm weight g[i] so a following RMSNorm reduces to a per-token scale in the matmul epilogue.
/// </summary>
public static class WeightPacking
{
    /// <summary>Copies <paramref name="weight"/> [Out, In] to rows starting at <paramref name="rowOffset"/> of <paramref name="packed"/>, columns scaled by <paramref name="fold"/> when given.</summary>
    public static void CopyRows(float[] packed, int rowOffset, Tensor weight, Tensor? fold)
    {
        int cols = weight.Cols;
        RequireFold(weight, fold);
        for (int o = 0; o < weight.Rows; o++)
        {
            var source = weight.Row(o);
            var destination = packed.AsSpan((rowOffset + o) * cols, cols);
            if (fold is null) source.CopyTo(destination);
            else for (int i = 0; i < cols; i++) destination[i] = source[i] * fold.Data[i];
        }
    }

    /// <summary>
    /// Interleaves two [Out, In] matrices row by row (first₀, second₀, first₁, second₁, ...) from <paramref name="rowOffset"/>:
    /// a gate/up pair then yields one output per two adjacent rows, so silu(gate)·up runs in the matmul epilogue.
    /// </summary>
    public static void InterleaveRows(float[] packed, int rowOffset, Tensor first, Tensor second, Tensor? fold)
    {
        if (first.Rows != second.Rows || first.Cols != second.Cols)
            throw new ArgumentException($"Interleaved weights differ in shape: {first} and {second}.");
        RequireFold(first, fold);
        int cols = first.Cols;
        for (int o = 0; o < first.Rows; o++)
        {
            for (int which = 0; which < 2; which++)
            {
                var source = (which == 0 ? first : second).Row(o);
                var destination = packed.AsSpan((rowOffset + 2 * o + which) * cols, cols);
                if (fold is null) source.CopyTo(destination);
                else for (int i = 0; i < cols; i++) destination[i] = source[i] * fold.Data[i];
            }
        }
    }

    private static void RequireFold(Tensor weight, Tensor? fold)
    {
        if (fold is not null && fold.Data.Length != weight.Cols)
            throw new ArgumentException($"A norm weight of {fold.Data.Length} cannot fold into the columns of {weight}.");
    }
}
