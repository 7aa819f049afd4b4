using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Helpers;
using Kiln.Generators.Ir;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Passes;

/// <summary>
/// The fusion pass: pattern-matches the graph into kernels. Linears sharing an input become one horizontal matmul;
/// an RMSNorm whose only consumers are those Linears folds into it; a Linear's single consumer becomes its epilogue
/// when it is Rope, a residual Add, or — with a sibling Linear — Mul(Silu(a), b). Everything else gets its own kernel.
/// Kernels are ordered by their first node: every kernel's inputs have lower ids than its own nodes, so that order is
/// a valid schedule.
/// </summary>
internal sealed class Fusion
{
    private readonly Graph _graph;
    private readonly List<int>[] _uses;
    private readonly bool[] _covered;
    private readonly List<(int Anchor, Kernel Kernel)> _kernels = new();
    private readonly List<RopeTable> _ropeTables = new();
    private readonly HashSet<string> _packedNames = new();

    public Fusion(Graph graph)
    {
        _graph = graph;
        _uses = graph.Nodes.Select(_ => new List<int>()).ToArray();
        foreach (var node in graph.Nodes)
            foreach (int input in node.Inputs) _uses[input].Add(node.Id);
        _uses[graph.Result].Add(-1);
        _covered = new bool[graph.Nodes.Count];
    }

    public IReadOnlyList<RopeTable> RopeTables => _ropeTables;

    public List<Kernel> Run()
    {
        MatMuls();
        foreach (var node in _graph.Nodes)
        {
            if (_covered[node.Id]) continue;
            Kernel? kernel = node.Op switch
            {
                OpKind.Embedding => new GatherKernel(node.Region, _graph[node.Inputs[0]].Name, node.Id),
                OpKind.RmsNorm => new RmsNormKernel(node.Region, node.Inputs[0], _graph[node.Inputs[1]].Name, node.Scalars[0], node.Id),
                OpKind.Rope => new RopeKernel(node.Region, node.Inputs[0], RopeTableFor(node), node.Id),
                OpKind.Attention => new AttentionKernel(node.Region, node.Inputs[0], node.Inputs[1], node.Inputs[2], node.Id,
                    node.Scalars[0], node.Scalars[1], node.Scalars[2]),
                OpKind.Silu => new ElementwiseKernel(node.Region, OpKind.Silu, node.Inputs[0], -1, node.Id),
                OpKind.Mul or OpKind.Add => new ElementwiseKernel(node.Region, node.Op, node.Inputs[0], node.Inputs[1], node.Id),
                OpKind.SelectRows => new SelectRowsKernel(node.Region, node.Inputs[0], node.Id),
                _ => null, // weights and phis are storage, not work
            };
            if (kernel is not null) _kernels.Add((node.Id, kernel));
        }
        var ordered = _kernels.OrderBy(k => _graph[k.Anchor].Region).ThenBy(k => k.Anchor).ToList();
        return ordered.Select(k => k.Kernel).ToList();
    }

    private void MatMuls()
    {
        // Linears fuse when they share an input, a region and a layout (a [Quantize] override can split a group).
        var groups = _graph.Nodes.Where(n => n.Op == OpKind.Linear)
            .GroupBy(n => (Input: n.Inputs[0], n.Region, Format: FormatOf(n)))
            .OrderBy(g => g.First().Id);
        foreach (var group in groups)
        {
            var linears = group.ToList();
            int first = linears[0].Id;
            int region = group.Key.Region;
            int input = group.Key.Input;
            string normWeight = "";
            ScalarArg? eps = null;

            // RMSNorm fusion into the input preparation: every consumer of the norm is a Linear of this region
            // (several groups may share it when their layouts differ; each prepares its input from the norm's input).
            var norm = _graph[input];
            if (norm.Op == OpKind.RmsNorm && norm.Region == region && _uses[input].All(u => u >= 0 && _graph[u].Op == OpKind.Linear && _graph[u].Region == region && _graph[u].Inputs[0] == input))
            {
                _covered[input] = true;
                normWeight = _graph[norm.Inputs[1]].Name;
                eps = norm.Scalars[0];
                input = norm.Inputs[0];
            }

            var segments = new List<Segment>();
            var claimed = new HashSet<int>();
            foreach (var linear in linears)
            {
                if (claimed.Contains(linear.Id)) continue;
                claimed.Add(linear.Id);
                _covered[linear.Id] = true;
                segments.Add(Epilogue(linear, linears, claimed, first, region));
            }

            string packed = string.Join("", segments.SelectMany(s => s.Weights).Select(w => w.Substring(w.LastIndexOf('.') + 1)));
            string layers = segments.SelectMany(s => s.Weights).Where(w => w.Contains('.')).Select(w => w.Substring(0, w.IndexOf('.'))).FirstOrDefault() ?? "";
            string field = "_" + char.ToLowerInvariant(packed[0]) + packed.Substring(1);
            for (int i = 2; !_packedNames.Add(field); i++) field = "_" + char.ToLowerInvariant(packed[0]) + packed.Substring(1) + i;
            var kernel = new MatMulKernel(region, input, _graph[linears[0].Inputs[1]].Shape.Cols, field,
                layers, normWeight, eps, segments.ToEquatableArray(), group.Key.Format);
            _kernels.Add((first, kernel));
        }
    }

    /// <summary>The layout a Linear's weight asks for: its own [Quantize], else the model's, else AsStored.</summary>
    private string FormatOf(Node linear)
    {
        var weight = _graph.Model.Weights.FirstOrDefault(w => w.Key == _graph[linear.Inputs[1]].Name);
        if (weight is not null && weight.Format.Length > 0) return weight.Format;
        return _graph.Model.DefaultFormat.Length > 0 ? _graph.Model.DefaultFormat : "AsStored";
    }

    private Segment Epilogue(Node linear, List<Node> group, HashSet<int> claimed, int first, int region)
    {
        string weight = _graph[linear.Inputs[1]].Name;
        string outDim = linear.Shape.Cols;
        var plain = new Segment(SegmentKind.Plain, EquatableArray.Create(weight), outDim, linear.Id, -1, -1, "");
        if (_uses[linear.Id].Count != 1 || _uses[linear.Id][0] < 0) return plain;
        var consumer = _graph[_uses[linear.Id][0]];
        if (consumer.Region != region) return plain;

        switch (consumer.Op)
        {
            case OpKind.Rope when consumer.Inputs[0] == linear.Id:
                _covered[consumer.Id] = true;
                return new Segment(SegmentKind.Rope, EquatableArray.Create(weight), outDim, consumer.Id, -1, RopeTableFor(consumer), "rope");

            case OpKind.Add when consumer.Inputs[0] != consumer.Inputs[1]:
            {
                int residual = consumer.Inputs[0] == linear.Id ? consumer.Inputs[1] : consumer.Inputs[0];
                if (residual >= first || _graph[residual].Op == OpKind.Weight) return plain; // must exist before the matmul runs
                _covered[consumer.Id] = true;
                return new Segment(SegmentKind.Residual, EquatableArray.Create(weight), outDim, consumer.Id, residual, -1, "residual");
            }

            case OpKind.Silu when _uses[consumer.Id].Count == 1 && _uses[consumer.Id][0] >= 0:
            {
                var mul = _graph[_uses[consumer.Id][0]];
                if (mul.Op != OpKind.Mul || mul.Region != region || mul.Inputs[0] == mul.Inputs[1]) return plain;
                int other = mul.Inputs[0] == consumer.Id ? mul.Inputs[1] : mul.Inputs[0];
                var up = group.FirstOrDefault(l => l.Id == other);
                if (up is null || claimed.Contains(up.Id) || _uses[up.Id].Count != 1 || !up.Shape.Equals(linear.Shape)) return plain;
                claimed.Add(up.Id);
                _covered[up.Id] = true;
                _covered[consumer.Id] = true;
                _covered[mul.Id] = true;
                return new Segment(SegmentKind.SwiGlu, EquatableArray.Create(weight, _graph[up.Inputs[1]].Name), outDim, mul.Id, -1, -1, "swiglu");
            }

            default:
                return plain;
        }
    }

    private int RopeTableFor(Node rope)
    {
        var existing = _ropeTables.FirstOrDefault(t => t.HeadDim == rope.Scalars[0] && t.Base == rope.Scalars[1]);
        if (existing is not null) return existing.Index;
        _ropeTables.Add(new RopeTable(_ropeTables.Count, rope.Scalars[0], rope.Scalars[1]));
        return _ropeTables.Count - 1;
    }
}
