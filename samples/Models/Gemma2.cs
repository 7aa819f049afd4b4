namespace Kiln.Models;

/// <summary>
/// Gemma-2: the token embedding scaled by √Dim; RMSNorm before and after both attention and the MLP; rotary
/// embedding on NeoX halves; attention that alternates a sliding window (even layers) with global attention, with its
/// scores soft-capped; a GeGLU (tanh GELU) MLP; the output is the token embedding, soft-capped. A GGUF's norm weights
/// already hold Gemma's "1 +"; a Hugging Face checkpoint's (Gemma2ForCausalLM) get it at load. llama.cpp's "gemma2"
/// architecture, keys and defaults.
/// </summary>
[Model("gemma2", Tokenizer = "llama")]
public partial class Gemma2
{
    [Hyper("{arch}.embedding_length", Required = true, HuggingFace = "hidden_size")] public int Dim;
    [Hyper("{arch}.feed_forward_length", Required = true, HuggingFace = "intermediate_size")] public int Hidden;
    [Hyper("{arch}.block_count", Required = true, HuggingFace = "num_hidden_layers")] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true, HuggingFace = "num_attention_heads")] public int Heads;
    [Hyper("{arch}.attention.head_count_kv", HuggingFace = "num_key_value_heads")] public int KvHeads = 0;
    [Hyper("{arch}.attention.key_length", HuggingFace = "head_dim")] public int KeyLength = 0;
    [Hyper("{arch}.attention.layer_norm_rms_epsilon", Required = true, HuggingFace = "rms_norm_eps")] public float Eps;
    [Hyper("{arch}.rope.freq_base", HuggingFace = "rope_theta")] public float RopeBase = 10000f;
    [Hyper("{arch}.attention.sliding_window", HuggingFace = "sliding_window")] public int Window = 4096;
    [Hyper("{arch}.attention.sliding_window_pattern", HuggingFace = "sliding_window_pattern")] public int WindowPeriod = 2;
    [Hyper("{arch}.attn_logit_softcapping", HuggingFace = "attn_logit_softcapping")] public float AttentionCap = 50f;
    [Hyper("{arch}.final_logit_softcapping", HuggingFace = "final_logit_softcapping")] public float FinalCap = 30f;
    [Hyper("{arch}.context_length", HuggingFace = "max_position_embeddings")] public int Context = 8192;
    [Hyper(HuggingFace = "query_pre_attn_scalar")] public int QueryPreAttnScalar = 0;

    public int KvHeadCount => KvHeads == 0 ? Heads : KvHeads;
    public int HeadDim => KeyLength == 0 ? Dim / Heads : KeyLength;
    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeadCount * HeadDim;

    // Gemma-2 scales queries by query_pre_attn_scalar^-1/2. A Hugging Face config states it; GGUF does not, and
    // llama.cpp infers it from the size (Dim/Heads for the 46-layer 27B, the head dimension otherwise), as this does.
    public float QueryScale => QueryPreAttnScalar > 0 ? 1f / MathF.Sqrt(QueryPreAttnScalar)
        : LayerCount == 46 ? 1f / MathF.Sqrt(Dim / Heads) : 1f / MathF.Sqrt(HeadDim);

    [Weight("token_embd.weight", "Vocab", "Dim", HuggingFace = "model.embed_tokens.weight")] public Tensor TokenEmbedding = null!;
    [Weight("output_norm.weight", "Dim", HuggingFace = "model.norm.weight", FromHuggingFace = HuggingFaceConversion.AddOne)] public Tensor OutputNorm = null!;

    [Layers("blk.{0}.", nameof(LayerCount), HuggingFace = "model.layers.{0}.")] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_norm.weight", "Dim", HuggingFace = "input_layernorm.weight", FromHuggingFace = HuggingFaceConversion.AddOne)] public Tensor AttnNorm = null!;
        [Weight("attn_q.weight", "QDim", "Dim", HuggingFace = "self_attn.q_proj.weight")] public Tensor Wq = null!;
        [Weight("attn_k.weight", "KvDim", "Dim", HuggingFace = "self_attn.k_proj.weight")] public Tensor Wk = null!;
        [Weight("attn_v.weight", "KvDim", "Dim", HuggingFace = "self_attn.v_proj.weight")] public Tensor Wv = null!;
        [Weight("attn_output.weight", "Dim", "QDim", HuggingFace = "self_attn.o_proj.weight")] public Tensor Wo = null!;
        [Weight("post_attention_norm.weight", "Dim", HuggingFace = "post_attention_layernorm.weight", FromHuggingFace = HuggingFaceConversion.AddOne)] public Tensor PostAttnNorm = null!;
        [Weight("ffn_norm.weight", "Dim", HuggingFace = "pre_feedforward_layernorm.weight", FromHuggingFace = HuggingFaceConversion.AddOne)] public Tensor FfnNorm = null!;
        [Weight("ffn_gate.weight", "Hidden", "Dim", HuggingFace = "mlp.gate_proj.weight")] public Tensor Gate = null!;
        [Weight("ffn_up.weight", "Hidden", "Dim", HuggingFace = "mlp.up_proj.weight")] public Tensor Up = null!;
        [Weight("ffn_down.weight", "Dim", "Hidden", HuggingFace = "mlp.down_proj.weight")] public Tensor Down = null!;
        [Weight("post_ffw_norm.weight", "Dim", HuggingFace = "post_feedforward_layernorm.weight", FromHuggingFace = HuggingFaceConversion.AddOne)] public Tensor PostFfnNorm = null!;
    }

    [Forward]
    public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        var x = Ops.Embedding(TokenEmbedding, tokens) * MathF.Sqrt(Dim);
        for (int layer = 0; layer < LayerCount; layer++)
        {
            var block = Layers[layer];
            // Every WindowPeriod-th layer is global, the others slide (a period of 0: all slide).
            bool sliding = WindowPeriod == 0 || layer % WindowPeriod < WindowPeriod - 1;

            var h = Ops.RmsNorm(x, block.AttnNorm, Eps);
            var q = Ops.Rope(Ops.Linear(h, block.Wq), context, HeadDim, RopeBase, RopeStyle.NeoX);
            var k = Ops.Rope(Ops.Linear(h, block.Wk), context, HeadDim, RopeBase, RopeStyle.NeoX);
            var v = Ops.Linear(h, block.Wv);
            var attention = Ops.Attention(q, k, v, context, layer, Heads, KvHeadCount,
                scale: QueryScale, window: sliding ? Window : 0, softCap: AttentionCap);
            x = x + Ops.RmsNorm(Ops.Linear(attention, block.Wo), block.PostAttnNorm, Eps);

            h = Ops.RmsNorm(x, block.FfnNorm, Eps);
            var mlp = Ops.Linear(Ops.Gelu(Ops.Linear(h, block.Gate)) * Ops.Linear(h, block.Up), block.Down);
            x = x + Ops.RmsNorm(mlp, block.PostFfnNorm, Eps);
        }
        x = Ops.RmsNorm(Ops.SelectRows(x, context), OutputNorm, Eps);
        return Ops.SoftCap(Ops.Linear(x, TokenEmbedding), FinalCap);
    }
}
