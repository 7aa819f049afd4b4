using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Ir;

/// <summary>What an op argument must be.</summary>
internal enum ParamKind
{
    /// <summary>An activation tensor (a value computed in the forward method).</summary>
    Activation,
    /// <summary>A [Weight] member.</summary>
    Weight,
    /// <summary>Either: an activation, or a [Weight] row vector broadcast over the rows (a bias).</summary>
    Tensor,
    /// <summary>The forward method's token span.</summary>
    Tokens,
    /// <summary>The forward method's attention context.</summary>
    Context,
    /// <summary>An int scalar: literal, member, the layer index, or arithmetic on them.</summary>
    Int,
    /// <summary>A float scalar.</summary>
    Float,
    /// <summary>A bool scalar.</summary>
    Bool,
    /// <summary>A <c>Kiln.RopeStyle</c>, fixed when the generator runs (it decides the kernel).</summary>
    Style,
    /// <summary>A <c>Kiln.Pooling</c>, fixed when the generator runs (it decides the kernel).</summary>
    Pooling,
}

/// <summary>How an op is lowered; the passes pattern-match on these, never on method names.</summary>
internal enum OpKind
{
    Weight,
    /// <summary>A layer-loop-carried value: Inputs [before the loop, end of the body].</summary>
    Phi,
    /// <summary>The value of a local after an if/else: Inputs [from the then branch, from the else branch].</summary>
    Merge,
    Embedding,
    PositionEmbedding,
    TokenTypeEmbedding,
    SelectRows,
    /// <summary>One row per sequence of the step (mean, first or last of its tokens' rows): [T, D] → [S, D].</summary>
    Pool,
    L2Normalize,
    RmsNorm,
    HeadRmsNorm,
    LayerNorm,
    Linear,
    Rope,
    Attention,
    /// <summary>An LSTM layer's recurrence over each sequence of the step, from and back to its state slot.</summary>
    Lstm,
    /// <summary>A GRU layer's recurrence over each sequence of the step, from and back to its state slot.</summary>
    Gru,
    /// <summary>A causal depthwise convolution over each sequence of the step, carrying its last inputs in the state slot.</summary>
    CausalConv1d,
    /// <summary>Mamba-1's selective scan over each sequence of the step, from and back to its state slot.</summary>
    SelectiveScan,
    Slice,
    Concat,
    // Elementwise, unary.
    Silu,
    Gelu,
    GeluErf,
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Softplus,
    Neg,
    SoftCap,
    // Elementwise, binary: two tensors (one may be a row vector), or a tensor and a scalar (either side).
    Add,
    Sub,
    Mul,
    Div,
}

/// <summary>One parameter of an op: its C# name (as Kiln.Ops declares it) and what it must be.</summary>
internal readonly struct OpParameter
{
    public OpParameter(string name, ParamKind kind)
    {
        Name = name;
        Kind = kind;
    }

    public string Name { get; }

    public ParamKind Kind { get; }

    public bool IsTensor => Kind is ParamKind.Activation or ParamKind.Weight or ParamKind.Tensor;

    public bool IsScalar => Kind is ParamKind.Int or ParamKind.Float or ParamKind.Bool or ParamKind.Style or ParamKind.Pooling;
}

/// <summary>
/// One Kiln op overload: its Kiln.Ops method name, parameters, shape rule and meaning. <see cref="Key"/> is its
/// signature ("LayerNorm(Tensor,Tensor,Tensor,float)"), how the extractor names the overload a call bound to.
/// The shape rule gets the shapes of the tensor arguments and the scalar arguments, each in order.
/// </summary>
internal sealed class OpDefinition
{
    public OpDefinition(string name, OpKind kind, OpParameter[] parameters, ShapeRule shape, string semantics, bool scalarFirst = false)
    {
        Name = name;
        Kind = kind;
        Parameters = parameters;
        Shape = shape;
        Semantics = semantics;
        ScalarFirst = scalarFirst;
        Key = OpTable.Signature(name, parameters.Select(p => OpTable.TypeName(p.Kind)));
    }

    public string Name { get; }

    public string Key { get; }

    public OpKind Kind { get; }

    public OpParameter[] Parameters { get; }

    public ShapeRule Shape { get; }

    /// <summary>One line: what the op computes (the op table in the README says the same).</summary>
    public string Semantics { get; }

    /// <summary>A binary op whose scalar comes first (<c>s − x</c>, <c>s / x</c>).</summary>
    public bool ScalarFirst { get; }
}

/// <summary>Result shape from operand shapes, or an error message (and which tensor operand it is about).</summary>
internal delegate ShapeResult ShapeRule(IReadOnlyList<Shape> tensors, IReadOnlyList<ScalarExpr> scalars);

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

/// <summary>The op table: every Kiln.Ops overload (and tensor operator) a [Forward] method may call, by signature.</summary>
internal static class OpTable
{
    private static OpParameter P(string name, ParamKind kind) => new(name, kind);

    private static readonly OpParameter X = P("x", ParamKind.Activation);
    private static readonly OpParameter Context = P("context", ParamKind.Context);

    private static readonly OpDefinition[] Definitions =
    {
        new("Embedding", OpKind.Embedding, new[] { P("table", ParamKind.Weight), P("tokens", ParamKind.Tokens) }, GatherShape,
            "row tokens[t] of the table, for each token"),
        new("PositionEmbedding", OpKind.PositionEmbedding, new[] { P("table", ParamKind.Weight), Context }, GatherShape,
            "row positions[t] of the table, for each token"),
        new("TokenTypeEmbedding", OpKind.TokenTypeEmbedding, new[] { P("table", ParamKind.Weight), Context }, GatherShape,
            "row tokenTypes[t] of the table, for each token"),
        new("SelectRows", OpKind.SelectRows, new[] { X, Context }, SelectRowsShape,
            "the rows whose logits the step wants"),
        new("Pool", OpKind.Pool, new[] { X, Context, P("pooling", ParamKind.Pooling) }, PoolShape,
            "one row per sequence: the mean, first or last of its tokens' rows"),
        new("L2Normalize", OpKind.L2Normalize, new[] { X, P("eps", ParamKind.Float) }, SameAsFirst,
            "x / max(‖x‖₂, eps), per row"),
        new("RmsNorm", OpKind.RmsNorm, new[] { X, P("weight", ParamKind.Weight), P("eps", ParamKind.Float) }, NormShape,
            "x / sqrt(mean(x²) + eps) · weight, per row"),
        new("HeadRmsNorm", OpKind.HeadRmsNorm, new[] { X, P("weight", ParamKind.Weight), P("eps", ParamKind.Float) }, HeadNormShape,
            "RMSNorm of each head (groups of weight's length) on its own, · weight"),
        new("LayerNorm", OpKind.LayerNorm, new[] { X, P("weight", ParamKind.Weight), P("eps", ParamKind.Float) }, NormShape,
            "(x − mean) / sqrt(var + eps) · weight, per row"),
        new("LayerNorm", OpKind.LayerNorm, new[] { X, P("weight", ParamKind.Weight), P("bias", ParamKind.Weight), P("eps", ParamKind.Float) }, NormShape,
            "(x − mean) / sqrt(var + eps) · weight + bias, per row"),
        new("Linear", OpKind.Linear, new[] { X, P("weight", ParamKind.Weight) }, LinearShape,
            "x · weightᵀ"),
        new("Linear", OpKind.Linear, new[] { X, P("weight", ParamKind.Weight), P("bias", ParamKind.Weight) }, LinearShape,
            "x · weightᵀ + bias"),
        new("Rope", OpKind.Rope, new[] { X, Context, P("headDim", ParamKind.Int), P("freqBase", ParamKind.Float) }, SameAsFirst,
            "rotary embedding of adjacent pairs at each token's position"),
        new("Rope", OpKind.Rope, new[] { X, Context, P("headDim", ParamKind.Int), P("freqBase", ParamKind.Float), P("style", ParamKind.Style), P("rotaryDims", ParamKind.Int) }, SameAsFirst,
            "rotary embedding (adjacent pairs or NeoX halves, of the first rotaryDims of each head) at each token's position"),
        new("Attention", OpKind.Attention, new[]
            {
                P("q", ParamKind.Activation), P("k", ParamKind.Activation), P("v", ParamKind.Activation), Context, P("layer", ParamKind.Int),
                P("heads", ParamKind.Int), P("kvHeads", ParamKind.Int), P("scale", ParamKind.Float), P("window", ParamKind.Int),
                P("softCap", ParamKind.Float), P("causal", ParamKind.Bool),
            },
            AttentionShape, "KV-cache write, then GQA attention (causal or not, windowed, scaled, soft-capped)"),
        new("Lstm", OpKind.Lstm, new[] { P("gates", ParamKind.Activation), P("recurrent", ParamKind.Weight), Context, P("layer", ParamKind.Int) }, LstmShape,
            "LSTM recurrence per sequence, in order from its state slot: z = gates + recurrent·h → [i, f, g, o]; c = σf·c + σi·tanh g; h = σo·tanh c"),
        new("Gru", OpKind.Gru, new[] { P("gates", ParamKind.Activation), P("recurrent", ParamKind.Weight), P("recurrentBias", ParamKind.Weight), Context, P("layer", ParamKind.Int) }, GruShape,
            "GRU recurrence per sequence, in order from its state slot: u = recurrent·h + b → [r, z, n]; r = σ(gates_r + u_r), z = σ(gates_z + u_z), n = tanh(gates_n + r·u_n); h = (1 − z)·n + z·h"),
        new("CausalConv1d", OpKind.CausalConv1d, new[] { X, P("weight", ParamKind.Weight), Context, P("layer", ParamKind.Int) }, CausalConvShape,
            "causal depthwise convolution per sequence, in order, from the last K − 1 inputs in its state slot: y[t, c] = Σₖ weight[c, k]·x[t − K + 1 + k, c]"),
        new("SelectiveScan", OpKind.SelectiveScan, new[]
            {
                X, P("dt", ParamKind.Activation), P("a", ParamKind.Weight), P("b", ParamKind.Activation), P("c", ParamKind.Activation),
                P("d", ParamKind.Weight), P("z", ParamKind.Activation), Context, P("layer", ParamKind.Int),
            },
            SelectiveScanShape, "Mamba-1 selective scan per sequence, in order, from its state slot: Δ = softplus dt; h = e^(Δa)·h + Δb·x; y = (c·h + d·x)·SiLU z"),
        new("Slice", OpKind.Slice, new[] { X, P("start", ParamKind.Int), P("length", ParamKind.Int) }, SliceShape,
            "columns [start, start + length) of each row"),
        new("Concat", OpKind.Concat, new[] { P("a", ParamKind.Activation), P("b", ParamKind.Activation) }, ConcatShape,
            "rows of a and b side by side"),
        new("Silu", OpKind.Silu, new[] { X }, SameAsFirst, "x · sigmoid(x)"),
        new("Gelu", OpKind.Gelu, new[] { X }, SameAsFirst, "0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))"),
        new("GeluErf", OpKind.GeluErf, new[] { X }, SameAsFirst, "0.5·x·(1 + erf(x/√2))"),
        new("Relu", OpKind.Relu, new[] { X }, SameAsFirst, "max(x, 0)"),
        new("Sigmoid", OpKind.Sigmoid, new[] { X }, SameAsFirst, "1 / (1 + e^−x)"),
        new("Tanh", OpKind.Tanh, new[] { X }, SameAsFirst, "tanh x"),
        new("Exp", OpKind.Exp, new[] { X }, SameAsFirst, "e^x"),
        new("Softplus", OpKind.Softplus, new[] { X }, SameAsFirst, "log(1 + e^x)"),
        new("Neg", OpKind.Neg, new[] { X }, SameAsFirst, "−x"),
        new("SoftCap", OpKind.SoftCap, new[] { X, P("cap", ParamKind.Float) }, SameAsFirst, "cap · tanh(x / cap)"),
        new("Add", OpKind.Add, new[] { P("a", ParamKind.Tensor), P("b", ParamKind.Tensor) }, BroadcastShape, "a + b (a row vector broadcasts)"),
        new("Sub", OpKind.Sub, new[] { P("a", ParamKind.Tensor), P("b", ParamKind.Tensor) }, BroadcastShape, "a − b (a row vector broadcasts)"),
        new("Mul", OpKind.Mul, new[] { P("a", ParamKind.Tensor), P("b", ParamKind.Tensor) }, BroadcastShape, "a · b (a row vector broadcasts)"),
        new("Div", OpKind.Div, new[] { P("a", ParamKind.Tensor), P("b", ParamKind.Tensor) }, BroadcastShape, "a / b (a row vector broadcasts)"),
        new("Add", OpKind.Add, new[] { P("a", ParamKind.Activation), P("b", ParamKind.Float) }, SameAsFirst, "a + s"),
        new("Sub", OpKind.Sub, new[] { P("a", ParamKind.Activation), P("b", ParamKind.Float) }, SameAsFirst, "a − s"),
        new("Sub", OpKind.Sub, new[] { P("a", ParamKind.Float), P("b", ParamKind.Activation) }, SameAsFirst, "s − b", scalarFirst: true),
        new("Mul", OpKind.Mul, new[] { P("a", ParamKind.Activation), P("b", ParamKind.Float) }, SameAsFirst, "a · s"),
        new("Div", OpKind.Div, new[] { P("a", ParamKind.Activation), P("b", ParamKind.Float) }, SameAsFirst, "a / s"),
        new("Div", OpKind.Div, new[] { P("a", ParamKind.Float), P("b", ParamKind.Activation) }, SameAsFirst, "s / b", scalarFirst: true),
    };

    private static readonly Dictionary<string, OpDefinition> ByKey = Definitions.ToDictionary(d => d.Key);

    /// <summary>The definition for a signature key, as <see cref="Signature"/> builds it from the bound method.</summary>
    public static bool TryGet(string key, out OpDefinition op) => ByKey.TryGetValue(key, out op!);

    /// <summary>True when Kiln.Ops has a method of this name in the table (whatever its overload).</summary>
    public static bool HasName(string name) => Definitions.Any(d => d.Name == name);

    /// <summary>Every overload, in the table's order (documentation, tests).</summary>
    public static IReadOnlyList<OpDefinition> All => Definitions;

    /// <summary>The names a [Forward] method may call, for the unknown-op message.</summary>
    public static string Names => string.Join(", ", Definitions.Select(d => "Ops." + d.Name).Distinct());

    public static string Signature(string name, IEnumerable<string> parameterTypes) => name + "(" + string.Join(",", parameterTypes) + ")";

    /// <summary>The type name a parameter kind has in a signature key.</summary>
    public static string TypeName(ParamKind kind) => kind switch
    {
        ParamKind.Activation or ParamKind.Weight or ParamKind.Tensor => "Tensor",
        ParamKind.Tokens => "tokens",
        ParamKind.Context => "context",
        ParamKind.Int => "int",
        ParamKind.Float => "float",
        ParamKind.Bool => "bool",
        ParamKind.Pooling => "Pooling",
        _ => "RopeStyle",
    };

    private static ShapeResult GatherShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        if (s[0].Rank != 2) return ShapeResult.Fail($"the table must be [Rows, Dim], got {s[0]}", 0);
        return ShapeResult.Ok(Shape.Of(Shape.Tokens, s[0].Cols));
    }

    private static ShapeResult SelectRowsShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        if (s[0].Rank != 2 || s[0].Dims[0] != Shape.Tokens) return ShapeResult.Fail($"expected one row per token [T, features], got {s[0]}", 0);
        return ShapeResult.Ok(Shape.Of(Shape.Outputs, s[0].Cols));
    }

    private static ShapeResult PoolShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        if (s[0].Rank != 2 || s[0].Dims[0] != Shape.Tokens) return ShapeResult.Fail($"pooling reads one row per token [T, features], got {s[0]}", 0);
        return ShapeResult.Ok(Shape.Of(Shape.Sequences, s[0].Cols));
    }

    private static ShapeResult NormShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        for (int i = 1; i < s.Count; i++)
        {
            if (s[i].Rank != 1) return ShapeResult.Fail($"the norm's {(i == 1 ? "weight" : "bias")} must be a vector, got {s[i]}", i);
            if (s[0].Cols != s[i].Cols) return ShapeResult.Fail($"norm {(i == 1 ? "weight" : "bias")} {s[i]} does not match rows of {s[0]}", i);
        }
        return ShapeResult.Ok(s[0]);
    }

    private static ShapeResult HeadNormShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _) =>
        s[1].Rank != 1 ? ShapeResult.Fail($"the norm weight must be a vector of the head dimension, got {s[1]}", 1) : ShapeResult.Ok(s[0]);

    private static ShapeResult LinearShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        if (s[1].Rank != 2) return ShapeResult.Fail($"the weight must be [Out, In], got {s[1]}", 1);
        if (s[0].Rank != 2) return ShapeResult.Fail($"the input must be [Rows, In], got {s[0]}", 0);
        if (s[0].Cols != s[1].Cols) return ShapeResult.Fail($"input {s[0]} and weight {s[1]} differ in the inner dimension ({s[0].Cols} vs {s[1].Cols})", 1);
        if (s.Count > 2 && (s[2].Rank != 1 || s[2].Cols != s[1].Dims[0]))
            return ShapeResult.Fail($"the bias must be a vector of the {s[1].Dims[0]} outputs, got {s[2]}", 2);
        return ShapeResult.Ok(Shape.Of(s[0].Dims[0], s[1].Dims[0]));
    }

    private static ShapeResult AttentionShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        if (!s[1].Equals(s[2])) return ShapeResult.Fail($"k {s[1]} and v {s[2]} differ", 2);
        if (s[0].Rank != 2 || s[1].Rank != 2) return ShapeResult.Fail($"q {s[0]} and k {s[1]} must be [T, features]", 0);
        if (s[0].Dims[0] != s[1].Dims[0]) return ShapeResult.Fail($"q {s[0]} and k {s[1]} differ in rows", 1);
        return ShapeResult.Ok(s[0]);
    }

    private static ShapeResult LstmShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        if (s[1].Rank != 2) return ShapeResult.Fail($"the recurrent weight must be [4*Hidden, Hidden], got {s[1]}", 1);
        if (s[1].Dims[0] != "4*" + s[1].Cols) return ShapeResult.Fail($"the recurrent weight must be [4*{s[1].Cols}, {s[1].Cols}] (four gates of the hidden size), got {s[1]}", 1);
        if (s[0].Rank != 2 || s[0].Dims[0] != Shape.Tokens) return ShapeResult.Fail($"the gates must be one row per token [T, 4*Hidden], got {s[0]}", 0);
        if (s[0].Cols != s[1].Dims[0]) return ShapeResult.Fail($"gates {s[0]} and the recurrent weight {s[1]} differ in the gate dimension", 0);
        return ShapeResult.Ok(Shape.Of(Shape.Tokens, s[1].Cols));
    }

    private static ShapeResult GruShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        if (s[1].Rank != 2) return ShapeResult.Fail($"the recurrent weight must be [3*Hidden, Hidden], got {s[1]}", 1);
        if (s[1].Dims[0] != "3*" + s[1].Cols) return ShapeResult.Fail($"the recurrent weight must be [3*{s[1].Cols}, {s[1].Cols}] (three gates of the hidden size), got {s[1]}", 1);
        if (s[2].Rank != 1 || s[2].Cols != s[1].Dims[0]) return ShapeResult.Fail($"the recurrent bias must be a vector of the {s[1].Dims[0]} gate rows, got {s[2]}", 2);
        if (s[0].Rank != 2 || s[0].Dims[0] != Shape.Tokens) return ShapeResult.Fail($"the gates must be one row per token [T, 3*Hidden], got {s[0]}", 0);
        if (s[0].Cols != s[1].Dims[0]) return ShapeResult.Fail($"gates {s[0]} and the recurrent weight {s[1]} differ in the gate dimension", 0);
        return ShapeResult.Ok(Shape.Of(Shape.Tokens, s[1].Cols));
    }

    private static ShapeResult CausalConvShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        if (s[1].Rank != 2) return ShapeResult.Fail($"the weight must be [Channels, K] (each channel's kernel), got {s[1]}", 1);
        if (s[0].Rank != 2 || s[0].Dims[0] != Shape.Tokens) return ShapeResult.Fail($"the input must be one row per token [T, Channels], got {s[0]}", 0);
        if (s[0].Cols != s[1].Dims[0]) return ShapeResult.Fail($"input {s[0]} and weight {s[1]} differ in the channels", 1);
        return ShapeResult.Ok(s[0]);
    }

    private static ShapeResult SelectiveScanShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        // x, dt, a, b, c, d, z
        if (s[0].Rank != 2 || s[0].Dims[0] != Shape.Tokens) return ShapeResult.Fail($"x must be one row per token [T, Channels], got {s[0]}", 0);
        if (s[2].Rank != 2) return ShapeResult.Fail($"a must be [Channels, State], got {s[2]}", 2);
        string channels = s[2].Dims[0], state = s[2].Cols;
        if (s[0].Cols != channels) return ShapeResult.Fail($"x {s[0]} and a {s[2]} differ in the channels", 0);
        foreach (int i in new[] { 1, 6 })
            if (!s[i].Equals(s[0])) return ShapeResult.Fail($"{(i == 1 ? "dt" : "z")} {s[i]} must have x's shape {s[0]}", i);
        foreach (int i in new[] { 3, 4 })
            if (s[i].Rank != 2 || s[i].Dims[0] != Shape.Tokens || s[i].Cols != state)
                return ShapeResult.Fail($"{(i == 3 ? "b" : "c")} must be one row of the state size per token [T, {state}], got {s[i]}", i);
        if (s[5].Rank != 1 || s[5].Cols != channels) return ShapeResult.Fail($"d must be a vector of the {channels} channels, got {s[5]}", 5);
        return ShapeResult.Ok(s[0]);
    }

    private static ShapeResult SliceShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> scalars)
    {
        if (s[0].Rank != 2) return ShapeResult.Fail($"the input must be [Rows, Cols], got {s[0]}", 0);
        string? start = scalars[0].AsDim(), length = scalars[1].AsDim();
        if (start is null || length is null)
            return ShapeResult.Fail($"the slice's start ({scalars[0]}) and length ({scalars[1]}) must be fixed by the model's int members and literals (+ − * /), not change per layer");
        if (length == "0") return ShapeResult.Fail("the slice is empty");
        return ShapeResult.Ok(Shape.Of(s[0].Dims[0], length));
    }

    private static ShapeResult ConcatShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        if (s[0].Rank != 2 || s[1].Rank != 2 || s[0].Dims[0] != s[1].Dims[0]) return ShapeResult.Fail($"{s[0]} and {s[1]} must be [Rows, ·] with the same rows", 1);
        return ShapeResult.Ok(Shape.Of(s[0].Dims[0], s[0].Cols + "+" + s[1].Cols));
    }

    private static ShapeResult SameAsFirst(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _) => ShapeResult.Ok(s[0]);

    private static ShapeResult BroadcastShape(IReadOnlyList<Shape> s, IReadOnlyList<ScalarExpr> _)
    {
        if (s[0].Equals(s[1])) return ShapeResult.Ok(s[0]);
        if (s[1].Rank == 1 && s[0].Rank == 2 && s[1].Cols == s[0].Cols) return ShapeResult.Ok(s[0]);
        if (s[0].Rank == 1 && s[1].Rank == 2 && s[0].Cols == s[1].Cols) return ShapeResult.Ok(s[1]);
        return ShapeResult.Fail($"operands differ in shape, {s[0]} and {s[1]} (a row vector broadcasts when its length is the rows' length)", 1);
    }
}
