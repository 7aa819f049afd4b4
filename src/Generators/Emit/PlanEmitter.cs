using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Ir;
using Kiln.Generators.Passes;

namespace Kiln.Generators.Emit;

/// <summary>
/// Emits the nested CompiledPlan: dims as fields, weights repacked at construction, one arena, and Step running the
/// fused kernels in order — loops specialized to each op chain with epilogues inlined, building blocks from
/// Kiln.Kernels.VectorMath.
/// </summary>
internal static partial class PlanEmitter
{
    private const string VectorMath = "global::Kiln.Kernels.VectorMath";
    private const string Packing = "global::Kiln.Kernels.WeightPacking";

    /// <summary>Locals the emitted Step uses; arena buffers never take these names.</summary>
    public static readonly string[] ReservedNames =
    {
        "T", "O", "tokens", "context", "logits", "arena", "cache", "positions", "slots", "outputRows", "invRms", "weights",
        "t", "o", "j", "i", "p", "h", "c", "w0", "w1", "input", "a", "b", "cos", "sin", "pair", "heads", "kvHeads",
        "headDim", "group", "scale", "keys", "values", "query", "kvOffset", "scores", "output", "position", "token", "table",
        "cols", "row", "model", "packed", "half", "angle", "residual", "layerCount", "source", "destination", "weight", "result", "offset", Names.LayerIndex,
    };

    public static void Emit(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        w.Line("/// <summary>");
        w.Line($"/// {model.ClassName} compiled into fused F32 kernels over one arena (see the fusion report at the top of this file).");
        w.Line("/// A step allocates nothing once the attention scratch fits the KV cache in use.");
        w.Line("/// </summary>");
        using (w.Block("public sealed class CompiledPlan : global::Kiln.ICompiledPlan"))
        {
            w.Line("/// <summary>The fusion report: which ops became which kernel, which layout each weight got, and why.</summary>");
            w.Line("public const string Report =");
            for (int i = 0; i < plan.Report.Count; i++)
                w.Line("    " + Names.Literal(plan.Report[i] + "\n") + (i == plan.Report.Count - 1 ? ";" : " +"));
            w.Line();
            EmitFields(w, plan);
            EmitConstructor(w, plan);
            w.Line("public int MaxTokensPerStep { get; }");
            w.Line();
            w.Line($"public int VocabSize => {Names.DimField(plan.VocabDim)};");
            w.Line();
            w.Line("public string FusionReport => Report;");
            w.Line();
            EmitStep(w, plan);
        }
    }

    private static string Buffer(Plan plan, int value) => plan.Buffers[plan.ValueBuffers[value]].Name;

    private static string OffsetField(Buffer buffer) => "_" + buffer.Name + "Offset";

    private static string LoopVariable(Plan plan, int region) =>
        plan.Regions[region].IsLoop ? Names.LayerIndex : "0";

    private static void EmitFields(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        w.Line($"private readonly {model.ClassName} _model;");
        w.Line();
        w.Line("// Dimensions, fixed when the model was bound.");
        foreach (var dim in plan.Dims) w.Line($"private readonly int {Names.DimField(dim)};");
        w.Line();
        w.Line("// Weights in the kernels' layouts.");
        foreach (var matmul in Distinct(plan.Kernels.OfType<MatMulKernel>()))
        {
            string type = matmul.LayersMember.Length > 0 ? "float[][]" : "float[]";
            string rows = string.Join(" + ", matmul.Segments.Select(s => s.Kind == SegmentKind.SwiGlu ? "2*" + s.OutDim : s.OutDim));
            string per = matmul.LayersMember.Length > 0 ? "per layer " : "";
            w.Line($"private readonly {type} {matmul.Packed}; // {per}[{rows}, {matmul.InDim}]");
        }
        foreach (var table in plan.RopeTables)
        {
            w.Line();
            w.Line($"// Rope table {table.Index}: head dim {table.HeadDim}, base {table.Base}; inverse frequency per pair, cos/sin per token and pair.");
            w.Line($"private readonly int _rope{table.Index}HeadDim;");
            w.Line($"private readonly int _rope{table.Index}Half;");
            w.Line($"private readonly double[] _rope{table.Index}InverseFrequency;");
            w.Line($"private readonly double[] _rope{table.Index}Cos;");
            w.Line($"private readonly double[] _rope{table.Index}Sin;");
        }
        w.Line();
        w.Line("// The arena: every activation is a slice of it.");
        w.Line("private readonly float[] _arena;");
        foreach (var buffer in plan.Buffers.Where(b => b.Slot >= 0)) w.Line($"private readonly int {OffsetField(buffer)};");
        if (NeedsInvRms(plan)) w.Line("private readonly int _invRmsOffset;");
        if (plan.Kernels.OfType<AttentionKernel>().Any())
        {
            w.Line();
            w.Line("// Attention scores for one query, sized to the largest KV cache context seen.");
            w.Line("private float[] _scores = global::System.Array.Empty<float>();");
        }
        w.Line();
    }

    private static bool NeedsInvRms(Plan plan) => plan.Kernels.OfType<MatMulKernel>().Any(m => m.NormWeight.Length > 0);

    /// <summary>One packing per packed field (a field is shared when two kernels pack the same way).</summary>
    private static IEnumerable<MatMulKernel> Distinct(IEnumerable<MatMulKernel> kernels) =>
        kernels.GroupBy(k => k.Packed).Select(g => g.First());

    private static void EmitConstructor(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        using (w.Block($"public CompiledPlan({model.ClassName} model, int maxTokensPerStep)"))
        {
            w.Line("if (model is null) throw new global::System.ArgumentNullException(nameof(model));");
            w.Line("if (maxTokensPerStep <= 0) throw new global::System.ArgumentOutOfRangeException(nameof(maxTokensPerStep), maxTokensPerStep, \"A step holds at least one token.\");");
            w.Line("_model = model;");
            w.Line("MaxTokensPerStep = maxTokensPerStep;");
            foreach (var dim in plan.Dims) w.Line($"{Names.DimField(dim)} = {Names.DimCode(dim, "model")};");
            w.Line();

            EmitValidation(w, plan);
            EmitPacking(w, plan);

            foreach (var table in plan.RopeTables)
            {
                string i = table.Index.ToString();
                w.Line($"_rope{i}HeadDim = {Names.Scalar(table.HeadDim, "model")};");
                w.Line($"if (_rope{i}HeadDim <= 0 || _rope{i}HeadDim % 2 != 0)");
                w.Line($"    throw new global::System.InvalidOperationException($\"Rope: head dimension {{_rope{i}HeadDim}} must be positive and even.\");");
                w.Line($"_rope{i}Half = _rope{i}HeadDim / 2;");
                w.Line($"_rope{i}InverseFrequency = new double[_rope{i}Half];");
                w.Line($"for (int pair = 0; pair < _rope{i}Half; pair++) _rope{i}InverseFrequency[pair] = global::System.Math.Pow({Names.Scalar(table.Base, "model")}, -2.0 * pair / _rope{i}HeadDim);");
                w.Line($"_rope{i}Cos = new double[maxTokensPerStep * _rope{i}Half];");
                w.Line($"_rope{i}Sin = new double[maxTokensPerStep * _rope{i}Half];");
                w.Line();
            }

            w.Line("// Arena slots (buffers whose live ranges do not overlap share a slot).");
            w.Line("int offset = 0;");
            for (int slot = 0; slot < plan.SlotCount; slot++)
            {
                var members = plan.Buffers.Where(b => b.Slot == slot).ToList();
                var widths = members.Select(b => Names.DimField(b.Cols)).Distinct().ToList();
                string width = widths[0];
                for (int k = 1; k < widths.Count; k++) width = $"global::System.Math.Max({width}, {widths[k]})";
                foreach (var buffer in members) w.Line($"{OffsetField(buffer)} = offset; // {buffer.Name} [{buffer.Rows}, {buffer.Cols}]");
                w.Line($"offset += maxTokensPerStep * {width};");
            }
            if (NeedsInvRms(plan))
            {
                w.Line("_invRmsOffset = offset; // 1/rms per token for the folded norms");
                w.Line("offset += maxTokensPerStep;");
            }
            w.Line("_arena = new float[offset];");
        }
        w.Line();
    }

    private static void EmitValidation(CodeWriter w, Plan plan)
    {
        foreach (var attention in plan.Kernels.OfType<AttentionKernel>().Take(1))
        {
            string heads = Names.Scalar(attention.Heads, "model");
            string kvHeads = Names.Scalar(attention.KvHeads, "model");
            string qCols = Names.DimField(plan.Buffers[plan.ValueBuffers[attention.Q]].Cols);
            w.Line($"if ({heads} <= 0 || {kvHeads} <= 0 || {heads} % {kvHeads} != 0 || {qCols} % {heads} != 0 || {qCols} / {heads} * {kvHeads} != {Names.DimField(plan.KvDim)})");
            w.Line($"    throw new global::System.InvalidOperationException($\"Attention: {{{heads}}} heads over {{{kvHeads}}} KV heads do not fit q rows of {{{qCols}}} and k rows of {{{Names.DimField(plan.KvDim)}}}.\");");
            w.Line();
        }
        foreach (var matmul in plan.Kernels.OfType<MatMulKernel>())
        {
            foreach (var segment in matmul.Segments.Where(s => s.Kind == SegmentKind.Rope))
            {
                string headDim = Names.Scalar(plan.RopeTables[segment.RopeTable].HeadDim, "model");
                w.Line($"if ({Names.DimField(segment.OutDim)} % {headDim} != 0 || {headDim} % 2 != 0)");
                w.Line($"    throw new global::System.InvalidOperationException($\"Rope: head dimension {{{headDim}}} must be even and divide the row length {{{Names.DimField(segment.OutDim)}}}.\");");
            }
        }
    }

    private static void EmitPacking(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        foreach (var matmul in Distinct(plan.Kernels.OfType<MatMulKernel>()))
        {
            bool perLayer = matmul.LayersMember.Length > 0;
            string count = perLayer ? model.Layers.First(l => l.Member == matmul.LayersMember).CountMember : "";
            string rows = string.Join(" + ", matmul.Segments.Select(s => s.Kind == SegmentKind.SwiGlu ? "2 * " + Names.DimField(s.OutDim) : Names.DimField(s.OutDim)));
            string norm = matmul.NormWeight.Length > 0 ? Names.Weight(matmul.NormWeight, "model", "layer") : "null";
            w.Line($"// {string.Join(", ", matmul.Segments.SelectMany(s => s.Weights))}{(matmul.NormWeight.Length > 0 ? ", " + matmul.NormWeight + " folded into the columns" : "")}");
            if (perLayer)
            {
                w.Line($"{matmul.Packed} = new float[model.{count}][];");
                w.Open($"for (int layer = 0; layer < model.{count}; layer++)");
            }
            w.Line($"var {(perLayer ? "packed" : "packed" + matmul.Packed)} = new float[({rows}) * {Names.DimField(matmul.InDim)}];");
            string target = perLayer ? "packed" : "packed" + matmul.Packed;
            string rowOffset = "0";
            foreach (var segment in matmul.Segments)
            {
                if (segment.Kind == SegmentKind.SwiGlu)
                    w.Line($"{Packing}.InterleaveRows({target}, {rowOffset}, {Names.Weight(segment.Weights[0], "model", "layer")}, {Names.Weight(segment.Weights[1], "model", "layer")}, {norm});");
                else
                    w.Line($"{Packing}.CopyRows({target}, {rowOffset}, {Names.Weight(segment.Weights[0], "model", "layer")}, {norm});");
                string rowsHere = segment.Kind == SegmentKind.SwiGlu ? "2 * " + Names.DimField(segment.OutDim) : Names.DimField(segment.OutDim);
                rowOffset = rowOffset == "0" ? rowsHere : rowOffset + " + " + rowsHere;
            }
            if (perLayer)
            {
                w.Line($"{matmul.Packed}[layer] = packed;");
                w.Close();
            }
            else
            {
                w.Line($"{matmul.Packed} = {target};");
            }
            w.Line();
        }
    }
}
