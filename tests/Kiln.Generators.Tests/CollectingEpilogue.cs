using System.Runtime.Intrinsics;
using Kiln.Kernels.MatMul;

namespace Kiln.Generators.Tests;

/// <summary>
/// The GEMM tests' epilogue: collects each tile into y [tokens, stride] and counts the calls per (group, token), so a
/// group handed over twice, or never, shows.
/// </summary>
internal struct CollectingEpilogue : ITileEpilogue
{
    public float[] Y;
    public int Stride;
    public int[]? Calls;

    public void Store(int row, int token, Vector128<float> sums)
    {
        for (int i = 0; i < 4 && row + i < Stride; i++) Y[token * Stride + row + i] = sums[i];
        if (Calls is not null) Calls[token * (Calls.Length / (Y.Length / Stride)) + row / 4]++;
    }

    // Only the F32 panels hand over 16 rows at once; as four groups, each counted as its own call.
    public void Store16(int row, int token, Vector512<float> sums)
    {
        Store(row, token, sums.GetLower().GetLower());
        Store(row + 4, token, sums.GetLower().GetUpper());
        Store(row + 8, token, sums.GetUpper().GetLower());
        Store(row + 12, token, sums.GetUpper().GetUpper());
    }
}
