using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Ir;
using Kiln.Generators.Passes;

namespace Kiln.Generators.Emit;

/// <summary>
/// The parallel kernels: a matmul prepares its input once and runs a work struct over 4-row groups whose tiles go
/// straight through the segment's epilogue struct; attention runs a work struct over (token, KV head) items.
/// </summary>
internal static partial class PlanEmitter
{
    private static readonly string[] WorkMembers = { "Weights", "Input", "Execute", "Run", "BindOutput" };

    private static string Work(Plan plan, Kernel kernel) =>
        (kernel is AttentionKernel ? "Attention" : "MatMul") + Number(plan, kernel) + "Work";

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

    private static void EmitMatMul(CodeWriter w, Plan plan, MatMulKernel m, string layer)
    {
        var input = BufferOf(plan, m.Input);
        string inDim = Names.DimField(m.InDim);
        string rows = Names.Dim(input.Rows);
        string norm = m.NormWeight.Length > 0 ? Names.Weight(m.NormWeight, "_model", layer) + ".Data" : "null";
        string eps = m.NormEps is null ? "0f" : Names.Scalar(m.NormEps, "_model");
        w.Line($"var weights = {m.Packed}{(m.LayersMember.Length > 0 ? $"[{layer}]" : "")};");
        w.Line(m.NormWeight.Length > 0
            ? $"// The input once for every weight: 1/rms per token, x·(1/rms)·{Short(m.NormWeight)} written (float layouts) or quantized straight to Q8."
            : "// The input once for every weight: quantized to Q8 for the quantized layouts, read as it is by the float ones.");
        w.Line($"var input = _inputs.Prepare(weights.Format, {View(plan, m.Input)}, {inDim}, {rows}, {inDim}, {norm}, {eps}, _pool);");
        w.Line($"var work = new {Work(plan, m)}");
        w.Line("{");
        w.Line("    Weights = weights,");
        w.Line("    Input = input,");
        for (int i = 0; i + 1 < m.Segments.Count; i++)
            w.Line($"    End{i} = {StartField(m, i + 1)} / 4,");
        for (int i = 0; i < m.Segments.Count; i++)
        {
            var segment = m.Segments[i];
            var fields = new List<string>
            {
                $"Output = {View(plan, segment.Output)}",
                $"Cols = {Names.DimField(segment.OutDim)}",
                $"FirstRow = {RowStart(m, i)}",
            };
            switch (segment.Kind)
            {
                case SegmentKind.Residual:
                    fields.Add($"Residual = {View(plan, segment.Residual)}");
                    break;
                case SegmentKind.Rope:
                    string r = segment.RopeTable.ToString();
                    fields.Add($"Cos = _rope{r}Cos, Sin = _rope{r}Sin, Cosines = _rope{r}Cosines, SignedSines = _rope{r}SignedSines, Half = _rope{r}Half, HeadDim = _rope{r}HeadDim");
                    break;
            }
            w.Line($"    {EpilogueField(plan, segment)} = new {Epilogue(plan, m, segment)} {{ {string.Join(", ", fields)} }},");
        }
        w.Line("};");
        string chunk = $"{MatMul}.Gemm.ChunkSize(weights, {rows}, _pool.ThreadCount)";
        if (m.Segments.Any(s => WritesLogits(plan, s)))
        {
            w.Line("// The epilogue writes the caller's logits directly: pinned for the run.");
            w.Line($"{MatMul}.PinnedOutput.Run(_pool, logits, weights.Groups, {chunk}, work);");
        }
        else
        {
            w.Line($"_pool.Run(weights.Groups, {chunk}, work);");
        }
    }

    private static void EmitAttention(CodeWriter w, Plan plan, AttentionKernel a, string layer)
    {
        string k = Buffer(plan, a.K), v = Buffer(plan, a.V);
        string qCols = Names.DimField(BufferOf(plan, a.Q).Cols);
        string kvCols = Names.DimField(BufferOf(plan, a.K).Cols);
        string cacheLayer = Names.Scalar(a.Layer, "_model");
        w.Line($"int heads = {Names.Scalar(a.Heads, "_model")}, kvHeads = {Names.Scalar(a.KvHeads, "_model")};");
        w.Line("// This step's k and v rows go to the cache first (at each token's row of its sequence's blocks, in the cache's");
        w.Line("// storage): a token attends to itself and to earlier tokens of the step.");
        using (w.Block("for (int t = 0; t < T; t++)"))
        {
            w.Line("int row = context.KvRow(t);");
            w.Line($"cache.WriteKey({cacheLayer}, row, {k}.Slice(t * {kvCols}, {kvCols}));");
            w.Line($"cache.WriteValue({cacheLayer}, row, {v}.Slice(t * {kvCols}, {kvCols}));");
        }
        w.Line("// Items: each token's KV heads in a few chunks (so one token's heads still spread over the threads); a chunk reads its");
        w.Line("// rows of the cache once, in order, for all its heads.");
        w.Line("int perToken = global::System.Math.Clamp((2 * _pool.ThreadCount + T - 1) / T, 1, kvHeads);");
        w.Line("int kvPerItem = (kvHeads + perToken - 1) / perToken;");
        w.Line("perToken = (kvHeads + kvPerItem - 1) / kvPerItem;");
        w.Line("int items = T * perToken, chunk = (items + AttentionChunks - 1) / AttentionChunks;");
        w.Line($"_pool.Run(items, chunk, new {Work(plan, a)}");
        w.Line("{");
        w.Line($"    Q = {View(plan, a.Q)},");
        w.Line($"    Output = {View(plan, a.Output)},");
        w.Line("    Scores = _scores,");
        w.Line("    ScoresStride = _scoresPerChunk,");
        w.Line("    Gather = _gather,");
        w.Line("    GatherStride = _gatherFloats,");
        w.Line("    ChunkSize = chunk,");
        w.Line("    PerToken = perToken,");
        w.Line("    KvPerItem = kvPerItem,");
        w.Line("    Cache = cache,");
        w.Line("    Context = context,");
        w.Line($"    Layer = {cacheLayer},");
        w.Line("    Heads = heads,");
        w.Line("    KvHeads = kvHeads,");
        w.Line($"    HeadDim = {qCols} / heads,");
        w.Line($"    QCols = {qCols},");
        w.Line($"    KvCols = {kvCols},");
        w.Line($"    Scale = (float)(1.0 / global::System.Math.Sqrt({qCols} / heads)),");
        w.Line("});");
    }

    private static void EmitWorkStructs(CodeWriter w, Plan plan)
    {
        if (plan.Kernels.OfType<AttentionKernel>().Any())
        {
            w.Line($"private const int AttentionChunks = {AttentionChunks};");
            w.Line();
            w.Line("/// <summary>Attention scratch for <paramref name=\"cache\"/>: per chunk of work items, every head's scores over its MaxContext and one block's rows.</summary>");
            using (w.Block("private void GrowScores(global::Kiln.KvCache cache)"))
            {
                var heads = plan.Kernels.OfType<AttentionKernel>().Select(k => Names.Scalar(k.Heads, "_model")).Distinct().ToList();
                string most = heads[0];
                for (int i = 1; i < heads.Count; i++) most = $"global::System.Math.Max({most}, {heads[i]})";
                w.Line("_scoresMemory?.Dispose();");
                w.Line("_scoresContext = global::System.Math.Max(_scoresContext, cache.MaxContext);");
                w.Line($"_gatherFloats = global::System.Math.Max(_gatherFloats, {MatMul}.KvBlocks.ScratchFloats(cache));");
                w.Line($"_scoresPerChunk = checked(_scoresContext * {most});");
                w.Line($"_scoresMemory = new {MatMul}.NativeBlock(((long)_scoresPerChunk + _gatherFloats) * AttentionChunks * sizeof(float));");
                w.Line("_scores = _scoresMemory.Floats(0, AttentionChunks * _scoresPerChunk);");
                w.Line("_gather = _scoresMemory.Floats((long)AttentionChunks * _scoresPerChunk * sizeof(float), AttentionChunks * _gatherFloats);");
            }
            w.Line();
        }
        var seen = new HashSet<string>();
        foreach (var kernel in plan.Kernels)
        {
            if (!seen.Add(Work(plan, kernel))) continue;
            switch (kernel)
            {
                case MatMulKernel m:
                    EmitMatMulWork(w, plan, m);
                    foreach (var segment in m.Segments) EmitEpilogue(w, plan, m, segment);
                    break;
                case AttentionKernel a:
                    EmitAttentionWork(w, plan, a);
                    break;
            }
        }
    }

    private static void EmitMatMulWork(CodeWriter w, Plan plan, MatMulKernel m)
    {
        int n = Number(plan, m);
        bool logits = m.Segments.Any(s => WritesLogits(plan, s));
        w.Line($"/// <summary>[{n}] A range of 4-row groups of the packed weights: each tile through its segment's epilogue as soon as it is computed.</summary>");
        string interfaces = $"global::Kiln.Threading.IParallelWork{(logits ? $", {MatMul}.IOutputWork" : "")}";
        using (w.Block($"private struct {Work(plan, m)} : {interfaces}"))
        {
            w.Line($"public {MatMul}.PackedMatrix Weights;");
            w.Line($"public {MatMul}.GemmInput Input;");
            for (int i = 0; i + 1 < m.Segments.Count; i++)
                w.Line($"public int End{i}; // the group where segment {i} ({Buffer(plan, m.Segments[i].Output)}) ends");
            foreach (var segment in m.Segments)
                w.Line($"public {Epilogue(plan, m, segment)} {EpilogueField(plan, segment)};");
            w.Line();
            using (w.Block("public void Execute(int start, int end)"))
            {
                int count = m.Segments.Count;
                for (int i = 0; i < count; i++)
                {
                    string field = EpilogueField(plan, m.Segments[i]);
                    string first = i == 0 ? "start" : $"global::System.Math.Max(start, End{i - 1})";
                    string last = i == count - 1 ? "end" : $"global::System.Math.Min(end, End{i})";
                    string condition = count == 1 ? "" : i == 0 ? $"if (start < End0) " : i == count - 1 ? $"if (end > End{i - 1}) " : $"if (start < End{i} && end > End{i - 1}) ";
                    w.Line($"{condition}Run({first}, {last}, ref {field});");
                }
            }
            if (logits)
            {
                w.Line();
                var segment = m.Segments.First(s => WritesLogits(plan, s));
                w.Line($"public void BindOutput({MatMul}.FloatBuffer output) => {EpilogueField(plan, segment)}.Output = output;");
            }
            w.Line();
            using (w.Block($"private void Run<TEpilogue>(int first, int end, ref TEpilogue epilogue) where TEpilogue : struct, {MatMul}.ITileEpilogue"))
            {
                if (m.Format == "AsStored")
                {
                    w.Line("// The layout was chosen from the file's types when the plan was compiled: each has its kernel.");
                    using (w.Block("switch (Weights.Format)"))
                    {
                        foreach (var format in new[] { "F32", "BF16", "Q8_0", "Q4_0" })
                            w.Line($"case {MatMul}.PackedFormat.{format}: {MatMul}.Gemm.{format}(Weights, Input, first, end, ref epilogue); break;");
                        w.Line($"default: throw new global::System.InvalidOperationException($\"No kernel for the {{Weights.Format}} layout.\");");
                    }
                }
                else
                {
                    w.Line($"{MatMul}.Gemm.{m.Format}(Weights, Input, first, end, ref epilogue); // [Quantize({m.Format})]: the one kernel needed");
                }
            }
        }
        w.Line();
    }

    private static void EmitEpilogue(CodeWriter w, Plan plan, MatMulKernel m, Segment segment)
    {
        string output = Buffer(plan, segment.Output);
        string summary = segment.Kind switch
        {
            SegmentKind.Rope => $"{output} ← rope(·): each adjacent row pair rotated by the token's position (cos/sin from the step's table).",
            SegmentKind.Residual => $"{output} ← {Buffer(plan, segment.Residual)} + ·: the residual add.",
            SegmentKind.SwiGlu => $"{output} ← silu(gate)·up: rows interleaved gate, up, so each adjacent pair yields one output.",
            _ => $"{output} ← ·: the sums stored as they are.",
        };
        w.Line($"/// <summary>[{Number(plan, m)}] {summary}</summary>");
        using (w.Block($"private struct {Epilogue(plan, m, segment)} : {MatMul}.ITileEpilogue"))
        {
            w.Line($"public {MatMul}.FloatBuffer Output;");
            if (segment.Kind == SegmentKind.Residual) w.Line($"public {MatMul}.FloatBuffer Residual;");
            w.Line("public int Cols, FirstRow;");
            if (segment.Kind == SegmentKind.Rope)
            {
                w.Line("public double[] Cos, Sin;");
                w.Line("public float[] Cosines, SignedSines;");
                w.Line("public int Half, HeadDim;");
            }
            w.Line();
            w.Line("[global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel");
            using (w.Block("public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)"))
            {
                switch (segment.Kind)
                {
                    case SegmentKind.Plain:
                        w.Line("int o = row - FirstRow, at = token * Cols + o;");
                        w.Line("if (o + 4 <= Cols) Output.Store4(at, sums);");
                        w.Line("else for (int i = 0; o + i < Cols; i++) Output[at + i] = sums[i];");
                        break;
                    case SegmentKind.Residual:
                        w.Line("int o = row - FirstRow, at = token * Cols + o;");
                        w.Line("if (o + 4 <= Cols) Output.Store4(at, Residual.Load4(at) + sums);");
                        w.Line("else for (int i = 0; o + i < Cols; i++) Output[at + i] = Residual[at + i] + sums[i];");
                        break;
                    case SegmentKind.Rope:
                        w.Line("int o = row - FirstRow;");
                        using (w.Block("if (o + 4 <= Cols && HeadDim % 4 == 0) // both pairs in one head: rotate them together"))
                        {
                            w.Line("int angle = token * HeadDim + o % HeadDim;");
                            w.Line($"Output.Store4(token * Cols + o, {VectorMath}.RotatePairs(sums,");
                            w.Line("    global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref Cosines[angle]),");
                            w.Line("    global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref SignedSines[angle])));");
                            w.Line("return;");
                        }
                        using (w.Block("for (int i = 0; i < 4 && o + i < Cols; i += 2)"))
                        {
                            w.Line("int c = o + i, pair = (c % HeadDim) / 2;");
                            w.Line("double cos = Cos[token * Half + pair], sin = Sin[token * Half + pair];");
                            w.Line("float a = sums[i], b = sums[i + 1];");
                            w.Line("Output[token * Cols + c] = (float)(a * cos - b * sin);");
                            w.Line("Output[token * Cols + c + 1] = (float)(a * sin + b * cos);");
                        }
                        break;
                    case SegmentKind.SwiGlu:
                        w.Line("int o = (row - FirstRow) / 2, at = token * Cols + o;");
                        w.Line($"var products = {VectorMath}.SiluGatePairs(sums); // [silu(gate₀)·up₀, silu(gate₁)·up₁, ·, ·]");
                        w.Line("Output[at] = products[0];");
                        w.Line("if (o + 1 < Cols) Output[at + 1] = products[1];");
                        break;
                }
            }
        }
        w.Line();
    }

    private static void EmitAttentionWork(CodeWriter w, Plan plan, AttentionKernel a)
    {
        w.Line($"/// <summary>[{Number(plan, a)}] Causal GQA attention, one (token, chunk of KV heads) per item: every query head of the chunk over the same cached rows, block by block of the token's sequence.</summary>");
        using (w.Block($"private struct {Work(plan, a)} : global::Kiln.Threading.IParallelWork"))
        {
            w.Line($"public {MatMul}.FloatBuffer Q, Output, Scores, Gather;");
            w.Line("public global::Kiln.KvCache Cache;");
            w.Line("public global::Kiln.AttentionContext Context;");
            w.Line("public int ScoresStride, GatherStride, ChunkSize, PerToken, KvPerItem, Layer, Heads, KvHeads, HeadDim, QCols, KvCols;");
            w.Line("public float Scale;");
            w.Line();
            w.Line("[global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]");
            using (w.Block("public void Execute(int start, int end)"))
            {
                w.Line("// Items come in chunks of ChunkSize from a multiple of it: the chunk's own scratch.");
                w.Line("int chunk = start / ChunkSize;");
                w.Line("var scores = Scores.Slice(chunk * ScoresStride, ScoresStride);");
                w.Line("var gather = Gather.Slice(chunk * GatherStride, GatherStride);");
                w.Line("var positions = Context.Positions;");
                w.Line("int group = Heads / KvHeads, blockSize = Cache.BlockSize;");
                w.Line("bool halves = Cache.Storage == global::Kiln.KvStorage.F16;");
                using (w.Block("for (int item = start; item < end; item++)"))
                {
                    w.Line("int t = item / PerToken, kv0 = item % PerToken * KvPerItem, kv1 = global::System.Math.Min(KvHeads, kv0 + KvPerItem);");
                    w.Line("int rows = positions[t] + 1, heads = (kv1 - kv0) * group, at = t * QCols + kv0 * group * HeadDim;");
                    w.Line("// Only this item's KV heads are read: F16 rows in place (widened in registers), int8 ones dequantized into scratch.");
                    w.Line("int columns = (kv1 - kv0) * HeadDim;");
                    w.Line("var blocks = Context.BlockTable(Context.SequenceOf(t)); // a contiguous cache: one block per sequence");
                    w.Line("var query = Q.Slice(at, heads * HeadDim);");
                    w.Line("var output = Output.Slice(at, heads * HeadDim);");
                    w.Line("var weights = scores.Slice(0, heads * rows);");
                    using (w.Block("for (int b = 0, first = 0; first < rows; b++, first += blockSize)"))
                    {
                        w.Line("int count = global::System.Math.Min(blockSize, rows - first);");
                        w.Line("if (halves)");
                        w.Line($"    {VectorMath}.AttentionScores(query, heads, HeadDim, group, {MatMul}.KvBlocks.HalfKeys(Cache, Layer, blocks[b], count, kv0 * HeadDim, columns), KvCols, count, Scale, weights, rows, first);");
                        w.Line("else");
                        w.Line($"    {VectorMath}.AttentionScores(query, heads, HeadDim, group, {MatMul}.KvBlocks.Keys(Cache, Layer, blocks[b], count, kv0 * HeadDim, columns, gather), KvCols, count, Scale, weights, rows, first);");
                    }
                    w.Line($"for (int h = 0; h < heads; h++) {VectorMath}.Softmax(weights.Slice(h * rows, rows));");
                    w.Line("output.Clear();");
                    using (w.Block("for (int b = 0, first = 0; first < rows; b++, first += blockSize)"))
                    {
                        w.Line("int count = global::System.Math.Min(blockSize, rows - first);");
                        w.Line("if (halves)");
                        w.Line($"    {VectorMath}.AttentionValues(weights, rows, first, heads, HeadDim, group, {MatMul}.KvBlocks.HalfValues(Cache, Layer, blocks[b], count, kv0 * HeadDim, columns), KvCols, count, output);");
                        w.Line("else");
                        w.Line($"    {VectorMath}.AttentionValues(weights, rows, first, heads, HeadDim, group, {MatMul}.KvBlocks.Values(Cache, Layer, blocks[b], count, kv0 * HeadDim, columns, gather), KvCols, count, output);");
                    }
                }
            }
        }
        w.Line();
    }
}
