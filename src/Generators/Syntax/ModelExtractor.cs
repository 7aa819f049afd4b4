using System;
using System.Collections.Generic;
using System.Collections.Immutable;
using System.Linq;
using System.Threading;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace Kiln.Generators.Syntax;

/// <summary>
/// The extraction half's entry: reads one [Model] class (members, attributes, the [Forward] body) into a
/// <see cref="ModelInfo"/>. Every problem becomes a <see cref="DiagnosticInfo"/>; nothing here throws.
/// </summary>
internal static partial class ModelExtractor
{
    public const string ModelAttribute = "Kiln.ModelAttribute";
    private const string HyperAttribute = "Kiln.HyperAttribute";
    private const string WeightAttribute = "Kiln.WeightAttribute";
    private const string LayersAttribute = "Kiln.LayersAttribute";
    private const string ForwardAttribute = "Kiln.ForwardAttribute";
    private const string QuantizeAttribute = "Kiln.QuantizeAttribute";
    private const string SparseAttribute = "Kiln.SparseAttribute";

    /// <summary>Kiln.SparsePattern's members by value.</summary>
    private static readonly string[] SparsePatterns = { "None", "TwoFour", "Blocks" };

    /// <summary>Kiln.WeightFormat's members by value (the attribute argument arrives as its underlying int).</summary>
    private static readonly string[] WeightFormats = { "AsStored", "F32", "BF16", "Q8_0", "Q4_0" };

    /// <summary>Kiln.HuggingFaceConversion's members by value; "None" (0) is kept as "".</summary>
    private static readonly string[] HuggingFaceConversions = { "", "RopeHalvesToPairs", "Transpose", "AddOne" };
    private const string RopeHalvesToPairs = "RopeHalvesToPairs";
    private const string TensorType = "Kiln.Tensor";
    private const string ContextType = "Kiln.AttentionContext";

    public static ExtractionResult Extract(GeneratorAttributeSyntaxContext context, CancellationToken cancellationToken)
    {
        var type = (INamedTypeSymbol)context.TargetSymbol;
        string hintName = HintName(type);
        try
        {
            var extractor = new Extraction(type, (ClassDeclarationSyntax)context.TargetNode, context.SemanticModel, context.Attributes, cancellationToken);
            var model = extractor.Run();
            return new ExtractionResult(hintName, model, extractor.Diagnostics.ToEquatableArray());
        }
        catch (OperationCanceledException)
        {
            throw;
        }
        catch (Exception e)
        {
            var diagnostic = DiagnosticInfo.Create(DiagnosticDescriptors.InternalError,
                LocationInfo.From(((ClassDeclarationSyntax)context.TargetNode).Identifier), type.Name, e.GetType().Name + ": " + e.Message);
            return new ExtractionResult(hintName, null, EquatableArray.Create(diagnostic));
        }
    }

    private static string HintName(INamedTypeSymbol type)
    {
        string name = type.ToDisplayString(SymbolDisplayFormat.FullyQualifiedFormat).Replace("global::", "");
        var chars = name.Select(c => char.IsLetterOrDigit(c) || c == '.' || c == '_' ? c : '_').ToArray();
        return new string(chars) + ".g.cs";
    }

    private static string FullName(ITypeSymbol type) => type.ToDisplayString(SymbolDisplayFormat.FullyQualifiedFormat).Replace("global::", "");

    private static bool IsTensor(ITypeSymbol? type) => type is not null && FullName(type) == TensorType;

    private static string? NumericKeyword(ITypeSymbol type) => type.SpecialType switch
    {
        SpecialType.System_Int32 => "int",
        SpecialType.System_Int64 => "long",
        SpecialType.System_Single => "float",
        SpecialType.System_Double => "double",
        _ => null,
    };

    private static ITypeSymbol? MemberType(ISymbol member) => member switch
    {
        IFieldSymbol field => field.Type,
        IPropertySymbol property => property.Type,
        _ => null,
    };

    private static AttributeData? FindAttribute(ISymbol symbol, string name) =>
        symbol.GetAttributes().FirstOrDefault(a => a.AttributeClass is not null && FullName(a.AttributeClass) == name);

    /// <summary>A named string argument of an attribute ("" when absent).</summary>
    private static string NamedString(AttributeData attribute, string name) =>
        attribute.NamedArguments.FirstOrDefault(a => a.Key == name).Value.Value as string ?? "";

    /// <summary>The syntax of a member's declared type (for locations), or its declaration.</summary>
    private static SyntaxNode? MemberTypeSyntax(ISymbol member)
    {
        var node = member.DeclaringSyntaxReferences.FirstOrDefault()?.GetSyntax();
        return node switch
        {
            VariableDeclaratorSyntax { Parent: VariableDeclarationSyntax declaration } => declaration.Type,
            PropertyDeclarationSyntax property => property.Type,
            _ => node,
        };
    }

    private static bool IsPartial(INamedTypeSymbol type) =>
        type.DeclaringSyntaxReferences.Any(r => r.GetSyntax() is TypeDeclarationSyntax t && t.Modifiers.Any(SyntaxKind.PartialKeyword));

    /// <summary>The state of one extraction (diagnostics accumulate here).</summary>
    private sealed partial class Extraction
    {
        private readonly INamedTypeSymbol _type;
        private readonly ClassDeclarationSyntax _declaration;
        private readonly SemanticModel _semanticModel;
        private readonly ImmutableArray<AttributeData> _attributes;
        private readonly CancellationToken _cancellationToken;

        private readonly List<HyperInfo> _hypers = new();
        private readonly List<string> _intMembers = new();
        private readonly List<string> _floatMembers = new();
        private readonly List<WeightInfo> _weights = new();
        private readonly List<LayersInfo> _layers = new();
        private readonly List<string> _freeDims = new();
        private readonly Dictionary<ISymbol, string> _weightKeys = new(SymbolEqualityComparer.Default);
        private readonly Dictionary<string, INamedTypeSymbol> _layerTypes = new();
        private bool _encoder;

        public Extraction(INamedTypeSymbol type, ClassDeclarationSyntax declaration, SemanticModel semanticModel,
            ImmutableArray<AttributeData> attributes, CancellationToken cancellationToken)
        {
            _type = type;
            _declaration = declaration;
            _semanticModel = semanticModel;
            _attributes = attributes;
            _cancellationToken = cancellationToken;
        }

        public List<DiagnosticInfo> Diagnostics { get; } = new();

        private void Report(DiagnosticDescriptor descriptor, LocationInfo? location, params string[] arguments) =>
            Diagnostics.Add(DiagnosticInfo.Create(descriptor, location ?? LocationInfo.From(_declaration.Identifier), arguments));

        public ModelInfo? Run()
        {
            var classLocation = LocationInfo.From(_declaration.Identifier);
            if (!IsPartial(_type))
                Report(DiagnosticDescriptors.MalformedModel, classLocation, _type.Name, "the class must be declared partial so the generator can add Load, Compile and the compiled plan");
            if (_type.ContainingType is not null)
                Report(DiagnosticDescriptors.MalformedModel, classLocation, _type.Name, "a model must be a top-level class, not nested in another type");
            if (_type.TypeParameters.Length > 0)
                Report(DiagnosticDescriptors.MalformedModel, classLocation, _type.Name, "a model class cannot be generic");

            string architecture = _attributes.Length > 0 && _attributes[0].ConstructorArguments.Length > 0
                ? _attributes[0].ConstructorArguments[0].Value as string ?? ""
                : "";
            if (architecture.Length == 0)
                Report(DiagnosticDescriptors.MalformedModel, classLocation, _type.Name, "[Model] needs a non-empty architecture name");
            string tokenizer = _attributes.Length > 0
                ? _attributes[0].NamedArguments.FirstOrDefault(a => a.Key == "Tokenizer").Value.Value as string ?? ""
                : "";

            _encoder = _attributes.Length > 0 && _attributes[0].NamedArguments.FirstOrDefault(a => a.Key == "Kind").Value.Value is 1;
            string defaultFormat = ReadFormat(_type) ?? "";
            var defaultSparse = ReadSparse(_type);
            CollectMembers(_type, owner: "", architecture);
            _cancellationToken.ThrowIfCancellationRequested();
            ValidateLayers();
            ValidateShapes();
            ValidateHuggingFaceNames();
            _cancellationToken.ThrowIfCancellationRequested();

            var forward = FindForward();
            var body = forward is null ? ImmutableArray<StmtInfo>.Empty : ExtractForward(forward);

            return new ModelInfo(
                _type.ContainingNamespace.IsGlobalNamespace ? "" : _type.ContainingNamespace.ToDisplayString(),
                _type.Name,
                _type.DeclaredAccessibility == Accessibility.Public ? "public" : "internal",
                architecture,
                _hypers.ToEquatableArray(),
                _intMembers.ToEquatableArray(),
                _weights.ToEquatableArray(),
                _layers.ToEquatableArray(),
                _freeDims.ToEquatableArray(),
                forward?.Name ?? "",
                body.ToEquatableArray(),
                classLocation,
                defaultFormat,
                tokenizer,
                _encoder,
                defaultSparse);
        }

        /// <summary>
        /// The format named by <paramref name="symbol"/>'s [Quantize], or null without one (or with an invalid one,
        /// which is reported).
        /// </summary>
        private string? ReadFormat(ISymbol symbol)
        {
            if (FindAttribute(symbol, QuantizeAttribute) is not { } attribute) return null;
            var value = attribute.ConstructorArguments.FirstOrDefault().Value;
            if (value is int index && index >= 0 && index < WeightFormats.Length) return WeightFormats[index];
            Report(DiagnosticDescriptors.InvalidQuantize, QuantizeLocation(attribute), symbol.Name,
                $"{value ?? "the argument"} is not a WeightFormat ({string.Join(", ", WeightFormats)})");
            return null;
        }

        /// <summary>
        /// <paramref name="symbol"/>'s [Sparse], or null without one (or with an invalid one, which is reported): a
        /// pattern, and a keep fraction in (0, 1] when block pruning is asked for.
        /// </summary>
        private SparseInfo? ReadSparse(ISymbol symbol)
        {
            if (FindAttribute(symbol, SparseAttribute) is not { } attribute) return null;
            var location = QuantizeLocation(attribute);
            var value = attribute.ConstructorArguments.FirstOrDefault().Value;
            if (value is not int index || index < 0 || index >= SparsePatterns.Length)
            {
                Report(DiagnosticDescriptors.InvalidSparse, location, symbol.Name, $"{value ?? "the argument"} is not a SparsePattern ({string.Join(", ", SparsePatterns)})");
                return null;
            }
            bool prune = attribute.NamedArguments.Any(a => a.Key == "Prune" && a.Value.Value is true);
            double keep = attribute.NamedArguments.FirstOrDefault(a => a.Key == "KeepFraction").Value.Value is double k ? k : 0;
            if (prune && SparsePatterns[index] == "Blocks" && !(keep > 0 && keep <= 1))
            {
                Report(DiagnosticDescriptors.InvalidSparse, location, symbol.Name, $"pruning blocks needs KeepFraction, the fraction of 8×32 tiles kept, in (0, 1]; it is {keep}");
                return null;
            }
            return new SparseInfo(SparsePatterns[index], prune, keep, location);
        }

        private LocationInfo? QuantizeLocation(AttributeData attribute) =>
            LocationInfo.From(attribute.ApplicationSyntaxReference?.GetSyntax(_cancellationToken));

        private void CollectMembers(INamedTypeSymbol type, string owner, string architecture)
        {
            foreach (var member in type.GetMembers())
            {
                _cancellationToken.ThrowIfCancellationRequested();
                if (member.IsImplicitlyDeclared || member is not (IFieldSymbol or IPropertySymbol)) continue;
                if (member is IFieldSymbol { AssociatedSymbol: not null }) continue; // auto-property backing field
                var memberType = MemberType(member)!;

                // [Quantize] belongs on [Weight] members (the Linear weights) or on the model class.
                var quantize = FindAttribute(member, QuantizeAttribute);
                string? format = null;
                if (quantize is not null)
                {
                    if (FindAttribute(member, WeightAttribute) is null)
                        Report(DiagnosticDescriptors.InvalidQuantize, QuantizeLocation(quantize), member.Name,
                            "it is not a [Weight]; [Quantize] chooses the layout of a Linear weight, on a [Weight] member or on the [Model] class");
                    else
                        format = ReadFormat(member);
                }

                SparseInfo? sparse = null;
                if (FindAttribute(member, SparseAttribute) is { } sparseAttribute)
                {
                    if (FindAttribute(member, WeightAttribute) is null)
                        Report(DiagnosticDescriptors.InvalidSparse, QuantizeLocation(sparseAttribute), member.Name,
                            "it is not a [Weight]; [Sparse] chooses the layout of a Linear weight, on a [Weight] member or on the [Model] class");
                    else
                        sparse = ReadSparse(member);
                }

                if (FindAttribute(member, HyperAttribute) is { } hyper)
                {
                    // int[] and float[]: one value per layer (a GGUF array, or a scalar every layer shares).
                    string? keyword = memberType is IArrayTypeSymbol { Rank: 1 } array
                        ? NumericKeyword(array.ElementType) is "int" or "float" ? NumericKeyword(array.ElementType) + "[]" : null
                        : NumericKeyword(memberType);
                    if (owner.Length > 0)
                    {
                        Report(DiagnosticDescriptors.MalformedModel, LocationInfo.From(MemberTypeSyntax(member)), _type.Name,
                            $"[Hyper] '{member.Name}' belongs on the model class, not on the layer class");
                    }
                    else if (keyword is null)
                    {
                        Report(DiagnosticDescriptors.TypeMismatch, LocationInfo.From(MemberTypeSyntax(member)),
                            $"[Hyper] member '{member.Name}' has type {memberType.ToDisplayString()}; a hyperparameter must be int, long, float or double, or int[] or float[] for one value per layer");
                    }
                    else
                    {
                        string key = (hyper.ConstructorArguments.FirstOrDefault().Value as string ?? "").Replace("{arch}", architecture);
                        bool required = hyper.NamedArguments.Any(a => a.Key == "Required" && a.Value.Value is true);
                        string huggingFace = NamedString(hyper, "HuggingFace");
                        if (key.Length == 0 && huggingFace.Length == 0)
                            Report(DiagnosticDescriptors.MalformedModel, LocationInfo.From(MemberTypeSyntax(member)), _type.Name,
                                $"[Hyper] '{member.Name}' names no key: give its GGUF key, or HuggingFace = \"...\" for one only a Hugging Face config states");
                        _hypers.Add(new HyperInfo(member.Name, key, required, keyword, huggingFace));
                        if (!keyword.EndsWith("[]")) (keyword is "int" or "long" ? _intMembers : _floatMembers).Add(member.Name);
                    }
                    continue;
                }

                if (FindAttribute(member, WeightAttribute) is { } weight)
                {
                    if (!IsTensor(memberType))
                    {
                        Report(DiagnosticDescriptors.TypeMismatch, LocationInfo.From(MemberTypeSyntax(member)),
                            $"[Weight] member '{member.Name}' has type {memberType.ToDisplayString()}; a weight must be Kiln.Tensor");
                        continue;
                    }
                    string name = weight.ConstructorArguments.Length > 0 ? weight.ConstructorArguments[0].Value as string ?? "" : "";
                    var dims = weight.ConstructorArguments.Length > 1 && weight.ConstructorArguments[1].Kind == TypedConstantKind.Array
                        ? weight.ConstructorArguments[1].Values.Select(v => v.Value as string ?? "").ToArray()
                        : Array.Empty<string>();
                    string? tiedTo = weight.NamedArguments.FirstOrDefault(a => a.Key == "TiedTo").Value.Value as string;
                    var conversion = weight.NamedArguments.FirstOrDefault(a => a.Key == "FromHuggingFace").Value.Value;
                    var info = new WeightInfo(owner, member.Name, name, dims.ToEquatableArray(), tiedTo,
                        format ?? "", format is null ? null : QuantizeLocation(quantize!),
                        NamedString(weight, "HuggingFace"),
                        conversion is int index && index > 0 && index < HuggingFaceConversions.Length ? HuggingFaceConversions[index] : "",
                        NamedString(weight, "HeadSize"), sparse,
                        weight.NamedArguments.Any(a => a.Key == "Optional" && a.Value.Value is true));
                    if (info.Optional && owner.Length == 0)
                    {
                        Report(DiagnosticDescriptors.MalformedModel, LocationInfo.From(MemberTypeSyntax(member)), _type.Name,
                            $"[Weight] '{member.Name}' is Optional, which only a layer weight can be (one some layers lack); a model weight is always bound");
                        info = info with { Optional = false };
                    }
                    if (info.Optional && info.TiedTo is not null)
                    {
                        Report(DiagnosticDescriptors.MalformedModel, LocationInfo.From(MemberTypeSyntax(member)), _type.Name,
                            $"[Weight] '{member.Name}' is both Optional and TiedTo \"{info.TiedTo}\": an absent optional weight stays absent");
                        info = info with { Optional = false };
                    }
                    _weights.Add(info);
                    _weightKeys[member] = info.Key;
                    continue;
                }

                if (FindAttribute(member, LayersAttribute) is { } layers)
                {
                    ExtractLayers(member, memberType, layers, owner, architecture);
                    continue;
                }

                if (owner.Length == 0 && NumericKeyword(memberType) is { } numeric)
                    (numeric is "int" or "long" ? _intMembers : _floatMembers).Add(member.Name);
            }
        }

        private void ExtractLayers(ISymbol member, ITypeSymbol memberType, AttributeData attribute, string owner, string architecture)
        {
            var location = LocationInfo.From(MemberTypeSyntax(member));
            string prefix = attribute.ConstructorArguments.Length > 0 ? attribute.ConstructorArguments[0].Value as string ?? "" : "";
            string count = attribute.ConstructorArguments.Length > 1 ? attribute.ConstructorArguments[1].Value as string ?? "" : "";
            if (owner.Length > 0)
            {
                Report(DiagnosticDescriptors.InvalidLayers, location, member.Name, "layers cannot nest inside a layer class");
                return;
            }
            if (memberType is not IArrayTypeSymbol { Rank: 1, ElementType: INamedTypeSymbol element }
                || !SymbolEqualityComparer.Default.Equals(element.ContainingType, _type)
                || element.TypeKind != TypeKind.Class)
            {
                Report(DiagnosticDescriptors.InvalidLayers, location, member.Name,
                    $"its type {memberType.ToDisplayString()} must be an array of a class nested in {_type.Name}");
                return;
            }
            if (!IsPartial(element))
            {
                Report(DiagnosticDescriptors.InvalidLayers, location, member.Name, $"the layer class {element.Name} must be declared partial");
                return;
            }
            if (!prefix.Contains("{0}"))
            {
                Report(DiagnosticDescriptors.InvalidLayers, location, member.Name, $"the prefix \"{prefix}\" must contain {{0}} for the layer index");
                return;
            }
            if (FindAttribute(element, SparseAttribute) is { } sparseOnLayer)
                Report(DiagnosticDescriptors.InvalidSparse, QuantizeLocation(sparseOnLayer), element.Name,
                    "a layer class cannot carry it; put [Sparse] on the [Model] class (the default for every Linear weight) or on a [Weight] member");
            if (FindAttribute(element, QuantizeAttribute) is { } quantize)
                Report(DiagnosticDescriptors.InvalidQuantize, QuantizeLocation(quantize), element.Name,
                    "a layer class cannot carry it; put [Quantize] on the [Model] class (the default for every Linear weight) or on a [Weight] member");
            string huggingFace = NamedString(attribute, "HuggingFace");
            if (huggingFace.Length > 0 && !huggingFace.Contains("{0}"))
            {
                Report(DiagnosticDescriptors.InvalidLayers, location, member.Name, $"the HuggingFace prefix \"{huggingFace}\" must contain {{0}} for the layer index");
                return;
            }
            _layers.Add(new LayersInfo(member.Name, element.Name, prefix, count, huggingFace));
            _layerTypes[member.Name] = element;
            CollectMembers(element, member.Name, architecture);
        }

        private void ValidateLayers()
        {
            foreach (var layers in _layers.ToArray())
            {
                if (!_hypers.Any(h => h.Member == layers.CountMember && h.Type is "int"))
                {
                    var member = _type.GetMembers(layers.Member).FirstOrDefault();
                    Report(DiagnosticDescriptors.InvalidLayers, member is null ? null : LocationInfo.From(MemberTypeSyntax(member)), layers.Member,
                        $"the count member '{layers.CountMember}' must be an int [Hyper]");
                    _layers.Remove(layers);
                }
            }
            // A per-layer [Hyper] holds one value per layer of the model's one [Layers] member, checked at load.
            for (int i = 0; i < _hypers.Count; i++)
            {
                if (!_hypers[i].PerLayer) continue;
                if (_layers.Count == 1)
                {
                    _hypers[i] = _hypers[i] with { LayerCount = _layers[0].CountMember };
                    continue;
                }
                var member = _type.GetMembers(_hypers[i].Member).FirstOrDefault();
                Report(DiagnosticDescriptors.MalformedModel, member is null ? null : LocationInfo.From(MemberTypeSyntax(member)), _type.Name,
                    $"[Hyper] '{_hypers[i].Member}' is {_hypers[i].Type}, one value per layer, so the model needs exactly one [Layers] member to count them (it has {_layers.Count})");
            }
        }
    }
}
