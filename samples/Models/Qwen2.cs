namespace Kiln.Models;

/// <summary>
/// Qwen2: Llama's block with biases on the q, k and v projections, rotary embedding on NeoX halves (llama.cpp keeps
/// Qwen's q/k rows as Hugging Face has them), grouped-query attention, SwiGLU, output tied to the token embedding
/// when the file has no output.weight. llama.cpp's "qwen2" architecture and tensor names, and a Hugging Face
/// checkpoint's (Qwen2ForCausalLM).
/// </summary>
[Model("qwen2", Tokenizer = "gpt2")]
public partial class Qwen2
{
    [Hyper("{arch}.embedding_length", Required = true, HuggingFace = "hidden_size")] public int Dim;
    [Hyper("{arch}.feed_forward_length", Required = true, HuggingFace = "intermediate_size")] public int Hidden;
    [Hyper("{arch}.block_count", Required = true, HuggingFace = "num_hidden_layers")] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true, HuggingFace = "num_attention_heads")] public int Heads;
    [Hyper("{arch}.attention.head_count_kv", HuggingFace = "num_key_value_heads")] public int KvHeads = 0;
    [Hyper("{arch}.attention.layer_norm_rms_epsilon", Required = true, HuggingFace = "rms_norm_eps")] public float Eps;
    [Hyper("{arch}.rope.freq_base", HuggingFace = "rope_theta")] public float RopeBase = 10000f;
    [Hyper("{arch}.context_length", HuggingFace = "max_position_embeddings")] public int Context = 32768;

    public int KvHeadCount => KvHeads == 0 ? Heads : KvHeads;
    public int HeadDim => Dim / Heads;
    public int KvDim => KvHeadCount * HeadDim;

    [Weight("token_embd.weight", "Vocab", "Dim", HuggingFace = "model.embed_tokens.weight")] public Tensor TokenEmbedding = null!;
    [Weight("output_norm.weight", "Dim", HuggingFace = "model.norm.weight")] public Tensor OutputNorm = null!;
    [Weight("output.weight", "Vocab", "Dim", TiedTo = "token_embd.weight", HuggingFace = "lm_head.weight")] public Tensor Output = null!;

    [Layers("blk.{0}.", nameof(LayerCount), HuggingFace = "model.layers.{0}.")] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_norm.weight", "Dim", HuggingFace = "input_layernorm.weight")] public Tensor AttnNorm = null!;
        [Weight("attn_q.weight", "Dim", "Dim", HuggingFace = "self_attn.q_proj.weight")] public Tensor Wq = null!;
        [Weight("attn_q.bias", "Dim", HuggingFace = "self_attn.q_proj.bias")] public Tensor Bq = null!;
        [Weight("attn_k.weight", "KvDim", "Dim", HuggingFace = "self_attn.k_proj.weight")] public Tensor Wk = null!;
        [Weight("attn_k.bias", "KvDim", HuggingFace = "self_attn.k_proj.bias")] public Tensor Bk = null!;
        [Weight("attn_v.weight", "KvDim", "Dim", HuggingFace = "self_attn.v_proj.weight")] public Tensor Wv = null!;
        [Weight("attn_v.bias", "KvDim", HuggingFace = "self_attn.v_proj.bias")] public Tensor Bv = null!;
        [Weight("attn_output.weight", "Dim", "Dim", HuggingFace = "self_attn.o_proj.weight")] public Tensor Wo = null!;
        [Weight("ffn_norm.weight", "Dim", HuggingFace = "post_attention_layernorm.weight")] public Tensor FfnNorm = null!;
        [Weight("ffn_gate.weight", "Hidden", "Dim", HuggingFace = "mlp.gate_proj.weight")] public Tensor Gate = null!;
        [Weight("ffn_up.weight", "Hidden", "Dim", HuggingFace = "mlp.up_proj.weight")] public Tensor Up = null!;
        [Weight("ffn_down.weight", "Dim", "Hidden", HuggingFace = "mlp.down_proj.weight")] public Tensor Down = null!;
    }

    [Forward]
    public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        var x = Ops.Embedding(TokenEmbedding, tokens);
        for (int layer = 0; layer < LayerCount; layer++)
        {
            var block = Layers[layer];

            var h = Ops.RmsNorm(x, block.AttnNorm, Eps);
            var q = Ops.Rope(Ops.Linear(h, block.Wq, block.Bq), context, HeadDim, RopeBase, RopeStyle.NeoX);
            var k = Ops.Rope(Ops.Linear(h, block.Wk, block.Bk), context, HeadDim, RopeBase, RopeStyle.NeoX);
            var v = Ops.Linear(h, block.Wv, block.Bv);
            x = x + Ops.Linear(Ops.Attention(q, k, v, context, layer, Heads, KvHeadCount), block.Wo);

            h = Ops.RmsNorm(x, block.FfnNorm, Eps);
            x = x + Ops.Linear(Ops.Silu(Ops.Linear(h, block.Gate)) * Ops.Linear(h, block.Up), block.Down);
        }
        x = Ops.RmsNorm(Ops.SelectRows(x, context), OutputNorm, Eps);
        return Ops.Linear(x, Output);
    }
}
