using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Ir;

namespace Kiln.Generators.Passes;

/// <summary>The fusion report: which ops became which kernel, which layout each weight got and why.</summary>
internal static class FusionReport
{
    public static IEnumerable<string> Lines(Plan plan, Graph graph)
    {
        var model = plan.Model;
        string Name(int value) => plan.ValueBuffers[value] < 0 ? "?" : plan.Buffers[plan.ValueBuffers[value]].Name;
        static string Short(string weight) => weight.Substring(weight.LastIndexOf('.') + 1);

        yield return $"Kiln fusion report for {model.ClassName} (architecture \"{model.Architecture}\"), F32 CPU kernels.";
        yield return "Kernels, in step order:";
        int region = 0;
        int number = 1;
        foreach (var kernel in plan.Kernels)
        {
            if (kernel.Region != region)
            {
                if (plan.Regions[region].IsLoop) yield return "  end of layer loop";
                region = kernel.Region;
                var info = plan.Regions[region];
                if (info.IsLoop) yield return $"  for each of the {info.CountMember} layers ({info.LayersMember}[{info.LoopVariable}]):";
            }
            string indent = plan.Regions[region].IsLoop ? "    " : "  ";
            yield return indent + $"[{number++}] " + Describe(kernel, plan, graph, Name, Short);
        }
        if (plan.Regions[region].IsLoop) yield return "  end of layer loop";

        yield return "Weight layouts (F32, repacked once when the plan is compiled):";
        foreach (var matmul in plan.Kernels.OfType<MatMulKernel>())
        {
            var weights = matmul.Segments.SelectMany(s => s.Weights).Select(Short).ToList();
            bool interleaved = matmul.Segments.Any(s => s.Kind == SegmentKind.SwiGlu);
            string rows = string.Join("+", matmul.Segments.Select(s => s.Kind == SegmentKind.SwiGlu ? "2*" + s.OutDim : s.OutDim));
            string where = matmul.LayersMember.Length > 0 ? $"{matmul.Packed}[{plan.Regions[matmul.Region].LoopVariable}]" : matmul.Packed;
            string layout = interleaved
                ? (weights.Count > 2 ? "rows concatenated, gate/up rows interleaved" : "rows interleaved (gate₀, up₀, gate₁, up₁, …)")
                : weights.Count > 1 ? "rows concatenated" : "row-major";
            var why = new List<string>();
            if (weights.Count > 1) why.Add("one horizontal matmul reads its input once for all of them");
            if (interleaved) why.Add("each adjacent row pair yields silu(gate)·up in the epilogue");
            if (matmul.NormWeight.Length > 0) why.Add($"{Short(matmul.NormWeight)} folded into the columns (W'[o,i] = W[o,i]·g[i]) so the norm is a 1/rms scale in the epilogue");
            if (why.Count == 0) why.Add("read one row at a time for all tokens of the step");
            yield return $"  {string.Join(", ", weights)} → {where}: {layout} [{rows}, {matmul.InDim}]; {string.Join("; ", why)}.";
        }
        foreach (var gather in plan.Kernels.OfType<GatherKernel>().Select(g => g.Table).Distinct())
            yield return $"  {Short(gather)} → as loaded (row-major): the embedding gathers whole rows.";
        foreach (var norm in plan.Kernels.OfType<RmsNormKernel>().Select(n => n.Weight).Distinct())
            yield return $"  {Short(norm)} → as loaded: a standalone RMSNorm (not every consumer is a Linear).";

        yield return "Arena (one float buffer; each slot holds maxTokensPerStep rows of its widest buffer):";
        for (int slot = 0; slot < plan.SlotCount; slot++)
        {
            var members = plan.Buffers.Where(b => b.Slot == slot).Select(b => $"{b.Name} [{b.Rows}, {b.Cols}]");
            yield return $"  slot {slot}: {string.Join(", ", members)}";
        }
        if (plan.Kernels.OfType<MatMulKernel>().Any(m => m.NormWeight.Length > 0)) yield return "  plus 1/rms per token [T] for the folded norms";
        if (plan.RopeTables.Count > 0) yield return "Rope: cos/sin per token and pair computed once per step in double (as the eager op), shared by every layer.";
        if (plan.Kernels.OfType<AttentionKernel>().Any()) yield return "Attention scores: one scratch row of the KV cache's MaxContext, grown when a larger cache is first seen.";
    }

    private static string Describe(Kernel kernel, Plan plan, Graph graph, System.Func<int, string> name, System.Func<string, string> shortName)
    {
        switch (kernel)
        {
            case GatherKernel g:
                return $"gather: {name(g.Output)} ← Embedding({shortName(g.Table)}), one table row per token";
            case MatMulKernel m:
            {
                string weights = string.Join("|", m.Segments.Select(s => s.Kind == SegmentKind.SwiGlu
                    ? $"{shortName(s.Weights[0])}⋈{shortName(s.Weights[1])}" : shortName(s.Weights[0])));
                string norm = m.NormWeight.Length > 0 ? $" with RmsNorm({shortName(m.NormWeight)}) folded (1/rms per token once, ×1/rms in the epilogue)" : "";
                var outputs = m.Segments.Select(s => s.Kind switch
                {
                    SegmentKind.Rope => $"{name(s.Output)} ← rope(·) epilogue",
                    SegmentKind.Residual => name(s.Output) == name(s.Residual)
                        ? $"{name(s.Output)} += · (residual add epilogue, in place)"
                        : $"{name(s.Output)} ← {name(s.Residual)} + · (residual add epilogue)",
                    SegmentKind.SwiGlu => $"{name(s.Output)} ← silu(gate)·up epilogue",
                    _ => name(s.Output),
                });
                return $"matmul: {name(m.Input)}·[{weights}]ᵀ{norm} → {string.Join(", ", outputs)}";
            }
            case AttentionKernel a:
                return $"attention: {name(a.Output)} ← Attention({name(a.Q)}, {name(a.K)}, {name(a.V)}): k/v rows written to the KV cache, then causal GQA per token and head (dot, softmax, scale-add)";
            case SelectRowsKernel s:
                return $"select rows: {name(s.Output)} ← the rows of {name(s.Input)} whose logits are wanted";
            case RmsNormKernel r:
                return $"rmsnorm: {name(r.Output)} ← RmsNorm({name(r.Input)}, {shortName(r.Weight)})";
            case RopeKernel r:
                return $"rope: {name(r.Output)} ← Rope({name(r.Input)})";
            case ElementwiseKernel e:
                return e.B < 0 ? $"{e.Op.ToString().ToLowerInvariant()}: {name(e.Output)} ← {e.Op}({name(e.A)})"
                    : $"{e.Op.ToString().ToLowerInvariant()}: {name(e.Output)} ← {e.Op}({name(e.A)}, {name(e.B)})";
            case CopyKernel c:
                return $"copy: {name(c.Destination)} ← {name(c.Source)}";
            default:
                return kernel.GetType().Name;
        }
    }
}
