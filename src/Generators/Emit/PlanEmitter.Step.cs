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
            w.Line("if (context is null) throw new global::System.ArgumentNullException(nameof(context));");
            w.Line("int T = tokens.Length;");
            w.Line("if (T != context.TokenCount)");
            w.Line("    throw new global::System.ArgumentException($\"The step has {T} tokens but its context describes {context.TokenCount}.\", nameof(tokens));");
            w.Line("if (T > MaxTokensPerStep)");
            w.Line("    throw new global::System.ArgumentException($\"The step has {T} tokens; this plan was compiled for at most {MaxTokensPerStep}.\", nameof(tokens));");
            w.Line("int O = context.OutputCount;");
            string resultRows = Names.Dim(plan.ResultRows);
            w.Line($"if (logits.Length < {resultRows} * {Names.DimField(plan.VocabDim)})");
            w.Line($"    throw new global::System.ArgumentException($\"logits holds {{logits.Length}} floats; the step needs {{{resultRows}}} rows of {{{Names.DimField(plan.VocabDim)}}}.\", nameof(logits));");
            w.Line("var cache = context.Cache;");
            bool attention = plan.Kernels.OfType<AttentionKernel>().Any();
            if (attention)
            {
                string layers = plan.KvLayers == "1" ? "1" : "_model." + plan.KvLayers;
                w.Line($"if (cache.KvDim != {Names.DimField(plan.KvDim)} || cache.Layers < {layers})");
                w.Line($"    throw new global::System.ArgumentException($\"The KV cache holds {{cache.Layers}} layers of rows of {{cache.KvDim}}; this model needs {{{layers}}} of {{{Names.DimField(plan.KvDim)}}} (use CreateKvCache).\", nameof(context));");
                w.Line("if (_scores.Length < cache.MaxContext) _scores = new float[cache.MaxContext]; // once per larger cache, never per step");
            }
            w.Line("global::System.ReadOnlySpan<int> positions = context.Positions;");
            w.Line("global::System.ReadOnlySpan<int> slots = context.Slots;");
            w.Line("global::System.ReadOnlySpan<int> outputRows = context.OutputRows;");
            w.Line();
            w.Line("// Activations: slices of the arena.");
            w.Line("global::System.Span<float> arena = _arena;");
            foreach (var buffer in plan.Buffers.Where(b => b.Slot >= 0))
                w.Line($"global::System.Span<float> {buffer.Name} = arena.Slice({OffsetField(buffer)}, {Names.Dim(buffer.Rows)} * {Names.DimField(buffer.Cols)});");
            if (NeedsInvRms(plan)) w.Line("global::System.Span<float> invRms = arena.Slice(_invRmsOffset, T);");
            w.Line();

            foreach (var table in plan.RopeTables)
            {
                string i = table.Index.ToString();
                w.Line($"// Rope table {i}: angle = position · base^(-2·pair/headDim), in double like the eager op; shared by every layer.");
                using (w.Block("for (int t = 0; t < T; t++)"))
                {
                    using (w.Block($"for (int pair = 0; pair < _rope{i}Half; pair++)"))
                    {
                        w.Line($"double angle = positions[t] * _rope{i}InverseFrequency[pair];");
                        w.Line($"_rope{i}Cos[t * _rope{i}Half + pair] = global::System.Math.Cos(angle);");
                        w.Line($"_rope{i}Sin[t * _rope{i}Half + pair] = global::System.Math.Sin(angle);");
                    }
                }
                w.Line();
            }

            int region = 0;
            int number = 1;
            bool open = false;
            foreach (var kernel in plan.Kernels)
            {
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
                EmitKernel(w, plan, kernel, number++);
            }
            if (open) w.Close();
        }
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
                case GatherKernel g:
                {
                    string output = Buffer(plan, g.Output);
                    w.Line($"var table = {Names.Weight(g.Table, "_model", layer)};");
                    w.Line("int cols = table.Cols;");
                    using (w.Block("for (int t = 0; t < T; t++)"))
                    {
                        w.Line("int token = tokens[t];");
                        w.Line("if ((uint)token >= (uint)table.Rows)");
                        w.Line("    throw new global::System.ArgumentOutOfRangeException(nameof(tokens), $\"Token id {token} at position {t} is outside the vocabulary (0..{table.Rows - 1}).\");");
                        w.Line($"table.Row(token).CopyTo({output}.Slice(t * cols, cols));");
                    }
                    break;
                }
                case MatMulKernel m:
                    EmitMatMul(w, plan, m, layer);
                    break;
                case AttentionKernel a:
                    EmitAttention(w, plan, a, layer);
                    break;
                case SelectRowsKernel s:
                {
                    string cols = Names.DimField(plan.Buffers[plan.ValueBuffers[s.Input]].Cols);
                    w.Line($"for (int i = 0; i < O; i++) {Buffer(plan, s.Input)}.Slice(outputRows[i] * {cols}, {cols}).CopyTo({Buffer(plan, s.Output)}.Slice(i * {cols}, {cols}));");
                    break;
                }
                case RmsNormKernel r:
                {
                    var buffer = plan.Buffers[plan.ValueBuffers[r.Input]];
                    string cols = Names.DimField(buffer.Cols);
                    w.Line($"var weight = {Names.Weight(r.Weight, "_model", layer)}.Data;");
                    using (w.Block($"for (int t = 0; t < {Names.Dim(buffer.Rows)}; t++)"))
                    {
                        w.Line($"var row = {buffer.Name}.Slice(t * {cols}, {cols});");
                        w.Line($"var output = {Buffer(plan, r.Output)}.Slice(t * {cols}, {cols});");
                        w.Line($"double scale = 1.0 / global::System.Math.Sqrt((double){VectorMath}.SumOfSquares(row) / {cols} + {Names.Scalar(r.Eps, "_model")});");
                        w.Line($"for (int i = 0; i < {cols}; i++) output[i] = (float)(row[i] * scale * weight[i]);");
                    }
                    break;
                }
                case RopeKernel r:
                {
                    var buffer = plan.Buffers[plan.ValueBuffers[r.Input]];
                    string cols = Names.DimField(buffer.Cols);
                    string i = r.RopeTable.ToString();
                    w.Line($"if ({cols} % _rope{i}HeadDim != 0) throw new global::System.InvalidOperationException(\"Rope: the head dimension does not divide the row length.\");");
                    using (w.Block($"for (int t = 0; t < {Names.Dim(buffer.Rows)}; t++)"))
                    {
                        using (w.Block($"for (int c = 0; c < {cols}; c += 2)"))
                        {
                            w.Line($"int pair = (c % _rope{i}HeadDim) / 2;");
                            w.Line($"double cos = _rope{i}Cos[t * _rope{i}Half + pair], sin = _rope{i}Sin[t * _rope{i}Half + pair];");
                            w.Line($"float a = {buffer.Name}[t * {cols} + c], b = {buffer.Name}[t * {cols} + c + 1];");
                            w.Line($"{Buffer(plan, r.Output)}[t * {cols} + c] = (float)(a * cos - b * sin);");
                            w.Line($"{Buffer(plan, r.Output)}[t * {cols} + c + 1] = (float)(a * sin + b * cos);");
                        }
                    }
                    break;
                }
                case ElementwiseKernel e:
                {
                    string a = Buffer(plan, e.A), output = Buffer(plan, e.Output);
                    string body = e.Op switch
                    {
                        OpKind.Silu => $"{output}[i] = (float)({a}[i] / (1.0 + global::System.Math.Exp(-{a}[i])));",
                        OpKind.Mul => $"{output}[i] = {a}[i] * {Buffer(plan, e.B)}[i];",
                        _ => $"{output}[i] = {a}[i] + {Buffer(plan, e.B)}[i];",
                    };
                    w.Line($"for (int i = 0; i < {output}.Length; i++) {body}");
                    break;
                }
                case CopyKernel c:
                    w.Line($"{Buffer(plan, c.Source)}.CopyTo({Buffer(plan, c.Destination)});");
                    break;
            }
        }
    }

    private static void EmitMatMul(CodeWriter w, Plan plan, MatMulKernel m, string layer)
    {
        var input = plan.Buffers[plan.ValueBuffers[m.Input]];
        string inDim = Names.DimField(m.InDim);
        string rows = Names.Dim(input.Rows);
        bool norm = m.NormWeight.Length > 0;
        string scaled = norm ? " * invRms[t]" : "";
        w.Line($"var weights = {m.Packed}{(m.LayersMember.Length > 0 ? $"[{layer}]" : "")};");
        if (norm)
        {
            w.Line($"// 1/rms per token, once for every matmul row; {m.NormWeight}'s weight is already folded into the columns.");
            w.Line($"for (int t = 0; t < {rows}; t++) invRms[t] = {VectorMath}.InverseRms({input.Name}.Slice(t * {inDim}, {inDim}), {Names.Scalar(m.NormEps!, "_model")});");
        }

        string rowBase = "";
        foreach (var segment in m.Segments)
        {
            string outDim = Names.DimField(segment.OutDim);
            string output = Buffer(plan, segment.Output);
            string at = rowBase.Length == 0 ? "" : rowBase + " + ";
            string Row(string index) => at.Length == 0 && !index.Contains(" ") ? index : "(" + at + index + ")";
            switch (segment.Kind)
            {
                case SegmentKind.Plain:
                case SegmentKind.Residual:
                {
                    string residual = segment.Kind == SegmentKind.Residual ? Buffer(plan, segment.Residual) : "";
                    w.Line(segment.Kind == SegmentKind.Plain
                        ? $"// {output} = {input.Name}·{Short(segment.Weights[0])}ᵀ: weight rows outer, tokens inner (each row read once per step)"
                        : $"// {output} = {residual} + {input.Name}·{Short(segment.Weights[0])}ᵀ: the residual add as the epilogue{(residual == output ? ", in place" : "")}");
                    using (w.Block($"for (int o = 0; o < {outDim}; o++)"))
                    {
                        w.Line($"var w0 = weights.AsSpan({Row("o")} * {inDim}, {inDim});");
                        using (w.Block($"for (int t = 0; t < {rows}; t++)"))
                        {
                            string dot = $"{VectorMath}.Dot(w0, {input.Name}.Slice(t * {inDim}, {inDim})){scaled}";
                            w.Line(segment.Kind == SegmentKind.Plain
                                ? $"{output}[t * {outDim} + o] = {dot};"
                                : $"{output}[t * {outDim} + o] = {residual}[t * {outDim} + o] + {dot};");
                        }
                    }
                    break;
                }
                case SegmentKind.Rope:
                {
                    string i = segment.RopeTable.ToString();
                    w.Line($"// {output} = rope({input.Name}·{Short(segment.Weights[0])}ᵀ): adjacent output pairs rotated by the token's position");
                    using (w.Block($"for (int o = 0; o < {outDim}; o += 2)"))
                    {
                        w.Line($"var w0 = weights.AsSpan({Row("o")} * {inDim}, {inDim});");
                        w.Line($"var w1 = weights.AsSpan({Row("o + 1")} * {inDim}, {inDim});");
                        w.Line($"int pair = (o % _rope{i}HeadDim) / 2;");
                        using (w.Block($"for (int t = 0; t < {rows}; t++)"))
                        {
                            w.Line($"var input = {input.Name}.Slice(t * {inDim}, {inDim});");
                            w.Line($"float a = {VectorMath}.Dot(w0, input){scaled};");
                            w.Line($"float b = {VectorMath}.Dot(w1, input){scaled};");
                            w.Line($"double cos = _rope{i}Cos[t * _rope{i}Half + pair], sin = _rope{i}Sin[t * _rope{i}Half + pair];");
                            w.Line($"{output}[t * {outDim} + o] = (float)(a * cos - b * sin);");
                            w.Line($"{output}[t * {outDim} + o + 1] = (float)(a * sin + b * cos);");
                        }
                    }
                    break;
                }
                case SegmentKind.SwiGlu:
                {
                    w.Line($"// {output} = silu({input.Name}·{Short(segment.Weights[0])}ᵀ)·({input.Name}·{Short(segment.Weights[1])}ᵀ): rows interleaved, one output per row pair");
                    using (w.Block($"for (int o = 0; o < {outDim}; o++)"))
                    {
                        w.Line($"var w0 = weights.AsSpan({Row("2 * o")} * {inDim}, {inDim});");
                        w.Line($"var w1 = weights.AsSpan({Row("2 * o + 1")} * {inDim}, {inDim});");
                        using (w.Block($"for (int t = 0; t < {rows}; t++)"))
                        {
                            w.Line($"var input = {input.Name}.Slice(t * {inDim}, {inDim});");
                            w.Line($"float a = {VectorMath}.Dot(w0, input){scaled};");
                            w.Line($"float b = {VectorMath}.Dot(w1, input){scaled};");
                            w.Line($"{output}[t * {outDim} + o] = (float)(a / (1.0 + global::System.Math.Exp(-a))) * b;");
                        }
                    }
                    break;
                }
            }
            string rowsHere = segment.Kind == SegmentKind.SwiGlu ? "2 * " + outDim : outDim;
            rowBase = rowBase.Length == 0 ? rowsHere : rowBase + " + " + rowsHere;
        }
    }

    private static void EmitAttention(CodeWriter w, Plan plan, AttentionKernel a, string layer)
    {
        string q = Buffer(plan, a.Q), k = Buffer(plan, a.K), v = Buffer(plan, a.V), output = Buffer(plan, a.Output);
        string qCols = Names.DimField(plan.Buffers[plan.ValueBuffers[a.Q]].Cols);
        string kvCols = Names.DimField(plan.Buffers[plan.ValueBuffers[a.K]].Cols);
        string cacheLayer = Names.Scalar(a.Layer, "_model");
        w.Line($"int heads = {Names.Scalar(a.Heads, "_model")}, kvHeads = {Names.Scalar(a.KvHeads, "_model")};");
        w.Line($"int headDim = {qCols} / heads, group = heads / kvHeads;");
        w.Line("float scale = (float)(1.0 / global::System.Math.Sqrt(headDim));");
        w.Line("// This step's k and v rows go to the cache first: a token attends to itself and to earlier tokens of the step.");
        using (w.Block("for (int t = 0; t < T; t++)"))
        {
            w.Line($"{k}.Slice(t * {kvCols}, {kvCols}).CopyTo(cache.Key({cacheLayer}, slots[t], positions[t]));");
            w.Line($"{v}.Slice(t * {kvCols}, {kvCols}).CopyTo(cache.Value({cacheLayer}, slots[t], positions[t]));");
        }
        using (w.Block("for (int t = 0; t < T; t++)"))
        {
            w.Line("int position = positions[t];");
            w.Line($"var keys = cache.Keys({cacheLayer}, slots[t]);");
            w.Line($"var values = cache.Values({cacheLayer}, slots[t]);");
            w.Line("var scores = _scores.AsSpan(0, position + 1);");
            using (w.Block("for (int h = 0; h < heads; h++)"))
            {
                w.Line($"var query = {q}.Slice(t * {qCols} + h * headDim, headDim);");
                w.Line("int kvOffset = (h / group) * headDim;");
                w.Line($"for (int p = 0; p <= position; p++) scores[p] = {VectorMath}.Dot(query, keys.Slice(p * {kvCols} + kvOffset, headDim)) * scale;");
                w.Line($"{VectorMath}.Softmax(scores);");
                w.Line($"var result = {output}.Slice(t * {qCols} + h * headDim, headDim);");
                w.Line("result.Clear();");
                w.Line($"for (int p = 0; p <= position; p++) {VectorMath}.ScaleAdd(result, values.Slice(p * {kvCols} + kvOffset, headDim), scores[p]);");
            }
        }
    }

    private static string Short(string weight) => weight.Substring(weight.LastIndexOf('.') + 1);
}
