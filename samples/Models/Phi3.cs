namespace Kiln.Models;

/// <summary>
/// Phi-3: Llama's block with one fused QKV projection and one fused gate/up projection (the first half is the gate),
/// each split by slicing — packed as separate matrices, so the slices cost nothing — and rotary embedding on NeoX
/// halves of the first rope.dimension_count dimensions. Phi-3's sliding window is applied as the file states it
/// (llama.cpp reads it but attends globally; the two differ only past the window). llama.cpp's "phi3" architecture.
/// </summary>
[Model("phi3", Tokenizer = "llama")]
public partial class Phi3
{
    [Hyper("{arch}.embedding_length", Required = true)] public int Dim;
    [Hyper("{arch}.feed_forward_length", Required = true)] public int Hidden;
    [Hyper("{arch}.block_count", Required = true)] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true)] public int Heads;
    [Hyper("{arch}.attention.head_count_kv")] public int KvHeads = 0;
    [Hyper("{arch}.attention.layer_norm_rms_epsilon", Required = true)] public float Eps;
    [Hyper("{arch}.rope.freq_base")] public float RopeBase = 10000f;
    [Hyper("{arch}.rope.dimension_count")] public int RopeDims = 0;
    [Hyper("{arch}.attention.sliding_window")] public int Window = 0;
    [Hyper("{arch}.context_length")] public int Context = 4096;

    public int KvHeadCount => KvHeads == 0 ? Heads : KvHeads;
    public int HeadDim => Dim / Heads;
    public int KvDim => KvHeadCount * HeadDim;
    public int QkvDim => Dim + 2 * KvDim;

    [Weight("token_embd.weight", "Vocab", "Dim")] public Tensor TokenEmbedding = null!;
    [Weight("output_norm.weight", "Dim")] public Tensor OutputNorm = null!;
    [Weight("output.weight", "Vocab", "Dim", TiedTo = "token_embd.weight")] public Tensor Output = null!;

    [Layers("blk.{0}.", nameof(LayerCount))] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_norm.weight", "Dim")] public Tensor AttnNorm = null!;
        [Weight("attn_qkv.weight", "QkvDim", "Dim")] public Tensor Wqkv = null!;
        [Weight("attn_output.weight", "Dim", "Dim")] public Tensor Wo = null!;
        [Weight("ffn_norm.weight", "Dim")] public Tensor FfnNorm = null!;
        [Weight("ffn_up.weight", "2*Hidden", "Dim")] public Tensor GateUp = null!;
        [Weight("ffn_down.weight", "Dim", "Hidden")] public Tensor Down = null!;
    }

    [Forward]
    public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        var x = Ops.Embedding(TokenEmbedding, tokens);
        for (int layer = 0; layer < LayerCount; layer++)
        {
            var block = Layers[layer];

            var qkv = Ops.Linear(Ops.RmsNorm(x, block.AttnNorm, Eps), block.Wqkv);
            var q = Ops.Rope(Ops.Slice(qkv, 0, Dim), context, HeadDim, RopeBase, RopeStyle.NeoX, RopeDims);
            var k = Ops.Rope(Ops.Slice(qkv, Dim, KvDim), context, HeadDim, RopeBase, RopeStyle.NeoX, RopeDims);
            var v = Ops.Slice(qkv, Dim + KvDim, KvDim);
            x = x + Ops.Linear(Ops.Attention(q, k, v, context, layer, Heads, KvHeadCount, window: Window), block.Wo);

            var gateUp = Ops.Linear(Ops.RmsNorm(x, block.FfnNorm, Eps), block.GateUp);
            x = x + Ops.Linear(Ops.Silu(Ops.Slice(gateUp, 0, Hidden)) * Ops.Slice(gateUp, Hidden, Hidden), block.Down);
        }
        x = Ops.RmsNorm(Ops.SelectRows(x, context), OutputNorm, Eps);
        return Ops.Linear(x, Output);
    }
}
