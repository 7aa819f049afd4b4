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
                w.Line("if (_scoresContext < cache.MaxContext || _gatherFloats < global::Kiln.Kernels.MatMul.KvBlocks.ScratchFloats(cache)) GrowScores(cache); // once per larger cache, never per step");
            }
            w.Line("global::System.ReadOnlySpan<int> positions = context.Positions;");
            w.Line("global::System.ReadOnlySpan<int> outputRows = context.OutputRows;");
            w.Line();
            w.Line("// Activations: views of the arena.");
            foreach (var buffer in plan.Buffers.Where(b => b.Slot >= 0))
                w.Line($"global::System.Span<float> {buffer.Name} = _arena.Slice({OffsetField(buffer)}, {Names.Dim(buffer.Rows)} * {Names.DimField(buffer.Cols)});");
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
                        w.Line("double cos = global::System.Math.Cos(angle), sin = global::System.Math.Sin(angle);");
                        w.Line($"_rope{i}Cos[t * _rope{i}Half + pair] = cos;");
                        w.Line($"_rope{i}Sin[t * _rope{i}Half + pair] = sin;");
                        w.Line($"int at = t * _rope{i}HeadDim + 2 * pair; // float copies laid out for two pairs at once: cos, cos and −sin, sin");
                        w.Line($"_rope{i}Cosines[at] = _rope{i}Cosines[at + 1] = (float)cos;");
                        w.Line($"_rope{i}SignedSines[at] = -(float)sin;");
                        w.Line($"_rope{i}SignedSines[at + 1] = (float)sin;");
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

}
