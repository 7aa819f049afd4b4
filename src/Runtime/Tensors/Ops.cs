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
    /// Causal grouped-query attention over the KV cache. First stores this step's k and v rows in layer
    /// <paramref name="layer"/> of the cache, each at its token's row (<see cref="AttentionContext.KvRow(int)"/>), then
    /// each query attends to positions 0..its own of its sequence, found through the sequence's block table, so one
    /// definition serves the contiguous and the paged layout. q [T, Heads·HeadDim], k and v [T, KvHeads·HeadDim];
    /// result [T, Heads·HeadDim]. Keys and values are read back as the cache stores them (exact for F32).
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

        // Every write comes before any read: a token attends to itself and to earlier tokens of the same step.
        for (int t = 0; t < q.Rows; t++)
        {
            int row = context.KvRow(t);
            cache.WriteKey(layer, row, k.Row(t));
            cache.WriteValue(layer, row, v.Row(t));
        }

        var result = Tensor.Zeros(q.Rows, q.Cols);
        int group = heads / kvHeads;
        double scale = 1.0 / Math.Sqrt(headDim);
        int longest = 0;
        foreach (int position in context.Positions) longest = Math.Max(longest, position + 1);
        // The token's sequence gathered row by row, [positions, kvDim], as the cache holds it.
        var keys = new float[longest * kvDim];
        var values = new float[longest * kvDim];
        var scores = new double[longest];
        for (int t = 0; t < q.Rows; t++)
        {
            int position = context.Positions[t];
            for (int p = 0; p <= position; p++)
            {
                int row = context.KvRow(t, p);
                cache.ReadKey(layer, row, keys.AsSpan(p * kvDim, kvDim));
                cache.ReadValue(layer, row, values.AsSpan(p * kvDim, kvDim));
            }
            for (int h = 0; h < heads; h++)
            {
                var query = q.Row(t).Slice(h * headDim, headDim);
                int kvOffset = (h / group) * headDim;
                double max = double.NegativeInfinity;
                for (int p = 0; p <= position; p++)
                {
                    var key = keys.AsSpan(p * kvDim + kvOffset, headDim);
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
                    for (int p = 0; p <= position; p++) acc += scores[p] * values[p * kvDim + kvOffset + i];
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
