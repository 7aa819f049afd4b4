using Kiln.Kernels.MatMul;

namespace Kiln.Kernels.Elementwise;

/// <summary>
/// A table a compiled plan gathers rows of (token or position embeddings), as the plan reads it: the table stays as
/// the file stores it — memory-mapped, never widened to float32 whole — and each row a step needs is decoded into that
/// token's slot of a scratch the plan owns (one slot per token of a step, so the rows of a step's tokens, each
/// gathered by one work item, never share memory).
/// </summary>
public sealed class GatherTable : IDisposable
{
    private readonly Tensor _table;
    private readonly NativeBlock _scratch;

    /// <param name="table">A [rows, cols] tensor.</param>
    /// <param name="slots">The most tokens one step gathers for.</param>
    public GatherTable(Tensor table, int slots)
    {
        ArgumentNullException.ThrowIfNull(table);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(slots);
        if (table.Rank != 2) throw new ArgumentException($"A gathered table has two dimensions, not {table}.", nameof(table));
        _table = table;
        Slots = slots;
        _scratch = new NativeBlock((long)slots * table.Cols * sizeof(float));
    }

    public int Rows => _table.Rows;

    public int Cols => _table.Cols;

    public int Slots { get; }

    /// <summary>Row <paramref name="index"/> of the table as float32, in slot <paramref name="slot"/> (the token's place in the step).</summary>
    public FloatBuffer Row(int index, int slot)
    {
        if ((uint)index >= (uint)_table.Rows)
            throw new ArgumentOutOfRangeException(nameof(index), $"Row {index} is outside the {_table.Rows} rows of the gathered table {_table}.");
        if ((uint)slot >= (uint)Slots) throw new ArgumentOutOfRangeException(nameof(slot), $"Slot {slot} is outside the {Slots} this table was made for.");
        var row = _scratch.Floats((long)slot * Cols * sizeof(float), Cols);
        _table.ReadRow(index, row.Span);
        return row;
    }

    public void Dispose() => _scratch.Dispose();
}
