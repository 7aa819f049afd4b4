using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Ir;

/// <summary>
/// One SSA value. Weights are values (Op = Weight, Name = the weight key); a local reassigned inside the layer loop
/// gets a Phi in the loop region whose Inputs are [value before the loop, value at the end of the body]; a local
/// assigned in an if/else gets a Merge after it. Inputs are the tensor arguments in op order; Scalars the scalar
/// ones. Name is the local the value was first bound to. <see cref="Guard"/> is the if-branch the value is computed
/// in (-1: unconditionally); <see cref="ScalarFirst"/> marks <c>s − x</c> and <c>s / x</c>; a Merge's
/// <see cref="Branch"/> is its then-branch's guard (the else branch's is the next one).
/// </summary>
internal sealed record Node(
    int Id,
    OpKind Op,
    EquatableArray<int> Inputs,
    EquatableArray<ScalarExpr> Scalars,
    Shape Shape,
    int Region,
    string Name,
    LocationInfo? Location,
    int Guard = -1,
    bool ScalarFirst = false,
    int Branch = -1);

/// <summary>A straight-line region of the forward method, or the repeated body of the layer loop.</summary>
internal sealed record RegionInfo(int Index, bool IsLoop, string LayersMember, string CountMember, string LoopVariable);

/// <summary>
/// One branch of an if statement: code under it runs when <see cref="Condition"/> is <see cref="Polarity"/>, inside
/// <see cref="Parent"/>'s branch (-1: at the top). <see cref="Statement"/> numbers the if, so its two branches are
/// known to exclude each other.
/// </summary>
internal sealed record GuardInfo(int Index, int Parent, int Statement, ScalarExpr Condition, bool Polarity);

/// <summary>The forward method as an SSA graph with symbolic shapes. Nodes are in program order.</summary>
internal sealed record Graph(ModelInfo Model, EquatableArray<Node> Nodes, EquatableArray<RegionInfo> Regions, EquatableArray<GuardInfo> Guards, int Result)
{
    public Node this[int id] => Nodes[id];

    /// <summary>True when code under guard <paramref name="inner"/> runs only where <paramref name="outer"/>'s does (same branch or nested in it).</summary>
    public bool Within(int inner, int outer)
    {
        for (int g = inner; ; g = Guards[g].Parent)
        {
            if (g == outer) return true;
            if (g < 0) return false;
        }
    }

    /// <summary>True when no step runs code under both guards: they lie in the two branches of one if.</summary>
    public bool Exclusive(int a, int b) => Exclusive(Guards, a, b);

    /// <inheritdoc cref="Exclusive(int, int)"/>
    public static bool Exclusive(System.Collections.Generic.IReadOnlyList<GuardInfo> guards, int a, int b)
    {
        for (int x = a; x >= 0; x = guards[x].Parent)
            for (int y = b; y >= 0; y = guards[y].Parent)
                if (guards[x].Statement == guards[y].Statement && guards[x].Polarity != guards[y].Polarity) return true;
        return false;
    }
}

/// <summary>The graph stage's output: the graph (null on any error) and every diagnostic so far.</summary>
internal sealed record GraphResult(string HintName, Graph? Graph, EquatableArray<DiagnosticInfo> Diagnostics);
