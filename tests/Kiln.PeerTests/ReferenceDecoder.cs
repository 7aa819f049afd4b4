using Kiln.Loading;

namespace Kiln.PeerTests;

/// <summary>
/// A float64 reference forward pass for the six decoder families, written from llama.cpp's per-architecture
/// graphs (src/models/*.cpp) as the project's architecture notes describe them: the executable form of those facts,
/// checked against llama.cpp itself by <see cref="ReferenceTests"/>. Slow and simple on purpose: one sequence,
/// every position's logits, weights dequantized to float and widened to double.
/// </summary>
public sealed class ReferenceDecoder
{
    private readonly ModelFile _file;
    private readonly string _arch;
    private readonly int _dim, _layers, _heads, _kvHeads, _headDim, _rotary, _vocab, _window, _swaPeriod;
    private readonly double _eps, _ropeBase, _attnSoftCap, _finalSoftCap;

    /// <param name="ggmlGelu">GELU as ggml-cpu computes it (input and output rounded to fp16, ±10 clamps) instead of the exact tanh form.</param>
    public ReferenceDecoder(ModelFile file, bool ggmlGelu = true)
    {
        _file = file;
        _arch = file.Architecture;
        GgmlGelu = ggmlGelu;
        _dim = Int("embedding_length");
        _layers = Int("block_count");
        _heads = Int("attention.head_count");
        _kvHeads = Int("attention.head_count_kv", _heads);
        _headDim = Int("attention.key_length", _dim / _heads);
        _rotary = Int("rope.dimension_count", _headDim);
        _ropeBase = Float("rope.freq_base", 10000);
        _eps = _arch == "gpt2" ? Float("attention.layer_norm_epsilon", double.NaN) : Float("attention.layer_norm_rms_epsilon", double.NaN);
        _attnSoftCap = _arch == "gemma2" ? Float("attn_logit_softcapping", 50) : 0;
        _finalSoftCap = _arch == "gemma2" ? Float("final_logit_softcapping", 30) : 0;
        // Gemma-2: sliding layers are those with il % period < period − 1 (period 2: the even ones); period 0: all.
        _window = _arch == "gemma2" ? Int("attention.sliding_window", 4096) : 0;
        _swaPeriod = _arch == "gemma2" ? Int("attention.sliding_window_pattern", 2) : 1;
        _vocab = file.LoadTensor("token_embd.weight").Rows;
    }

    public bool GgmlGelu { get; }

    public int VocabSize => _vocab;

    /// <summary>Logits at every position of <paramref name="tokens"/>, [positions × vocab].</summary>
    public double[] Forward(int[] tokens)
    {
        int n = tokens.Length;
        var embedding = W("token_embd.weight");
        var x = new double[n][];
        for (int p = 0; p < n; p++)
        {
            x[p] = Row(embedding, tokens[p]);
            if (_arch == "gemma2") Scale(x[p], MathF.Sqrt(_dim)); // ggml_scale by sqrtf(n_embd), a float
            if (_arch == "gpt2") Add(x[p], Row(W("position_embd.weight"), p));
        }

        for (int layer = 0; layer < _layers; layer++)
        {
            string b = $"blk.{layer}.";
            var attention = Attention(b, layer, x);
            for (int p = 0; p < n; p++)
            {
                if (_arch == "gemma2") attention[p] = RmsNorm(attention[p], V(b + "post_attention_norm.weight"));
                Add(x[p], attention[p]);
            }
            for (int p = 0; p < n; p++)
            {
                var ffn = Ffn(b, Norm(x[p], b + "ffn_norm"));
                if (_arch == "gemma2") ffn = RmsNorm(ffn, V(b + "post_ffw_norm.weight"));
                Add(x[p], ffn);
            }
        }

        var output = _file.Tensors.ContainsKey("output.weight") && _arch != "gemma2" ? W("output.weight") : embedding;
        var logits = new double[n * _vocab];
        for (int p = 0; p < n; p++)
        {
            var h = Norm(x[p], "output_norm");
            var row = MatVec(output, h);
            if (_finalSoftCap > 0) for (int i = 0; i < row.Length; i++) row[i] = _finalSoftCap * Math.Tanh(row[i] / _finalSoftCap);
            row.CopyTo(logits, p * _vocab);
        }
        return logits;
    }

    private double[][] Attention(string b, int layer, double[][] x)
    {
        int n = x.Length, qDim = _heads * _headDim, kvDim = _kvHeads * _headDim;
        var q = new double[n][];
        var k = new double[n][];
        var v = new double[n][];
        for (int p = 0; p < n; p++)
        {
            var a = Norm(x[p], b + "attn_norm");
            if (_file.Tensors.ContainsKey(b + "attn_qkv.weight"))
            {
                // Fused rows: Q, then K, then V (build_qkv's views at 0, n_embd_q, n_embd_q + n_embd_kv).
                var qkv = Linear(b + "attn_qkv", a);
                q[p] = qkv[..qDim];
                k[p] = qkv[qDim..(qDim + kvDim)];
                v[p] = qkv[(qDim + kvDim)..];
            }
            else
            {
                q[p] = Linear(b + "attn_q", a);
                k[p] = Linear(b + "attn_k", a);
                v[p] = Linear(b + "attn_v", a);
            }
            if (_arch == "qwen3")
            {
                // Per-head RMSNorm of Q and K before rope, same epsilon.
                var qn = V(b + "attn_q_norm.weight");
                var kn = V(b + "attn_k_norm.weight");
                for (int h = 0; h < _heads; h++) RmsNormInPlace(q[p].AsSpan(h * _headDim, _headDim), qn);
                for (int h = 0; h < _kvHeads; h++) RmsNormInPlace(k[p].AsSpan(h * _headDim, _headDim), kn);
            }
            if (_arch != "gpt2")
            {
                bool adjacent = _arch == "llama"; // NORM pairs (2i, 2i+1); the others NEOX (i, i + n_rot/2)
                for (int h = 0; h < _heads; h++) Rope(q[p].AsSpan(h * _headDim, _headDim), p, adjacent);
                for (int h = 0; h < _kvHeads; h++) Rope(k[p].AsSpan(h * _headDim, _headDim), p, adjacent);
            }
        }

        bool sliding = _window > 0 && (_swaPeriod == 0 || layer % _swaPeriod < _swaPeriod - 1);
        double scale = 1 / Math.Sqrt(_headDim); // gemma2 and phi3 fold it into Q; the same number here
        var result = new double[n][];
        for (int p = 0; p < n; p++)
        {
            var o = new double[qDim];
            for (int h = 0; h < _heads; h++)
            {
                int kvHead = h / (_heads / _kvHeads);
                var scores = new double[p + 1];
                double max = double.NegativeInfinity;
                for (int j = 0; j <= p; j++)
                {
                    if (sliding && p - j >= _window) { scores[j] = double.NegativeInfinity; continue; }
                    double s = 0;
                    for (int d = 0; d < _headDim; d++) s += q[p][h * _headDim + d] * k[j][kvHead * _headDim + d];
                    s *= scale;
                    if (_attnSoftCap > 0) s = _attnSoftCap * Math.Tanh(s / _attnSoftCap);
                    scores[j] = s;
                    max = Math.Max(max, s);
                }
                double sum = 0;
                for (int j = 0; j <= p; j++) sum += scores[j] = Math.Exp(scores[j] - max);
                for (int j = 0; j <= p; j++)
                    for (int d = 0; d < _headDim; d++) o[h * _headDim + d] += scores[j] / sum * v[j][kvHead * _headDim + d];
            }
            result[p] = Linear(b + "attn_output", o);
        }
        return result;
    }

    private double[] Ffn(string b, double[] f)
    {
        switch (_arch)
        {
            case "gpt2":
            {
                var up = Linear(b + "ffn_up", f);
                for (int i = 0; i < up.Length; i++) up[i] = Gelu(up[i]);
                return Linear(b + "ffn_down", up);
            }
            case "phi3":
            {
                // Fused gate|up: the first half is the gate (silu), the second the up value (ggml_swiglu, unswapped).
                var gateUp = Linear(b + "ffn_up", f);
                int hidden = gateUp.Length / 2;
                var g = new double[hidden];
                for (int i = 0; i < hidden; i++) g[i] = Silu(gateUp[i]) * gateUp[hidden + i];
                return Linear(b + "ffn_down", g);
            }
            default:
            {
                var gate = Linear(b + "ffn_gate", f);
                var up = Linear(b + "ffn_up", f);
                for (int i = 0; i < gate.Length; i++) gate[i] = (_arch == "gemma2" ? Gelu(gate[i]) : Silu(gate[i])) * up[i];
                return Linear(b + "ffn_down", gate);
            }
        }
    }

    private double Gelu(double x)
    {
        if (!GgmlGelu) return 0.5 * x * (1 + Math.Tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x)));
        // ggml-cpu (GGML_GELU_FP16): a table of fp16(gelu_f32(h)) indexed by fp16(x), clamped outside ±10.
        if (x <= -10) return 0;
        if (x >= 10) return x;
        float h = (float)(Half)(float)x;
        float y = 0.5f * h * (1.0f + MathF.Tanh(0.79788456080286535587989211986876f * h * (1.0f + 0.044715f * h * h)));
        return (float)(Half)y;
    }

    private static double Silu(double x) => x / (1 + Math.Exp(-x));

    private void Rope(Span<double> head, int position, bool adjacent)
    {
        for (int i = 0; i < _rotary / 2; i++)
        {
            double theta = position * Math.Pow(_ropeBase, -2.0 * i / _rotary);
            double cos = Math.Cos(theta), sin = Math.Sin(theta);
            int a = adjacent ? 2 * i : i, c = adjacent ? 2 * i + 1 : i + _rotary / 2;
            double x0 = head[a], x1 = head[c];
            head[a] = x0 * cos - x1 * sin;
            head[c] = x0 * sin + x1 * cos;
        }
    }

    private double[] Norm(double[] x, string name)
    {
        if (_arch != "gpt2") return RmsNorm(x, V(name + ".weight"));
        double mean = x.Average(), variance = x.Select(v => (v - mean) * (v - mean)).Average();
        var w = V(name + ".weight");
        var bias = V(name + ".bias");
        var y = new double[x.Length];
        for (int i = 0; i < x.Length; i++) y[i] = (x[i] - mean) / Math.Sqrt(variance + _eps) * w[i] + bias[i];
        return y;
    }

    private double[] RmsNorm(double[] x, double[] weight)
    {
        var y = (double[])x.Clone();
        RmsNormInPlace(y, weight);
        return y;
    }

    private void RmsNormInPlace(Span<double> x, double[] weight)
    {
        double sum = 0;
        foreach (double v in x) sum += v * v;
        double inverse = 1 / Math.Sqrt(sum / x.Length + _eps);
        for (int i = 0; i < x.Length; i++) x[i] = x[i] * inverse * weight[i];
    }

    private double[] Linear(string name, double[] x)
    {
        var y = MatVec(W(name + ".weight"), x);
        if (_file.Tensors.ContainsKey(name + ".bias")) Add(y, V(name + ".bias"));
        return y;
    }

    private static double[] MatVec(Tensor w, double[] x)
    {
        var y = new double[w.Rows];
        for (int r = 0; r < w.Rows; r++)
        {
            var row = w.Row(r);
            double s = 0;
            for (int c = 0; c < row.Length; c++) s += row[c] * x[c];
            y[r] = s;
        }
        return y;
    }

    private readonly Dictionary<string, Tensor> _weights = [];

    private Tensor W(string name)
    {
        if (!_weights.TryGetValue(name, out var tensor)) _weights[name] = tensor = _file.LoadTensor(name);
        return tensor;
    }

    private double[] V(string name) => Array.ConvertAll(W(name).Data, v => (double)v);

    private static double[] Row(Tensor t, int row) => Array.ConvertAll(t.Row(row).ToArray(), v => (double)v);

    private static void Add(double[] x, double[] y)
    {
        for (int i = 0; i < x.Length; i++) x[i] += y[i];
    }

    private static void Scale(double[] x, double s)
    {
        for (int i = 0; i < x.Length; i++) x[i] *= s;
    }

    private int Int(string key, int? fallback = null) =>
        _file.TryGetInt($"{_arch}.{key}", out long value) ? (int)value
        : fallback ?? throw new ModelLoadException(_file.Path, $"{_arch}.{key}", null, "required by the reference decoder");

    private double Float(string key, double fallback) =>
        _file.TryGetFloat($"{_arch}.{key}", out double value) ? value
        : !double.IsNaN(fallback) ? fallback : throw new ModelLoadException(_file.Path, $"{_arch}.{key}", null, "required by the reference decoder");
}
