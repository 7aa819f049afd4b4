using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Ir;

namespace Kiln.Generators.Passes;

/// <summary>
/// Runs the passes over a graph: fusion (kernels), then storage planning — loop-carried and branch-merged values
/// share a buffer with what feeds them when liveness allows (a copy otherwise), kernels write their output over an
/// input they read only where they write (residual adds, in place), and buffers share arena slots when their live
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
        if ((uint)_graph.Result >= (uint)_graph.Nodes.Count)
            throw new InvalidOperationException($"The forward result is value {_graph.Result}, which the graph does not have.");
        var fusion = new Fusion(_graph);
        _kernels = fusion.Run();
        _cancellationToken.ThrowIfCancellationRequested();

        var phis = _graph.Nodes.Where(n => n.Op == OpKind.Phi).ToList();
        var merges = _graph.Nodes.Where(n => n.Op == OpKind.Merge).ToList();
        Order();

        // Loop entry: the value before the loop becomes the phi's buffer unless it is still read once the loop starts.
        foreach (var phi in phis)
        {
            int init = phi.Inputs[0];
            bool readLater = Reads(init).Any(r => r.Kernel.Region >= phi.Region);
            if (readLater || !HasStorage(init) || _occupant[Find(init)] != init) _kernels.Add(new CopyKernel(phi.Region - 1, -1, int.MaxValue, init, phi.Id));
            else Union(init, phi.Id);
        }
        Order();

        // In place: a kernel writes its output over a value it reads only where it writes, when nothing reads that value
        // later. A matmul does so only where its output must end up in that buffer anyway (a loop's last value over the
        // loop's own buffer): a residual read and written back by the tiles costs far more than one read from a buffer
        // and a store to another (MiniLM's Wo ran at 77 % of the FMA roof in place, 91 % into a free slot).
        foreach (var kernel in _kernels.ToList())
            foreach (int output in kernel.Writes)
                foreach (int value in kernel.Reads)
                    if (kernel.CanWriteInPlace(value, output) && (kernel is not MatMulKernel || IsLoopBufferWrite(value, output, phis)))
                        TryInPlace(kernel, value, output, phis);

        // After an if: each branch's value becomes the merge's buffer when it lives only in its branch; else a copy, in the branch.
        foreach (var merge in merges)
        {
            for (int side = 0; side < 2; side++)
            {
                int value = merge.Inputs[side], guard = merge.Branch + side;
                if (Find(value) == Find(merge.Id)) continue;
                bool own = HasStorage(value) && _graph[value].Guard == guard && _occupant[Find(value)] == value && _occupant[Find(merge.Id)] == merge.Id
                           && Reads(value).All(r => r.Kernel.Guard >= 0 && _graph.Within(r.Kernel.Guard, guard) && r.Kernel.Anchor < merge.Id);
                if (own) Union(value, merge.Id);
                else _kernels.Add(new CopyKernel(merge.Region, guard, merge.Id, value, merge.Id));
            }
        }
        Order();

        // Loop back edge: the body's last value must sit in the phi's buffer. It is written there directly when that
        // buffer's contents are dead by then (a post-norm block's final LayerNorm); else a copy ends the body.
        foreach (var phi in phis)
        {
            int back = phi.Inputs[1];
            if (back == phi.Id || Find(back) == Find(phi.Id)) continue;
            if (CanTakeLoopBuffer(phi, back)) Union(phi.Id, back);
            else _kernels.Add(new CopyKernel(phi.Region, -1, int.MaxValue, back, phi.Id));
        }

        // The result goes straight into the caller's logits when a matmul's epilogue writes it (pinned for the run) and
        // nothing else shares its buffer; any other kernel writes the arena and a copy follows.
        int result = _graph.Result;
        bool direct = _graph[result].Op is not (OpKind.Phi or OpKind.Merge) && _kernels.Any(k => k.Writes.Contains(result) && k.Guard < 0 && k is MatMulKernel)
            && Enumerable.Range(0, _graph.Nodes.Count).All(v => v == result || Find(v) != Find(result));
        if (direct) Union(_logits, result);
        else _kernels.Add(new CopyKernel(_graph.Regions.Count - 1, -1, int.MaxValue, result, _logits));
        Order();
        _cancellationToken.ThrowIfCancellationRequested();

        return Assemble(fusion.RopeTables);
    }

    /// <summary>Whether <paramref name="output"/> is a loop's last value and <paramref name="value"/> already sits in that loop's buffer.</summary>
    private bool IsLoopBufferWrite(int value, int output, List<Node> phis) => phis.Any(p => p.Inputs[1] == output && Find(value) == Find(p.Id));

    private bool HasStorage(int value) => _kernels.Any(k => k.Writes.Contains(value)) || _graph[value].Op is OpKind.Phi or OpKind.Merge;

    /// <summary>Orders kernels by region, then anchor (copies last among equal anchors).</summary>
    private void Order() =>
        _kernels = _kernels.Select((k, i) => (k, i)).OrderBy(p => p.k.Region).ThenBy(p => p.k.Anchor).ThenBy(p => p.k is CopyKernel ? 1 : 0).ThenBy(p => p.i)
            .Select(p => p.k).ToList();

    private int Position(Kernel kernel) => _kernels.IndexOf(kernel);

    private (int Start, int End) LoopSpan(int region)
    {
        var inRegion = Enumerable.Range(0, _kernels.Count).Where(k => _kernels[k].Region == region).ToList();
        if (inRegion.Count > 0) return (inRegion.Min(), inRegion.Max());
        int before = Enumerable.Range(0, _kernels.Count).Where(k => _kernels[k].Region < region).DefaultIfEmpty(-1).Max();
        return (before + 1, before);
    }

    /// <summary>Every kernel read of a value: the kernel and the effective position (a read inside a loop of a value from outside it lasts to the loop's end).</summary>
    private IEnumerable<(Kernel Kernel, int Position)> Reads(int value)
    {
        int defined = value < _graph.Nodes.Count ? _graph[value].Region : -1;
        for (int k = 0; k < _kernels.Count; k++)
        {
            if (!_kernels[k].Reads.Contains(value)) continue;
            int region = _kernels[k].Region;
            int position = k;
            if (region != defined && _graph.Regions[region].IsLoop) position = LoopSpan(region).End;
            yield return (_kernels[k], position);
        }
    }

    private void TryInPlace(Kernel kernel, int input, int output, List<Node> phis)
    {
        if (output == _graph.Result || Find(input) == Find(output) || _occupant[Find(input)] != input || _occupant[Find(output)] != output) return;
        // The output joins the input's buffer only while it has none of its own (an output written over one input cannot take another's).
        if (!HasStorage(input) || Enumerable.Range(0, _graph.Nodes.Count + 1).Any(v => v != output && Find(v) == Find(output))) return;
        // A kernel in a branch may write over a value from outside it only when that value is not read after the branch.
        int position = Position(kernel);
        var asPhi = phis.FirstOrDefault(p => p.Id == input);
        foreach (var read in Reads(input))
        {
            // A phi read after its loop reads the loop's final state, which the back edge restores into the same buffer.
            if (asPhi is not null && read.Kernel.Region > asPhi.Region) continue;
            if (read.Position < position) continue;
            if (ReferenceEquals(read.Kernel, kernel)) continue;
            return;
        }
        // The loop back edge reads the body's last value at the end of the loop: it must stay intact; so must a merge's input.
        if (phis.Any(p => p.Inputs[1] == input && p.Id != input)) return;
        if (_graph.Nodes.Any(n => n.Op == OpKind.Merge && n.Inputs.Contains(input))) return;
        Union(input, output);
    }

    /// <summary>
    /// Whether <paramref name="back"/>, the loop body's last value, may be written straight into <paramref name="phi"/>'s
    /// buffer: it has no buffer of its own yet, its one writer is an unguarded kernel of the loop's body, nobody reads it
    /// outside the loop, and the value the phi's buffer holds by then (the phi, or the last value written over it in
    /// place) is written and read only before that kernel.
    /// </summary>
    private bool CanTakeLoopBuffer(Node phi, int back)
    {
        if (back >= _graph.Nodes.Count || _occupant[Find(back)] != back || _occupant[Find(phi.Id)] == back) return false;
        if (Enumerable.Range(0, _graph.Nodes.Count + 1).Any(v => v != back && Find(v) == Find(back))) return false;
        var writers = _kernels.Where(k => k.Writes.Contains(back)).ToList();
        if (writers.Count != 1 || writers[0].Region != phi.Region || writers[0].Guard >= 0 || writers[0] is CopyKernel) return false;
        int position = Position(writers[0]);
        if (Reads(back).Any(read => read.Kernel.Region != phi.Region)) return false;
        int held = _occupant[Find(phi.Id)];
        if (held != phi.Id && _kernels.Any(k => k.Writes.Contains(held) && Position(k) >= position)) return false;
        // A read of the phi after its loop reads the loop's final state: the last value, now in this very buffer.
        return Reads(held).All(read => read.Position < position || (held == phi.Id && read.Kernel.Region > phi.Region));
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
