using System;
using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Ir;
using Kiln.Generators.Passes;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Emit;

/// <summary>
/// The parallel kernels: a matmul prepares its input once (through a generated row source when a chain fused into
/// it) and runs a work struct over 4-row groups whose tiles go straight through each segment's generated epilogue;
/// an elementwise kernel runs a generated work struct over rows; attention fills the runtime's paged kernel.
/// </summary>
internal static partial class PlanEmitter
{
    private const string Lanes = "global::Kiln.Kernels.Elementwise.Lanes";
    private static readonly string[] WorkMembers = { "Weights", "Input", "Execute", "Run", "BindOutput" };

    private static string MatMulWork(Plan plan, MatMulKernel matmul) => "MatMul" + Number(plan, matmul) + "Work";

    private static string MatMulInput(Plan plan, MatMulKernel matmul) => "MatMul" + Number(plan, matmul) + "Input";

    private static string ElementwiseWork(Plan plan, ElementwiseKernel kernel) => "Elementwise" + Number(plan, kernel) + "Work";

    private static string Epilogue(Plan plan, MatMulKernel matmul, Segment segment) =>
        "MatMul" + Number(plan, matmul) + Pascal(Buffer(plan, segment.Output));

    /// <summary>The work struct's field holding a segment's epilogue.</summary>
    private static string EpilogueField(Plan plan, Segment segment)
    {
        string name = Pascal(Buffer(plan, segment.Output));
        return WorkMembers.Contains(name) || name.StartsWith("End") ? name + "Out" : name;
    }

    private static string Pascal(string name) => char.ToUpperInvariant(name[0]) + name.Substring(1);

    private static bool WritesLogits(Plan plan, Segment segment) => BufferOf(plan, segment.Output).Slot < 0;

    /// <summary>A view of a value's arena buffer, [rows, cols], for a work struct (the caller's logits are bound later).</summary>
    private static string View(Plan plan, int value)
    {
        var buffer = BufferOf(plan, value);
        return buffer.Slot < 0 ? "default" : $"_arena.View({OffsetField(buffer)}, {Names.Dim(buffer.Rows)} * {Names.DimField(buffer.Cols)})";
    }

    private static string Initializer(IEnumerable<string> fields) => "{ " + string.Join(", ", fields) + " }";

    private static void EmitMatMul(CodeWriter w, Plan plan, MatMulKernel m, string layer)
    {
        string inDim = Names.DimField(m.InDim);
        string rows = Names.Dim(m.Rows);
        string normKind = m.Norm is null ? "None" : m.Norm.Kind;
        string norm = m.Norm is null ? "null" : Names.Weight(m.Norm.Weight, "_model", layer) + ".Data";
        string bias = m.Norm is null || m.Norm.Bias.Length == 0 ? "null" : Names.Weight(m.Norm.Bias, "_model", layer) + ".Data";
        string eps = m.Norm is null ? "0f" : $"(float)({Names.Scalar(m.Norm.Eps, "_model")})";
        EmitMark(w, "input " + ProfileName(m));
        w.Line($"var weights = {m.Packed}{(m.LayersMember.Length > 0 ? $"[{layer}]" : "")};");
        string prepared = m.Norm is null ? "" : $", {(m.Norm.Kind == "Rms" ? "RMS" : "layer")}-normalized by {Short(m.Norm.Weight)}";
        if (m.InputProgram is null)
        {
            w.Line($"// The input once for every weight{prepared}: quantized to Q8 for the quantized layouts, read as it is by the float ones.");
            w.Line($"var input = _inputs.Prepare(weights.Format, {View(plan, m.Input)}, {Names.DimField(BufferOf(plan, m.Input).Cols)}, {rows}, {inDim}, {MatMul}.InputNorm.{normKind}, {norm}, {bias}, {eps}, _pool);");
        }
        else
        {
            var code = new ProgramCode(plan, m.InputProgram);
            w.Line($"// The input once for every weight: {Passes.FusionReport.Resolve(m.InputProgram.Description, plan)} computed per row{prepared}, then quantized or read as floats.");
            w.Line($"var source = new {MatMulInput(plan, m)} {Initializer(code.Initializers(layer, v => View(plan, v)))};");
            w.Line($"var input = _inputs.Prepare(weights.Format, source, {rows}, {inDim}, {MatMul}.InputNorm.{normKind}, {norm}, {bias}, {eps}, _pool);");
        }
        EmitMark(w, "matmul " + ProfileName(m));
        w.Line($"var work = new {MatMulWork(plan, m)}");
        w.Line("{");
        w.Line("    Weights = weights,");
        w.Line("    Input = input,");
        w.Line($"    Blocks = {MatMul}.GemmBlocks.For(weights, {rows}, _pool.ThreadCount),");
        for (int i = 0; i + 1 < m.Segments.Count; i++)
            w.Line($"    End{i} = {StartField(m, i + 1)} / 4,");
        for (int i = 0; i < m.Segments.Count; i++)
        {
            var segment = m.Segments[i];
            var code = new ProgramCode(plan, segment.Epilogue);
            var fields = new List<string>
            {
                $"Output = {View(plan, segment.Output)}",
                $"Cols = {Names.DimField(segment.OutDim)}",
                $"FirstRow = {RowStart(m, i)}",
            };
            fields.AddRange(code.Initializers(layer, v => View(plan, v)));
            if (segment.Rope >= 0)
            {
                string r = segment.Rope.ToString();
                fields.Add($"Cos = _rope{r}Cos, Sin = _rope{r}Sin, Cosines = _rope{r}Cosines, SignedSines = _rope{r}SignedSines, Half = _rope{r}Half, HeadDim = _rope{r}HeadDim, Rotary = _rope{r}Rotary");
            }
            w.Line($"    {EpilogueField(plan, segment)} = new {Epilogue(plan, m, segment)} {Initializer(fields)},");
        }
        w.Line("};");
        if (m.Segments.Any(s => WritesLogits(plan, s)))
        {
            w.Line("// The epilogue writes the caller's logits directly: pinned for the run.");
            w.Line($"{MatMul}.PinnedOutput.Run(_pool, logits, work.Blocks.Count, 1, work);");
        }
        else
        {
            w.Line("_pool.Run(work.Blocks.Count, 1, work);");
        }
    }

    private static void EmitElementwise(CodeWriter w, Plan plan, ElementwiseKernel e, string layer)
    {
        var code = new ProgramCode(plan, e.Program);
        var output = BufferOf(plan, e.Output);
        string rows = Names.Dim(e.Program.Rows), cols = Names.DimField(e.Program.Cols);
        var fields = new List<string> { $"Output = {View(plan, e.Output)}" };
        fields.AddRange(code.Initializers(layer, v => View(plan, v)));
        if (e.Program.Rope >= 0)
        {
            var table = plan.RopeTables[e.Program.Rope];
            string r = table.Index.ToString();
            fields.Add($"Cos = _rope{r}Cos, Sin = _rope{r}Sin, Half = _rope{r}Half, Rotary = _rope{r}Rotary");
            fields.Add(table.NeoX ? $"CosHalf = _rope{r}CosHalf, SinHalf = _rope{r}SinHalf" : $"Cosines = _rope{r}Cosines, SignedSines = _rope{r}SignedSines");
        }
        EmitMark(w, "elementwise " + output.Name);
        w.Line($"// {output.Name} ← {Passes.FusionReport.Resolve(e.Program.Description, plan)}: each row by one work item, the widest vectors first.");
        w.Line($"_pool.Run({rows}, global::Kiln.Kernels.Elementwise.RowLoop.ChunkSize({rows}, {cols}, _pool.ThreadCount), new {ElementwiseWork(plan, e)} {Initializer(fields)});");
    }

    private static void EmitAttention(CodeWriter w, Plan plan, AttentionKernel a)
    {
        string k = Buffer(plan, a.K), v = Buffer(plan, a.V);
        string qCols = Names.DimField(BufferOf(plan, a.Q).Cols);
        string kvCols = Names.DimField(BufferOf(plan, a.K).Cols);
        string cacheLayer = Names.Scalar(a.Layer, "_model");
        EmitMark(w, "kv write");
        w.Line($"int heads = {Names.Scalar(a.Heads, "_model")}, kvHeads = {Names.Scalar(a.KvHeads, "_model")};");
        w.Line("// This step's k and v rows go to the cache first (at each token's row of its sequence's blocks, in the cache's");
        w.Line("// storage): a token attends to itself and to earlier tokens of the step.");
        using (w.Block("for (int t = 0; t < T; t++)"))
        {
            w.Line("int row = context.KvRow(t);");
            w.Line($"cache.WriteKey({cacheLayer}, row, {k}.Slice(t * {kvCols}, {kvCols}));");
            w.Line($"cache.WriteValue({cacheLayer}, row, {v}.Slice(t * {kvCols}, {kvCols}));");
        }
        string options = AttentionOptions(a, qCols);
        w.Line("// Items: each token's KV heads in a few chunks (so one token's heads still spread over the threads); a chunk reads its");
        w.Line("// rows of the cache once, in order, for all its heads. A sharing group's prefix is read once for all its tokens first.");
        w.Line($"var paged = new {Attention}.PagedAttention");
        w.Line("{");
        w.Line($"    Q = {View(plan, a.Q)},");
        w.Line($"    Output = {View(plan, a.Output)},");
        w.Line("    Scores = _scores,");
        w.Line("    ScoresStride = _scoresPerChunk,");
        w.Line("    Gather = _gather,");
        w.Line("    GatherStride = _gatherFloats,");
        w.Line("    PrefixStatistics = _prefixStatistics,");
        w.Line("    Cache = cache,");
        w.Line("    Context = context,");
        w.Line($"    Layer = {cacheLayer},");
        w.Line("    Heads = heads,");
        w.Line("    KvHeads = kvHeads,");
        w.Line($"    HeadDim = {qCols} / heads,");
        w.Line($"    QCols = {qCols},");
        w.Line($"    KvCols = {kvCols},");
        w.Line($"    Options = {options},");
        w.Line("};");
        EmitMark(w, "attention");
        w.Line("paged.Run(_pool, T);");
    }

    /// <summary>The attention call's options as C# (Ops.Attention's scale 0 resolved to 1/√HeadDim); <c>heads</c> is a local of the call site.</summary>
    internal static string AttentionOptions(AttentionKernel a, string qCols)
    {
        string scale = a.Scale.Constant is "0" ? $"(float)(1.0 / global::System.Math.Sqrt({qCols} / heads))" : $"(float)({Names.Scalar(a.Scale, "_model")})";
        if (a.Scale.Constant is not "0" && a.Scale.IsFixed is false)
            scale = $"{scale} is var s && s != 0f ? s : (float)(1.0 / global::System.Math.Sqrt({qCols} / heads))";
        return $"new {Attention}.AttentionOptions({scale}, {Names.Scalar(a.Window, "_model")}, (float)({Names.Scalar(a.SoftCap, "_model")}), {Names.Scalar(a.Causal, "_model")})";
    }

    /// <summary>An encoder's attention: no cache to write; each query reads its own sequence's k and v rows in the step.</summary>
    private static void EmitStepAttention(CodeWriter w, Plan plan, AttentionKernel a)
    {
        string qCols = Names.DimField(BufferOf(plan, a.Q).Cols);
        string kvCols = Names.DimField(BufferOf(plan, a.K).Cols);
        EmitMark(w, "attention");
        w.Line($"int heads = {Names.Scalar(a.Heads, "_model")}, kvHeads = {Names.Scalar(a.KvHeads, "_model")};");
        string options = AttentionOptions(a, qCols);
        w.Line("// No KV cache: k and v are read in place from this step's rows, each query over its own sequence's tokens;");
        w.Line("// StepAttention.Plan picks the items: (sequence, KV head) for bidirectional attention on AVX-512, else each token's KV heads in a few chunks.");
        w.Line($"var step = new {Attention}.StepAttention");
        w.Line("{");
        w.Line($"    Q = {View(plan, a.Q)},");
        w.Line($"    K = {View(plan, a.K)},");
        w.Line($"    V = {View(plan, a.V)},");
        w.Line($"    Output = {View(plan, a.Output)},");
        w.Line("    Scores = _scores,");
        w.Line("    ScoresStride = _scoresPerChunk,");
        w.Line("    Context = context,");
        w.Line("    Heads = heads,");
        w.Line("    KvHeads = kvHeads,");
        w.Line($"    HeadDim = {qCols} / heads,");
        w.Line($"    QCols = {qCols},");
        w.Line($"    KvCols = {kvCols},");
        w.Line($"    Options = {options},");
        w.Line("};");
        w.Line("int items = step.Plan(T, _pool.ThreadCount);");
        w.Line("_pool.Run(items, step.ChunkSize, step);");
    }

    private static void EmitWorkStructs(CodeWriter w, Plan plan)
    {
        if (plan.Kernels.OfType<AttentionKernel>().Any() && !plan.Model.Encoder)
        {
            w.Line("/// <summary>Attention scratch for <paramref name=\"cache\"/>: per chunk of work items, every head's scores over its MaxContext and one block's rows; per token and head, a shared prefix's statistics.</summary>");
            using (w.Block("private void GrowScores(global::Kiln.KvCache cache)"))
            {
                // One expression over every attention kernel's count: nested Math.Max (or Min) of the distinct ones.
                string Fold(Func<AttentionKernel, ScalarExpr> count, string math) => plan.Kernels.OfType<AttentionKernel>()
                    .Select(k => Names.Scalar(count(k), "_model")).Distinct().Aggregate((a, b) => $"global::System.Math.{math}({a}, {b})");
                string most = Fold(k => k.Heads, "Max");
                string fewestKv = Fold(k => k.KvHeads, "Min"); // the widest head: the cache's KV row over the fewest KV heads
                w.Line("_scoresMemory?.Dispose();");
                w.Line("_scoresContext = global::System.Math.Max(_scoresContext, cache.MaxContext);");
                w.Line($"_gatherFloats = global::System.Math.Max(_gatherFloats, {MatMul}.KvBlocks.ScratchFloats(cache));");
                w.Line($"_scoresPerChunk = {Attention}.PagedAttention.ScoresPerChunk(_scoresContext, {most}, cache.KvDim / {fewestKv});");
                w.Line($"const int chunks = {Attention}.PagedAttention.MaxChunks;");
                w.Line($"int statistics = {Attention}.PagedAttention.PrefixStatisticsFloats(MaxTokensPerStep, {most});");
                w.Line($"_scoresMemory = new {MatMul}.NativeBlock((((long)_scoresPerChunk + _gatherFloats) * chunks + statistics) * sizeof(float));");
                w.Line("_scores = _scoresMemory.Floats(0, chunks * _scoresPerChunk);");
                w.Line("_gather = _scoresMemory.Floats((long)chunks * _scoresPerChunk * sizeof(float), chunks * _gatherFloats);");
                w.Line("_prefixStatistics = _scoresMemory.Floats(((long)_scoresPerChunk + _gatherFloats) * chunks * sizeof(float), statistics);");
            }
            w.Line();
        }
        foreach (var kernel in plan.Kernels)
        {
            switch (kernel)
            {
                case MatMulKernel m:
                    EmitMatMulWork(w, plan, m);
                    if (m.InputProgram is not null) EmitInputSource(w, plan, m);
                    foreach (var segment in m.Segments) EmitEpilogue(w, plan, m, segment);
                    break;
                case ElementwiseKernel e:
                    EmitElementwiseWork(w, plan, e);
                    break;
            }
        }
    }

    private static void EmitMatMulWork(CodeWriter w, Plan plan, MatMulKernel m)
    {
        int n = Number(plan, m);
        bool logits = m.Segments.Any(s => WritesLogits(plan, s));
        w.Line($"/// <summary>[{n}] Blocks of 4-row groups of the packed weights × tokens: each tile through its segment's epilogue as soon as it is computed.</summary>");
        string interfaces = $"global::Kiln.Threading.IParallelWork{(logits ? $", {MatMul}.IOutputWork" : "")}";
        using (w.Block($"private struct {MatMulWork(plan, m)} : {interfaces}"))
        {
            w.Line($"public {MatMul}.PackedMatrix Weights;");
            w.Line($"public {MatMul}.GemmInput Input;");
            w.Line($"public {MatMul}.GemmBlocks Blocks;");
            for (int i = 0; i + 1 < m.Segments.Count; i++)
                w.Line($"public int End{i}; // the group where segment {i} ({Buffer(plan, m.Segments[i].Output)}) ends");
            foreach (var segment in m.Segments)
                w.Line($"public {Epilogue(plan, m, segment)} {EpilogueField(plan, segment)};");
            w.Line();
            using (w.Block("public void Execute(int start, int end)"))
            using (w.Block("for (int item = start; item < end; item++)"))
            {
                w.Line("Blocks.Get(item, out int first, out int last, out int firstToken, out int endToken);");
                int count = m.Segments.Count;
                for (int i = 0; i < count; i++)
                {
                    string field = EpilogueField(plan, m.Segments[i]);
                    string from = i == 0 ? "first" : $"global::System.Math.Max(first, End{i - 1})";
                    string to = i == count - 1 ? "last" : $"global::System.Math.Min(last, End{i})";
                    string condition = count == 1 ? "" : i == 0 ? $"if (first < End0) " : i == count - 1 ? $"if (last > End{i - 1}) " : $"if (first < End{i} && last > End{i - 1}) ";
                    w.Line($"{condition}Run({from}, {to}, firstToken, endToken, ref {field});");
                }
            }
            if (logits)
            {
                w.Line();
                var segment = m.Segments.First(s => WritesLogits(plan, s));
                w.Line($"public void BindOutput({MatMul}.FloatBuffer output) => {EpilogueField(plan, segment)}.Output = output;");
            }
            w.Line();
            using (w.Block($"private void Run<TEpilogue>(int first, int end, int firstToken, int endToken, ref TEpilogue epilogue) where TEpilogue : struct, {MatMul}.ITileEpilogue"))
            {
                if (m.Format == "AsStored")
                {
                    w.Line("// The layout was chosen from the file's types when the plan was compiled: each has its kernel. Only F32's");
                    w.Line("// blocks split the tokens (GemmBlocks); every other layout's item holds them all.");
                    using (w.Block("switch (Weights.Format)"))
                    {
                        w.Line($"case {MatMul}.PackedFormat.F32: {MatMul}.Gemm.F32(Weights, Input, first, end, firstToken, endToken, ref epilogue); break;");
                        foreach (var format in new[] { "BF16", "Q8_0", "Q4_0" })
                            w.Line($"case {MatMul}.PackedFormat.{format}: {MatMul}.Gemm.{format}(Weights, Input, first, end, ref epilogue); break;");
                        w.Line($"case {MatMul}.PackedFormat.Q4_K: case {MatMul}.PackedFormat.Q5_K: case {MatMul}.PackedFormat.Q6_K: {MatMul}.Gemm.KQuants(Weights, Input, first, end, ref epilogue); break; // each segment in its own K type");
                        w.Line($"default: throw new global::System.InvalidOperationException($\"No kernel for the {{Weights.Format}} layout.\");");
                    }
                }
                else
                {
                    string tokens = m.Format == "F32" ? "firstToken, endToken, " : ""; // only F32's blocks split the tokens (GemmBlocks)
                    w.Line($"{MatMul}.Gemm.{m.Format}(Weights, Input, first, end, {tokens}ref epilogue); // [Quantize({m.Format})]: the one kernel needed");
                }
            }
        }
        w.Line();
    }

    /// <summary>The rows a matmul reads when a chain fused into its preparation: the program, written into the scratch row.</summary>
    private static void EmitInputSource(CodeWriter w, Plan plan, MatMulKernel m)
    {
        var code = new ProgramCode(plan, m.InputProgram!);
        w.Line($"/// <summary>[{Number(plan, m)}] The matmul's input rows: {Passes.FusionReport.Resolve(m.InputProgram!.Description, plan)}, computed into the preparation's scratch.</summary>");
        using (w.Block($"private struct {MatMulInput(plan, m)} : {MatMul}.IRowSource"))
        {
            code.Fields(w);
            w.Line();
            using (w.Block($"public void Row(int t, {MatMul}.FloatBuffer destination)"))
            {
                code.RowSetup(w, "t");
                w.Line("int c = 0;");
                ColumnLoops(w, code, "destination.Length", (width, column) =>
                {
                    string value = code.Body(w, width, column, column, "e");
                    w.Line(ProgramCode.Store(width, "destination", column, value));
                });
            }
        }
        w.Line();
    }

    /// <summary>Loops c from its current value to <paramref name="end"/>: Vector512 while 16 fit, Vector256 while 8 fit, then one at a time.</summary>
    private static void ColumnLoops(CodeWriter w, ProgramCode code, string end, System.Action<int, string> body, string column = "c", string offset = "")
    {
        string at = offset.Length == 0 ? column : $"{offset} + {column}";
        using (w.Block($"if ({Lanes}.Use512)"))
        using (w.Block($"for (; {column} + 16 <= {end}; {column} += 16)"))
            body(16, at);
        using (w.Block($"if ({Lanes}.Use256)"))
        using (w.Block($"for (; {column} + 8 <= {end}; {column} += 8)"))
            body(8, at);
        using (w.Block($"for (; {column} < {end}; {column}++)"))
            body(1, at);
    }

    private static void EmitElementwiseWork(CodeWriter w, Plan plan, ElementwiseKernel e)
    {
        var program = e.Program;
        var code = new ProgramCode(plan, program);
        var table = program.Rope >= 0 ? plan.RopeTables[program.Rope] : null;
        w.Line($"/// <summary>[{Number(plan, e)}] {Buffer(plan, e.Output)} ← {Passes.FusionReport.Resolve(program.Description, plan)}, row by row.</summary>");
        using (w.Block($"private struct {ElementwiseWork(plan, e)} : global::Kiln.Threading.IParallelWork"))
        {
            w.Line($"public {MatMul}.FloatBuffer Output;");
            code.Fields(w);
            if (table is not null)
            {
                w.Line("public double[] Cos, Sin;");
                w.Line(table.NeoX ? "public float[] CosHalf, SinHalf;" : "public float[] Cosines, SignedSines;");
                w.Line("public int Half, Rotary;");
            }
            w.Line();
            w.Line("[global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]");
            using (w.Block("public void Execute(int start, int end)"))
            {
                string cols = ProgramCode.DimRef(program.Cols);
                using (w.Block("for (int t = start; t < end; t++)"))
                {
                    w.Line($"int o = t * {cols};");
                    code.RowSetup(w, "t");
                    if (program.Group.Length == 0)
                    {
                        w.Line("int c = 0;");
                        ColumnLoops(w, code, cols, (width, column) =>
                        {
                            string value = code.Body(w, width, column, column, "e");
                            w.Line(ProgramCode.Store(width, "Output", $"o + {column}", value));
                        });
                    }
                    else
                    {
                        string group = ProgramCode.DimRef(program.Group);
                        using (w.Block($"for (int g = 0; g < {cols}; g += {group})"))
                        {
                            code.GroupSetup(w, "g");
                            if (table is null) PlainHead(w, code, group);
                            else if (table.NeoX) NeoXHead(w, code, group);
                            else AdjacentHead(w, code, group);
                        }
                    }
                }
            }
        }
        w.Line();
    }

    /// <summary>One head, no rope: every column of it.</summary>
    private static void PlainHead(CodeWriter w, ProgramCode code, string group)
    {
        w.Line("int j = 0;");
        ColumnLoops(w, code, group, (width, column) =>
        {
            string value = code.Body(w, width, $"g + {column}", column, "e");
            w.Line(ProgramCode.Store(width, "Output", $"o + g + {column}", value));
        }, "j");
    }

    /// <summary>
    /// One head, NeoX rope: pair j is columns j and j + Half; both are computed, turned by the pair's angle and
    /// stored; the columns past the rotary ones pass through.
    /// </summary>
    private static void NeoXHead(CodeWriter w, ProgramCode code, string group)
    {
        w.Line("int j = 0;");
        ColumnLoops(w, code, "Half", (width, column) =>
        {
            string a = code.Body(w, width, $"g + {column}", column, "a");
            string b = code.Body(w, width, $"g + {column} + Half", $"{column} + Half", "b");
            string at = $"t * Half + {column}";
            string cos = width == 1 ? "(float)Cos[" + at + "]" : $"{ProgramCode.Vector(width)}.LoadUnsafe(ref CosHalf[{at}])";
            string sin = width == 1 ? "(float)Sin[" + at + "]" : $"{ProgramCode.Vector(width)}.LoadUnsafe(ref SinHalf[{at}])";
            if (width == 1)
            {
                w.Line($"double cos = Cos[{at}], sin = Sin[{at}];");
                w.Line($"Output[o + g + {column}] = (float)({a} * cos - {b} * sin);");
                w.Line($"Output[o + g + {column} + Half] = (float)({a} * sin + {b} * cos);");
            }
            else
            {
                w.Line($"var cos = {cos};");
                w.Line($"var sin = {sin};");
                w.Line(ProgramCode.Store(width, "Output", $"o + g + {column}", $"{a} * cos - {b} * sin"));
                w.Line(ProgramCode.Store(width, "Output", $"o + g + {column} + Half", $"{a} * sin + {b} * cos"));
            }
        }, "j");
        PassThrough(w, code, group);
    }

    /// <summary>One head, rope on adjacent pairs: vectors turn two-element pairs with a lane swap; the scalar tail pair by pair.</summary>
    private static void AdjacentHead(CodeWriter w, ProgramCode code, string group)
    {
        w.Line("int j = 0;");
        foreach (int width in new[] { 16, 8 })
        {
            string swap = "global::System.Runtime.Intrinsics." + (width == 16 ? "Vector512" : "Vector256") + ".Create(" + string.Join(", ", Enumerable.Range(0, width).Select(i => (i ^ 1).ToString())) + ")";
            using (w.Block($"if ({Lanes}.Use{(width == 16 ? 512 : 256)})"))
            using (w.Block($"for (; j + {width} <= Rotary; j += {width})"))
            {
                string v = code.Body(w, width, "g + j", "j", "e");
                string at = "t * Rotary + j";
                w.Line($"var turned = {v} * {ProgramCode.Vector(width)}.LoadUnsafe(ref Cosines[{at}]) + {ProgramCode.Vector(width)}.Shuffle({v}, {swap}) * {ProgramCode.Vector(width)}.LoadUnsafe(ref SignedSines[{at}]);");
                w.Line(ProgramCode.Store(width, "Output", "o + g + j", "turned"));
            }
        }
        using (w.Block("for (; j < Rotary; j += 2)"))
        {
            string a = code.Body(w, 1, "g + j", "j", "a");
            string b = code.Body(w, 1, "g + j + 1", "j + 1", "b");
            w.Line("double cos = Cos[t * Half + j / 2], sin = Sin[t * Half + j / 2];");
            w.Line($"Output[o + g + j] = (float)({a} * cos - {b} * sin);");
            w.Line($"Output[o + g + j + 1] = (float)({a} * sin + {b} * cos);");
        }
        PassThrough(w, code, group);
    }

    /// <summary>The columns of a head past its rotary ones, unturned.</summary>
    private static void PassThrough(CodeWriter w, ProgramCode code, string group)
    {
        w.Line("j = Rotary;");
        ColumnLoops(w, code, group, (width, column) =>
        {
            string value = code.Body(w, width, $"g + {column}", column, "p");
            w.Line(ProgramCode.Store(width, "Output", $"o + g + {column}", value));
        }, "j");
    }

    private static void EmitEpilogue(CodeWriter w, Plan plan, MatMulKernel m, Segment segment)
    {
        var code = new ProgramCode(plan, segment.Epilogue);
        string output = Buffer(plan, segment.Output);
        string summary = segment.IsPair
            ? $"{output} ← {Passes.FusionReport.Resolve(segment.Epilogue.Description, plan)}: rows interleaved, so each adjacent pair of sums yields one output."
            : segment.Rope >= 0
                ? $"{output} ← {Passes.FusionReport.Resolve(segment.Epilogue.Description, plan)}, then each adjacent pair rotated by the token's position (cos/sin from the step's table)."
                : $"{output} ← {Passes.FusionReport.Resolve(segment.Epilogue.Description, plan)}.";
        w.Line($"/// <summary>[{Number(plan, m)}] {summary}</summary>");
        using (w.Block($"private struct {Epilogue(plan, m, segment)} : {MatMul}.ITileEpilogue"))
        {
            w.Line($"public {MatMul}.FloatBuffer Output;");
            w.Line("public int Cols, FirstRow;");
            code.Fields(w);
            if (segment.Rope >= 0)
            {
                w.Line("public double[] Cos, Sin;");
                w.Line("public float[] Cosines, SignedSines;");
                w.Line("public int Half, HeadDim, Rotary;");
            }
            w.Line();
            w.Line("[global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel");
            using (w.Block("public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)"))
            {
                code.RowSetup(w, "token");
                if (segment.IsPair) PairStore(w, code);
                else if (segment.Rope >= 0) RopeStore(w, code, plan.RopeTables[segment.Rope].NeoX);
                else PlainStore(w, code);
            }
            w.Line();
            w.Line("[global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel");
            using (w.Block("public void Store16(int row, int token, global::System.Runtime.Intrinsics.Vector512<float> sums)"))
            {
                if (!segment.IsPair && segment.Rope < 0) PlainStore16(w, code);
                w.Line("var low = global::System.Runtime.Intrinsics.Vector512.GetLower(sums);");
                w.Line("var high = global::System.Runtime.Intrinsics.Vector512.GetUpper(sums);");
                w.Line("Store(row, token, global::System.Runtime.Intrinsics.Vector256.GetLower(low));");
                w.Line("Store(row + 4, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(low));");
                w.Line("Store(row + 8, token, global::System.Runtime.Intrinsics.Vector256.GetLower(high));");
                w.Line("Store(row + 12, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(high));");
            }
        }
        w.Line();
    }

    /// <summary>Sixteen consecutive outputs at once, the program at Vector512, when they all lie inside the rows (else four groups).</summary>
    private static void PlainStore16(CodeWriter w, ProgramCode code)
    {
        w.Line("int o = row - FirstRow;");
        using (w.Block("if (o + 16 <= Cols)"))
        {
            code.RowSetup(w, "token");
            code.PrefetchNextTile(w, "token", "o");
            w.Line("int at = token * Cols + o;");
            string value = code.Body(w, 16, "o", "o", "e", new[] { "sums" });
            w.Line(ProgramCode.Store(16, "Output", "at", value));
            w.Line("return;");
        }
    }

    /// <summary>Four consecutive outputs: the program at Vector128, or lane by lane at the end of the rows.</summary>
    private static void PlainStore(CodeWriter w, ProgramCode code)
    {
        w.Line("int o = row - FirstRow, at = token * Cols + o;");
        using (w.Block("if (o + 4 <= Cols)"))
        {
            string value = code.Body(w, 4, "o", "o", "e", new[] { "sums" });
            w.Line(ProgramCode.Store(4, "Output", "at", value));
            w.Line("return;");
        }
        using (w.Block("for (int i = 0; o + i < Cols; i++)"))
        {
            string value = code.Body(w, 1, "o + i", "o + i", "e", new[] { "sums[i]" });
            w.Line($"Output[at + i] = {value};");
        }
    }

    /// <summary>An interleaved pair [a₀, b₀, a₁, b₁]: two outputs from the two sums of each.</summary>
    private static void PairStore(CodeWriter w, ProgramCode code)
    {
        w.Line("int o = (row - FirstRow) / 2, at = token * Cols + o;");
        w.Line($"var first = {ProgramCode.Vector(4)}.Shuffle(sums, {ProgramCode.Vector(4)}.Create(0, 2, 0, 2)); // a₀, a₁");
        w.Line($"var second = {ProgramCode.Vector(4)}.Shuffle(sums, {ProgramCode.Vector(4)}.Create(1, 3, 1, 3)); // b₀, b₁");
        using (w.Block("if (o + 2 <= Cols)"))
        {
            string value = code.Body(w, 4, "o", "o", "e", new[] { "first", "second" }, pairLanes: true);
            w.Line($"Output[at] = {value}[0];");
            w.Line($"Output[at + 1] = {value}[1];");
            w.Line("return;");
        }
        string last = code.Body(w, 1, "o", "o", "l", new[] { "first[0]", "second[0]" });
        w.Line($"Output[at] = {last};");
    }

    /// <summary>
    /// The program, then the rotary embedding. The tile's packed rows hold two whole pairs (adjacent pairs as they
    /// are; NeoX halves because the rows were packed pair by pair, <see cref="Kiln.Kernels.MatMul.RopeLayout"/>), so
    /// both turn at once when the tile lies inside one head's rotary part; otherwise pair by pair, and columns past the
    /// rotary ones pass through.
    /// </summary>
    private static void RopeStore(CodeWriter w, ProgramCode code, bool neoX)
    {
        System.Func<string, string>? map = neoX ? c => $"{MatMul}.RopeLayout.NeoXColumn({c}, HeadDim, Rotary)" : null;
        w.Line("int o = row - FirstRow, at = token * Cols, head = o - o % HeadDim, q = o - head;");
        using (w.Block("if (o + 4 <= Cols && HeadDim % 4 == 0 && q + 4 <= Rotary) // two whole pairs of one head: turn them together"))
        {
            string value = code.Body(w, 4, "o", "o", "e", new[] { "sums" }, vectorColumn: map);
            w.Line($"var turned = global::Kiln.Kernels.VectorMath.RotatePairs({value},");
            w.Line("    global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref Cosines[token * Rotary + q]),");
            w.Line("    global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref SignedSines[token * Rotary + q]));");
            if (neoX)
            {
                w.Line("int first = at + head + q / 2; // pairs (q/2, q/2 + Half) and (q/2 + 1, q/2 + 1 + Half)");
                w.Line("Output[first] = turned[0];");
                w.Line("Output[first + Half] = turned[1];");
                w.Line("Output[first + 1] = turned[2];");
                w.Line("Output[first + 1 + Half] = turned[3];");
            }
            else
            {
                w.Line("Output.Store4(at + o, turned);");
            }
            w.Line("return;");
        }
        using (w.Block("for (int i = 0; i < 4 && o + i < Cols; i += 2)"))
        {
            string a = code.Body(w, 1, "o + i", "o + i", "a", new[] { "sums[i]" }, vectorColumn: map);
            string b = code.Body(w, 1, "o + i + 1", "o + i + 1", "b", new[] { "sums[i + 1]" }, vectorColumn: map);
            w.Line("int c = o + i, start = c - c % HeadDim, within = c - start;");
            using (w.Block("if (within < Rotary)"))
            {
                w.Line("int pair = within / 2;");
                w.Line($"int first = {(neoX ? "at + start + pair, second = first + Half" : "at + c, second = first + 1")};");
                w.Line("double cos = Cos[token * Half + pair], sin = Sin[token * Half + pair];");
                w.Line($"Output[first] = (float)({a} * cos - {b} * sin);");
                w.Line($"Output[second] = (float)({a} * sin + {b} * cos);");
            }
            using (w.Block("else"))
            {
                w.Line($"Output[at + c] = {a};");
                w.Line($"Output[at + c + 1] = {b};");
            }
        }
    }
}
