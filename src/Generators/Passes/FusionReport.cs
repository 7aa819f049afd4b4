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

        yield return $"Kiln fusion report for {model.ClassName} (architecture \"{model.Architecture}\"), CPU kernels on a worker pool.";
        if (model.Encoder)
            yield return $"Kind: encoder (no KV cache): a step holds whole sequences packed one after another, no padding; attention reads each sequence's own k/v rows of the step; the result is {ResultText(plan)}.";
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
            string guard = kernel.Guard >= 0 ? $" (only when {GuardText(plan, kernel.Guard)})" : "";
            yield return indent + $"[{number++}] " + Describe(kernel, plan, Name) + guard;
        }
        if (plan.Regions[region].IsLoop) yield return "  end of layer loop";

        var loops = plan.Kernels.OfType<ElementwiseKernel>().ToList();
        yield return loops.Count == 0
            ? "Elementwise ops: every one fused into a matmul's input preparation or tile epilogue."
            : $"Elementwise ops: every one fused — into a matmul's input preparation or tile epilogue, or into one of {loops.Count} row loop(s) " +
              $"(parallel, vectorized) that stand where no matmul can take them: {string.Join("; ", loops.Select(e => Name(e.Output) + ", " + WhyStandalone(e, graph)))}.";

        yield return "Weight layouts (packed once when the plan is compiled, in groups of 4 rows; a segment whose rows are not a multiple of 4 is padded with zero rows):";
        if (plan.Kernels.OfType<MatMulKernel>().Any(m => m.Format == "AsStored"))
            yield return "  rule \"as stored\" (a weight without [Quantize]), chosen per matrix when the plan is compiled, from the file's types: " + AsStoredRule + ".";
        foreach (var matmul in plan.Kernels.OfType<MatMulKernel>().GroupBy(m => m.Packed).Select(g => g.First()))
        {
            var weights = matmul.Segments.SelectMany(s => s.Weights).Select(w => WeightText(w)).Distinct().ToList();
            bool interleaved = matmul.Segments.Any(s => s.IsPair);
            string rows = string.Join("+", matmul.Segments.Select(s => s.IsPair ? "2*" + s.OutDim : s.OutDim));
            string where = matmul.LayersMember.Length > 0 ? $"{matmul.Packed}[{plan.Regions[matmul.Region].LoopVariable}]" : matmul.Packed;
            string shape = interleaved
                ? (matmul.Segments.Count > 1 ? "segments stacked, pair rows interleaved" : "pair rows interleaved (a₀, b₀, a₁, b₁, …)")
                : matmul.Segments.Count > 1 ? "segments stacked" : "one segment";
            var why = new List<string>();
            if (matmul.Segments.Count > 1) why.Add("one horizontal matmul prepares its input once and reads it for all of them");
            if (interleaved) why.Add("each adjacent row pair meets in one tile, so the epilogue combines both sums");
            if (matmul.Segments.Any(s => s.Weights.Any(w => w.RowStart.Length > 0))) why.Add("a fused weight is split by rows when packed (its slices cost nothing at run time)");
            yield return $"  {string.Join(", ", weights)} → {where} [{rows}, {matmul.InDim}], {shape}: {Rule(matmul.Format, model)}{(why.Count > 0 ? "; " + string.Join("; ", why) : "")}.";
            if (matmul.Sparsity != "None") yield return "    then " + SparseRule(matmul, model) + ".";
        }
        if (plan.Kernels.OfType<MatMulKernel>().Any(m => m.Format is "AsStored" or "Q8_0"))
            yield return "  PlanOptions.Sparsity, when set, packs every matrix laid out as stored or Q8_0 in that sparse pattern instead (None: dense), for one plan.";
        foreach (var table in plan.Kernels.SelectMany(Programs).SelectMany(p => p.Elems).Where(e => e.Kind == ElemKind.Gather).Select(e => e.Weight).Distinct())
            yield return $"  {Short(table)} → as stored in the file (memory-mapped): each gathered row decoded by itself, by {GatherKey(plan.Kernels.SelectMany(Programs).SelectMany(p => p.Elems).First(e => e.Kind == ElemKind.Gather && e.Weight == table).Map)}.";

        yield return "Arena (one float buffer; each slot holds maxTokensPerStep rows of its widest buffer):";
        for (int slot = 0; slot < plan.SlotCount; slot++)
        {
            var members = plan.Buffers.Where(b => b.Slot == slot).Select(b => $"{b.Name} [{b.Rows}, {b.Cols}]");
            yield return $"  slot {slot}: {string.Join(", ", members)}";
        }
        yield return "Matmul inputs: prepared once per matmul into one scratch, sized for the widest input: float rows for the F32/BF16 layouts;";
        yield return "  for Q8_0/Q4_0, Q8 activations (per 32 values a scale d = max|x|/127, kept in fp16, and int8 q = round(x/d): GGML's rule),";
        yield return "  with 8·Σq per block for Q4_0's −8 (the kernels broadcast 4 quants at a time to 8 rows); for the K-quants, Q8_K activations (per 256 values";
        yield return "  iscale = −127 / the value of largest magnitude, q = round(iscale·x) to nearest even, d = 1/iscale in float: GGML's rule, with sums of 16";
        yield return "  and 32 quants for the mins and Q6_K's −32). A fused norm computes its statistics per token once";
        yield return "  (in double) and writes or quantizes the normalized row in the same pass (its weight cannot fold into quantized columns";
        yield return "  without requantizing them, and folding it into float columns would change their rounding: the packed weights stay exactly as stored).";
        yield return "Loop bodies (epilogues, input chains, elementwise loops) are generated from the forward method's ops at every width:";
        yield return "  Vector512, Vector256, Vector128 (tiles) and scalar; activations are composed from e^x, tanh, erf and ln (Kiln.Kernels.Elementwise.Lanes).";
        if (plan.RopeTables.Count > 0) yield return "Rope: cos/sin per token and pair computed once per step in double (as the eager op), shared by every layer.";
        if (plan.Kernels.OfType<AttentionKernel>().Any() && model.Encoder) yield return "Attention scratch: per chunk of work items, every head's scores over the longest sequence a step can hold (its whole step), allocated with the plan.";
        else if (plan.Kernels.OfType<AttentionKernel>().Any()) yield return "Attention scratch: per chunk of work items, every head's scores over the KV cache's MaxContext (and one block's rows when the cache stores int8), grown when a larger cache is first seen.";
        if (plan.Kernels.OfType<LstmKernel>().Any()) yield return "Recurrent state: per sequence, each LSTM layer's h and c in the context's state slot (float32 unless the state says F16); scratch for each sequence's starting state and gates, allocated with the plan.";
        if (plan.Kernels.OfType<GruKernel>().Any()) yield return "Recurrent state: per sequence, each GRU layer's h in the context's state slot (float32 unless the state says F16); each sequence's starting h and recurrent pre-activations on its worker's stack.";
        if (plan.Kernels.Any(k => k is CausalConvKernel or SelectiveScanKernel)) yield return "Recurrent state: per sequence, each Mamba layer's last K − 1 convolution inputs and scan state per channel in the context's state slot (float32 unless the state says F16); each work item keeps its block of channels' state on the stack.";
        yield return "Threads: one worker pool (PlanOptions.Threads). A matmul splits its 4-row groups over the threads, each tile (64 rows × 6 tokens";
        yield return "  for F32, 4 rows × 4 tokens for BF16, 8 rows × 8 tokens for the quantized layouts) going through its epilogue while in registers; F32 with many tokens";
        yield return "  on several threads splits its tokens too, in items of 64 rows × a block of tokens (GemmBlocks); attention splits (token, KV-head chunk) items" + (plan.Model.Encoder ? " or (sequence, KV head) items;" : ";");
        yield return "  elementwise loops split rows. Every output is computed by one thread in a fixed order, so results do not depend on the thread count.";
    }

    /// <summary>What an encoder's step returns, by the rows of its result.</summary>
    private static string ResultText(Plan plan) => plan.ResultRows switch
    {
        Shape.Sequences => $"one row of {plan.VocabDim} per sequence",
        Shape.Tokens => $"every token's row of {plan.VocabDim} (hidden states)",
        _ => $"rows of {plan.VocabDim}",
    };

    /// <summary>A program's description with its stored values named by their buffers.</summary>
    public static string Resolve(string description, Plan plan) =>
        System.Text.RegularExpressions.Regex.Replace(description, "⟨(\\d+)⟩", match =>
        {
            int value = int.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            return value < plan.ValueBuffers.Count && plan.ValueBuffers[value] >= 0 ? plan.Buffers[plan.ValueBuffers[value]].Name : "?";
        });

    private static string GatherKey(RowMap map) => map switch
    {
        RowMap.Positions => "position",
        RowMap.TokenTypes => "token type",
        _ => "token",
    };

    private static IEnumerable<Program> Programs(Kernel kernel) => kernel switch
    {
        MatMulKernel m => m.Segments.Select(s => s.Epilogue).Concat(m.InputProgram is null ? Enumerable.Empty<Program>() : new[] { m.InputProgram }),
        ElementwiseKernel e => new[] { e.Program },
        _ => Enumerable.Empty<Program>(),
    };

    internal static string GuardText(Plan plan, int guard)
    {
        var parts = new List<string>();
        for (int g = guard; g >= 0; g = plan.Guards[g].Parent)
            parts.Insert(0, plan.Guards[g].Polarity ? plan.Guards[g].Condition.ToString() : $"!({plan.Guards[g].Condition})");
        return string.Join(" && ", parts);
    }

    /// <summary>Why a root became its own loop rather than part of a matmul: what reads it, or what it needs.</summary>
    private static string WhyStandalone(ElementwiseKernel kernel, Graph graph)
    {
        var program = kernel.Program;
        if (program.Rope >= 0) return "a rotary embedding that no matmul tile can end (NeoX halves, partial rotary, or after per-head statistics)";
        if (program.HasStats) return "a norm whose readers are not all matmuls (its statistics need the whole row first)";
        var readers = graph.Nodes.Where(n => n.Inputs.Contains(kernel.Output)).ToList();
        if (readers.Count > 1) return $"read by {readers.Count} ops, so stored once";
        if (kernel.Output == graph.Result) return "the forward's result";
        return readers.Count == 1 ? readers[0].Op switch
        {
            OpKind.Phi => "carried into the layer loop",
            OpKind.Merge => "merged after an if",
            OpKind.Attention => "read by attention",
            OpKind.Lstm => "read by the LSTM recurrence",
            OpKind.Gru => "read by the GRU recurrence",
            OpKind.CausalConv1d => "read by the causal convolution",
            OpKind.SelectiveScan => "read by the selective scan",
            OpKind.Pool => "read by the pooling",
            OpKind.Linear => "read by matmuls of different layouts",
            _ => "no matmul output of its own to end",
        } : "no matmul output of its own to end";
    }

    // The runtime's choice (StepAttention.Plan): bidirectional attention without a window goes by sequence on the
    // AVX-512 path when the head size is a multiple of 16; anything else, or another path, by token.
    private static string EncoderAttentionItems(AttentionKernel attention) =>
        attention.Causal.Constant == "false" && attention.Window.Constant == "0"
            ? "(sequence, KV head) items on the AVX-512 path when the head size is a multiple of 16 (32-query blocks, the scores held transposed so each softmax runs down its column), else over (token, chunk of KV heads) items (dots, softmax, weighted sum)"
            : "(token, chunk of KV heads) items (dots, softmax, weighted sum)";

    private static string WeightText(WeightSlice weight) =>
        weight.RowStart.Length == 0 ? Short(weight.Key) : $"{Short(weight.Key)}[{weight.RowStart}..]";

    private static string Short(string weight) => weight.Substring(weight.LastIndexOf('.') + 1);

    private const string AsStoredRule =
        "F32 and F16 → F32x16 panels (F16 widened exactly); BF16 → BF16x4 (widened exactly in the kernel); "
        + "Q8_0 → Q8_0x8 interleaved (the file's quants and fp16 scales copied); Q4_0 → Q4_0x8 interleaved (the file's nibbles and fp16 scales copied); "
        + "Q6_K, Q5_K, Q4_K → Q6_Kx8, Q5_Kx8, Q4_Kx8 interleaved (the file's quants, scales, mins and fp16 super-block scales copied); "
        + "any other type (Q5_0, Q2_K, …) → Q8_0x8 (dequantized, requantized); weights of different types in one matmul → the most precise "
        + "of their layouts, except that K-quants of different types keep their own, one segment each. Work goes in groups of 4 rows and every "
        + "tile reads each weight once for several tokens: F32x16 holds panels of 16 rows, element k of the 16 side by side (outer products: "
        + "one load of 16 rows times one broadcast activation, no reductions); BF16x4 holds 16-element chunks of the 4 rows in turn (the kernel "
        + "streams a group front to back); the quantized layouts store two groups together, 8 rows 4 bytes at a time (one multiply-add against "
        + "4 broadcast activations covers all 8 rows, each row's sum complete in its own lane)";

    /// <summary>The sparse layout a matmul's weights get on top of their format, and why.</summary>
    private static string SparseRule(MatMulKernel matmul, Syntax.ModelInfo model)
    {
        var own = matmul.Segments.SelectMany(s => s.Weights).Select(w => model.Weights.FirstOrDefault(x => x.Key == w.Key)?.Sparse).FirstOrDefault(s => s is not null);
        var sparse = own ?? model.DefaultSparse!;
        string why = own is null ? $"[Sparse(SparsePattern.{sparse.Pattern})] on {model.ClassName}" : $"[Sparse(SparsePattern.{sparse.Pattern})] on the weight";
        string load = sparse.Prune
            ? sparse.Pattern == "TwoFour" ? "magnitude-pruned at load (the 2 smallest of every 4 zeroed)" : $"magnitude-pruned at load (the 8×32 tiles of smallest norm zeroed, {sparse.KeepFraction.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)} kept)"
            : sparse.Pattern == "TwoFour" ? "checked at load (a row with 3 or 4 nonzero values in a group of 4 is a ModelLoadException naming it)" : "exact for any weight";
        string layout = sparse.Pattern == "TwoFour"
            ? "2:4 sparse Q8_0: per row and block of 32, the 2 kept of every 4 quants with 2-bit positions (65% of the dense bytes, half the multiply-adds; a vpshufb gathers each value's activation)"
            : "block-sparse Q8_0: only the 8×32 strip blocks holding a nonzero stored, CSR per 8-row strip (zero blocks cost neither bytes nor multiply-adds)";
        return $"{layout}, as {why} asks; {load}";
    }

    /// <summary>The layout rule for a matmul's weights, and why.</summary>
    private static string Rule(string format, Syntax.ModelInfo model)
    {
        string why = model.DefaultFormat == format ? $"[Quantize(WeightFormat.{format})] on {model.ClassName}" : $"[Quantize(WeightFormat.{format})] on the weight";
        return format switch
        {
            "AsStored" => "as stored (the rule above)",
            "F32" => $"F32x16 panels, as {why} asks (any stored type dequantized)",
            "BF16" => $"BF16x4, as {why} asks (stored BF16 copied, anything else rounded to nearest even)",
            "Q8_0" => $"Q8_0x8 interleaved, as {why} asks (stored Q8_0 blocks copied, anything else quantized once by GGML's reference quantizer); 8 rows per strip so a tile reads each block once for 8 tokens",
            _ => $"Q4_0x8 interleaved, as {why} asks (stored Q4_0 blocks copied, anything else quantized once by GGML's reference quantizer); 8 rows per strip so a tile reads each block once for 8 tokens",
        };
    }

    private static string Describe(Kernel kernel, Plan plan, System.Func<int, string> name)
    {
        switch (kernel)
        {
            case MatMulKernel m:
            {
                string weights = string.Join("|", m.Segments.Select(s => s.IsPair
                    ? $"{WeightText(s.Weights[0])}⋈{WeightText(s.Weights[1])}" : WeightText(s.Weights[0])));
                string input = m.InputProgram is null ? name(m.Input) : $"({Resolve(m.InputProgram.Description, plan)})";
                string norm = m.Norm is null ? "" : $" with {(m.Norm.Kind == "Rms" ? "RmsNorm" : "LayerNorm")}({Short(m.Norm.Weight)}{(m.Norm.Bias.Length > 0 ? ", " + Short(m.Norm.Bias) : "")}) fused into the input preparation";
                string chain = m.InputProgram is null ? "" : " (the input chain computed per row while preparing)";
                var outputs = m.Segments.Select(s =>
                {
                    string what = s.Epilogue.Description.Length == 0 ? "" : $" ← {Resolve(s.Epilogue.Description, plan)}";
                    string rope = "";
                    bool inPlace = s.Epilogue.Elems.Any(e => e.Kind == ElemKind.Load && name(e.Value) == name(s.Output));
                    return $"{name(s.Output)}{what}{rope}{(what.Length > 0 || rope.Length > 0 ? " epilogue" : "")}{(inPlace ? " (in place)" : "")}";
                });
                return $"matmul: {input}·[{weights}]ᵀ{norm}{chain} → {string.Join(", ", outputs)}";
            }
            case AttentionKernel a when plan.Model.Encoder:
            {
                string causal = a.Causal.Constant switch { "false" => "bidirectional", "true" => "causal", _ => $"causal when {a.Causal}" };
                var options = new List<string>();
                if (a.Window.Constant != "0") options.Add($"sliding window {a.Window}");
                if (a.SoftCap.Constant != "0") options.Add($"scores soft-capped at {a.SoftCap}");
                if (a.Scale.Constant != "0") options.Add($"scale {a.Scale}");
                return $"attention: {name(a.Output)} ← Attention({name(a.Q)}, {name(a.K)}, {name(a.V)}): no KV cache; {causal} GQA within each sequence of the step{(options.Count > 0 ? " (" + string.Join(", ", options) + ")" : "")}, k/v read in place from the step's rows, in parallel over {EncoderAttentionItems(a)}";
            }
            case PoolKernel p:
                return $"pool: {name(p.Output)} ← {(p.Mode == "Mean" ? "the mean of" : p.Mode == "Cls" ? "the first of" : "the last of")} each sequence's rows of {name(p.Input)}{(p.Mode == "Mean" ? " (summed in double)" : "")}, in parallel over sequences";
            case AttentionKernel a:
            {
                var options = new List<string>();
                if (a.Causal.Constant != "true") options.Add(a.Causal.Constant == "false" ? "bidirectional" : $"causal when {a.Causal}");
                if (a.Window.Constant != "0") options.Add($"sliding window {a.Window}");
                if (a.SoftCap.Constant != "0") options.Add($"scores soft-capped at {a.SoftCap}");
                if (a.Scale.Constant != "0") options.Add($"scale {a.Scale}");
                string causal = a.Causal.Constant == "true" ? "causal " : "";
                return $"attention: {name(a.Output)} ← Attention({name(a.Q)}, {name(a.K)}, {name(a.V)}): k/v rows written to the KV cache (each token's row of its sequence's blocks, in the cache's storage), then {causal}GQA{(options.Count > 0 ? " (" + string.Join(", ", options) + ")" : "")} in parallel over (token, chunk of KV heads) items, each reading its sequence's cached rows block by block, once for all its heads (dots, softmax, weighted sum)";
            }
            case LstmKernel l:
                return $"lstm: {name(l.Output)} ← Lstm({name(l.Gates)}, {Short(l.Recurrent)}): per sequence of the step, its tokens in order from its state slot (zeros at position 0), each a matrix–vector product with {Short(l.Recurrent)} (float32) and the cell update; h and c of the last token back to the slot; in parallel over sequences";
            case GruKernel g:
                return $"gru: {name(g.Output)} ← Gru({name(g.Gates)}, {Short(g.Recurrent)}, {Short(g.RecurrentBias)}): per sequence of the step, its tokens in order from its state slot (zeros at position 0), each a matrix–vector product with {Short(g.Recurrent)} (float32) and the gate update; h of the last token back to the slot; in parallel over sequences";
            case CausalConvKernel conv:
                return $"causal conv: {name(conv.Output)} ← CausalConv1d({name(conv.Input)}, {Short(conv.Weight)}): per (sequence, block of 16 channels), its tokens in order from the last K − 1 inputs in its state slot (zeros at position 0), a dot with each channel's kernel ({Short(conv.Weight)}, float32); the last K − 1 inputs back to the slot";
            case SelectiveScanKernel scan:
                return $"selective scan: {name(scan.Output)} ← SelectiveScan({name(scan.X)}, {name(scan.Dt)}, {Short(scan.A)}, {name(scan.B)}, {name(scan.C)}, {Short(scan.D)}, {name(scan.Z)}): per (sequence, block of 16 channels), its tokens in order from its state slot (zeros at position 0): softplus Δ, h = e^(ΔA)·h + ΔB·x over the state in vectors, y = (C·h + D·x)·SiLU(z); h back to the slot";
            case ElementwiseKernel e:
                return $"elementwise: {name(e.Output)} ← {Resolve(e.Program.Description, plan)}, one parallel vector loop";
            case ConcatKernel c:
                return $"concat: {name(c.Output)} ← [{name(c.A)} | {name(c.B)}]";
            case CopyKernel c:
                return $"copy: {name(c.Destination)} ← {name(c.Source)}";
            default:
                return kernel.GetType().Name;
        }
    }
}
