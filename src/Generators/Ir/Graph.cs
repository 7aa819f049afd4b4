using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Ir;

/// <summary>
/// A scalar op argument: a numeric model member (emitted as model.Member), a literal, or the layer loop's index.
/// </summary>
internal sealed record ScalarArg(ExprKind Kind, string Text)
{
    public override string ToString() => Text;
}

/// <summary>
/// One SSA value. Weights are values (Op = Weight, Name = the weight key); a local reassigned inside the layer loop
/// gets a Phi in the loop region whose Inputs are [value before the loop, value at the end of the body]. Inputs are
/// the tensor arguments in op order; Scalars the scalar ones. Name is the local the value was first bound to.
/// </summary>
internal sealed record Node(
    int Id,
    OpKind Op,
    EquatableArray<int> Inputs,
    EquatableArray<ScalarArg> Scalars,
    Shape Shape,
    int Region,
    string Name,
    LocationInfo? Location);

/// <summary>A straight-line region of the forward method, or the repeated body of the layer loop.</summary>
internal sealed record RegionInfo(int Index, bool IsLoop, string LayersMember, string CountMember, string LoopVariable);

/// <summary>The forward method as an SSA graph with symbolic shapes. Nodes are in program order.</summary>
internal sealed record Graph(ModelInfo Model, EquatableArray<Node> Nodes, EquatableArray<RegionInfo> Regions, int Result)
{
    public Node this[int id] => Nodes[id];
}

/// <summary>The graph stage's output: the graph (null on any error) and every diagnostic so far.</summary>
internal sealed record GraphResult(string HintName, Graph? Graph, EquatableArray<DiagnosticInfo> Diagnostics);
