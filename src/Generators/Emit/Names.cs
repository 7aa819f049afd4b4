using System.Linq;
using Kiln.Generators.Ir;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Emit;

/// <summary>How IR names become C# in the generated file.</summary>
internal static class Names
{
    /// <summary>The generated layer loop's index, whatever the forward method called it (it must not meet the kernels' locals).</summary>
    public const string LayerIndex = "layer";

    /// <summary>A canonical dim as an expression over <paramref name="instance"/> ("model.Heads * model.HeadDim").</summary>
    public static string DimCode(string dim, string instance) =>
        string.Join(" * ", dim.Split('*').Select(f => char.IsDigit(f[0]) ? f : instance + "." + f));

    /// <summary>The plan field holding a dim ("_Dim", "_Heads_x_HeadDim").</summary>
    public static string DimField(string dim) => "_" + dim.Replace("*", "_x_");

    /// <summary>A dim inside Step: T and O are the step's row counts, literals stay literals, the rest are plan fields.</summary>
    public static string Dim(string dim) => dim switch
    {
        Shape.Tokens => "T",
        Shape.Outputs => "O",
        _ when char.IsDigit(dim[0]) && !dim.Contains('*') => dim,
        _ => DimField(dim),
    };

    public static string Scalar(ScalarArg scalar, string instance) => scalar.Kind switch
    {
        ExprKind.ScalarMember => instance + "." + scalar.Text,
        ExprKind.LayerIndex => LayerIndex,
        _ => scalar.Text,
    };

    /// <summary>A weight's Tensor: model.Member, or model.Layers[layer].Member for a layer weight.</summary>
    public static string Weight(string key, string instance, string layerIndex)
    {
        int dot = key.IndexOf('.');
        return dot < 0 ? instance + "." + key : $"{instance}.{key.Substring(0, dot)}[{layerIndex}].{key.Substring(dot + 1)}";
    }

    public static string Literal(string text) => "\"" + text.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n") + "\"";
}
