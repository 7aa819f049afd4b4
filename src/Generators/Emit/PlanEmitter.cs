using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Ir;
using Kiln.Generators.Passes;

namespace Kiln.Generators.Emit;

/// <summary>
/// Emits the nested CompiledPlan: dims as fields, weights packed at construction (layout per matmul and layer), one
/// native arena, a worker pool, and Step running the fused kernels in order. A matmul becomes a work struct over
/// 4-row groups that runs the runtime's tile kernels (Kiln.Kernels.MatMul.Gemm) with a generated epilogue struct per
/// segment (and a generated input struct when a chain fused into its preparation); every other elementwise loop is a
/// generated work struct over rows; attention runs the runtime's paged kernel.
/// </summary>
internal static partial class PlanEmitter
{
    private const string MatMul = "global::Kiln.Kernels.MatMul";
    private const string Layouts = "global::Kiln.Kernels.MatMul.WeightLayouts";
    private const string Pool = "global::Kiln.Threading.WorkerPool";
    private const string Attention = "global::Kiln.Kernels.Attention";
    private const string R = "global::Kiln.Kernels.Recurrent";

    /// <summary>Locals the emitted Step uses; arena buffers never take these names.</summary>
    public static readonly string[] ReservedNames =
    {
        "T", "O", "S", "tokens", "tokenTypes", "pooling", "step", "context", "logits", "arena", "cache", "positions", "slots", "outputRows", "weights",
        "t", "o", "j", "i", "p", "h", "c", "g", "w0", "w1", "input", "a", "b", "cos", "sin", "pair", "heads", "kvHeads",
        "headDim", "group", "scale", "keys", "values", "query", "kvOffset", "scores", "output", "position", "token", "table",
        "cols", "row", "model", "packed", "half", "angle", "residual", "layerCount", "source", "destination", "weight", "result", "offset",
        "work", "items", "chunk", "format", "layouts", "threads", "options", "paged", "rotary", "at", "sums", "vocabulary", Names.LayerIndex,
    };

    public static void Emit(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        w.Line("/// <summary>");
        w.Line($"/// {model.ClassName} compiled into fused CPU kernels over one native arena, run on the plan's worker pool (see the fusion");
        w.Line("/// report at the top of this file). A step allocates nothing once the attention scratch fits the KV cache in use.");
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
            w.Line("/// <summary>The fusion report, then the layout each packed weight got from this model file.</summary>");
            w.Line("public string FusionReport => _report;");
            w.Line();
            w.Line("/// <summary>Threads in the plan's worker pool, the caller of Step included.</summary>");
            w.Line("public int Threads => _pool.ThreadCount;");
            w.Line();
            EmitStep(w, plan);
            EmitDispose(w, plan);
            EmitWorkStructs(w, plan);
        }
    }

    internal static string Buffer(Plan plan, int value) => plan.Buffers[plan.ValueBuffers[value]].Name;

    internal static Buffer BufferOf(Plan plan, int value) => plan.Buffers[plan.ValueBuffers[value]];

    internal static string OffsetField(Buffer buffer) => "_" + buffer.Name + "Offset";

    internal static string LoopVariable(Plan plan, int region) =>
        plan.Regions[region].IsLoop ? Names.LayerIndex : "0";

    /// <summary>The kernel's number in the report (and in the names of its structs).</summary>
    internal static int Number(Plan plan, Kernel kernel)
    {
        for (int i = 0; i < plan.Kernels.Count; i++)
            if (ReferenceEquals(plan.Kernels[i], kernel)) return i + 1;
        throw new System.InvalidOperationException("A kernel that is not in the plan.");
    }

    internal static IEnumerable<ProgramCode> Programs(Plan plan) =>
        plan.Kernels.SelectMany(k => k switch
        {
            MatMulKernel m => m.Segments.Select(s => s.Epilogue).Concat(m.InputProgram is null ? Enumerable.Empty<Program>() : new[] { m.InputProgram }),
            ElementwiseKernel e => new[] { e.Program },
            _ => Enumerable.Empty<Program>(),
        }).Select(p => new ProgramCode(plan, p));

    /// <summary>Rows a segment takes in the packed matrix (a pair interleaves two weights).</summary>
    internal static string SegmentRows(Segment segment) =>
        segment.IsPair ? "2 * " + Names.DimField(segment.OutDim) : Names.DimField(segment.OutDim);

    /// <summary>The field holding the first packed row of segment <paramref name="index"/> (≥ 1), or the matrix's row count.</summary>
    internal static string StartField(MatMulKernel matmul, int index) =>
        index == matmul.Segments.Count ? matmul.Packed + "Rows" : matmul.Packed + "Start" + index;

    internal static string RowStart(MatMulKernel matmul, int index) => index == 0 ? "0" : StartField(matmul, index);

    private static void EmitFields(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        w.Line($"private readonly {model.ClassName} _model;");
        w.Line($"private readonly {Pool} _pool;");
        w.Line("private readonly string _report;");
        w.Line("private bool _disposed;");
        w.Line();
        w.Line("// Dimensions, fixed when the model was bound.");
        foreach (var dim in plan.Dims) w.Line($"private readonly int {Names.DimField(dim)};");
        w.Line();
        w.Line("// Weights in the kernels' layouts: one packed matrix per matmul (and layer), segments on 4-row boundaries.");
        foreach (var matmul in Distinct(plan.Kernels.OfType<MatMulKernel>()))
        {
            string type = matmul.LayersMember.Length > 0 ? $"{MatMul}.PackedMatrix[]" : $"{MatMul}.PackedMatrix";
            string rows = string.Join(" + ", matmul.Segments.Select(s => s.IsPair ? "2*" + s.OutDim : s.OutDim));
            string per = matmul.LayersMember.Length > 0 ? "per layer " : "";
            w.Line($"private readonly {type} {matmul.Packed}; // {per}[{rows}, {matmul.InDim}]");
            string starts = string.Join(", ", Enumerable.Range(1, matmul.Segments.Count).Select(i => StartField(matmul, i)));
            w.Line($"private readonly int {starts}; // first packed row of each later segment, then the padded row count");
        }
        foreach (var table in plan.RopeTables)
        {
            string i = table.Index.ToString();
            w.Line();
            w.Line($"// Rope table {i}: head dim {table.HeadDim}, base {table.Base}, {(table.NeoX ? "NeoX halves" : "adjacent pairs")}{(table.RotaryDims is null ? "" : $", {table.RotaryDims} rotary dims")}:");
            w.Line("// inverse frequency per pair; cos/sin per token and pair in double (scalar paths), and as floats laid out for the vector paths.");
            w.Line($"private readonly int _rope{i}HeadDim, _rope{i}Rotary, _rope{i}Half;");
            w.Line($"private readonly double[] _rope{i}InverseFrequency;");
            w.Line($"private readonly double[] _rope{i}Cos, _rope{i}Sin;");
            if (table.NeoX) w.Line($"private readonly float[] _rope{i}CosHalf, _rope{i}SinHalf; // per token and pair");
            w.Line($"private readonly float[] _rope{i}Cosines, _rope{i}SignedSines; // per token and rotary element: cos, cos and −sin, sin per adjacent pair");
        }
        if (Programs(plan).Any(p => p.UsesTokens))
        {
            w.Line();
            w.Line("// This step's token ids, checked against the vocabulary, where the gathering loops can read them.");
            w.Line("private readonly int[] _tokens;");
        }
        var tables = ProgramCode.GatheredTables(plan);
        if (tables.Count > 0)
        {
            w.Line();
            w.Line("// Gathered tables, as the file stores them: each row a step needs is decoded into its token's slot (the table is never widened whole).");
            for (int i = 0; i < tables.Count; i++)
                w.Line($"private readonly global::Kiln.Kernels.Elementwise.GatherTable{(tables[i].Contains('.') ? "[]" : "")} {ProgramCode.TableField(i)}; // {Short(tables[i])}");
        }
        w.Line();
        w.Line("// The arena (native memory that never moves, so work items on every thread can hold views of it).");
        w.Line($"private readonly {MatMul}.NativeBlock _arenaMemory;");
        w.Line($"private readonly {MatMul}.FloatBuffer _arena;");
        foreach (var buffer in plan.Buffers.Where(b => b.Slot >= 0)) w.Line($"private readonly int {OffsetField(buffer)};");
        w.Line();
        w.Line("// Matmul inputs, prepared once per matmul for all its weights (normalized, quantized to Q8 for the quantized layouts).");
        w.Line($"private readonly {MatMul}.GemmScratch _inputs;");
        if (plan.Model.Encoder && plan.Kernels.OfType<AttentionKernel>().Any())
        {
            w.Line();
            w.Line($"// Attention scratch per chunk of work items ({Attention}.StepAttention.MaxChunks at most): every head's row of scores over");
            w.Line("// the longest sequence a step can hold (its whole step).");
            w.Line($"private readonly {MatMul}.NativeBlock _scoresMemory;");
            w.Line($"private readonly {MatMul}.FloatBuffer _scores;");
            w.Line("private readonly int _scoresPerChunk;");
        }
        else if (plan.Kernels.OfType<AttentionKernel>().Any())
        {
            w.Line();
            w.Line($"// Attention scratch per chunk of work items ({Attention}.PagedAttention.MaxChunks at most): every head's row of scores over");
            w.Line("// the KV cache's MaxContext, and room to read one block's rows when the cache stores int8; grown when a larger cache is first seen;");
            w.Line("// then per token of a step and query head, a shared prefix's softmax max and sum.");
            w.Line($"private {MatMul}.NativeBlock? _scoresMemory;");
            w.Line($"private {MatMul}.FloatBuffer _scores, _gather, _prefixStatistics;");
            w.Line("private int _scoresContext, _scoresPerChunk, _gatherFloats;");
        }
        if (plan.Kernels.OfType<LstmKernel>().Any())
        {
            w.Line();
            w.Line("// Recurrence scratch: per sequence of a step (at most one per token), its starting h and c and its gate pre-activations.");
            w.Line($"private readonly {MatMul}.NativeBlock _recurrentMemory;");
            w.Line($"private readonly {MatMul}.FloatBuffer _recurrentScratch;");
        }
        w.Line();
    }

    /// <summary>One packing per packed field (a field is shared when two kernels pack the same way).</summary>
    internal static IEnumerable<MatMulKernel> Distinct(IEnumerable<MatMulKernel> kernels) =>
        kernels.GroupBy(k => k.Packed).Select(g => g.First());

    private static void EmitConstructor(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        using (w.Block($"public CompiledPlan({model.ClassName} model, global::Kiln.PlanOptions options)"))
        {
            w.Line("if (model is null) throw new global::System.ArgumentNullException(nameof(model));");
            w.Line("if (options is null) throw new global::System.ArgumentNullException(nameof(options));");
            w.Line("options.Validate();");
            w.Line("int maxTokensPerStep = options.MaxTokensPerStep;");
            w.Line("_model = model;");
            w.Line("MaxTokensPerStep = maxTokensPerStep;");
            foreach (var dim in plan.Dims) w.Line($"{Names.DimField(dim)} = {Names.DimCode(dim, "model")};");
            w.Line();

            EmitValidation(w, plan);

            foreach (var table in plan.RopeTables)
            {
                string i = table.Index.ToString();
                w.Line($"_rope{i}HeadDim = {Names.Scalar(table.HeadDim, "model")};");
                w.Line($"_rope{i}Rotary = {table.Rotary("model")};");
                w.Line($"if (_rope{i}HeadDim <= 0 || _rope{i}Rotary <= 0 || _rope{i}Rotary % 2 != 0 || _rope{i}Rotary > _rope{i}HeadDim)");
                w.Line($"    throw new global::System.InvalidOperationException($\"Rope: {{_rope{i}Rotary}} rotary dimensions must be even, positive and at most the head dimension {{_rope{i}HeadDim}}.\");");
                w.Line($"_rope{i}Half = _rope{i}Rotary / 2;");
                w.Line($"_rope{i}InverseFrequency = new double[_rope{i}Half];");
                w.Line($"for (int pair = 0; pair < _rope{i}Half; pair++) _rope{i}InverseFrequency[pair] = global::System.Math.Pow({Names.Scalar(table.Base, "model")}, -2.0 * pair / _rope{i}Rotary);");
                w.Line($"_rope{i}Cos = new double[maxTokensPerStep * _rope{i}Half];");
                w.Line($"_rope{i}Sin = new double[maxTokensPerStep * _rope{i}Half];");
                if (table.NeoX)
                {
                    w.Line($"_rope{i}CosHalf = new float[maxTokensPerStep * _rope{i}Half];");
                    w.Line($"_rope{i}SinHalf = new float[maxTokensPerStep * _rope{i}Half];");
                }
                w.Line($"_rope{i}Cosines = new float[maxTokensPerStep * _rope{i}Rotary];");
                w.Line($"_rope{i}SignedSines = new float[maxTokensPerStep * _rope{i}Rotary];");
                w.Line();
            }
            if (Programs(plan).Any(p => p.UsesTokens)) w.Line("_tokens = new int[maxTokensPerStep];");
            var tables = ProgramCode.GatheredTables(plan);
            for (int i = 0; i < tables.Count; i++)
            {
                string field = ProgramCode.TableField(i), table = "global::Kiln.Kernels.Elementwise.GatherTable";
                int dot = tables[i].IndexOf('.');
                if (dot < 0)
                {
                    w.Line($"{field} = new {table}({Names.Weight(tables[i], "model", "")}, maxTokensPerStep);");
                    continue;
                }
                string count = model.Layers.First(l => l.Member == tables[i].Substring(0, dot)).CountMember;
                w.Line($"{field} = new {table}[model.{count}];");
                w.Line($"for (int layer = 0; layer < model.{count}; layer++) {field}[layer] = new {table}({Names.Weight(tables[i], "model", "layer")}, maxTokensPerStep);");
            }
            w.Line("var layouts = new global::System.Text.StringBuilder(Report).Append(\"Layouts chosen for this model file:\\n\");");
            EmitPacking(w, plan);

            w.Line("// Arena slots (buffers whose live ranges do not overlap share a slot).");
            w.Line("int offset = 0;");
            for (int slot = 0; slot < plan.SlotCount; slot++)
            {
                var members = plan.Buffers.Where(b => b.Slot == slot).ToList();
                var widths = members.Select(b => Names.DimField(b.Cols)).Distinct().ToList();
                string width = widths[0];
                for (int k = 1; k < widths.Count; k++) width = $"global::System.Math.Max({width}, {widths[k]})";
                foreach (var buffer in members) w.Line($"{OffsetField(buffer)} = offset; // {buffer.Name} [{buffer.Rows}, {buffer.Cols}]");
                w.Line($"offset += (maxTokensPerStep * {width} + 15) & ~15; // each slot starts on a 64-byte boundary");
            }
            w.Line($"_arenaMemory = new {MatMul}.NativeBlock((long)offset * sizeof(float));");
            w.Line("_arena = _arenaMemory.Floats(0, offset);");
            var inputs = plan.Kernels.OfType<MatMulKernel>().Select(m => Names.DimField(m.InDim)).Distinct().ToList();
            string widest = inputs.Count == 0 ? "1" : inputs[0];
            for (int k = 1; k < inputs.Count; k++) widest = $"global::System.Math.Max({widest}, {inputs[k]})";
            w.Line($"_inputs = new {MatMul}.GemmScratch(maxTokensPerStep, {widest});");
            if (plan.Model.Encoder && plan.Kernels.OfType<AttentionKernel>().Any())
            {
                var heads = plan.Kernels.OfType<AttentionKernel>().Select(k => Names.Scalar(k.Heads, "model")).Distinct().ToList();
                string most = heads[0];
                for (int i = 1; i < heads.Count; i++) most = $"global::System.Math.Max({most}, {heads[i]})";
                w.Line($"_scoresPerChunk = {Attention}.StepAttention.ScoresPerChunk(maxTokensPerStep, {most});");
                w.Line($"_scoresMemory = new {MatMul}.NativeBlock((long)_scoresPerChunk * {Attention}.StepAttention.MaxChunks * sizeof(float));");
                w.Line($"_scores = _scoresMemory.Floats(0, _scoresPerChunk * {Attention}.StepAttention.MaxChunks);");
            }
            var lstms = plan.Kernels.OfType<LstmKernel>().Select(k => Names.DimField(k.Hidden)).Distinct().ToList();
            if (lstms.Count > 0)
            {
                string widestHidden = lstms[0];
                for (int k = 1; k < lstms.Count; k++) widestHidden = $"global::System.Math.Max({widestHidden}, {lstms[k]})";
                w.Line($"long recurrentFloats = {R}.LstmRecurrence.ScratchFloats(maxTokensPerStep, {widestHidden});");
                w.Line($"_recurrentMemory = new {MatMul}.NativeBlock(recurrentFloats * sizeof(float));");
                w.Line("_recurrentScratch = _recurrentMemory.Floats(0, checked((int)recurrentFloats));");
            }
            w.Line($"_pool = new {Pool}(options.ResolvedThreads);");
            w.Line("_report = layouts.ToString();");
        }
        w.Line();
    }

    internal static void EmitValidation(CodeWriter w, Plan plan)
    {
        foreach (var attention in plan.Kernels.OfType<AttentionKernel>().Take(1))
        {
            string heads = Names.Scalar(attention.Heads, "model");
            string kvHeads = Names.Scalar(attention.KvHeads, "model");
            string qCols = Names.DimField(BufferOf(plan, attention.Q).Cols);
            // A file whose layers never take the attention's branch (a hybrid's all-recurrent file) sizes no attention.
            string misfit = $"{heads} <= 0 || {kvHeads} <= 0 || {heads} % {kvHeads} != 0 || {qCols} % {heads} != 0 || {qCols} / {heads} * {kvHeads} != {Names.DimField(plan.KvDim)}";
            w.Line(plan.KvLayers == Plan.CountedKvLayers ? $"if (model.{Plan.CountedKvLayers} > 0 && ({misfit}))" : $"if ({misfit})");
            w.Line($"    throw new global::System.InvalidOperationException($\"Attention: {{{heads}}} heads over {{{kvHeads}}} KV heads do not fit q rows of {{{qCols}}} and k rows of {{{Names.DimField(plan.KvDim)}}}.\");");
            w.Line();
        }
        // Per-head work (rope, head norms) needs whole heads in every row it runs over.
        var checks = new HashSet<(string Cols, string Group)>();
        foreach (var program in Programs(plan).Select(p => p.Program).Where(p => p.Group.Length > 0)) checks.Add((program.Cols, program.Group));
        foreach (var table in plan.RopeTables)
            foreach (var segment in plan.Kernels.OfType<MatMulKernel>().SelectMany(m => m.Segments).Where(s => s.Rope == table.Index))
                checks.Add((segment.OutDim, table.HeadDim.AsDim() ?? ""));
        foreach (var (cols, group) in checks.Where(c => c.Group.Length > 0))
        {
            w.Line($"if ({Names.DimField(group)} <= 0 || {Names.DimField(cols)} % {Names.DimField(group)} != 0)");
            w.Line($"    throw new global::System.InvalidOperationException($\"Rows of {cols} = {{{Names.DimField(cols)}}} are not whole heads of {group} = {{{Names.DimField(group)}}}.\");");
        }
    }

    private static void EmitPacking(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        foreach (var matmul in Distinct(plan.Kernels.OfType<MatMulKernel>()))
        {
            bool perLayer = matmul.LayersMember.Length > 0;
            string count = perLayer ? model.Layers.First(l => l.Member == matmul.LayersMember).CountMember : "";
            var weights = matmul.Segments.SelectMany(s => s.Weights).Select(x => x.Key).Distinct().ToList();
            w.Line($"// {string.Join(", ", weights)}: {FormatComment(matmul.Format)}{(matmul.Sparsity == "None" ? "" : $", {matmul.Sparsity} sparse as [Sparse] asks")}");
            string rowOffset = "0";
            for (int i = 0; i < matmul.Segments.Count; i++)
            {
                string next = $"{rowOffset} + {Layouts}.PadRows({SegmentRows(matmul.Segments[i])})";
                w.Line($"{StartField(matmul, i + 1)} = {(i == 0 ? $"{Layouts}.PadRows({SegmentRows(matmul.Segments[i])})" : next)};");
                rowOffset = StartField(matmul, i + 1);
            }
            string sparsity = "sparsity" + matmul.Packed;
            w.Line($"var {sparsity} = {Layouts}.Sparsity(global::Kiln.SparsePattern.{matmul.Sparsity}, global::Kiln.WeightFormat.{matmul.Format}, options);");
            if (perLayer)
            {
                w.Line($"{matmul.Packed} = new {MatMul}.PackedMatrix[model.{count}];");
                w.Open($"for (int layer = 0; layer < model.{count}; layer++)");
                // A layer that takes the other branch never runs this matmul (and may lack its weights): nothing to pack.
                if (matmul.Guard >= 0) w.Line($"if (!({Condition(plan, matmul.Guard, "model")})) continue;");
            }
            string target = perLayer ? "packed" : "packed" + matmul.Packed;
            string arguments = string.Join(", ", weights.Select(x => Names.Weight(x, "model", "layer")));
            w.Line($"var {target} = new {MatMul}.PackedMatrix({Layouts}.Resolve(global::Kiln.WeightFormat.{matmul.Format}, {sparsity}, {arguments}), {StartField(matmul, matmul.Segments.Count)}, {Names.DimField(matmul.InDim)}, {sparsity});");
            for (int i = 0; i < matmul.Segments.Count; i++)
            {
                var segment = matmul.Segments[i];
                string at = RowStart(matmul, i);
                string rows = Names.DimField(segment.OutDim);
                string Part(WeightSlice slice) =>
                    $"{Names.Weight(slice.Key, "model", "layer")}, {(slice.RowStart.Length == 0 ? "0" : Names.DimField(slice.RowStart))}";
                if (segment.IsPair)
                    w.Line($"{target}.PackInterleaved({at}, {Part(segment.Weights[0])}, {Part(segment.Weights[1])}, {rows}, {Names.Literal(Short(segment.Weights[0].Key))}, {Names.Literal(Short(segment.Weights[1].Key))});");
                else if (segment.Rope >= 0 && plan.RopeTables[segment.Rope].NeoX)
                {
                    string r = segment.Rope.ToString();
                    w.Line($"{target}.Pack({at}, {Part(segment.Weights[0])}, {rows}, {MatMul}.RopeLayout.NeoXOrder({rows}, _rope{r}HeadDim, _rope{r}Rotary), {Names.Literal(Short(segment.Weights[0].Key) + " (rows paired for NeoX rope)")});");
                }
                else
                    w.Line($"{target}.Pack({at}, {Part(segment.Weights[0])}, {rows}, {Names.Literal(Short(segment.Weights[0].Key))});");
            }
            w.Line($"{target}.FinishPacking();");
            if (perLayer)
            {
                w.Line($"{matmul.Packed}[layer] = packed;");
                w.Close();
            }
            else
            {
                w.Line($"{matmul.Packed} = {target};");
            }
            w.Line($"layouts.Append({Layouts}.Summarize({Names.Literal(matmul.Packed + (perLayer ? "[layer]" : ""))}, {matmul.Packed}));");
            w.Line();
        }
    }

    internal static string FormatComment(string format) => format == "AsStored"
        ? "layout as stored, chosen per matrix from the file's types"
        : $"layout {format}, as [Quantize] asks";

    private static void EmitDispose(CodeWriter w, Plan plan)
    {
        w.Line("/// <summary>Stops the worker pool and frees the arena, the scratch, the gather slots and the packed weights. Steps after this throw.</summary>");
        using (w.Block("public void Dispose()"))
        {
            w.Line("if (_disposed) return;");
            w.Line("_disposed = true;");
            w.Line("_pool.Dispose();");
            w.Line("_inputs.Dispose();");
            w.Line("_arenaMemory.Dispose();");
            if (plan.Kernels.OfType<AttentionKernel>().Any()) w.Line("_scoresMemory?.Dispose();");
            if (plan.Kernels.OfType<LstmKernel>().Any()) w.Line("_recurrentMemory.Dispose();");
            var tables = ProgramCode.GatheredTables(plan);
            for (int i = 0; i < tables.Count; i++)
                w.Line(tables[i].Contains('.') ? $"foreach (var table in {ProgramCode.TableField(i)}) table.Dispose();" : $"{ProgramCode.TableField(i)}.Dispose();");
            foreach (var matmul in Distinct(plan.Kernels.OfType<MatMulKernel>()))
            {
                if (matmul.LayersMember.Length > 0) w.Line($"foreach (var packed in {matmul.Packed}) packed{(matmul.Guard >= 0 ? "?" : "")}.Dispose();");
                else w.Line($"{matmul.Packed}.Dispose();");
            }
        }
        w.Line();
    }

    internal static string Short(string weight) => weight.Substring(weight.LastIndexOf('.') + 1);
}
