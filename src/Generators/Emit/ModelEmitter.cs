using System.Linq;
using Kiln.Generators.Passes;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Emit;

/// <summary>
/// Emits the model half of the generated file: free shape symbols, Load (hyperparameters and weights bound by
/// generated code, no reflection), VocabSize, CreateKvCache, ForwardEager and Compile.
/// </summary>
internal static class ModelEmitter
{
    private const string File = "global::Kiln.Loading.ModelFile";
    private const string LoadException = "global::Kiln.Loading.ModelLoadException";
    private const string Tensor = "global::Kiln.Tensor";

    public static void Emit(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        foreach (var free in model.FreeDims)
        {
            w.Line($"/// <summary>Shape symbol \"{free}\": bound at load from the first weight that declares it, checked on every other.</summary>");
            w.Line($"public int {free} {{ get; private set; }}");
            w.Line();
        }

        EmitLoad(w, plan);

        w.Line("/// <summary>Logits per output row: the last dimension of the forward result.</summary>");
        w.Line($"public int VocabSize => {Names.DimCode(plan.VocabDim, "this")};");
        w.Line();
        string kvLayers = plan.KvLayers == "1" ? "1" : "this." + plan.KvLayers;
        string kvDim = Names.DimCode(plan.KvDim, "this");
        // The first attention shapes the cache (as in the planner); its KV head count gives the head dimension.
        var attention = plan.Kernels.OfType<AttentionKernel>().FirstOrDefault();
        string headDim = attention is null ? "0" : $"{kvDim} / {Names.Scalar(attention.KvHeads, "this")}";
        w.Line("/// <summary>The KV cache's geometry: one layer per attention layer, rows of the attention's k width, its head dimension.</summary>");
        w.Line($"public global::Kiln.KvCacheShape KvShape => new global::Kiln.KvCacheShape({kvLayers}, {kvDim}, {headDim});");
        w.Line();
        w.Line("/// <summary>A contiguous KV cache of <paramref name=\"slots\"/> sequences of up to <paramref name=\"maxContext\"/> positions.</summary>");
        w.Line("public global::Kiln.KvCache CreateKvCache(int slots, int maxContext) => KvShape.CreateContiguous(slots, maxContext);");
        w.Line();
        w.Line($"{Tensor} global::Kiln.IKilnModel.ForwardEager(global::System.ReadOnlySpan<int> tokens, global::Kiln.AttentionContext context) => {model.ForwardName}(tokens, context);");
        w.Line();
        w.Line("/// <summary>Packs the bound weights into the kernel layouts and allocates the arena for steps of up to <paramref name=\"maxTokensPerStep\"/> tokens, on every processor.</summary>");
        w.Line("public global::Kiln.ICompiledPlan Compile(int maxTokensPerStep) => new CompiledPlan(this, new global::Kiln.PlanOptions(maxTokensPerStep));");
        w.Line();
        w.Line("/// <summary>Packs the bound weights into the kernel layouts, allocates the arena and starts the worker pool as <paramref name=\"options\"/> say.</summary>");
        w.Line("public global::Kiln.ICompiledPlan Compile(global::Kiln.PlanOptions options) => new CompiledPlan(this, options);");
        w.Line();
        EmitHelpers(w);
    }

    private static void EmitLoad(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        w.Line($"/// <summary>Binds a model file: architecture \"{model.Architecture}\", hyperparameters, then every weight with its declared shape checked.</summary>");
        using (w.Block($"public static {model.ClassName} Load({File} file)"))
        {
            w.Line("if (file is null) throw new global::System.ArgumentNullException(nameof(file));");
            w.Line($"if (file.Architecture != {Names.Literal(model.Architecture)})");
            w.Line($"    throw new {LoadException}(file.Path, \"general.architecture\", null, $\"expected \\\"{model.Architecture}\\\" for {model.ClassName}, found \\\"{{file.Architecture}}\\\".\");");
            w.Line($"var model = new {model.ClassName}();");
            w.Line();
            w.Line("// Hyperparameters: an absent key keeps the member's initializer unless it is required.");
            foreach (var hyper in model.Hypers)
            {
                bool integer = hyper.Type is "int" or "long";
                string read = integer ? "TryGetInt" : "TryGetFloat";
                string type = integer ? "long" : "double";
                string local = Local(hyper.Member) + "Value";
                string convert = hyper.Type switch
                {
                    "int" => $"KilnToInt(file, {Names.Literal(hyper.Key)}, {local})",
                    "float" => $"(float){local}",
                    _ => local,
                };
                w.Line($"if (file.{read}({Names.Literal(hyper.Key)}, out {type} {local})) model.{hyper.Member} = {convert};");
                // Present but unreadable (a string, an array) is the file's error, never a silent default.
                w.Line($"else if (file.Metadata.ContainsKey({Names.Literal(hyper.Key)})) throw new {LoadException}(file.Path, {Names.Literal(hyper.Key)}, null, $\"is {{file.Metadata[{Names.Literal(hyper.Key)}]}}, not {(integer ? "an integer" : "a number")}.\");");
                if (hyper.Required)
                    w.Line($"else throw new {LoadException}(file.Path, {Names.Literal(hyper.Key)}, null, \"required hyperparameter is missing.\");");
            }
            w.Line();

            var boundKeys = new System.Collections.Generic.HashSet<string>();
            if (model.FreeDims.Count > 0)
            {
                w.Line("// Free shape symbols are bound by the first weight that declares them.");
                foreach (var free in model.FreeDims) w.Line($"bool {Local(free)}Bound = false;");
                w.Line();
            }

            w.Line("// Every tensor the file holds must be bound: one this definition does not read would be silently ignored.");
            w.Line("var bound = new global::System.Collections.Generic.HashSet<string>();");
            w.Line("// Weights, shapes checked against the declared dimensions. Derived dimensions are evaluated here, so a");
            w.Line("// hyperparameter that breaks their arithmetic (a zero head count, say) is reported as the file's fault.");
            w.Open("try");
            foreach (var weight in model.Weights.Where(x => x.Owner.Length == 0))
                EmitWeight(w, model, weight, "model", "", boundKeys);

            foreach (var layers in model.Layers)
            {
                w.Line();
                w.Line($"if (model.{layers.CountMember} < 0) throw new {LoadException}(file.Path, \"{layers.CountMember}\", null, $\"negative layer count {{model.{layers.CountMember}}}.\");");
                w.Line($"model.{layers.Member} = new {layers.ClassName}[model.{layers.CountMember}];");
                using (w.Block($"for (int layer = 0; layer < model.{layers.CountMember}; layer++)"))
                {
                    w.Line($"string prefix = string.Format(global::System.Globalization.CultureInfo.InvariantCulture, {Names.Literal(layers.Prefix)}, layer);");
                    w.Line($"var block = new {layers.ClassName}();");
                    foreach (var weight in model.Weights.Where(x => x.Owner == layers.Member))
                        EmitWeight(w, model, weight, "block", "prefix + ", boundKeys);
                    w.Line($"model.{layers.Member}[layer] = block;");
                }
            }
            w.Close();
            using (w.Block("catch (global::System.ArithmeticException e)"))
                w.Line($"throw new {LoadException}(file.Path, \"hyperparameters\", null, $\"a derived dimension cannot be computed from them ({{e.Message}}).\", e);");
            w.Line($"global::Kiln.Loading.DefinitionChecks.RequireAllBound(file, bound, {Names.Literal(model.ClassName)});");
            EmitDefinitionChecks(w, plan);
            w.Line("return model;");
        }
        w.Line();
    }

    /// <summary>What the file states that changes the math is read by this definition, or agrees with its forward.</summary>
    private static void EmitDefinitionChecks(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        const string Checks = "global::Kiln.Loading.DefinitionChecks";
        w.Line("// What the file states that changes the math must be read by this definition, or agree with what its forward uses.");
        var bound = new System.Collections.Generic.HashSet<string>(model.Hypers.Select(h => h.Key));
        string name = Names.Literal(model.ClassName);
        var rope = plan.RopeTables.FirstOrDefault();
        var attention = plan.Kernels.OfType<AttentionKernel>().FirstOrDefault();
        foreach (string suffix in new[]
        {
            "attention.sliding_window", "attention.sliding_window_pattern", "attn_logit_softcapping", "final_logit_softcapping",
            "attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.freq_base", "rope.freq_base_swa", "rope.dimension_count",
            "attention.key_length", "attention.value_length", "expert_count",
        })
        {
            string key = model.Architecture + "." + suffix;
            if (bound.Contains(key)) continue;
            if (suffix == "rope.dimension_count" && rope is not null)
                w.Line($"{Checks}.RequireAgrees(file, {Names.Literal(key)}, {rope.Rotary("model")}, {name}, \"its rope's rotary dimensions\");");
            else if (suffix is "attention.key_length" or "attention.value_length" && attention is not null)
                w.Line($"{Checks}.RequireAgrees(file, {Names.Literal(key)}, model.KvShape.HeadDim, {name}, \"its attention's head dimension\");");
            else
                w.Line($"{Checks}.RequireRead(file, {Names.Literal(key)}, {name});");
        }
        w.Line($"{Checks}.RejectRopeScaling(file, {Names.Literal(model.Architecture)}, {name});");
        if (model.Tokenizer.Length > 0) w.Line($"{Checks}.RequireTokenizer(file, {Names.Literal(model.Tokenizer)}, {name});");
    }

    private static void EmitWeight(CodeWriter w, ModelInfo model, WeightInfo weight, string target, string prefix, System.Collections.Generic.HashSet<string> bound)
    {
        string name = prefix + Names.Literal(weight.Name);
        string load;
        if (weight.TiedTo is null) load = $"KilnLoad(file, {name}, bound)";
        else
        {
            var tied = model.Weights.FirstOrDefault(x => x.Owner == weight.Owner && x.Name == weight.TiedTo && bound.Contains(x.Key));
            string fallback = tied is not null ? $"{target}.{tied.Member}" : $"KilnLoad(file, {prefix}{Names.Literal(weight.TiedTo)}, bound)";
            load = $"file.Tensors.ContainsKey({name}) ? KilnLoad(file, {name}, bound) : {fallback}";
        }
        string declared = "[" + string.Join(", ", weight.Dims) + "]";
        w.Line($"{target}.{weight.Member} = {load};");
        w.Line($"KilnCheckRank(file, {name}, {target}.{weight.Member}, {Names.Literal(declared)}, {weight.Dims.Count});");
        for (int d = 0; d < weight.Dims.Count; d++)
        {
            string dim = weight.Dims[d];
            if (!model.FreeDims.Contains(dim)) continue;
            w.Line($"if (!{Local(dim)}Bound) {{ model.{dim} = {target}.{weight.Member}.Shape[{d}]; {Local(dim)}Bound = true; }}");
        }
        string expected = string.Join(", ", weight.Dims.Select(d => Names.DimCode(d, "model")));
        w.Line($"KilnCheckShape(file, {name}, {target}.{weight.Member}, {Names.Literal(declared)}, {expected});");
        bound.Add(weight.Key);
    }

    private static string Local(string member) => char.ToLowerInvariant(member[0]) + member.Substring(1);

    private static void EmitHelpers(CodeWriter w)
    {
        using (w.Block($"private static {Tensor} KilnLoad({File} file, string name, global::System.Collections.Generic.HashSet<string> bound)"))
        {
            w.Line("bound.Add(name);");
            w.Line("return file.LoadTensor(name);");
        }
        w.Line();
        using (w.Block($"private static int KilnToInt({File} file, string key, long value)"))
        {
            w.Line("if (value < int.MinValue || value > int.MaxValue)");
            w.Line($"    throw new {LoadException}(file.Path, key, null, $\"value {{value}} does not fit a 32-bit integer.\");");
            w.Line("return (int)value;");
        }
        w.Line();
        using (w.Block($"private static void KilnCheckRank({File} file, string name, {Tensor} tensor, string declared, int rank)"))
        {
            w.Line("if (tensor.Rank != rank)");
            w.Line($"    throw new {LoadException}(file.Path, $\"tensor '{{name}}'\", null, $\"expected shape {{declared}}, found [{{string.Join(\", \", tensor.Shape)}}].\");");
        }
        w.Line();
        using (w.Block($"private static void KilnCheckShape({File} file, string name, {Tensor} tensor, string declared, params int[] expected)"))
        {
            using (w.Block("for (int i = 0; i < expected.Length; i++)"))
            {
                w.Line("if (tensor.Shape[i] != expected[i])");
                w.Line($"    throw new {LoadException}(file.Path, $\"tensor '{{name}}'\", null, $\"expected shape {{declared}} = [{{string.Join(\", \", expected)}}], found [{{string.Join(\", \", tensor.Shape)}}].\");");
            }
        }
        w.Line();
    }
}
