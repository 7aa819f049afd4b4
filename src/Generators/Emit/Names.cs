using System.Linq;
using Kiln.Generators.Ir;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Emit;

/// <summary>How IR names become C# in the generated file.</summary>
internal static class Names
{
    /// <summary>The generated layer loop's index, whatever the forward method called it (it must not meet the kernels' locals).</summary>
    public const string LayerIndex = "layer";

    /// <summary>A canonical dim as an expression over <paramref name="instance"/> ("model.Heads * model.HeadDim", "model.QDim + model.KvDim").</summary>
    public static string DimCode(string dim, string instance)
    {
        var code = new System.Text.StringBuilder();
        for (int i = 0; i < dim.Length;)
        {
            char c = dim[i];
            if (char.IsLetter(c) || c == '_')
            {
                int start = i;
                while (i < dim.Length && (char.IsLetterOrDigit(dim[i]) || dim[i] == '_')) i++;
                code.Append(instance).Append('.').Append(dim, start, i - start);
                continue;
            }
            if (c is '*' or '+' or '-' or '/') code.Append(' ').Append(c).Append(' ');
            else code.Append(c);
            i++;
        }
        return code.ToString();
    }

    /// <summary>The plan field holding a dim ("_Dim", "_Heads_x_HeadDim", "_QDim_p_KvDim").</summary>
    public static string DimField(string dim) =>
        "_" + dim.Replace("*", "_x_").Replace("+", "_p_").Replace("-", "_m_").Replace("/", "_d_").Replace("(", "").Replace(")", "");

    /// <summary>A dim inside Step: T, O and S are the step's row counts, literals stay literals, the rest are plan fields.</summary>
    public static string Dim(string dim) => dim switch
    {
        Shape.Tokens => "T",
        Shape.Outputs => "O",
        Shape.Sequences => "S",
        _ when dim.All(char.IsDigit) => dim,
        _ => DimField(dim),
    };

    /// <summary>A scalar argument as C# over <paramref name="instance"/>'s members and the layer loop's index.</summary>
    public static string Scalar(ScalarExpr scalar, string instance) => scalar.Render(instance, LayerIndex);

    /// <summary>A weight's Tensor: model.Member, or model.Layers[layer].Member for a layer weight.</summary>
    public static string Weight(string key, string instance, string layerIndex)
    {
        int dot = key.IndexOf('.');
        return dot < 0 ? instance + "." + key : $"{instance}.{key.Substring(0, dot)}[{layerIndex}].{key.Substring(dot + 1)}";
    }

    public static string Literal(string text) => "\"" + text.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n") + "\"";
}
