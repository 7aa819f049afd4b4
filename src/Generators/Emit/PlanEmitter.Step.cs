using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Ir;
using Kiln.Generators.Passes;

namespace Kiln.Generators.Emit;

internal static partial class PlanEmitter
{
    private static void EmitStep(CodeWriter w, Plan plan)
    {
        w.Line("/// <summary>Runs one step: [context.OutputCount, VocabSize] logits for the wanted rows. Allocates nothing.</summary>");
        using (w.Block("public void Step(global::System.ReadOnlySpan<int> tokens, global::Kiln.AttentionContext context, global::System.Span<float> logits)"))
        {
            w.Line("global::System.ObjectDisposedException.ThrowIf(_disposed, this);");
            w.Line("if (context is null) throw new global::System.ArgumentNullException(nameof(context));");
            w.Line("int T = tokens.Length;");
            w.Line("if (T != context.TokenCount)");
            w.Line("    throw new global::System.ArgumentException($\"The step has {T} tokens but its context describes {context.TokenCount}.\", nameof(tokens));");
            w.Line("if (T > MaxTokensPerStep)");
            w.Line("    throw new global::System.ArgumentException($\"The step has {T} tokens; this plan was compiled for at most {MaxTokensPerStep}.\", nameof(tokens));");
            w.Line("int O = context.OutputCount;");
            if (UsesSequences(plan)) w.Line("int S = context.SequenceCount;");
            string resultRows = Names.Dim(plan.ResultRows);
            w.Line($"if (logits.Length < {resultRows} * {Names.DimField(plan.VocabDim)})");
            w.Line($"    throw new global::System.ArgumentException($\"logits holds {{logits.Length}} floats; the step needs {{{resultRows}}} rows of {{{Names.DimField(plan.VocabDim)}}}.\", nameof(logits));");
            bool attention = plan.Kernels.OfType<AttentionKernel>().Any();
            if (plan.Model.Encoder)
            {
                w.Line("if (context.HasCache)");
                w.Line("    throw new global::System.ArgumentException(\"An encoder's step holds whole sequences and has no KV cache: fill a new AttentionContext(capacity) with AddSequence.\", nameof(context));");
            }
            else if (plan.KvLayers == Plan.CountedKvLayers && plan.HasRecurrentLayers())
                // A hybrid file whose layers all take the recurrent branch keeps no KV cache: its context has none.
                w.Line($"var cache = _model.{Plan.CountedKvLayers} == 0 ? null! : context.Cache;");
            else if (attention || !plan.HasRecurrentLayers()) w.Line("var cache = context.Cache;");
            if (plan.HasRecurrentLayers())
            {
                w.Line("// Recurrent layers read and write each sequence's state slot.");
                w.Line("var state = context.State;");
            }
            if (attention && !plan.Model.Encoder)
            {
                string layers = plan.KvLayers == "1" ? "1" : "_model." + plan.KvLayers;
                bool counted = plan.KvLayers == Plan.CountedKvLayers;
                if (counted) w.Open($"if ({layers} > 0)");
                w.Line($"if (cache.KvDim != {Names.DimField(plan.KvDim)} || cache.Layers < {layers})");
                w.Line($"    throw new global::System.ArgumentException($\"The KV cache holds {{cache.Layers}} layers of rows of {{cache.KvDim}}; this model needs {{{layers}}} of {{{Names.DimField(plan.KvDim)}}} (use CreateKvCache).\", nameof(context));");
                w.Line("if (_scoresContext < cache.MaxContext || _gatherFloats < global::Kiln.Kernels.MatMul.KvBlocks.ScratchFloats(cache)) GrowScores(cache); // once per larger cache, never per step");
                if (counted) w.Close();
            }
            w.Line($"var stepProfiler = {Profiler}.Current; // null unless the caller attached a profiler: then each part below is timed");
            w.Line("stepProfiler?.BeginStep();");
            w.Line("global::System.ReadOnlySpan<int> positions = context.Positions;");
            w.Line();
            EmitGatherChecks(w, plan);
            w.Line("// Activations: views of the arena.");
            foreach (var buffer in plan.Buffers.Where(b => b.Slot >= 0))
                w.Line($"global::System.Span<float> {buffer.Name} = _arena.Slice({OffsetField(buffer)}, {Names.Dim(buffer.Rows)} * {Names.DimField(buffer.Cols)});");
            w.Line();
            if (plan.RopeTables.Count > 0) w.Line("stepProfiler?.Mark(\"rope tables\");");
            foreach (var table in plan.RopeTables) EmitRopeTable(w, table);

            int region = 0;
            bool open = false;
            int guard = -1;
            foreach (var kernel in plan.Kernels)
            {
                if (kernel.Region != region || kernel.Guard != guard)
                {
                    if (guard >= 0) w.Close();
                    guard = -1;
                }
                if (kernel.Region != region)
                {
                    if (open)
                    {
                        w.Close();
                        w.Line();
                        open = false;
                    }
                    region = kernel.Region;
                    var info = plan.Regions[region];
                    if (info.IsLoop)
                    {
                        w.Open($"for (int {Names.LayerIndex} = 0; {Names.LayerIndex} < _model.{info.CountMember}; {Names.LayerIndex}++) // {info.LayersMember}[{info.LoopVariable}]");
                        open = true;
                    }
                }
                if (kernel.Guard != guard)
                {
                    guard = kernel.Guard;
                    w.Open($"if ({Condition(plan, guard)}) // the forward method's branch");
                }
                EmitKernel(w, plan, kernel, Number(plan, kernel));
            }
            if (guard >= 0) w.Close();
            if (open) w.Close();
            w.Line("stepProfiler?.EndStep();");
        }
    }

    private const string Profiler = "global::Kiln.Threading.StepProfiler";

    /// <summary>The profiler's mark for the part of the step that starts here (one null check when profiling is off).</summary>
    private static void EmitMark(CodeWriter w, string part) => w.Line($"stepProfiler?.Mark(\"{part}\");");

    /// <summary>A matmul's name in a profile: its packed weights' field (wqWkWv, gateUp, output).</summary>
    private static string ProfileName(MatMulKernel m) => m.Packed.TrimStart('_');

    /// <summary>True when the plan has a value of one row per sequence (a pooling).</summary>
    private static bool UsesSequences(Plan plan) =>
        plan.ResultRows == Shape.Sequences || plan.Buffers.Any(b => b.Rows == Shape.Sequences);

    /// <summary>The C# condition under which code of <paramref name="guard"/> runs: its branch and every branch around it.</summary>
    internal static string Condition(Plan plan, int guard, string instance = "_model")
    {
        if (guard < 0) return "true";
        var parts = new List<string>();
        for (int g = guard; g >= 0; g = plan.Guards[g].Parent)
        {
            var info = plan.Guards[g];
            string condition = Names.Scalar(info.Condition, instance);
            parts.Insert(0, info.Polarity ? condition : $"!{condition}");
        }
        return string.Join(" && ", parts);
    }

    /// <summary>Token ids and positions are checked once per step, before any loop gathers table rows by them.</summary>
    private static void EmitGatherChecks(CodeWriter w, Plan plan)
    {
        var programs = Programs(plan).Select(p => p.Program).ToList();
        var tokenTables = programs.SelectMany(p => p.Elems).Where(e => e.Kind == ElemKind.Gather && e.Map == RowMap.Tokens).Select(e => e.Weight).Distinct().ToList();
        var positionTables = programs.SelectMany(p => p.Elems).Where(e => e.Kind == ElemKind.Gather && e.Map == RowMap.Positions).Select(e => e.Weight).Distinct().ToList();
        var typeTables = programs.SelectMany(p => p.Elems).Where(e => e.Kind == ElemKind.Gather && e.Map == RowMap.TokenTypes).Select(e => e.Weight).Distinct().ToList();
        if (tokenTables.Count > 0)
        {
            w.Line("// Token ids, checked against the vocabulary once, where the gathering loops read them.");
            string rows = string.Join(", ", tokenTables.Select(t => Names.Weight(t, "_model", "0") + ".Rows"));
            w.Line($"int vocabulary = {(tokenTables.Count == 1 ? rows : $"global::System.Math.Min({rows})")};");
            using (w.Block("for (int t = 0; t < T; t++)"))
            {
                w.Line("int token = tokens[t];");
                w.Line("if ((uint)token >= (uint)vocabulary)");
                w.Line("    throw new global::System.ArgumentOutOfRangeException(nameof(tokens), $\"Token id {token} at position {t} is outside the vocabulary (0..{vocabulary - 1}).\");");
                w.Line("_tokens[t] = token;");
            }
            w.Line();
        }
        foreach (var table in positionTables)
        {
            string rows = Names.Weight(table, "_model", "0") + ".Rows";
            using (w.Block("for (int t = 0; t < T; t++)"))
            {
                w.Line($"if ((uint)positions[t] >= (uint){rows})");
                w.Line($"    throw new global::System.ArgumentOutOfRangeException(nameof(context), $\"Position {{positions[t]}} of token {{t}} is beyond the {{{rows}}} positions the embedding table {Short(table)} holds.\");");
            }
            w.Line();
        }
        if (typeTables.Count > 0) w.Line("global::System.ReadOnlySpan<int> tokenTypes = context.TokenTypes;");
        foreach (var table in typeTables)
        {
            string rows = Names.Weight(table, "_model", "0") + ".Rows";
            using (w.Block("for (int t = 0; t < T; t++)"))
            {
                w.Line($"if ((uint)tokenTypes[t] >= (uint){rows})");
                w.Line($"    throw new global::System.ArgumentOutOfRangeException(nameof(context), $\"Token type {{tokenTypes[t]}} of token {{t}} is beyond the {{{rows}}} types the embedding table {Short(table)} holds.\");");
            }
            w.Line();
        }
    }

    private static void EmitRopeTable(CodeWriter w, RopeTable table)
    {
        string i = table.Index.ToString();
        w.Line($"// Rope table {i}: angle = position · base^(-2·pair/rotary), in double like the eager op; shared by every layer.");
        using (w.Block("for (int t = 0; t < T; t++)"))
        {
            using (w.Block($"for (int pair = 0; pair < _rope{i}Half; pair++)"))
            {
                w.Line($"double angle = positions[t] * _rope{i}InverseFrequency[pair];");
                w.Line("double cos = global::System.Math.Cos(angle), sin = global::System.Math.Sin(angle);");
                w.Line($"_rope{i}Cos[t * _rope{i}Half + pair] = cos;");
                w.Line($"_rope{i}Sin[t * _rope{i}Half + pair] = sin;");
                if (table.NeoX)
                {
                    w.Line($"_rope{i}CosHalf[t * _rope{i}Half + pair] = (float)cos;");
                    w.Line($"_rope{i}SinHalf[t * _rope{i}Half + pair] = (float)sin;");
                }
                w.Line($"int at = t * _rope{i}Rotary + 2 * pair; // float copies laid out for two adjacent pairs at once: cos, cos and −sin, sin");
                w.Line($"_rope{i}Cosines[at] = _rope{i}Cosines[at + 1] = (float)cos;");
                w.Line($"_rope{i}SignedSines[at] = -(float)sin;");
                w.Line($"_rope{i}SignedSines[at + 1] = (float)sin;");
            }
        }
        w.Line();
    }

    private static void EmitKernel(CodeWriter w, Plan plan, Kernel kernel, int number)
    {
        string layer = LoopVariable(plan, kernel.Region);
        string report = plan.Report.FirstOrDefault(l => l.TrimStart().StartsWith($"[{number}] ")) ?? "";
        w.Line("// " + report.Trim());
        using (w.Block(""))
        {
            switch (kernel)
            {
                case MatMulKernel m:
                    EmitMatMul(w, plan, m, layer);
                    break;
                case AttentionKernel a when plan.Model.Encoder:
                    EmitStepAttention(w, plan, a);
                    break;
                case AttentionKernel a:
                    EmitAttention(w, plan, a);
                    break;
                case PoolKernel p:
                {
                    EmitMark(w, "pooling");
                    var input = BufferOf(plan, p.Input);
                    w.Line($"var pooling = new global::Kiln.Kernels.Elementwise.SequencePooling {{ Input = {View(plan, p.Input)}, Output = {View(plan, p.Output)}, Cols = {Names.DimField(input.Cols)}, Context = context, Pooling = global::Kiln.Pooling.{p.Mode} }};");
                    w.Line("_pool.Run(S, global::System.Math.Max(1, S / (4 * _pool.ThreadCount)), pooling);");
                    break;
                }
                case ElementwiseKernel e:
                    EmitElementwise(w, plan, e, layer);
                    break;
                case LstmKernel l:
                {
                    EmitMark(w, "lstm");
                    string layerIndex = Names.Scalar(l.Layer, "_model");
                    w.Line($"var lstm = new {R}.LstmRecurrence");
                    w.Line("{");
                    w.Line($"    Gates = {View(plan, l.Gates)},");
                    w.Line($"    Output = {View(plan, l.Output)},");
                    w.Line($"    Recurrent = {Names.Weight(l.Recurrent, "_model", layer)}.Data,");
                    w.Line($"    Hidden = {Names.DimField(l.Hidden)},");
                    w.Line("    Context = context,");
                    w.Line($"    HiddenTensor = state.Require({layerIndex}, global::Kiln.Ops.LstmHidden),");
                    w.Line($"    CellTensor = state.Require({layerIndex}, global::Kiln.Ops.LstmCell),");
                    w.Line("    Scratch = _recurrentScratch,");
                    w.Line("};");
                    w.Line("// One item per sequence: each runs its own tokens in order.");
                    w.Line("_pool.Run(context.SequenceCount, 1, lstm);");
                    break;
                }
                case GruKernel g:
                {
                    string layerIndex = Names.Scalar(g.Layer, "_model");
                    w.Line($"var gru = new {R}.GruRecurrence");
                    w.Line("{");
                    w.Line($"    Gates = {View(plan, g.Gates)},");
                    w.Line($"    Output = {View(plan, g.Output)},");
                    w.Line($"    Recurrent = {Names.Weight(g.Recurrent, "_model", layer)}.Data,");
                    w.Line($"    RecurrentBias = {Names.Weight(g.RecurrentBias, "_model", layer)}.Data,");
                    w.Line($"    Hidden = {Names.DimField(g.Hidden)},");
                    w.Line("    Context = context,");
                    w.Line($"    HiddenTensor = state.Require({layerIndex}, global::Kiln.Ops.GruHidden),");
                    w.Line("};");
                    w.Line("// One item per sequence: each runs its own tokens in order.");
                    w.Line("_pool.Run(context.SequenceCount, 1, gru);");
                    break;
                }
                case CausalConvKernel conv:
                {
                    string layerIndex = Names.Scalar(conv.Layer, "_model");
                    string channels = Names.DimField(conv.Channels);
                    w.Line($"var convolution = new {R}.CausalConvolution");
                    w.Line("{");
                    w.Line($"    Input = {View(plan, conv.Input)},");
                    w.Line($"    Output = {View(plan, conv.Output)},");
                    w.Line($"    Weight = {Names.Weight(conv.Weight, "_model", layer)}.Data,");
                    w.Line($"    Channels = {channels},");
                    w.Line($"    Width = {Names.DimField(conv.Width)},");
                    w.Line("    Context = context,");
                    w.Line($"    StateTensor = state.Require({layerIndex}, global::Kiln.Ops.ConvState),");
                    w.Line("};");
                    w.Line("// One item per (sequence, block of channels): each runs the sequence's tokens in order.");
                    w.Line($"_pool.Run({R}.MambaWork.Items(context.SequenceCount, {channels}), 1, convolution);");
                    break;
                }
                case SelectiveScanKernel scan:
                {
                    string layerIndex = Names.Scalar(scan.Layer, "_model");
                    string channels = Names.DimField(scan.Channels);
                    w.Line($"var scan = new {R}.SelectiveScanRecurrence");
                    w.Line("{");
                    w.Line($"    X = {View(plan, scan.X)},");
                    w.Line($"    Dt = {View(plan, scan.Dt)},");
                    w.Line($"    B = {View(plan, scan.B)},");
                    w.Line($"    C = {View(plan, scan.C)},");
                    w.Line($"    Z = {View(plan, scan.Z)},");
                    w.Line($"    Output = {View(plan, scan.Output)},");
                    w.Line($"    A = {Names.Weight(scan.A, "_model", layer)}.Data,");
                    w.Line($"    D = {Names.Weight(scan.D, "_model", layer)}.Data,");
                    w.Line($"    Channels = {channels},");
                    w.Line($"    StateSize = {Names.DimField(scan.StateSize)},");
                    w.Line("    Context = context,");
                    w.Line($"    StateTensor = state.Require({layerIndex}, global::Kiln.Ops.ScanState),");
                    w.Line("};");
                    w.Line("// One item per (sequence, block of channels): each carries its channels' state through the sequence's tokens in order.");
                    w.Line($"_pool.Run({R}.MambaWork.Items(context.SequenceCount, {channels}), 1, scan);");
                    break;
                }
                case ConcatKernel c:
                {
                    EmitMark(w, "concat");
                    var a = BufferOf(plan, c.A);
                    var b = BufferOf(plan, c.B);
                    string output = Buffer(plan, c.Output);
                    string colsA = Names.DimField(a.Cols), colsB = Names.DimField(b.Cols);
                    using (w.Block($"for (int t = 0; t < {Names.Dim(a.Rows)}; t++)"))
                    {
                        w.Line($"{a.Name}.Slice(t * {colsA}, {colsA}).CopyTo({output}.Slice(t * ({colsA} + {colsB}), {colsA}));");
                        w.Line($"{b.Name}.Slice(t * {colsB}, {colsB}).CopyTo({output}.Slice(t * ({colsA} + {colsB}) + {colsA}, {colsB}));");
                    }
                    break;
                }
                case CopyKernel c:
                    EmitMark(w, "copy");
                    w.Line($"{Buffer(plan, c.Source)}.CopyTo({Buffer(plan, c.Destination)});");
                    break;
            }
        }
    }
}
