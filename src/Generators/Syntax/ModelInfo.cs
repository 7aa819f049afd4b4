using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;

namespace Kiln.Generators.Syntax;

/// <summary>
/// Everything the generator needs from one [Model] class, as plain equatable data (no symbols, no syntax nodes),
/// so an edit elsewhere in the compilation leaves the pipeline cached.
/// </summary>
/// <remarks><see cref="DefaultFormat"/>: the WeightFormat member name of the class's [Quantize], "" without one.</remarks>
internal sealed record ModelInfo(
    string Namespace,
    string ClassName,
    string Accessibility,
    string Architecture,
    EquatableArray<HyperInfo> Hypers,
    EquatableArray<string> IntMembers,
    EquatableArray<string> FloatMembers,
    EquatableArray<WeightInfo> Weights,
    EquatableArray<LayersInfo> Layers,
    EquatableArray<string> FreeDims,
    string ForwardName,
    EquatableArray<StmtInfo> Forward,
    LocationInfo? Location,
    string DefaultFormat = "")
{
    public string FullName => Namespace.Length == 0 ? ClassName : Namespace + "." + ClassName;
}

/// <summary>A [Hyper] member: metadata key ("{arch}" already replaced), whether required, and its C# type keyword.</summary>
internal sealed record HyperInfo(string Member, string Key, bool Required, string Type);

/// <summary>
/// A [Weight] member. <see cref="Owner"/> is "" for a model-level weight or the [Layers] member for a block weight
/// (whose file name is prefixed per layer). Dims are canonical shape expressions: "Dim", "Heads*HeadDim", "64".
/// <see cref="Format"/> is the WeightFormat member name of its own [Quantize] ("" when it has none), located at
/// <see cref="FormatLocation"/>.
/// </summary>
internal sealed record WeightInfo(string Owner, string Member, string Name, EquatableArray<string> Dims, string? TiedTo,
    string Format = "", LocationInfo? FormatLocation = null)
{
    public string Key => Owner.Length == 0 ? Member : Owner + "." + Member;
}

/// <summary>A [Layers] member: an array of the nested class <see cref="ClassName"/>, <see cref="CountMember"/> long.</summary>
internal sealed record LayersInfo(string Member, string ClassName, string Prefix, string CountMember);

internal enum StmtKind
{
    /// <summary><c>var x = e;</c> or <c>x = e;</c>: binds local <see cref="StmtInfo.Target"/> to a new value.</summary>
    Assign,

    /// <summary><c>for (int layer = 0; layer &lt; Count; layer++) { ... }</c> over a [Layers] member: a repeated region.</summary>
    LayerLoop,

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
    LocationInfo? Location);

internal enum ExprKind
{
    /// <summary>A call into the op table (Kiln.Ops.Name or a tensor operator); <see cref="ExprInfo.Args"/> in order.</summary>
    Op,
    Local,
    /// <summary>A [Weight] member; <see cref="ExprInfo.Name"/> is <see cref="WeightInfo.Key"/>.</summary>
    Weight,
    /// <summary>The forward method's token span parameter.</summary>
    Tokens,
    /// <summary>The forward method's attention context parameter.</summary>
    Context,
    /// <summary>A numeric member of the model (hyper or derived); Name is the member.</summary>
    ScalarMember,
    /// <summary>A numeric literal; Name is its source text.</summary>
    ScalarLiteral,
    /// <summary>The layer loop's index variable.</summary>
    LayerIndex,
}

internal sealed record ExprInfo(ExprKind Kind, string Name, EquatableArray<ExprInfo> Args, LocationInfo? Location);

/// <summary>The transform's output: the model (null when extraction failed outright) and what was found wrong.</summary>
internal sealed record ExtractionResult(string HintName, ModelInfo? Model, EquatableArray<DiagnosticInfo> Diagnostics);
