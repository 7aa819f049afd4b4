using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;

namespace Kiln.Generators.Syntax;

/// <summary>
/// Everything the generator needs from one [Model] class, as plain equatable data (no symbols, no syntax nodes),
/// so an edit elsewhere in the compilation leaves the pipeline cached.
/// </summary>
/// <remarks>
/// <see cref="DefaultFormat"/>: the WeightFormat member name of the class's [Quantize], "" without one.
/// <see cref="Tokenizer"/>: the tokenizer.ggml.model the [Model] attribute expects, "" when it names none.
/// <see cref="Encoder"/>: the [Model] says Kind = ModelKind.Encoder (no KV cache; whole sequences per step).
/// <see cref="DefaultSparse"/>: the class's [Sparse], null without one.
/// </remarks>
internal sealed record ModelInfo(
    string Namespace,
    string ClassName,
    string Accessibility,
    string Architecture,
    EquatableArray<HyperInfo> Hypers,
    EquatableArray<string> IntMembers,
    EquatableArray<WeightInfo> Weights,
    EquatableArray<LayersInfo> Layers,
    EquatableArray<string> FreeDims,
    string ForwardName,
    EquatableArray<StmtInfo> Forward,
    LocationInfo? Location,
    string DefaultFormat = "",
    string Tokenizer = "",
    bool Encoder = false,
    SparseInfo? DefaultSparse = null)
{
    public string FullName => Namespace.Length == 0 ? ClassName : Namespace + "." + ClassName;
}

/// <summary>
/// A [Hyper] member: GGUF metadata key ("{arch}" already replaced; "" when only a Hugging Face config states it),
/// whether required, its C# type keyword ("int[]" and "float[]" hold one value per layer), and its Hugging Face config
/// key ("" when it has none). <see cref="LayerCount"/> is the count member a per-layer value's length must equal.
/// </summary>
internal sealed record HyperInfo(string Member, string Key, bool Required, string Type, string HuggingFaceKey = "", string LayerCount = "")
{
    public bool PerLayer => Type.EndsWith("[]");
}

/// <summary>
/// A [Weight] member. <see cref="Owner"/> is "" for a model-level weight or the [Layers] member for a block weight
/// (whose file name is prefixed per layer). Dims are canonical shape expressions: "Dim", "Heads*HeadDim", "64".
/// <see cref="Format"/> is the WeightFormat member name of its own [Quantize] ("" when it has none), located at
/// <see cref="FormatLocation"/>. <see cref="HuggingFaceName"/> is its name in a Hugging Face checkpoint ("" when it
/// declares none), <see cref="Conversion"/> the HuggingFaceConversion member applied to it there ("" for none) and
/// <see cref="HeadSize"/> that conversion's canonical head dimension ("" when it takes none). An
/// <see cref="Optional"/> layer weight may be absent from some layers (its member then stays null).
/// </summary>
internal sealed record WeightInfo(string Owner, string Member, string Name, EquatableArray<string> Dims, string? TiedTo,
    string Format = "", LocationInfo? FormatLocation = null, string HuggingFaceName = "", string Conversion = "", string HeadSize = "",
    SparseInfo? Sparse = null, bool Optional = false)
{
    public string Key => Owner.Length == 0 ? Member : Owner + "." + Member;
}

/// <summary>
/// A [Sparse] attribute: <see cref="Pattern"/> is the SparsePattern member name ("None", "TwoFour", "Blocks"); with
/// <see cref="Prune"/> the weight is magnitude-pruned at load, keeping <see cref="KeepFraction"/> of its tiles
/// (blocks); <see cref="Location"/> is the attribute's, for diagnostics.
/// </summary>
internal sealed record SparseInfo(string Pattern, bool Prune, double KeepFraction, LocationInfo? Location);

/// <summary>
/// A [Layers] member: an array of the nested class <see cref="ClassName"/>, <see cref="CountMember"/> long, whose
/// weights' names start with <see cref="Prefix"/> (GGUF) or <see cref="HuggingFacePrefix"/> ("" when it has none).
/// </summary>
internal sealed record LayersInfo(string Member, string ClassName, string Prefix, string CountMember, string HuggingFacePrefix = "");

internal enum StmtKind
{
    /// <summary><c>var x = e;</c> or <c>x = e;</c>: binds local <see cref="StmtInfo.Target"/> to a new value.</summary>
    Assign,

    /// <summary><c>for (int layer = 0; layer &lt; Count; layer++) { ... }</c> over a [Layers] member: a repeated region.</summary>
    LayerLoop,

    /// <summary><c>if (condition) { Body } else { Else }</c> on a scalar condition (the layer index, hyperparameters).</summary>
    If,

    /// <summary><c>return e;</c></summary>
    Return,
}

internal sealed record StmtInfo(
    StmtKind Kind,
    string Target,
    ExprInfo? Value,
    EquatableArray<StmtInfo> Body,
    string LoopVariable,
    string LayersMember,
    string CountMember,
    LocationInfo? Location,
    ScalarExpr? Condition = null,
    EquatableArray<StmtInfo> Else = default);

internal enum ExprKind
{
    /// <summary>
    /// A call into the op table (a Kiln.Ops method or a tensor operator); <see cref="ExprInfo.Name"/> is the op's
    /// signature key (<see cref="Ir.OpTable"/>), <see cref="ExprInfo.Args"/> one per parameter, defaults filled in.
    /// </summary>
    Op,
    Local,
    /// <summary>A [Weight] member; <see cref="ExprInfo.Name"/> is <see cref="WeightInfo.Key"/>.</summary>
    Weight,
    /// <summary>The forward method's token span.</summary>
    Tokens,
    /// <summary>The forward method's attention context.</summary>
    Context,
    /// <summary>A scalar: literal, member, the layer index, or arithmetic on them (<see cref="ExprInfo.Scalar"/>).</summary>
    Scalar,
    /// <summary><c>condition ? a : b</c> over tensors: <see cref="ExprInfo.Scalar"/> the condition, Args [a, b].</summary>
    Conditional,
}

internal sealed record ExprInfo(ExprKind Kind, string Name, EquatableArray<ExprInfo> Args, LocationInfo? Location, ScalarExpr? Scalar = null);

/// <summary>The transform's output: the model (null when extraction failed outright) and what was found wrong.</summary>
internal sealed record ExtractionResult(string HintName, ModelInfo? Model, EquatableArray<DiagnosticInfo> Diagnostics);
