namespace Kiln;

/// <summary>
/// The ops a [Forward] method is written in. These are the REFERENCE semantics: simple, obviously correct loops
/// (double accumulators) that the generator's fused kernels are tested against. Every op allocates its result;
/// speed is the compiled plan's job.
/// </summary>
public static class Ops
{
    /// <summary>Gathers rows of <paramref name="table"/> [Vocab, Dim] for each token: [T, Dim].</summary>
    public static Tensor Embedding(Tensor table, ReadOnlySpan<int> tokens)
    {
        int dim = table.Cols;
        var result = Tensor.Zeros(tokens.Length, dim);
        for (int t = 0; t < tokens.Length; t++)
        {
            int token = tokens[t];
            if ((uint)token >= (uint)table.Rows)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"Token id {token} at position {t} is outside the vocabulary (0..{table.Rows - 1}).");
            table.Row(token).CopyTo(result.Row(t));
        }
        return result;
    }

    /// <summary>Per row: x / sqrt(mean(x²) + eps) * weight.</summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, float eps)
    {
        RequireCols(x, weight.Cols, nameof(RmsNorm));
        var result = Tensor.Zeros(x.Shape);
        for (int r = 0; r < x.Rows; r++)
        {
            var row = x.Row(r);
            double sumSquares = 0;
            foreach (float v in row) sumSquares += (double)v * v;
            double scale = 1.0 / Math.Sqrt(sumSquares / row.Length + eps);
            var output = result.Row(r);
            for (int i = 0; i < row.Length; i++) output[i] = (float)(row[i] * scale * weight.Data[i]);
        }
        return result;
    }

    /// <summary>x [T, In] times the transpose of weight [Out, In]: [T, Out] (a linear layer without bias).</summary>
    public static Tensor Linear(Tensor x, Tensor weight)
    {
        RequireCols(x, weight.Cols, nameof(Linear));
        int outputs = weight.Rows;
        var result = Tensor.Zeros(x.Rows, outputs);
        for (int r = 0; r < x.Rows; r++)
        {
            var input = x.Row(r);
            var output = result.Row(r);
            for (int o = 0; o < outputs; o++)
            {
                var w = weight.Row(o);
                double sum = 0;
                for (int i = 0; i < input.Length; i++) sum += (double)input[i] * w[i];
                output[o] = (float)sum;
            }
        }
        return result;
    }

    /// <summary>
    /// Rotary position embedding on adjacent pairs (x[2i], x[2i+1]) of each head, at each token's position:
    /// angle = position · freqBase^(-2i/headDim).
    /// </summary>
    public static Tensor Rope(Tensor x, AttentionContext context, int headDim, float freqBase)
    {
        if (headDim <= 0 || headDim % 2 != 0 || x.Cols % headDim != 0)
            throw new ArgumentException($"Rope: head dimension {headDim} must be even and divide the row length {x.Cols}.");
        RequireRows(x, context.TokenCount, nameof(Rope));
        var result = Tensor.Zeros(x.Shape);
        for (int t = 0; t < x.Rows; t++)
        {
            int position = context.Positions[t];
            var input = x.Row(t);
            var output = result.Row(t);
            for (int c = 0; c < input.Length; c += 2)
            {
                int pair = (c % headDim) / 2;
                double angle = position * Math.Pow(freqBase, -2.0 * pair / headDim);
                double cos = Math.Cos(angle), sin = Math.Sin(angle);
                output[c] = (float)(input[c] * cos - input[c + 1] * sin);
                output[c + 1] = (float)(input[c] * sin + input[c + 1] * cos);
            }
        }
        return result;
    }

    /// <summary>
    /// Causal grouped-query attention over the KV cache. First stores this step's k and v rows at each token's
    /// (slot, position) in layer <paramref name="layer"/> of the cache, then each query attends to positions
    /// 0..its own of its slot. q [T, Heads·HeadDim], k and v [T, KvHeads·HeadDim]; result [T, Heads·HeadDim].
    /// </summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, AttentionContext context, int layer, int heads, int kvHeads)
    {
        if (heads <= 0 || kvHeads <= 0 || heads % kvHeads != 0 || q.Cols % heads != 0)
            throw new ArgumentException($"Attention: {heads} heads over {kvHeads} KV heads do not fit a query row of {q.Cols}.");
        int headDim = q.Cols / heads;
        int kvDim = kvHeads * headDim;
        RequireCols(k, kvDim, nameof(Attention));
        RequireCols(v, kvDim, nameof(Attention));
        RequireRows(q, context.TokenCount, nameof(Attention));
        var cache = context.Cache;
        if (cache.KvDim != kvDim)
            throw new ArgumentException($"Attention: the KV cache holds rows of {cache.KvDim} but k has {kvDim}.");

        for (int t = 0; t < q.Rows; t++)
        {
            k.Row(t).CopyTo(cache.Key(layer, context.Slots[t], context.Positions[t]));
            v.Row(t).CopyTo(cache.Value(layer, context.Slots[t], context.Positions[t]));
        }

        var result = Tensor.Zeros(q.Rows, q.Cols);
        int group = heads / kvHeads;
        double scale = 1.0 / Math.Sqrt(headDim);
        var scores = new double[cache.MaxContext];
        for (int t = 0; t < q.Rows; t++)
        {
            int slot = context.Slots[t], position = context.Positions[t];
            for (int h = 0; h < heads; h++)
            {
                var query = q.Row(t).Slice(h * headDim, headDim);
                int kvOffset = (h / group) * headDim;
                double max = double.NegativeInfinity;
                for (int p = 0; p <= position; p++)
                {
                    var key = cache.Key(layer, slot, p).Slice(kvOffset, headDim);
                    double dot = 0;
                    for (int i = 0; i < headDim; i++) dot += (double)query[i] * key[i];
                    scores[p] = dot * scale;
                    max = Math.Max(max, scores[p]);
                }
                double sum = 0;
                for (int p = 0; p <= position; p++)
                {
                    scores[p] = Math.Exp(scores[p] - max);
                    sum += scores[p];
                }
                var output = result.Row(t).Slice(h * headDim, headDim);
                for (int i = 0; i < headDim; i++)
                {
                    double acc = 0;
                    for (int p = 0; p <= position; p++) acc += scores[p] * cache.Value(layer, slot, p)[kvOffset + i];
                    output[i] = (float)(acc / sum);
                }
            }
        }
        return result;
    }

    /// <summary>x · sigmoid(x), elementwise.</summary>
    public static Tensor Silu(Tensor x)
    {
        var result = Tensor.Zeros(x.Shape);
        for (int i = 0; i < x.Data.Length; i++) result.Data[i] = (float)(x.Data[i] / (1.0 + Math.Exp(-x.Data[i])));
        return result;
    }

    public static Tensor Mul(Tensor a, Tensor b)
    {
        RequireSameShape(a, b, nameof(Mul));
        var result = Tensor.Zeros(a.Shape);
        for (int i = 0; i < a.Data.Length; i++) result.Data[i] = a.Data[i] * b.Data[i];
        return result;
    }

    public static Tensor Add(Tensor a, Tensor b)
    {
        RequireSameShape(a, b, nameof(Add));
        var result = Tensor.Zeros(a.Shape);
        for (int i = 0; i < a.Data.Length; i++) result.Data[i] = a.Data[i] + b.Data[i];
        return result;
    }

    /// <summary>The rows of x whose logits the step wants (<see cref="AttentionContext.OutputRows"/>), in that order.</summary>
    public static Tensor SelectRows(Tensor x, AttentionContext context)
    {
        var rows = context.OutputRows;
        var result = Tensor.Zeros(rows.Length, x.Cols);
        for (int i = 0; i < rows.Length; i++) x.Row(rows[i]).CopyTo(result.Row(i));
        return result;
    }

    private static void RequireCols(Tensor x, int cols, string op)
    {
        if (x.Cols != cols) throw new ArgumentException($"{op}: expected rows of {cols} elements, got {x}.");
    }

    private static void RequireRows(Tensor x, int rows, string op)
    {
        if (x.Rows != rows) throw new ArgumentException($"{op}: expected {rows} rows (one per token in the step), got {x}.");
    }

    private static void RequireSameShape(Tensor a, Tensor b, string op)
    {
        if (!a.Shape.AsSpan().SequenceEqual(b.Shape)) throw new ArgumentException($"{op}: shapes differ, {a} and {b}.");
    }
}
