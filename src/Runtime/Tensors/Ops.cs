namespace Kiln;

/// <summary>
/// The ops a [Forward] method is written in. These are the REFERENCE semantics: simple, obviously correct loops
/// (double accumulators) that the generator's fused kernels are tested against. Every op allocates its result;
/// speed is the compiled plan's job. Activations are [rows, features] tensors; "a row vector" is a rank-1 tensor of
/// one row's length (a bias or a norm weight), broadcast over the rows.
/// </summary>
public static class Ops
{
    // ---- Gathers -------------------------------------------------------------------------------------------------

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
            table.ReadRow(token, result.Row(t)); // a weight bound from a file is decoded a row at a time
        }
        return result;
    }

    /// <summary>
    /// Learned absolute position embeddings (GPT-2): for each token of the step, the row of <paramref name="table"/>
    /// [Positions, Dim] at the token's position in its sequence: [T, Dim].
    /// </summary>
    public static Tensor PositionEmbedding(Tensor table, AttentionContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var positions = context.Positions;
        var result = Tensor.Zeros(positions.Length, table.Cols);
        for (int t = 0; t < positions.Length; t++)
        {
            int position = positions[t];
            if ((uint)position >= (uint)table.Rows)
                throw new ArgumentOutOfRangeException(nameof(context), $"Position {position} of token {t} is beyond the {table.Rows} positions the embedding table holds.");
            table.ReadRow(position, result.Row(t));
        }
        return result;
    }

    /// <summary>
    /// Token-type (segment) embeddings (BERT): for each token of the step, the row of <paramref name="table"/>
    /// [Types, Dim] at its <see cref="AttentionContext.TokenTypes"/>: [T, Dim].
    /// </summary>
    public static Tensor TokenTypeEmbedding(Tensor table, AttentionContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var types = context.TokenTypes;
        var result = Tensor.Zeros(types.Length, table.Cols);
        for (int t = 0; t < types.Length; t++)
        {
            int type = types[t];
            if ((uint)type >= (uint)table.Rows)
                throw new ArgumentOutOfRangeException(nameof(context), $"Token type {type} of token {t} is beyond the {table.Rows} types the embedding table holds.");
            table.ReadRow(type, result.Row(t));
        }
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

    /// <summary>
    /// One row per sequence of the step from its tokens' rows of x [T, D]: their mean, the first (BERT's [CLS]) or the
    /// last (a decoder's summary token): [S, D], in sequence order.
    /// </summary>
    public static Tensor Pool(Tensor x, AttentionContext context, Pooling pooling)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (pooling is not (Pooling.Mean or Pooling.Cls or Pooling.LastToken))
            throw new ArgumentOutOfRangeException(nameof(pooling), $"Pool: unknown pooling {pooling}.");
        RequireRows(x, context.TokenCount, nameof(Pool));
        var starts = context.QueryIndptr;
        var result = Tensor.Zeros(context.SequenceCount, x.Cols);
        for (int s = 0; s < context.SequenceCount; s++)
        {
            int first = starts[s], end = starts[s + 1];
            var output = result.Row(s);
            if (pooling == Pooling.Cls) x.Row(first).CopyTo(output);
            else if (pooling == Pooling.LastToken) x.Row(end - 1).CopyTo(output);
            else
            {
                for (int c = 0; c < x.Cols; c++)
                {
                    double sum = 0;
                    for (int t = first; t < end; t++) sum += x[t, c];
                    output[c] = (float)(sum / (end - first));
                }
            }
        }
        return result;
    }

    // ---- Norms ---------------------------------------------------------------------------------------------------

    /// <summary>Per row: x / max(‖x‖₂, eps) (sentence-transformers' Normalize; eps keeps a zero row zero).</summary>
    public static Tensor L2Normalize(Tensor x, float eps = 1e-12f)
    {
        var result = Tensor.Zeros(x.Shape);
        for (int r = 0; r < x.Rows; r++)
        {
            var row = x.Row(r);
            double sumSquares = 0;
            foreach (float v in row) sumSquares += (double)v * v;
            double scale = 1.0 / Math.Max(Math.Sqrt(sumSquares), eps);
            var output = result.Row(r);
            for (int i = 0; i < row.Length; i++) output[i] = (float)(row[i] * scale);
        }
        return result;
    }

    /// <summary>Per row: x / sqrt(mean(x²) + eps) * weight.</summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, float eps)
    {
        RequireVector(weight, x.Cols, nameof(RmsNorm));
        return GroupRmsNorm(x, weight, eps);
    }

    /// <summary>
    /// RMSNorm of each head on its own (Qwen3's q/k norm): the row is cut into groups of weight.Length (the head
    /// dimension), each normalized by its own RMS and multiplied by the same weight.
    /// </summary>
    public static Tensor HeadRmsNorm(Tensor x, Tensor weight, float eps)
    {
        if (weight.Rank != 1 || weight.Cols == 0 || x.Cols % weight.Cols != 0)
            throw new ArgumentException($"{nameof(HeadRmsNorm)}: the weight {weight} must be a vector whose length (the head dimension) divides the row length of {x}.");
        return GroupRmsNorm(x, weight, eps);
    }

    /// <summary>Per row: (x − mean) / sqrt(variance + eps) * weight, variance over the row (biased, as in LayerNorm).</summary>
    public static Tensor LayerNorm(Tensor x, Tensor weight, float eps) => LayerNormCore(x, weight, null, eps);

    /// <summary>Per row: (x − mean) / sqrt(variance + eps) * weight + bias.</summary>
    public static Tensor LayerNorm(Tensor x, Tensor weight, Tensor bias, float eps) => LayerNormCore(x, weight, bias, eps);

    private static Tensor GroupRmsNorm(Tensor x, Tensor weight, float eps)
    {
        int group = weight.Cols;
        var result = Tensor.Zeros(x.Shape);
        for (int r = 0; r < x.Rows; r++)
        {
            var row = x.Row(r);
            var output = result.Row(r);
            for (int start = 0; start < row.Length; start += group)
            {
                double sumSquares = 0;
                for (int i = 0; i < group; i++) sumSquares += (double)row[start + i] * row[start + i];
                double scale = 1.0 / Math.Sqrt(sumSquares / group + eps);
                for (int i = 0; i < group; i++) output[start + i] = (float)(row[start + i] * scale * weight.Data[i]);
            }
        }
        return result;
    }

    private static Tensor LayerNormCore(Tensor x, Tensor weight, Tensor? bias, float eps)
    {
        RequireVector(weight, x.Cols, nameof(LayerNorm));
        if (bias is not null) RequireVector(bias, x.Cols, nameof(LayerNorm));
        var result = Tensor.Zeros(x.Shape);
        for (int r = 0; r < x.Rows; r++)
        {
            var row = x.Row(r);
            double mean = 0;
            foreach (float v in row) mean += v;
            mean /= row.Length;
            double variance = 0;
            foreach (float v in row) variance += (v - mean) * (v - mean);
            variance /= row.Length;
            double scale = 1.0 / Math.Sqrt(variance + eps);
            var output = result.Row(r);
            for (int i = 0; i < row.Length; i++)
                output[i] = (float)((row[i] - mean) * scale * weight.Data[i] + (bias is null ? 0.0 : bias.Data[i]));
        }
        return result;
    }

    // ---- Matmul --------------------------------------------------------------------------------------------------

    /// <summary>x [T, In] times the transpose of weight [Out, In]: [T, Out] (a linear layer without bias).</summary>
    public static Tensor Linear(Tensor x, Tensor weight) => LinearCore(x, weight, null);

    /// <summary>x [T, In] times the transpose of weight [Out, In], plus bias [Out] on every row: [T, Out].</summary>
    public static Tensor Linear(Tensor x, Tensor weight, Tensor bias)
    {
        RequireVector(bias, weight.Rows, nameof(Linear));
        return LinearCore(x, weight, bias);
    }

    private static Tensor LinearCore(Tensor x, Tensor weight, Tensor? bias)
    {
        RequireCols(x, weight.Cols, nameof(Linear));
        int outputs = weight.Rows;
        var result = Tensor.Zeros(x.Rows, outputs);
        var w = new float[weight.Cols]; // one weight row at a time: a weight bound from a file is never decoded whole
        for (int o = 0; o < outputs; o++)
        {
            weight.ReadRow(o, w);
            for (int r = 0; r < x.Rows; r++)
            {
                var input = x.Row(r);
                double sum = 0;
                for (int i = 0; i < input.Length; i++) sum += (double)input[i] * w[i];
                result.Data[r * outputs + o] = (float)(bias is null ? sum : (float)sum + bias.Data[o]);
            }
        }
        return result;
    }

    // ---- Position encoding and attention -------------------------------------------------------------------------

    /// <summary>
    /// Rotary position embedding on adjacent pairs (x[2i], x[2i+1]) of each head, at each token's position:
    /// angle = position · freqBase^(-2i/headDim).
    /// </summary>
    public static Tensor Rope(Tensor x, AttentionContext context, int headDim, float freqBase) =>
        Rope(x, context, headDim, freqBase, RopeStyle.Adjacent, 0);

    /// <summary>
    /// Rotary position embedding of each head of <paramref name="headDim"/> at each token's position. The first
    /// <paramref name="rotaryDims"/> elements of a head rotate (all of them when 0); the rest pass through. Pair i
    /// (i &lt; rotaryDims/2) turns by angle = position · freqBase^(-2i/rotaryDims); <paramref name="style"/> says which
    /// elements form it: <see cref="RopeStyle.Adjacent"/> (x[2i], x[2i+1]) or <see cref="RopeStyle.NeoX"/>
    /// (x[i], x[i + rotaryDims/2]).
    /// </summary>
    public static Tensor Rope(Tensor x, AttentionContext context, int headDim, float freqBase, RopeStyle style, int rotaryDims = 0)
    {
        ArgumentNullException.ThrowIfNull(context);
        int rotary = rotaryDims == 0 ? headDim : rotaryDims;
        if (headDim <= 0 || x.Cols % headDim != 0 || rotary <= 0 || rotary % 2 != 0 || rotary > headDim)
            throw new ArgumentException($"Rope: head dimension {headDim} must divide the row length {x.Cols}, and the rotary dimensions {rotary} must be even and at most the head dimension.");
        if (style is not (RopeStyle.Adjacent or RopeStyle.NeoX))
            throw new ArgumentOutOfRangeException(nameof(style), $"Rope: unknown style {style}.");
        RequireRows(x, context.TokenCount, nameof(Rope));
        int half = rotary / 2;
        var result = new Tensor((float[])x.Data.Clone(), (int[])x.Shape.Clone());
        for (int t = 0; t < x.Rows; t++)
        {
            int position = context.Positions[t];
            var input = x.Row(t);
            var output = result.Row(t);
            for (int head = 0; head < input.Length; head += headDim)
            {
                for (int pair = 0; pair < half; pair++)
                {
                    double angle = position * Math.Pow(freqBase, -2.0 * pair / rotary);
                    double cos = Math.Cos(angle), sin = Math.Sin(angle);
                    int first = head + (style == RopeStyle.Adjacent ? 2 * pair : pair);
                    int second = first + (style == RopeStyle.Adjacent ? 1 : half);
                    output[first] = (float)(input[first] * cos - input[second] * sin);
                    output[second] = (float)(input[first] * sin + input[second] * cos);
                }
            }
        }
        return result;
    }

    /// <summary>
    /// Grouped-query attention over the KV cache. First stores this step's k and v rows in layer
    /// <paramref name="layer"/> of the cache, each at its token's row (<see cref="AttentionContext.KvRow(int)"/>), then
    /// each query attends to the positions of its sequence it may see, found through the sequence's block table, so one
    /// definition serves the contiguous and the paged layout. q [T, Heads·HeadDim], k and v [T, KvHeads·HeadDim];
    /// result [T, Heads·HeadDim]. Keys and values are read back as the cache stores them (exact for F32).
    /// A context without a cache (an encoder's, whose steps hold whole sequences) writes nothing: a query attends to
    /// the k and v rows of its own sequence in this step, all of them or (causal) those up to its own position.
    /// </summary>
    /// <param name="q">Queries, [T, heads·HeadDim].</param>
    /// <param name="k">This step's keys, [T, kvHeads·HeadDim].</param>
    /// <param name="v">This step's values, [T, kvHeads·HeadDim].</param>
    /// <param name="context">The step's positions, sequences and KV cache.</param>
    /// <param name="layer">The cache layer k and v are written to and read from.</param>
    /// <param name="heads">Query heads.</param>
    /// <param name="kvHeads">Key/value heads; each serves heads / kvHeads query heads.</param>
    /// <param name="scale">Multiplies q·k before the softmax; 0 means 1/√HeadDim.</param>
    /// <param name="window">A sliding window: a query at position p sees positions p − window + 1 .. p; 0 means no window.</param>
    /// <param name="softCap">Soft-caps each scaled score s to softCap·tanh(s/softCap) (Gemma-2); 0 means none.</param>
    /// <param name="causal">
    /// True: a query sees positions up to its own. False: it sees every position its sequence has written so far,
    /// later tokens of this step included.
    /// </param>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, AttentionContext context, int layer, int heads, int kvHeads,
        float scale = 0f, int window = 0, float softCap = 0f, bool causal = true)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (heads <= 0 || kvHeads <= 0 || heads % kvHeads != 0 || q.Cols % heads != 0)
            throw new ArgumentException($"Attention: {heads} heads over {kvHeads} KV heads do not fit a query row of {q.Cols}.");
        if (window < 0) throw new ArgumentOutOfRangeException(nameof(window), $"Attention: a sliding window of {window} positions.");
        if (softCap < 0 || float.IsNaN(softCap)) throw new ArgumentOutOfRangeException(nameof(softCap), $"Attention: a soft cap of {softCap}.");
        int headDim = q.Cols / heads;
        int kvDim = kvHeads * headDim;
        RequireCols(k, kvDim, nameof(Attention));
        RequireCols(v, kvDim, nameof(Attention));
        RequireRows(q, context.TokenCount, nameof(Attention));
        if (!context.HasCache) return StepAttention(q, k, v, context, heads, kvHeads, scale, window, softCap, causal);
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
        double scoreScale = scale == 0f ? 1.0 / Math.Sqrt(headDim) : scale;
        int longest = 0;
        foreach (int position in context.Positions) longest = Math.Max(longest, position + 1);
        // The token's sequence gathered row by row, [positions, kvDim], as the cache holds it.
        var keys = new float[longest * kvDim];
        var values = new float[longest * kvDim];
        var scores = new double[longest];
        for (int t = 0; t < q.Rows; t++)
        {
            int last = causal ? context.Positions[t] : context.LastPosition(context.SequenceOf(t));
            int first = window > 0 ? Math.Max(0, context.Positions[t] - window + 1) : 0;
            for (int p = first; p <= last; p++)
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
                for (int p = first; p <= last; p++)
                {
                    var key = keys.AsSpan(p * kvDim + kvOffset, headDim);
                    double dot = 0;
                    for (int i = 0; i < headDim; i++) dot += (double)query[i] * key[i];
                    double score = dot * scoreScale;
                    if (softCap > 0) score = softCap * Math.Tanh(score / softCap);
                    scores[p] = score;
                    max = Math.Max(max, score);
                }
                double sum = 0;
                for (int p = first; p <= last; p++)
                {
                    scores[p] = Math.Exp(scores[p] - max);
                    sum += scores[p];
                }
                var output = result.Row(t).Slice(h * headDim, headDim);
                for (int i = 0; i < headDim; i++)
                {
                    double acc = 0;
                    for (int p = first; p <= last; p++) acc += scores[p] * values[p * kvDim + kvOffset + i];
                    output[i] = (float)(acc / sum);
                }
            }
        }
        return result;
    }

    /// <summary>Attention over the step's own rows (no cache): each query sees its sequence's tokens, as the cached form would.</summary>
    private static Tensor StepAttention(Tensor q, Tensor k, Tensor v, AttentionContext context, int heads, int kvHeads,
        float scale, int window, float softCap, bool causal)
    {
        int headDim = q.Cols / heads, group = heads / kvHeads;
        double scoreScale = scale == 0f ? 1.0 / Math.Sqrt(headDim) : scale;
        var result = Tensor.Zeros(q.Rows, q.Cols);
        var starts = context.QueryIndptr;
        for (int t = 0; t < q.Rows; t++)
        {
            int first = starts[context.SequenceOf(t)], position = context.Positions[t];
            int last = causal ? first + position : starts[context.SequenceOf(t) + 1] - 1;
            if (window > 0) first = Math.Max(first, first + position - window + 1);
            var scores = new double[last - first + 1];
            for (int h = 0; h < heads; h++)
            {
                var query = q.Row(t).Slice(h * headDim, headDim);
                int kvOffset = (h / group) * headDim;
                double max = double.NegativeInfinity;
                for (int u = first; u <= last; u++)
                {
                    var key = k.Row(u).Slice(kvOffset, headDim);
                    double dot = 0;
                    for (int i = 0; i < headDim; i++) dot += (double)query[i] * key[i];
                    double score = dot * scoreScale;
                    if (softCap > 0) score = softCap * Math.Tanh(score / softCap);
                    scores[u - first] = score;
                    max = Math.Max(max, score);
                }
                double sum = 0;
                for (int u = 0; u < scores.Length; u++)
                {
                    scores[u] = Math.Exp(scores[u] - max);
                    sum += scores[u];
                }
                var output = result.Row(t).Slice(h * headDim, headDim);
                for (int i = 0; i < headDim; i++)
                {
                    double acc = 0;
                    for (int u = first; u <= last; u++) acc += scores[u - first] * v[u, kvOffset + i];
                    output[i] = (float)(acc / sum);
                }
            }
        }
        return result;
    }

    // ---- Activations (elementwise; computed in double, rounded once) ----------------------------------------------

    /// <summary>x · sigmoid(x).</summary>
    public static Tensor Silu(Tensor x) => Map(x, v => v / (1.0 + Math.Exp(-v)));

    /// <summary>GELU, tanh approximation (GPT-2, Gemma): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).</summary>
    public static Tensor Gelu(Tensor x) => Map(x, v => 0.5 * v * (1.0 + Math.Tanh(Math.Sqrt(2.0 / Math.PI) * (v + 0.044715 * v * v * v))));

    /// <summary>GELU, exact: 0.5·x·(1 + erf(x/√2)).</summary>
    public static Tensor GeluErf(Tensor x) => Map(x, v => 0.5 * v * (1.0 + ErrorFunction.Erf(v / Math.Sqrt(2.0))));

    /// <summary>max(x, 0).</summary>
    public static Tensor Relu(Tensor x) => Map(x, v => Math.Max(v, 0.0));

    /// <summary>1 / (1 + e^−x).</summary>
    public static Tensor Sigmoid(Tensor x) => Map(x, v => 1.0 / (1.0 + Math.Exp(-v)));

    public static Tensor Tanh(Tensor x) => Map(x, Math.Tanh);

    public static Tensor Exp(Tensor x) => Map(x, Math.Exp);

    /// <summary>log(1 + e^x).</summary>
    public static Tensor Softplus(Tensor x) => Map(x, v => Math.Max(v, 0.0) + Math.Log(1.0 + Math.Exp(-Math.Abs(v))));

    /// <summary>cap · tanh(x / cap): squashes values smoothly into (−cap, cap) (Gemma-2's logit soft-capping).</summary>
    public static Tensor SoftCap(Tensor x, float cap)
    {
        if (!(cap > 0)) throw new ArgumentOutOfRangeException(nameof(cap), $"SoftCap: the cap must be positive, not {cap}.");
        return Map(x, v => cap * Math.Tanh(v / cap));
    }

    public static Tensor Neg(Tensor x) => Map(x, v => -v);

    // ---- Arithmetic (elementwise, float32 like the compiled kernels' epilogues) ----------------------------------
    // a and b have one shape, or one is a row vector of the other's row length (a bias), broadcast over its rows.

    public static Tensor Add(Tensor a, Tensor b) => Zip(a, b, static (x, y) => x + y, nameof(Add));

    public static Tensor Sub(Tensor a, Tensor b) => Zip(a, b, static (x, y) => x - y, nameof(Sub));

    public static Tensor Mul(Tensor a, Tensor b) => Zip(a, b, static (x, y) => x * y, nameof(Mul));

    public static Tensor Div(Tensor a, Tensor b) => Zip(a, b, static (x, y) => x / y, nameof(Div));

    public static Tensor Add(Tensor a, float b) => MapFloat(a, x => x + b);

    public static Tensor Sub(Tensor a, float b) => MapFloat(a, x => x - b);

    public static Tensor Sub(float a, Tensor b) => MapFloat(b, x => a - x);

    public static Tensor Mul(Tensor a, float b) => MapFloat(a, x => x * b);

    public static Tensor Div(Tensor a, float b) => MapFloat(a, x => x / b);

    public static Tensor Div(float a, Tensor b) => MapFloat(b, x => a / x);

    // ---- Slicing -------------------------------------------------------------------------------------------------

    /// <summary>Columns [start, start + length) of every row: a part of a fused QKV or gate/up projection.</summary>
    public static Tensor Slice(Tensor x, int start, int length)
    {
        if (start < 0 || length <= 0 || start + length > x.Cols)
            throw new ArgumentException($"Slice: columns [{start}, {start}+{length}) are not within rows of {x.Cols}.");
        var result = Tensor.Zeros(x.Rows, length);
        for (int r = 0; r < x.Rows; r++) x.Row(r).Slice(start, length).CopyTo(result.Row(r));
        return result;
    }

    /// <summary>The names of an LSTM layer's state tensors in <see cref="RecurrentStateShape"/>: its hidden and cell rows.</summary>
    public const string LstmHidden = "lstm.h", LstmCell = "lstm.c";

    /// <summary>
    /// An LSTM layer's recurrence over each sequence of the step, in order: for token t with input gates
    /// <paramref name="gates"/>[t] (x·W_ihᵀ + biases, computed for every token at once beforehand), the gate
    /// pre-activations are z = gates[t] + recurrent · h, split in four [i, f, g, o] (PyTorch's order); then
    /// c = σ(f)·c + σ(i)·tanh(g) and h = σ(o)·tanh(c), and row t of the result is h: [T, H].
    /// </summary>
    /// <param name="gates">[T, 4H]: each token's input contribution to the gates.</param>
    /// <param name="recurrent">The recurrent weight W_hh, [4H, H].</param>
    /// <param name="context">The step's sequences and their state slots: a sequence whose first token here is at position 0 starts from h = c = 0, any other from its slot, and its slot keeps h and c after its last token.</param>
    /// <param name="layer">Whose state tensors (<see cref="LstmHidden"/>, <see cref="LstmCell"/>) the layer reads and writes.</param>
    public static Tensor Lstm(Tensor gates, Tensor recurrent, AttentionContext context, int layer)
    {
        ArgumentNullException.ThrowIfNull(context);
        int hidden = recurrent.Cols;
        if (recurrent.Rank != 2 || recurrent.Rows != 4 * hidden)
            throw new ArgumentException($"Lstm: the recurrent weight must be [4H, H], got [{string.Join(", ", recurrent.Shape)}].");
        RequireCols(gates, 4 * hidden, nameof(Lstm));
        RequireRows(gates, context.TokenCount, nameof(Lstm));
        var state = context.State;
        int hTensor = state.Require(layer, LstmHidden), cTensor = state.Require(layer, LstmCell);

        var result = Tensor.Zeros(gates.Rows, hidden);
        var h = new float[hidden];
        var c = new float[hidden];
        var z = new double[4 * hidden];
        var starts = context.QueryIndptr;
        for (int s = 0; s < context.SequenceCount; s++)
        {
            int first = starts[s], end = starts[s + 1], slot = context.StateSlot(s);
            if (context.Positions[first] == 0)
            {
                Array.Clear(h);
                Array.Clear(c);
            }
            else
            {
                state.Read(hTensor, slot, h);
                state.Read(cTensor, slot, c);
            }
            for (int t = first; t < end; t++)
            {
                for (int r = 0; r < 4 * hidden; r++)
                {
                    double sum = gates[t, r];
                    for (int k = 0; k < hidden; k++) sum += (double)recurrent[r, k] * h[k];
                    z[r] = sum;
                }
                for (int j = 0; j < hidden; j++)
                {
                    double input = Logistic(z[j]), forget = Logistic(z[hidden + j]);
                    double candidate = Math.Tanh(z[2 * hidden + j]), output = Logistic(z[3 * hidden + j]);
                    c[j] = (float)(forget * c[j] + input * candidate);
                    h[j] = (float)(output * Math.Tanh(c[j]));
                }
                h.CopyTo(result.Row(t));
            }
            state.Write(hTensor, slot, h);
            state.Write(cTensor, slot, c);
        }
        return result;
    }

    private static double Logistic(double x) => 1.0 / (1.0 + Math.Exp(-x));

    /// <summary>The name of a GRU layer's state tensor in <see cref="RecurrentStateShape"/>: its hidden row.</summary>
    public const string GruHidden = "gru.h";

    /// <summary>
    /// A GRU layer's recurrence over each sequence of the step, in order (PyTorch's GRU): for token t with input
    /// gates <paramref name="gates"/>[t] (x·W_ihᵀ + b_ih, computed for every token at once beforehand) split
    /// [r, z, n], and u = recurrent · h + <paramref name="recurrentBias"/> split alike: r = σ(gates_r + u_r),
    /// z = σ(gates_z + u_z), n = tanh(gates_n + r·u_n), h = (1 − z)·n + z·h; row t of the result is h: [T, H].
    /// The recurrent bias stays apart because r scales its n part.
    /// </summary>
    /// <param name="gates">[T, 3H]: each token's input contribution to the gates.</param>
    /// <param name="recurrent">W_hh, [3H, H].</param>
    /// <param name="recurrentBias">b_hh, [3H].</param>
    /// <param name="context">The step's sequences and their state slots: a sequence whose first token here is at position 0 starts from h = 0, any other from its slot, and its slot keeps h after its last token.</param>
    /// <param name="layer">Whose <see cref="GruHidden"/> the layer reads and writes.</param>
    public static Tensor Gru(Tensor gates, Tensor recurrent, Tensor recurrentBias, AttentionContext context, int layer)
    {
        ArgumentNullException.ThrowIfNull(context);
        int hidden = recurrent.Cols;
        if (recurrent.Rank != 2 || recurrent.Rows != 3 * hidden)
            throw new ArgumentException($"Gru: the recurrent weight must be [3H, H], got [{string.Join(", ", recurrent.Shape)}].");
        if (recurrentBias.Data.Length != 3 * hidden)
            throw new ArgumentException($"Gru: the recurrent bias must be a vector of 3H = {3 * hidden}, got [{string.Join(", ", recurrentBias.Shape)}].");
        RequireCols(gates, 3 * hidden, nameof(Gru));
        RequireRows(gates, context.TokenCount, nameof(Gru));
        var state = context.State;
        int hTensor = state.Require(layer, GruHidden);

        var result = Tensor.Zeros(gates.Rows, hidden);
        var h = new float[hidden];
        var u = new double[3 * hidden];
        var starts = context.QueryIndptr;
        for (int s = 0; s < context.SequenceCount; s++)
        {
            int first = starts[s], end = starts[s + 1], slot = context.StateSlot(s);
            if (context.Positions[first] == 0) Array.Clear(h);
            else state.Read(hTensor, slot, h);
            for (int t = first; t < end; t++)
            {
                for (int r = 0; r < 3 * hidden; r++)
                {
                    double sum = recurrentBias.Data[r];
                    for (int k = 0; k < hidden; k++) sum += (double)recurrent[r, k] * h[k];
                    u[r] = sum;
                }
                for (int j = 0; j < hidden; j++)
                {
                    double reset = Logistic(gates[t, j] + u[j]), update = Logistic(gates[t, hidden + j] + u[hidden + j]);
                    double candidate = Math.Tanh(gates[t, 2 * hidden + j] + reset * u[2 * hidden + j]);
                    h[j] = (float)((1 - update) * candidate + update * h[j]);
                }
                h.CopyTo(result.Row(t));
            }
            state.Write(hTensor, slot, h);
        }
        return result;
    }

    /// <summary>
    /// The names of a Mamba layer's state tensors in <see cref="RecurrentStateShape"/>: its convolution's last
    /// d_conv − 1 inputs per channel ([channels, d_conv − 1]) and its scan's state ([channels, d_state]).
    /// </summary>
    public const string ConvState = "ssm.conv", ScanState = "ssm.scan";

    /// <summary>
    /// A causal depthwise convolution over each sequence of the step, in order: channel c of token t is
    /// Σₖ weight[c, k] · x[t − (K − 1) + k, c] for a kernel of width K, where inputs before the step's first token of
    /// the sequence come from its state slot (zeros at position 0), and the slot keeps the last K − 1 inputs. No bias
    /// (llama.cpp's ggml_ssm_conv; Mamba adds its bias after).
    /// </summary>
    /// <param name="x">[T, channels].</param>
    /// <param name="weight">[channels, K]: each channel's kernel, oldest input first (llama.cpp's ssm_conv1d).</param>
    /// <param name="context">The step's sequences and their state slots.</param>
    /// <param name="layer">Whose <see cref="ConvState"/> the op reads and writes.</param>
    public static Tensor CausalConv1d(Tensor x, Tensor weight, AttentionContext context, int layer)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (weight.Rank != 2 || weight.Cols < 2)
            throw new ArgumentException($"CausalConv1d: the weight must be [channels, K ≥ 2], got [{string.Join(", ", weight.Shape)}].");
        int channels = weight.Rows, width = weight.Cols, taps = width - 1;
        RequireCols(x, channels, nameof(CausalConv1d));
        RequireRows(x, context.TokenCount, nameof(CausalConv1d));
        var state = context.State;
        int tensor = state.Require(layer, ConvState);

        var result = Tensor.Zeros(x.Rows, channels);
        var carried = new float[channels * taps];
        var starts = context.QueryIndptr;
        for (int s = 0; s < context.SequenceCount; s++)
        {
            int first = starts[s], end = starts[s + 1], slot = context.StateSlot(s);
            if (context.Positions[first] == 0) Array.Clear(carried);
            else state.Read(tensor, slot, carried);
            // Input j of the sequence's window: carried taps for j < 0, the step's tokens after.
            double Input(int c, int j) => j < 0 ? carried[c * taps + taps + j] : x[first + j, c];
            for (int t = first; t < end; t++)
            {
                for (int c = 0; c < channels; c++)
                {
                    double sum = 0;
                    for (int k = 0; k < width; k++) sum += (double)weight[c, k] * Input(c, t - first - taps + k);
                    result.Data[t * channels + c] = (float)sum;
                }
            }
            var next = new float[channels * taps];
            for (int c = 0; c < channels; c++)
                for (int j = 0; j < taps; j++) next[c * taps + j] = (float)Input(c, end - first - taps + j);
            state.Write(tensor, slot, next);
        }
        return result;
    }

    /// <summary>
    /// Mamba-1's selective scan over each sequence of the step, in order, per channel c and state index n: with
    /// Δ = softplus(dt[t, c]) (dt as is above 20, as llama.cpp), h[c, n] = exp(Δ·a[c, n])·h[c, n] + Δ·b[t, n]·x[t, c];
    /// then y = Σₙ c[t, n]·h[c, n] + d[c]·x[t, c], gated: row t of the result is y · SiLU(z[t, c]). h starts from the
    /// sequence's state slot (zeros at position 0), and the slot keeps h after its last token.
    /// </summary>
    /// <param name="x">[T, channels]: the convolved, activated input.</param>
    /// <param name="dt">[T, channels]: the time step before softplus (its projection and bias applied).</param>
    /// <param name="a">[channels, N]: the state matrix, negative (llama.cpp's ssm_a = −exp(A_log)).</param>
    /// <param name="b">[T, N]: each token's input matrix.</param>
    /// <param name="c">[T, N]: each token's readout.</param>
    /// <param name="d">[channels]: the skip.</param>
    /// <param name="z">[T, channels]: the gate.</param>
    /// <param name="context">The step's sequences and their state slots.</param>
    /// <param name="layer">Whose <see cref="ScanState"/> the op reads and writes.</param>
    public static Tensor SelectiveScan(Tensor x, Tensor dt, Tensor a, Tensor b, Tensor c, Tensor d, Tensor z, AttentionContext context, int layer)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (a.Rank != 2) throw new ArgumentException($"SelectiveScan: a must be [channels, N], got [{string.Join(", ", a.Shape)}].");
        int channels = a.Rows, n = a.Cols;
        foreach (var (tensor, name) in (ReadOnlySpan<(Tensor, string)>)[(x, "x"), (dt, "dt"), (z, "z")])
        {
            RequireCols(tensor, channels, $"{nameof(SelectiveScan)} ({name})");
            RequireRows(tensor, context.TokenCount, $"{nameof(SelectiveScan)} ({name})");
        }
        RequireCols(b, n, $"{nameof(SelectiveScan)} (b)");
        RequireRows(b, context.TokenCount, $"{nameof(SelectiveScan)} (b)");
        RequireCols(c, n, $"{nameof(SelectiveScan)} (c)");
        RequireRows(c, context.TokenCount, $"{nameof(SelectiveScan)} (c)");
        if (d.Data.Length != channels) throw new ArgumentException($"SelectiveScan: d must be a vector of the {channels} channels, got [{string.Join(", ", d.Shape)}].");
        var state = context.State;
        int stateTensor = state.Require(layer, ScanState);

        var result = Tensor.Zeros(x.Rows, channels);
        var h = new float[channels * n];
        var starts = context.QueryIndptr;
        for (int s = 0; s < context.SequenceCount; s++)
        {
            int first = starts[s], end = starts[s + 1], slot = context.StateSlot(s);
            if (context.Positions[first] == 0) Array.Clear(h);
            else state.Read(stateTensor, slot, h);
            for (int t = first; t < end; t++)
            {
                for (int ch = 0; ch < channels; ch++)
                {
                    double raw = dt[t, ch], delta = raw > 20 ? raw : Math.Log(1 + Math.Exp(raw)), input = x[t, ch];
                    double y = 0;
                    for (int i = 0; i < n; i++)
                    {
                        double next = Math.Exp(delta * a[ch, i]) * h[ch * n + i] + delta * b[t, i] * input;
                        h[ch * n + i] = (float)next;
                        y += next * c[t, i];
                    }
                    double gate = z[t, ch];
                    result.Data[t * channels + ch] = (float)((y + (double)d.Data[ch] * input) * gate / (1 + Math.Exp(-gate)));
                }
            }
            state.Write(stateTensor, slot, h);
        }
        return result;
    }

    /// <summary>Rows of a followed by rows of b, side by side: [T, a.Cols + b.Cols].</summary>
    public static Tensor Concat(Tensor a, Tensor b)
    {
        RequireRows(b, a.Rows, nameof(Concat));
        var result = Tensor.Zeros(a.Rows, a.Cols + b.Cols);
        for (int r = 0; r < a.Rows; r++)
        {
            a.Row(r).CopyTo(result.Row(r));
            b.Row(r).CopyTo(result.Row(r).Slice(a.Cols));
        }
        return result;
    }

    // ---- Helpers -------------------------------------------------------------------------------------------------

    private static Tensor Map(Tensor x, Func<double, double> f)
    {
        var result = Tensor.Zeros(x.Shape);
        for (int i = 0; i < x.Data.Length; i++) result.Data[i] = (float)f(x.Data[i]);
        return result;
    }

    private static Tensor MapFloat(Tensor x, Func<float, float> f)
    {
        var result = Tensor.Zeros(x.Shape);
        for (int i = 0; i < x.Data.Length; i++) result.Data[i] = f(x.Data[i]);
        return result;
    }

    private static Tensor Zip(Tensor a, Tensor b, Func<float, float, float> f, string op)
    {
        if (a.Shape.AsSpan().SequenceEqual(b.Shape))
        {
            var result = Tensor.Zeros(a.Shape);
            for (int i = 0; i < a.Data.Length; i++) result.Data[i] = f(a.Data[i], b.Data[i]);
            return result;
        }
        if (b.Rank == 1 && b.Cols == a.Cols)
        {
            var result = Tensor.Zeros(a.Shape);
            for (int i = 0; i < a.Data.Length; i++) result.Data[i] = f(a.Data[i], b.Data[i % a.Cols]);
            return result;
        }
        if (a.Rank == 1 && a.Cols == b.Cols)
        {
            var result = Tensor.Zeros(b.Shape);
            for (int i = 0; i < b.Data.Length; i++) result.Data[i] = f(a.Data[i % b.Cols], b.Data[i]);
            return result;
        }
        throw new ArgumentException($"{op}: {a} and {b} neither have one shape nor is one a row vector of the other's {a.Cols} columns.");
    }

    private static void RequireVector(Tensor vector, int length, string op)
    {
        if (vector.Rank != 1 || vector.Cols != length) throw new ArgumentException($"{op}: expected a vector of {length} elements, got {vector}.");
    }

    private static void RequireCols(Tensor x, int cols, string op)
    {
        if (x.Cols != cols) throw new ArgumentException($"{op}: expected rows of {cols} elements, got {x}.");
    }

    private static void RequireRows(Tensor x, int rows, string op)
    {
        if (x.Rows != rows) throw new ArgumentException($"{op}: expected {rows} rows (one per token in the step), got {x}.");
    }
}

/// <summary>How <see cref="Ops.Pool"/> makes one row of a sequence's token rows.</summary>
public enum Pooling
{
    /// <summary>The mean of every token's row (sentence-transformers' mean pooling).</summary>
    Mean = 0,

    /// <summary>The first token's row (BERT's [CLS]).</summary>
    Cls = 1,

    /// <summary>The last token's row (decoder-based embedders).</summary>
    LastToken = 2,
}

/// <summary>Which elements of a head a rotary embedding turns together.</summary>
public enum RopeStyle
{
    /// <summary>Adjacent pairs (x[2i], x[2i+1]): GGML's "normal" rope (Llama files, whose q/k rows are permuted for it).</summary>
    Adjacent = 0,

    /// <summary>The two halves (x[i], x[i + d/2]): GPT-NeoX's rope, as Qwen, Gemma and Phi-3 files need it.</summary>
    NeoX = 2,
}
