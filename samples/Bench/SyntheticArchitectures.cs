namespace Kiln.Bench;

// One description per architecture: what llama.cpp's loader for it reads (see /work/notes/arch-facts.md and the
// bench README), sized like stories15M / stories110M, shaped like the family. Tiny shapes are the tests'.

/// <summary>Llama: RMSNorm, adjacent-pair rope, GQA, SwiGLU. Today's synthetic files, byte for byte (norms exactly 1).</summary>
public sealed class LlamaSynthetic : SyntheticArchitecture
{
    public override string Name => "llama";
    public override SyntheticVocabulary Vocabulary { get; } = SyntheticVocabulary.SentencePiece(addBos: true);
    public override float NormJitter => 0;
    public override SyntheticShape Tiny { get; } = new("tiny", Dim: 64, Hidden: 160, Layers: 2, Heads: 4, KvHeads: 2, Vocab: 320, TiedOutput: false, ContextLength: 256);
    public override SyntheticShape Small { get; } = new("15m", 288, 768, 6, 6, 6, 32000, TiedOutput: true);
    public override SyntheticShape Base { get; } = new("110m", 768, 2048, 12, 12, 12, 32000, TiedOutput: false);
    public override SyntheticShape OneB { get; } = new("1b", 2048, 5632, 22, 32, 4, 32000, TiedOutput: false); // TinyLlama-1.1B's shape

    protected internal override void AddHyperparameters(SyntheticModelBuilder model)
    {
        model.Hyper("rope.dimension_count", (uint)model.Shape.HeadDim);
        model.Hyper("rope.freq_base", 10000f);
        model.Hyper("attention.layer_norm_rms_epsilon", 1e-5f);
    }

    protected internal override void AddTensors(SyntheticModelBuilder model)
    {
        var s = model.Shape;
        model.TokenEmbedding(s.TiedOutput);
        for (int layer = 0; layer < s.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            model.Norm(p + "attn_norm.weight", s.Dim);
            model.Attention(p);
            model.Norm(p + "ffn_norm.weight", s.Dim);
            model.GatedFfn(p);
        }
        model.OutputHead();
    }
}

/// <summary>
/// GPT-2: LayerNorm with biases, learned position embeddings, fused QKV with bias, GELU MLP with biases, no rope.
/// Byte-level BPE with &lt;|endoftext|&gt; last, as GPT-2's vocabulary has it.
/// </summary>
public sealed class Gpt2Synthetic : SyntheticArchitecture
{
    private const float BiasStd = 0.1f;

    public override string Name => "gpt2";
    public override SyntheticVocabulary Vocabulary { get; } = SyntheticVocabulary.ByteLevelBpe("gpt-2", "<|endoftext|>");
    public override SyntheticShape Tiny { get; } = new("tiny", Dim: 64, Hidden: 256, Layers: 2, Heads: 4, KvHeads: 4, Vocab: 320, TiedOutput: false, ContextLength: 256);
    public override SyntheticShape Small { get; } = new("15m", 288, 1152, 6, 6, 6, 32000, TiedOutput: true, ContextLength: 1024);
    public override SyntheticShape Base { get; } = new("110m", 768, 3072, 12, 12, 12, 32000, TiedOutput: false, ContextLength: 1024);

    public override void Validate(SyntheticShape shape)
    {
        base.Validate(shape);
        if (shape.KvHeads != shape.Heads || shape.KeyLength != 0)
            throw new ArgumentException("gpt2: multi-head attention over dim / heads only (no GQA, no key_length)");
    }

    protected internal override void AddHyperparameters(SyntheticModelBuilder model) =>
        model.Hyper("attention.layer_norm_epsilon", 1e-5f);

    protected internal override void AddTensors(SyntheticModelBuilder model)
    {
        var s = model.Shape;
        model.TokenEmbedding(s.TiedOutput);
        model.Matrix("position_embd.weight", s.Dim, s.ContextLength, 0.1f);
        for (int layer = 0; layer < s.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            LayerNorm(model, p + "attn_norm");
            model.Linear(p + "attn_qkv.weight", s.Dim, 3 * s.Dim);
            model.Bias(p + "attn_qkv.bias", 3 * s.Dim, BiasStd);
            model.Linear(p + "attn_output.weight", s.Dim, s.Dim);
            model.Bias(p + "attn_output.bias", s.Dim, BiasStd);
            LayerNorm(model, p + "ffn_norm");
            model.Linear(p + "ffn_up.weight", s.Dim, s.Hidden);
            model.Bias(p + "ffn_up.bias", s.Hidden, BiasStd);
            model.Linear(p + "ffn_down.weight", s.Hidden, s.Dim);
            model.Bias(p + "ffn_down.bias", s.Dim, BiasStd);
        }
        LayerNorm(model, "output_norm");
        if (!s.TiedOutput) model.Matrix("output.weight", s.Dim, s.Vocab, model.LogitStd);
    }

    private static void LayerNorm(SyntheticModelBuilder model, string name)
    {
        model.Norm(name + ".weight", model.Shape.Dim);
        model.Bias(name + ".bias", model.Shape.Dim, BiasStd);
    }
}

/// <summary>Qwen2: Llama's block with Q/K/V biases (large, as trained Qwen2 has), half-split rope at base 1e6, GQA.</summary>
public sealed class Qwen2Synthetic : SyntheticArchitecture
{
    public override string Name => "qwen2";
    public override SyntheticVocabulary Vocabulary { get; } = SyntheticVocabulary.ByteLevelBpe("qwen2", "<|endoftext|>", "<|im_start|>", "<|im_end|>");
    public override SyntheticShape Tiny { get; } = new("tiny", Dim: 64, Hidden: 160, Layers: 2, Heads: 4, KvHeads: 2, Vocab: 320, TiedOutput: true, ContextLength: 256);
    public override SyntheticShape Small { get; } = new("15m", 288, 768, 6, 6, 2, 32000, TiedOutput: true);
    public override SyntheticShape Base { get; } = new("110m", 768, 2048, 12, 12, 2, 32000, TiedOutput: false);

    public override void Validate(SyntheticShape shape)
    {
        base.Validate(shape);
        if (shape.KeyLength != 0) throw new ArgumentException("qwen2: the head width is dim / heads (no key_length)");
    }

    protected internal override void AddHyperparameters(SyntheticModelBuilder model)
    {
        model.Hyper("rope.freq_base", 1000000f);
        model.Hyper("attention.layer_norm_rms_epsilon", 1e-6f);
    }

    protected internal override void AddTensors(SyntheticModelBuilder model)
    {
        var s = model.Shape;
        model.TokenEmbedding(s.TiedOutput);
        for (int layer = 0; layer < s.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            model.Norm(p + "attn_norm.weight", s.Dim);
            model.Attention(p, qkvBiasStd: 0.5f);
            model.Norm(p + "ffn_norm.weight", s.Dim);
            model.GatedFfn(p);
        }
        model.OutputHead();
    }
}

/// <summary>Qwen3: no biases, per-head RMSNorm of Q and K before rope, head width from key_length (Q wider than dim).</summary>
public sealed class Qwen3Synthetic : SyntheticArchitecture
{
    public override string Name => "qwen3";
    public override SyntheticVocabulary Vocabulary { get; } = SyntheticVocabulary.ByteLevelBpe("qwen2", "<|endoftext|>", "<|im_start|>", "<|im_end|>");
    public override SyntheticShape Tiny { get; } = new("tiny", Dim: 64, Hidden: 160, Layers: 2, Heads: 4, KvHeads: 2, Vocab: 320, TiedOutput: true, ContextLength: 256, KeyLength: 32);
    public override SyntheticShape Small { get; } = new("15m", 288, 768, 6, 6, 2, 32000, TiedOutput: true, KeyLength: 64);
    public override SyntheticShape Base { get; } = new("110m", 768, 2048, 12, 8, 4, 32000, TiedOutput: false, KeyLength: 128);

    protected internal override void AddHyperparameters(SyntheticModelBuilder model)
    {
        model.Hyper("attention.key_length", (uint)model.Shape.HeadDim);
        model.Hyper("attention.value_length", (uint)model.Shape.HeadDim);
        model.Hyper("rope.freq_base", 1000000f);
        model.Hyper("attention.layer_norm_rms_epsilon", 1e-6f);
    }

    protected internal override void AddTensors(SyntheticModelBuilder model)
    {
        var s = model.Shape;
        model.TokenEmbedding(s.TiedOutput);
        for (int layer = 0; layer < s.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            model.Norm(p + "attn_norm.weight", s.Dim);
            model.Attention(p);
            model.Norm(p + "attn_q_norm.weight", s.HeadDim);
            model.Norm(p + "attn_k_norm.weight", s.HeadDim);
            model.Norm(p + "ffn_norm.weight", s.Dim);
            model.GatedFfn(p);
        }
        model.OutputHead();
    }
}

/// <summary>
/// Gemma-2: embedding × √dim, pre- and post-norms around attention and FFN, GeGLU, alternating sliding-window
/// (even layers) and global layers, attention and final soft-caps at the family's 50 and 30, always-tied output.
/// The window (32, 8 in the tiny shape) is smaller than the positions tests use, so the mask is exercised; Q and K
/// are drawn at gain 2.5 so attention scores reach the range where the 50 cap bites (as trained Gemma's do).
/// </summary>
public sealed class Gemma2Synthetic : SyntheticArchitecture
{
    public override string Name => "gemma2";
    public override SyntheticVocabulary Vocabulary { get; } = SyntheticVocabulary.SentencePiece(addBos: true, addSpacePrefix: false);
    public override SyntheticShape Tiny { get; } = new("tiny", Dim: 64, Hidden: 160, Layers: 2, Heads: 4, KvHeads: 2, Vocab: 320, TiedOutput: true, ContextLength: 256, KeyLength: 32, SlidingWindow: 8);
    public override SyntheticShape Small { get; } = new("15m", 288, 768, 6, 4, 2, 32000, TiedOutput: true, ContextLength: 8192, KeyLength: 96, SlidingWindow: 32);
    public override SyntheticShape Base { get; } = new("110m", 768, 2048, 12, 8, 4, 32000, TiedOutput: true, ContextLength: 8192, KeyLength: 128, SlidingWindow: 32);

    public override void Validate(SyntheticShape shape)
    {
        base.Validate(shape);
        if (!shape.TiedOutput) throw new ArgumentException("gemma2: llama.cpp always ties the output to token_embd; an output.weight fails its load");
        if (shape.SlidingWindow <= 0) throw new ArgumentException("gemma2: a sliding window is required");
    }

    protected internal override void AddHyperparameters(SyntheticModelBuilder model)
    {
        model.Hyper("attention.key_length", (uint)model.Shape.HeadDim);
        model.Hyper("attention.value_length", (uint)model.Shape.HeadDim);
        model.Hyper("attention.layer_norm_rms_epsilon", 1e-6f);
        model.Hyper("attention.sliding_window", (uint)model.Shape.SlidingWindow);
        model.Hyper("attn_logit_softcapping", 50f);
        model.Hyper("final_logit_softcapping", 30f);
    }

    protected internal override void AddTensors(SyntheticModelBuilder model)
    {
        var s = model.Shape;
        model.TokenEmbedding(tied: true);
        for (int layer = 0; layer < s.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            model.Norm(p + "attn_norm.weight", s.Dim);
            model.Attention(p, qkGain: 2.5f);
            model.Norm(p + "post_attention_norm.weight", s.Dim);
            model.Norm(p + "ffn_norm.weight", s.Dim);
            model.GatedFfn(p);
            model.Norm(p + "post_ffw_norm.weight", s.Dim);
        }
        model.Norm("output_norm.weight", s.Dim);
    }
}

/// <summary>
/// Phi-3: fused QKV, fused gate|up ([2·ffn × dim], gate first), half-split rope over the whole head, untied output.
/// Writes Phi-3-mini's sliding_window of 2047, which llama.cpp reads and then switches off (full attention), and
/// Phi-3's added chat tokens: llama.cpp looks &lt;|endoftext|&gt; up by text in any file whose general.name contains
/// "phi3" and fails the load without it.
/// </summary>
public sealed class Phi3Synthetic : SyntheticArchitecture
{
    public override string Name => "phi3";
    public override SyntheticVocabulary Vocabulary { get; } = SyntheticVocabulary.SentencePiece(addBos: false, addSpacePrefix: true,
        "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>");
    public override SyntheticShape Tiny { get; } = new("tiny", Dim: 64, Hidden: 160, Layers: 2, Heads: 4, KvHeads: 4, Vocab: 320, TiedOutput: false, ContextLength: 256);
    public override SyntheticShape Small { get; } = new("15m", 288, 768, 6, 6, 6, 32000, TiedOutput: false, ContextLength: 4096);
    public override SyntheticShape Base { get; } = new("110m", 768, 2048, 12, 12, 12, 32000, TiedOutput: false, ContextLength: 4096);

    public override void Validate(SyntheticShape shape)
    {
        base.Validate(shape);
        if (shape.KeyLength != 0) throw new ArgumentException("phi3: the head width is dim / heads (no key_length)");
    }

    protected internal override void AddHyperparameters(SyntheticModelBuilder model)
    {
        model.Hyper("rope.dimension_count", (uint)model.Shape.HeadDim);
        model.Hyper("rope.freq_base", 10000f);
        model.Hyper("rope.scaling.original_context_length", (uint)model.Shape.ContextLength);
        model.Hyper("attention.layer_norm_rms_epsilon", 1e-5f);
        model.Hyper("attention.sliding_window", 2047u);
    }

    protected internal override void AddTensors(SyntheticModelBuilder model)
    {
        var s = model.Shape;
        model.TokenEmbedding(s.TiedOutput);
        for (int layer = 0; layer < s.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            model.Norm(p + "attn_norm.weight", s.Dim);
            model.Linear(p + "attn_qkv.weight", s.Dim, s.QDim + 2 * s.KvDim);
            model.Linear(p + "attn_output.weight", s.QDim, s.Dim);
            model.Norm(p + "ffn_norm.weight", s.Dim);
            model.Linear(p + "ffn_up.weight", s.Dim, 2 * s.Hidden);
            model.Linear(p + "ffn_down.weight", s.Hidden, s.Dim);
        }
        model.OutputHead();
    }
}

/// <summary>
/// BERT as llama.cpp's "bert" architecture reads it (an encoder: bidirectional attention, no KV cache): word, token-type
/// and learned position embeddings, LayerNorm; post-norm blocks of biased Q/K/V and output projections and a biased
/// GELU MLP, each added to its input and LayerNorm-ed; mean pooling. Shaped like all-MiniLM-L6-v2 (15m) and
/// bert-base (110m); a WordPiece vocabulary spelled as llama.cpp's converter spells it.
/// </summary>
public sealed class BertSynthetic : SyntheticArchitecture
{
    private const float BiasStd = 0.1f;

    public override string Name => "bert";
    public override bool IsEncoder => true;
    public override SyntheticVocabulary Vocabulary { get; } = SyntheticVocabulary.WordPiece();
    public override SyntheticShape Tiny { get; } = new("tiny", Dim: 64, Hidden: 256, Layers: 2, Heads: 4, KvHeads: 4, Vocab: 320, TiedOutput: false, ContextLength: 256);
    public override SyntheticShape Small { get; } = new("15m", 384, 1536, 6, 12, 12, 30522, TiedOutput: false, ContextLength: 512);
    public override SyntheticShape Base { get; } = new("110m", 768, 3072, 12, 12, 12, 30522, TiedOutput: false, ContextLength: 512);

    public override void Validate(SyntheticShape shape)
    {
        base.Validate(shape);
        if (shape.KvHeads != shape.Heads || shape.KeyLength != 0 || shape.SlidingWindow != 0)
            throw new ArgumentException("bert: multi-head attention over dim / heads only (no GQA, key_length or window)");
    }

    protected internal override void AddHyperparameters(SyntheticModelBuilder model)
    {
        model.Hyper("attention.layer_norm_epsilon", 1e-12f);
        model.Hyper("attention.causal", false);
        model.Hyper("pooling_type", 1u); // mean, as sentence-transformers pools
    }

    protected internal override void AddTensors(SyntheticModelBuilder model)
    {
        var s = model.Shape;
        model.TokenEmbedding(tied: false);
        // F32 as llama.cpp's converter keeps it: llama.cpp adds a row of it to every token with ggml_add, which takes no quantized operand.
        model.F32Matrix("token_types.weight", s.Dim, 2, 0.1f);
        model.Matrix("position_embd.weight", s.Dim, s.ContextLength, 0.1f);
        LayerNorm(model, "token_embd_norm");
        for (int layer = 0; layer < s.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            foreach (string projection in (ReadOnlySpan<string>)["attn_q", "attn_k", "attn_v", "attn_output"])
            {
                model.Linear(p + projection + ".weight", s.Dim, s.Dim);
                model.Bias(p + projection + ".bias", s.Dim, BiasStd);
            }
            LayerNorm(model, p + "attn_output_norm");
            model.Linear(p + "ffn_up.weight", s.Dim, s.Hidden);
            model.Bias(p + "ffn_up.bias", s.Hidden, BiasStd);
            model.Linear(p + "ffn_down.weight", s.Hidden, s.Dim);
            model.Bias(p + "ffn_down.bias", s.Dim, BiasStd);
            LayerNorm(model, p + "layer_output_norm");
        }
    }

    private static void LayerNorm(SyntheticModelBuilder model, string name)
    {
        model.Norm(name + ".weight", model.Shape.Dim);
        model.Bias(name + ".bias", model.Shape.Dim, BiasStd);
    }
}

/// <summary>
/// A token-level LSTM language model (samples/Models/Lstm.cs): embedding, LSTM layers of the embedding's width
/// (input and recurrent matrices [4·dim, dim], one bias b_ih + b_hh, gates [i, f, g, o]), a linear head with bias.
/// Kiln's own tensor names (llama.cpp has no LSTM); the attention head counts the common keys write are unused.
/// </summary>
public sealed class LstmSynthetic : SyntheticArchitecture
{
    public override string Name => "lstm";
    public override SyntheticVocabulary Vocabulary { get; } = SyntheticVocabulary.SentencePiece(addBos: true);
    public override SyntheticShape Tiny { get; } = new("tiny", Dim: 64, Hidden: 64, Layers: 2, Heads: 1, KvHeads: 1, Vocab: 320, TiedOutput: false, ContextLength: 256);
    public override SyntheticShape Small { get; } = new("15m", 512, 512, 2, 1, 1, 8192, TiedOutput: false, ContextLength: 1024);
    public override SyntheticShape Base { get; } = new("110m", 1024, 1024, 4, 1, 1, 32000, TiedOutput: false, ContextLength: 1024);

    public override IEnumerable<int> MatrixRowLengths(SyntheticShape shape) => [shape.Dim];

    protected internal override void AddHyperparameters(SyntheticModelBuilder model)
    {
    }

    protected internal override void AddTensors(SyntheticModelBuilder model)
    {
        var s = model.Shape;
        model.TokenEmbedding(tied: false);
        for (int layer = 0; layer < s.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            model.Linear(p + "lstm_ih.weight", s.Dim, 4 * s.Dim);
            model.Bias(p + "lstm.bias", 4 * s.Dim, 0.1f);
            model.Linear(p + "lstm_hh.weight", s.Dim, 4 * s.Dim);
        }
        model.Matrix("output.weight", s.Dim, s.Vocab, model.LogitStd);
        model.Bias("output.bias", s.Vocab, 0.1f);
    }
}

/// <summary>
/// Mamba-1 (llama.cpp's <c>mamba</c>; samples/Models/Mamba.cs): RMSNorm, in-projection to x and z (the shape's
/// Hidden is d_inner), a causal conv of width 4, x-projection to the time-step rank and B, C (d_state 16), the
/// time step's projection with bias, the selective scan, the out-projection. As Mamba initializes them: A = −(1…16)
/// per channel (ssm_a stores −exp(A_log)), softplus(dt bias) near 0.02–0.1, D near 1. The convolution and A are F32
/// in every format (ggml_ssm_conv and ggml_ssm_scan read F32). The time-step rank is d_model/16 rounded up, as
/// Mamba's default, except the tiny shape's 32; a rank that is not whole blocks of the format keeps ssm_dt.weight F32.
/// </summary>
public sealed class MambaSynthetic : SyntheticArchitecture
{
    public const int StateSize = 16, ConvKernel = 4;

    public override string Name => "mamba";
    public override SyntheticVocabulary Vocabulary { get; } = SyntheticVocabulary.SentencePiece(addBos: true);
    public override SyntheticShape Tiny { get; } = new("tiny", Dim: 64, Hidden: 128, Layers: 2, Heads: 1, KvHeads: 1, Vocab: 320, TiedOutput: false, ContextLength: 256);
    public override SyntheticShape Small { get; } = new("15m", 288, 576, 6, 1, 1, 32000, TiedOutput: true);
    public override SyntheticShape Base { get; } = new("110m", 768, 1536, 24, 1, 1, 32000, TiedOutput: true); // mamba-130m's shape

    /// <summary>The time-step rank of <paramref name="shape"/>.</summary>
    public static int DtRank(SyntheticShape shape) => shape.Name == "tiny" ? 32 : (shape.Dim + 15) / 16;

    // The time-step projection's rows (DtRank) need not be whole blocks: such a matrix stays F32.
    public override IEnumerable<int> MatrixRowLengths(SyntheticShape shape) => [shape.Dim, shape.Hidden];

    protected internal override void AddHyperparameters(SyntheticModelBuilder model)
    {
        model.Hyper("ssm.conv_kernel", (uint)ConvKernel);
        model.Hyper("ssm.inner_size", (uint)model.Shape.Hidden);
        model.Hyper("ssm.state_size", (uint)StateSize);
        model.Hyper("ssm.time_step_rank", (uint)DtRank(model.Shape));
        model.Hyper("attention.layer_norm_rms_epsilon", 1e-5f);
    }

    protected internal override void AddTensors(SyntheticModelBuilder model)
    {
        var s = model.Shape;
        model.TokenEmbedding(s.TiedOutput);
        for (int layer = 0; layer < s.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            model.Norm(p + "attn_norm.weight", s.Dim);
            AddMixer(model, p, inner: s.Hidden, DtRank(s), normedDtBc: false);
        }
        model.OutputHead();
    }

    /// <summary>
    /// One layer's Mamba mixer (after its input norm): in-projection, convolution, x- and time-step projections, A, D,
    /// out-projection; with <paramref name="normedDtBc"/> also the RMS norms of the time step, B and C (Jamba's).
    /// </summary>
    internal static void AddMixer(SyntheticModelBuilder model, string p, int inner, int rank, bool normedDtBc)
    {
        var a = new float[inner * StateSize];
        for (int i = 0; i < a.Length; i++) a[i] = -(i % StateSize + 1);
        model.Linear(p + "ssm_in.weight", model.Shape.Dim, 2 * inner);
        model.F32Tensor(p + "ssm_conv1d.weight", 1f / MathF.Sqrt(ConvKernel), 0, ConvKernel, inner);
        model.Bias(p + "ssm_conv1d.bias", inner, 0.1f);
        model.Linear(p + "ssm_x.weight", inner, rank + 2 * StateSize);
        if (normedDtBc)
        {
            model.Norm(p + "ssm_dt_norm.weight", rank);
            model.Norm(p + "ssm_b_norm.weight", StateSize);
            model.Norm(p + "ssm_c_norm.weight", StateSize);
        }
        model.Linear(p + "ssm_dt.weight", rank, inner, 0.1f);
        model.F32Tensor(p + "ssm_dt.bias", 0.5f, -3.5f, inner);
        model.F32Values(p + "ssm_a", a, StateSize, inner);
        model.F32Tensor(p + "ssm_d", 0.1f, 1f, inner);
        model.Linear(p + "ssm_out.weight", inner, model.Shape.Dim);
    }
}

/// <summary>
/// Jamba (llama.cpp's <c>jamba</c>): every layer an RMSNorm, then either a Mamba mixer (d_inner = 2 × dim, as llama.cpp
/// requires, with RMS norms on the time step, B and C) or attention without rope; then a residual, an RMSNorm and a
/// dense SwiGLU FFN (no experts: llama.cpp's jamba takes a dense FFN when ffn_gate_inp is absent). Which layers attend
/// is the file's per-layer attention.head_count_kv array (0: a Mamba layer), here every second layer from layer 1
/// (Jamba's own rule, attn_layer_period 8 and offset 4, at a scale tiny files have).
/// </summary>
public sealed class JambaSynthetic : SyntheticArchitecture
{
    public const int AttentionPeriod = 2, AttentionOffset = 1;

    public override string Name => "jamba";
    public override SyntheticVocabulary Vocabulary { get; } = SyntheticVocabulary.SentencePiece(addBos: true);
    public override SyntheticShape Tiny { get; } = new("tiny", Dim: 64, Hidden: 160, Layers: 2, Heads: 4, KvHeads: 2, Vocab: 320, TiedOutput: false, ContextLength: 256);
    public override SyntheticShape Small { get; } = new("15m", 288, 768, 6, 6, 6, 32000, TiedOutput: true);
    public override SyntheticShape Base { get; } = new("110m", 768, 2048, 12, 12, 12, 32000, TiedOutput: false);

    /// <summary>Whether layer <paramref name="layer"/> attends (else it is a Mamba layer).</summary>
    public static bool IsAttentionLayer(int layer) => layer % AttentionPeriod == AttentionOffset;

    public override object HeadCountKv(SyntheticShape shape)
    {
        var counts = new uint[shape.Layers];
        for (int layer = 0; layer < counts.Length; layer++) counts[layer] = IsAttentionLayer(layer) ? (uint)shape.KvHeads : 0;
        return counts;
    }

    public override IEnumerable<int> MatrixRowLengths(SyntheticShape shape) =>
        [.. base.MatrixRowLengths(shape), 2 * shape.Dim];

    protected internal override void AddHyperparameters(SyntheticModelBuilder model)
    {
        model.Hyper("ssm.conv_kernel", (uint)MambaSynthetic.ConvKernel);
        model.Hyper("ssm.inner_size", (uint)(2 * model.Shape.Dim));
        model.Hyper("ssm.state_size", (uint)MambaSynthetic.StateSize);
        model.Hyper("ssm.time_step_rank", (uint)MambaSynthetic.DtRank(model.Shape));
        model.Hyper("attention.layer_norm_rms_epsilon", 1e-5f);
    }

    protected internal override void AddTensors(SyntheticModelBuilder model)
    {
        var s = model.Shape;
        model.TokenEmbedding(s.TiedOutput);
        for (int layer = 0; layer < s.Layers; layer++)
        {
            string p = $"blk.{layer}.";
            model.Norm(p + "attn_norm.weight", s.Dim);
            if (IsAttentionLayer(layer)) model.Attention(p);
            else MambaSynthetic.AddMixer(model, p, inner: 2 * s.Dim, MambaSynthetic.DtRank(s), normedDtBc: true);
            model.Norm(p + "ffn_norm.weight", s.Dim);
            model.GatedFfn(p);
        }
        model.OutputHead();
    }
}
