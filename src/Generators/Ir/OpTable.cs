using System.Collections.Generic;
using System.Linq;

namespace Kiln.Generators.Ir;

/// <summary>What an op argument must be.</summary>
internal enum ParamKind
{
    /// <summary>An activation tensor (a value computed in the forward method).</summary>
    Activation,
    /// <summary>A [Weight] member.</summary>
    Weight,
    /// <summary>The forward method's token span.</summary>
    Tokens,
    /// <summary>The forward method's attention context.</summary>
    Context,
    /// <summary>An int scalar: hyper, derived member, literal or the layer index.</summary>
    Int,
    /// <summary>A float scalar: hyper, derived member or literal.</summary>
    Float,
}

/// <summary>How an op is lowered; the passes pattern-match on these, never on method names.</summary>
internal enum OpKind
{
    Weight,
    Phi,
    Embedding,
    RmsNorm,
    Linear,
    Rope,
    Attention,
    Silu,
    Mul,
    Add,
    SelectRows,
}

/// <summary>
/// One Kiln op: its Kiln.Ops method name, parameter kinds, shape rule and lowering. The shape rule gets the shapes of
/// the tensor arguments (activations and weights, in order) and returns the result shape or an error naming both shapes.
/// </summary>
internal sealed class OpDefinition
{
    public OpDefinition(string name, OpKind kind, ParamKind[] parameters, ShapeRule shape, string lowering)
    {
        Name = name;
        Kind = kind;
        Parameters = parameters;
        Shape = shape;
        Lowering = lowering;
    }

    public string Name { get; }

    public OpKind Kind { get; }

    public ParamKind[] Parameters { get; }

    public ShapeRule Shape { get; }

    /// <summary>One line for the fusion report: what the op becomes when nothing fuses it.</summary>
    public string Lowering { get; }
}

/// <summary>Result shape from operand shapes, or an error message (and which tensor operand it is about).</summary>
internal delegate ShapeResult ShapeRule(IReadOnlyList<Shape> operands);

internal readonly struct ShapeResult
{
    private ShapeResult(Shape? shape, string? error, int operand)
    {
        Result = shape;
        Error = error;
        Operand = operand;
    }

    public Shape? Result { get; }

    public string? Error { get; }

    /// <summary>Index of the tensor operand the error is about (-1: the call as a whole).</summary>
    public int Operand { get; }

    public static ShapeResult Ok(Shape shape) => new(shape, null, -1);

    public static ShapeResult Fail(string error, int operand = -1) => new(null, error, operand);
}

/// <summary>The op table: Kiln.Ops method name (and tensor operators) → definition.</summary>
internal static class OpTable
{
    private static readonly Dictionary<string, OpDefinition> Ops = new[]
    {
        new OpDefinition("Embedding", OpKind.Embedding, new[] { ParamKind.Weight, ParamKind.Tokens }, EmbeddingShape,
            "gather rows of the table for each token"),
        new OpDefinition("RmsNorm", OpKind.RmsNorm, new[] { ParamKind.Activation, ParamKind.Weight, ParamKind.Float }, RmsNormShape,
            "row-wise RMS normalization"),
        new OpDefinition("Linear", OpKind.Linear, new[] { ParamKind.Activation, ParamKind.Weight }, LinearShape,
            "matmul x·Wᵀ, weight rows outer and tokens inner"),
        new OpDefinition("Rope", OpKind.Rope, new[] { ParamKind.Activation, ParamKind.Context, ParamKind.Int, ParamKind.Float }, SameAsFirst,
            "rotary embedding on adjacent pairs"),
        new OpDefinition("Attention", OpKind.Attention,
            new[] { ParamKind.Activation, ParamKind.Activation, ParamKind.Activation, ParamKind.Context, ParamKind.Int, ParamKind.Int, ParamKind.Int },
            AttentionShape, "KV-cache write, then causal GQA attention (dot, softmax, scale-add)"),
        new OpDefinition("Silu", OpKind.Silu, new[] { ParamKind.Activation }, SameAsFirst, "elementwise x·sigmoid(x)"),
        new OpDefinition("Mul", OpKind.Mul, new[] { ParamKind.Activation, ParamKind.Activation }, SameShapes, "elementwise product"),
        new OpDefinition("Add", OpKind.Add, new[] { ParamKind.Activation, ParamKind.Activation }, SameShapes, "elementwise sum"),
        new OpDefinition("SelectRows", OpKind.SelectRows, new[] { ParamKind.Activation, ParamKind.Context }, SelectRowsShape,
            "gather the rows whose logits the step wants"),
    }.ToDictionary(op => op.Name);

    public static bool TryGet(string name, out OpDefinition op) => Ops.TryGetValue(name, out op!);

    public static OpDefinition Get(OpKind kind) => Ops.Values.First(op => op.Kind == kind);

    /// <summary>The names a [Forward] method may call, for the unknown-op message.</summary>
    public static string Names => string.Join(", ", Ops.Keys.Select(name => "Ops." + name));

    private static ShapeResult EmbeddingShape(IReadOnlyList<Shape> s)
    {
        if (s[0].Rank != 2) return ShapeResult.Fail($"the embedding table must be [Vocab, Dim], got {s[0]}", 0);
        return ShapeResult.Ok(Shape.Of(Shape.Tokens, s[0].Cols));
    }

    private static ShapeResult RmsNormShape(IReadOnlyList<Shape> s)
    {
        if (s[1].Rank != 1) return ShapeResult.Fail($"the norm weight must be a vector, got {s[1]}", 1);
        if (s[0].Cols != s[1].Cols) return ShapeResult.Fail($"norm weight {s[1]} does not match rows of {s[0]}", 1);
        return ShapeResult.Ok(s[0]);
    }

    private static ShapeResult LinearShape(IReadOnlyList<Shape> s)
    {
        if (s[1].Rank != 2) return ShapeResult.Fail($"the weight must be [Out, In], got {s[1]}", 1);
        if (s[0].Rank != 2) return ShapeResult.Fail($"the input must be [Rows, In], got {s[0]}", 0);
        if (s[0].Cols != s[1].Cols) return ShapeResult.Fail($"input {s[0]} and weight {s[1]} differ in the inner dimension ({s[0].Cols} vs {s[1].Cols})", 1);
        return ShapeResult.Ok(Shape.Of(s[0].Dims[0], s[1].Dims[0]));
    }

    private static ShapeResult AttentionShape(IReadOnlyList<Shape> s)
    {
        if (!s[1].Equals(s[2])) return ShapeResult.Fail($"k {s[1]} and v {s[2]} differ", 2);
        if (s[0].Rank != 2 || s[1].Rank != 2) return ShapeResult.Fail($"q {s[0]} and k {s[1]} must be [T, features]", 0);
        if (s[0].Dims[0] != s[1].Dims[0]) return ShapeResult.Fail($"q {s[0]} and k {s[1]} differ in rows", 1);
        return ShapeResult.Ok(s[0]);
    }

    private static ShapeResult SameAsFirst(IReadOnlyList<Shape> s) => ShapeResult.Ok(s[0]);

    private static ShapeResult SameShapes(IReadOnlyList<Shape> s) =>
        s[0].Equals(s[1]) ? ShapeResult.Ok(s[0]) : ShapeResult.Fail($"operands differ in shape, {s[0]} and {s[1]}", 1);

    private static ShapeResult SelectRowsShape(IReadOnlyList<Shape> s)
    {
        if (s[0].Rank != 2 || s[0].Dims[0] != Shape.Tokens) return ShapeResult.Fail($"expected one row per token [T, features], got {s[0]}", 0);
        return ShapeResult.Ok(Shape.Of(Shape.Outputs, s[0].Cols));
    }
}
