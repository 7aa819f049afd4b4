namespace Kiln.Models;

/// <summary>
/// A token-level LSTM language model: token embedding, a stack of LSTM layers of the embedding's width (each layer's
/// input projection one matmul over every token of the step, its recurrence Ops.Lstm over each sequence from its
/// state slot), and a linear output head with bias. Gates in PyTorch's order [i, f, g, o]; the file stores
/// b_ih + b_hh as one bias. No llama.cpp architecture runs it: the tensor names are Kiln's own, written by
/// <c>bench make-model --arch lstm</c>.
/// </summary>
[Model("lstm")]
public partial class Lstm
{
    [Hyper("{arch}.embedding_length", Required = true)] public int Dim;
    [Hyper("{arch}.block_count", Required = true)] public int LayerCount;
    [Hyper("{arch}.context_length")] public int Context = 2048;

    [Weight("token_embd.weight", "Vocab", "Dim")] public Tensor TokenEmbedding = null!;
    [Weight("output.weight", "Vocab", "Dim")] public Tensor Output = null!;
    [Weight("output.bias", "Vocab")] public Tensor OutputBias = null!;

    [Layers("blk.{0}.", nameof(LayerCount))] public Block[] Layers = null!;

    public partial class Block
    {
        [Weight("lstm_ih.weight", "4*Dim", "Dim")] public Tensor InputWeight = null!;
        [Weight("lstm.bias", "4*Dim")] public Tensor Bias = null!;
        [Weight("lstm_hh.weight", "4*Dim", "Dim")] public Tensor RecurrentWeight = null!;
    }

    [Forward]
    public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
    {
        var x = Ops.Embedding(TokenEmbedding, tokens);
        for (int layer = 0; layer < LayerCount; layer++)
        {
            var block = Layers[layer];
            var gates = Ops.Linear(x, block.InputWeight, block.Bias);
            x = Ops.Lstm(gates, block.RecurrentWeight, context, layer);
        }
        return Ops.Linear(Ops.SelectRows(x, context), Output, OutputBias);
    }
}
