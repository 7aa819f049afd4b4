namespace Kiln.Models;

/// <summary>
/// Phi-3: Llama's block with one fused QKV projection and one fused gate/up projection (the first half is the gate),
/// each split by slicing — packed as separate matrices, so the slices cost nothing — and rotary embedding on NeoX
/// halves of the first rope.dimension_count dimensions. Phi-3's sliding window is applied as the file states it
/// (llama.cpp reads it but attends globally; the two differ only past the window). llama.cpp's "phi3" architecture,
/// and a Hugging Face checkpoint's (Phi3ForCausalLM, which fuses qkv and gate/up as GGUF does).
/// </summary>
[Model("phi3", Tokenizer = "llama")]
public partial class Phi3
{
    [Hyper("{arch}.embedding_length", Required = true, HuggingFace = "hidden_size")] public int Dim;
    [Hyper("{arch}.feed_forward_length", Required = true, HuggingFace = "intermediate_size")] public int Hidden;
    [Hyper("{arch}.block_count", Required = true, HuggingFace = "num_hidden_layers")] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true, HuggingFace = "num_attention_heads")] public int Heads;
    [Hyper("{arch}.attention.head_count_kv", HuggingFace = "num_key_value_heads")] public int KvHeads = 0;
    [Hyper("{arch}.attention.layer_norm_rms_epsilon", Required = true, HuggingFace = "rms_norm_eps")] public float Eps;
    [Hyper("{arch}.rope.freq_base", HuggingFace = "rope_theta")] public float RopeBase = 10000f;
    [Hyper("{arch}.rope.dimension_count")] public int RopeDims = 0;
    [Hyper(HuggingFace = "partial_rotary_factor")] public double RotaryFraction = 1.0;
    [Hyper("{arch}.attention.sliding_window", HuggingFace = "sliding_window")] public int Window = 0;
    [Hyper("{arch}.context_length", HuggingFace = "max_position_embeddings")] public int Context = 4096;

    public int KvHeadCount => KvHeads == 0 ? Heads : KvHeads;
    public int HeadDim => Dim / Heads;
    public int KvDim => KvHeadCount * HeadDim;
    public int QkvDim => Dim + 2 * KvDim;
    // GGUF states the rotary width; a Hugging Face config the share of each head it covers (computed as transformers does).
    public int RotaryDims => RopeDims != 0 ? RopeDims : (int)(RotaryFraction * HeadDim);

    [Weight("token_embd.weight", "Vocab", "Dim", HuggingFace = "model.embed_tokens.weight")] public Tensor TokenEmbedding = null!;
    [Weight("output_norm.weight", "Dim", HuggingFace = "model.norm.weight")] public Tensor OutputNorm = null!;
    [Weight("output.weight", "Vocab", "Dim", TiedTo = "token_embd.weight", HuggingFace = "lm_head.weight")] public Tensor Output = null!;

    [Layers("blk.{0}.", nameof(LayerCount), HuggingFace = "model.layers.{0}.")] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_norm.weight", "Dim", HuggingFace = "input_layernorm.weight")] public Tensor AttnNorm = null!;
        [Weight("attn_qkv.weight", "QkvDim", "Dim", HuggingFace = "self_attn.qkv_proj.weight")] public Tensor Wqkv = null!;
        [Weight("attn_output.weight", "Dim", "Dim", HuggingFace = "self_attn.o_proj.weight")] public Tensor Wo = null!;
        [Weight("ffn_norm.weight", "Dim", HuggingFace = "post_attention_layernorm.weight")] public Tensor FfnNorm = null!;
        [Weight("ffn_up.weight", "2*Hidden", "Dim", HuggingFace = "mlp.gate_up_proj.weight")] public Tensor GateUp = null!;
        [Weight("ffn_down.weight", "Dim", "Hidden", HuggingFace = "mlp.down_proj.weight")] public Tensor Down = null!;
    }

    [Forward]
    public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        var x = Ops.Embedding(TokenEmbedding, tokens);
        for (int layer = 0; layer < LayerCount; layer++)
        {
            var block = Layers[layer];

            var qkv = Ops.Linear(Ops.RmsNorm(x, block.AttnNorm, Eps), block.Wqkv);
            var q = Ops.Rope(Ops.Slice(qkv, 0, Dim), context, HeadDim, RopeBase, RopeStyle.NeoX, RotaryDims);
            var k = Ops.Rope(Ops.Slice(qkv, Dim, KvDim), context, HeadDim, RopeBase, RopeStyle.NeoX, RotaryDims);
            var v = Ops.Slice(qkv, Dim + KvDim, KvDim);
            x = x + Ops.Linear(Ops.Attention(q, k, v, context, layer, Heads, KvHeadCount, window: Window), block.Wo);

            var gateUp = Ops.Linear(Ops.RmsNorm(x, block.FfnNorm, Eps), block.GateUp);
            x = x + Ops.Linear(Ops.Silu(Ops.Slice(gateUp, 0, Hidden)) * Ops.Slice(gateUp, Hidden, Hidden), block.Down);
        }
        x = Ops.RmsNorm(Ops.SelectRows(x, context), OutputNorm, Eps);
        return Ops.Linear(x, Output);
    }
}
