using System.Linq;
using System.Text;
using Kiln.Generators.Helpers;

namespace Kiln.Generators.Syntax;

internal enum ScalarKind
{
    /// <summary>A literal or a constant, as C# source (<see cref="ScalarExpr.Text"/>), e.g. "1e-6f", "global::Kiln.RopeStyle.NeoX".</summary>
    Literal,
    /// <summary>A numeric member of the model (hyperparameter or derived); Text is its name.</summary>
    Member,
    /// <summary>The layer loop's index.</summary>
    Layer,
    /// <summary>Text is the operator ("-", "!"); one argument.</summary>
    Unary,
    /// <summary>Text is the operator ("+", "*", "==", "&amp;&amp;", …); two arguments.</summary>
    Binary,
    /// <summary>condition ? a : b, the three arguments in that order.</summary>
    Conditional,
    /// <summary>A static method of System.Math or System.MathF; Text is its full name.</summary>
    Call,
    /// <summary>A cast; Text is the target type keyword.</summary>
    Cast,
    /// <summary>An element of a per-layer array member (<c>KvHeadsPerLayer[layer]</c>); Text is the member, the one argument the index.</summary>
    Element,
}

/// <summary>
/// A scalar C# expression from a [Forward] method — an op's int or float argument, an <c>if</c> condition — kept as a
/// small tree over literals, model members and the layer index, so the plan can evaluate it where it is needed (once,
/// or per layer) with members read from its model instance. <see cref="Type"/> is its C# type keyword ("int",
/// "float", "bool", …) or an enum's full name; <see cref="Constant"/> its value when C# knows it at compile time.
/// </summary>
internal sealed record ScalarExpr(ScalarKind Kind, string Text, EquatableArray<ScalarExpr> Args, string Type, string? Constant = null)
{
    public static ScalarExpr Literal(string text, string type, string? constant = null) =>
        new(ScalarKind.Literal, text, EquatableArray<ScalarExpr>.Empty, type, constant ?? text);

    public static ScalarExpr Member(string name, string type) => new(ScalarKind.Member, name, EquatableArray<ScalarExpr>.Empty, type);

    public static ScalarExpr Element(string member, ScalarExpr index, string type) => new(ScalarKind.Element, member, EquatableArray.Create(index), type);

    public static ScalarExpr Layer { get; } = new(ScalarKind.Layer, "layer", EquatableArray<ScalarExpr>.Empty, "int");

    public bool IsInteger => Type is "int" or "long";

    /// <summary>True when the value can differ from one layer to the next (it reads the layer index).</summary>
    public bool UsesLayer => Kind == ScalarKind.Layer || Args.Any(a => a.UsesLayer);

    /// <summary>True when it reads no model member and no layer index: fixed when the generator runs.</summary>
    public bool IsFixed => Kind is not (ScalarKind.Member or ScalarKind.Layer or ScalarKind.Element) && Args.All(a => a.IsFixed);

    /// <summary>As C# over <paramref name="instance"/>'s members ("model.Dim"; bare names when it is "") and the layer variable <paramref name="layer"/>.</summary>
    public string Render(string instance, string layer)
    {
        var text = new StringBuilder();
        Render(text, instance, layer);
        return text.ToString();
    }

    private void Render(StringBuilder text, string instance, string layer)
    {
        switch (Kind)
        {
            case ScalarKind.Literal:
                text.Append(Text);
                break;
            case ScalarKind.Member:
                if (instance.Length > 0) text.Append(instance).Append('.');
                text.Append(Text);
                break;
            case ScalarKind.Layer:
                text.Append(layer);
                break;
            case ScalarKind.Unary:
                text.Append(Text).Append('(');
                Args[0].Render(text, instance, layer);
                text.Append(')');
                break;
            case ScalarKind.Binary:
                text.Append('(');
                Args[0].Render(text, instance, layer);
                text.Append(' ').Append(Text).Append(' ');
                Args[1].Render(text, instance, layer);
                text.Append(')');
                break;
            case ScalarKind.Conditional:
                text.Append('(');
                Args[0].Render(text, instance, layer);
                text.Append(" ? ");
                Args[1].Render(text, instance, layer);
                text.Append(" : ");
                Args[2].Render(text, instance, layer);
                text.Append(')');
                break;
            case ScalarKind.Call:
                text.Append(Text).Append('(');
                for (int i = 0; i < Args.Count; i++)
                {
                    if (i > 0) text.Append(", ");
                    Args[i].Render(text, instance, layer);
                }
                text.Append(')');
                break;
            case ScalarKind.Cast:
                text.Append("((").Append(Text).Append(')');
                Args[0].Render(text, instance, layer);
                text.Append(')');
                break;
            case ScalarKind.Element:
                if (instance.Length > 0) text.Append(instance).Append('.');
                text.Append(Text).Append('[');
                Args[0].Render(text, instance, layer);
                text.Append(']');
                break;
        }
    }

    /// <summary>
    /// The expression as a shape dimension ("QDim", "64", "QDim+KvDim", "Heads*HeadDim"), when it is integer
    /// arithmetic (+, −, *, /) over int members and literals; null otherwise (a dimension cannot change per layer).
    /// </summary>
    public string? AsDim()
    {
        switch (Kind)
        {
            case ScalarKind.Literal when IsInteger && Constant is not null && int.TryParse(Constant, out int value) && value >= 0:
                return value.ToString(System.Globalization.CultureInfo.InvariantCulture);
            case ScalarKind.Member when IsInteger:
                return Text;
            case ScalarKind.Binary when IsInteger && Text is "+" or "-" or "*" or "/":
            {
                string? left = Args[0].AsDim(), right = Args[1].AsDim();
                if (left is null || right is null) return null;
                // Products stay flat ("A*B"); anything mixed is parenthesized so the text keeps its meaning.
                bool flat = Text == "*" && !left.Contains('+') && !left.Contains('-') && !right.Contains('+') && !right.Contains('-') && !right.Contains('/');
                bool plain = Text is "+" or "-" ? !right.Contains('+') && !right.Contains('-') : flat;
                return plain ? left + Text + right : "(" + left + ")" + Text + "(" + right + ")";
            }
            case ScalarKind.Cast when Text is "int" && Args[0].IsInteger:
                return Args[0].AsDim();
            default:
                return null;
        }
    }

    /// <summary>As the user wrote it, near enough: members by name, Math calls by their class (for reports and messages).</summary>
    public override string ToString()
    {
        string text = Render("", "layer").Replace("global::System.", "");
        // The outermost parentheses the rendering puts around every operator add nothing to a whole expression.
        return Kind is ScalarKind.Binary or ScalarKind.Conditional && text.StartsWith("(") && text.EndsWith(")") ? text.Substring(1, text.Length - 2) : text;
    }
}
