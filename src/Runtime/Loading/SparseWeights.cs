using Kiln.Kernels.Quantized;

namespace Kiln.Loading;

/// <summary>
/// A sparse weight's pattern at load (<see cref="SparseAttribute"/>): checked on the file's values, or made to hold by
/// magnitude pruning when the definition asks for it. Both read the weight a row at a time from its stored bytes (no
/// float32 copy of the weight), and pruning gives the tensor the eager forward computes with, so the eager reference
/// and the compiled plan see the same zeros.
/// </summary>
public static class SparseWeights
{
    /// <summary>Rows of one pruning tile of <see cref="SparsePattern.Blocks"/>: the plan's 8-row strip, the block-sparse kernel's tile.</summary>
    public const int TileRows = 8;

    /// <summary>Columns of one pruning tile: one Q8_0 block.</summary>
    public const int TileColumns = 32;

    /// <summary>
    /// Throws a <see cref="ModelLoadException"/> naming the file, the tensor and the row when <paramref name="weight"/>
    /// breaks <paramref name="pattern"/>. Only 2:4 constrains values (at most 2 nonzero in every 4 consecutive values of
    /// a row); a block-sparse layout is exact for any weight, so there is nothing to check. A weight stored as Q8_0 is
    /// checked on its stored quants, which the plan packs as they are; any other on its decoded values.
    /// </summary>
    public static void Check(string path, string name, Tensor weight, SparsePattern pattern)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (pattern != SparsePattern.TwoFour) return;
        int k = weight.Cols;
        if (k % 4 != 0)
            throw new ModelLoadException(path, $"tensor '{name}'", null, $"rows of {k} values are not whole groups of 4, so they cannot be 2:4 sparse.");
        var quants = weight.Stored is { Type: GgmlType.Q8_0 } stored ? stored : null;
        var values = quants is null ? new float[k] : [];
        for (int r = 0; r < weight.Rows; r++)
        {
            ReadOnlySpan<byte> row = quants is null ? default : quants.RowBytes(r, 1, k);
            if (quants is null) weight.ReadRow(r, values);
            for (int c = 0; c < k; c += 4)
            {
                int nonzero = 0;
                for (int e = c; e < c + 4; e++)
                    nonzero += (quants is null ? values[e] != 0 : row[e / 32 * Q8_0.BlockBytes + 2 + e % 32] != 0) ? 1 : 0;
                if (nonzero > 2)
                    throw new ModelLoadException(path, $"tensor '{name}' row {r}", null,
                        $"columns {c}..{c + 3} hold {nonzero} nonzero values; [Sparse(SparsePattern.TwoFour)] allows at most 2 of every 4. Prune the file, or ask for pruning at load ([Sparse(SparsePattern.TwoFour, Prune = true)]).");
            }
        }
    }

    /// <summary>
    /// <paramref name="weight"/> magnitude-pruned to <paramref name="pattern"/>: for 2:4, the 2 smallest of every 4
    /// values zeroed (ties: the later one); for blocks, the <see cref="TileRows"/> × <see cref="TileColumns"/> tiles
    /// of smallest L2 norm zeroed, keeping <paramref name="keepFraction"/> of them. Rows are read one at a time. A
    /// weight stored as Q8_0 keeps its stored blocks with the pruned quants zeroed (the rest bit-identical), one stored
    /// as F32, F16 or BF16 its stored values with the pruned ones zeroed; any other stored format (whose blocks cannot
    /// hold an exact zero) is requantized to Q8_0 from its pruned values, with GGML's reference quantizer: the layout
    /// the plan packs a sparse weight in, so the eager forward reads the very bytes the plan packs.
    /// </summary>
    public static Tensor Prune(Tensor weight, SparsePattern pattern, double keepFraction = 1)
    {
        ArgumentNullException.ThrowIfNull(weight);
        return pattern switch
        {
            SparsePattern.TwoFour => Apply(weight, null, 0),
            SparsePattern.Blocks => Apply(weight, BlockMask(keepFraction, TileRows, weight), TileRows),
            _ => throw new ArgumentOutOfRangeException(nameof(pattern), pattern, "Pruning needs a sparse pattern."),
        };
    }

    /// <summary>
    /// Block-prunes a gate and up projection (weights of one shape) with one mask of 4-row tiles, chosen by the tiles'
    /// joint norm: the plan interleaves the two row by row, so a 4-row tile of each fills one 8-row packed strip, and
    /// the strip's block is zero exactly when the mask says so.
    /// </summary>
    public static Tensor[] PruneBlocksTogether(double keepFraction, params Tensor[] weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        var mask = BlockMask(keepFraction, TileRows / 2, weights);
        var pruned = new Tensor[weights.Length];
        for (int i = 0; i < weights.Length; i++) pruned[i] = Apply(weights[i], mask, TileRows / 2);
        return pruned;
    }

    /// <summary>Which values of one row of 2:4 stay: the two largest magnitudes of each group of 4 (a stable sort: the earlier of equal ones wins).</summary>
    private static void TwoFourRow(ReadOnlySpan<float> values, Span<bool> keep)
    {
        Span<int> order = stackalloc int[4];
        keep.Clear();
        for (int start = 0; start < values.Length; start += 4)
        {
            for (int e = 0; e < 4; e++) order[e] = e;
            for (int i = 1; i < 4; i++)
                for (int j = i; j > 0 && MathF.Abs(values[start + order[j]]) > MathF.Abs(values[start + order[j - 1]]); j--)
                    (order[j], order[j - 1]) = (order[j - 1], order[j]);
            keep[start + order[0]] = keep[start + order[1]] = true;
        }
    }

    /// <summary>Which tiles of <paramref name="tileRows"/> × <see cref="TileColumns"/> stay, row-major over tiles: the largest joint L2 norms.</summary>
    private static bool[] BlockMask(double keepFraction, int tileRows, params Tensor[] weights)
    {
        if (!(keepFraction > 0 && keepFraction <= 1)) throw new ArgumentOutOfRangeException(nameof(keepFraction), keepFraction, "The fraction of blocks kept is in (0, 1].");
        if (weights.Length == 0) throw new ArgumentException("Pruning needs at least one weight.", nameof(weights));
        var first = weights[0];
        foreach (var w in weights)
            if (w.Rows != first.Rows || w.Cols != first.Cols) throw new ArgumentException($"Weights pruned together share one shape: {w} and {first}.", nameof(weights));
        int rows = first.Rows, k = first.Cols;
        int tilesDown = (rows + tileRows - 1) / tileRows, tileCols = (k + TileColumns - 1) / TileColumns;
        var norms = new double[tilesDown * tileCols];
        var values = new float[k];
        foreach (var w in weights)
            for (int r = 0; r < rows; r++)
            {
                w.ReadRow(r, values);
                for (int c = 0; c < k; c++) norms[r / tileRows * tileCols + c / TileColumns] += (double)values[c] * values[c];
            }
        int kept = (int)Math.Ceiling(keepFraction * norms.Length);
        var order = new int[norms.Length];
        for (int i = 0; i < order.Length; i++) order[i] = i;
        Array.Sort(order, (a, b) => norms[b] != norms[a] ? norms[b].CompareTo(norms[a]) : a.CompareTo(b)); // largest first, ties by position
        var keepTile = new bool[norms.Length];
        for (int i = 0; i < kept; i++) keepTile[order[i]] = true;
        return keepTile;
    }

    /// <summary>
    /// <paramref name="weight"/> with the values its mask drops zeroed, row by row: the tiles of <paramref name="tiles"/>
    /// (<paramref name="tileRows"/> rows each), or 2:4 of each row's own values when it is null.
    /// </summary>
    private static Tensor Apply(Tensor weight, bool[]? tiles, int tileRows)
    {
        int rows = weight.Rows, k = weight.Cols, tileCols = (k + TileColumns - 1) / TileColumns;
        if (tiles is null && k % 4 != 0) throw new ArgumentException($"Rows of {k} values are not whole groups of 4.", nameof(weight));
        var stored = weight.Stored;
        // Where the pruned values go: the stored type when it holds an exact zero per value, Q8_0 for other blocks, floats without stored bytes.
        GgmlType? type = stored?.Type switch
        {
            null => null,
            GgmlType.Q8_0 or GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 => stored.Type,
            _ => GgmlType.Q8_0,
        };
        long rowBytes = type is { } t ? GgmlTypeTraits.Of(t).ByteCount(k) : 0;
        var floats = type is null ? new float[(long)rows * k] : null;
        var bytes = type is null ? null : new byte[checked(rowBytes * rows)];
        var values = new float[k];
        var keep = new bool[k];
        for (int r = 0; r < rows; r++)
        {
            weight.ReadRow(r, values);
            if (tiles is null) TwoFourRow(values, keep);
            else
                for (int c = 0; c < k; c++) keep[c] = tiles[r / tileRows * tileCols + c / TileColumns];
            var target = bytes is null ? default : bytes.AsSpan((int)(r * rowBytes), (int)rowBytes);
            if (type == stored?.Type && type is { } same)
            {
                // The stored bytes as they are, the dropped values' quants (Q8_0; its scales stay) or elements zeroed.
                stored!.RowBytes(r, 1, k).CopyTo(target);
                int size = same == GgmlType.Q8_0 ? 1 : (int)(rowBytes / k);
                for (int c = 0; c < k; c++)
                    if (!keep[c])
                        target.Slice(same == GgmlType.Q8_0 ? c / 32 * Q8_0.BlockBytes + 2 + c % 32 : c * size, size).Clear();
                continue;
            }
            for (int c = 0; c < k; c++)
                if (!keep[c]) values[c] = 0;
            if (floats is not null) values.CopyTo(floats.AsSpan(r * k, k));
            else Q8_0.QuantizeRow(values, target);
        }
        var shape = (int[])weight.Shape.Clone();
        return floats is not null ? new Tensor(floats, shape) : new Tensor(new StoredTensor(type!.Value, bytes!), shape);
    }
}
