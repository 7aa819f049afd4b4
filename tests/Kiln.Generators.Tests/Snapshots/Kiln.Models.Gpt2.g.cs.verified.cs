// Kiln fusion report for Gpt2 (architecture "gpt2"), CPU kernels on a worker pool.
// Kernels, in step order:
//   [1] elementwise: x ← TokenEmbedding[tokens] + Positions[positions], one parallel vector loop
//   for each of the LayerCount layers (Layers[layer]):
//     [2] matmul: x·[Wqkv|Wqkv[Dim..]|Wqkv[2*Dim..]]ᵀ with LayerNorm(AttnNorm, AttnNormBias) fused into the input preparation → q ← [Wqkv] + Bqkv epilogue, k ← [Wqkv] + Bqkv epilogue, v ← [Wqkv] + Bqkv epilogue
//     [3] attention: attention ← Attention(q, k, v): k/v rows written to the KV cache (each token's row of its sequence's blocks, in the cache's storage), then causal GQA in parallel over (token, chunk of KV heads) items, each reading its sequence's cached rows block by block, once for all its heads (dots, softmax, weighted sum)
//     [4] matmul: attention·[Wo]ᵀ → x2 ← x + [Wo] epilogue
//     [5] matmul: x2·[Up]ᵀ with LayerNorm(FfnNorm, FfnNormBias) fused into the input preparation → gelu ← gelu([Up]) epilogue
//     [6] matmul: gelu·[Down]ᵀ → x ← x2 + [Down] epilogue
//   end of layer loop
//   [7] matmul: (rows(x))·[Output]ᵀ with LayerNorm(OutputNorm, OutputNormBias) fused into the input preparation (the input chain computed per row while preparing) → logits
// Elementwise ops: every one fused — into a matmul's input preparation or tile epilogue, or into one of 1 row loop(s) (parallel, vectorized) that stand where no matmul can take them: x, carried into the layer loop.
// Weight layouts (packed once when the plan is compiled, in groups of 4 rows; a segment whose rows are not a multiple of 4 is padded with zero rows):
//   rule "as stored" (a weight without [Quantize]), chosen per matrix when the plan is compiled, from the file's types: F32 and F16 → F32x16 panels (F16 widened exactly); BF16 → BF16x4 (widened exactly in the kernel); Q8_0 → Q8_0x8 interleaved (the file's quants and fp16 scales copied); Q4_0 → Q4_0x8 interleaved (the file's nibbles and fp16 scales copied); Q6_K, Q5_K, Q4_K → Q6_Kx8, Q5_Kx8, Q4_Kx8 interleaved (the file's quants, scales, mins and fp16 super-block scales copied); any other type (Q5_0, Q2_K, …) → Q8_0x8 (dequantized, requantized); weights of different types in one matmul → the most precise of their layouts, except that K-quants of different types keep their own, one segment each. Work goes in groups of 4 rows and every tile reads each weight once for several tokens: F32x16 holds panels of 16 rows, element k of the 16 side by side (outer products: one load of 16 rows times one broadcast activation, no reductions); BF16x4 holds 16-element chunks of the 4 rows in turn (the kernel streams a group front to back); the quantized layouts store two groups together, 8 rows 4 bytes at a time (one multiply-add against 4 broadcast activations covers all 8 rows, each row's sum complete in its own lane).
//   Wqkv, Wqkv[Dim..], Wqkv[2*Dim..] → _wqkv[layer] [Dim+Dim+Dim, Dim], segments stacked: as stored (the rule above); one horizontal matmul prepares its input once and reads it for all of them; a fused weight is split by rows when packed (its slices cost nothing at run time).
//   Wo → _wo[layer] [Dim, Dim], one segment: as stored (the rule above).
//   Up → _up[layer] [Hidden, Dim], one segment: as stored (the rule above).
//   Down → _down[layer] [Dim, Hidden], one segment: as stored (the rule above).
//   Output → _output [Vocab, Dim], one segment: as stored (the rule above).
//   PlanOptions.Sparsity, when set, packs every matrix laid out as stored or Q8_0 in that sparse pattern instead (None: dense), for one plan.
//   TokenEmbedding → as stored in the file (memory-mapped): each gathered row decoded by itself, by token.
//   Positions → as stored in the file (memory-mapped): each gathered row decoded by itself, by position.
// Arena (one float buffer; each slot holds maxTokensPerStep rows of its widest buffer):
//   slot 0: x [T, Dim]
//   slot 1: q [T, Dim], x2 [T, Dim]
//   slot 2: k [T, Dim], gelu [T, Hidden]
//   slot 3: v [T, Dim]
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
// Attention scratch: per chunk of work items, every head's scores over the KV cache's MaxContext (and one block's rows when the cache stores int8), grown when a larger cache is first seen.
// Threads: one worker pool (PlanOptions.Threads). A matmul splits its 4-row groups over the threads, each tile (64 rows × 6 tokens
//   for F32, 4 rows × 4 tokens for BF16, 8 rows × 8 tokens for the quantized layouts) going through its epilogue while in registers; F32 with many tokens
//   on several threads splits its tokens too, in items of 64 rows × a block of tokens (GemmBlocks); attention splits (token, KV-head chunk) items;
//   elementwise loops split rows. Every output is computed by one thread in a fixed order, so results do not depend on the thread count.
// <auto-generated/> by Kiln.Generators from the [Model] class Kiln.Models.Gpt2.
#nullable enable
#pragma warning disable CS1591, CS0162

namespace Kiln.Models
{
    partial class Gpt2 : global::Kiln.IKilnModel
    {
        /// <summary>Shape symbol "Vocab": bound at load from the first weight that declares it, checked on every other.</summary>
        public int Vocab { get; private set; }

        /// <summary>Binds a model file: architecture "gpt2", hyperparameters, then every weight with its declared shape checked.</summary>
        public static Gpt2 Load(global::Kiln.Loading.ModelFile file)
        {
            if (file is null) throw new global::System.ArgumentNullException(nameof(file));
            if (file.Architecture != "gpt2")
                throw new global::Kiln.Loading.ModelLoadException(file.Path, "general.architecture", null, $"expected \"gpt2\" for Gpt2, found \"{file.Architecture}\".");
            // The file names its keys and tensors as GGUF does, or as a Hugging Face checkpoint does; each [Hyper], [Weight]
            // and [Layers] declares both.
            bool huggingFace = file.Naming == global::Kiln.Loading.ModelNaming.HuggingFace;
            var model = new Gpt2();

            // Hyperparameters: an absent key keeps the member's initializer unless it is required.
            string key;
            key = huggingFace ? "n_embd" : "gpt2.embedding_length";
            if (file.TryGetInt(key, out long dimValue)) model.Dim = KilnToInt(file, key, dimValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "n_inner" : "gpt2.feed_forward_length";
            if (file.TryGetInt(key, out long innerValue)) model.Inner = KilnToInt(file, key, innerValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            key = huggingFace ? "n_layer" : "gpt2.block_count";
            if (file.TryGetInt(key, out long layerCountValue)) model.LayerCount = KilnToInt(file, key, layerCountValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "n_head" : "gpt2.attention.head_count";
            if (file.TryGetInt(key, out long headsValue)) model.Heads = KilnToInt(file, key, headsValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "layer_norm_epsilon" : "gpt2.attention.layer_norm_epsilon";
            if (file.TryGetFloat(key, out double epsValue)) model.Eps = (float)epsValue;
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not a number.");
            key = huggingFace ? "n_positions" : "gpt2.context_length";
            if (file.TryGetInt(key, out long contextValue)) model.Context = KilnToInt(file, key, contextValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");

            // Free shape symbols are bound by the first weight that declares them.
            bool vocabBound = false;

            // Every tensor the file holds must be bound: one this definition does not read would be silently ignored.
            var bound = new global::System.Collections.Generic.HashSet<string>();
            // Weights, shapes checked against the declared dimensions. Derived dimensions are evaluated here, so a
            // hyperparameter that breaks their arithmetic (a zero head count, say) is reported as the file's fault.
            string name;
            try
            {
                name = huggingFace ? "wte.weight" : "token_embd.weight";
                model.TokenEmbedding = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.TokenEmbedding, "[Vocab, Dim]", 2);
                if (!vocabBound) { model.Vocab = model.TokenEmbedding.Shape[0]; vocabBound = true; }
                KilnCheckShape(file, name, model.TokenEmbedding, "[Vocab, Dim]", model.Vocab, model.Dim);
                name = huggingFace ? "wpe.weight" : "position_embd.weight";
                model.Positions = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.Positions, "[Context, Dim]", 2);
                KilnCheckShape(file, name, model.Positions, "[Context, Dim]", model.Context, model.Dim);
                name = huggingFace ? "ln_f.weight" : "output_norm.weight";
                model.OutputNorm = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.OutputNorm, "[Dim]", 1);
                KilnCheckShape(file, name, model.OutputNorm, "[Dim]", model.Dim);
                name = huggingFace ? "ln_f.bias" : "output_norm.bias";
                model.OutputNormBias = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.OutputNormBias, "[Dim]", 1);
                KilnCheckShape(file, name, model.OutputNormBias, "[Dim]", model.Dim);
                name = huggingFace ? "lm_head.weight" : "output.weight";
                model.Output = file.Tensors.ContainsKey(name) ? KilnLoad(file, name, bound) : model.TokenEmbedding;
                KilnCheckRank(file, name, model.Output, "[Vocab, Dim]", 2);
                if (!vocabBound) { model.Vocab = model.Output.Shape[0]; vocabBound = true; }
                KilnCheckShape(file, name, model.Output, "[Vocab, Dim]", model.Vocab, model.Dim);

                if (model.LayerCount < 0) throw new global::Kiln.Loading.ModelLoadException(file.Path, "LayerCount", null, $"negative layer count {model.LayerCount}.");
                model.Layers = new Block[model.LayerCount];
                for (int layer = 0; layer < model.LayerCount; layer++)
                {
                    string prefix = string.Format(global::System.Globalization.CultureInfo.InvariantCulture, huggingFace ? "h.{0}." : "blk.{0}.", layer);
                    var block = new Block();
                    name = prefix + (huggingFace ? "ln_1.weight" : "attn_norm.weight");
                    block.AttnNorm = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.AttnNorm, "[Dim]", 1);
                    KilnCheckShape(file, name, block.AttnNorm, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "ln_1.bias" : "attn_norm.bias");
                    block.AttnNormBias = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.AttnNormBias, "[Dim]", 1);
                    KilnCheckShape(file, name, block.AttnNormBias, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "attn.c_attn.weight" : "attn_qkv.weight");
                    block.Wqkv = KilnLoad(file, name, bound);
                    if (huggingFace) block.Wqkv = global::Kiln.Loading.HuggingFaceConversions.Transpose(file, name, block.Wqkv);
                    KilnCheckRank(file, name, block.Wqkv, "[3*Dim, Dim]", 2);
                    KilnCheckShape(file, name, block.Wqkv, "[3*Dim, Dim]", 3 * model.Dim, model.Dim);
                    name = prefix + (huggingFace ? "attn.c_attn.bias" : "attn_qkv.bias");
                    block.Bqkv = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Bqkv, "[3*Dim]", 1);
                    KilnCheckShape(file, name, block.Bqkv, "[3*Dim]", 3 * model.Dim);
                    name = prefix + (huggingFace ? "attn.c_proj.weight" : "attn_output.weight");
                    block.Wo = KilnLoad(file, name, bound);
                    if (huggingFace) block.Wo = global::Kiln.Loading.HuggingFaceConversions.Transpose(file, name, block.Wo);
                    KilnCheckRank(file, name, block.Wo, "[Dim, Dim]", 2);
                    KilnCheckShape(file, name, block.Wo, "[Dim, Dim]", model.Dim, model.Dim);
                    name = prefix + (huggingFace ? "attn.c_proj.bias" : "attn_output.bias");
                    block.Bo = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Bo, "[Dim]", 1);
                    KilnCheckShape(file, name, block.Bo, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "ln_2.weight" : "ffn_norm.weight");
                    block.FfnNorm = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.FfnNorm, "[Dim]", 1);
                    KilnCheckShape(file, name, block.FfnNorm, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "ln_2.bias" : "ffn_norm.bias");
                    block.FfnNormBias = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.FfnNormBias, "[Dim]", 1);
                    KilnCheckShape(file, name, block.FfnNormBias, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "mlp.c_fc.weight" : "ffn_up.weight");
                    block.Up = KilnLoad(file, name, bound);
                    if (huggingFace) block.Up = global::Kiln.Loading.HuggingFaceConversions.Transpose(file, name, block.Up);
                    KilnCheckRank(file, name, block.Up, "[Hidden, Dim]", 2);
                    KilnCheckShape(file, name, block.Up, "[Hidden, Dim]", model.Hidden, model.Dim);
                    name = prefix + (huggingFace ? "mlp.c_fc.bias" : "ffn_up.bias");
                    block.UpBias = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.UpBias, "[Hidden]", 1);
                    KilnCheckShape(file, name, block.UpBias, "[Hidden]", model.Hidden);
                    name = prefix + (huggingFace ? "mlp.c_proj.weight" : "ffn_down.weight");
                    block.Down = KilnLoad(file, name, bound);
                    if (huggingFace) block.Down = global::Kiln.Loading.HuggingFaceConversions.Transpose(file, name, block.Down);
                    KilnCheckRank(file, name, block.Down, "[Dim, Hidden]", 2);
                    KilnCheckShape(file, name, block.Down, "[Dim, Hidden]", model.Dim, model.Hidden);
                    name = prefix + (huggingFace ? "mlp.c_proj.bias" : "ffn_down.bias");
                    block.DownBias = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.DownBias, "[Dim]", 1);
                    KilnCheckShape(file, name, block.DownBias, "[Dim]", model.Dim);
                    model.Layers[layer] = block;
                }
            }
            catch (global::System.ArithmeticException e)
            {
                throw new global::Kiln.Loading.ModelLoadException(file.Path, "hyperparameters", null, $"a derived dimension cannot be computed from them ({e.Message}).", e);
            }
            global::Kiln.Loading.DefinitionChecks.RequireAllBound(file, bound, "Gpt2");
            // What the file states that changes the math must be read by this definition, or agree with what its forward uses.
            if (huggingFace)
            {
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "sliding_window", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "sliding_window_pattern", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "attn_logit_softcapping", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "final_logit_softcapping", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "rms_norm_eps", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "rope_theta", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "rope_local_base_freq", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "partial_rotary_factor", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireAgrees(file, "head_dim", model.KvShape.HeadDim, "Gpt2", "its attention's head dimension");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "num_local_experts", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "num_experts", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "query_pre_attn_scalar", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "layer_types", "Gpt2");
            }
            else
            {
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "gpt2.attention.sliding_window", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "gpt2.attention.sliding_window_pattern", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "gpt2.attn_logit_softcapping", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "gpt2.final_logit_softcapping", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "gpt2.attention.layer_norm_rms_epsilon", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "gpt2.rope.freq_base", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "gpt2.rope.freq_base_swa", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "gpt2.rope.dimension_count", "Gpt2");
                global::Kiln.Loading.DefinitionChecks.RequireAgrees(file, "gpt2.attention.key_length", model.KvShape.HeadDim, "Gpt2", "its attention's head dimension");
                global::Kiln.Loading.DefinitionChecks.RequireAgrees(file, "gpt2.attention.value_length", model.KvShape.HeadDim, "Gpt2", "its attention's head dimension");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "gpt2.expert_count", "Gpt2");
            }
            global::Kiln.Loading.DefinitionChecks.RejectRopeScaling(file, "gpt2", "Gpt2");
            global::Kiln.Loading.DefinitionChecks.RequireTokenizer(file, "gpt2", "Gpt2");
            return model;
        }

        /// <summary>Logits per output row: the last dimension of the forward result.</summary>
        public int VocabSize => this.Vocab;

        /// <summary>The KV cache's geometry: one layer per attention layer, rows of the attention's k width, its head dimension.</summary>
        public global::Kiln.KvCacheShape KvShape => new global::Kiln.KvCacheShape(this.LayerCount, this.Dim, this.Dim / this.Heads);

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
        /// Gpt2 compiled into fused CPU kernels over one native arena, run on the plan's worker pool (see the fusion
        /// report at the top of this file). A step allocates nothing once the attention scratch fits the KV cache in use.
        /// </summary>
        public sealed class CompiledPlan : global::Kiln.ICompiledPlan
        {
            /// <summary>The fusion report: which ops became which kernel, which layout each weight got, and why.</summary>
            public const string Report =
                "Kiln fusion report for Gpt2 (architecture \"gpt2\"), CPU kernels on a worker pool.\n" +
                "Kernels, in step order:\n" +
                "  [1] elementwise: x ← TokenEmbedding[tokens] + Positions[positions], one parallel vector loop\n" +
                "  for each of the LayerCount layers (Layers[layer]):\n" +
                "    [2] matmul: x·[Wqkv|Wqkv[Dim..]|Wqkv[2*Dim..]]ᵀ with LayerNorm(AttnNorm, AttnNormBias) fused into the input preparation → q ← [Wqkv] + Bqkv epilogue, k ← [Wqkv] + Bqkv epilogue, v ← [Wqkv] + Bqkv epilogue\n" +
                "    [3] attention: attention ← Attention(q, k, v): k/v rows written to the KV cache (each token's row of its sequence's blocks, in the cache's storage), then causal GQA in parallel over (token, chunk of KV heads) items, each reading its sequence's cached rows block by block, once for all its heads (dots, softmax, weighted sum)\n" +
                "    [4] matmul: attention·[Wo]ᵀ → x2 ← x + [Wo] epilogue\n" +
                "    [5] matmul: x2·[Up]ᵀ with LayerNorm(FfnNorm, FfnNormBias) fused into the input preparation → gelu ← gelu([Up]) epilogue\n" +
                "    [6] matmul: gelu·[Down]ᵀ → x ← x2 + [Down] epilogue\n" +
                "  end of layer loop\n" +
                "  [7] matmul: (rows(x))·[Output]ᵀ with LayerNorm(OutputNorm, OutputNormBias) fused into the input preparation (the input chain computed per row while preparing) → logits\n" +
                "Elementwise ops: every one fused — into a matmul's input preparation or tile epilogue, or into one of 1 row loop(s) (parallel, vectorized) that stand where no matmul can take them: x, carried into the layer loop.\n" +
                "Weight layouts (packed once when the plan is compiled, in groups of 4 rows; a segment whose rows are not a multiple of 4 is padded with zero rows):\n" +
                "  rule \"as stored\" (a weight without [Quantize]), chosen per matrix when the plan is compiled, from the file's types: F32 and F16 → F32x16 panels (F16 widened exactly); BF16 → BF16x4 (widened exactly in the kernel); Q8_0 → Q8_0x8 interleaved (the file's quants and fp16 scales copied); Q4_0 → Q4_0x8 interleaved (the file's nibbles and fp16 scales copied); Q6_K, Q5_K, Q4_K → Q6_Kx8, Q5_Kx8, Q4_Kx8 interleaved (the file's quants, scales, mins and fp16 super-block scales copied); any other type (Q5_0, Q2_K, …) → Q8_0x8 (dequantized, requantized); weights of different types in one matmul → the most precise of their layouts, except that K-quants of different types keep their own, one segment each. Work goes in groups of 4 rows and every tile reads each weight once for several tokens: F32x16 holds panels of 16 rows, element k of the 16 side by side (outer products: one load of 16 rows times one broadcast activation, no reductions); BF16x4 holds 16-element chunks of the 4 rows in turn (the kernel streams a group front to back); the quantized layouts store two groups together, 8 rows 4 bytes at a time (one multiply-add against 4 broadcast activations covers all 8 rows, each row's sum complete in its own lane).\n" +
                "  Wqkv, Wqkv[Dim..], Wqkv[2*Dim..] → _wqkv[layer] [Dim+Dim+Dim, Dim], segments stacked: as stored (the rule above); one horizontal matmul prepares its input once and reads it for all of them; a fused weight is split by rows when packed (its slices cost nothing at run time).\n" +
                "  Wo → _wo[layer] [Dim, Dim], one segment: as stored (the rule above).\n" +
                "  Up → _up[layer] [Hidden, Dim], one segment: as stored (the rule above).\n" +
                "  Down → _down[layer] [Dim, Hidden], one segment: as stored (the rule above).\n" +
                "  Output → _output [Vocab, Dim], one segment: as stored (the rule above).\n" +
                "  PlanOptions.Sparsity, when set, packs every matrix laid out as stored or Q8_0 in that sparse pattern instead (None: dense), for one plan.\n" +
                "  TokenEmbedding → as stored in the file (memory-mapped): each gathered row decoded by itself, by token.\n" +
                "  Positions → as stored in the file (memory-mapped): each gathered row decoded by itself, by position.\n" +
                "Arena (one float buffer; each slot holds maxTokensPerStep rows of its widest buffer):\n" +
                "  slot 0: x [T, Dim]\n" +
                "  slot 1: q [T, Dim], x2 [T, Dim]\n" +
                "  slot 2: k [T, Dim], gelu [T, Hidden]\n" +
                "  slot 3: v [T, Dim]\n" +
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
                "Attention scratch: per chunk of work items, every head's scores over the KV cache's MaxContext (and one block's rows when the cache stores int8), grown when a larger cache is first seen.\n" +
                "Threads: one worker pool (PlanOptions.Threads). A matmul splits its 4-row groups over the threads, each tile (64 rows × 6 tokens\n" +
                "  for F32, 4 rows × 4 tokens for BF16, 8 rows × 8 tokens for the quantized layouts) going through its epilogue while in registers; F32 with many tokens\n" +
                "  on several threads splits its tokens too, in items of 64 rows × a block of tokens (GemmBlocks); attention splits (token, KV-head chunk) items;\n" +
                "  elementwise loops split rows. Every output is computed by one thread in a fixed order, so results do not depend on the thread count.\n";

            private readonly Gpt2 _model;
            private readonly global::Kiln.Threading.WorkerPool _pool;
            private readonly string _report;
            private bool _disposed;

            // Dimensions, fixed when the model was bound.
            private readonly int _Dim;
            private readonly int _Hidden;
            private readonly int _Vocab;
            private readonly int _2_x_Dim;
            private readonly int _Context;
            private readonly int _3_x_Dim;

            // Weights in the kernels' layouts: one packed matrix per matmul (and layer), segments on 4-row boundaries.
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _wqkv; // per layer [Dim + Dim + Dim, Dim]
            private readonly int _wqkvStart1, _wqkvStart2, _wqkvRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _wo; // per layer [Dim, Dim]
            private readonly int _woRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _up; // per layer [Hidden, Dim]
            private readonly int _upRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _down; // per layer [Dim, Hidden]
            private readonly int _downRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix _output; // [Vocab, Dim]
            private readonly int _outputRows; // first packed row of each later segment, then the padded row count

            // This step's token ids, checked against the vocabulary, where the gathering loops can read them.
            private readonly int[] _tokens;

            // Gathered tables, as the file stores them: each row a step needs is decoded into its token's slot (the table is never widened whole).
            private readonly global::Kiln.Kernels.Elementwise.GatherTable _table0; // TokenEmbedding
            private readonly global::Kiln.Kernels.Elementwise.GatherTable _table1; // Positions

            // The arena (native memory that never moves, so work items on every thread can hold views of it).
            private readonly global::Kiln.Kernels.MatMul.NativeBlock _arenaMemory;
            private readonly global::Kiln.Kernels.MatMul.FloatBuffer _arena;
            private readonly int _xOffset;
            private readonly int _qOffset;
            private readonly int _kOffset;
            private readonly int _vOffset;
            private readonly int _attentionOffset;
            private readonly int _x2Offset;
            private readonly int _geluOffset;

            // Matmul inputs, prepared once per matmul for all its weights (normalized, quantized to Q8 for the quantized layouts).
            private readonly global::Kiln.Kernels.MatMul.GemmScratch _inputs;

            // Attention scratch per chunk of work items (global::Kiln.Kernels.Attention.PagedAttention.MaxChunks at most): every head's row of scores over
            // the KV cache's MaxContext, and room to read one block's rows when the cache stores int8; grown when a larger cache is first seen;
            // then per token of a step and query head, a shared prefix's softmax max and sum.
            private global::Kiln.Kernels.MatMul.NativeBlock? _scoresMemory;
            private global::Kiln.Kernels.MatMul.FloatBuffer _scores, _gather, _prefixStatistics;
            private int _scoresContext, _scoresPerChunk, _gatherFloats;

            public CompiledPlan(Gpt2 model, global::Kiln.PlanOptions options)
            {
                if (model is null) throw new global::System.ArgumentNullException(nameof(model));
                if (options is null) throw new global::System.ArgumentNullException(nameof(options));
                options.Validate();
                int maxTokensPerStep = options.MaxTokensPerStep;
                _model = model;
                MaxTokensPerStep = maxTokensPerStep;
                _Dim = model.Dim;
                _Hidden = model.Hidden;
                _Vocab = model.Vocab;
                _2_x_Dim = 2 * model.Dim;
                _Context = model.Context;
                _3_x_Dim = 3 * model.Dim;

                if (model.Heads <= 0 || model.Heads <= 0 || model.Heads % model.Heads != 0 || _Dim % model.Heads != 0 || _Dim / model.Heads * model.Heads != _Dim)
                    throw new global::System.InvalidOperationException($"Attention: {model.Heads} heads over {model.Heads} KV heads do not fit q rows of {_Dim} and k rows of {_Dim}.");

                _tokens = new int[maxTokensPerStep];
                _table0 = new global::Kiln.Kernels.Elementwise.GatherTable(model.TokenEmbedding, maxTokensPerStep);
                _table1 = new global::Kiln.Kernels.Elementwise.GatherTable(model.Positions, maxTokensPerStep);
                var layouts = new global::System.Text.StringBuilder(Report).Append("Layouts chosen for this model file:\n");
                // Layers.Wqkv: layout as stored, chosen per matrix from the file's types
                _wqkvStart1 = global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Dim);
                _wqkvStart2 = _wqkvStart1 + global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Dim);
                _wqkvRows = _wqkvStart2 + global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Dim);
                var sparsity_wqkv = global::Kiln.Kernels.MatMul.WeightLayouts.Sparsity(global::Kiln.SparsePattern.None, global::Kiln.WeightFormat.AsStored, options);
                _wqkv = new global::Kiln.Kernels.MatMul.PackedMatrix[model.LayerCount];
                for (int layer = 0; layer < model.LayerCount; layer++)
                {
                    var packed = new global::Kiln.Kernels.MatMul.PackedMatrix(global::Kiln.Kernels.MatMul.WeightLayouts.Resolve(global::Kiln.WeightFormat.AsStored, sparsity_wqkv, model.Layers[layer].Wqkv), _wqkvRows, _Dim, sparsity_wqkv);
                    packed.Pack(0, model.Layers[layer].Wqkv, 0, _Dim, "Wqkv");
                    packed.Pack(_wqkvStart1, model.Layers[layer].Wqkv, _Dim, _Dim, "Wqkv");
                    packed.Pack(_wqkvStart2, model.Layers[layer].Wqkv, _2_x_Dim, _Dim, "Wqkv");
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

                // Layers.Up: layout as stored, chosen per matrix from the file's types
                _upRows = global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Hidden);
                var sparsity_up = global::Kiln.Kernels.MatMul.WeightLayouts.Sparsity(global::Kiln.SparsePattern.None, global::Kiln.WeightFormat.AsStored, options);
                _up = new global::Kiln.Kernels.MatMul.PackedMatrix[model.LayerCount];
                for (int layer = 0; layer < model.LayerCount; layer++)
                {
                    var packed = new global::Kiln.Kernels.MatMul.PackedMatrix(global::Kiln.Kernels.MatMul.WeightLayouts.Resolve(global::Kiln.WeightFormat.AsStored, sparsity_up, model.Layers[layer].Up), _upRows, _Dim, sparsity_up);
                    packed.Pack(0, model.Layers[layer].Up, 0, _Hidden, "Up");
                    packed.FinishPacking();
                    _up[layer] = packed;
                }
                layouts.Append(global::Kiln.Kernels.MatMul.WeightLayouts.Summarize("_up[layer]", _up));

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
                _kOffset = offset; // k [T, Dim]
                _geluOffset = offset; // gelu [T, Hidden]
                offset += (maxTokensPerStep * global::System.Math.Max(_Dim, _Hidden) + 15) & ~15; // each slot starts on a 64-byte boundary
                _vOffset = offset; // v [T, Dim]
                offset += (maxTokensPerStep * _Dim + 15) & ~15; // each slot starts on a 64-byte boundary
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
                if (cache.KvDim != _Dim || cache.Layers < _model.LayerCount)
                    throw new global::System.ArgumentException($"The KV cache holds {cache.Layers} layers of rows of {cache.KvDim}; this model needs {_model.LayerCount} of {_Dim} (use CreateKvCache).", nameof(context));
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

                for (int t = 0; t < T; t++)
                {
                    if ((uint)positions[t] >= (uint)_model.Positions.Rows)
                        throw new global::System.ArgumentOutOfRangeException(nameof(context), $"Position {positions[t]} of token {t} is beyond the {_model.Positions.Rows} positions the embedding table Positions holds.");
                }

                // Activations: views of the arena.
                global::System.Span<float> x = _arena.Slice(_xOffset, T * _Dim);
                global::System.Span<float> q = _arena.Slice(_qOffset, T * _Dim);
                global::System.Span<float> k = _arena.Slice(_kOffset, T * _Dim);
                global::System.Span<float> v = _arena.Slice(_vOffset, T * _Dim);
                global::System.Span<float> attention = _arena.Slice(_attentionOffset, T * _Dim);
                global::System.Span<float> x2 = _arena.Slice(_x2Offset, T * _Dim);
                global::System.Span<float> gelu = _arena.Slice(_geluOffset, T * _Hidden);

                // [1] elementwise: x ← TokenEmbedding[tokens] + Positions[positions], one parallel vector loop
                {
                    stepProfiler?.Mark("elementwise x");
                    // x ← TokenEmbedding[tokens] + Positions[positions]: each row by one work item, the widest vectors first.
                    _pool.Run(T, global::Kiln.Kernels.Elementwise.RowLoop.ChunkSize(T, _Dim, _pool.ThreadCount), new Elementwise1Work { Output = _arena.View(_xOffset, T * _Dim), G0 = _table0, G1 = _table1, Dim_Dim = _Dim, Tokens = _tokens, Context = context });
                }
                for (int layer = 0; layer < _model.LayerCount; layer++) // Layers[layer]
                {
                    // [2] matmul: x·[Wqkv|Wqkv[Dim..]|Wqkv[2*Dim..]]ᵀ with LayerNorm(AttnNorm, AttnNormBias) fused into the input preparation → q ← [Wqkv] + Bqkv epilogue, k ← [Wqkv] + Bqkv epilogue, v ← [Wqkv] + Bqkv epilogue
                    {
                        stepProfiler?.Mark("input wqkv");
                        var weights = _wqkv[layer];
                        // The input once for every weight, layer-normalized by AttnNorm: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_xOffset, T * _Dim), _Dim, T, _Dim, global::Kiln.Kernels.MatMul.InputNorm.Layer, _model.Layers[layer].AttnNorm.Data, _model.Layers[layer].AttnNormBias.Data, (float)(_model.Eps), _pool);
                        stepProfiler?.Mark("matmul wqkv");
                        var work = new MatMul2Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            End0 = _wqkvStart1 / 4,
                            End1 = _wqkvStart2 / 4,
                            Q = new MatMul2Q { Output = _arena.View(_qOffset, T * _Dim), Cols = _Dim, FirstRow = 0, W0 = _model.Layers[layer].Bqkv.Data, Dim_Dim = _Dim },
                            K = new MatMul2K { Output = _arena.View(_kOffset, T * _Dim), Cols = _Dim, FirstRow = _wqkvStart1, W0 = _model.Layers[layer].Bqkv.Data, Dim_Dim = _Dim },
                            V = new MatMul2V { Output = _arena.View(_vOffset, T * _Dim), Cols = _Dim, FirstRow = _wqkvStart2, W0 = _model.Layers[layer].Bqkv.Data, Dim_2_x_Dim = _2_x_Dim, Dim_Dim = _Dim },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                    // [3] attention: attention ← Attention(q, k, v): k/v rows written to the KV cache (each token's row of its sequence's blocks, in the cache's storage), then causal GQA in parallel over (token, chunk of KV heads) items, each reading its sequence's cached rows block by block, once for all its heads (dots, softmax, weighted sum)
                    {
                        stepProfiler?.Mark("kv write");
                        int heads = _model.Heads, kvHeads = _model.Heads;
                        // This step's k and v rows go to the cache first (at each token's row of its sequence's blocks, in the cache's
                        // storage): a token attends to itself and to earlier tokens of the step.
                        for (int t = 0; t < T; t++)
                        {
                            int row = context.KvRow(t);
                            cache.WriteKey(layer, row, k.Slice(t * _Dim, _Dim));
                            cache.WriteValue(layer, row, v.Slice(t * _Dim, _Dim));
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
                            KvCols = _Dim,
                            Options = new global::Kiln.Kernels.Attention.AttentionOptions((float)(1.0 / global::System.Math.Sqrt(_Dim / heads)), 0, (float)(0f), true),
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
                            X2 = new MatMul4X2 { Output = _arena.View(_x2Offset, T * _Dim), Cols = _Dim, FirstRow = 0, In0 = _arena.View(_xOffset, T * _Dim), In0Cols = _Dim, W0 = _model.Layers[layer].Bo.Data, Dim_Dim = _Dim },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                    // [5] matmul: x2·[Up]ᵀ with LayerNorm(FfnNorm, FfnNormBias) fused into the input preparation → gelu ← gelu([Up]) epilogue
                    {
                        stepProfiler?.Mark("input up");
                        var weights = _up[layer];
                        // The input once for every weight, layer-normalized by FfnNorm: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_x2Offset, T * _Dim), _Dim, T, _Dim, global::Kiln.Kernels.MatMul.InputNorm.Layer, _model.Layers[layer].FfnNorm.Data, _model.Layers[layer].FfnNormBias.Data, (float)(_model.Eps), _pool);
                        stepProfiler?.Mark("matmul up");
                        var work = new MatMul5Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            Gelu = new MatMul5Gelu { Output = _arena.View(_geluOffset, T * _Hidden), Cols = _Hidden, FirstRow = 0, W0 = _model.Layers[layer].UpBias.Data, Dim_Hidden = _Hidden },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                    // [6] matmul: gelu·[Down]ᵀ → x ← x2 + [Down] epilogue
                    {
                        stepProfiler?.Mark("input down");
                        var weights = _down[layer];
                        // The input once for every weight: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_geluOffset, T * _Hidden), _Hidden, T, _Hidden, global::Kiln.Kernels.MatMul.InputNorm.None, null, null, 0f, _pool);
                        stepProfiler?.Mark("matmul down");
                        var work = new MatMul6Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            X = new MatMul6X { Output = _arena.View(_xOffset, T * _Dim), Cols = _Dim, FirstRow = 0, In0 = _arena.View(_x2Offset, T * _Dim), In0Cols = _Dim, W0 = _model.Layers[layer].DownBias.Data, Dim_Dim = _Dim },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                }

                // [7] matmul: (rows(x))·[Output]ᵀ with LayerNorm(OutputNorm, OutputNormBias) fused into the input preparation (the input chain computed per row while preparing) → logits
                {
                    stepProfiler?.Mark("input output");
                    var weights = _output;
                    // The input once for every weight: rows(x) computed per row, layer-normalized by OutputNorm, then quantized or read as floats.
                    var source = new MatMul7Input { In0 = _arena.View(_xOffset, T * _Dim), In0Cols = _Dim, Dim_Dim = _Dim, Context = context };
                    var input = _inputs.Prepare(weights.Format, source, O, _Dim, global::Kiln.Kernels.MatMul.InputNorm.Layer, _model.OutputNorm.Data, _model.OutputNormBias.Data, (float)(_model.Eps), _pool);
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
                _table1.Dispose();
                foreach (var packed in _wqkv) packed.Dispose();
                foreach (var packed in _wo) packed.Dispose();
                foreach (var packed in _up) packed.Dispose();
                foreach (var packed in _down) packed.Dispose();
                _output.Dispose();
            }

            /// <summary>Attention scratch for <paramref name="cache"/>: per chunk of work items, every head's scores over its MaxContext and one block's rows; per token and head, a shared prefix's statistics.</summary>
            private void GrowScores(global::Kiln.KvCache cache)
            {
                _scoresMemory?.Dispose();
                _scoresContext = global::System.Math.Max(_scoresContext, cache.MaxContext);
                _gatherFloats = global::System.Math.Max(_gatherFloats, global::Kiln.Kernels.MatMul.KvBlocks.ScratchFloats(cache));
                _scoresPerChunk = global::Kiln.Kernels.Attention.PagedAttention.ScoresPerChunk(_scoresContext, _model.Heads, cache.KvDim / _model.Heads);
                const int chunks = global::Kiln.Kernels.Attention.PagedAttention.MaxChunks;
                int statistics = global::Kiln.Kernels.Attention.PagedAttention.PrefixStatisticsFloats(MaxTokensPerStep, _model.Heads);
                _scoresMemory = new global::Kiln.Kernels.MatMul.NativeBlock((((long)_scoresPerChunk + _gatherFloats) * chunks + statistics) * sizeof(float));
                _scores = _scoresMemory.Floats(0, chunks * _scoresPerChunk);
                _gather = _scoresMemory.Floats((long)chunks * _scoresPerChunk * sizeof(float), chunks * _gatherFloats);
                _prefixStatistics = _scoresMemory.Floats(((long)_scoresPerChunk + _gatherFloats) * chunks * sizeof(float), statistics);
            }

            /// <summary>[1] x ← TokenEmbedding[tokens] + Positions[positions], row by row.</summary>
            private struct Elementwise1Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public global::Kiln.Kernels.Elementwise.GatherTable G0; // TokenEmbedding, rows read from the stored format
                public global::Kiln.Kernels.Elementwise.GatherTable G1; // Positions, rows read from the stored format
                public int Dim_Dim;
                public int[] Tokens;
                public global::Kiln.AttentionContext Context;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
                public void Execute(int start, int end)
                {
                    for (int t = start; t < end; t++)
                    {
                        int o = t * Dim_Dim;
                        var g0 = G0.Row(Tokens[t], t); // the row, decoded into this token's slot
                        var g1 = G1.Row(Context.Positions[t], t); // the row, decoded into this token's slot
                        int c = 0;
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use512)
                        {
                            for (; c + 16 <= Dim_Dim; c += 16)
                            {
                                var e0 = g0.Load16(c);
                                var e1 = g1.Load16(c);
                                var e2 = e0 + e1;
                                Output.Store16(o + c, e2);
                            }
                        }
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use256)
                        {
                            for (; c + 8 <= Dim_Dim; c += 8)
                            {
                                var e0 = g0.Load8(c);
                                var e1 = g1.Load8(c);
                                var e2 = e0 + e1;
                                Output.Store8(o + c, e2);
                            }
                        }
                        for (; c < Dim_Dim; c++)
                        {
                            var e0 = g0[c];
                            var e1 = g1[c];
                            var e2 = e0 + e1;
                            Output[o + c] = e2;
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

            /// <summary>[2] q ← [Wqkv] + Bqkv.</summary>
            private struct MatMul2Q : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public float[] W0; // Bqkv
                public int Dim_Dim;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int o = row - FirstRow, at = token * Cols + o;
                    if (o + 4 <= Cols)
                    {
                        var e0 = sums;
                        var e1 = global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref W0[o]);
                        var e2 = e0 + e1;
                        Output.Store4(at, e2);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = sums[i];
                        var e1 = W0[o + i];
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
                        int at = token * Cols + o;
                        var e0 = sums;
                        var e1 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W0[o]);
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

            /// <summary>[2] k ← [Wqkv] + Bqkv.</summary>
            private struct MatMul2K : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public float[] W0; // Bqkv
                public int Dim_Dim;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int o = row - FirstRow, at = token * Cols + o;
                    if (o + 4 <= Cols)
                    {
                        var e0 = sums;
                        var e1 = global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref W0[o + Dim_Dim]);
                        var e2 = e0 + e1;
                        Output.Store4(at, e2);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = sums[i];
                        var e1 = W0[o + i + Dim_Dim];
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
                        int at = token * Cols + o;
                        var e0 = sums;
                        var e1 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W0[o + Dim_Dim]);
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

            /// <summary>[2] v ← [Wqkv] + Bqkv.</summary>
            private struct MatMul2V : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public float[] W0; // Bqkv
                public int Dim_2_x_Dim;
                public int Dim_Dim;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int o = row - FirstRow, at = token * Cols + o;
                    if (o + 4 <= Cols)
                    {
                        var e0 = sums;
                        var e1 = global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref W0[o + Dim_2_x_Dim]);
                        var e2 = e0 + e1;
                        Output.Store4(at, e2);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = sums[i];
                        var e1 = W0[o + i + Dim_2_x_Dim];
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
                        int at = token * Cols + o;
                        var e0 = sums;
                        var e1 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W0[o + Dim_2_x_Dim]);
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
                public float[] W0; // Bo
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
                        var e2 = global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref W0[o]);
                        var e3 = e1 + e2;
                        var e4 = e0 + e3;
                        Output.Store4(at, e4);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = In0[in0 + o + i];
                        var e1 = sums[i];
                        var e2 = W0[o + i];
                        var e3 = e1 + e2;
                        var e4 = e0 + e3;
                        Output[at + i] = e4;
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
                        var e2 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W0[o]);
                        var e3 = e1 + e2;
                        var e4 = e0 + e3;
                        Output.Store16(at, e4);
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
                public MatMul5Gelu Gelu;

                public void Execute(int start, int end)
                {
                    for (int item = start; item < end; item++)
                    {
                        Blocks.Get(item, out int first, out int last, out int firstToken, out int endToken);
                        Run(first, last, firstToken, endToken, ref Gelu);
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

            /// <summary>[5] gelu ← gelu([Up]).</summary>
            private struct MatMul5Gelu : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public float[] W0; // UpBias
                public int Dim_Hidden;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)] // into the tile kernel
                public void Store(int row, int token, global::System.Runtime.Intrinsics.Vector128<float> sums)
                {
                    int o = row - FirstRow, at = token * Cols + o;
                    if (o + 4 <= Cols)
                    {
                        var e0 = sums;
                        var e1 = global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref W0[o]);
                        var e2 = e0 + e1;
                        var e3 = e2 * e2;
                        var e4 = e3 * e2;
                        var e5 = global::System.Runtime.Intrinsics.Vector128.Create(0.7978845608028654f);
                        var e6 = global::System.Runtime.Intrinsics.Vector128.Create(0.044715f);
                        var e7 = e6 * e4;
                        var e8 = e2 + e7;
                        var e9 = e5 * e8;
                        var e10 = global::System.Runtime.Intrinsics.Vector128.Create(0.5f);
                        var e11 = e10 * e2;
                        var e12 = global::System.Runtime.Intrinsics.Vector128.Create(1f);
                        var e13 = global::Kiln.Kernels.Elementwise.Lanes.Tanh(e9);
                        var e14 = e12 + e13;
                        var e15 = e11 * e14;
                        Output.Store4(at, e15);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = sums[i];
                        var e1 = W0[o + i];
                        var e2 = e0 + e1;
                        var e3 = e2 * e2;
                        var e4 = e3 * e2;
                        var e5 = 0.7978845608028654f;
                        var e6 = 0.044715f;
                        var e7 = e6 * e4;
                        var e8 = e2 + e7;
                        var e9 = e5 * e8;
                        var e10 = 0.5f;
                        var e11 = e10 * e2;
                        var e12 = 1f;
                        var e13 = global::Kiln.Kernels.Elementwise.Lanes.Tanh(e9);
                        var e14 = e12 + e13;
                        var e15 = e11 * e14;
                        Output[at + i] = e15;
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
                        var e1 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W0[o]);
                        var e2 = e0 + e1;
                        var e3 = e2 * e2;
                        var e4 = e3 * e2;
                        var e5 = global::System.Runtime.Intrinsics.Vector512.Create(0.7978845608028654f);
                        var e6 = global::System.Runtime.Intrinsics.Vector512.Create(0.044715f);
                        var e7 = e6 * e4;
                        var e8 = e2 + e7;
                        var e9 = e5 * e8;
                        var e10 = global::System.Runtime.Intrinsics.Vector512.Create(0.5f);
                        var e11 = e10 * e2;
                        var e12 = global::System.Runtime.Intrinsics.Vector512.Create(1f);
                        var e13 = global::Kiln.Kernels.Elementwise.Lanes.Tanh(e9);
                        var e14 = e12 + e13;
                        var e15 = e11 * e14;
                        Output.Store16(at, e15);
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
                public float[] W0; // DownBias
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
                        var e2 = global::System.Runtime.Intrinsics.Vector128.LoadUnsafe(ref W0[o]);
                        var e3 = e1 + e2;
                        var e4 = e0 + e3;
                        Output.Store4(at, e4);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = In0[in0 + o + i];
                        var e1 = sums[i];
                        var e2 = W0[o + i];
                        var e3 = e1 + e2;
                        var e4 = e0 + e3;
                        Output[at + i] = e4;
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
                        var e2 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W0[o]);
                        var e3 = e1 + e2;
                        var e4 = e0 + e3;
                        Output.Store16(at, e4);
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
