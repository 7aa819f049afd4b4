namespace Kiln.Kernels.MatMul;

/// <summary>
/// How a matmul whose output is turned by a NeoX rotary embedding packs its rows so the rope can run in the tile
/// epilogue: NeoX pairs element j of a head with element j + rotary/2, which a 4-row tile never holds together; packed
/// in the order (j, j + rotary/2, j + 1, j + 1 + rotary/2, …) each tile holds two whole pairs side by side — the
/// adjacent layout, whose rotation the epilogue already does — and stores each value back at its own column.
/// Columns past the rotary ones keep their places.
/// </summary>
public static class RopeLayout
{
    /// <summary>The output column packed row <paramref name="packed"/> (of a head-major layout) holds.</summary>
    public static int NeoXColumn(int packed, int headDim, int rotary)
    {
        int head = packed - packed % headDim, q = packed - head;
        return q < rotary ? head + q / 2 + (q & 1) * (rotary / 2) : packed;
    }

    /// <summary>For <paramref name="rows"/> output rows in heads of <paramref name="headDim"/>: the weight row each packed row takes.</summary>
    public static int[] NeoXOrder(int rows, int headDim, int rotary)
    {
        if (headDim <= 0 || rows % headDim != 0 || rotary <= 0 || rotary % 2 != 0 || rotary > headDim)
            throw new ArgumentException($"Rows of {rows} in heads of {headDim} with {rotary} rotary dimensions: no NeoX layout.");
        var order = new int[rows];
        for (int i = 0; i < rows; i++) order[i] = NeoXColumn(i, headDim, rotary);
        return order;
    }
}
