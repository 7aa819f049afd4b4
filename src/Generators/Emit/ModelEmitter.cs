using System.Collections.Generic;
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
    private const string Naming = "global::Kiln.Loading.ModelNaming";

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

        w.Line(model.Encoder
            ? "/// <summary>Values per output row (an embedding's width, or logits): the last dimension of the forward result.</summary>"
            : "/// <summary>Logits per output row: the last dimension of the forward result.</summary>");
        w.Line($"public int VocabSize => {Names.DimCode(plan.VocabDim, "this")};");
        w.Line();
        if (plan.KvLayers == Plan.CountedKvLayers)
        {
            w.Line("/// <summary>The KV cache's layers: those the file's layers attend with, counted at load.</summary>");
            w.Line($"private int {Plan.CountedKvLayers};");
            w.Line();
        }
        string kvLayers = plan.KvLayers == "1" ? "1" : "this." + plan.KvLayers;
        string kvDim = Names.DimCode(plan.KvDim, "this");
        // The first attention shapes the cache (as in the planner); its KV head count gives the head dimension.
        var attention = plan.Kernels.OfType<AttentionKernel>().FirstOrDefault();
        string headDim = attention is null ? "0" : $"{kvDim} / {Names.Scalar(attention.KvHeads, "this")}";
        if (plan.HasRecurrentLayers() && attention is null)
        {
            w.Line("/// <summary>None: the model has no attention layers; each sequence's memory is its recurrent state (StateShape).</summary>");
            w.Line("public global::Kiln.KvCacheShape KvShape => default;");
            w.Line();
            w.Line("/// <summary>Throws: the model has no attention layers, so no KV cache; create its recurrent state with StateShape.CreateCache.</summary>");
            w.Line($"public global::Kiln.KvCache CreateKvCache(int slots, int maxContext) => throw new global::System.NotSupportedException(\"{model.ClassName} has no attention layers: it keeps no KV cache; create its recurrent state with StateShape.CreateCache(slots).\");");
        }
        else if (model.Encoder)
        {
            w.Line("/// <summary>None: an encoder keeps no KV cache (a step holds whole sequences).</summary>");
            w.Line("public global::Kiln.KvCacheShape KvShape => default;");
            w.Line();
            w.Line("/// <summary>Throws: an encoder keeps no KV cache; its steps take a context without one (new AttentionContext(capacity)).</summary>");
            w.Line($"public global::Kiln.KvCache CreateKvCache(int slots, int maxContext) => throw new global::System.NotSupportedException(\"{model.ClassName} is an encoder: it keeps no KV cache; fill a new AttentionContext(capacity) with AddSequence.\");");
        }
        else
        {
            w.Line("/// <summary>The KV cache's geometry: one layer per attention layer, rows of the attention's k width, its head dimension.</summary>");
            w.Line(plan.KvLayers == Plan.CountedKvLayers
                ? $"public global::Kiln.KvCacheShape KvShape => {kvLayers} == 0 ? default : new global::Kiln.KvCacheShape({kvLayers}, {kvDim}, {headDim});"
                : $"public global::Kiln.KvCacheShape KvShape => new global::Kiln.KvCacheShape({kvLayers}, {kvDim}, {headDim});");
            w.Line();
            w.Line("/// <summary>A contiguous KV cache of <paramref name=\"slots\"/> sequences of up to <paramref name=\"maxContext\"/> positions.</summary>");
            w.Line("public global::Kiln.KvCache CreateKvCache(int slots, int maxContext) => KvShape.CreateContiguous(slots, maxContext);");
        }
        if (plan.HasRecurrentLayers()) EmitStateShape(w, plan);
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

    /// <summary>
    /// Per sequence: each LSTM layer's h and c, one row of its hidden size each; each GRU layer's h; each Mamba convolution's last K − 1
    /// inputs per channel; each selective scan's state per channel.
    /// </summary>
    private static void EmitStateShape(CodeWriter w, Plan plan)
    {
        w.Line();
        w.Line("/// <summary>The recurrent state per sequence: every recurrent layer's tensors (LSTM h and c; GRU h; Mamba's convolution inputs and scan state), float32.</summary>");
        w.Line("public global::Kiln.RecurrentStateShape StateShape");
        w.Open("");
        w.Open("get");
        w.Line("var tensors = new global::System.Collections.Generic.List<global::Kiln.StateTensorShape>();");
        foreach (var kernel in plan.Kernels)
        {
            ScalarExpr layerExpr;
            (string Name, string Rows, string Cols)[] lines;
            switch (kernel)
            {
                case LstmKernel lstm:
                    layerExpr = lstm.Layer;
                    string hidden = Names.DimCode(lstm.Hidden, "this");
                    lines = new[] { ("LstmHidden", "1", hidden), ("LstmCell", "1", hidden) };
                    break;
                case GruKernel gru:
                    layerExpr = gru.Layer;
                    lines = new[] { ("GruHidden", "1", Names.DimCode(gru.Hidden, "this")) };
                    break;
                case CausalConvKernel conv:
                    layerExpr = conv.Layer;
                    lines = new[] { ("ConvState", Names.DimCode(conv.Channels, "this"), $"{Names.DimCode(conv.Width, "this")} - 1") };
                    break;
                case SelectiveScanKernel scan:
                    layerExpr = scan.Layer;
                    lines = new[] { ("ScanState", Names.DimCode(scan.Channels, "this"), Names.DimCode(scan.StateSize, "this")) };
                    break;
                default:
                    continue;
            }
            var region = plan.Regions[kernel.Region];
            string layer = Names.Scalar(layerExpr, "this");
            if (region.IsLoop) w.Open($"for (int {Names.LayerIndex} = 0; {Names.LayerIndex} < this.{region.CountMember}; {Names.LayerIndex}++)");
            // A hybrid keeps state only for the layers whose branch runs the recurrence.
            if (kernel.Guard >= 0) w.Open($"if ({PlanEmitter.Condition(plan, kernel.Guard, "this")})");
            foreach (var (name, rows, cols) in lines)
                w.Line($"tensors.Add(new global::Kiln.StateTensorShape(global::Kiln.Ops.{name}, {layer}, {rows}, {cols}));");
            if (kernel.Guard >= 0) w.Close();
            if (region.IsLoop) w.Close();
        }
        w.Line("return new global::Kiln.RecurrentStateShape(tensors);");
        w.Close();
        w.Close();
    }

    private static void EmitLoad(CodeWriter w, Plan plan)
    {
        var model = plan.Model;
        bool huggingFace = model.Weights.Any(x => x.HuggingFaceName.Length > 0);
        w.Line($"/// <summary>Binds a model file: architecture \"{model.Architecture}\", hyperparameters, then every weight with its declared shape checked.</summary>");
        using (w.Block($"public static {model.ClassName} Load({File} file)"))
        {
            w.Line("if (file is null) throw new global::System.ArgumentNullException(nameof(file));");
            w.Line($"if (file.Architecture != {Names.Literal(model.Architecture)})");
            w.Line($"    throw new {LoadException}(file.Path, \"general.architecture\", null, $\"expected \\\"{model.Architecture}\\\" for {model.ClassName}, found \\\"{{file.Architecture}}\\\".\");");
            if (huggingFace)
            {
                w.Line("// The file names its keys and tensors as GGUF does, or as a Hugging Face checkpoint does; each [Hyper], [Weight]");
                w.Line("// and [Layers] declares both.");
                w.Line($"bool huggingFace = file.Naming == {Naming}.HuggingFace;");
            }
            else
            {
                w.Line($"if (file.Naming != {Naming}.Gguf)");
                w.Line($"    throw new {LoadException}(file.Path, \"tensor names\", null, $\"{{file.Naming}} names: {model.ClassName} declares only GGUF names (a [Weight] names its Hugging Face tensor with HuggingFace = \\\"...\\\").\");");
            }
            w.Line($"var model = new {model.ClassName}();");
            w.Line();
            w.Line("// Hyperparameters: an absent key keeps the member's initializer unless it is required.");
            w.Line("string key;");
            foreach (var hyper in model.Hypers.Where(h => !h.PerLayer)) EmitHyper(w, hyper, huggingFace);
            foreach (var hyper in model.Hypers.Where(h => h.PerLayer)) EmitPerLayerHyper(w, hyper, huggingFace);
            w.Line();

            var boundKeys = new System.Collections.Generic.HashSet<string>();
            var sparse = SparseLinearWeights(plan);
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
            w.Line("string name;");
            w.Open("try");
            foreach (var weight in model.Weights.Where(x => x.Owner.Length == 0))
                EmitWeight(w, model, weight, "model", "", huggingFace, boundKeys, sparse);

            foreach (var layers in model.Layers)
            {
                w.Line();
                w.Line($"if (model.{layers.CountMember} < 0) throw new {LoadException}(file.Path, \"{layers.CountMember}\", null, $\"negative layer count {{model.{layers.CountMember}}}.\");");
                w.Line($"model.{layers.Member} = new {layers.ClassName}[model.{layers.CountMember}];");
                using (w.Block($"for (int layer = 0; layer < model.{layers.CountMember}; layer++)"))
                {
                    string format = huggingFace
                        ? $"huggingFace ? {Names.Literal(layers.HuggingFacePrefix)} : {Names.Literal(layers.Prefix)}"
                        : Names.Literal(layers.Prefix);
                    w.Line($"string prefix = string.Format(global::System.Globalization.CultureInfo.InvariantCulture, {format}, layer);");
                    w.Line($"var block = new {layers.ClassName}();");
                    foreach (var weight in model.Weights.Where(x => x.Owner == layers.Member))
                        EmitWeight(w, model, weight, "block", "prefix + ", huggingFace, boundKeys, sparse);
                    w.Line($"model.{layers.Member}[layer] = block;");
                }
            }
            w.Close();
            using (w.Block("catch (global::System.ArithmeticException e)"))
                w.Line($"throw new {LoadException}(file.Path, \"hyperparameters\", null, $\"a derived dimension cannot be computed from them ({{e.Message}}).\", e);");
            w.Line($"global::Kiln.Loading.DefinitionChecks.RequireAllBound(file, bound, {Names.Literal(model.ClassName)});");
            EmitDefinitionChecks(w, plan, huggingFace);
            EmitOptionalWeightChecks(w, plan, huggingFace);
            if (plan.KvLayers == Plan.CountedKvLayers) EmitKvLayerCount(w, plan);
            w.Line("return model;");
        }
        w.Line();
    }

    /// <summary>
    /// One hyperparameter: read by its key in the file's naming, converted to the member's type; present but not a
    /// number (a string, an array) is the file's error, never a silent default. A key only one naming has is read
    /// only from files of that naming.
    /// </summary>
    private static void EmitHyper(CodeWriter w, HyperInfo hyper, bool huggingFace)
    {
        if (!huggingFace && hyper.Key.Length == 0) return; // only a Hugging Face config states it, and this definition binds none
        bool integer = hyper.Type is "int" or "long";
        string read = integer ? "TryGetInt" : "TryGetFloat";
        string type = integer ? "long" : "double";
        string local = Local(hyper.Member) + "Value";
        string convert = hyper.Type switch
        {
            "int" => $"KilnToInt(file, key, {local})",
            "float" => $"(float){local}",
            _ => local,
        };
        string? only = !huggingFace ? null
            : hyper.HuggingFaceKey.Length == 0 ? "!huggingFace"
            : hyper.Key.Length == 0 ? "huggingFace"
            : null;
        if (only is not null) w.Open($"if ({only})");
        w.Line(!huggingFace || hyper.HuggingFaceKey.Length == 0 ? $"key = {Names.Literal(hyper.Key)};"
            : hyper.Key.Length == 0 ? $"key = {Names.Literal(hyper.HuggingFaceKey)};"
            : $"key = huggingFace ? {Names.Literal(hyper.HuggingFaceKey)} : {Names.Literal(hyper.Key)};");
        w.Line($"if (file.{read}(key, out {type} {local})) model.{hyper.Member} = {convert};");
        w.Line($"else if (file.Metadata.ContainsKey(key)) throw new {LoadException}(file.Path, key, null, $\"is {{file.Metadata[key]}}, not {(integer ? "an integer" : "a number")}.\");");
        if (hyper.Required)
            w.Line($"else throw new {LoadException}(file.Path, key, null, \"required hyperparameter is missing.\");");
        if (only is not null) w.Close();
    }

    /// <summary>
    /// An optional layer weight must be there in every layer that takes a branch reading it: the file's per-layer
    /// values choose the branches, so this is known at load, and a missing tensor is named with its layer.
    /// </summary>
    private static void EmitOptionalWeightChecks(CodeWriter w, Plan plan, bool huggingFace)
    {
        foreach (var layers in plan.Model.Layers)
        {
            var uses = plan.OptionalWeights.Where(u => plan.Model.Weights.First(x => x.Key == u.Key).Owner == layers.Member).ToList();
            if (uses.Count == 0) continue;
            string prefix = huggingFace
                ? $"huggingFace ? {Names.Literal(layers.HuggingFacePrefix)} : {Names.Literal(layers.Prefix)}"
                : Names.Literal(layers.Prefix);
            w.Line("// Optional layer weights: each must be there in every layer whose branch reads it.");
            using (w.Block($"for (int {Names.LayerIndex} = 0; {Names.LayerIndex} < model.{layers.CountMember}; {Names.LayerIndex}++)"))
            {
                foreach (var use in uses)
                {
                    var weight = plan.Model.Weights.First(x => x.Key == use.Key);
                    string condition = string.Join(" || ", use.Guards.Select(g => PlanEmitter.Condition(plan, g, "model")));
                    string branches = string.Join(" or ", use.Guards.Select(g => g < 0 ? "every layer" : FusionReport.GuardText(plan, g)));
                    using (w.Block($"if (model.{layers.Member}[{Names.LayerIndex}].{weight.Member} is null && ({condition}))"))
                    {
                        w.Line($"name = string.Format(global::System.Globalization.CultureInfo.InvariantCulture, {prefix}, {Names.LayerIndex}) + {NameCode(weight, huggingFace, inParentheses: true)};");
                        w.Line($"throw new {LoadException}(file.Path, $\"tensor '{{name}}'\", null, $\"layer {{{Names.LayerIndex}}} lacks it, but takes the forward's branch that reads it (when {Escape(branches)}).\");");
                    }
                }
            }
        }
    }

    /// <summary>
    /// The KV cache holds the layers the file's layers attend with: each attention that runs (its branch taken) names a
    /// cache layer; the cache has one more than the largest. A negative one is the definition's mapping gone wrong.
    /// </summary>
    private static void EmitKvLayerCount(CodeWriter w, Plan plan)
    {
        w.Line("// The KV cache counts only the layers whose branch attends, each at the cache layer its attention names.");
        w.Line("int kvLayers = 0;");
        foreach (var attention in plan.Kernels.OfType<AttentionKernel>())
        {
            var region = plan.Regions[attention.Region];
            if (region.IsLoop) w.Open($"for (int {Names.LayerIndex} = 0; {Names.LayerIndex} < model.{region.CountMember}; {Names.LayerIndex}++)");
            using (w.Block($"if ({PlanEmitter.Condition(plan, attention.Guard, "model")})"))
            {
                w.Line($"int cacheLayer = {Names.Scalar(attention.Layer, "model")};");
                w.Line("if (cacheLayer < 0)");
                w.Line($"    throw new {LoadException}(file.Path, \"attention layers\", null, $\"{(region.IsLoop ? "layer {layer} " : "")}attends at cache layer {{cacheLayer}} ({Escape(attention.Layer.ToString())}); a cache layer is 0 or more.\");");
                w.Line("kvLayers = global::System.Math.Max(kvLayers, cacheLayer + 1);");
            }
            if (region.IsLoop) w.Close();
        }
        w.Line($"model.{Plan.CountedKvLayers} = kvLayers;");
    }

    /// <summary>Text for inside an interpolated C# string literal.</summary>
    private static string Escape(string text) => text.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("{", "{{").Replace("}", "}}");

    /// <summary>
    /// One per-layer hyperparameter (int[] or float[]), read once the layer count is known: an array of one value per
    /// layer, or a scalar every layer shares; another length is the file's error, naming the key.
    /// </summary>
    private static void EmitPerLayerHyper(CodeWriter w, HyperInfo hyper, bool huggingFace)
    {
        if (!huggingFace && hyper.Key.Length == 0) return;
        string key = !huggingFace || hyper.HuggingFaceKey.Length == 0 ? Names.Literal(hyper.Key)
            : hyper.Key.Length == 0 ? Names.Literal(hyper.HuggingFaceKey)
            : $"huggingFace ? {Names.Literal(hyper.HuggingFaceKey)} : {Names.Literal(hyper.Key)}";
        string read = hyper.Type == "int[]" ? "ReadInts" : "ReadFloats";
        w.Line($"model.{hyper.Member} = global::Kiln.Loading.PerLayerValues.{read}(file, {key}, global::System.Math.Max(0, model.{hyper.LayerCount}), model.{hyper.Member}, {(hyper.Required ? "true" : "false")});");
    }

    /// <summary>
    /// The keys that change the math, each as GGUF names it (after "{arch}.") and as a Hugging Face config does ("" where
    /// that naming has none): a file stating one the definition does not read is rejected, or, for a width the forward
    /// fixes, must agree with it.
    /// </summary>
    private static readonly (string Gguf, string HuggingFace)[] MathKeys =
    {
        ("attention.sliding_window", "sliding_window"),
        ("attention.sliding_window_pattern", "sliding_window_pattern"),
        ("attn_logit_softcapping", "attn_logit_softcapping"),
        ("final_logit_softcapping", "final_logit_softcapping"),
        ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
        ("attention.layer_norm_epsilon", "layer_norm_epsilon"),
        ("rope.freq_base", "rope_theta"),
        ("rope.freq_base_swa", "rope_local_base_freq"),
        ("rope.dimension_count", "partial_rotary_factor"),
        ("attention.key_length", "head_dim"),
        ("attention.value_length", ""),
        ("expert_count", "num_local_experts"),
        ("", "num_experts"),
        ("", "query_pre_attn_scalar"),
        ("", "layer_types"),
    };

    /// <summary>What the file states that changes the math is read by this definition, or agrees with its forward.</summary>
    private static void EmitDefinitionChecks(CodeWriter w, Plan plan, bool huggingFace)
    {
        var model = plan.Model;
        w.Line("// What the file states that changes the math must be read by this definition, or agree with what its forward uses.");
        if (!huggingFace)
        {
            EmitChecks(w, plan, huggingFace: false);
        }
        else
        {
            using (w.Block("if (huggingFace)")) EmitChecks(w, plan, huggingFace: true);
            using (w.Block("else")) EmitChecks(w, plan, huggingFace: false);
        }
        const string Checks = "global::Kiln.Loading.DefinitionChecks";
        string name = Names.Literal(model.ClassName);
        w.Line($"{Checks}.RejectRopeScaling(file, {Names.Literal(model.Architecture)}, {name});");
        if (model.Tokenizer.Length > 0) w.Line($"{Checks}.RequireTokenizer(file, {Names.Literal(model.Tokenizer)}, {name});");
    }

    private static void EmitChecks(CodeWriter w, Plan plan, bool huggingFace)
    {
        var model = plan.Model;
        const string Checks = "global::Kiln.Loading.DefinitionChecks";
        var bound = new System.Collections.Generic.HashSet<string>(model.Hypers.Select(h => huggingFace ? h.HuggingFaceKey : h.Key));
        string name = Names.Literal(model.ClassName);
        var rope = plan.RopeTables.FirstOrDefault();
        var attention = plan.Kernels.OfType<AttentionKernel>().FirstOrDefault();
        foreach (var (gguf, hf) in MathKeys)
        {
            string key = huggingFace ? hf : gguf.Length == 0 ? "" : model.Architecture + "." + gguf;
            if (key.Length == 0 || bound.Contains(key)) continue;
            if (gguf == "rope.dimension_count" && rope is not null)
            {
                w.Line(huggingFace
                    ? $"{Checks}.RequireRotaryFactorAgrees(file, {Names.Literal(key)}, {rope.Rotary("model")}, {rope.HeadDim.Render("model", "0")}, {name});"
                    : $"{Checks}.RequireAgrees(file, {Names.Literal(key)}, {rope.Rotary("model")}, {name}, \"its rope's rotary dimensions\");");
            }
            else if (gguf is "attention.key_length" or "attention.value_length" && attention is not null)
            {
                w.Line($"{Checks}.RequireAgrees(file, {Names.Literal(key)}, model.KvShape.HeadDim, {name}, \"its attention's head dimension\");");
            }
            else
            {
                w.Line($"{Checks}.RequireRead(file, {Names.Literal(key)}, {name});");
            }
        }
    }

    /// <summary>The [Sparse] (the weight's own, else the model's) of each weight a sparse matmul packs.</summary>
    private static System.Collections.Generic.Dictionary<string, SparseInfo> SparseLinearWeights(Plan plan)
    {
        var sparse = new System.Collections.Generic.Dictionary<string, SparseInfo>();
        foreach (var matmul in plan.Kernels.OfType<MatMulKernel>().Where(m => m.Sparsity != "None"))
            foreach (var weight in matmul.Segments.SelectMany(s => s.Weights))
            {
                var info = plan.Model.Weights.FirstOrDefault(x => x.Key == weight.Key)?.Sparse ?? plan.Model.DefaultSparse;
                if (info is not null) sparse[weight.Key] = info;
            }
        return sparse;
    }

    /// <summary>
    /// One weight: its name in the file's naming, loaded (or its tie), converted when the definition declares how a
    /// Hugging Face checkpoint stores it, then its rank and every dimension checked, and a sparse Linear weight's
    /// pattern checked (or pruned into it).
    /// </summary>
    private static void EmitWeight(CodeWriter w, ModelInfo model, WeightInfo weight, string target, string prefix, bool huggingFace,
        System.Collections.Generic.HashSet<string> bound, System.Collections.Generic.Dictionary<string, SparseInfo> sparse)
    {
        w.Line($"name = {prefix}{NameCode(weight, huggingFace, inParentheses: prefix.Length > 0)};");
        // An optional weight absent from this layer stays null (checked against the branches the layer takes, below).
        if (weight.Optional) w.Open("if (file.Tensors.ContainsKey(name))");
        string load;
        if (weight.TiedTo is null) load = "KilnLoad(file, name, bound)";
        else
        {
            var tied = model.Weights.FirstOrDefault(x => x.Owner == weight.Owner && x.Name == weight.TiedTo);
            string fallback;
            if (tied is not null && bound.Contains(tied.Key)) fallback = $"{target}.{tied.Member}";
            else if (tied is not null) fallback = $"KilnLoad(file, {prefix}{NameCode(tied, huggingFace, inParentheses: prefix.Length > 0)}, bound)";
            else fallback = $"KilnLoad(file, {prefix}{Names.Literal(weight.TiedTo)}, bound)";
            load = $"file.Tensors.ContainsKey(name) ? KilnLoad(file, name, bound) : {fallback}";
        }
        string member = $"{target}.{weight.Member}";
        w.Line($"{member} = {load};");
        if (huggingFace && weight.Conversion.Length > 0)
        {
            string convert = $"global::Kiln.Loading.HuggingFaceConversions.{weight.Conversion}(file, name, {member}"
                + (weight.HeadSize.Length > 0 ? $", {Names.DimCode(weight.HeadSize, "model")})" : ")");
            string when = weight.TiedTo is null ? "huggingFace" : "huggingFace && file.Tensors.ContainsKey(name)";
            w.Line($"if ({when}) {member} = {convert};");
        }
        string declared = "[" + string.Join(", ", weight.Dims) + "]";
        w.Line($"KilnCheckRank(file, name, {member}, {Names.Literal(declared)}, {weight.Dims.Count});");
        for (int d = 0; d < weight.Dims.Count; d++)
        {
            string dim = weight.Dims[d];
            if (!model.FreeDims.Contains(dim)) continue;
            w.Line($"if (!{Local(dim)}Bound) {{ model.{dim} = {member}.Shape[{d}]; {Local(dim)}Bound = true; }}");
        }
        string expected = string.Join(", ", weight.Dims.Select(d => Names.DimCode(d, "model")));
        w.Line($"KilnCheckShape(file, name, {member}, {Names.Literal(declared)}, {expected});");
        if (sparse.TryGetValue(weight.Key, out var pattern))
        {
            // [Sparse]: the eager forward and the plan compute with the same zeros, checked or pruned here.
            string value = $"global::Kiln.SparsePattern.{pattern.Pattern}";
            if (pattern.Prune)
                w.Line($"{member} = global::Kiln.Loading.SparseWeights.Prune({member}, {value}, {pattern.KeepFraction.ToString("R", System.Globalization.CultureInfo.InvariantCulture)});");
            else
                w.Line($"global::Kiln.Loading.SparseWeights.Check(file.Path, name, {member}, {value});");
        }
        if (weight.Optional) w.Close();
        bound.Add(weight.Key);
    }

    /// <summary>A weight's name in the file's naming: the GGUF literal, or a choice between it and the Hugging Face one.</summary>
    private static string NameCode(WeightInfo weight, bool huggingFace, bool inParentheses)
    {
        if (!huggingFace) return Names.Literal(weight.Name);
        string choice = $"huggingFace ? {Names.Literal(weight.HuggingFaceName)} : {Names.Literal(weight.Name)}";
        return inParentheses ? "(" + choice + ")" : choice;
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
