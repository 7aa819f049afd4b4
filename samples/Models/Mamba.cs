namespace Kiln.Models;

/// <summary>
/// Mamba-1 (llama.cpp's <c>mamba</c> architecture, its GGUF keys and tensor names): per layer an RMSNorm, then one
/// input projection split into x and the gate z; x through a causal depthwise convolution (its last K − 1 inputs per
/// channel carried in the sequence's state slot), bias and SiLU; a projection of x to the time-step rank and the
/// per-token B and C; the time step's own projection with bias; the selective scan (its state per channel carried in
/// the slot, D skip and SiLU(z) gating inside); the output projection and the residual. A final RMSNorm and the
/// output head. No attention: a sequence's memory is its fixed-size state, whatever its length.
/// </summary>
[Model("mamba")]
public partial class Mamba
{
    [Hyper("{arch}.embedding_length", Required = true)] public int Dim;
    [Hyper("{arch}.block_count", Required = true)] public int LayerCount;
    [Hyper("{arch}.ssm.conv_kernel", Required = true)] public int ConvKernel;
    [Hyper("{arch}.ssm.inner_size", Required = true)] public int InnerSize;
    [Hyper("{arch}.ssm.state_size", Required = true)] public int StateSize;
    [Hyper("{arch}.ssm.time_step_rank", Required = true)] public int DtRank;
    [Hyper("{arch}.attention.layer_norm_rms_epsilon")] public float Eps = 1e-5f;
    [Hyper("{arch}.context_length")] public int Context = 2048;

    // Derived widths of the two fused projections: x and z; the time step's rank, B and C.
    public int InProjection => 2 * InnerSize;
    public int XProjection => DtRank + 2 * StateSize;

    [Weight("token_embd.weight", "Vocab", "Dim")] public Tensor TokenEmbedding = null!;
    [Weight("output_norm.weight", "Dim")] public Tensor OutputNorm = null!;
    [Weight("output.weight", "Vocab", "Dim", TiedTo = "token_embd.weight")] public Tensor Output = null!;

    [Layers("blk.{0}.", nameof(LayerCount))] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_norm.weight", "Dim")] public Tensor Norm = null!;
        [Weight("ssm_in.weight", "InProjection", "Dim")] public Tensor InWeight = null!;
        // llama.cpp's shapes, ggml's ne reversed: the convolution [d_inner, d_conv], A [d_inner, d_state] (−exp(A_log)).
        [Weight("ssm_conv1d.weight", "InnerSize", "ConvKernel")] public Tensor ConvWeight = null!;
        [Weight("ssm_conv1d.bias", "InnerSize")] public Tensor ConvBias = null!;
        [Weight("ssm_x.weight", "XProjection", "InnerSize")] public Tensor XWeight = null!;
        [Weight("ssm_dt.weight", "InnerSize", "DtRank")] public Tensor DtWeight = null!;
        [Weight("ssm_dt.bias", "InnerSize")] public Tensor DtBias = null!;
        [Weight("ssm_a", "InnerSize", "StateSize")] public Tensor A = null!;
        [Weight("ssm_d", "InnerSize")] public Tensor D = null!;
        [Weight("ssm_out.weight", "Dim", "InnerSize")] public Tensor OutWeight = null!;
    }

    [Forward]
    public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        var x = Ops.Embedding(TokenEmbedding, tokens);
        for (int layer = 0; layer < LayerCount; layer++)
        {
            var block = Layers[layer];
            var h = Ops.RmsNorm(x, block.Norm, Eps);
            var xz = Ops.Linear(h, block.InWeight);
            var inner = Ops.Slice(xz, 0, InnerSize);
            var gate = Ops.Slice(xz, InnerSize, InnerSize);

            var u = Ops.Silu(Ops.CausalConv1d(inner, block.ConvWeight, context, layer) + block.ConvBias);
            var dbc = Ops.Linear(u, block.XWeight);
            var dt = Ops.Linear(Ops.Slice(dbc, 0, DtRank), block.DtWeight, block.DtBias);
            var b = Ops.Slice(dbc, DtRank, StateSize);
            var c = Ops.Slice(dbc, DtRank + StateSize, StateSize);
            var y = Ops.SelectiveScan(u, dt, block.A, b, c, block.D, gate, context, layer);
            x = x + Ops.Linear(y, block.OutWeight);
        }
        x = Ops.SelectRows(x, context);
        return Ops.Linear(Ops.RmsNorm(x, OutputNorm, Eps), Output);
    }
}
