namespace Kiln.Models;

/// <summary>
/// GPT-2: learned position embeddings added to the tokens', pre-LayerNorm blocks with biases everywhere, one fused
/// QKV projection (split by slicing: packed as three matrices, so the slices cost nothing), GELU (tanh) MLP, output
/// tied to the token embedding when the file has no output.weight. llama.cpp's "gpt2" architecture and tensor names,
/// and the Hugging Face checkpoint's (GPT2LMHeadModel as the hub stores it: no "transformer." prefix, Conv1D weights
/// stored [in, out] and transposed at load).
/// </summary>
[Model("gpt2", Tokenizer = "gpt2")]
public partial class Gpt2
{
    [Hyper("{arch}.embedding_length", Required = true, HuggingFace = "n_embd")] public int Dim;
    [Hyper("{arch}.feed_forward_length", HuggingFace = "n_inner")] public int Inner = 0;
    [Hyper("{arch}.block_count", Required = true, HuggingFace = "n_layer")] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true, HuggingFace = "n_head")] public int Heads;
    [Hyper("{arch}.attention.layer_norm_epsilon", HuggingFace = "layer_norm_epsilon")] public float Eps = 1e-5f;
    [Hyper("{arch}.context_length", Required = true, HuggingFace = "n_positions")] public int Context;

    public int HeadDim => Dim / Heads;
    // The MLP is four times the model unless the file says otherwise (Hugging Face configs write n_inner: null).
    public int Hidden => Inner == 0 ? 4 * Dim : Inner;

    [Weight("token_embd.weight", "Vocab", "Dim", HuggingFace = "wte.weight")] public Tensor TokenEmbedding = null!;
    [Weight("position_embd.weight", "Context", "Dim", HuggingFace = "wpe.weight")] public Tensor Positions = null!;
    [Weight("output_norm.weight", "Dim", HuggingFace = "ln_f.weight")] public Tensor OutputNorm = null!;
    [Weight("output_norm.bias", "Dim", HuggingFace = "ln_f.bias")] public Tensor OutputNormBias = null!;
    [Weight("output.weight", "Vocab", "Dim", TiedTo = "token_embd.weight", HuggingFace = "lm_head.weight")] public Tensor Output = null!;

    [Layers("blk.{0}.", nameof(LayerCount), HuggingFace = "h.{0}.")] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_norm.weight", "Dim", HuggingFace = "ln_1.weight")] public Tensor AttnNorm = null!;
        [Weight("attn_norm.bias", "Dim", HuggingFace = "ln_1.bias")] public Tensor AttnNormBias = null!;
        [Weight("attn_qkv.weight", "3*Dim", "Dim", HuggingFace = "attn.c_attn.weight", FromHuggingFace = HuggingFaceConversion.Transpose)] public Tensor Wqkv = null!;
        [Weight("attn_qkv.bias", "3*Dim", HuggingFace = "attn.c_attn.bias")] public Tensor Bqkv = null!;
        [Weight("attn_output.weight", "Dim", "Dim", HuggingFace = "attn.c_proj.weight", FromHuggingFace = HuggingFaceConversion.Transpose)] public Tensor Wo = null!;
        [Weight("attn_output.bias", "Dim", HuggingFace = "attn.c_proj.bias")] public Tensor Bo = null!;
        [Weight("ffn_norm.weight", "Dim", HuggingFace = "ln_2.weight")] public Tensor FfnNorm = null!;
        [Weight("ffn_norm.bias", "Dim", HuggingFace = "ln_2.bias")] public Tensor FfnNormBias = null!;
        [Weight("ffn_up.weight", "Hidden", "Dim", HuggingFace = "mlp.c_fc.weight", FromHuggingFace = HuggingFaceConversion.Transpose)] public Tensor Up = null!;
        [Weight("ffn_up.bias", "Hidden", HuggingFace = "mlp.c_fc.bias")] public Tensor UpBias = null!;
        [Weight("ffn_down.weight", "Dim", "Hidden", HuggingFace = "mlp.c_proj.weight", FromHuggingFace = HuggingFaceConversion.Transpose)] public Tensor Down = null!;
        [Weight("ffn_down.bias", "Dim", HuggingFace = "mlp.c_proj.bias")] public Tensor DownBias = null!;
    }

    [Forward]
    public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        var x = Ops.Embedding(TokenEmbedding, tokens) + Ops.PositionEmbedding(Positions, context);
        for (int layer = 0; layer < LayerCount; layer++)
        {
            var block = Layers[layer];

            var qkv = Ops.Linear(Ops.LayerNorm(x, block.AttnNorm, block.AttnNormBias, Eps), block.Wqkv, block.Bqkv);
            var q = Ops.Slice(qkv, 0, Dim);
            var k = Ops.Slice(qkv, Dim, Dim);
            var v = Ops.Slice(qkv, 2 * Dim, Dim);
            var attention = Ops.Attention(q, k, v, context, layer, Heads, Heads);
            x = x + Ops.Linear(attention, block.Wo, block.Bo);

            var h = Ops.LayerNorm(x, block.FfnNorm, block.FfnNormBias, Eps);
            x = x + Ops.Linear(Ops.Gelu(Ops.Linear(h, block.Up, block.UpBias)), block.Down, block.DownBias);
        }
        x = Ops.LayerNorm(Ops.SelectRows(x, context), OutputNorm, OutputNormBias, Eps);
        return Ops.Linear(x, Output);
    }
}
