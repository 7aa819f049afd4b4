using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Ir;

namespace Kiln.Generators.Passes;

/// <summary>
/// Runs the passes over a graph: fusion (kernels), then storage planning — loop-carried values and in-place residual
/// epilogues share a buffer when liveness allows (a copy otherwise), and buffers share arena slots when their live
/// ranges do not overlap.
/// </summary>
internal sealed partial class Planner
{
    private readonly Graph _graph;
    private readonly CancellationToken _cancellationToken;
    private readonly int[] _parent;
    private readonly int[] _occupant;
    private readonly int _logits;
    private List<Kernel> _kernels = new();
    private int[] _position = Array.Empty<int>();

    private Planner(Graph graph, CancellationToken cancellationToken)
    {
        _graph = graph;
        _cancellationToken = cancellationToken;
        _logits = graph.Nodes.Count; // a synthetic value: the caller's logits span
        _parent = Enumerable.Range(0, graph.Nodes.Count + 1).ToArray();
        _occupant = Enumerable.Range(0, graph.Nodes.Count + 1).ToArray();
    }

    public static PlanResult Build(GraphResult input, CancellationToken cancellationToken)
    {
        if (input.Graph is null) return new PlanResult(input.HintName, null, input.Diagnostics);
        try
        {
            return new PlanResult(input.HintName, new Planner(input.Graph, cancellationToken).Run(), input.Diagnostics);
        }
        catch (OperationCanceledException)
        {
            throw;
        }
        catch (Exception e)
        {
            var diagnostic = DiagnosticInfo.Create(DiagnosticDescriptors.InternalError, input.Graph.Model.Location, input.Graph.Model.ClassName,
                e.GetType().Name + ": " + e.Message);
            return new PlanResult(input.HintName, null, input.Diagnostics.Concat(new[] { diagnostic }).ToEquatableArray());
        }
    }

    private Plan Run()
    {
        var fusion = new Fusion(_graph);
        _kernels = fusion.Run();
        _cancellationToken.ThrowIfCancellationRequested();

        var phis = _graph.Nodes.Where(n => n.Op == OpKind.Phi).ToList();
        Positions();

        // Loop entry: the value before the loop becomes the phi's buffer unless it is still read once the loop starts.
        foreach (var phi in phis)
        {
            int init = phi.Inputs[0];
            bool readLater = Reads(init).Any(r => _kernels[r.Kernel].Region >= phi.Region);
            if (readLater || !HasStorage(init)) _kernels.Add(new CopyKernel(phi.Region - 1, init, phi.Id));
            else Union(init, phi.Id);
        }
        Positions();

        // Residual epilogues write in place when the residual is dead after the matmul.
        for (int k = 0; k < _kernels.Count; k++)
        {
            if (_kernels[k] is not MatMulKernel matmul) continue;
            foreach (var segment in matmul.Segments.Where(s => s.Kind == SegmentKind.Residual))
                TryInPlace(k, segment.Residual, segment.Output, phis);
        }

        // Loop back edge: the body's last value must sit in the phi's buffer.
        foreach (var phi in phis)
        {
            int back = phi.Inputs[1];
            if (back != phi.Id && Find(back) != Find(phi.Id)) _kernels.Add(new CopyKernel(phi.Region, back, phi.Id));
        }

        // The result goes straight into the caller's logits when nothing else shares its buffer.
        int result = _graph.Result;
        bool direct = _graph[result].Op != OpKind.Phi && _kernels.Any(k => k.Writes.Contains(result))
            && Enumerable.Range(0, _graph.Nodes.Count).All(v => v == result || Find(v) != Find(result));
        if (direct) Union(_logits, result);
        else _kernels.Add(new CopyKernel(_regionCount - 1, result, _logits));
        Positions();
        _cancellationToken.ThrowIfCancellationRequested();

        return Assemble(fusion.RopeTables);
    }

    private int _regionCount => _graph.Regions.Count;

    private bool HasStorage(int value) => _kernels.Any(k => k.Writes.Contains(value)) || _graph[value].Op == OpKind.Phi;

    /// <summary>Orders kernels by region (copies last in theirs) and numbers them.</summary>
    private void Positions()
    {
        _kernels = _kernels.Select((k, i) => (k, i)).OrderBy(p => p.k.Region).ThenBy(p => p.k is CopyKernel ? 1 : 0).ThenBy(p => p.i)
            .Select(p => p.k).ToList();
        _position = Enumerable.Range(0, _kernels.Count).ToArray();
    }

    private (int Start, int End) LoopSpan(int region)
    {
        var inRegion = Enumerable.Range(0, _kernels.Count).Where(k => _kernels[k].Region == region).ToList();
        if (inRegion.Count > 0) return (inRegion.Min(), inRegion.Max());
        int before = Enumerable.Range(0, _kernels.Count).Where(k => _kernels[k].Region < region).DefaultIfEmpty(-1).Max();
        return (before + 1, before);
    }

    /// <summary>Every kernel read of a value: the kernel and the effective position (a read inside a loop of a value from outside it lasts to the loop's end).</summary>
    private IEnumerable<(int Kernel, int Position, int Value)> Reads(int value)
    {
        int defined = value < _graph.Nodes.Count ? _graph[value].Region : -1;
        for (int k = 0; k < _kernels.Count; k++)
        {
            if (!_kernels[k].Reads.Contains(value)) continue;
            int region = _kernels[k].Region;
            int position = k;
            if (region != defined && _graph.Regions[region].IsLoop) position = LoopSpan(region).End;
            yield return (k, position, value);
        }
    }

    private void TryInPlace(int kernel, int residual, int output, List<Ir.Node> phis)
    {
        if (output == _graph.Result || _occupant[Find(residual)] != residual || _kernels[kernel].Reads.Contains(output)) return;
        var asPhi = phis.FirstOrDefault(p => p.Id == residual);
        foreach (var read in Reads(residual))
        {
            // A phi read after its loop reads the loop's final state, which the back edge restores into the same buffer.
            if (asPhi is not null && _kernels[read.Kernel].Region > asPhi.Region) continue;
            if (read.Position < kernel) continue;
            if (read.Position == kernel && read.Kernel == kernel && _kernels[kernel].ReadsOnlyAsResidual(residual)) continue;
            return;
        }
        // The loop back edge reads the body's last value at the end of the loop: it must stay intact.
        if (phis.Any(p => p.Inputs[1] == residual && p.Id != residual)) return;
        Union(residual, output);
    }

    private int Find(int value)
    {
        while (_parent[value] != value) value = _parent[value] = _parent[_parent[value]];
        return value;
    }

    /// <summary>Puts <paramref name="later"/> into <paramref name="earlier"/>'s buffer; it becomes the buffer's live value.</summary>
    private void Union(int earlier, int later)
    {
        int root = Find(earlier);
        _parent[Find(later)] = root;
        _occupant[root] = later;
    }
}
