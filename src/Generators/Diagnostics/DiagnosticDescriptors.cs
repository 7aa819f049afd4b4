using Microsoft.CodeAnalysis;

namespace Kiln.Generators.Diagnostics;

/// <summary>Every diagnostic Kiln's generator reports. Ids are stable: add new ones, never renumber.</summary>
internal static class DiagnosticDescriptors
{
    private const string Category = "Kiln";

    public static readonly DiagnosticDescriptor UnsupportedConstruct = new(
        "KLN0001", "Unsupported construct in a [Forward] method",
        "{0} is not supported in a [Forward] method: {1}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor UnknownOp = new(
        "KLN0002", "Unknown op",
        "'{0}' is not a Kiln op; a [Forward] method can call only {1}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor ShapeMismatch = new(
        "KLN0003", "Shape mismatch",
        "{0}: {1}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor TypeMismatch = new(
        "KLN0004", "Type mismatch",
        "{0}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor UndeclaredWeight = new(
        "KLN0005", "Tensor used without a [Weight] declaration",
        "'{0}' is a tensor member used in the [Forward] method without a [Weight] attribute; the compiled plan cannot bind it from the model file",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor InvalidShapeExpression = new(
        "KLN0006", "Invalid shape expression",
        "Shape dimension \"{0}\" of weight '{1}' is invalid: {2}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor MalformedModel = new(
        "KLN0007", "Malformed model definition",
        "Model '{0}': {1}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor InvalidLayers = new(
        "KLN0008", "Invalid [Layers] member",
        "[Layers] member '{0}': {1}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor InternalError = new(
        "KLN0009", "Internal generator error",
        "The Kiln generator failed on '{0}' and produced no code: {1}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor InvalidQuantize = new(
        "KLN0010", "Invalid [Quantize]",
        "[Quantize] on '{0}': {1}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor SharedCacheLayer = new(
        "KLN0011", "Two attentions write one layer of the KV cache",
        "Two Ops.Attention calls that can run in the same step write KV-cache layer '{0}'; give each attention its own layer index (the second would overwrite the first's keys and values)",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor EncoderAttentionCausality = new(
        "KLN0012", "An encoder's attention must state its causality",
        "Ops.Attention in an encoder ([Model(Kind = ModelKind.Encoder)]) must say causal: false (each token sees its whole sequence, as BERT) or causal: true; the default is a decoder's, which an encoder would take silently",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor ModelKindMismatch = new(
        "KLN0013", "Op not available to this kind of model",
        "{0}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor InvalidSparse = new(
        "KLN0014", "Invalid [Sparse]",
        "[Sparse] on '{0}': {1}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static DiagnosticDescriptor ById(string id) => id switch
    {
        "KLN0001" => UnsupportedConstruct,
        "KLN0002" => UnknownOp,
        "KLN0003" => ShapeMismatch,
        "KLN0004" => TypeMismatch,
        "KLN0005" => UndeclaredWeight,
        "KLN0006" => InvalidShapeExpression,
        "KLN0007" => MalformedModel,
        "KLN0008" => InvalidLayers,
        "KLN0010" => InvalidQuantize,
        "KLN0011" => SharedCacheLayer,
        "KLN0012" => EncoderAttentionCausality,
        "KLN0013" => ModelKindMismatch,
        "KLN0014" => InvalidSparse,
        _ => InternalError,
    };
}
