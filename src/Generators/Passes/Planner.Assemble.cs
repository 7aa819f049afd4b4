using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Helpers;
using Kiln.Generators.Ir;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Passes;

internal sealed partial class Planner
{
    /// <summary>Buffers (one per storage class), arena slots by live range, the dims the plan needs, and the report.</summary>
    private Plan Assemble(IReadOnlyList<RopeTable> ropeTables)
    {
        var stored = Enumerable.Range(0, _graph.Nodes.Count).Where(HasStorage).ToList();
        var classes = stored.GroupBy(Find).OrderBy(g => g.Min()).ToList();

        var buffers = new List<Buffer>();
        var valueBuffers = Enumerable.Repeat(-1, _graph.Nodes.Count + 1).ToArray();
        var intervals = new List<(int Buffer, int Start, int End)>();
        var names = new HashSet<string>(Emit.PlanEmitter.ReservedNames);
        foreach (var members in classes)
        {
            var first = _graph[members.Min()];
            bool isLogits = Find(_logits) == members.Key;
            string? local = members.Select(m => _graph[m].Name).FirstOrDefault(n => n.Length > 0 && !n.Contains('.'));
            string name = isLogits ? "logits" : Unique(names, local ?? DefaultName(members.Min()));
            int index = buffers.Count;
            buffers.Add(new Buffer(index, name, first.Shape.Rows, first.Shape.Cols, isLogits ? -1 : 0));
            foreach (int member in members) valueBuffers[member] = index;
            if (isLogits) continue;

            int start = int.MaxValue, end = int.MinValue;
            foreach (int member in members)
            {
                for (int k = 0; k < _kernels.Count; k++)
                    if (_kernels[k].Writes.Contains(member)) { start = System.Math.Min(start, k); end = System.Math.Max(end, k); }
                foreach (var read in Reads(member)) end = System.Math.Max(end, read.Position);
                if (_graph[member].Op == OpKind.Phi)
                {
                    var span = LoopSpan(_graph[member].Region);
                    start = System.Math.Min(start, span.Start);
                    end = System.Math.Max(end, span.End);
                }
            }
            intervals.Add((index, start, System.Math.Max(start, end)));
        }
        if (Find(_logits) == _logits)
        {
            // The result is copied into the logits span by a final copy kernel.
            var result = _graph[_graph.Result];
            buffers.Add(new Buffer(buffers.Count, "logits", result.Shape.Rows, result.Shape.Cols, -1));
            valueBuffers[_logits] = buffers.Count - 1;
        }
        else
        {
            valueBuffers[_logits] = valueBuffers[_graph.Result];
        }

        // Linear scan: a buffer reuses a slot whose last reader ran before it is first written.
        var slotEnds = new List<int>();
        var slotCols = new List<string>();
        foreach (var interval in intervals.OrderBy(i => i.Start).ThenBy(i => i.Buffer))
        {
            var buffer = buffers[interval.Buffer];
            int slot = Enumerable.Range(0, slotEnds.Count).Where(s => slotEnds[s] < interval.Start)
                .OrderBy(s => slotCols[s] == buffer.Cols ? 0 : 1).ThenBy(s => s).DefaultIfEmpty(-1).First();
            if (slot < 0)
            {
                slot = slotEnds.Count;
                slotEnds.Add(interval.End);
                slotCols.Add(buffer.Cols);
            }
            else
            {
                slotEnds[slot] = interval.End;
            }
            buffers[interval.Buffer] = buffer with { Slot = slot };
        }

        var model = _graph.Model;
        var attention = _graph.Nodes.FirstOrDefault(n => n.Op == OpKind.Attention);
        string kvDim = attention is null ? "1" : _graph[attention.Inputs[1]].Shape.Cols;
        // A hybrid's attention runs in some layers' branch, and names a cache layer of its own: load counts them.
        bool countedCache = !model.Encoder && _graph.Nodes.Any(n => n.Op == OpKind.Attention
            && (n.Guard >= 0 || _graph.Regions[n.Region].IsLoop && n.Scalars[0].Kind != ScalarKind.Layer));
        string kvLayers = attention is null ? "1"
            : countedCache ? Plan.CountedKvLayers
            : !_graph.Regions[attention.Region].IsLoop ? "1" : _graph.Regions[attention.Region].CountMember;
        var result0 = _graph[_graph.Result];

        var plan = new Plan(model, _graph.Regions, _graph.Guards, _kernels.ToEquatableArray(), buffers.ToEquatableArray(), valueBuffers.ToEquatableArray(),
            slotEnds.Count, ropeTables.ToEquatableArray(), EquatableArray<string>.Empty, result0.Shape.Rows, result0.Shape.Cols, kvDim, kvLayers,
            EquatableArray<string>.Empty, OptionalWeightUses());
        plan = plan with { Dims = Dims(plan).ToEquatableArray() };
        return plan with { Report = FusionReport.Lines(plan, _graph).ToEquatableArray() };
    }

    /// <summary>Each optional weight with the guards of the nodes that read it.</summary>
    private EquatableArray<OptionalWeightUse> OptionalWeightUses()
    {
        var uses = new List<OptionalWeightUse>();
        foreach (var weight in _graph.Model.Weights.Where(w => w.Optional))
        {
            var node = _graph.Nodes.FirstOrDefault(n => n.Op == OpKind.Weight && n.Name == weight.Key);
            if (node is null) continue;
            var guards = _graph.Nodes.Where(n => n.Inputs.Contains(node.Id)).Select(n => n.Guard).Distinct().OrderBy(g => g).ToEquatableArray();
            uses.Add(new OptionalWeightUse(weight.Key, guards));
        }
        return uses.ToEquatableArray();
    }

    /// <summary>Every dimension the emitted plan names (each becomes a field fixed when the model is bound).</summary>
    private static List<string> Dims(Plan plan)
    {
        var dims = new List<string>();
        void Dim(string d)
        {
            if (d.Length > 0 && d != Shape.Tokens && d != Shape.Outputs && d != "1" && d != "0" && !dims.Contains(d)) dims.Add(d);
        }
        void ProgramDims(Program program)
        {
            Dim(program.Cols);
            Dim(program.Group);
            foreach (var elem in program.Elems) Dim(elem.Offset);
            foreach (var stat in program.Stats)
            {
                Dim(stat.Offset);
                Dim(stat.Group);
                Dim(plan.Buffers[plan.ValueBuffers[stat.Value]].Cols);
            }
            foreach (var elem in program.Elems.Where(e => e.Kind == ElemKind.Load)) Dim(plan.Buffers[plan.ValueBuffers[elem.Value]].Cols);
        }
        foreach (var buffer in plan.Buffers) Dim(buffer.Cols);
        foreach (var kernel in plan.Kernels)
        {
            switch (kernel)
            {
                case MatMulKernel m:
                    Dim(m.InDim);
                    if (m.InputProgram is not null) ProgramDims(m.InputProgram);
                    foreach (var segment in m.Segments)
                    {
                        Dim(segment.OutDim);
                        foreach (var weight in segment.Weights) Dim(weight.RowStart);
                        ProgramDims(segment.Epilogue);
                    }
                    break;
                case ElementwiseKernel e:
                    ProgramDims(e.Program);
                    break;
            }
        }
        foreach (var weight in plan.Model.Weights) foreach (var d in weight.Dims) Dim(d);
        Dim(plan.VocabDim);
        Dim(plan.KvDim);
        return dims;
    }

    private string DefaultName(int value) => _graph[value].Op switch
    {
        OpKind.Mul when _kernels.OfType<MatMulKernel>().Any(k => k.Segments.Any(s => s.IsPair && s.Output == value)) => "glu",
        OpKind.SelectRows => "rows",
        OpKind.Pool => "pooled",
        OpKind.L2Normalize => "normalized",
        var op => op.ToString().ToLowerInvariant(),
    };

    private static string Unique(HashSet<string> names, string name)
    {
        string candidate = name;
        for (int i = 2; !names.Add(candidate); i++) candidate = name + i;
        return candidate;
    }
}
