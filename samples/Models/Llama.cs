namespace Kiln.Models;

/// <summary>
/// A Llama decoder: RMSNorm, rotary embedding on adjacent pairs, grouped-query attention, SwiGLU MLP, tied or
/// untied output. Run directly, <see cref="Forward"/> is the eager reference; the Kiln generator compiles the same
/// method into fused kernels (see the generated Llama.g.cs and its fusion report).
/// </summary>
[Model("llama")]
public partial class Llama
{
    [Hyper("{arch}.embedding_length", Required = true)] public int Dim;
    [Hyper("{arch}.feed_forward_length", Required = true)] public int Hidden;
    [Hyper("{arch}.block_count", Required = true)] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true)] public int Heads;
    [Hyper("{arch}.attention.head_count_kv")] public int KvHeads = 0;
    [Hyper("{arch}.attention.layer_norm_rms_epsilon")] public float Eps = 1e-5f;
    [Hyper("{arch}.rope.freq_base")] public float RopeBase = 10000f;
    [Hyper("{arch}.context_length")] public int Context = 2048;

    // Derived dimensions: a file without head_count_kv has plain multi-head attention.
    public int KvHeadCount => KvHeads == 0 ? Heads : KvHeads;
    public int HeadDim => Dim / Heads;
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
        [Weight("attn_k.weight", "KvDim", "Dim")] public Tensor Wk = null!;
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
