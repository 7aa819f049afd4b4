namespace Kiln.Models;

/// <summary>
/// BERT as sentence-transformers uses it (all-MiniLM-L6-v2): word + position + token-type embeddings, LayerNorm, then
/// post-norm blocks (biased q/k/v, bidirectional attention within each sequence, a biased output projection added to
/// the block's input and LayerNorm-ed, an exact-GELU MLP the same way), then one row per sequence — the mean of its
/// tokens' rows (CLS or last token when a GGUF's pooling_type says so) — L2-normalized. An encoder: no KV cache, a step
/// holds whole sequences packed without padding. llama.cpp's "bert" names and keys, and the Hugging Face checkpoint's
/// (BertModel, as sentence-transformers saves it: no "bert." prefix).
/// </summary>
[Model("bert", Tokenizer = "bert", Kind = ModelKind.Encoder)]
public partial class Bert
{
    [Hyper("{arch}.embedding_length", Required = true, HuggingFace = "hidden_size")] public int Dim;
    [Hyper("{arch}.feed_forward_length", Required = true, HuggingFace = "intermediate_size")] public int Hidden;
    [Hyper("{arch}.block_count", Required = true, HuggingFace = "num_hidden_layers")] public int LayerCount;
    [Hyper("{arch}.attention.head_count", Required = true, HuggingFace = "num_attention_heads")] public int Heads;
    [Hyper("{arch}.attention.layer_norm_epsilon", HuggingFace = "layer_norm_eps")] public float Eps = 1e-12f;
    [Hyper("{arch}.context_length", Required = true, HuggingFace = "max_position_embeddings")] public int Context;
    // llama.cpp's pooling types: 1 mean (sentence-transformers' default), 2 CLS, 3 last token.
    [Hyper("{arch}.pooling_type")] public int PoolingType = 1;

    [Weight("token_embd.weight", "Vocab", "Dim", HuggingFace = "embeddings.word_embeddings.weight")] public Tensor TokenEmbedding = null!;
    [Weight("token_types.weight", "Types", "Dim", HuggingFace = "embeddings.token_type_embeddings.weight")] public Tensor TokenTypes = null!;
    [Weight("position_embd.weight", "Context", "Dim", HuggingFace = "embeddings.position_embeddings.weight")] public Tensor Positions = null!;
    [Weight("token_embd_norm.weight", "Dim", HuggingFace = "embeddings.LayerNorm.weight")] public Tensor EmbeddingNorm = null!;
    [Weight("token_embd_norm.bias", "Dim", HuggingFace = "embeddings.LayerNorm.bias")] public Tensor EmbeddingNormBias = null!;

    [Layers("blk.{0}.", nameof(LayerCount), HuggingFace = "encoder.layer.{0}.")] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("attn_q.weight", "Dim", "Dim", HuggingFace = "attention.self.query.weight")] public Tensor Wq = null!;
        [Weight("attn_q.bias", "Dim", HuggingFace = "attention.self.query.bias")] public Tensor Bq = null!;
        [Weight("attn_k.weight", "Dim", "Dim", HuggingFace = "attention.self.key.weight")] public Tensor Wk = null!;
        [Weight("attn_k.bias", "Dim", HuggingFace = "attention.self.key.bias")] public Tensor Bk = null!;
        [Weight("attn_v.weight", "Dim", "Dim", HuggingFace = "attention.self.value.weight")] public Tensor Wv = null!;
        [Weight("attn_v.bias", "Dim", HuggingFace = "attention.self.value.bias")] public Tensor Bv = null!;
        [Weight("attn_output.weight", "Dim", "Dim", HuggingFace = "attention.output.dense.weight")] public Tensor Wo = null!;
        [Weight("attn_output.bias", "Dim", HuggingFace = "attention.output.dense.bias")] public Tensor Bo = null!;
        [Weight("attn_output_norm.weight", "Dim", HuggingFace = "attention.output.LayerNorm.weight")] public Tensor AttnNorm = null!;
        [Weight("attn_output_norm.bias", "Dim", HuggingFace = "attention.output.LayerNorm.bias")] public Tensor AttnNormBias = null!;
        [Weight("ffn_up.weight", "Hidden", "Dim", HuggingFace = "intermediate.dense.weight")] public Tensor Up = null!;
        [Weight("ffn_up.bias", "Hidden", HuggingFace = "intermediate.dense.bias")] public Tensor UpBias = null!;
        [Weight("ffn_down.weight", "Dim", "Hidden", HuggingFace = "output.dense.weight")] public Tensor Down = null!;
        [Weight("ffn_down.bias", "Dim", HuggingFace = "output.dense.bias")] public Tensor DownBias = null!;
        [Weight("layer_output_norm.weight", "Dim", HuggingFace = "output.LayerNorm.weight")] public Tensor OutputNorm = null!;
        [Weight("layer_output_norm.bias", "Dim", HuggingFace = "output.LayerNorm.bias")] public Tensor OutputNormBias = null!;
    }

    [Forward]
    public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        var x = Ops.Embedding(TokenEmbedding, tokens) + Ops.TokenTypeEmbedding(TokenTypes, context) + Ops.PositionEmbedding(Positions, context);
        x = Ops.LayerNorm(x, EmbeddingNorm, EmbeddingNormBias, Eps);
        for (int layer = 0; layer < LayerCount; layer++)
        {
            var block = Layers[layer];

            var q = Ops.Linear(x, block.Wq, block.Bq);
            var k = Ops.Linear(x, block.Wk, block.Bk);
            var v = Ops.Linear(x, block.Wv, block.Bv);
            var attention = Ops.Attention(q, k, v, context, layer, Heads, Heads, causal: false);
            var h = Ops.LayerNorm(x + Ops.Linear(attention, block.Wo, block.Bo), block.AttnNorm, block.AttnNormBias, Eps);

            var up = Ops.GeluErf(Ops.Linear(h, block.Up, block.UpBias));
            x = Ops.LayerNorm(h + Ops.Linear(up, block.Down, block.DownBias), block.OutputNorm, block.OutputNormBias, Eps);
        }
        var pooled = PoolingType == 2 ? Ops.Pool(x, context, Pooling.Cls)
            : PoolingType == 3 ? Ops.Pool(x, context, Pooling.LastToken)
            : Ops.Pool(x, context, Pooling.Mean);
        return Ops.L2Normalize(pooled, 1e-12f);
    }
}
