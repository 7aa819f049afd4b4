using System.Linq;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;

namespace Kiln.Generators.Syntax;

internal static partial class ModelExtractor
{
    private sealed partial class Extraction
    {
        /// <summary>
        /// A definition binds Hugging Face checkpoints when every weight names its Hugging Face tensor, every [Layers]
        /// its prefix, and every required hyperparameter its config key; a conversion needs a name, and
        /// RopeHalvesToPairs a head size made of int members. Half a mapping is reported: it could never bind.
        /// </summary>
        private void ValidateHuggingFaceNames()
        {
            bool any = _weights.Any(w => w.HuggingFaceName.Length > 0);
            for (int w = 0; w < _weights.Count; w++)
            {
                var weight = _weights[w];
                var location = AttributeLocation(weight, -1);
                if (any && weight.HuggingFaceName.Length == 0)
                    Report(DiagnosticDescriptors.MalformedModel, location, _type.Name,
                        $"other weights name their Hugging Face tensors but '{weight.Member}' does not, so no Hugging Face checkpoint could bind; add HuggingFace = \"...\"");
                if (weight.Conversion.Length > 0 && weight.HuggingFaceName.Length == 0)
                    Report(DiagnosticDescriptors.MalformedModel, location, _type.Name, $"[Weight] '{weight.Member}' has FromHuggingFace but no HuggingFace name");

                if (weight.Conversion != RopeHalvesToPairs)
                {
                    if (weight.HeadSize.Length > 0)
                        Report(DiagnosticDescriptors.MalformedModel, location, _type.Name,
                            $"[Weight] '{weight.Member}' has a HeadSize, which only FromHuggingFace = HuggingFaceConversion.{RopeHalvesToPairs} reads");
                    continue;
                }
                if (HeadSizeError(weight.HeadSize, out string headSize) is { } error)
                    Report(DiagnosticDescriptors.MalformedModel, location, _type.Name, $"[Weight] '{weight.Member}': {error}");
                else
                    _weights[w] = weight with { HeadSize = headSize };
            }
            if (!any) return;

            foreach (var layers in _layers)
            {
                if (layers.HuggingFacePrefix.Length > 0 || !_weights.Any(w => w.Owner == layers.Member)) continue;
                var member = _type.GetMembers(layers.Member).FirstOrDefault();
                Report(DiagnosticDescriptors.InvalidLayers, member is null ? null : LocationInfo.From(MemberTypeSyntax(member)), layers.Member,
                    "its weights name Hugging Face tensors, so it needs the Hugging Face prefix too (HuggingFace = \"model.layers.{0}.\")");
            }
            foreach (var hyper in _hypers)
            {
                if (!hyper.Required || hyper.HuggingFaceKey.Length > 0) continue;
                var member = _type.GetMembers(hyper.Member).FirstOrDefault();
                Report(DiagnosticDescriptors.MalformedModel, member is null ? null : LocationInfo.From(MemberTypeSyntax(member)), _type.Name,
                    $"[Hyper] '{hyper.Member}' is required but names no HuggingFace key, so no Hugging Face checkpoint could bind");
            }
        }

        /// <summary>Canonicalizes a RopeHalvesToPairs head size: int members and literals only (no free symbol); the problem, or null.</summary>
        private string? HeadSizeError(string text, out string canonical)
        {
            canonical = "";
            if (text.Length == 0)
                return $"FromHuggingFace = HuggingFaceConversion.{RopeHalvesToPairs} needs HeadSize, the rows of one head (such as \"HeadDim\")";
            foreach (string factor in text.Split('+', '*').Select(f => f.Trim()))
                if (factor.Length > 0 && !char.IsDigit(factor[0]) && !_intMembers.Contains(factor))
                    return $"HeadSize \"{text}\": '{factor}' is not an int member of {_type.Name}";
            return Canonicalize(text, out canonical) is { } invalid ? $"HeadSize \"{text}\": {invalid}" : null;
        }
    }
}
