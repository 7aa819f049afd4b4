using System.Linq;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace Kiln.Generators.Syntax;

internal static partial class ModelExtractor
{
    private sealed partial class Extraction
    {
        /// <summary>
        /// Canonicalizes every [Weight] dimension. A dimension is an int member (hyper or derived), a positive literal,
        /// a sum of products of those ("Heads*HeadDim", "Dim+2*KvDim"), or — as a whole dimension only — a free symbol
        /// that is not a member (e.g. "Vocab"), bound at load from the first weight that uses it.
        /// </summary>
        private void ValidateShapes()
        {
            for (int w = 0; w < _weights.Count; w++)
            {
                var weight = _weights[w];
                var canonical = new string[weight.Dims.Count];
                if (weight.Dims.Count == 0)
                    Report(DiagnosticDescriptors.InvalidShapeExpression, AttributeLocation(weight, -1), "", weight.Member, "a weight needs at least one dimension");
                for (int d = 0; d < weight.Dims.Count; d++)
                {
                    string? error = Canonicalize(weight.Dims[d], out canonical[d]);
                    if (error is not null)
                        Report(DiagnosticDescriptors.InvalidShapeExpression, AttributeLocation(weight, d), weight.Dims[d], weight.Member, error);
                }
                _weights[w] = weight with { Dims = canonical.ToEquatableArray() };
            }
        }

        private string? Canonicalize(string text, out string canonical)
        {
            canonical = new string(text.Where(c => !char.IsWhiteSpace(c)).ToArray());
            if (canonical.Length == 0) return "the dimension is empty";
            var terms = canonical.Split('+');
            foreach (var term in terms)
            {
                if (term.Length == 0) return "'+' needs a term on both sides";
                var factors = term.Split('*');
                foreach (var factor in factors)
                {
                    if (factor.Length == 0) return "'*' needs a factor on both sides";
                    if (char.IsDigit(factor[0]))
                    {
                        if (!factor.All(char.IsDigit) || !int.TryParse(factor, out int value) || value <= 0)
                            return $"'{factor}' is not a positive integer";
                        continue;
                    }
                    if (!(char.IsLetter(factor[0]) || factor[0] == '_') || !factor.All(c => char.IsLetterOrDigit(c) || c == '_'))
                        return $"'{factor}' is not an identifier, a positive integer, or a sum of products of them ('A*B', 'A+B')";
                    if (_intMembers.Contains(factor)) continue;
                    if (_floatMembers.Contains(factor) || _type.GetMembers(factor).Length > 0)
                        return $"'{factor}' is a member of {_type.Name} but not an int hyperparameter or int property";
                    if (factors.Length > 1 || terms.Length > 1)
                        return $"'{factor}' is not an int member of {_type.Name}; only a whole dimension can be a free symbol";
                    if (!_freeDims.Contains(factor)) _freeDims.Add(factor);
                }
            }
            return null;
        }

        /// <summary>The string literal of dimension <paramref name="dim"/> in the [Weight] attribute (-1: the attribute).</summary>
        private LocationInfo? AttributeLocation(WeightInfo weight, int dim)
        {
            INamedTypeSymbol owner = weight.Owner.Length == 0 ? _type : _layerTypes[weight.Owner];
            var member = owner.GetMembers(weight.Member).FirstOrDefault();
            var attribute = member is null ? null : FindAttribute(member, WeightAttribute);
            if (attribute?.ApplicationSyntaxReference?.GetSyntax(_cancellationToken) is not AttributeSyntax syntax) return null;
            var arguments = syntax.ArgumentList?.Arguments;
            if (dim >= 0 && arguments is { } list && dim + 1 < list.Count && list[dim + 1].NameEquals is null && list[dim + 1].NameColon is null)
                return LocationInfo.From(list[dim + 1].Expression);
            return LocationInfo.From(syntax);
        }
    }
}
