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

        yield return $"Kiln fusion report for {model.ClassName} (architecture \"{model.Architecture}\"), CPU kernels on a worker pool.";
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

        yield return "Weight layouts (packed once when the plan is compiled, in groups of 4 rows; a segment whose rows are not a multiple of 4 is padded with zero rows):";
        if (plan.Kernels.OfType<MatMulKernel>().Any(m => m.Format == "AsStored"))
            yield return "  rule \"as stored\" (a weight without [Quantize]), chosen per matrix when the plan is compiled, from the file's types: " + AsStoredRule + ".";
        foreach (var matmul in plan.Kernels.OfType<MatMulKernel>().GroupBy(m => m.Packed).Select(g => g.First()))
        {
            var weights = matmul.Segments.SelectMany(s => s.Weights).Distinct().Select(Short).ToList();
            bool interleaved = matmul.Segments.Any(s => s.Kind == SegmentKind.SwiGlu);
            string rows = string.Join("+", matmul.Segments.Select(s => s.Kind == SegmentKind.SwiGlu ? "2*" + s.OutDim : s.OutDim));
            string where = matmul.LayersMember.Length > 0 ? $"{matmul.Packed}[{plan.Regions[matmul.Region].LoopVariable}]" : matmul.Packed;
            string shape = interleaved
                ? (matmul.Segments.Count > 1 ? "segments stacked, gate/up rows interleaved" : "gate/up rows interleaved (gate₀, up₀, gate₁, up₁, …)")
                : matmul.Segments.Count > 1 ? "segments stacked" : "one segment";
            var why = new List<string>();
            if (matmul.Segments.Count > 1) why.Add("one horizontal matmul prepares its input once and reads it for all of them");
            if (interleaved) why.Add("each adjacent row pair yields silu(gate)·up in the epilogue");
            yield return $"  {string.Join(", ", weights)} → {where} [{rows}, {matmul.InDim}], {shape}: {Rule(matmul.Format, model)}{(why.Count > 0 ? "; " + string.Join("; ", why) : "")}.";
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
        yield return "Matmul inputs: prepared once per matmul into one scratch, sized for the widest input: float rows for the F32/BF16 layouts;";
        yield return "  for Q8_0/Q4_0, Q8 activations (per 32 values a float scale d = max|x|/127 and int8 q = round(x/d), GGML's rule),";
        yield return "  with 8·Σq per block for Q4_0's −8 (the kernels broadcast 4 quants at a time to 8 rows). A fused RMSNorm computes 1/rms per token once and writes or quantizes";
        yield return "  x·(1/rms)·g in the same pass (g cannot fold into quantized columns without requantizing them, and folding it into";
        yield return "  float columns would change their rounding: the packed weights stay exactly as stored).";
        if (plan.RopeTables.Count > 0) yield return "Rope: cos/sin per token and pair computed once per step in double (as the eager op), shared by every layer.";
        if (plan.Kernels.OfType<AttentionKernel>().Any()) yield return "Attention scratch: per chunk of work items, every head's scores over the KV cache's MaxContext (and one block's rows when the cache stores F16 or int8), grown when a larger cache is first seen.";
        yield return "Threads: one worker pool (PlanOptions.Threads). A matmul splits its 4-row groups over the threads, each tile (4 rows × 4 tokens";
        yield return "  for F32/BF16, 8 rows × 8 tokens for Q8_0/Q4_0) going through its epilogue while in registers; attention splits (token, KV-head chunk) items. Every output is computed";
        yield return "  by one thread in a fixed order, so results do not depend on the thread count.";
    }

    private const string AsStoredRule =
        "F32 and F16 → F32x4 (F16 widened exactly); BF16 → BF16x4 (widened exactly in the kernel); "
        + "Q8_0 → Q8_0x8 interleaved (the file's quants and fp16 scales copied); Q4_0 → Q4_0x8 interleaved (the file's nibbles and fp16 scales copied); "
        + "any other type (Q4_K, Q6_K, …) → Q8_0x8 (dequantized, requantized); weights of different types in one matmul → the most precise "
        + "of their layouts. Work goes in groups of 4 rows and every tile reads each weight once for several tokens: F32x4/BF16x4 hold 16-element "
        + "chunks of the 4 rows in turn (the kernel streams a group front to back); Q8_0x8/Q4_0x8 store two groups together, 8 rows 4 bytes "
        + "at a time (one multiply-add against 4 broadcast activations covers all 8 rows, each row's sum complete in its own lane)";

    /// <summary>The layout rule for a matmul's weights, and why.</summary>
    private static string Rule(string format, Syntax.ModelInfo model)
    {
        string why = model.DefaultFormat == format ? $"[Quantize(WeightFormat.{format})] on {model.ClassName}" : $"[Quantize(WeightFormat.{format})] on the weight";
        return format switch
        {
            "AsStored" => "as stored (the rule above)",
            "F32" => $"F32x4, as {why} asks (any stored type dequantized)",
            "BF16" => $"BF16x4, as {why} asks (stored BF16 copied, anything else rounded to nearest even)",
            "Q8_0" => $"Q8_0x8 interleaved, as {why} asks (stored Q8_0 blocks copied, anything else quantized once by GGML's reference quantizer); 8 rows per strip so a tile reads each block once for 8 tokens",
            _ => $"Q4_0x8 interleaved, as {why} asks (stored Q4_0 blocks copied, anything else quantized once by GGML's reference quantizer); 8 rows per strip so a tile reads each block once for 8 tokens",
        };
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
                string norm = m.NormWeight.Length > 0 ? $" with RmsNorm({shortName(m.NormWeight)}) fused into the input preparation (1/rms per token once, x·(1/rms)·g quantized or written in one pass)" : "";
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
                return $"attention: {name(a.Output)} ← Attention({name(a.Q)}, {name(a.K)}, {name(a.V)}): k/v rows written to the KV cache (each token's row of its sequence's blocks, in the cache's storage), then causal GQA in parallel over (token, chunk of KV heads) items, each reading its sequence's cached rows block by block, once for all its heads (dots, softmax, weighted sum)";
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
