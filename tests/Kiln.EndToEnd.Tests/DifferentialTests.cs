using System.Buffers.Binary;
using Kiln.Loading;
using Kiln.Models;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The generated plan of samples/Models/Llama.cs against its own eager forward on real model files: a prefill, decode
/// steps, then one step mixing two sequences. Eager and compiled runs use separate KV caches.
/// </summary>
public sealed class DifferentialTests
{
    private const float Tolerance = 1e-4f;
    private const int MaxTokens = 16;
    private const int MaxContext = 64;

    [Theory]
    [InlineData("stories260K.gguf")]
    [InlineData("llama-2-tiny-random.gguf")]
    public void CompiledPlanMatchesEagerForward(string modelName)
    {
        using var file = ModelFile.Open(Path.Combine(AppContext.BaseDirectory, "models", modelName));
        var model = Llama.Load(file);
        var plan = model.Compile(MaxTokens);
        Assert.Equal(model.VocabSize, plan.VocabSize);
        Assert.StartsWith("Kiln fusion report for Llama", plan.FusionReport);

        var run = new Runner(model, plan);
        int vocab = model.VocabSize;

        // Prefill: five prompt tokens of slot 0, every row's logits wanted.
        int[] prompt = { 1, 7 % vocab, 42 % vocab, 100 % vocab, 3 % vocab };
        var eager = run.Step(prompt, Enumerable.Range(0, prompt.Length).Select(p => (p, 0, true)).ToArray(), "prefill");

        // Decode: one token at a time, greedy on the eager logits.
        int position = prompt.Length;
        int next = ArgMax(eager, eager.Length / vocab - 1, vocab);
        for (int step = 0; step < 4; step++, position++)
        {
            eager = run.Step(new[] { next }, new[] { (position, 0, true) }, $"decode {step}");
            next = ArgMax(eager, 0, vocab);
        }

        // Mixed: slot 0 decodes two more tokens while slot 1 prefills four, interleaved, some rows wanted.
        int[] mixed = { next, 5 % vocab, 9 % vocab, 11 % vocab, (next + 1) % vocab, 13 % vocab };
        var layout = new[]
        {
            (position, 0, true), (0, 1, false), (1, 1, true), (2, 1, false), (position + 1, 0, true), (3, 1, true),
        };
        run.Step(mixed, layout, "mixed slots");
    }

    private static int ArgMax(float[] logits, int row, int vocab)
    {
        int best = 0;
        for (int i = 1; i < vocab; i++)
            if (logits[row * vocab + i] > logits[row * vocab + best]) best = i;
        return best;
    }

    private sealed class Runner
    {
        private readonly Llama _model;
        private readonly ICompiledPlan _plan;
        private readonly AttentionContext _eagerContext;
        private readonly AttentionContext _compiledContext;
        private readonly float[] _logits;

        public Runner(Llama model, ICompiledPlan plan)
        {
            _model = model;
            _plan = plan;
            _eagerContext = new AttentionContext(model.CreateKvCache(slots: 2, MaxContext), MaxTokens);
            _compiledContext = new AttentionContext(model.CreateKvCache(slots: 2, MaxContext), MaxTokens);
            _logits = new float[MaxTokens * model.VocabSize];
        }

        /// <summary>Runs both paths on the same step and returns the eager logits after comparing.</summary>
        public float[] Step(int[] tokens, (int Position, int Slot, bool Want)[] layout, string what)
        {
            _eagerContext.Clear();
            _compiledContext.Clear();
            foreach (var (position, slot, want) in layout)
            {
                _eagerContext.Add(position, slot, want);
                _compiledContext.Add(position, slot, want);
            }

            var expected = _model.Forward(tokens, _eagerContext);
            Array.Fill(_logits, float.NaN);
            _plan.Step(tokens, _compiledContext, _logits);

            int count = _eagerContext.OutputCount * _model.VocabSize;
            Assert.Equal(count, expected.Data.Length);
            float worst = 0;
            int at = -1;
            for (int i = 0; i < count; i++)
            {
                float diff = MathF.Abs(expected.Data[i] - _logits[i]);
                if (!(diff <= worst)) { worst = diff; at = i; }
            }
            Assert.True(worst <= Tolerance,
                $"{what}: max |eager - compiled| = {worst} at row {at / _model.VocabSize}, logit {at % _model.VocabSize} " +
                $"(eager {expected.Data[Math.Max(at, 0)]}, compiled {_logits[Math.Max(at, 0)]}).");
            return expected.Data;
        }
    }
}

/// <summary>
/// The generated plan of samples/Models/Llama.cs on synthetic GGUF files in every stored format a layout exists for
/// (F32, BF16, Q8_0, Q4_0) and one with K-quants and mixed types: against the eager forward on
/// the same weights, thread count against thread count, and warm steps against the allocator.
/// </summary>
/// <remarks>
/// Tolerances. F32 and BF16 layouts multiply float32 activations: 1e-4 absolute, as for the real files above. The
/// quantized layouts dot against Q8 activations (each block of 32 rounded to 8 bits: relative error up to 1/254 per
/// value: 1.5 to 2% on these logits after two layers, measured; Q8_K's blocks of 256 and requantizing Q4_0 weights to Q8_0 add a
/// little), so their logits are compared by normalized error ‖compiled − eager‖ / ‖eager‖ ≤ 4e-2 per step; the compiled greedy token must be the eager one on at least 30 of 32
/// decode steps, and on every step a token whose eager logit is within 4 RMS differences of the best (a flip only
/// where the eager top two are closer than the quantization noise). A wrong kernel misses all of these by far.
/// </remarks>
public sealed class SyntheticDifferentialTests : IDisposable
{
    private const int Dim = 64, Heads = 4, KvHeads = 2, Layers = 2, Vocab = 99; // 99 rows: the output's last group is padded
    private const int MaxTokens = 16, MaxContext = 64, DecodeSteps = 32;
    private const float QuantizedTolerance = 4e-2f, FloatTolerance = 1e-4f;

    private readonly string _directory = Directory.CreateTempSubdirectory("kiln-differential-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    public static TheoryData<string> Formats => new() { "F32", "BF16", "Q8_0", "Q4_0", "KQuants" };

    [Theory]
    [MemberData(nameof(Formats))]
    public void CompiledPlanMatchesEagerForward(string format)
    {
        using var file = ModelFile.Open(Write(format));
        var model = Llama.Load(file);
        using var plan = model.Compile(new PlanOptions(MaxTokens, Threads: 2));
        bool quantized = format is "Q8_0" or "Q4_0" or "KQuants";
        var run = new Comparison(model, plan, quantized);

        int[] prompt = { 1, 17, 42, 5, 88 };
        var eager = run.Step(prompt, prompt.Select((_, p) => (p, 0, true)).ToArray(), "prefill");
        int next = ArgMax(eager, prompt.Length - 1);
        for (int step = 0; step < DecodeSteps; step++)
        {
            eager = run.Step(new[] { next }, new[] { (prompt.Length + step, 0, true) }, $"decode {step}");
            next = ArgMax(eager, 0);
        }
        if (quantized) Assert.True(run.GreedyAgreements >= run.GreedyChecks - 3, $"greedy tokens agreed on {run.GreedyAgreements} of {run.GreedyChecks} rows");
        // Two sequences in one step: slot 0 decodes on, slot 1 prefills, rows wanted here and there.
        int position = prompt.Length + DecodeSteps;
        run.Step(new[] { next, 3, 9, 27, 81 }, new[] { (position, 0, true), (0, 1, false), (1, 1, true), (2, 1, false), (3, 1, true) }, "mixed");
    }

    /// <summary>
    /// A paged cache (blocks of 4 rows, scattered through two sequences' block tables) in each storage: the plan's
    /// attention walks the block tables and reads rows in the cache's storage, as the eager op does, so F32 weights
    /// still agree to float32 precision.
    /// </summary>
    [Theory]
    [InlineData(KvStorage.F32)]
    [InlineData(KvStorage.F16)]
    [InlineData(KvStorage.Int8)]
    public void CompiledPlanMatchesEagerOnAPagedCache(KvStorage storage)
    {
        using var file = ModelFile.Open(Write("F32"));
        var model = Llama.Load(file);
        using var plan = model.Compile(new PlanOptions(MaxTokens, Threads: 2));
        Assert.Equal(new KvCacheShape(model.LayerCount, model.KvDim, Dim / Heads), model.KvShape);
        KvCache Paged() => model.KvShape.CreatePaged(blockCount: 32, blockSize: 4, storage, maxContext: 48);
        var eager = new AttentionContext(Paged(), MaxTokens, maxBlockIds: 64);
        var compiled = new AttentionContext(Paged(), MaxTokens, maxBlockIds: 64);
        int[] first = { 9, 3, 17, 1, 30, 12, 5, 22, 7, 14, 2, 28 }, second = { 0, 11, 4, 25, 19, 6 };
        var logits = new float[MaxTokens * Vocab];

        void Step(int[] tokens, params (int[] Blocks, int Start, int Count, bool Want)[] chunks)
        {
            eager.Clear();
            compiled.Clear();
            foreach (var (blocks, start, count, want) in chunks)
            {
                eager.AddChunk(blocks, start, count, want);
                compiled.AddChunk(blocks, start, count, want);
            }
            var expected = model.Forward(tokens, eager).Data;
            plan.Step(tokens, compiled, logits);
            Assert.Equal(eager.OutputCount * Vocab, expected.Length);
            for (int i = 0; i < expected.Length; i++)
                Assert.True(MathF.Abs(expected[i] - logits[i]) <= FloatTolerance, $"{storage}, logit {i}: eager {expected[i]}, compiled {logits[i]}");
        }

        Step(Enumerable.Range(1, 10).ToArray(), (first, 0, 10, true));                         // prefill over three blocks
        for (int p = 10; p < 14; p++) Step(new[] { p * 3 % Vocab }, (first, p, 1, true));      // decode into the fourth
        Step(new[] { 40, 41, 42, 43, 44, 45, 46 }, (first, 14, 1, true), (second, 0, 6, true)); // one decode beside a prefill
    }

    [Fact]
    public void LayoutsFollowTheStoredTypes()
    {
        using var file = ModelFile.Open(Write("KQuants"));
        var model = Llama.Load(file);
        using var plan = model.Compile(new PlanOptions(4, Threads: 1));
        string report = plan.FusionReport;
        Assert.Contains("Layouts chosen for this model file:", report);
        // Layer 0: attn_q/k Q4_K and attn_v Q6_K dot the same Q8_K activations: each keeps its type, one segment each.
        Assert.Contains("_wqWkWv[layer] (layer 0): K-quants x8 interleaved (Q4_K, Q6_K per segment) [512, 256] (Wq: stored Q4_K copied; Wk: stored Q4_K copied; Wv: stored Q6_K copied)", report);
        // Layer 1: attn_q/k Q4_0 and attn_v Q8_0: the fused matmul takes the more precise Q8_0 for all three.
        Assert.Contains("_wqWkWv[layer] (layer 1): Q8_0x8 interleaved", report);
        Assert.Contains("Wq: Q4_0 dequantized, requantized", report);
        Assert.Contains("Wv: stored Q8_0 copied", report);
        Assert.Contains("_wo[layer] (layers 0-1): Q5_Kx8 interleaved", report);
        Assert.Contains("_gateUp[layer] (layers 0-1): Q4_Kx8 interleaved [512, 256] (Gate: stored Q4_K copied; Up: stored Q4_K copied)", report);
        Assert.Contains("_down[layer] (layer 0): Q6_Kx8 interleaved [256, 256] (Down: stored Q6_K copied)", report);
        Assert.Contains("_down[layer] (layer 1): Q4_Kx8 interleaved [256, 256] (Down: stored Q4_K copied)", report);
        Assert.Contains("_output: Q6_Kx8 interleaved", report);
    }

    [Theory]
    [InlineData("F32")]
    [InlineData("Q8_0")]
    [InlineData("Q4_0")]
    public void OneThreadAndTwoThreadsGiveTheSameBits(string format)
    {
        using var file = ModelFile.Open(Write(format));
        var model = Llama.Load(file);
        using var one = model.Compile(new PlanOptions(MaxTokens, Threads: 1));
        using var two = model.Compile(new PlanOptions(MaxTokens, Threads: 2));
        var oneContext = new AttentionContext(model.CreateKvCache(slots: 4, MaxContext), MaxTokens);
        var twoContext = new AttentionContext(model.CreateKvCache(slots: 4, MaxContext), MaxTokens);
        var oneLogits = new float[MaxTokens * Vocab];
        var twoLogits = new float[MaxTokens * Vocab];

        void Both(int[] tokens, (int Position, int Slot)[] layout)
        {
            oneContext.Clear();
            twoContext.Clear();
            foreach (var (p, s) in layout)
            {
                oneContext.Add(p, s, wantLogits: true);
                twoContext.Add(p, s, wantLogits: true);
            }
            one.Step(tokens, oneContext, oneLogits);
            two.Step(tokens, twoContext, twoLogits);
            Assert.Equal(oneLogits, twoLogits); // bit for bit
        }

        int[] prompt = Enumerable.Range(0, 13).Select(i => (i * 7 + 2) % Vocab).ToArray();
        Both(prompt, prompt.Select((_, p) => (p, 0)).ToArray());
        for (int p = prompt.Length; p < prompt.Length + 4; p++) Both(new[] { p % Vocab }, new[] { (p, 0) });
        Both(new[] { 5, 6, 7, 8 }, new[] { (17, 0), (0, 1), (0, 2), (0, 3) }); // four sequences decoding together
    }

    [Theory]
    [InlineData("F32")]
    [InlineData("Q4_0")]
    public void WarmStepsAllocateNothing(string format)
    {
        using var file = ModelFile.Open(Write(format));
        var model = Llama.Load(file);
        using var plan = model.Compile(new PlanOptions(MaxTokens, Threads: 2));
        var context = new AttentionContext(model.CreateKvCache(slots: 1, MaxContext), MaxTokens);
        var logits = new float[MaxTokens * Vocab];
        int[] prompt = Enumerable.Range(1, 12).ToArray();
        int[] one = { 7 };

        void Prefill() { context.SetSequence(0, 0, prompt.Length); plan.Step(prompt, context, logits); }
        void Decode() { context.SetSequence(0, prompt.Length, 1); plan.Step(one, context, logits); }

        Prefill();
        Decode();
        long before = GC.GetAllocatedBytesForCurrentThread();
        Prefill();
        Decode();
        Assert.Equal(before, GC.GetAllocatedBytesForCurrentThread());
    }

    [Fact]
    public void ADisposedPlanRefusesToStep()
    {
        using var file = ModelFile.Open(Write("Q4_0"));
        var model = Llama.Load(file);
        var plan = model.Compile(new PlanOptions(4, Threads: 2));
        plan.Dispose();
        plan.Dispose(); // twice is fine
        var context = new AttentionContext(model.CreateKvCache(slots: 1, MaxContext), 4);
        context.SetSequence(0, 0, 1);
        Assert.Throws<ObjectDisposedException>(() => plan.Step(new[] { 1 }, context, new float[Vocab]));
    }

    private static int ArgMax(float[] logits, int row)
    {
        int best = 0;
        for (int i = 1; i < Vocab; i++)
            if (logits[row * Vocab + i] > logits[row * Vocab + best]) best = i;
        return best;
    }

    /// <summary>
    /// A llama GGUF with seeded Gaussian weights scaled to keep activations near unit RMS and logits spread (std ≈ 3).
    /// "KQuants" (dim 256, so every matrix can be a K-quant): layer 0's attn_q/k Q4_K and attn_v Q6_K (one fused
    /// matmul of two K types), layer 1's attn_q/k Q4_0 and attn_v Q8_0 (the more precise Q8_0 serves all three),
    /// attn_output Q5_K, ffn_gate/up Q4_K, ffn_down Q6_K (layer 0) and Q4_K (layer 1) built block by block, the
    /// embedding Q4_K and the output Q6_K. (A weight converted to a K-quant adds that quantization's whole error to the
    /// comparison with the eager forward, which reads the stored values: GemmTests check conversions on their own.)
    /// </summary>
    private string Write(string format)
    {
        string path = Path.Combine(_directory, format + ".gguf");
        if (File.Exists(path)) return path;
        bool kQuants = format == "KQuants";
        int dim = kQuants ? 256 : Dim, hidden = kQuants ? 256 : 96; // K-quant rows are 256 long
        GgmlType Type(string tensor, int layer) => format switch
        {
            "F32" => GgmlType.F32,
            "BF16" => GgmlType.BF16,
            "Q8_0" => GgmlType.Q8_0,
            "Q4_0" => GgmlType.Q4_0,
            _ => tensor switch
            {
                "attn_q" or "attn_k" => layer == 0 ? GgmlType.Q4_K : GgmlType.Q4_0,
                "attn_v" => layer == 0 ? GgmlType.Q6_K : GgmlType.Q8_0,
                "attn_output" => GgmlType.Q5_K,
                "ffn_gate" or "ffn_up" or "token_embd" => GgmlType.Q4_K,
                _ => GgmlType.Q6_K, // output
            },
        };

        var random = new Random(format.Length * 31 + format[0]);
        float[] Gaussian(int count, double std)
        {
            var values = new float[count];
            for (int i = 0; i < count; i++)
            {
                double u1 = 1 - random.NextDouble(), u2 = random.NextDouble();
                values[i] = (float)(std * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            }
            return values;
        }
        float[] Norm() => Enumerable.Range(0, dim).Select(_ => 0.8f + 0.4f * (float)random.NextDouble()).ToArray();

        var writer = new GgufWriter();
        writer.AddMetadata("general.architecture", "llama");
        writer.AddMetadata("llama.embedding_length", (uint)dim);
        writer.AddMetadata("llama.feed_forward_length", (uint)hidden);
        writer.AddMetadata("llama.block_count", (uint)Layers);
        writer.AddMetadata("llama.attention.head_count", (uint)Heads);
        writer.AddMetadata("llama.attention.head_count_kv", (uint)KvHeads);
        writer.AddMetadata("llama.attention.layer_norm_rms_epsilon", 1e-5f);
        writer.AddMetadata("llama.rope.freq_base", 10000f);
        int kvDim = dim / Heads * KvHeads;
        void Linear(string name, string kind, int layer, int rows, int cols) =>
            writer.AddTensor(name, Type(kind, layer), Gaussian(rows * cols, 1 / Math.Sqrt(cols)), cols, rows);

        writer.AddTensor("token_embd.weight", Type("token_embd", 0), Gaussian(Vocab * dim, 1), dim, Vocab);
        for (int layer = 0; layer < Layers; layer++)
        {
            string p = $"blk.{layer}.";
            writer.AddTensor(p + "attn_norm.weight", GgmlType.F32, Norm(), dim);
            Linear(p + "attn_q.weight", "attn_q", layer, dim, dim);
            Linear(p + "attn_k.weight", "attn_k", layer, kvDim, dim);
            Linear(p + "attn_v.weight", "attn_v", layer, kvDim, dim);
            Linear(p + "attn_output.weight", "attn_output", layer, dim, dim);
            writer.AddTensor(p + "ffn_norm.weight", GgmlType.F32, Norm(), dim);
            Linear(p + "ffn_gate.weight", "ffn_gate", layer, hidden, dim);
            Linear(p + "ffn_up.weight", "ffn_up", layer, hidden, dim);
            if (kQuants)
                writer.AddEncodedTensor(p + "ffn_down.weight", layer == 0 ? GgmlType.Q6_K : GgmlType.Q4_K,
                    layer == 0 ? Q6K(dim * hidden / 256, random) : Q4K(dim * hidden / 256, random), hidden, dim);
            else
                Linear(p + "ffn_down.weight", "ffn_down", layer, dim, hidden);
        }
        writer.AddTensor("output_norm.weight", GgmlType.F32, Norm(), dim);
        writer.AddTensor("output.weight", Type("output", 0), Gaussian(Vocab * dim, 3 / Math.Sqrt(dim)), dim, Vocab);
        writer.Write(path);
        return path;
    }

    /// <summary>Q6_K blocks of random 6-bit quants and int8 scales, d chosen so values are ~N(0, 1/16) (rows of 256).</summary>
    private static byte[] Q6K(int blocks, Random random)
    {
        var bytes = new byte[blocks * 210];
        random.NextBytes(bytes);
        for (int b = 0; b < blocks; b++)
        {
            var block = bytes.AsSpan(b * 210, 210);
            for (int i = 0; i < 16; i++) block[192 + i] = (byte)(sbyte)random.Next(-24, 25);
            BinaryPrimitives.WriteUInt16LittleEndian(block[208..], BitConverter.HalfToUInt16Bits((Half)(1.0 / 16 / 16 / 18)));
        }
        return bytes;
    }

    /// <summary>Q4_K blocks of random nibbles and 6-bit scales and mins (rows of 256).</summary>
    private static byte[] Q4K(int blocks, Random random)
    {
        var bytes = new byte[blocks * 144];
        random.NextBytes(bytes);
        for (int b = 0; b < blocks; b++)
        {
            var block = bytes.AsSpan(b * 144, 144);
            BinaryPrimitives.WriteUInt16LittleEndian(block, BitConverter.HalfToUInt16Bits((Half)(1.0 / 16 / 32 / 4)));
            BinaryPrimitives.WriteUInt16LittleEndian(block[2..], BitConverter.HalfToUInt16Bits((Half)(1.0 / 16 / 32 / 2)));
        }
        return bytes;
    }

    /// <summary>Runs the eager forward and the plan on the same step (separate caches) and compares the logits.</summary>
    private sealed class Comparison
    {
        private readonly Llama _model;
        private readonly ICompiledPlan _plan;
        private readonly bool _quantized;
        private readonly AttentionContext _eager;
        private readonly AttentionContext _compiled;
        private readonly float[] _logits = new float[MaxTokens * Vocab];

        public Comparison(Llama model, ICompiledPlan plan, bool quantized)
        {
            _model = model;
            _plan = plan;
            _quantized = quantized;
            _eager = new AttentionContext(model.CreateKvCache(slots: 2, MaxContext), MaxTokens);
            _compiled = new AttentionContext(model.CreateKvCache(slots: 2, MaxContext), MaxTokens);
        }

        /// <summary>Rows compared on a quantized layout, and those whose greedy tokens were the same.</summary>
        public int GreedyChecks { get; private set; }

        public int GreedyAgreements { get; private set; }

        public float[] Step(int[] tokens, (int Position, int Slot, bool Want)[] layout, string what)
        {
            _eager.Clear();
            _compiled.Clear();
            foreach (var (p, s, w) in layout)
            {
                _eager.Add(p, s, w);
                _compiled.Add(p, s, w);
            }
            var expected = _model.Forward(tokens, _eager).Data;
            _plan.Step(tokens, _compiled, _logits);
            for (int row = 0; row < _eager.OutputCount; row++)
            {
                var e = expected.AsSpan(row * Vocab, Vocab);
                var c = _logits.AsSpan(row * Vocab, Vocab);
                if (_quantized)
                {
                    double difference = 0, norm = 0;
                    for (int i = 0; i < Vocab; i++)
                    {
                        difference += (double)(e[i] - c[i]) * (e[i] - c[i]);
                        norm += (double)e[i] * e[i];
                    }
                    double error = Math.Sqrt(difference / norm), rms = Math.Sqrt(difference / Vocab);
                    Assert.True(error <= QuantizedTolerance, $"{what}, row {row}: normalized error {error:G3}");
                    int best = ArgMax(e), chosen = ArgMax(c);
                    GreedyChecks++;
                    if (best == chosen) GreedyAgreements++;
                    Assert.True(e[chosen] >= e[best] - 4 * rms,
                        $"{what}, row {row}: greedy token {chosen} compiled (eager logit {e[chosen]}), {best} eager ({e[best]}); RMS difference {rms:G3}");
                }
                else
                {
                    for (int i = 0; i < Vocab; i++)
                        Assert.True(MathF.Abs(e[i] - c[i]) <= FloatTolerance, $"{what}, row {row}, logit {i}: eager {e[i]}, compiled {c[i]}");
                }
            }
            return expected;
        }

        private static int ArgMax(ReadOnlySpan<float> values)
        {
            int best = 0;
            for (int i = 1; i < values.Length; i++)
                if (values[i] > values[best]) best = i;
            return best;
        }
    }
}
