namespace Kiln.Models;

/// <summary>
/// A Llama decoder: RMSNorm, rotary embedding on adjacent pairs, grouped-query attention, SwiGLU MLP, tied or
/// untied output. Run directly, <see cref="Forward"/> is the eager reference; the Kiln generator compiles the same
/// method into fused kernels (see the generated Llama.g.cs and its fusion report). Binds llama.cpp's GGUF names and a
/// Hugging Face checkpoint's (LlamaForCausalLM, MistralForCausalLM), whose q and k rows are reordered at load.
/// </summary>
[Model("llama")]
public partial class Llama
{
    [Hyper("{arch}.embedding_length", Required = true, HuggingFace = "hidden_size")] public int Dim;
    [Hyper("{arch}.feed_forward_length", Required = true, HuggingFace = "intermediate_size")] public int Hidden;
    [Hyper("{arch}.block_count", Required = true, HuggingFace = "num_hidden_layers")] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true, HuggingFace = "num_attention_heads")] public int Heads;
    [Hyper("{arch}.attention.head_count_kv", HuggingFace = "num_key_value_heads")] public int KvHeads = 0;
    [Hyper("{arch}.attention.layer_norm_rms_epsilon", HuggingFace = "rms_norm_eps")] public float Eps = 1e-5f;
    [Hyper("{arch}.rope.freq_base", HuggingFace = "rope_theta")] public float RopeBase = 10000f;
    [Hyper("{arch}.context_length", HuggingFace = "max_position_embeddings")] public int Context = 2048;

    // Derived dimensions: a file without head_count_kv has plain multi-head attention.
    public int KvHeadCount => KvHeads == 0 ? Heads : KvHeads;
    public int HeadDim => Dim / Heads;
    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeadCount * HeadDim;

    [Weight("token_embd.weight", "Vocab", "Dim", HuggingFace = "model.embed_tokens.weight")] public Tensor TokenEmbedding = null!;
    [Weight("output_norm.weight", "Dim", HuggingFace = "model.norm.weight")] public Tensor OutputNorm = null!;
    [Weight("output.weight", "Vocab", "Dim", TiedTo = "token_embd.weight", HuggingFace = "lm_head.weight")] public Tensor Output = null!;

    [Layers("blk.{0}.", nameof(LayerCount), HuggingFace = "model.layers.{0}.")] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_norm.weight", "Dim", HuggingFace = "input_layernorm.weight")] public Tensor AttnNorm = null!;
        // Hugging Face keeps each head's rotary halves apart (rotate_half); this forward's rope turns adjacent pairs,
        // so q and k rows are interleaved at load, as llama.cpp's converter does. One forward serves both files.
        [Weight("attn_q.weight", "QDim", "Dim", HuggingFace = "self_attn.q_proj.weight",
            FromHuggingFace = HuggingFaceConversion.RopeHalvesToPairs, HeadSize = "HeadDim")] public Tensor Wq = null!;
        [Weight("attn_k.weight", "KvDim", "Dim", HuggingFace = "self_attn.k_proj.weight",
            FromHuggingFace = HuggingFaceConversion.RopeHalvesToPairs, HeadSize = "HeadDim")] public Tensor Wk = null!;
        [Weight("attn_v.weight", "KvDim", "Dim", HuggingFace = "self_attn.v_proj.weight")] public Tensor Wv = null!;
        [Weight("attn_output.weight", "Dim", "QDim", HuggingFace = "self_attn.o_proj.weight")] public Tensor Wo = null!;
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
            var q = Ops.Rope(Ops.Linear(h, block.Wq), context, HeadDim, RopeBase);
            var k = Ops.Rope(Ops.Linear(h, block.Wk), context, HeadDim, RopeBase);
            var v = Ops.Linear(h, block.Wv);
            var attention = Ops.Attention(q, k, v, context, layer, Heads, KvHeadCount);
            x = x + Ops.Linear(attention, block.Wo);

            h = Ops.RmsNorm(x, block.FfnNorm, Eps);
            var gate = Ops.Silu(Ops.Linear(h, block.Gate));
            var up = Ops.Linear(h, block.Up);
            x = x + Ops.Linear(gate * up, block.Down);
        }
        x = Ops.SelectRows(x, context);
        x = Ops.RmsNorm(x, OutputNorm, Eps);
        return Ops.Linear(x, Output);
    }
}
