// Kiln fusion report for Phi3 (architecture "phi3"), CPU kernels on a worker pool.
// Kernels, in step order:
//   [1] elementwise: x ← TokenEmbedding[tokens], one parallel vector loop
//   for each of the LayerCount layers (Layers[layer]):
//     [2] matmul: x·[Wqkv|Wqkv[Dim..]|Wqkv[Dim+KvDim..]]ᵀ with RmsNorm(AttnNorm) fused into the input preparation → q ← rope_neox([Wqkv]) epilogue, k ← rope_neox([Wqkv]) epilogue, v
//     [3] attention: attention ← Attention(q, k, v): k/v rows written to the KV cache (each token's row of its sequence's blocks, in the cache's storage), then causal GQA (sliding window Window) in parallel over (token, chunk of KV heads) items, each reading its sequence's cached rows block by block, once for all its heads (dots, softmax, weighted sum)
//     [4] matmul: attention·[Wo]ᵀ → x2 ← x + [Wo] epilogue
//     [5] matmul: x2·[GateUp⋈GateUp[Hidden..]]ᵀ with RmsNorm(FfnNorm) fused into the input preparation → glu ← silu([GateUp])·[GateUp] epilogue
//     [6] matmul: glu·[Down]ᵀ → x ← x2 + [Down] epilogue
//   end of layer loop
//   [7] matmul: (rows(x))·[Output]ᵀ with RmsNorm(OutputNorm) fused into the input preparation (the input chain computed per row while preparing) → logits
// Elementwise ops: every one fused — into a matmul's input preparation or tile epilogue, or into one of 1 row loop(s) (parallel, vectorized) that stand where no matmul can take them: x, carried into the layer loop.
// Weight layouts (packed once when the plan is compiled, in groups of 4 rows; a segment whose rows are not a multiple of 4 is padded with zero rows):
//   rule "as stored" (a weight without [Quantize]), chosen per matrix when the plan is compiled, from the file's types: F32 and F16 → F32x16 panels (F16 widened exactly); BF16 → BF16x4 (widened exactly in the kernel); Q8_0 → Q8_0x8 interleaved (the file's quants and fp16 scales copied); Q4_0 → Q4_0x8 interleaved (the file's nibbles and fp16 scales copied); Q6_K, Q5_K, Q4_K → Q6_Kx8, Q5_Kx8, Q4_Kx8 interleaved (the file's quants, scales, mins and fp16 super-block scales copied); any other type (Q5_0, Q2_K, …) → Q8_0x8 (dequantized, requantized); weights of different types in one matmul → the most precise of their layouts, except that K-quants of different types keep their own, one segment each. Work goes in groups of 4 rows and every tile reads each weight once for several tokens: F32x16 holds panels of 16 rows, element k of the 16 side by side (outer products: one load of 16 rows times one broadcast activation, no reductions); BF16x4 holds 16-element chunks of the 4 rows in turn (the kernel streams a group front to back); the quantized layouts store two groups together, 8 rows 4 bytes at a time (one multiply-add against 4 broadcast activations covers all 8 rows, each row's sum complete in its own lane).
//   Wqkv, Wqkv[Dim..], Wqkv[Dim+KvDim..] → _wqkv[layer] [Dim+KvDim+KvDim, Dim], segments stacked: as stored (the rule above); one horizontal matmul prepares its input once and reads it for all of them; a fused weight is split by rows when packed (its slices cost nothing at run time).
//   Wo → _wo[layer] [Dim, Dim], one segment: as stored (the rule above).
//   GateUp, GateUp[Hidden..] → _gateUp[layer] [2*Hidden, Dim], pair rows interleaved (a₀, b₀, a₁, b₁, …): as stored (the rule above); each adjacent row pair meets in one tile, so the epilogue combines both sums; a fused weight is split by rows when packed (its slices cost nothing at run time).
//   Down → _down[layer] [Dim, Hidden], one segment: as stored (the rule above).
//   Output → _output [Vocab, Dim], one segment: as stored (the rule above).
//   PlanOptions.Sparsity, when set, packs every matrix laid out as stored or Q8_0 in that sparse pattern instead (None: dense), for one plan.
//   TokenEmbedding → as stored in the file (memory-mapped): each gathered row decoded by itself, by token.
// Arena (one float buffer; each slot holds maxTokensPerStep rows of its widest buffer):
//   slot 0: x [T, Dim]
//   slot 1: q [T, Dim], x2 [T, Dim]
//   slot 2: k [T, KvDim], glu [T, Hidden]
//   slot 3: v [T, KvDim]
//   slot 4: attention [T, Dim]
// Matmul inputs: prepared once per matmul into one scratch, sized for the widest input: float rows for the F32/BF16 layouts;
//   for Q8_0/Q4_0, Q8 activations (per 32 values a scale d = max|x|/127, kept in fp16, and int8 q = round(x/d): GGML's rule),
//   with 8·Σq per block for Q4_0's −8 (the kernels broadcast 4 quants at a time to 8 rows); for the K-quants, Q8_K activations (per 256 values
//   iscale = −127 / the value of largest magnitude, q = round(iscale·x) to nearest even, d = 1/iscale in float: GGML's rule, with sums of 16
//   and 32 quants for the mins and Q6_K's −32). A fused norm computes its statistics per token once
//   (in double) and writes or quantizes the normalized row in the same pass (its weight cannot fold into quantized columns
//   without requantizing them, and folding it into float columns would change their rounding: the packed weights stay exactly as stored).
// Loop bodies (epilogues, input chains, elementwise loops) are generated from the forward method's ops at every width:
//   Vector512, Vector256, Vector128 (tiles) and scalar; activations are composed from e^x, tanh, erf and ln (Kiln.Kernels.Elementwise.Lanes).
// Rope: cos/sin per token and pair computed once per step in double (as the eager op), shared by every layer.
// Attention scratch: per chunk of work items, every head's scores over the KV cache's MaxContext (and one block's rows when the cache stores int8), grown when a larger cache is first seen.
// Threads: one worker pool (PlanOptions.Threads). A matmul splits its 4-row groups over the threads, each tile (64 rows × 6 tokens
//   for F32, 4 rows × 4 tokens for BF16, 8 rows × 8 tokens for the quantized layouts) going through its epilogue while in registers; F32 with many tokens
//   on several threads splits its tokens too, in items of 64 rows × a block of tokens (GemmBlocks); attention splits (token, KV-head chunk) items;
//   elementwise loops split rows. Every output is computed by one thread in a fixed order, so results do not depend on the thread count.
// <auto-generated/> by Kiln.Generators from the [Model] class Kiln.Models.Phi3.
#nullable enable
#pragma warning disable CS1591, CS0162

namespace Kiln.Models
{
    partial class Phi3 : global::Kiln.IKilnModel
    {
        /// <summary>Shape symbol "Vocab": bound at load from the first weight that declares it, checked on every other.</summary>
        public int Vocab { get; private set; }

        /// <summary>Binds a model file: architecture "phi3", hyperparameters, then every weight with its declared shape checked.</summary>
        public static Phi3 Load(global::Kiln.Loading.ModelFile file)
        {
            if (file is null) throw new global::System.ArgumentNullException(nameof(file));
            if (file.Architecture != "phi3")
                throw new global::Kiln.Loading.ModelLoadException(file.Path, "general.architecture", null, $"expected \"phi3\" for Phi3, found \"{file.Architecture}\".");
            // The file names its keys and tensors as GGUF does, or as a Hugging Face checkpoint does; each [Hyper], [Weight]
            // and [Layers] declares both.
            bool huggingFace = file.Naming == global::Kiln.Loading.ModelNaming.HuggingFace;
            var model = new Phi3();

            // Hyperparameters: an absent key keeps the member's initializer unless it is required.
            string key;
            key = huggingFace ? "hidden_size" : "phi3.embedding_length";
            if (file.TryGetInt(key, out long dimValue)) model.Dim = KilnToInt(file, key, dimValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "intermediate_size" : "phi3.feed_forward_length";
            if (file.TryGetInt(key, out long hiddenValue)) model.Hidden = KilnToInt(file, key, hiddenValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "num_hidden_layers" : "phi3.block_count";
            if (file.TryGetInt(key, out long layerCountValue)) model.LayerCount = KilnToInt(file, key, layerCountValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "num_attention_heads" : "phi3.attention.head_count";
            if (file.TryGetInt(key, out long headsValue)) model.Heads = KilnToInt(file, key, headsValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "num_key_value_heads" : "phi3.attention.head_count_kv";
            if (file.TryGetInt(key, out long kvHeadsValue)) model.KvHeads = KilnToInt(file, key, kvHeadsValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            key = huggingFace ? "rms_norm_eps" : "phi3.attention.layer_norm_rms_epsilon";
            if (file.TryGetFloat(key, out double epsValue)) model.Eps = (float)epsValue;
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not a number.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "rope_theta" : "phi3.rope.freq_base";
            if (file.TryGetFloat(key, out double ropeBaseValue)) model.RopeBase = (float)ropeBaseValue;
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not a number.");
            if (!huggingFace)
            {
                key = "phi3.rope.dimension_count";
                if (file.TryGetInt(key, out long ropeDimsValue)) model.RopeDims = KilnToInt(file, key, ropeDimsValue);
                else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            }
            if (huggingFace)
            {
                key = "partial_rotary_factor";
                if (file.TryGetFloat(key, out double rotaryFractionValue)) model.RotaryFraction = rotaryFractionValue;
                else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not a number.");
            }
            key = huggingFace ? "sliding_window" : "phi3.attention.sliding_window";
            if (file.TryGetInt(key, out long windowValue)) model.Window = KilnToInt(file, key, windowValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            key = huggingFace ? "max_position_embeddings" : "phi3.context_length";
            if (file.TryGetInt(key, out long contextValue)) model.Context = KilnToInt(file, key, contextValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");

            // Free shape symbols are bound by the first weight that declares them.
            bool vocabBound = false;

            // Every tensor the file holds must be bound: one this definition does not read would be silently ignored.
            var bound = new global::System.Collections.Generic.HashSet<string>();
            // Weights, shapes checked against the declared dimensions. Derived dimensions are evaluated here, so a
            // hyperparameter that breaks their arithmetic (a zero head count, say) is reported as the file's fault.
            string name;
            try
            {
                name = huggingFace ? "model.embed_tokens.weight" : "token_embd.weight";
                model.TokenEmbedding = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.TokenEmbedding, "[Vocab, Dim]", 2);
                if (!vocabBound) { model.Vocab = model.TokenEmbedding.Shape[0]; vocabBound = true; }
                KilnCheckShape(file, name, model.TokenEmbedding, "[Vocab, Dim]", model.Vocab, model.Dim);
                name = huggingFace ? "model.norm.weight" : "output_norm.weight";
                model.OutputNorm = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.OutputNorm, "[Dim]", 1);
                KilnCheckShape(file, name, model.OutputNorm, "[Dim]", model.Dim);
                name = huggingFace ? "lm_head.weight" : "output.weight";
                model.Output = file.Tensors.ContainsKey(name) ? KilnLoad(file, name, bound) : model.TokenEmbedding;
                KilnCheckRank(file, name, model.Output, "[Vocab, Dim]", 2);
                if (!vocabBound) { model.Vocab = model.Output.Shape[0]; vocabBound = true; }
                KilnCheckShape(file, name, model.Output, "[Vocab, Dim]", model.Vocab, model.Dim);

                if (model.LayerCount < 0) throw new global::Kiln.Loading.ModelLoadException(file.Path, "LayerCount", null, $"negative layer count {model.LayerCount}.");
                model.Layers = new Block[model.LayerCount];
                for (int layer = 0; layer < model.LayerCount; layer++)
                {
                    string prefix = string.Format(global::System.Globalization.CultureInfo.InvariantCulture, huggingFace ? "model.layers.{0}." : "blk.{0}.", layer);
                    var block = new Block();
                    name = prefix + (huggingFace ? "input_layernorm.weight" : "attn_norm.weight");
                    block.AttnNorm = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.AttnNorm, "[Dim]", 1);
                    KilnCheckShape(file, name, block.AttnNorm, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "self_attn.qkv_proj.weight" : "attn_qkv.weight");
                    block.Wqkv = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Wqkv, "[QkvDim, Dim]", 2);
                    KilnCheckShape(file, name, block.Wqkv, "[QkvDim, Dim]", model.QkvDim, model.Dim);
                    name = prefix + (huggingFace ? "self_attn.o_proj.weight" : "attn_output.weight");
                    block.Wo = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Wo, "[Dim, Dim]", 2);
                    KilnCheckShape(file, name, block.Wo, "[Dim, Dim]", model.Dim, model.Dim);
                    name = prefix + (huggingFace ? "post_attention_layernorm.weight" : "ffn_norm.weight");
                    block.FfnNorm = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.FfnNorm, "[Dim]", 1);
                    KilnCheckShape(file, name, block.FfnNorm, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "mlp.gate_up_proj.weight" : "ffn_up.weight");
                    block.GateUp = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.GateUp, "[2*Hidden, Dim]", 2);
                    KilnCheckShape(file, name, block.GateUp, "[2*Hidden, Dim]", 2 * model.Hidden, model.Dim);
                    name = prefix + (huggingFace ? "mlp.down_proj.weight" : "ffn_down.weight");
                    block.Down = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Down, "[Dim, Hidden]", 2);
                    KilnCheckShape(file, name, block.Down, "[Dim, Hidden]", model.Dim, model.Hidden);
                    model.Layers[layer] = block;
                }
            }
            catch (global::System.ArithmeticException e)
            {
                throw new global::Kiln.Loading.ModelLoadException(file.Path, "hyperparameters", null, $"a derived dimension cannot be computed from them ({e.Message}).", e);
            }
            global::Kiln.Loading.DefinitionChecks.RequireAllBound(file, bound, "Phi3");
            // What the file states that changes the math must be read by this definition, or agree with what its forward uses.
            if (huggingFace)
            {
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "sliding_window_pattern", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "attn_logit_softcapping", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "final_logit_softcapping", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "layer_norm_epsilon", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "rope_local_base_freq", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireAgrees(file, "head_dim", model.KvShape.HeadDim, "Phi3", "its attention's head dimension");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "num_local_experts", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "num_experts", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "query_pre_attn_scalar", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "layer_types", "Phi3");
            }
            else
            {
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "phi3.attention.sliding_window_pattern", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "phi3.attn_logit_softcapping", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "phi3.final_logit_softcapping", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "phi3.attention.layer_norm_epsilon", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "phi3.rope.freq_base_swa", "Phi3");
                global::Kiln.Loading.DefinitionChecks.RequireAgrees(file, "phi3.attention.key_length", model.KvShape.HeadDim, "Phi3", "its attention's head dimension");
                global::Kiln.Loading.DefinitionChecks.RequireAgrees(file, "phi3.attention.value_length", model.KvShape.HeadDim, "Phi3", "its attention's head dimension");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "phi3.expert_count", "Phi3");
            }
            global::Kiln.Loading.DefinitionChecks.RejectRopeScaling(file, "phi3", "Phi3");
            global::Kiln.Loading.DefinitionChecks.RequireTokenizer(file, "llama", "Phi3");
            return model;
        }

        /// <summary>Logits per output row: the last dimension of the forward result.</summary>
        public int VocabSize => this.Vocab;

        /// <summary>The KV cache's geometry: one layer per attention layer, rows of the attention's k width, its head dimension.</summary>
        public global::Kiln.KvCacheShape KvShape => new global::Kiln.KvCacheShape(this.LayerCount, this.KvDim, this.KvDim / this.KvHeadCount);

        /// <summary>A contiguous KV cache of <paramref name="slots"/> sequences of up to <paramref name="maxContext"/> positions.</summary>
        public global::Kiln.KvCache CreateKvCache(int slots, int maxContext) => KvShape.CreateContiguous(slots, maxContext);

        global::Kiln.Tensor global::Kiln.IKilnModel.ForwardEager(global::System.ReadOnlySpan<int> tokens, global::Kiln.AttentionContext context) => Forward(tokens, context);

        /// <summary>Packs the bound weights into the kernel layouts and allocates the arena for steps of up to <paramref name="maxTokensPerStep"/> tokens, on every processor.</summary>
        public global::Kiln.ICompiledPlan Compile(int maxTokensPerStep) => new CompiledPlan(this, new global::Kiln.PlanOptions(maxTokensPerStep));

        /// <summary>Packs the bound weights into the kernel layouts, allocates the arena and starts the worker pool as <paramref name="options"/> say.</summary>
        public global::Kiln.ICompiledPlan Compile(global::Kiln.PlanOptions options) => new CompiledPlan(this, options);

        private static global::Kiln.Tensor KilnLoad(global::Kiln.Loading.ModelFile file, string name, global::System.Collections.Generic.HashSet<string> bound)
        {
            bound.Add(name);
            return file.LoadTensor(name);
        }

        private static int KilnToInt(global::Kiln.Loading.ModelFile file, string key, long value)
        {
            if (value < int.MinValue || value > int.MaxValue)
                throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"value {value} does not fit a 32-bit integer.");
            return (int)value;
        }

        private static void KilnCheckRank(global::Kiln.Loading.ModelFile file, string name, global::Kiln.Tensor tensor, string declared, int rank)
        {
            if (tensor.Rank != rank)
                throw new global::Kiln.Loading.ModelLoadException(file.Path, $"tensor '{name}'", null, $"expected shape {declared}, found [{string.Join(", ", tensor.Shape)}].");
        }

        private static void KilnCheckShape(global::Kiln.Loading.ModelFile file, string name, global::Kiln.Tensor tensor, string declared, params int[] expected)
        {
            for (int i = 0; i < expected.Length; i++)
            {
                if (tensor.Shape[i] != expected[i])
                    throw new global::Kiln.Loading.ModelLoadException(file.Path, $"tensor '{name}'", null, $"expected shape {declared} = [{string.Join(", ", expected)}], found [{string.Join(", ", tensor.Shape)}].");
            }
        }

        /// <summary>
        /// Phi3 compiled into fused CPU kernels over one native arena, run on the plan's worker pool (see the fusion
        /// report at the top of this file). A step allocates nothing once the attention scratch fits the KV cache in use.
        /// </summary>
        public sealed class CompiledPlan : global::Kiln.ICompiledPlan
        {
            /// <summary>The fusion report: which ops became which kernel, which layout each weight got, and why.</summary>
            public const string Report =
                "Kiln fusion report for Phi3 (architecture \"phi3\"), CPU kernels on a worker pool.\n" +
                "Kernels, in step order:\n" +
                "  [1] elementwise: x ← TokenEmbedding[tokens], one parallel vector loop\n" +
                "  for each of the LayerCount layers (Layers[layer]):\n" +
                "    [2] matmul: x·[Wqkv|Wqkv[Dim..]|Wqkv[Dim+KvDim..]]ᵀ with RmsNorm(AttnNorm) fused into the input preparation → q ← rope_neox([Wqkv]) epilogue, k ← rope_neox([Wqkv]) epilogue, v\n" +
                "    [3] attention: attention ← Attention(q, k, v): k/v rows written to the KV cache (each token's row of its sequence's blocks, in the cache's storage), then causal GQA (sliding window Window) in parallel over (token, chunk of KV heads) items, each reading its sequence's cached rows block by block, once for all its heads (dots, softmax, weighted sum)\n" +
                "    [4] matmul: attention·[Wo]ᵀ → x2 ← x + [Wo] epilogue\n" +
                "    [5] matmul: x2·[GateUp⋈GateUp[Hidden..]]ᵀ with RmsNorm(FfnNorm) fused into the input preparation → glu ← silu([GateUp])·[GateUp] epilogue\n" +
                "    [6] matmul: glu·[Down]ᵀ → x ← x2 + [Down] epilogue\n" +
                "  end of layer loop\n" +
                "  [7] matmul: (rows(x))·[Output]ᵀ with RmsNorm(OutputNorm) fused into the input preparation (the input chain computed per row while preparing) → logits\n" +
                "Elementwise ops: every one fused — into a matmul's input preparation or tile epilogue, or into one of 1 row loop(s) (parallel, vectorized) that stand where no matmul can take them: x, carried into the layer loop.\n" +
                "Weight layouts (packed once when the plan is compiled, in groups of 4 rows; a segment whose rows are not a multiple of 4 is padded with zero rows):\n" +
                "  rule \"as stored\" (a weight without [Quantize]), chosen per matrix when the plan is compiled, from the file's types: F32 and F16 → F32x16 panels (F16 widened exactly); BF16 → BF16x4 (widened exactly in the kernel); Q8_0 → Q8_0x8 interleaved (the file's quants and fp16 scales copied); Q4_0 → Q4_0x8 interleaved (the file's nibbles and fp16 scales copied); Q6_K, Q5_K, Q4_K → Q6_Kx8, Q5_Kx8, Q4_Kx8 interleaved (the file's quants, scales, mins and fp16 super-block scales copied); any other type (Q5_0, Q2_K, …) → Q8_0x8 (dequantized, requantized); weights of different types in one matmul → the most precise of their layouts, except that K-quants of different types keep their own, one segment each. Work goes in groups of 4 rows and every tile reads each weight once for several tokens: F32x16 holds panels of 16 rows, element k of the 16 side by side (outer products: one load of 16 rows times one broadcast activation, no reductions); BF16x4 holds 16-element chunks of the 4 rows in turn (the kernel streams a group front to back); the quantized layouts store two groups together, 8 rows 4 bytes at a time (one multiply-add against 4 broadcast activations covers all 8 rows, each row's sum complete in its own lane).\n" +
                "  Wqkv, Wqkv[Dim..], Wqkv[Dim+KvDim..] → _wqkv[layer] [Dim+KvDim+KvDim, Dim], segments stacked: as stored (the rule above); one horizontal matmul prepares its input once and reads it for all of them; a fused weight is split by rows when packed (its slices cost nothing at run time).\n" +
                "  Wo → _wo[layer] [Dim, Dim], one segment: as stored (the rule above).\n" +
                "  GateUp, GateUp[Hidden..] → _gateUp[layer] [2*Hidden, Dim], pair rows interleaved (a₀, b₀, a₁, b₁, …): as stored (the rule above); each adjacent row pair meets in one tile, so the epilogue combines both sums; a fused weight is split by rows when packed (its slices cost nothing at run time).\n" +
                "  Down → _down[layer] [Dim, Hidden], one segment: as stored (the rule above).\n" +
                "  Output → _output [Vocab, Dim], one segment: as stored (the rule above).\n" +
                "  PlanOptions.Sparsity, when set, packs every matrix laid out as stored or Q8_0 in that sparse pattern instead (None: dense), for one plan.\n" +
                "  TokenEmbedding → as stored in the file (memory-mapped): each gathered row decoded by itself, by token.\n" +
                "Arena (one float buffer; each slot holds maxTokensPerStep rows of its widest buffer):\n" +
                "  slot 0: x [T, Dim]\n" +
                "  slot 1: q [T, Dim], x2 [T, Dim]\n" +
                "  slot 2: k [T, KvDim], glu [T, Hidden]\n" +
                "  slot 3: v [T, KvDim]\n" +
                "  slot 4: attention [T, Dim]\n" +
                "Matmul inputs: prepared once per matmul into one scratch, sized for the widest input: float rows for the F32/BF16 layouts;\n" +
                "  for Q8_0/Q4_0, Q8 activations (per 32 values a scale d = max|x|/127, kept in fp16, and int8 q = round(x/d): GGML's rule),\n" +
                "  with 8·Σq per block for Q4_0's −8 (the kernels broadcast 4 quants at a time to 8 rows); for the K-quants, Q8_K activations (per 256 values\n" +
                "  iscale = −127 / the value of largest magnitude, q = round(iscale·x) to nearest even, d = 1/iscale in float: GGML's rule, with sums of 16\n" +
                "  and 32 quants for the mins and Q6_K's −32). A fused norm computes its statistics per token once\n" +
                "  (in double) and writes or quantizes the normalized row in the same pass (its weight cannot fold into quantized columns\n" +
                "  without requantizing them, and folding it into float columns would change their rounding: the packed weights stay exactly as stored).\n" +
                "Loop bodies (epilogues, input chains, elementwise loops) are generated from the forward method's ops at every width:\n" +
                "  Vector512, Vector256, Vector128 (tiles) and scalar; activations are composed from e^x, tanh, erf and ln (Kiln.Kernels.Elementwise.Lanes).\n" +
                "Rope: cos/sin per token and pair computed once per step in double (as the eager op), shared by every layer.\n" +
                "Attention scratch: per chunk of work items, every head's scores over the KV cache's MaxContext (and one block's rows when the cache stores int8), grown when a larger cache is first seen.\n" +
                "Threads: one worker pool (PlanOptions.Threads). A matmul splits its 4-row groups over the threads, each tile (64 rows × 6 tokens\n" +
                "  for F32, 4 rows × 4 tokens for BF16, 8 rows × 8 tokens for the quantized layouts) going through its epilogue while in registers; F32 with many tokens\n" +
                "  on several threads splits its tokens too, in items of 64 rows × a block of tokens (GemmBlocks); attention splits (token, KV-head chunk) items;\n" +
                "  elementwise loops split rows. Every output is computed by one thread in a fixed order, so results do not depend on the thread count.\n";

            private readonly Phi3 _model;
            private readonly global::Kiln.Threading.WorkerPool _pool;
            private readonly string _report;
            private bool _disposed;

            // Dimensions, fixed when the model was bound.
            private readonly int _Dim;
            private readonly int _KvDim;
            private readonly int _Hidden;
            private readonly int _Vocab;
            private readonly int _HeadDim;
            private readonly int _Dim_p_KvDim;
            private readonly int _QkvDim;
            private readonly int _2_x_Hidden;

            // Weights in the kernels' layouts: one packed matrix per matmul (and layer), segments on 4-row boundaries.
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _wqkv; // per layer [Dim + KvDim + KvDim, Dim]
            private readonly int _wqkvStart1, _wqkvStart2, _wqkvRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _wo; // per layer [Dim, Dim]
            private readonly int _woRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _gateUp; // per layer [2*Hidden, Dim]
            private readonly int _gateUpRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _down; // per layer [Dim, Hidden]
            private readonly int _downRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix _output; // [Vocab, Dim]
            private readonly int _outputRows; // first packed row of each later segment, then the padded row count

            // Rope table 0: head dim HeadDim, base RopeBase, NeoX halves, RotaryDims rotary dims:
            // inverse frequency per pair; cos/sin per token and pair in double (scalar paths), and as floats laid out for the vector paths.
            private readonly int _rope0HeadDim, _rope0Rotary, _rope0Half;
            private readonly double[] _rope0InverseFrequency;
            private readonly double[] _rope0Cos, _rope0Sin;
            private readonly float[] _rope0CosHalf, _rope0SinHalf; // per token and pair
            private readonly float[] _rope0Cosines, _rope0SignedSines; // per token and rotary element: cos, cos and −sin, sin per adjacent pair

            // This step's token ids, checked against the vocabulary, where the gathering loops can read them.
            private readonly int[] _tokens;

            // Gathered tables, as the file stores them: each row a step needs is decoded into its token's slot (the table is never widened whole).
            private readonly global::Kiln.Kernels.Elementwise.GatherTable _table0; // TokenEmbedding

            // The arena (native memory that never moves, so work items on every thread can hold views of it).
            private readonly global::Kiln.Kernels.MatMul.NativeBlock _arenaMemory;
            private readonly global::Kiln.Kernels.MatMul.FloatBuffer _arena;
            private readonly int _xOffset;
            private readonly int _qOffset;
            private readonly int _kOffset;
            private readonly int _vOffset;
            private readonly int _attentionOffset;
            private readonly int _x2Offset;
            private readonly int _gluOffset;

            // Matmul inputs, prepared once per matmul for all its weights (normalized, quantized to Q8 for the quantized layouts).
            private readonly global::Kiln.Kernels.MatMul.GemmScratch _inputs;

            // Attention scratch per chunk of work items (global::Kiln.Kernels.Attention.PagedAttention.MaxChunks at most): every head's row of scores over
            // the KV cache's MaxContext, and room to read one block's rows when the cache stores int8; grown when a larger cache is first seen;
            // then per token of a step and query head, a shared prefix's softmax max and sum.
            private global::Kiln.Kernels.MatMul.NativeBlock? _scoresMemory;
            private global::Kiln.Kernels.MatMul.FloatBuffer _scores, _gather, _prefixStatistics;
            private int _scoresContext, _scoresPerChunk, _gatherFloats;

            public CompiledPlan(Phi3 model, global::Kiln.PlanOptions options)
            {
                if (model is null) throw new global::System.ArgumentNullException(nameof(model));
                if (options is null) throw new global::System.ArgumentNullException(nameof(options));
                options.Validate();
                int maxTokensPerStep = options.MaxTokensPerStep;
                _model = model;
                MaxTokensPerStep = maxTokensPerStep;
                _Dim = model.Dim;
                _KvDim = model.KvDim;
                _Hidden = model.Hidden;
                _Vocab = model.Vocab;
                _HeadDim = model.HeadDim;
                _Dim_p_KvDim = model.Dim + model.KvDim;
                _QkvDim = model.QkvDim;
                _2_x_Hidden = 2 * model.Hidden;

                if (model.Heads <= 0 || model.KvHeadCount <= 0 || model.Heads % model.KvHeadCount != 0 || _Dim % model.Heads != 0 || _Dim / model.Heads * model.KvHeadCount != _KvDim)
                    throw new global::System.InvalidOperationException($"Attention: {model.Heads} heads over {model.KvHeadCount} KV heads do not fit q rows of {_Dim} and k rows of {_KvDim}.");

                if (_HeadDim <= 0 || _Dim % _HeadDim != 0)
                    throw new global::System.InvalidOperationException($"Rows of Dim = {_Dim} are not whole heads of HeadDim = {_HeadDim}.");
                if (_HeadDim <= 0 || _KvDim % _HeadDim != 0)
                    throw new global::System.InvalidOperationException($"Rows of KvDim = {_KvDim} are not whole heads of HeadDim = {_HeadDim}.");
                _rope0HeadDim = model.HeadDim;
                _rope0Rotary = (model.RotaryDims == 0 ? model.HeadDim : model.RotaryDims);
                if (_rope0HeadDim <= 0 || _rope0Rotary <= 0 || _rope0Rotary % 2 != 0 || _rope0Rotary > _rope0HeadDim)
                    throw new global::System.InvalidOperationException($"Rope: {_rope0Rotary} rotary dimensions must be even, positive and at most the head dimension {_rope0HeadDim}.");
                _rope0Half = _rope0Rotary / 2;
                _rope0InverseFrequency = new double[_rope0Half];
                for (int pair = 0; pair < _rope0Half; pair++) _rope0InverseFrequency[pair] = global::System.Math.Pow(model.RopeBase, -2.0 * pair / _rope0Rotary);
                _rope0Cos = new double[maxTokensPerStep * _rope0Half];
                _rope0Sin = new double[maxTokensPerStep * _rope0Half];
                _rope0CosHalf = new float[maxTokensPerStep * _rope0Half];
                _rope0SinHalf = new float[maxTokensPerStep * _rope0Half];
                _rope0Cosines = new float[maxTokensPerStep * _rope0Rotary];
                _rope0SignedSines = new float[maxTokensPerStep * _rope0Rotary];

                _tokens = new int[maxTokensPerStep];
                _table0 = new global::Kiln.Kernels.Elementwise.GatherTable(model.TokenEmbedding, maxTokensPerStep);
                var layouts = new global::System.Text.StringBuilder(Report).Append("Layouts chosen for this model file:\n");
                // Layers.Wqkv: layout as stored, chosen per matrix from the file's types
                _wqkvStart1 = global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Dim);
                _wqkvStart2 = _wqkvStart1 + global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_KvDim);
                _wqkvRows = _wqkvStart2 + global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_KvDim);
                var sparsity_wqkv = global::Kiln.Kernels.MatMul.WeightLayouts.Sparsity(global::Kiln.SparsePattern.None, global::Kiln.WeightFormat.AsStored, options);
                _wqkv = new global::Kiln.Kernels.MatMul.PackedMatrix[model.LayerCount];
                for (int layer = 0; layer < model.LayerCount; layer++)
                {
                    var packed = new global::Kiln.Kernels.MatMul.PackedMatrix(global::Kiln.Kernels.MatMul.WeightLayouts.Resolve(global::Kiln.WeightFormat.AsStored, sparsity_wqkv, model.Layers[layer].Wqkv), _wqkvRows, _Dim, sparsity_wqkv);
                    packed.Pack(0, model.Layers[layer].Wqkv, 0, _Dim, global::Kiln.Kernels.MatMul.RopeLayout.NeoXOrder(_Dim, _rope0HeadDim, _rope0Rotary), "Wqkv (rows paired for NeoX rope)");
                    packed.Pack(_wqkvStart1, model.Layers[layer].Wqkv, _Dim, _KvDim, global::Kiln.Kernels.MatMul.RopeLayout.NeoXOrder(_KvDim, _rope0HeadDim, _rope0Rotary), "Wqkv (rows paired for NeoX rope)");
                    packed.Pack(_wqkvStart2, model.Layers[layer].Wqkv, _Dim_p_KvDim, _KvDim, "Wqkv");
                    packed.FinishPacking();
                    _wqkv[layer] = packed;
                }
                layouts.Append(global::Kiln.Kernels.MatMul.WeightLayouts.Summarize("_wqkv[layer]", _wqkv));

                // Layers.Wo: layout as stored, chosen per matrix from the file's types
                _woRows = global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Dim);
                var sparsity_wo = global::Kiln.Kernels.MatMul.WeightLayouts.Sparsity(global::Kiln.SparsePattern.None, global::Kiln.WeightFormat.AsStored, options);
                _wo = new global::Kiln.Kernels.MatMul.PackedMatrix[model.LayerCount];
                for (int layer = 0; layer < model.LayerCount; layer++)
                {
                    var packed = new global::Kiln.Kernels.MatMul.PackedMatrix(global::Kiln.Kernels.MatMul.WeightLayouts.Resolve(global::Kiln.WeightFormat.AsStored, sparsity_wo, model.Layers[layer].Wo), _woRows, _Dim, sparsity_wo);
                    packed.Pack(0, model.Layers[layer].Wo, 0, _Dim, "Wo");
                    packed.FinishPacking();
                    _wo[layer] = packed;
                }
                layouts.Append(global::Kiln.Kernels.MatMul.WeightLayouts.Summarize("_wo[layer]", _wo));

                // Layers.GateUp: layout as stored, chosen per matrix from the file's types
                _gateUpRows = global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(2 * _Hidden);
                var sparsity_gateUp = global::Kiln.Kernels.MatMul.WeightLayouts.Sparsity(global::Kiln.SparsePattern.None, global::Kiln.WeightFormat.AsStored, options);
                _gateUp = new global::Kiln.Kernels.MatMul.PackedMatrix[model.LayerCount];
                for (int layer = 0; layer < model.LayerCount; layer++)
                {
                    var packed = new global::Kiln.Kernels.MatMul.PackedMatrix(global::Kiln.Kernels.MatMul.WeightLayouts.Resolve(global::Kiln.WeightFormat.AsStored, sparsity_gateUp, model.Layers[layer].GateUp), _gateUpRows, _Dim, sparsity_gateUp);
                    packed.PackInterleaved(0, model.Layers[layer].GateUp, 0, model.Layers[layer].GateUp, _Hidden, _Hidden, "GateUp", "GateUp");
                    packed.FinishPacking();
                    _gateUp[layer] = packed;
                }
                layouts.Append(global::Kiln.Kernels.MatMul.WeightLayouts.Summarize("_gateUp[layer]", _gateUp));

                // Layers.Down: layout as stored, chosen per matrix from the file's types
                _downRows = global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Dim);
                var sparsity_down = global::Kiln.Kernels.MatMul.WeightLayouts.Sparsity(global::Kiln.SparsePattern.None, global::Kiln.WeightFormat.AsStored, options);
                _down = new global::Kiln.Kernels.MatMul.PackedMatrix[model.LayerCount];
                for (int layer = 0; layer < model.LayerCount; layer++)
                {
                    var packed = new global::Kiln.Kernels.MatMul.PackedMatrix(global::Kiln.Kernels.MatMul.WeightLayouts.Resolve(global::Kiln.WeightFormat.AsStored, sparsity_down, model.Layers[layer].Down), _downRows, _Hidden, sparsity_down);
                    packed.Pack(0, model.Layers[layer].Down, 0, _Dim, "Down");
                    packed.FinishPacking();
                    _down[layer] = packed;
                }
                layouts.Append(global::Kiln.Kernels.MatMul.WeightLayouts.Summarize("_down[layer]", _down));

                // Output: layout as stored, chosen per matrix from the file's types
                _outputRows = global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Vocab);
                var sparsity_output = global::Kiln.Kernels.MatMul.WeightLayouts.Sparsity(global::Kiln.SparsePattern.None, global::Kiln.WeightFormat.AsStored, options);
                var packed_output = new global::Kiln.Kernels.MatMul.PackedMatrix(global::Kiln.Kernels.MatMul.WeightLayouts.Resolve(global::Kiln.WeightFormat.AsStored, sparsity_output, model.Output), _outputRows, _Dim, sparsity_output);
                packed_output.Pack(0, model.Output, 0, _Vocab, "Output");
                packed_output.FinishPacking();
                _output = packed_output;
                layouts.Append(global::Kiln.Kernels.MatMul.WeightLayouts.Summarize("_output", _output));

                // Arena slots (buffers whose live ranges do not overlap share a slot).
                int offset = 0;
                _xOffset = offset; // x [T, Dim]
                offset += (maxTokensPerStep * _Dim + 15) & ~15; // each slot starts on a 64-byte boundary
                _qOffset = offset; // q [T, Dim]
                _x2Offset = offset; // x2 [T, Dim]
                offset += (maxTokensPerStep * _Dim + 15) & ~15; // each slot starts on a 64-byte boundary
                _kOffset = offset; // k [T, KvDim]
                _gluOffset = offset; // glu [T, Hidden]
                offset += (maxTokensPerStep * global::System.Math.Max(_KvDim, _Hidden) + 15) & ~15; // each slot starts on a 64-byte boundary
                _vOffset = offset; // v [T, KvDim]
                offset += (maxTokensPerStep * _KvDim + 15) & ~15; // each slot starts on a 64-byte boundary
                _attentionOffset = offset; // attention [T, Dim]
                offset += (maxTokensPerStep * _Dim + 15) & ~15; // each slot starts on a 64-byte boundary
                _arenaMemory = new global::Kiln.Kernels.MatMul.NativeBlock((long)offset * sizeof(float));
                _arena = _arenaMemory.Floats(0, offset);
                _inputs = new global::Kiln.Kernels.MatMul.GemmScratch(maxTokensPerStep, global::System.Math.Max(_Dim, _Hidden));
                _pool = new global::Kiln.Threading.WorkerPool(options.ResolvedThreads);
                _report = layouts.ToString();
            }

            public int MaxTokensPerStep { get; }

            public int VocabSize => _Vocab;

            /// <summary>The fusion report, then the layout each packed weight got from this model file.</summary>
            public string FusionReport => _report;

            /// <summary>Threads in the plan's worker pool, the caller of Step included.</summary>
            public int Threads => _pool.ThreadCount;

            /// <summary>Runs one step: [context.OutputCount, VocabSize] logits for the wanted rows. Allocates nothing.</summary>
            public void Step(global::System.ReadOnlySpan<int> tokens, global::Kiln.AttentionContext context, global::System.Span<float> logits)
            {
                global::System.ObjectDisposedException.ThrowIf(_disposed, this);
                if (context is null) throw new global::System.ArgumentNullException(nameof(context));
                int T = tokens.Length;
                if (T != context.TokenCount)
                    throw new global::System.ArgumentException($"The step has {T} tokens but its context describes {context.TokenCount}.", nameof(tokens));
                if (T > MaxTokensPerStep)
                    throw new global::System.ArgumentException($"The step has {T} tokens; this plan was compiled for at most {MaxTokensPerStep}.", nameof(tokens));
                int O = context.OutputCount;
                if (logits.Length < O * _Vocab)
                    throw new global::System.ArgumentException($"logits holds {logits.Length} floats; the step needs {O} rows of {_Vocab}.", nameof(logits));
                var cache = context.Cache;
                if (cache.KvDim != _KvDim || cache.Layers < _model.LayerCount)
                    throw new global::System.ArgumentException($"The KV cache holds {cache.Layers} layers of rows of {cache.KvDim}; this model needs {_model.LayerCount} of {_KvDim} (use CreateKvCache).", nameof(context));
                if (_scoresContext < cache.MaxContext || _gatherFloats < global::Kiln.Kernels.MatMul.KvBlocks.ScratchFloats(cache)) GrowScores(cache); // once per larger cache, never per step
                var stepProfiler = global::Kiln.Threading.StepProfiler.Current; // null unless the caller attached a profiler: then each part below is timed
                stepProfiler?.BeginStep();
                global::System.ReadOnlySpan<int> positions = context.Positions;

                // Token ids, checked against the vocabulary once, where the gathering loops read them.
                int vocabulary = _model.TokenEmbedding.Rows;
                for (int t = 0; t < T; t++)
                {
                    int token = tokens[t];
                    if ((uint)token >= (uint)vocabulary)
                        throw new global::System.ArgumentOutOfRangeException(nameof(tokens), $"Token id {token} at position {t} is outside the vocabulary (0..{vocabulary - 1}).");
                    _tokens[t] = token;
                }

                // Activations: views of the arena.
                global::System.Span<float> x = _arena.Slice(_xOffset, T * _Dim);
                global::System.Span<float> q = _arena.Slice(_qOffset, T * _Dim);
                global::System.Span<float> k = _arena.Slice(_kOffset, T * _KvDim);
                global::System.Span<float> v = _arena.Slice(_vOffset, T * _KvDim);
                global::System.Span<float> attention = _arena.Slice(_attentionOffset, T * _Dim);
                global::System.Span<float> x2 = _arena.Slice(_x2Offset, T * _Dim);
                global::System.Span<float> glu = _arena.Slice(_gluOffset, T * _Hidden);

                stepProfiler?.Mark("rope tables");
                // Rope table 0: angle = position · base^(-2·pair/rotary), in double like the eager op; shared by every layer.
                for (int t = 0; t < T; t++)
                {
                    for (int pair = 0; pair < _rope0Half; pair++)
                    {
                        double angle = positions[t] * _rope0InverseFrequency[pair];
                        double cos = global::System.Math.Cos(angle), sin = global::System.Math.Sin(angle);
                        _rope0Cos[t * _rope0Half + pair] = cos;
                        _rope0Sin[t * _rope0Half + pair] = sin;
                        _rope0CosHalf[t * _rope0Half + pair] = (float)cos;
                        _rope0SinHalf[t * _rope0Half + pair] = (float)sin;
                        int at = t * _rope0Rotary + 2 * pair; // float copies laid out for two adjacent pairs at once: cos, cos and −sin, sin
                        _rope0Cosines[at] = _rope0Cosines[at + 1] = (float)cos;
                        _rope0SignedSines[at] = -(float)sin;
                        _rope0SignedSines[at + 1] = (float)sin;
                    }
                }

                // [1] elementwise: x ← TokenEmbedding[tokens], one parallel vector loop
                {
                    stepProfiler?.Mark("elementwise x");
                    // x ← TokenEmbedding[tokens]: each row by one work item, the widest vectors first.
                    _pool.Run(T, global::Kiln.Kernels.Elementwise.RowLoop.ChunkSize(T, _Dim, _pool.ThreadCount), new Elementwise1Work { Output = _arena.View(_xOffset, T * _Dim), G0 = _table0, Dim_Dim = _Dim, Tokens = _tokens });
                }
                for (int layer = 0; layer < _model.LayerCount; layer++) // Layers[layer]
                {
                    // [2] matmul: x·[Wqkv|Wqkv[Dim..]|Wqkv[Dim+KvDim..]]ᵀ with RmsNorm(AttnNorm) fused into the input preparation → q ← rope_neox([Wqkv]) epilogue, k ← rope_neox([Wqkv]) epilogue, v
                    {
                        stepProfiler?.Mark("input wqkv");
                        var weights = _wqkv[layer];
                        // The input once for every weight, RMS-normalized by AttnNorm: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_xOffset, T * _Dim), _Dim, T, _Dim, global::Kiln.Kernels.MatMul.InputNorm.Rms, _model.Layers[layer].AttnNorm.Data, null, (float)(_model.Eps), _pool);
                        stepProfiler?.Mark("matmul wqkv");
                        var work = new MatMul2Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            End0 = _wqkvStart1 / 4,
                            End1 = _wqkvStart2 / 4,
                            Q = new MatMul2Q { Output = _arena.View(_qOffset, T * _Dim), Cols = _Dim, FirstRow = 0, Dim_Dim = _Dim, Dim_HeadDim = _HeadDim, Cos = _rope0Cos, Sin = _rope0Sin, Cosines = _rope0Cosines, SignedSines = _rope0SignedSines, Half = _rope0Half, HeadDim = _rope0HeadDim, Rotary = _rope0Rotary },
                            K = new MatMul2K { Output = _arena.View(_kOffset, T * _KvDim), Cols = _KvDim, FirstRow = _wqkvStart1, Dim_KvDim = _KvDim, Dim_HeadDim = _HeadDim, Cos = _rope0Cos, Sin = _rope0Sin, Cosines = _rope0Cosines, SignedSines = _rope0SignedSines, Half = _rope0Half, HeadDim = _rope0HeadDim, Rotary = _rope0Rotary },
                            V = new MatMul2V { Output = _arena.View(_vOffset, T * _KvDim), Cols = _KvDim, FirstRow = _wqkvStart2, Dim_KvDim = _KvDim },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                    // [3] attention: attention ← Attention(q, k, v): k/v rows written to the KV cache (each token's row of its sequence's blocks, in the cache's storage), then causal GQA (sliding window Window) in parallel over (token, chunk of KV heads) items, each reading its sequence's cached rows block by block, once for all its heads (dots, softmax, weighted sum)
                    {
                        stepProfiler?.Mark("kv write");
                        int heads = _model.Heads, kvHeads = _model.KvHeadCount;
                        // This step's k and v rows go to the cache first (at each token's row of its sequence's blocks, in the cache's
                        // storage): a token attends to itself and to earlier tokens of the step.
                        for (int t = 0; t < T; t++)
                        {
                            int row = context.KvRow(t);
                            cache.WriteKey(layer, row, k.Slice(t * _KvDim, _KvDim));
                            cache.WriteValue(layer, row, v.Slice(t * _KvDim, _KvDim));
                        }
                        // Items: each token's KV heads in a few chunks (so one token's heads still spread over the threads); a chunk reads its
                        // rows of the cache once, in order, for all its heads. A sharing group's prefix is read once for all its tokens first.
                        var paged = new global::Kiln.Kernels.Attention.PagedAttention
                        {
                            Q = _arena.View(_qOffset, T * _Dim),
                            Output = _arena.View(_attentionOffset, T * _Dim),
                            Scores = _scores,
                            ScoresStride = _scoresPerChunk,
                            Gather = _gather,
                            GatherStride = _gatherFloats,
                            PrefixStatistics = _prefixStatistics,
                            Cache = cache,
                            Context = context,
                            Layer = layer,
                            Heads = heads,
                            KvHeads = kvHeads,
                            HeadDim = _Dim / heads,
                            QCols = _Dim,
                            KvCols = _KvDim,
                            Options = new global::Kiln.Kernels.Attention.AttentionOptions((float)(1.0 / global::System.Math.Sqrt(_Dim / heads)), _model.Window, (float)(0f), true),
                        };
                        stepProfiler?.Mark("attention");
                        paged.Run(_pool, T);
                    }
                    // [4] matmul: attention·[Wo]ᵀ → x2 ← x + [Wo] epilogue
                    {
                        stepProfiler?.Mark("input wo");
                        var weights = _wo[layer];
                        // The input once for every weight: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_attentionOffset, T * _Dim), _Dim, T, _Dim, global::Kiln.Kernels.MatMul.InputNorm.None, null, null, 0f, _pool);
                        stepProfiler?.Mark("matmul wo");
                        var work = new MatMul4Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            X2 = new MatMul4X2 { Output = _arena.View(_x2Offset, T * _Dim), Cols = _Dim, FirstRow = 0, In0 = _arena.View(_xOffset, T * _Dim), In0Cols = _Dim, Dim_Dim = _Dim },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                    // [5] matmul: x2·[GateUp⋈GateUp[Hidden..]]ᵀ with RmsNorm(FfnNorm) fused into the input preparation → glu ← silu([GateUp])·[GateUp] epilogue
                    {
                        stepProfiler?.Mark("input gateUp");
                        var weights = _gateUp[layer];
                        // The input once for every weight, RMS-normalized by FfnNorm: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_x2Offset, T * _Dim), _Dim, T, _Dim, global::Kiln.Kernels.MatMul.InputNorm.Rms, _model.Layers[layer].FfnNorm.Data, null, (float)(_model.Eps), _pool);
                        stepProfiler?.Mark("matmul gateUp");
                        var work = new MatMul5Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            Glu = new MatMul5Glu { Output = _arena.View(_gluOffset, T * _Hidden), Cols = _Hidden, FirstRow = 0, Dim_Hidden = _Hidden },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                    // [6] matmul: glu·[Down]ᵀ → x ← x2 + [Down] epilogue
                    {
                        stepProfiler?.Mark("input down");
                        var weights = _down[layer];
                        // The input once for every weight: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_gluOffset, T * _Hidden), _Hidden, T, _Hidden, global::Kiln.Kernels.MatMul.InputNorm.None, null, null, 0f, _pool);
                        stepProfiler?.Mark("matmul down");
                        var work = new MatMul6Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            X = new MatMul6X { Output = _arena.View(_xOffset, T * _Dim), Cols = _Dim, FirstRow = 0, In0 = _arena.View(_x2Offset, T * _Dim), In0Cols = _Dim, Dim_Dim = _Dim },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                }

                // [7] matmul: (rows(x))·[Output]ᵀ with RmsNorm(OutputNorm) fused into the input preparation (the input chain computed per row while preparing) → logits
                {
                    stepProfiler?.Mark("input output");
                    var weights = _output;
                    // The input once for every weight: rows(x) computed per row, RMS-normalized by OutputNorm, then quantized or read as floats.
                    var source = new MatMul7Input { In0 = _arena.View(_xOffset, T * _Dim), In0Cols = _Dim, Dim_Dim = _Dim, Context = context };
                    var input = _inputs.Prepare(weights.Format, source, O, _Dim, global::Kiln.Kernels.MatMul.InputNorm.Rms, _model.OutputNorm.Data, null, (float)(_model.Eps), _pool);
                    stepProfiler?.Mark("matmul output");
                    var work = new MatMul7Work
                    {
                        Weights = weights,
                        Input = input,
                        Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, O, _pool.ThreadCount),
                        Logits = new MatMul7Logits { Output = default, Cols = _Vocab, FirstRow = 0, Dim_Vocab = _Vocab },
                    };
                    // The epilogue writes the caller's logits directly: pinned for the run.
                    global::Kiln.Kernels.MatMul.PinnedOutput.Run(_pool, logits, work.Blocks.Count, 1, work);
                }
                stepProfiler?.EndStep();
            }
            /// <summary>Stops the worker pool and frees the arena, the scratch, the gather slots and the packed weights. Steps after this throw.</summary>
            public void Dispose()
            {
                if (_disposed) return;
                _disposed = true;
                _pool.Dispose();
                _inputs.Dispose();
                _arenaMemory.Dispose();
                _scoresMemory?.Dispose();
                _table0.Dispose();
                foreach (var packed in _wqkv) packed.Dispose();
                foreach (var packed in _wo) packed.Dispose();
                foreach (var packed in _gateUp) packed.Dispose();
                foreach (var packed in _down) packed.Dispose();
                _output.Dispose();
            }

            /// <summary>Attention scratch for <paramref name="cache"/>: per chunk of work items, every head's scores over its MaxContext and one block's rows; per token and head, a shared prefix's statistics.</summary>
            private void GrowScores(global::Kiln.KvCache cache)
            {
                _scoresMemory?.Dispose();
                _scoresContext = global::System.Math.Max(_scoresContext, cache.MaxContext);
                _gatherFloats = global::System.Math.Max(_gatherFloats, global::Kiln.Kernels.MatMul.KvBlocks.ScratchFloats(cache));
                _scoresPerChunk = global::Kiln.Kernels.Attention.PagedAttention.ScoresPerChunk(_scoresContext, _model.Heads, cache.KvDim / _model.KvHeadCount);
                const int chunks = global::Kiln.Kernels.Attention.PagedAttention.MaxChunks;
                int statistics = global::Kiln.Kernels.Attention.PagedAttention.PrefixStatisticsFloats(MaxTokensPerStep, _model.Heads);
                _scoresMemory = new global::Kiln.Kernels.MatMul.NativeBlock((((long)_scoresPerChunk + _gatherFloats) * chunks + statistics) * sizeof(float));
                _scores = _scoresMemory.Floats(0, chunks * _scoresPerChunk);
                _gather = _scoresMemory.Floats((long)chunks * _scoresPerChunk * sizeof(float), chunks * _gatherFloats);
                _prefixStatistics = _scoresMemory.Floats(((long)_scoresPerChunk + _gatherFloats) * chunks * sizeof(float), statistics);
            }

            /// <summary>[1] x ← TokenEmbedding[tokens], row by row.</summary>
            private struct Elementwise1Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public global::Kiln.Kernels.Elementwise.GatherTable G0; // TokenEmbedding, rows read from the stored format
                public int Dim_Dim;
                public int[] Tokens;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
                public void Execute(int start, int end)
                {
                    for (int t = start; t < end; t++)
                    {
                        int o = t * Dim_Dim;
                        var g0 = G0.Row(Tokens[t], t); // the row, decoded into this token's slot
                        int c = 0;
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use512)
                        {
                            for (; c + 16 <= Dim_Dim; c += 16)
                            {
                                var e0 = g0.Load16(c);
                                Output.Store16(o + c, e0);
                            }
                        }
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use256)
                        {
                            for (; c + 8 <= Dim_Dim; c += 8)
                            {
                                var e0 = g0.Load8(c);
                                Output.Store8(o + c, e0);
                            }
                        }
                        for (; c < Dim_Dim; c++)
                        {
                            var e0 = g0[c];
                            Output[o + c] = e0;
                        }
                    }
                }
            }

            /// <summary>[2] Blocks of 4-row groups of the packed weights × tokens: each tile through its segment's epilogue as soon as it is computed.</summary>
            private struct MatMul2Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.PackedMatrix Weights;
                public global::Kiln.Kernels.MatMul.GemmInput Input;
                public global::Kiln.Kernels.MatMul.GemmBlocks Blocks;
                public int End0; // the group where segment 0 (q) ends
                public int End1; // the group where segment 1 (k) ends
                public MatMul2Q Q;
                public MatMul2K K;
                public MatMul2V V;

                public void Execute(int start, int end)
                {
                    for (int item = start; item < end; item++)
                    {
                        Blocks.Get(item, out int first, out int last, out int firstToken, out int endToken);
                        if (first < End0) Run(first, global::System.Math.Min(last, End0), firstToken, endToken, ref Q);
                        if (first < End1 && last > End0) Run(global::System.Math.Max(first, End0), global::System.Math.Min(last, End1), firstToken, endToken, ref K);
                        if (last > End1) Run(global::System.Math.Max(first, End1), last, firstToken, endToken, ref V);
                    }
                }

                private void Run<TEpilogue>(int first, int end, int firstToken, int endToken, ref TEpilogue epilogue) where TEpilogue : struct, global::Kiln.Kernels.MatMul.ITileEpilogue
                {
                    // The layout was chosen from the file's types when the plan was compiled: each has its kernel. Only F32's
                    // blocks split the tokens (GemmBlocks); every other layout's item holds them all.
                    switch (Weights.Format)
                    {
                        case global::Kiln.Kernels.MatMul.PackedFormat.F32: global::Kiln.Kernels.MatMul.Gemm.F32(Weights, Input, first, end, firstToken, endToken, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.BF16: global::Kiln.Kernels.MatMul.Gemm.BF16(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q8_0: global::Kiln.Kernels.MatMul.Gemm.Q8_0(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q4_0: global::Kiln.Kernels.MatMul.Gemm.Q4_0(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q4_K: case global::Kiln.Kernels.MatMul.PackedFormat.Q5_K: case global::Kiln.Kernels.MatMul.PackedFormat.Q6_K: global::Kiln.Kernels.MatMul.Gemm.KQuants(Weights, Input, first, end, ref epilogue); break; // each segment in its own K type
                        default: throw new global::System.InvalidOperationException($"No kernel for the {Weights.Format} layout.");
                    }
                }
            }

            /// <summary>[2] q ← rope_neox([Wqkv]), then each adjacent pair rotated by the token's position (cos/sin from the step's table).</summary>
            private struct MatMul2Q : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public int Dim_Dim;
                public int Dim_HeadDim;
                public double[] Cos, Sin;
                public float[] Cosines, SignedSines;
                public int Half, HeadDim, Rotary;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int o = row - FirstRow, at = token * Cols, head = o - o % HeadDim, q = o - head;
                    if (o + 4 <= Cols && HeadDim % 4 == 0 && q + 4 <= Rotary) // two whole pairs of one head: turn them together
                    {
                        var e0 = sums;
                        var turned = global::Kiln.Kernels.VectorMath.RotatePairs(e0,
                            global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref Cosines[token * Rotary + q]),
                            global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref SignedSines[token * Rotary + q]));
                        int first = at + head + q / 2; // pairs (q/2, q/2 + Half) and (q/2 + 1, q/2 + 1 + Half)
                        Output[first] = turned[0];
                        Output[first + Half] = turned[1];
                        Output[first + 1] = turned[2];
                        Output[first + 1 + Half] = turned[3];
                        return;
                    }
                    for (int i = 0; i < 4 && o + i < Cols; i += 2)
                    {
                        var a0 = sums[i];
                        var b0 = sums[i + 1];
                        int c = o + i, start = c - c % HeadDim, within = c - start;
                        if (within < Rotary)
                        {
                            int pair = within / 2;
                            int first = at + start + pair, second = first + Half;
                            double cos = Cos[token * Half + pair], sin = Sin[token * Half + pair];
                            Output[first] = (float)(a0 * cos - b0 * sin);
                            Output[second] = (float)(a0 * sin + b0 * cos);
                        }
                        else
                        {
                            Output[at + c] = a0;
                            Output[at + c + 1] = b0;
                        }
                    }
                }

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store16(int row, int token, global::System.Runtime.Intrinsics.Vector512<float> sums)
                {
                    var low = global::System.Runtime.Intrinsics.Vector512.GetLower(sums);
                    var high = global::System.Runtime.Intrinsics.Vector512.GetUpper(sums);
                    Store(row, token, global::System.Runtime.Intrinsics.Vector256.GetLower(low));
                    Store(row + 4, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(low));
                    Store(row + 8, token, global::System.Runtime.Intrinsics.Vector256.GetLower(high));
                    Store(row + 12, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(high));
                }
            }

            /// <summary>[2] k ← rope_neox([Wqkv]), then each adjacent pair rotated by the token's position (cos/sin from the step's table).</summary>
            private struct MatMul2K : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public int Dim_KvDim;
                public int Dim_HeadDim;
                public double[] Cos, Sin;
                public float[] Cosines, SignedSines;
                public int Half, HeadDim, Rotary;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int o = row - FirstRow, at = token * Cols, head = o - o % HeadDim, q = o - head;
                    if (o + 4 <= Cols && HeadDim % 4 == 0 && q + 4 <= Rotary) // two whole pairs of one head: turn them together
                    {
                        var e0 = sums;
                        var turned = global::Kiln.Kernels.VectorMath.RotatePairs(e0,
                            global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref Cosines[token * Rotary + q]),
                            global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref SignedSines[token * Rotary + q]));
                        int first = at + head + q / 2; // pairs (q/2, q/2 + Half) and (q/2 + 1, q/2 + 1 + Half)
                        Output[first] = turned[0];
                        Output[first + Half] = turned[1];
                        Output[first + 1] = turned[2];
                        Output[first + 1 + Half] = turned[3];
                        return;
                    }
                    for (int i = 0; i < 4 && o + i < Cols; i += 2)
                    {
                        var a0 = sums[i];
                        var b0 = sums[i + 1];
                        int c = o + i, start = c - c % HeadDim, within = c - start;
                        if (within < Rotary)
                        {
                            int pair = within / 2;
                            int first = at + start + pair, second = first + Half;
                            double cos = Cos[token * Half + pair], sin = Sin[token * Half + pair];
                            Output[first] = (float)(a0 * cos - b0 * sin);
                            Output[second] = (float)(a0 * sin + b0 * cos);
                        }
                        else
                        {
                            Output[at + c] = a0;
                            Output[at + c + 1] = b0;
                        }
                    }
                }

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store16(int row, int token, global::System.Runtime.Intrinsics.Vector512<float> sums)
                {
                    var low = global::System.Runtime.Intrinsics.Vector512.GetLower(sums);
                    var high = global::System.Runtime.Intrinsics.Vector512.GetUpper(sums);
                    Store(row, token, global::System.Runtime.Intrinsics.Vector256.GetLower(low));
                    Store(row + 4, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(low));
                    Store(row + 8, token, global::System.Runtime.Intrinsics.Vector256.GetLower(high));
                    Store(row + 12, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(high));
                }
            }

            /// <summary>[2] v ← .</summary>
            private struct MatMul2V : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public int Dim_KvDim;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int o = row - FirstRow, at = token * Cols + o;
                    if (o + 4 <= Cols)
                    {
                        var e0 = sums;
                        Output.Store4(at, e0);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = sums[i];
                        Output[at + i] = e0;
                    }
                }

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store16(int row, int token, global::System.Runtime.Intrinsics.Vector512<float> sums)
                {
                    int o = row - FirstRow;
                    if (o + 16 <= Cols)
                    {
                        int at = token * Cols + o;
                        var e0 = sums;
                        Output.Store16(at, e0);
                        return;
                    }
                    var low = global::System.Runtime.Intrinsics.Vector512.GetLower(sums);
                    var high = global::System.Runtime.Intrinsics.Vector512.GetUpper(sums);
                    Store(row, token, global::System.Runtime.Intrinsics.Vector256.GetLower(low));
                    Store(row + 4, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(low));
                    Store(row + 8, token, global::System.Runtime.Intrinsics.Vector256.GetLower(high));
                    Store(row + 12, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(high));
                }
            }

            /// <summary>[4] Blocks of 4-row groups of the packed weights × tokens: each tile through its segment's epilogue as soon as it is computed.</summary>
            private struct MatMul4Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.PackedMatrix Weights;
                public global::Kiln.Kernels.MatMul.GemmInput Input;
                public global::Kiln.Kernels.MatMul.GemmBlocks Blocks;
                public MatMul4X2 X2;

                public void Execute(int start, int end)
                {
                    for (int item = start; item < end; item++)
                    {
                        Blocks.Get(item, out int first, out int last, out int firstToken, out int endToken);
                        Run(first, last, firstToken, endToken, ref X2);
                    }
                }

                private void Run<TEpilogue>(int first, int end, int firstToken, int endToken, ref TEpilogue epilogue) where TEpilogue : struct, global::Kiln.Kernels.MatMul.ITileEpilogue
                {
                    // The layout was chosen from the file's types when the plan was compiled: each has its kernel. Only F32's
                    // blocks split the tokens (GemmBlocks); every other layout's item holds them all.
                    switch (Weights.Format)
                    {
                        case global::Kiln.Kernels.MatMul.PackedFormat.F32: global::Kiln.Kernels.MatMul.Gemm.F32(Weights, Input, first, end, firstToken, endToken, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.BF16: global::Kiln.Kernels.MatMul.Gemm.BF16(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q8_0: global::Kiln.Kernels.MatMul.Gemm.Q8_0(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q4_0: global::Kiln.Kernels.MatMul.Gemm.Q4_0(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q4_K: case global::Kiln.Kernels.MatMul.PackedFormat.Q5_K: case global::Kiln.Kernels.MatMul.PackedFormat.Q6_K: global::Kiln.Kernels.MatMul.Gemm.KQuants(Weights, Input, first, end, ref epilogue); break; // each segment in its own K type
                        default: throw new global::System.InvalidOperationException($"No kernel for the {Weights.Format} layout.");
                    }
                }
            }

            /// <summary>[4] x2 ← x + [Wo].</summary>
            private struct MatMul4X2 : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public global::Kiln.Kernels.MatMul.FloatBuffer In0; public int In0Cols; // x
                public int Dim_Dim;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int in0 = token * In0Cols;
                    int o = row - FirstRow, at = token * Cols + o;
                    if (o + 4 <= Cols)
                    {
                        var e0 = In0.Load4(in0 + o);
                        var e1 = sums;
                        var e2 = e0 + e1;
                        Output.Store4(at, e2);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = In0[in0 + o + i];
                        var e1 = sums[i];
                        var e2 = e0 + e1;
                        Output[at + i] = e2;
                    }
                }

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store16(int row, int token, global::System.Runtime.Intrinsics.Vector512<float> sums)
                {
                    int o = row - FirstRow;
                    if (o + 16 <= Cols)
                    {
                        int in0 = token * In0Cols;
                        In0.Prefetch((token + global::Kiln.Kernels.MatMul.Gemm.F32TileTokens) * In0Cols + o);
                        int at = token * Cols + o;
                        var e0 = In0.Load16(in0 + o);
                        var e1 = sums;
                        var e2 = e0 + e1;
                        Output.Store16(at, e2);
                        return;
                    }
                    var low = global::System.Runtime.Intrinsics.Vector512.GetLower(sums);
                    var high = global::System.Runtime.Intrinsics.Vector512.GetUpper(sums);
                    Store(row, token, global::System.Runtime.Intrinsics.Vector256.GetLower(low));
                    Store(row + 4, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(low));
                    Store(row + 8, token, global::System.Runtime.Intrinsics.Vector256.GetLower(high));
                    Store(row + 12, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(high));
                }
            }

            /// <summary>[5] Blocks of 4-row groups of the packed weights × tokens: each tile through its segment's epilogue as soon as it is computed.</summary>
            private struct MatMul5Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.PackedMatrix Weights;
                public global::Kiln.Kernels.MatMul.GemmInput Input;
                public global::Kiln.Kernels.MatMul.GemmBlocks Blocks;
                public MatMul5Glu Glu;

                public void Execute(int start, int end)
                {
                    for (int item = start; item < end; item++)
                    {
                        Blocks.Get(item, out int first, out int last, out int firstToken, out int endToken);
                        Run(first, last, firstToken, endToken, ref Glu);
                    }
                }

                private void Run<TEpilogue>(int first, int end, int firstToken, int endToken, ref TEpilogue epilogue) where TEpilogue : struct, global::Kiln.Kernels.MatMul.ITileEpilogue
                {
                    // The layout was chosen from the file's types when the plan was compiled: each has its kernel. Only F32's
                    // blocks split the tokens (GemmBlocks); every other layout's item holds them all.
                    switch (Weights.Format)
                    {
                        case global::Kiln.Kernels.MatMul.PackedFormat.F32: global::Kiln.Kernels.MatMul.Gemm.F32(Weights, Input, first, end, firstToken, endToken, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.BF16: global::Kiln.Kernels.MatMul.Gemm.BF16(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q8_0: global::Kiln.Kernels.MatMul.Gemm.Q8_0(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q4_0: global::Kiln.Kernels.MatMul.Gemm.Q4_0(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q4_K: case global::Kiln.Kernels.MatMul.PackedFormat.Q5_K: case global::Kiln.Kernels.MatMul.PackedFormat.Q6_K: global::Kiln.Kernels.MatMul.Gemm.KQuants(Weights, Input, first, end, ref epilogue); break; // each segment in its own K type
                        default: throw new global::System.InvalidOperationException($"No kernel for the {Weights.Format} layout.");
                    }
                }
            }

            /// <summary>[5] glu ← silu([GateUp])·[GateUp]: rows interleaved, so each adjacent pair of sums yields one output.</summary>
            private struct MatMul5Glu : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public int Dim_Hidden;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int o = (row - FirstRow) / 2, at = token * Cols + o;
                    var first = global::System.Runtime.Intrinsics.Vector128.Shuffle(sums, global::System.Runtime.Intrinsics.Vector128.Create(0, 2, 0, 2)); // a₀, a₁
                    var second = global::System.Runtime.Intrinsics.Vector128.Shuffle(sums, global::System.Runtime.Intrinsics.Vector128.Create(1, 3, 1, 3)); // b₀, b₁
                    if (o + 2 <= Cols)
                    {
                        var e0 = first;
                        var e1 = global::System.Runtime.Intrinsics.Vector128.Create(1f);
                        var e2 = -e0;
                        var e3 = global::Kiln.Kernels.Elementwise.Lanes.Exp(e2);
                        var e4 = e1 + e3;
                        var e5 = e0 / e4;
                        var e6 = second;
                        var e7 = e5 * e6;
                        Output[at] = e7[0];
                        Output[at + 1] = e7[1];
                        return;
                    }
                    var l0 = first[0];
                    var l1 = 1f;
                    var l2 = -l0;
                    var l3 = global::Kiln.Kernels.Elementwise.Lanes.Exp(l2);
                    var l4 = l1 + l3;
                    var l5 = l0 / l4;
                    var l6 = second[0];
                    var l7 = l5 * l6;
                    Output[at] = l7;
                }

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store16(int row, int token, global::System.Runtime.Intrinsics.Vector512<float> sums)
                {
                    var low = global::System.Runtime.Intrinsics.Vector512.GetLower(sums);
                    var high = global::System.Runtime.Intrinsics.Vector512.GetUpper(sums);
                    Store(row, token, global::System.Runtime.Intrinsics.Vector256.GetLower(low));
                    Store(row + 4, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(low));
                    Store(row + 8, token, global::System.Runtime.Intrinsics.Vector256.GetLower(high));
                    Store(row + 12, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(high));
                }
            }

            /// <summary>[6] Blocks of 4-row groups of the packed weights × tokens: each tile through its segment's epilogue as soon as it is computed.</summary>
            private struct MatMul6Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.PackedMatrix Weights;
                public global::Kiln.Kernels.MatMul.GemmInput Input;
                public global::Kiln.Kernels.MatMul.GemmBlocks Blocks;
                public MatMul6X X;

                public void Execute(int start, int end)
                {
                    for (int item = start; item < end; item++)
                    {
                        Blocks.Get(item, out int first, out int last, out int firstToken, out int endToken);
                        Run(first, last, firstToken, endToken, ref X);
                    }
                }

                private void Run<TEpilogue>(int first, int end, int firstToken, int endToken, ref TEpilogue epilogue) where TEpilogue : struct, global::Kiln.Kernels.MatMul.ITileEpilogue
                {
                    // The layout was chosen from the file's types when the plan was compiled: each has its kernel. Only F32's
                    // blocks split the tokens (GemmBlocks); every other layout's item holds them all.
                    switch (Weights.Format)
                    {
                        case global::Kiln.Kernels.MatMul.PackedFormat.F32: global::Kiln.Kernels.MatMul.Gemm.F32(Weights, Input, first, end, firstToken, endToken, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.BF16: global::Kiln.Kernels.MatMul.Gemm.BF16(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q8_0: global::Kiln.Kernels.MatMul.Gemm.Q8_0(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q4_0: global::Kiln.Kernels.MatMul.Gemm.Q4_0(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q4_K: case global::Kiln.Kernels.MatMul.PackedFormat.Q5_K: case global::Kiln.Kernels.MatMul.PackedFormat.Q6_K: global::Kiln.Kernels.MatMul.Gemm.KQuants(Weights, Input, first, end, ref epilogue); break; // each segment in its own K type
                        default: throw new global::System.InvalidOperationException($"No kernel for the {Weights.Format} layout.");
                    }
                }
            }

            /// <summary>[6] x ← x2 + [Down].</summary>
            private struct MatMul6X : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public global::Kiln.Kernels.MatMul.FloatBuffer In0; public int In0Cols; // x2
                public int Dim_Dim;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int in0 = token * In0Cols;
                    int o = row - FirstRow, at = token * Cols + o;
                    if (o + 4 <= Cols)
                    {
                        var e0 = In0.Load4(in0 + o);
                        var e1 = sums;
                        var e2 = e0 + e1;
                        Output.Store4(at, e2);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = In0[in0 + o + i];
                        var e1 = sums[i];
                        var e2 = e0 + e1;
                        Output[at + i] = e2;
                    }
                }

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store16(int row, int token, global::System.Runtime.Intrinsics.Vector512<float> sums)
                {
                    int o = row - FirstRow;
                    if (o + 16 <= Cols)
                    {
                        int in0 = token * In0Cols;
                        In0.Prefetch((token + global::Kiln.Kernels.MatMul.Gemm.F32TileTokens) * In0Cols + o);
                        int at = token * Cols + o;
                        var e0 = In0.Load16(in0 + o);
                        var e1 = sums;
                        var e2 = e0 + e1;
                        Output.Store16(at, e2);
                        return;
                    }
                    var low = global::System.Runtime.Intrinsics.Vector512.GetLower(sums);
                    var high = global::System.Runtime.Intrinsics.Vector512.GetUpper(sums);
                    Store(row, token, global::System.Runtime.Intrinsics.Vector256.GetLower(low));
                    Store(row + 4, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(low));
                    Store(row + 8, token, global::System.Runtime.Intrinsics.Vector256.GetLower(high));
                    Store(row + 12, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(high));
                }
            }

            /// <summary>[7] Blocks of 4-row groups of the packed weights × tokens: each tile through its segment's epilogue as soon as it is computed.</summary>
            private struct MatMul7Work : global::Kiln.Threading.IParallelWork, global::Kiln.Kernels.MatMul.IOutputWork
            {
                public global::Kiln.Kernels.MatMul.PackedMatrix Weights;
                public global::Kiln.Kernels.MatMul.GemmInput Input;
                public global::Kiln.Kernels.MatMul.GemmBlocks Blocks;
                public MatMul7Logits Logits;

                public void Execute(int start, int end)
                {
                    for (int item = start; item < end; item++)
                    {
                        Blocks.Get(item, out int first, out int last, out int firstToken, out int endToken);
                        Run(first, last, firstToken, endToken, ref Logits);
                    }
                }

                public void BindOutput(global::Kiln.Kernels.MatMul.FloatBuffer output) => Logits.Output = output;

                private void Run<TEpilogue>(int first, int end, int firstToken, int endToken, ref TEpilogue epilogue) where TEpilogue : struct, global::Kiln.Kernels.MatMul.ITileEpilogue
                {
                    // The layout was chosen from the file's types when the plan was compiled: each has its kernel. Only F32's
                    // blocks split the tokens (GemmBlocks); every other layout's item holds them all.
                    switch (Weights.Format)
                    {
                        case global::Kiln.Kernels.MatMul.PackedFormat.F32: global::Kiln.Kernels.MatMul.Gemm.F32(Weights, Input, first, end, firstToken, endToken, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.BF16: global::Kiln.Kernels.MatMul.Gemm.BF16(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q8_0: global::Kiln.Kernels.MatMul.Gemm.Q8_0(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q4_0: global::Kiln.Kernels.MatMul.Gemm.Q4_0(Weights, Input, first, end, ref epilogue); break;
                        case global::Kiln.Kernels.MatMul.PackedFormat.Q4_K: case global::Kiln.Kernels.MatMul.PackedFormat.Q5_K: case global::Kiln.Kernels.MatMul.PackedFormat.Q6_K: global::Kiln.Kernels.MatMul.Gemm.KQuants(Weights, Input, first, end, ref epilogue); break; // each segment in its own K type
                        default: throw new global::System.InvalidOperationException($"No kernel for the {Weights.Format} layout.");
                    }
                }
            }

            /// <summary>[7] The matmul's input rows: rows(x), computed into the preparation's scratch.</summary>
            private struct MatMul7Input : global::Kiln.Kernels.MatMul.IRowSource
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer In0; public int In0Cols; // x at the wanted rows
                public int Dim_Dim;
                public global::Kiln.AttentionContext Context;

                public void Row(int t, global::Kiln.Kernels.MatMul.FloatBuffer destination)
                {
                    int in0 = Context.OutputRows[t] * In0Cols;
                    int c = 0;
                    if (global::Kiln.Kernels.Elementwise.Lanes.Use512)
                    {
                        for (; c + 16 <= destination.Length; c += 16)
                        {
                            var e0 = In0.Load16(in0 + c);
                            destination.Store16(c, e0);
                        }
                    }
                    if (global::Kiln.Kernels.Elementwise.Lanes.Use256)
                    {
                        for (; c + 8 <= destination.Length; c += 8)
                        {
                            var e0 = In0.Load8(in0 + c);
                            destination.Store8(c, e0);
                        }
                    }
                    for (; c < destination.Length; c++)
                    {
                        var e0 = In0[in0 + c];
                        destination[c] = e0;
                    }
                }
            }

            /// <summary>[7] logits ← .</summary>
            private struct MatMul7Logits : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public int Dim_Vocab;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int o = row - FirstRow, at = token * Cols + o;
                    if (o + 4 <= Cols)
                    {
                        var e0 = sums;
                        Output.Store4(at, e0);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = sums[i];
                        Output[at + i] = e0;
                    }
                }

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store16(int row, int token, global::System.Runtime.Intrinsics.Vector512<float> sums)
                {
                    int o = row - FirstRow;
                    if (o + 16 <= Cols)
                    {
                        int at = token * Cols + o;
                        var e0 = sums;
                        Output.Store16(at, e0);
                        return;
                    }
                    var low = global::System.Runtime.Intrinsics.Vector512.GetLower(sums);
                    var high = global::System.Runtime.Intrinsics.Vector512.GetUpper(sums);
                    Store(row, token, global::System.Runtime.Intrinsics.Vector256.GetLower(low));
                    Store(row + 4, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(low));
                    Store(row + 8, token, global::System.Runtime.Intrinsics.Vector256.GetLower(high));
                    Store(row + 12, token, global::System.Runtime.Intrinsics.Vector256.GetUpper(high));
                }
            }

        }
    }
}
