// Kiln fusion report for Bert (architecture "bert"), CPU kernels on a worker pool.
// Kind: encoder (no KV cache): a step holds whole sequences packed one after another, no padding; attention reads each sequence's own k/v rows of the step; the result is one row of Dim per sequence.
// Kernels, in step order:
//   [1] elementwise: x ← (TokenEmbedding[tokens] + TokenTypes[token types]) + Positions[positions], one parallel vector loop
//   [2] elementwise: x2 ← layernorm(x, EmbeddingNorm), one parallel vector loop
//   for each of the LayerCount layers (Layers[layer]):
//     [3] matmul: x2·[Wq|Wk|Wv]ᵀ → q ← [Wq] + Bq epilogue, k ← [Wk] + Bk epilogue, v ← [Wv] + Bv epilogue
//     [4] attention: attention ← Attention(q, k, v): no KV cache; bidirectional GQA within each sequence of the step, k/v read in place from the step's rows, in parallel over (sequence, KV head) items on the AVX-512 path when the head size is a multiple of 16 (32-query blocks, the scores held transposed so each softmax runs down its column), else over (token, chunk of KV heads) items (dots, softmax, weighted sum)
//     [5] matmul: attention·[Wo]ᵀ → add ← x2 + [Wo] epilogue
//     [6] elementwise: h2 ← layernorm(add, AttnNorm), one parallel vector loop
//     [7] matmul: h2·[Up]ᵀ → up ← geluerf([Up]) epilogue
//     [8] matmul: up·[Down]ᵀ → add2 ← h2 + [Down] epilogue
//     [9] elementwise: x2 ← layernorm(add2, OutputNorm), one parallel vector loop
//   end of layer loop
//   [10] pool: pooled ← the first of each sequence's rows of x2, in parallel over sequences (only when PoolingType == 2)
//   [11] pool: pooled ← the last of each sequence's rows of x2, in parallel over sequences (only when !(PoolingType == 2) && PoolingType == 3)
//   [12] pool: pooled ← the mean of each sequence's rows of x2 (summed in double), in parallel over sequences (only when !(PoolingType == 2) && !(PoolingType == 3))
//   [13] elementwise: normalized ← l2normalize(pooled), one parallel vector loop
//   [14] copy: logits ← normalized
// Elementwise ops: every one fused — into a matmul's input preparation or tile epilogue, or into one of 5 row loop(s) (parallel, vectorized) that stand where no matmul can take them: x, no matmul output of its own to end; x2, a norm whose readers are not all matmuls (its statistics need the whole row first); h2, a norm whose readers are not all matmuls (its statistics need the whole row first); x2, a norm whose readers are not all matmuls (its statistics need the whole row first); normalized, a norm whose readers are not all matmuls (its statistics need the whole row first).
// Weight layouts (packed once when the plan is compiled, in groups of 4 rows; a segment whose rows are not a multiple of 4 is padded with zero rows):
//   rule "as stored" (a weight without [Quantize]), chosen per matrix when the plan is compiled, from the file's types: F32 and F16 → F32x16 panels (F16 widened exactly); BF16 → BF16x4 (widened exactly in the kernel); Q8_0 → Q8_0x8 interleaved (the file's quants and fp16 scales copied); Q4_0 → Q4_0x8 interleaved (the file's nibbles and fp16 scales copied); Q6_K, Q5_K, Q4_K → Q6_Kx8, Q5_Kx8, Q4_Kx8 interleaved (the file's quants, scales, mins and fp16 super-block scales copied); any other type (Q5_0, Q2_K, …) → Q8_0x8 (dequantized, requantized); weights of different types in one matmul → the most precise of their layouts, except that K-quants of different types keep their own, one segment each. Work goes in groups of 4 rows and every tile reads each weight once for several tokens: F32x16 holds panels of 16 rows, element k of the 16 side by side (outer products: one load of 16 rows times one broadcast activation, no reductions); BF16x4 holds 16-element chunks of the 4 rows in turn (the kernel streams a group front to back); the quantized layouts store two groups together, 8 rows 4 bytes at a time (one multiply-add against 4 broadcast activations covers all 8 rows, each row's sum complete in its own lane).
//   Wq, Wk, Wv → _wqWkWv[layer] [Dim+Dim+Dim, Dim], segments stacked: as stored (the rule above); one horizontal matmul prepares its input once and reads it for all of them.
//   Wo → _wo[layer] [Dim, Dim], one segment: as stored (the rule above).
//   Up → _up[layer] [Hidden, Dim], one segment: as stored (the rule above).
//   Down → _down[layer] [Dim, Hidden], one segment: as stored (the rule above).
//   PlanOptions.Sparsity, when set, packs every matrix laid out as stored or Q8_0 in that sparse pattern instead (None: dense), for one plan.
//   TokenEmbedding → as stored in the file (memory-mapped): each gathered row decoded by itself, by token.
//   TokenTypes → as stored in the file (memory-mapped): each gathered row decoded by itself, by token type.
//   Positions → as stored in the file (memory-mapped): each gathered row decoded by itself, by position.
// Arena (one float buffer; each slot holds maxTokensPerStep rows of its widest buffer):
//   slot 0: x [T, Dim], q [T, Dim], add [T, Dim], up [T, Hidden], pooled [S, Dim]
//   slot 1: x2 [T, Dim], normalized [S, Dim]
//   slot 2: k [T, Dim], h2 [T, Dim]
//   slot 3: v [T, Dim], add2 [T, Dim]
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
// Attention scratch: per chunk of work items, every head's scores over the longest sequence a step can hold (its whole step), allocated with the plan.
// Threads: one worker pool (PlanOptions.Threads). A matmul splits its 4-row groups over the threads, each tile (64 rows × 6 tokens
//   for F32, 4 rows × 4 tokens for BF16, 8 rows × 8 tokens for the quantized layouts) going through its epilogue while in registers; F32 with many tokens
//   on several threads splits its tokens too, in items of 64 rows × a block of tokens (GemmBlocks); attention splits (token, KV-head chunk) items or (sequence, KV head) items;
//   elementwise loops split rows. Every output is computed by one thread in a fixed order, so results do not depend on the thread count.
// <auto-generated/> by Kiln.Generators from the [Model] class Kiln.Models.Bert.
#nullable enable
#pragma warning disable CS1591, CS0162

namespace Kiln.Models
{
    partial class Bert : global::Kiln.IKilnModel
    {
        /// <summary>Shape symbol "Vocab": bound at load from the first weight that declares it, checked on every other.</summary>
        public int Vocab { get; private set; }

        /// <summary>Shape symbol "Types": bound at load from the first weight that declares it, checked on every other.</summary>
        public int Types { get; private set; }

        /// <summary>Binds a model file: architecture "bert", hyperparameters, then every weight with its declared shape checked.</summary>
        public static Bert Load(global::Kiln.Loading.ModelFile file)
        {
            if (file is null) throw new global::System.ArgumentNullException(nameof(file));
            if (file.Architecture != "bert")
                throw new global::Kiln.Loading.ModelLoadException(file.Path, "general.architecture", null, $"expected \"bert\" for Bert, found \"{file.Architecture}\".");
            // The file names its keys and tensors as GGUF does, or as a Hugging Face checkpoint does; each [Hyper], [Weight]
            // and [Layers] declares both.
            bool huggingFace = file.Naming == global::Kiln.Loading.ModelNaming.HuggingFace;
            var model = new Bert();

            // Hyperparameters: an absent key keeps the member's initializer unless it is required.
            string key;
            key = huggingFace ? "hidden_size" : "bert.embedding_length";
            if (file.TryGetInt(key, out long dimValue)) model.Dim = KilnToInt(file, key, dimValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "intermediate_size" : "bert.feed_forward_length";
            if (file.TryGetInt(key, out long hiddenValue)) model.Hidden = KilnToInt(file, key, hiddenValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "num_hidden_layers" : "bert.block_count";
            if (file.TryGetInt(key, out long layerCountValue)) model.LayerCount = KilnToInt(file, key, layerCountValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "num_attention_heads" : "bert.attention.head_count";
            if (file.TryGetInt(key, out long headsValue)) model.Heads = KilnToInt(file, key, headsValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            key = huggingFace ? "layer_norm_eps" : "bert.attention.layer_norm_epsilon";
            if (file.TryGetFloat(key, out double epsValue)) model.Eps = (float)epsValue;
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not a number.");
            key = huggingFace ? "max_position_embeddings" : "bert.context_length";
            if (file.TryGetInt(key, out long contextValue)) model.Context = KilnToInt(file, key, contextValue);
            else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            else throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, "required hyperparameter is missing.");
            if (!huggingFace)
            {
                key = "bert.pooling_type";
                if (file.TryGetInt(key, out long poolingTypeValue)) model.PoolingType = KilnToInt(file, key, poolingTypeValue);
                else if (file.Metadata.ContainsKey(key)) throw new global::Kiln.Loading.ModelLoadException(file.Path, key, null, $"is {file.Metadata[key]}, not an integer.");
            }

            // Free shape symbols are bound by the first weight that declares them.
            bool vocabBound = false;
            bool typesBound = false;

            // Every tensor the file holds must be bound: one this definition does not read would be silently ignored.
            var bound = new global::System.Collections.Generic.HashSet<string>();
            // Weights, shapes checked against the declared dimensions. Derived dimensions are evaluated here, so a
            // hyperparameter that breaks their arithmetic (a zero head count, say) is reported as the file's fault.
            string name;
            try
            {
                name = huggingFace ? "embeddings.word_embeddings.weight" : "token_embd.weight";
                model.TokenEmbedding = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.TokenEmbedding, "[Vocab, Dim]", 2);
                if (!vocabBound) { model.Vocab = model.TokenEmbedding.Shape[0]; vocabBound = true; }
                KilnCheckShape(file, name, model.TokenEmbedding, "[Vocab, Dim]", model.Vocab, model.Dim);
                name = huggingFace ? "embeddings.token_type_embeddings.weight" : "token_types.weight";
                model.TokenTypes = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.TokenTypes, "[Types, Dim]", 2);
                if (!typesBound) { model.Types = model.TokenTypes.Shape[0]; typesBound = true; }
                KilnCheckShape(file, name, model.TokenTypes, "[Types, Dim]", model.Types, model.Dim);
                name = huggingFace ? "embeddings.position_embeddings.weight" : "position_embd.weight";
                model.Positions = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.Positions, "[Context, Dim]", 2);
                KilnCheckShape(file, name, model.Positions, "[Context, Dim]", model.Context, model.Dim);
                name = huggingFace ? "embeddings.LayerNorm.weight" : "token_embd_norm.weight";
                model.EmbeddingNorm = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.EmbeddingNorm, "[Dim]", 1);
                KilnCheckShape(file, name, model.EmbeddingNorm, "[Dim]", model.Dim);
                name = huggingFace ? "embeddings.LayerNorm.bias" : "token_embd_norm.bias";
                model.EmbeddingNormBias = KilnLoad(file, name, bound);
                KilnCheckRank(file, name, model.EmbeddingNormBias, "[Dim]", 1);
                KilnCheckShape(file, name, model.EmbeddingNormBias, "[Dim]", model.Dim);

                if (model.LayerCount < 0) throw new global::Kiln.Loading.ModelLoadException(file.Path, "LayerCount", null, $"negative layer count {model.LayerCount}.");
                model.Layers = new Block[model.LayerCount];
                for (int layer = 0; layer < model.LayerCount; layer++)
                {
                    string prefix = string.Format(global::System.Globalization.CultureInfo.InvariantCulture, huggingFace ? "encoder.layer.{0}." : "blk.{0}.", layer);
                    var block = new Block();
                    name = prefix + (huggingFace ? "attention.self.query.weight" : "attn_q.weight");
                    block.Wq = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Wq, "[Dim, Dim]", 2);
                    KilnCheckShape(file, name, block.Wq, "[Dim, Dim]", model.Dim, model.Dim);
                    name = prefix + (huggingFace ? "attention.self.query.bias" : "attn_q.bias");
                    block.Bq = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Bq, "[Dim]", 1);
                    KilnCheckShape(file, name, block.Bq, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "attention.self.key.weight" : "attn_k.weight");
                    block.Wk = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Wk, "[Dim, Dim]", 2);
                    KilnCheckShape(file, name, block.Wk, "[Dim, Dim]", model.Dim, model.Dim);
                    name = prefix + (huggingFace ? "attention.self.key.bias" : "attn_k.bias");
                    block.Bk = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Bk, "[Dim]", 1);
                    KilnCheckShape(file, name, block.Bk, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "attention.self.value.weight" : "attn_v.weight");
                    block.Wv = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Wv, "[Dim, Dim]", 2);
                    KilnCheckShape(file, name, block.Wv, "[Dim, Dim]", model.Dim, model.Dim);
                    name = prefix + (huggingFace ? "attention.self.value.bias" : "attn_v.bias");
                    block.Bv = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Bv, "[Dim]", 1);
                    KilnCheckShape(file, name, block.Bv, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "attention.output.dense.weight" : "attn_output.weight");
                    block.Wo = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Wo, "[Dim, Dim]", 2);
                    KilnCheckShape(file, name, block.Wo, "[Dim, Dim]", model.Dim, model.Dim);
                    name = prefix + (huggingFace ? "attention.output.dense.bias" : "attn_output.bias");
                    block.Bo = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Bo, "[Dim]", 1);
                    KilnCheckShape(file, name, block.Bo, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "attention.output.LayerNorm.weight" : "attn_output_norm.weight");
                    block.AttnNorm = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.AttnNorm, "[Dim]", 1);
                    KilnCheckShape(file, name, block.AttnNorm, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "attention.output.LayerNorm.bias" : "attn_output_norm.bias");
                    block.AttnNormBias = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.AttnNormBias, "[Dim]", 1);
                    KilnCheckShape(file, name, block.AttnNormBias, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "intermediate.dense.weight" : "ffn_up.weight");
                    block.Up = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Up, "[Hidden, Dim]", 2);
                    KilnCheckShape(file, name, block.Up, "[Hidden, Dim]", model.Hidden, model.Dim);
                    name = prefix + (huggingFace ? "intermediate.dense.bias" : "ffn_up.bias");
                    block.UpBias = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.UpBias, "[Hidden]", 1);
                    KilnCheckShape(file, name, block.UpBias, "[Hidden]", model.Hidden);
                    name = prefix + (huggingFace ? "output.dense.weight" : "ffn_down.weight");
                    block.Down = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.Down, "[Dim, Hidden]", 2);
                    KilnCheckShape(file, name, block.Down, "[Dim, Hidden]", model.Dim, model.Hidden);
                    name = prefix + (huggingFace ? "output.dense.bias" : "ffn_down.bias");
                    block.DownBias = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.DownBias, "[Dim]", 1);
                    KilnCheckShape(file, name, block.DownBias, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "output.LayerNorm.weight" : "layer_output_norm.weight");
                    block.OutputNorm = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.OutputNorm, "[Dim]", 1);
                    KilnCheckShape(file, name, block.OutputNorm, "[Dim]", model.Dim);
                    name = prefix + (huggingFace ? "output.LayerNorm.bias" : "layer_output_norm.bias");
                    block.OutputNormBias = KilnLoad(file, name, bound);
                    KilnCheckRank(file, name, block.OutputNormBias, "[Dim]", 1);
                    KilnCheckShape(file, name, block.OutputNormBias, "[Dim]", model.Dim);
                    model.Layers[layer] = block;
                }
            }
            catch (global::System.ArithmeticException e)
            {
                throw new global::Kiln.Loading.ModelLoadException(file.Path, "hyperparameters", null, $"a derived dimension cannot be computed from them ({e.Message}).", e);
            }
            global::Kiln.Loading.DefinitionChecks.RequireAllBound(file, bound, "Bert");
            // What the file states that changes the math must be read by this definition, or agree with what its forward uses.
            if (huggingFace)
            {
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "sliding_window", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "sliding_window_pattern", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "attn_logit_softcapping", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "final_logit_softcapping", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "rms_norm_eps", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "layer_norm_epsilon", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "rope_theta", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "rope_local_base_freq", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "partial_rotary_factor", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireAgrees(file, "head_dim", model.KvShape.HeadDim, "Bert", "its attention's head dimension");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "num_local_experts", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "num_experts", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "query_pre_attn_scalar", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "layer_types", "Bert");
            }
            else
            {
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "bert.attention.sliding_window", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "bert.attention.sliding_window_pattern", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "bert.attn_logit_softcapping", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "bert.final_logit_softcapping", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "bert.attention.layer_norm_rms_epsilon", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "bert.rope.freq_base", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "bert.rope.freq_base_swa", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "bert.rope.dimension_count", "Bert");
                global::Kiln.Loading.DefinitionChecks.RequireAgrees(file, "bert.attention.key_length", model.KvShape.HeadDim, "Bert", "its attention's head dimension");
                global::Kiln.Loading.DefinitionChecks.RequireAgrees(file, "bert.attention.value_length", model.KvShape.HeadDim, "Bert", "its attention's head dimension");
                global::Kiln.Loading.DefinitionChecks.RequireRead(file, "bert.expert_count", "Bert");
            }
            global::Kiln.Loading.DefinitionChecks.RejectRopeScaling(file, "bert", "Bert");
            global::Kiln.Loading.DefinitionChecks.RequireTokenizer(file, "bert", "Bert");
            return model;
        }

        /// <summary>Values per output row (an embedding's width, or logits): the last dimension of the forward result.</summary>
        public int VocabSize => this.Dim;

        /// <summary>None: an encoder keeps no KV cache (a step holds whole sequences).</summary>
        public global::Kiln.KvCacheShape KvShape => default;

        /// <summary>Throws: an encoder keeps no KV cache; its steps take a context without one (new AttentionContext(capacity)).</summary>
        public global::Kiln.KvCache CreateKvCache(int slots, int maxContext) => throw new global::System.NotSupportedException("Bert is an encoder: it keeps no KV cache; fill a new AttentionContext(capacity) with AddSequence.");

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
        /// Bert compiled into fused CPU kernels over one native arena, run on the plan's worker pool (see the fusion
        /// report at the top of this file). A step allocates nothing once the attention scratch fits the KV cache in use.
        /// </summary>
        public sealed class CompiledPlan : global::Kiln.ICompiledPlan
        {
            /// <summary>The fusion report: which ops became which kernel, which layout each weight got, and why.</summary>
            public const string Report =
                "Kiln fusion report for Bert (architecture \"bert\"), CPU kernels on a worker pool.\n" +
                "Kind: encoder (no KV cache): a step holds whole sequences packed one after another, no padding; attention reads each sequence's own k/v rows of the step; the result is one row of Dim per sequence.\n" +
                "Kernels, in step order:\n" +
                "  [1] elementwise: x ← (TokenEmbedding[tokens] + TokenTypes[token types]) + Positions[positions], one parallel vector loop\n" +
                "  [2] elementwise: x2 ← layernorm(x, EmbeddingNorm), one parallel vector loop\n" +
                "  for each of the LayerCount layers (Layers[layer]):\n" +
                "    [3] matmul: x2·[Wq|Wk|Wv]ᵀ → q ← [Wq] + Bq epilogue, k ← [Wk] + Bk epilogue, v ← [Wv] + Bv epilogue\n" +
                "    [4] attention: attention ← Attention(q, k, v): no KV cache; bidirectional GQA within each sequence of the step, k/v read in place from the step's rows, in parallel over (sequence, KV head) items on the AVX-512 path when the head size is a multiple of 16 (32-query blocks, the scores held transposed so each softmax runs down its column), else over (token, chunk of KV heads) items (dots, softmax, weighted sum)\n" +
                "    [5] matmul: attention·[Wo]ᵀ → add ← x2 + [Wo] epilogue\n" +
                "    [6] elementwise: h2 ← layernorm(add, AttnNorm), one parallel vector loop\n" +
                "    [7] matmul: h2·[Up]ᵀ → up ← geluerf([Up]) epilogue\n" +
                "    [8] matmul: up·[Down]ᵀ → add2 ← h2 + [Down] epilogue\n" +
                "    [9] elementwise: x2 ← layernorm(add2, OutputNorm), one parallel vector loop\n" +
                "  end of layer loop\n" +
                "  [10] pool: pooled ← the first of each sequence's rows of x2, in parallel over sequences (only when PoolingType == 2)\n" +
                "  [11] pool: pooled ← the last of each sequence's rows of x2, in parallel over sequences (only when !(PoolingType == 2) && PoolingType == 3)\n" +
                "  [12] pool: pooled ← the mean of each sequence's rows of x2 (summed in double), in parallel over sequences (only when !(PoolingType == 2) && !(PoolingType == 3))\n" +
                "  [13] elementwise: normalized ← l2normalize(pooled), one parallel vector loop\n" +
                "  [14] copy: logits ← normalized\n" +
                "Elementwise ops: every one fused — into a matmul's input preparation or tile epilogue, or into one of 5 row loop(s) (parallel, vectorized) that stand where no matmul can take them: x, no matmul output of its own to end; x2, a norm whose readers are not all matmuls (its statistics need the whole row first); h2, a norm whose readers are not all matmuls (its statistics need the whole row first); x2, a norm whose readers are not all matmuls (its statistics need the whole row first); normalized, a norm whose readers are not all matmuls (its statistics need the whole row first).\n" +
                "Weight layouts (packed once when the plan is compiled, in groups of 4 rows; a segment whose rows are not a multiple of 4 is padded with zero rows):\n" +
                "  rule \"as stored\" (a weight without [Quantize]), chosen per matrix when the plan is compiled, from the file's types: F32 and F16 → F32x16 panels (F16 widened exactly); BF16 → BF16x4 (widened exactly in the kernel); Q8_0 → Q8_0x8 interleaved (the file's quants and fp16 scales copied); Q4_0 → Q4_0x8 interleaved (the file's nibbles and fp16 scales copied); Q6_K, Q5_K, Q4_K → Q6_Kx8, Q5_Kx8, Q4_Kx8 interleaved (the file's quants, scales, mins and fp16 super-block scales copied); any other type (Q5_0, Q2_K, …) → Q8_0x8 (dequantized, requantized); weights of different types in one matmul → the most precise of their layouts, except that K-quants of different types keep their own, one segment each. Work goes in groups of 4 rows and every tile reads each weight once for several tokens: F32x16 holds panels of 16 rows, element k of the 16 side by side (outer products: one load of 16 rows times one broadcast activation, no reductions); BF16x4 holds 16-element chunks of the 4 rows in turn (the kernel streams a group front to back); the quantized layouts store two groups together, 8 rows 4 bytes at a time (one multiply-add against 4 broadcast activations covers all 8 rows, each row's sum complete in its own lane).\n" +
                "  Wq, Wk, Wv → _wqWkWv[layer] [Dim+Dim+Dim, Dim], segments stacked: as stored (the rule above); one horizontal matmul prepares its input once and reads it for all of them.\n" +
                "  Wo → _wo[layer] [Dim, Dim], one segment: as stored (the rule above).\n" +
                "  Up → _up[layer] [Hidden, Dim], one segment: as stored (the rule above).\n" +
                "  Down → _down[layer] [Dim, Hidden], one segment: as stored (the rule above).\n" +
                "  PlanOptions.Sparsity, when set, packs every matrix laid out as stored or Q8_0 in that sparse pattern instead (None: dense), for one plan.\n" +
                "  TokenEmbedding → as stored in the file (memory-mapped): each gathered row decoded by itself, by token.\n" +
                "  TokenTypes → as stored in the file (memory-mapped): each gathered row decoded by itself, by token type.\n" +
                "  Positions → as stored in the file (memory-mapped): each gathered row decoded by itself, by position.\n" +
                "Arena (one float buffer; each slot holds maxTokensPerStep rows of its widest buffer):\n" +
                "  slot 0: x [T, Dim], q [T, Dim], add [T, Dim], up [T, Hidden], pooled [S, Dim]\n" +
                "  slot 1: x2 [T, Dim], normalized [S, Dim]\n" +
                "  slot 2: k [T, Dim], h2 [T, Dim]\n" +
                "  slot 3: v [T, Dim], add2 [T, Dim]\n" +
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
                "Attention scratch: per chunk of work items, every head's scores over the longest sequence a step can hold (its whole step), allocated with the plan.\n" +
                "Threads: one worker pool (PlanOptions.Threads). A matmul splits its 4-row groups over the threads, each tile (64 rows × 6 tokens\n" +
                "  for F32, 4 rows × 4 tokens for BF16, 8 rows × 8 tokens for the quantized layouts) going through its epilogue while in registers; F32 with many tokens\n" +
                "  on several threads splits its tokens too, in items of 64 rows × a block of tokens (GemmBlocks); attention splits (token, KV-head chunk) items or (sequence, KV head) items;\n" +
                "  elementwise loops split rows. Every output is computed by one thread in a fixed order, so results do not depend on the thread count.\n";

            private readonly Bert _model;
            private readonly global::Kiln.Threading.WorkerPool _pool;
            private readonly string _report;
            private bool _disposed;

            // Dimensions, fixed when the model was bound.
            private readonly int _Dim;
            private readonly int _Hidden;
            private readonly int _Vocab;
            private readonly int _Types;
            private readonly int _Context;

            // Weights in the kernels' layouts: one packed matrix per matmul (and layer), segments on 4-row boundaries.
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _wqWkWv; // per layer [Dim + Dim + Dim, Dim]
            private readonly int _wqWkWvStart1, _wqWkWvStart2, _wqWkWvRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _wo; // per layer [Dim, Dim]
            private readonly int _woRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _up; // per layer [Hidden, Dim]
            private readonly int _upRows; // first packed row of each later segment, then the padded row count
            private readonly global::Kiln.Kernels.MatMul.PackedMatrix[] _down; // per layer [Dim, Hidden]
            private readonly int _downRows; // first packed row of each later segment, then the padded row count

            // This step's token ids, checked against the vocabulary, where the gathering loops can read them.
            private readonly int[] _tokens;

            // Gathered tables, as the file stores them: each row a step needs is decoded into its token's slot (the table is never widened whole).
            private readonly global::Kiln.Kernels.Elementwise.GatherTable _table0; // TokenEmbedding
            private readonly global::Kiln.Kernels.Elementwise.GatherTable _table1; // TokenTypes
            private readonly global::Kiln.Kernels.Elementwise.GatherTable _table2; // Positions

            // The arena (native memory that never moves, so work items on every thread can hold views of it).
            private readonly global::Kiln.Kernels.MatMul.NativeBlock _arenaMemory;
            private readonly global::Kiln.Kernels.MatMul.FloatBuffer _arena;
            private readonly int _xOffset;
            private readonly int _x2Offset;
            private readonly int _qOffset;
            private readonly int _kOffset;
            private readonly int _vOffset;
            private readonly int _attentionOffset;
            private readonly int _addOffset;
            private readonly int _h2Offset;
            private readonly int _upOffset;
            private readonly int _add2Offset;
            private readonly int _pooledOffset;
            private readonly int _normalizedOffset;

            // Matmul inputs, prepared once per matmul for all its weights (normalized, quantized to Q8 for the quantized layouts).
            private readonly global::Kiln.Kernels.MatMul.GemmScratch _inputs;

            // Attention scratch per chunk of work items (global::Kiln.Kernels.Attention.StepAttention.MaxChunks at most): every head's row of scores over
            // the longest sequence a step can hold (its whole step).
            private readonly global::Kiln.Kernels.MatMul.NativeBlock _scoresMemory;
            private readonly global::Kiln.Kernels.MatMul.FloatBuffer _scores;
            private readonly int _scoresPerChunk;

            public CompiledPlan(Bert model, global::Kiln.PlanOptions options)
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
                _Types = model.Types;
                _Context = model.Context;

                if (model.Heads <= 0 || model.Heads <= 0 || model.Heads % model.Heads != 0 || _Dim % model.Heads != 0 || _Dim / model.Heads * model.Heads != _Dim)
                    throw new global::System.InvalidOperationException($"Attention: {model.Heads} heads over {model.Heads} KV heads do not fit q rows of {_Dim} and k rows of {_Dim}.");

                _tokens = new int[maxTokensPerStep];
                _table0 = new global::Kiln.Kernels.Elementwise.GatherTable(model.TokenEmbedding, maxTokensPerStep);
                _table1 = new global::Kiln.Kernels.Elementwise.GatherTable(model.TokenTypes, maxTokensPerStep);
                _table2 = new global::Kiln.Kernels.Elementwise.GatherTable(model.Positions, maxTokensPerStep);
                var layouts = new global::System.Text.StringBuilder(Report).Append("Layouts chosen for this model file:\n");
                // Layers.Wq, Layers.Wk, Layers.Wv: layout as stored, chosen per matrix from the file's types
                _wqWkWvStart1 = global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Dim);
                _wqWkWvStart2 = _wqWkWvStart1 + global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Dim);
                _wqWkWvRows = _wqWkWvStart2 + global::Kiln.Kernels.MatMul.WeightLayouts.PadRows(_Dim);
                var sparsity_wqWkWv = global::Kiln.Kernels.MatMul.WeightLayouts.Sparsity(global::Kiln.SparsePattern.None, global::Kiln.WeightFormat.AsStored, options);
                _wqWkWv = new global::Kiln.Kernels.MatMul.PackedMatrix[model.LayerCount];
                for (int layer = 0; layer < model.LayerCount; layer++)
                {
                    var packed = new global::Kiln.Kernels.MatMul.PackedMatrix(global::Kiln.Kernels.MatMul.WeightLayouts.Resolve(global::Kiln.WeightFormat.AsStored, sparsity_wqWkWv, model.Layers[layer].Wq, model.Layers[layer].Wk, model.Layers[layer].Wv), _wqWkWvRows, _Dim, sparsity_wqWkWv);
                    packed.Pack(0, model.Layers[layer].Wq, 0, _Dim, "Wq");
                    packed.Pack(_wqWkWvStart1, model.Layers[layer].Wk, 0, _Dim, "Wk");
                    packed.Pack(_wqWkWvStart2, model.Layers[layer].Wv, 0, _Dim, "Wv");
                    packed.FinishPacking();
                    _wqWkWv[layer] = packed;
                }
                layouts.Append(global::Kiln.Kernels.MatMul.WeightLayouts.Summarize("_wqWkWv[layer]", _wqWkWv));

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

                // Arena slots (buffers whose live ranges do not overlap share a slot).
                int offset = 0;
                _xOffset = offset; // x [T, Dim]
                _qOffset = offset; // q [T, Dim]
                _addOffset = offset; // add [T, Dim]
                _upOffset = offset; // up [T, Hidden]
                _pooledOffset = offset; // pooled [S, Dim]
                offset += (maxTokensPerStep * global::System.Math.Max(_Dim, _Hidden) + 15) & ~15; // each slot starts on a 64-byte boundary
                _x2Offset = offset; // x2 [T, Dim]
                _normalizedOffset = offset; // normalized [S, Dim]
                offset += (maxTokensPerStep * _Dim + 15) & ~15; // each slot starts on a 64-byte boundary
                _kOffset = offset; // k [T, Dim]
                _h2Offset = offset; // h2 [T, Dim]
                offset += (maxTokensPerStep * _Dim + 15) & ~15; // each slot starts on a 64-byte boundary
                _vOffset = offset; // v [T, Dim]
                _add2Offset = offset; // add2 [T, Dim]
                offset += (maxTokensPerStep * _Dim + 15) & ~15; // each slot starts on a 64-byte boundary
                _attentionOffset = offset; // attention [T, Dim]
                offset += (maxTokensPerStep * _Dim + 15) & ~15; // each slot starts on a 64-byte boundary
                _arenaMemory = new global::Kiln.Kernels.MatMul.NativeBlock((long)offset * sizeof(float));
                _arena = _arenaMemory.Floats(0, offset);
                _inputs = new global::Kiln.Kernels.MatMul.GemmScratch(maxTokensPerStep, global::System.Math.Max(_Dim, _Hidden));
                _scoresPerChunk = global::Kiln.Kernels.Attention.StepAttention.ScoresPerChunk(maxTokensPerStep, model.Heads);
                _scoresMemory = new global::Kiln.Kernels.MatMul.NativeBlock((long)_scoresPerChunk * global::Kiln.Kernels.Attention.StepAttention.MaxChunks * sizeof(float));
                _scores = _scoresMemory.Floats(0, _scoresPerChunk * global::Kiln.Kernels.Attention.StepAttention.MaxChunks);
                _pool = new global::Kiln.Threading.WorkerPool(options.ResolvedThreads);
                _report = layouts.ToString();
            }

            public int MaxTokensPerStep { get; }

            public int VocabSize => _Dim;

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
                int S = context.SequenceCount;
                if (logits.Length < S * _Dim)
                    throw new global::System.ArgumentException($"logits holds {logits.Length} floats; the step needs {S} rows of {_Dim}.", nameof(logits));
                if (context.HasCache)
                    throw new global::System.ArgumentException("An encoder's step holds whole sequences and has no KV cache: fill a new AttentionContext(capacity) with AddSequence.", nameof(context));
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

                global::System.ReadOnlySpan<int> tokenTypes = context.TokenTypes;
                for (int t = 0; t < T; t++)
                {
                    if ((uint)tokenTypes[t] >= (uint)_model.TokenTypes.Rows)
                        throw new global::System.ArgumentOutOfRangeException(nameof(context), $"Token type {tokenTypes[t]} of token {t} is beyond the {_model.TokenTypes.Rows} types the embedding table TokenTypes holds.");
                }

                // Activations: views of the arena.
                global::System.Span<float> x = _arena.Slice(_xOffset, T * _Dim);
                global::System.Span<float> x2 = _arena.Slice(_x2Offset, T * _Dim);
                global::System.Span<float> q = _arena.Slice(_qOffset, T * _Dim);
                global::System.Span<float> k = _arena.Slice(_kOffset, T * _Dim);
                global::System.Span<float> v = _arena.Slice(_vOffset, T * _Dim);
                global::System.Span<float> attention = _arena.Slice(_attentionOffset, T * _Dim);
                global::System.Span<float> add = _arena.Slice(_addOffset, T * _Dim);
                global::System.Span<float> h2 = _arena.Slice(_h2Offset, T * _Dim);
                global::System.Span<float> up = _arena.Slice(_upOffset, T * _Hidden);
                global::System.Span<float> add2 = _arena.Slice(_add2Offset, T * _Dim);
                global::System.Span<float> pooled = _arena.Slice(_pooledOffset, S * _Dim);
                global::System.Span<float> normalized = _arena.Slice(_normalizedOffset, S * _Dim);

                // [1] elementwise: x ← (TokenEmbedding[tokens] + TokenTypes[token types]) + Positions[positions], one parallel vector loop
                {
                    stepProfiler?.Mark("elementwise x");
                    // x ← (TokenEmbedding[tokens] + TokenTypes[token types]) + Positions[positions]: each row by one work item, the widest vectors first.
                    _pool.Run(T, global::Kiln.Kernels.Elementwise.RowLoop.ChunkSize(T, _Dim, _pool.ThreadCount), new Elementwise1Work { Output = _arena.View(_xOffset, T * _Dim), G0 = _table0, G1 = _table1, G2 = _table2, Dim_Dim = _Dim, Tokens = _tokens, Context = context });
                }
                // [2] elementwise: x2 ← layernorm(x, EmbeddingNorm), one parallel vector loop
                {
                    stepProfiler?.Mark("elementwise x2");
                    // x2 ← layernorm(x, EmbeddingNorm): each row by one work item, the widest vectors first.
                    _pool.Run(T, global::Kiln.Kernels.Elementwise.RowLoop.ChunkSize(T, _Dim, _pool.ThreadCount), new Elementwise2Work { Output = _arena.View(_x2Offset, T * _Dim), In0 = _arena.View(_xOffset, T * _Dim), In0Cols = _Dim, W0 = _model.EmbeddingNorm.Data, W1 = _model.EmbeddingNormBias.Data, E0 = (float)(_model.Eps), Dim_Dim = _Dim });
                }
                for (int layer = 0; layer < _model.LayerCount; layer++) // Layers[layer]
                {
                    // [3] matmul: x2·[Wq|Wk|Wv]ᵀ → q ← [Wq] + Bq epilogue, k ← [Wk] + Bk epilogue, v ← [Wv] + Bv epilogue
                    {
                        stepProfiler?.Mark("input wqWkWv");
                        var weights = _wqWkWv[layer];
                        // The input once for every weight: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_x2Offset, T * _Dim), _Dim, T, _Dim, global::Kiln.Kernels.MatMul.InputNorm.None, null, null, 0f, _pool);
                        stepProfiler?.Mark("matmul wqWkWv");
                        var work = new MatMul3Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            End0 = _wqWkWvStart1 / 4,
                            End1 = _wqWkWvStart2 / 4,
                            Q = new MatMul3Q { Output = _arena.View(_qOffset, T * _Dim), Cols = _Dim, FirstRow = 0, W0 = _model.Layers[layer].Bq.Data, Dim_Dim = _Dim },
                            K = new MatMul3K { Output = _arena.View(_kOffset, T * _Dim), Cols = _Dim, FirstRow = _wqWkWvStart1, W0 = _model.Layers[layer].Bk.Data, Dim_Dim = _Dim },
                            V = new MatMul3V { Output = _arena.View(_vOffset, T * _Dim), Cols = _Dim, FirstRow = _wqWkWvStart2, W0 = _model.Layers[layer].Bv.Data, Dim_Dim = _Dim },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                    // [4] attention: attention ← Attention(q, k, v): no KV cache; bidirectional GQA within each sequence of the step, k/v read in place from the step's rows, in parallel over (sequence, KV head) items on the AVX-512 path when the head size is a multiple of 16 (32-query blocks, the scores held transposed so each softmax runs down its column), else over (token, chunk of KV heads) items (dots, softmax, weighted sum)
                    {
                        stepProfiler?.Mark("attention");
                        int heads = _model.Heads, kvHeads = _model.Heads;
                        // No KV cache: k and v are read in place from this step's rows, each query over its own sequence's tokens;
                        // StepAttention.Plan picks the items: (sequence, KV head) for bidirectional attention on AVX-512, else each token's KV heads in a few chunks.
                        var step = new global::Kiln.Kernels.Attention.StepAttention
                        {
                            Q = _arena.View(_qOffset, T * _Dim),
                            K = _arena.View(_kOffset, T * _Dim),
                            V = _arena.View(_vOffset, T * _Dim),
                            Output = _arena.View(_attentionOffset, T * _Dim),
                            Scores = _scores,
                            ScoresStride = _scoresPerChunk,
                            Context = context,
                            Heads = heads,
                            KvHeads = kvHeads,
                            HeadDim = _Dim / heads,
                            QCols = _Dim,
                            KvCols = _Dim,
                            Options = new global::Kiln.Kernels.Attention.AttentionOptions((float)(1.0 / global::System.Math.Sqrt(_Dim / heads)), 0, (float)(0f), false),
                        };
                        int items = step.Plan(T, _pool.ThreadCount);
                        _pool.Run(items, step.ChunkSize, step);
                    }
                    // [5] matmul: attention·[Wo]ᵀ → add ← x2 + [Wo] epilogue
                    {
                        stepProfiler?.Mark("input wo");
                        var weights = _wo[layer];
                        // The input once for every weight: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_attentionOffset, T * _Dim), _Dim, T, _Dim, global::Kiln.Kernels.MatMul.InputNorm.None, null, null, 0f, _pool);
                        stepProfiler?.Mark("matmul wo");
                        var work = new MatMul5Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            Add = new MatMul5Add { Output = _arena.View(_addOffset, T * _Dim), Cols = _Dim, FirstRow = 0, In0 = _arena.View(_x2Offset, T * _Dim), In0Cols = _Dim, W0 = _model.Layers[layer].Bo.Data, Dim_Dim = _Dim },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                    // [6] elementwise: h2 ← layernorm(add, AttnNorm), one parallel vector loop
                    {
                        stepProfiler?.Mark("elementwise h2");
                        // h2 ← layernorm(add, AttnNorm): each row by one work item, the widest vectors first.
                        _pool.Run(T, global::Kiln.Kernels.Elementwise.RowLoop.ChunkSize(T, _Dim, _pool.ThreadCount), new Elementwise6Work { Output = _arena.View(_h2Offset, T * _Dim), In0 = _arena.View(_addOffset, T * _Dim), In0Cols = _Dim, W0 = _model.Layers[layer].AttnNorm.Data, W1 = _model.Layers[layer].AttnNormBias.Data, E0 = (float)(_model.Eps), Dim_Dim = _Dim });
                    }
                    // [7] matmul: h2·[Up]ᵀ → up ← geluerf([Up]) epilogue
                    {
                        stepProfiler?.Mark("input up");
                        var weights = _up[layer];
                        // The input once for every weight: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_h2Offset, T * _Dim), _Dim, T, _Dim, global::Kiln.Kernels.MatMul.InputNorm.None, null, null, 0f, _pool);
                        stepProfiler?.Mark("matmul up");
                        var work = new MatMul7Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            Up = new MatMul7Up { Output = _arena.View(_upOffset, T * _Hidden), Cols = _Hidden, FirstRow = 0, W0 = _model.Layers[layer].UpBias.Data, Dim_Hidden = _Hidden },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                    // [8] matmul: up·[Down]ᵀ → add2 ← h2 + [Down] epilogue
                    {
                        stepProfiler?.Mark("input down");
                        var weights = _down[layer];
                        // The input once for every weight: quantized to Q8 for the quantized layouts, read as it is by the float ones.
                        var input = _inputs.Prepare(weights.Format, _arena.View(_upOffset, T * _Hidden), _Hidden, T, _Hidden, global::Kiln.Kernels.MatMul.InputNorm.None, null, null, 0f, _pool);
                        stepProfiler?.Mark("matmul down");
                        var work = new MatMul8Work
                        {
                            Weights = weights,
                            Input = input,
                            Blocks = global::Kiln.Kernels.MatMul.GemmBlocks.For(weights, T, _pool.ThreadCount),
                            Add2 = new MatMul8Add2 { Output = _arena.View(_add2Offset, T * _Dim), Cols = _Dim, FirstRow = 0, In0 = _arena.View(_h2Offset, T * _Dim), In0Cols = _Dim, W0 = _model.Layers[layer].DownBias.Data, Dim_Dim = _Dim },
                        };
                        _pool.Run(work.Blocks.Count, 1, work);
                    }
                    // [9] elementwise: x2 ← layernorm(add2, OutputNorm), one parallel vector loop
                    {
                        stepProfiler?.Mark("elementwise x2");
                        // x2 ← layernorm(add2, OutputNorm): each row by one work item, the widest vectors first.
                        _pool.Run(T, global::Kiln.Kernels.Elementwise.RowLoop.ChunkSize(T, _Dim, _pool.ThreadCount), new Elementwise9Work { Output = _arena.View(_x2Offset, T * _Dim), In0 = _arena.View(_add2Offset, T * _Dim), In0Cols = _Dim, W0 = _model.Layers[layer].OutputNorm.Data, W1 = _model.Layers[layer].OutputNormBias.Data, E0 = (float)(_model.Eps), Dim_Dim = _Dim });
                    }
                }

                if ((_model.PoolingType == 2)) // the forward method's branch
                {
                    // [10] pool: pooled ← the first of each sequence's rows of x2, in parallel over sequences (only when PoolingType == 2)
                    {
                        stepProfiler?.Mark("pooling");
                        var pooling = new global::Kiln.Kernels.Elementwise.SequencePooling { Input = _arena.View(_x2Offset, T * _Dim), Output = _arena.View(_pooledOffset, S * _Dim), Cols = _Dim, Context = context, Pooling = global::Kiln.Pooling.Cls };
                        _pool.Run(S, global::System.Math.Max(1, S / (4 * _pool.ThreadCount)), pooling);
                    }
                }
                if (!(_model.PoolingType == 2) && (_model.PoolingType == 3)) // the forward method's branch
                {
                    // [11] pool: pooled ← the last of each sequence's rows of x2, in parallel over sequences (only when !(PoolingType == 2) && PoolingType == 3)
                    {
                        stepProfiler?.Mark("pooling");
                        var pooling = new global::Kiln.Kernels.Elementwise.SequencePooling { Input = _arena.View(_x2Offset, T * _Dim), Output = _arena.View(_pooledOffset, S * _Dim), Cols = _Dim, Context = context, Pooling = global::Kiln.Pooling.LastToken };
                        _pool.Run(S, global::System.Math.Max(1, S / (4 * _pool.ThreadCount)), pooling);
                    }
                }
                if (!(_model.PoolingType == 2) && !(_model.PoolingType == 3)) // the forward method's branch
                {
                    // [12] pool: pooled ← the mean of each sequence's rows of x2 (summed in double), in parallel over sequences (only when !(PoolingType == 2) && !(PoolingType == 3))
                    {
                        stepProfiler?.Mark("pooling");
                        var pooling = new global::Kiln.Kernels.Elementwise.SequencePooling { Input = _arena.View(_x2Offset, T * _Dim), Output = _arena.View(_pooledOffset, S * _Dim), Cols = _Dim, Context = context, Pooling = global::Kiln.Pooling.Mean };
                        _pool.Run(S, global::System.Math.Max(1, S / (4 * _pool.ThreadCount)), pooling);
                    }
                }
                // [13] elementwise: normalized ← l2normalize(pooled), one parallel vector loop
                {
                    stepProfiler?.Mark("elementwise normalized");
                    // normalized ← l2normalize(pooled): each row by one work item, the widest vectors first.
                    _pool.Run(S, global::Kiln.Kernels.Elementwise.RowLoop.ChunkSize(S, _Dim, _pool.ThreadCount), new Elementwise13Work { Output = _arena.View(_normalizedOffset, S * _Dim), In0 = _arena.View(_pooledOffset, S * _Dim), In0Cols = _Dim, E0 = (float)(1e-12f), Dim_Dim = _Dim });
                }
                // [14] copy: logits ← normalized
                {
                    stepProfiler?.Mark("copy");
                    normalized.CopyTo(logits);
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
                _table2.Dispose();
                foreach (var packed in _wqWkWv) packed.Dispose();
                foreach (var packed in _wo) packed.Dispose();
                foreach (var packed in _up) packed.Dispose();
                foreach (var packed in _down) packed.Dispose();
            }

            /// <summary>[1] x ← (TokenEmbedding[tokens] + TokenTypes[token types]) + Positions[positions], row by row.</summary>
            private struct Elementwise1Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public global::Kiln.Kernels.Elementwise.GatherTable G0; // TokenEmbedding, rows read from the stored format
                public global::Kiln.Kernels.Elementwise.GatherTable G1; // TokenTypes, rows read from the stored format
                public global::Kiln.Kernels.Elementwise.GatherTable G2; // Positions, rows read from the stored format
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
                        var g1 = G1.Row(Context.TokenTypes[t], t); // the row, decoded into this token's slot
                        var g2 = G2.Row(Context.Positions[t], t); // the row, decoded into this token's slot
                        int c = 0;
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use512)
                        {
                            for (; c + 16 <= Dim_Dim; c += 16)
                            {
                                var e0 = g0.Load16(c);
                                var e1 = g1.Load16(c);
                                var e2 = e0 + e1;
                                var e3 = g2.Load16(c);
                                var e4 = e2 + e3;
                                Output.Store16(o + c, e4);
                            }
                        }
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use256)
                        {
                            for (; c + 8 <= Dim_Dim; c += 8)
                            {
                                var e0 = g0.Load8(c);
                                var e1 = g1.Load8(c);
                                var e2 = e0 + e1;
                                var e3 = g2.Load8(c);
                                var e4 = e2 + e3;
                                Output.Store8(o + c, e4);
                            }
                        }
                        for (; c < Dim_Dim; c++)
                        {
                            var e0 = g0[c];
                            var e1 = g1[c];
                            var e2 = e0 + e1;
                            var e3 = g2[c];
                            var e4 = e2 + e3;
                            Output[o + c] = e4;
                        }
                    }
                }
            }

            /// <summary>[2] x2 ← layernorm(x, EmbeddingNorm), row by row.</summary>
            private struct Elementwise2Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public global::Kiln.Kernels.MatMul.FloatBuffer In0; public int In0Cols; // x
                public float[] W0; // EmbeddingNorm
                public float[] W1; // EmbeddingNormBias
                public float E0; // eps of Moments statistic 0
                public int Dim_Dim;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
                public void Execute(int start, int end)
                {
                    for (int t = start; t < end; t++)
                    {
                        int o = t * Dim_Dim;
                        int in0 = t * In0Cols;
                        global::Kiln.Kernels.Elementwise.RowStatistics.Moments(In0, in0, In0Cols, out double mean0d, out double variance0d);
                        float mean0 = (float)mean0d, scale0 = (float)(1.0 / global::System.Math.Sqrt(variance0d + E0));
                        int c = 0;
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use512)
                        {
                            for (; c + 16 <= Dim_Dim; c += 16)
                            {
                                var e0 = In0.Load16(in0 + c);
                                var e1 = global::System.Runtime.Intrinsics.Vector512.Create(mean0);
                                var e2 = e0 - e1;
                                var e3 = global::System.Runtime.Intrinsics.Vector512.Create(scale0);
                                var e4 = e2 * e3;
                                var e5 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W0[c]);
                                var e6 = e4 * e5;
                                var e7 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W1[c]);
                                var e8 = e6 + e7;
                                Output.Store16(o + c, e8);
                            }
                        }
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use256)
                        {
                            for (; c + 8 <= Dim_Dim; c += 8)
                            {
                                var e0 = In0.Load8(in0 + c);
                                var e1 = global::System.Runtime.Intrinsics.Vector256.Create(mean0);
                                var e2 = e0 - e1;
                                var e3 = global::System.Runtime.Intrinsics.Vector256.Create(scale0);
                                var e4 = e2 * e3;
                                var e5 = global::System.Runtime.Intrinsics.Vector256.LoadUnsafe(ref W0[c]);
                                var e6 = e4 * e5;
                                var e7 = global::System.Runtime.Intrinsics.Vector256.LoadUnsafe(ref W1[c]);
                                var e8 = e6 + e7;
                                Output.Store8(o + c, e8);
                            }
                        }
                        for (; c < Dim_Dim; c++)
                        {
                            var e0 = In0[in0 + c];
                            var e1 = mean0;
                            var e2 = e0 - e1;
                            var e3 = scale0;
                            var e4 = e2 * e3;
                            var e5 = W0[c];
                            var e6 = e4 * e5;
                            var e7 = W1[c];
                            var e8 = e6 + e7;
                            Output[o + c] = e8;
                        }
                    }
                }
            }

            /// <summary>[3] Blocks of 4-row groups of the packed weights × tokens: each tile through its segment's epilogue as soon as it is computed.</summary>
            private struct MatMul3Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.PackedMatrix Weights;
                public global::Kiln.Kernels.MatMul.GemmInput Input;
                public global::Kiln.Kernels.MatMul.GemmBlocks Blocks;
                public int End0; // the group where segment 0 (q) ends
                public int End1; // the group where segment 1 (k) ends
                public MatMul3Q Q;
                public MatMul3K K;
                public MatMul3V V;

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

            /// <summary>[3] q ← [Wq] + Bq.</summary>
            private struct MatMul3Q : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public float[] W0; // Bq
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

            /// <summary>[3] k ← [Wk] + Bk.</summary>
            private struct MatMul3K : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public float[] W0; // Bk
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

            /// <summary>[3] v ← [Wv] + Bv.</summary>
            private struct MatMul3V : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public float[] W0; // Bv
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

            /// <summary>[5] Blocks of 4-row groups of the packed weights × tokens: each tile through its segment's epilogue as soon as it is computed.</summary>
            private struct MatMul5Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.PackedMatrix Weights;
                public global::Kiln.Kernels.MatMul.GemmInput Input;
                public global::Kiln.Kernels.MatMul.GemmBlocks Blocks;
                public MatMul5Add Add;

                public void Execute(int start, int end)
                {
                    for (int item = start; item < end; item++)
                    {
                        Blocks.Get(item, out int first, out int last, out int firstToken, out int endToken);
                        Run(first, last, firstToken, endToken, ref Add);
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

            /// <summary>[5] add ← x2 + [Wo].</summary>
            private struct MatMul5Add : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public global::Kiln.Kernels.MatMul.FloatBuffer In0; public int In0Cols; // x2
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

            /// <summary>[6] h2 ← layernorm(add, AttnNorm), row by row.</summary>
            private struct Elementwise6Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public global::Kiln.Kernels.MatMul.FloatBuffer In0; public int In0Cols; // add
                public float[] W0; // AttnNorm
                public float[] W1; // AttnNormBias
                public float E0; // eps of Moments statistic 0
                public int Dim_Dim;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
                public void Execute(int start, int end)
                {
                    for (int t = start; t < end; t++)
                    {
                        int o = t * Dim_Dim;
                        int in0 = t * In0Cols;
                        global::Kiln.Kernels.Elementwise.RowStatistics.Moments(In0, in0, In0Cols, out double mean0d, out double variance0d);
                        float mean0 = (float)mean0d, scale0 = (float)(1.0 / global::System.Math.Sqrt(variance0d + E0));
                        int c = 0;
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use512)
                        {
                            for (; c + 16 <= Dim_Dim; c += 16)
                            {
                                var e0 = In0.Load16(in0 + c);
                                var e1 = global::System.Runtime.Intrinsics.Vector512.Create(mean0);
                                var e2 = e0 - e1;
                                var e3 = global::System.Runtime.Intrinsics.Vector512.Create(scale0);
                                var e4 = e2 * e3;
                                var e5 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W0[c]);
                                var e6 = e4 * e5;
                                var e7 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W1[c]);
                                var e8 = e6 + e7;
                                Output.Store16(o + c, e8);
                            }
                        }
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use256)
                        {
                            for (; c + 8 <= Dim_Dim; c += 8)
                            {
                                var e0 = In0.Load8(in0 + c);
                                var e1 = global::System.Runtime.Intrinsics.Vector256.Create(mean0);
                                var e2 = e0 - e1;
                                var e3 = global::System.Runtime.Intrinsics.Vector256.Create(scale0);
                                var e4 = e2 * e3;
                                var e5 = global::System.Runtime.Intrinsics.Vector256.LoadUnsafe(ref W0[c]);
                                var e6 = e4 * e5;
                                var e7 = global::System.Runtime.Intrinsics.Vector256.LoadUnsafe(ref W1[c]);
                                var e8 = e6 + e7;
                                Output.Store8(o + c, e8);
                            }
                        }
                        for (; c < Dim_Dim; c++)
                        {
                            var e0 = In0[in0 + c];
                            var e1 = mean0;
                            var e2 = e0 - e1;
                            var e3 = scale0;
                            var e4 = e2 * e3;
                            var e5 = W0[c];
                            var e6 = e4 * e5;
                            var e7 = W1[c];
                            var e8 = e6 + e7;
                            Output[o + c] = e8;
                        }
                    }
                }
            }

            /// <summary>[7] Blocks of 4-row groups of the packed weights × tokens: each tile through its segment's epilogue as soon as it is computed.</summary>
            private struct MatMul7Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.PackedMatrix Weights;
                public global::Kiln.Kernels.MatMul.GemmInput Input;
                public global::Kiln.Kernels.MatMul.GemmBlocks Blocks;
                public MatMul7Up Up;

                public void Execute(int start, int end)
                {
                    for (int item = start; item < end; item++)
                    {
                        Blocks.Get(item, out int first, out int last, out int firstToken, out int endToken);
                        Run(first, last, firstToken, endToken, ref Up);
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

            /// <summary>[7] up ← geluerf([Up]).</summary>
            private struct MatMul7Up : global::Kiln.Kernels.MatMul.ITileEpilogue
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
                        var e3 = global::System.Runtime.Intrinsics.Vector128.Create(0.5f);
                        var e4 = e3 * e2;
                        var e5 = global::System.Runtime.Intrinsics.Vector128.Create(1f);
                        var e6 = global::System.Runtime.Intrinsics.Vector128.Create(0.7071067811865476f);
                        var e7 = e2 * e6;
                        var e8 = global::Kiln.Kernels.Elementwise.Lanes.Erf(e7);
                        var e9 = e5 + e8;
                        var e10 = e4 * e9;
                        Output.Store4(at, e10);
                        return;
                    }
                    for (int i = 0; o + i < Cols; i++)
                    {
                        var e0 = sums[i];
                        var e1 = W0[o + i];
                        var e2 = e0 + e1;
                        var e3 = 0.5f;
                        var e4 = e3 * e2;
                        var e5 = 1f;
                        var e6 = 0.7071067811865476f;
                        var e7 = e2 * e6;
                        var e8 = global::Kiln.Kernels.Elementwise.Lanes.Erf(e7);
                        var e9 = e5 + e8;
                        var e10 = e4 * e9;
                        Output[at + i] = e10;
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
                        var e3 = global::System.Runtime.Intrinsics.Vector512.Create(0.5f);
                        var e4 = e3 * e2;
                        var e5 = global::System.Runtime.Intrinsics.Vector512.Create(1f);
                        var e6 = global::System.Runtime.Intrinsics.Vector512.Create(0.7071067811865476f);
                        var e7 = e2 * e6;
                        var e8 = global::Kiln.Kernels.Elementwise.Lanes.Erf(e7);
                        var e9 = e5 + e8;
                        var e10 = e4 * e9;
                        Output.Store16(at, e10);
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

            /// <summary>[8] Blocks of 4-row groups of the packed weights × tokens: each tile through its segment's epilogue as soon as it is computed.</summary>
            private struct MatMul8Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.PackedMatrix Weights;
                public global::Kiln.Kernels.MatMul.GemmInput Input;
                public global::Kiln.Kernels.MatMul.GemmBlocks Blocks;
                public MatMul8Add2 Add2;

                public void Execute(int start, int end)
                {
                    for (int item = start; item < end; item++)
                    {
                        Blocks.Get(item, out int first, out int last, out int firstToken, out int endToken);
                        Run(first, last, firstToken, endToken, ref Add2);
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

            /// <summary>[8] add2 ← h2 + [Down].</summary>
            private struct MatMul8Add2 : global::Kiln.Kernels.MatMul.ITileEpilogue
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public int Cols, FirstRow;
                public global::Kiln.Kernels.MatMul.FloatBuffer In0; public int In0Cols; // h2
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

            /// <summary>[9] x2 ← layernorm(add2, OutputNorm), row by row.</summary>
            private struct Elementwise9Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public global::Kiln.Kernels.MatMul.FloatBuffer In0; public int In0Cols; // add2
                public float[] W0; // OutputNorm
                public float[] W1; // OutputNormBias
                public float E0; // eps of Moments statistic 0
                public int Dim_Dim;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
                public void Execute(int start, int end)
                {
                    for (int t = start; t < end; t++)
                    {
                        int o = t * Dim_Dim;
                        int in0 = t * In0Cols;
                        global::Kiln.Kernels.Elementwise.RowStatistics.Moments(In0, in0, In0Cols, out double mean0d, out double variance0d);
                        float mean0 = (float)mean0d, scale0 = (float)(1.0 / global::System.Math.Sqrt(variance0d + E0));
                        int c = 0;
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use512)
                        {
                            for (; c + 16 <= Dim_Dim; c += 16)
                            {
                                var e0 = In0.Load16(in0 + c);
                                var e1 = global::System.Runtime.Intrinsics.Vector512.Create(mean0);
                                var e2 = e0 - e1;
                                var e3 = global::System.Runtime.Intrinsics.Vector512.Create(scale0);
                                var e4 = e2 * e3;
                                var e5 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W0[c]);
                                var e6 = e4 * e5;
                                var e7 = global::System.Runtime.Intrinsics.Vector512.LoadUnsafe(ref W1[c]);
                                var e8 = e6 + e7;
                                Output.Store16(o + c, e8);
                            }
                        }
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use256)
                        {
                            for (; c + 8 <= Dim_Dim; c += 8)
                            {
                                var e0 = In0.Load8(in0 + c);
                                var e1 = global::System.Runtime.Intrinsics.Vector256.Create(mean0);
                                var e2 = e0 - e1;
                                var e3 = global::System.Runtime.Intrinsics.Vector256.Create(scale0);
                                var e4 = e2 * e3;
                                var e5 = global::System.Runtime.Intrinsics.Vector256.LoadUnsafe(ref W0[c]);
                                var e6 = e4 * e5;
                                var e7 = global::System.Runtime.Intrinsics.Vector256.LoadUnsafe(ref W1[c]);
                                var e8 = e6 + e7;
                                Output.Store8(o + c, e8);
                            }
                        }
                        for (; c < Dim_Dim; c++)
                        {
                            var e0 = In0[in0 + c];
                            var e1 = mean0;
                            var e2 = e0 - e1;
                            var e3 = scale0;
                            var e4 = e2 * e3;
                            var e5 = W0[c];
                            var e6 = e4 * e5;
                            var e7 = W1[c];
                            var e8 = e6 + e7;
                            Output[o + c] = e8;
                        }
                    }
                }
            }

            /// <summary>[13] normalized ← l2normalize(pooled), row by row.</summary>
            private struct Elementwise13Work : global::Kiln.Threading.IParallelWork
            {
                public global::Kiln.Kernels.MatMul.FloatBuffer Output;
                public global::Kiln.Kernels.MatMul.FloatBuffer In0; public int In0Cols; // pooled
                public float E0; // eps of L2 statistic 0
                public int Dim_Dim;

                [global::System.Runtime.CompilerServices.MethodImpl(global::System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
                public void Execute(int start, int end)
                {
                    for (int t = start; t < end; t++)
                    {
                        int o = t * Dim_Dim;
                        int in0 = t * In0Cols;
                        float scale0 = (float)(1.0 / global::System.Math.Max(global::System.Math.Sqrt(global::Kiln.Kernels.Elementwise.RowStatistics.SumOfSquares(In0, in0, In0Cols)), E0));
                        int c = 0;
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use512)
                        {
                            for (; c + 16 <= Dim_Dim; c += 16)
                            {
                                var e0 = In0.Load16(in0 + c);
                                var e1 = global::System.Runtime.Intrinsics.Vector512.Create(scale0);
                                var e2 = e0 * e1;
                                Output.Store16(o + c, e2);
                            }
                        }
                        if (global::Kiln.Kernels.Elementwise.Lanes.Use256)
                        {
                            for (; c + 8 <= Dim_Dim; c += 8)
                            {
                                var e0 = In0.Load8(in0 + c);
                                var e1 = global::System.Runtime.Intrinsics.Vector256.Create(scale0);
                                var e2 = e0 * e1;
                                Output.Store8(o + c, e2);
                            }
                        }
                        for (; c < Dim_Dim; c++)
                        {
                            var e0 = In0[in0 + c];
                            var e1 = scale0;
                            var e2 = e0 * e1;
                            Output[o + c] = e2;
                        }
                    }
                }
            }

        }
    }
}
