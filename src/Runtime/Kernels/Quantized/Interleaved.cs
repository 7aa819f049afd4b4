using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.Quantized;

/// <summary>
/// A weight format repacked at load time into groups of <see cref="Interleaved.RowsPerGroup"/> rows interleaved
/// block by block (ggml-cpu's repack.cpp does the same for Q4_0 4×8/8×8; this layout is Kiln's own), so a GEMM
/// micro-kernel computes a tile of 4 rows × several tokens reading each weight block once for the whole tile.
/// </summary>
public interface IInterleavedFormat
{
    /// <summary>Bytes of one source row of <paramref name="k"/> elements, in the plain format the groups are packed from.</summary>
    static abstract int RowBytes(int k);

    /// <summary>Bytes of one packed group of 4 rows of <paramref name="k"/> elements; a multiple of 64.</summary>
    static abstract int GroupBytes(int k);

    /// <summary>
    /// Packs <paramref name="rowCount"/> (1..4) consecutive source rows into one group; missing rows are packed as
    /// zeros (scale 0), so the kernels never branch on a partial group.
    /// </summary>
    static abstract void PackGroup(ReadOnlySpan<byte> rows, int rowCount, int k, Span<byte> group);

    /// <summary>
    /// y[t·yStride + r] = row r of the group · token t of <paramref name="activations"/>, for r &lt; <paramref name="rowCount"/>
    /// and every token: one micro-kernel call per tile of tokens on <paramref name="path"/>.
    /// </summary>
    static abstract void MultiplyGroup(ReadOnlySpan<byte> group, Q8Activations activations, Span<float> y, int yStride, int rowCount, KernelPath path);
}

/// <summary>Repacks whole weight matrices into interleaved groups and multiplies ranges of groups by quantized activations.</summary>
public static class Interleaved
{
    /// <summary>Rows packed together; a matrix's last group is padded when its row count is not a multiple.</summary>
    public const int RowsPerGroup = 4;

    /// <summary>Groups for <paramref name="rows"/> rows (the last one possibly partial).</summary>
    public static int GroupCount(int rows)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        return (rows + RowsPerGroup - 1) / RowsPerGroup;
    }

    /// <summary>Bytes of a [rows, k] matrix packed as <typeparamref name="TFormat"/>.</summary>
    public static int ByteCount<TFormat>(int rows, int k) where TFormat : IInterleavedFormat =>
        checked(GroupCount(rows) * TFormat.GroupBytes(k));

    /// <summary>Packs the [rows, k] matrix <paramref name="weights"/> (rows in the plain format, back to back) into <paramref name="packed"/>.</summary>
    public static void Repack<TFormat>(ReadOnlySpan<byte> weights, int rows, int k, Span<byte> packed) where TFormat : IInterleavedFormat
    {
        int rowBytes = TFormat.RowBytes(k), groupBytes = TFormat.GroupBytes(k);
        Blocks.CheckLength(weights.Length, checked(rows * rowBytes), nameof(weights), "The weight matrix");
        Blocks.CheckLength(packed.Length, ByteCount<TFormat>(rows, k), nameof(packed), "The packed buffer");
        for (int group = 0; group < GroupCount(rows); group++)
        {
            int firstRow = group * RowsPerGroup, rowCount = Math.Min(RowsPerGroup, rows - firstRow);
            TFormat.PackGroup(weights.Slice(firstRow * rowBytes, rowCount * rowBytes), rowCount, k,
                packed.Slice(group * groupBytes, groupBytes));
        }
    }

    /// <summary>y[t, r] = Σ_k W[r, k]·x[t, k] for every row of a packed [rows, K] matrix and every token, on the active path; y is [tokens, rows].</summary>
    public static void Multiply<TFormat>(ReadOnlySpan<byte> packed, int rows, Q8Activations activations, Span<float> y)
        where TFormat : IInterleavedFormat =>
        Multiply<TFormat>(packed, rows, activations, y, rows, 0, GroupCount(rows), KernelPaths.Active);

    /// <summary>
    /// y[t·yStride + r] for the rows of groups [<paramref name="firstGroup"/>, + <paramref name="groupCount"/>) of a
    /// packed [rows, K] matrix: the unit a worker claims.
    /// </summary>
    public static void Multiply<TFormat>(ReadOnlySpan<byte> packed, int rows, Q8Activations activations, Span<float> y,
        int yStride, int firstGroup, int groupCount, KernelPath path) where TFormat : IInterleavedFormat
    {
        int groups = GroupCount(rows), groupBytes = TFormat.GroupBytes(activations.K);
        Blocks.CheckLength(packed.Length, groups * groupBytes, nameof(packed), "The packed matrix");
        if ((uint)firstGroup > (uint)groups || (uint)groupCount > (uint)(groups - firstGroup))
            throw new ArgumentOutOfRangeException(nameof(groupCount), $"Groups [{firstGroup}, {firstGroup}+{groupCount}) are not within the {groups} groups.");
        ArgumentOutOfRangeException.ThrowIfLessThan(yStride, rows);
        for (int group = firstGroup; group < firstGroup + groupCount; group++)
        {
            int firstRow = group * RowsPerGroup;
            TFormat.MultiplyGroup(packed.Slice(group * groupBytes, groupBytes), activations, y[firstRow..], yStride,
                Math.Min(RowsPerGroup, rows - firstRow), path);
        }
    }

    /// <summary>Bytes of a group's scale table (4 fp16 per block), padded so the quants after it start 64-byte aligned.</summary>
    internal static int ScaleBytes(int blocks) => (blocks * RowsPerGroup * sizeof(ushort) + 63) & ~63;

    /// <summary>The checks every <see cref="IInterleavedFormat.MultiplyGroup"/> makes before its kernels run.</summary>
    internal static void CheckGroup(int groupLength, int groupBytes, Q8Activations activations, int yLength, int yStride, int rowCount)
    {
        Blocks.CheckLength(groupLength, groupBytes, "group", "The packed group");
        ArgumentOutOfRangeException.ThrowIfLessThan(rowCount, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(rowCount, RowsPerGroup);
        ArgumentOutOfRangeException.ThrowIfLessThan(yStride, rowCount);
        if (activations.Tokens > 0)
            Blocks.CheckAtLeast(yLength, (long)(activations.Tokens - 1) * yStride + rowCount, "y", "The output");
    }
}

/// <summary>How many tokens a micro-kernel instantiation handles: a JIT-time constant that folds away the unused accumulators.</summary>
internal interface ITokenCount
{
    static abstract int Count { get; }
}

internal readonly struct OneToken : ITokenCount { public static int Count => 1; }
internal readonly struct TwoTokens : ITokenCount { public static int Count => 2; }
internal readonly struct ThreeTokens : ITokenCount { public static int Count => 3; }
internal readonly struct FourTokens : ITokenCount { public static int Count => 4; }

/// <summary>Pieces the tile kernels share.</summary>
internal static class Tile
{
    /// <summary>[Σ r0, Σ r1, Σ r2, Σ r3]: four row accumulators reduced at once by three horizontal adds.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> SumRows(Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3)
    {
        Vector256<float> sums = Avx.HorizontalAdd(Avx.HorizontalAdd(r0, r1), Avx.HorizontalAdd(r2, r3));
        return sums.GetLower() + sums.GetUpper();
    }

    /// <summary>Writes the first <paramref name="rowCount"/> of a group's 4 results for one token.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void StoreRows(float* y, Vector128<float> rows, int rowCount)
    {
        if (rowCount == Interleaved.RowsPerGroup)
        {
            rows.Store(y);
            return;
        }
        for (int r = 0; r < rowCount; r++) y[r] = rows.GetElement(r);
    }
}
