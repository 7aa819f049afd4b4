namespace Kiln.Models;

/// <summary>
/// Jamba (llama.cpp's <c>jamba</c> architecture, its GGUF keys and tensor names): a hybrid whose layers are each
/// either a Mamba mixer or attention, as the file's per-layer attention.head_count_kv says (0: a Mamba layer). Every
/// layer: an RMSNorm; then the Mamba-1 mixer, with RMS norms on the time step, B and C (Jamba's), or grouped-query
/// attention without rope (Jamba's attention layers have no positional encoding: the Mamba layers carry order); the
/// residual; an RMSNorm and a dense SwiGLU FFN (a file with experts is refused at load); the residual. A request keeps
/// paged KV rows for the attention layers and a state slot for the Mamba ones.
/// </summary>
[Model("jamba")]
public partial class Jamba
{
    [Hyper("{arch}.embedding_length", Required = true)] public int Dim;
    [Hyper("{arch}.feed_forward_length", Required = true)] public int Hidden;
    [Hyper("{arch}.block_count", Required = true)] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true)] public int Heads;
    // One count per layer; 0 marks a Mamba layer. This array is what chooses each layer's mixer.
    [Hyper("{arch}.attention.head_count_kv", Required = true)] public int[] KvHeadsPerLayer = null!;
    [Hyper("{arch}.ssm.conv_kernel", Required = true)] public int ConvKernel;
    [Hyper("{arch}.ssm.inner_size", Required = true)] public int InnerSize;
    [Hyper("{arch}.ssm.state_size", Required = true)] public int StateSize;
    [Hyper("{arch}.ssm.time_step_rank", Required = true)] public int DtRank;
    [Hyper("{arch}.attention.layer_norm_rms_epsilon")] public float Eps = 1e-5f;
    [Hyper("{arch}.context_length")] public int Context = 2048;

    public int HeadDim => Dim / Heads;
    // The attention layers' KV head count (their attn_k and attn_v shapes check that they all share it).
    public int KvHeads => AttentionKvHeads(KvHeadsPerLayer);
    public int KvDim => KvHeads * HeadDim;
    public int InProjection => 2 * InnerSize;
    public int XProjection => DtRank + 2 * StateSize;

    // The KV cache holds the attention layers only, in order: each layer's cache layer (−1 for a Mamba layer).
    public int[] CacheLayerOf => _cacheLayerOf ??= NumberAttentionLayers(KvHeadsPerLayer);
    private int[]? _cacheLayerOf;

    [Weight("token_embd.weight", "Vocab", "Dim")] public Tensor TokenEmbedding = null!;
    [Weight("output_norm.weight", "Dim")] public Tensor OutputNorm = null!;
    [Weight("output.weight", "Vocab", "Dim", TiedTo = "token_embd.weight")] public Tensor Output = null!;

    [Layers("blk.{0}.", nameof(LayerCount))] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_norm.weight", "Dim")] public Tensor Norm = null!;

        // A Mamba layer's mixer (llama.cpp's shapes, ggml's ne reversed, as in Mamba.cs).
        [Weight("ssm_in.weight", "InProjection", "Dim", Optional = true)] public Tensor InWeight = null!;
        [Weight("ssm_conv1d.weight", "InnerSize", "ConvKernel", Optional = true)] public Tensor ConvWeight = null!;
        [Weight("ssm_conv1d.bias", "InnerSize", Optional = true)] public Tensor ConvBias = null!;
        [Weight("ssm_x.weight", "XProjection", "InnerSize", Optional = true)] public Tensor XWeight = null!;
        [Weight("ssm_dt_norm.weight", "DtRank", Optional = true)] public Tensor DtNorm = null!;
        [Weight("ssm_b_norm.weight", "StateSize", Optional = true)] public Tensor BNorm = null!;
        [Weight("ssm_c_norm.weight", "StateSize", Optional = true)] public Tensor CNorm = null!;
        [Weight("ssm_dt.weight", "InnerSize", "DtRank", Optional = true)] public Tensor DtWeight = null!;
        [Weight("ssm_dt.bias", "InnerSize", Optional = true)] public Tensor DtBias = null!;
        [Weight("ssm_a", "InnerSize", "StateSize", Optional = true)] public Tensor A = null!;
        [Weight("ssm_d", "InnerSize", Optional = true)] public Tensor D = null!;
        [Weight("ssm_out.weight", "Dim", "InnerSize", Optional = true)] public Tensor OutWeight = null!;

        // An attention layer's projections.
        [Weight("attn_q.weight", "Dim", "Dim", Optional = true)] public Tensor Wq = null!;
        [Weight("attn_k.weight", "KvDim", "Dim", Optional = true)] public Tensor Wk = null!;
        [Weight("attn_v.weight", "KvDim", "Dim", Optional = true)] public Tensor Wv = null!;
        [Weight("attn_output.weight", "Dim", "Dim", Optional = true)] public Tensor Wo = null!;

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
            var h = Ops.RmsNorm(x, block.Norm, Eps);
            Tensor mixed;
            if (KvHeadsPerLayer[layer] == 0)
            {
                var xz = Ops.Linear(h, block.InWeight);
                var u = Ops.Silu(Ops.CausalConv1d(Ops.Slice(xz, 0, InnerSize), block.ConvWeight, context, layer) + block.ConvBias);
                var dbc = Ops.Linear(u, block.XWeight);
                var dt = Ops.Linear(Ops.RmsNorm(Ops.Slice(dbc, 0, DtRank), block.DtNorm, Eps), block.DtWeight, block.DtBias);
                var b = Ops.RmsNorm(Ops.Slice(dbc, DtRank, StateSize), block.BNorm, Eps);
                var c = Ops.RmsNorm(Ops.Slice(dbc, DtRank + StateSize, StateSize), block.CNorm, Eps);
                var y = Ops.SelectiveScan(u, dt, block.A, b, c, block.D, Ops.Slice(xz, InnerSize, InnerSize), context, layer);
                mixed = Ops.Linear(y, block.OutWeight);
            }
            else
            {
                var q = Ops.Linear(h, block.Wq);
                var k = Ops.Linear(h, block.Wk);
                var v = Ops.Linear(h, block.Wv);
                mixed = Ops.Linear(Ops.Attention(q, k, v, context, CacheLayerOf[layer], Heads, KvHeads), block.Wo);
            }
            x = x + mixed;

            h = Ops.RmsNorm(x, block.FfnNorm, Eps);
            x = x + Ops.Linear(Ops.Silu(Ops.Linear(h, block.Gate)) * Ops.Linear(h, block.Up), block.Down);
        }
        x = Ops.SelectRows(x, context);
        return Ops.Linear(Ops.RmsNorm(x, OutputNorm, Eps), Output);
    }

    /// <summary>The KV head count the attention layers share (the largest; 0 when every layer is a Mamba layer).</summary>
    private static int AttentionKvHeads(int[] perLayer)
    {
        int heads = 0;
        foreach (int count in perLayer) heads = Math.Max(heads, count);
        return heads;
    }

    private static int[] NumberAttentionLayers(int[] perLayer)
    {
        var cacheLayer = new int[perLayer.Length];
        int next = 0;
        for (int layer = 0; layer < perLayer.Length; layer++) cacheLayer[layer] = perLayer[layer] == 0 ? -1 : next++;
        return cacheLayer;
    }
}
