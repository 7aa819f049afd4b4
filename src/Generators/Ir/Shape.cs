using System.Linq;
using Kiln.Generators.Helpers;

namespace Kiln.Generators.Ir;

/// <summary>
/// A symbolic shape: each dimension is a canonical string ("T" tokens in the step, "O" output rows, "S" sequences, a hyper or
/// derived member name, a product like "Heads*HeadDim", a literal, or a free symbol like "Vocab"). Dimensions
/// are equal when their canonical names are; derived members are opaque (no algebra).
/// </summary>
internal sealed record Shape(EquatableArray<string> Dims)
{
    public const string Tokens = "T";
    public const string Outputs = "O";
    public const string Sequences = "S";
    public const string Unknown = "?";

    public static Shape Of(params string[] dims) => new(dims.ToEquatableArray());

    public int Rank => Dims.Count;

    public string Cols => Dims.Count == 0 ? Unknown : Dims[Dims.Count - 1];

    public string Rows => Dims.Count < 2 ? "1" : Dims[0];

    public bool IsKnown => Dims.All(d => d != Unknown);

    public override string ToString() => "[" + string.Join(", ", Dims) + "]";
}
