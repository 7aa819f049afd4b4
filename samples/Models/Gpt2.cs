namespace Kiln.Models;

/// <summary>
/// GPT-2: learned position embeddings added to the tokens', pre-LayerNorm blocks with biases everywhere, one fused
/// QKV projection (split by slicing: packed as three matrices, so the slices cost nothing), GELU (tanh) MLP, output
/// tied to the token embedding when the file has no output.weight. llama.cpp's "gpt2" architecture and tensor names.
/// </summary>
[Model("gpt2", Tokenizer = "gpt2")]
public partial class Gpt2
{
    [Hyper("{arch}.embedding_length", Required = true)] public int Dim;
    [Hyper("{arch}.feed_forward_length", Required = true)] public int Hidden;
    [Hyper("{arch}.block_count", Required = true)] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true)] public int Heads;
    [Hyper("{arch}.attention.layer_norm_epsilon")] public float Eps = 1e-5f;
    [Hyper("{arch}.context_length", Required = true)] public int Context;

    public int HeadDim => Dim / Heads;

    [Weight("token_embd.weight", "Vocab", "Dim")] public Tensor TokenEmbedding = null!;
    [Weight("position_embd.weight", "Context", "Dim")] public Tensor Positions = null!;
    [Weight("output_norm.weight", "Dim")] public Tensor OutputNorm = null!;
    [Weight("output_norm.bias", "Dim")] public Tensor OutputNormBias = null!;
    [Weight("output.weight", "Vocab", "Dim", TiedTo = "token_embd.weight")] public Tensor Output = null!;

    [Layers("blk.{0}.", nameof(LayerCount))] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_norm.weight", "Dim")] public Tensor AttnNorm = null!;
        [Weight("attn_norm.bias", "Dim")] public Tensor AttnNormBias = null!;
        [Weight("attn_qkv.weight", "3*Dim", "Dim")] public Tensor Wqkv = null!;
        [Weight("attn_qkv.bias", "3*Dim")] public Tensor Bqkv = null!;
        [Weight("attn_output.weight", "Dim", "Dim")] public Tensor Wo = null!;
        [Weight("attn_output.bias", "Dim")] public Tensor Bo = null!;
        [Weight("ffn_norm.weight", "Dim")] public Tensor FfnNorm = null!;
        [Weight("ffn_norm.bias", "Dim")] public Tensor FfnNormBias = null!;
        [Weight("ffn_up.weight", "Hidden", "Dim")] public Tensor Up = null!;
        [Weight("ffn_up.bias", "Hidden")] public Tensor UpBias = null!;
        [Weight("ffn_down.weight", "Dim", "Hidden")] public Tensor Down = null!;
        [Weight("ffn_down.bias", "Dim")] public Tensor DownBias = null!;
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
