namespace Kiln.Models;

/// <summary>
/// Qwen3: Llama's block with an RMSNorm on each head of q and of k before the rotary embedding (NeoX halves), a head
/// dimension of its own (attention.key_length, so q may be wider than the model), grouped-query attention, SwiGLU,
/// output tied to the token embedding when the file has no output.weight. llama.cpp's "qwen3" architecture.
/// </summary>
[Model("qwen3", Tokenizer = "gpt2")]
public partial class Qwen3
{
    [Hyper("{arch}.embedding_length", Required = true)] public int Dim;
    [Hyper("{arch}.feed_forward_length", Required = true)] public int Hidden;
    [Hyper("{arch}.block_count", Required = true)] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true)] public int Heads;
    [Hyper("{arch}.attention.head_count_kv")] public int KvHeads = 0;
    [Hyper("{arch}.attention.key_length")] public int KeyLength = 0;
    [Hyper("{arch}.attention.layer_norm_rms_epsilon", Required = true)] public float Eps;
    [Hyper("{arch}.rope.freq_base")] public float RopeBase = 10000f;
    [Hyper("{arch}.context_length")] public int Context = 40960;

    public int KvHeadCount => KvHeads == 0 ? Heads : KvHeads;
    public int HeadDim => KeyLength == 0 ? Dim / Heads : KeyLength;
    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeadCount * HeadDim;

    [Weight("token_embd.weight", "Vocab", "Dim")] public Tensor TokenEmbedding = null!;
    [Weight("output_norm.weight", "Dim")] public Tensor OutputNorm = null!;
    [Weight("output.weight", "Vocab", "Dim", TiedTo = "token_embd.weight")] public Tensor Output = null!;

    [Layers("blk.{0}.", nameof(LayerCount))] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_norm.weight", "Dim")] public Tensor AttnNorm = null!;
        [Weight("attn_q.weight", "QDim", "Dim")] public Tensor Wq = null!;
        [Weight("attn_q_norm.weight", "HeadDim")] public Tensor QNorm = null!;
        [Weight("attn_k.weight", "KvDim", "Dim")] public Tensor Wk = null!;
        [Weight("attn_k_norm.weight", "HeadDim")] public Tensor KNorm = null!;
        [Weight("attn_v.weight", "KvDim", "Dim")] public Tensor Wv = null!;
        [Weight("attn_output.weight", "Dim", "QDim")] public Tensor Wo = null!;
        [Weight("ffn_norm.weight", "Dim")] public Tensor FfnNorm = null!;
        [Weight("ffn_gate.weight", "Hidden", "Dim")] public Tensor Gate = null!;
        [Weight("ffn_up.weight", "Hidden", "Dim")] public Tensor Up = null!;
        [Weight("ffn_down.weight", "Dim", "Hidden")] public Tensor Down = null!;
    }

    [Forward]
    public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        var x = Ops.Embedding(TokenEmbedding, tokens);
        for (int layer = 0; layer < LayerCount; layer++)
        {
            var block = Layers[layer];

            var h = Ops.RmsNorm(x, block.AttnNorm, Eps);
            var q = Ops.Rope(Ops.HeadRmsNorm(Ops.Linear(h, block.Wq), block.QNorm, Eps), context, HeadDim, RopeBase, RopeStyle.NeoX);
            var k = Ops.Rope(Ops.HeadRmsNorm(Ops.Linear(h, block.Wk), block.KNorm, Eps), context, HeadDim, RopeBase, RopeStyle.NeoX);
            var v = Ops.Linear(h, block.Wv);
            x = x + Ops.Linear(Ops.Attention(q, k, v, context, layer, Heads, KvHeadCount), block.Wo);

            h = Ops.RmsNorm(x, block.FfnNorm, Eps);
            x = x + Ops.Linear(Ops.Silu(Ops.Linear(h, block.Gate)) * Ops.Linear(h, block.Up), block.Down);
        }
        x = Ops.RmsNorm(Ops.SelectRows(x, context), OutputNorm, Eps);
        return Ops.Linear(x, Output);
    }
}
