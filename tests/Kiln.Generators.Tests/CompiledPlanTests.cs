using System.Reflection;
using System.Runtime.InteropServices;
using Kiln.Loading;
using Kiln.Testing;

namespace Kiln.Generators.Tests;

/// <summary>
/// Differential tests on synthetic weights, independent of any model file: the generated plan (compiled here, in
/// memory) against the same class's eager forward. Covers grouped-query attention, a tied output weight, and a second
/// model definition written differently (Layers[layer].W, +=, an unfused norm and standalone elementwise ops), so the
/// fusions are shown to come from pattern matching rather than from Llama's names.
/// </summary>
public sealed class CompiledPlanTests
{
    private const float Tolerance = 1e-4f;

    /// <summary>The same ops as Llama, written another way; the second norm also feeds a non-Linear so it cannot fold.</summary>
    private const string Variant = """
        using Kiln;

        namespace Variant;

        [Model("variant")]
        public partial class Small
        {
            [Hyper("{arch}.dim", Required = true)] public int Dim;
            [Hyper("{arch}.ffn")] public int Ffn = 24;
            [Hyper("{arch}.layers", Required = true)] public int Depth;
            [Hyper("{arch}.heads")] public int Heads = 4;
            [Hyper("{arch}.kv_heads")] public int KvHeads = 1;
            [Hyper("{arch}.base")] public float Base = 500f;
            public int HeadDim => Dim / Heads;

            [Weight("embed", "Words", "Dim")] public Tensor Embed = null!;
            [Weight("final_norm", "Dim")] public Tensor FinalNorm = null!;
            [Weight("head", "Words", "Dim")] public Tensor Head = null!;
            [Layers("layer{0}/", nameof(Depth))] public Layer[] Stack = null!;

            public partial class Layer
            {
                [Weight("norm1", "Dim")] public Tensor Norm1 = null!;
                [Weight("q", "Dim", "Dim")] public Tensor Q = null!;
                [Weight("k", "KvHeads*HeadDim", "Dim")] public Tensor K = null!;
                [Weight("v", "KvHeads*HeadDim", "Dim")] public Tensor V = null!;
                [Weight("o", "Dim", "Dim")] public Tensor O = null!;
                [Weight("norm2", "Dim")] public Tensor Norm2 = null!;
                [Weight("up", "Ffn", "Dim")] public Tensor Up = null!;
                [Weight("down", "Dim", "Ffn")] public Tensor Down = null!;
            }

            [Forward]
            public Tensor Run(ReadOnlySpan<int> tokens, AttentionContext context)
            {
                var h = Ops.Embedding(Embed, tokens);
                for (int i = 0; i < Depth; i++)
                {
                    var n = Ops.RmsNorm(h, Stack[i].Norm1, 1e-6f);
                    var att = Ops.Attention(
                        Ops.Rope(Ops.Linear(n, Stack[i].Q), context, HeadDim, Base),
                        Ops.Rope(Ops.Linear(n, Stack[i].K), context, HeadDim, Base),
                        Ops.Linear(n, Stack[i].V), context, i, Heads, KvHeads);
                    h += Ops.Linear(att, Stack[i].O);
                    var m = Ops.RmsNorm(h, Stack[i].Norm2, 1e-6f);
                    var up = Ops.Silu(Ops.Linear(m, Stack[i].Up)) * Ops.Linear(m, Stack[i].Up);
                    h = Ops.Add(h, Ops.Linear(up, Stack[i].Down)) + m;
                }
                return Ops.Linear(Ops.RmsNorm(Ops.SelectRows(h, context), FinalNorm, 1e-6f), Head);
            }
        }
        """;

    /// <summary>A token-level GRU language model: Ops.Gru's path through the generator (op table, shape rule, kernel, state).</summary>
    private const string GruModel = """
        using Kiln;

        namespace Recurrent;

        [Model("gru")]
        public partial class GruLm
        {
            [Hyper("{arch}.dim", Required = true)] public int Dim;
            [Hyper("{arch}.layers", Required = true)] public int Depth;

            [Weight("embed", "Words", "Dim")] public Tensor Embed = null!;
            [Weight("head", "Words", "Dim")] public Tensor Head = null!;
            [Layers("layer{0}/", nameof(Depth))] public Layer[] Stack = null!;

            public partial class Layer
            {
                [Weight("ih", "3*Dim", "Dim")] public Tensor Input = null!;
                [Weight("ih_bias", "3*Dim")] public Tensor InputBias = null!;
                [Weight("hh", "3*Dim", "Dim")] public Tensor Recurrent = null!;
                [Weight("hh_bias", "3*Dim")] public Tensor RecurrentBias = null!;
            }

            [Forward]
            public Tensor Run(ReadOnlySpan<int> tokens, AttentionContext context)
            {
                var x = Ops.Embedding(Embed, tokens);
                for (int i = 0; i < Depth; i++)
                    x = Ops.Gru(Ops.Linear(x, Stack[i].Input, Stack[i].InputBias), Stack[i].Recurrent, Stack[i].RecurrentBias, context, i);
                return Ops.Linear(Ops.SelectRows(x, context), Head);
            }
        }
        """;

    private static readonly Lazy<Assembly> GruAssembly = new(() => Compile(("Gru.cs", GruModel)));

    /// <summary>
    /// The GRU's compiled plan against its eager forward: sequences of different lengths packed in one step, each in
    /// its own state slot, then continued (a chunk mid-sequence reads its slot); the state declared per layer.
    /// </summary>
    [Fact]
    public void GruPlanMatchesEagerOverPackedSequencesAndDeclaresItsState()
    {
        const int dim = 24, depth = 2, words = 31;
        var file = new MemoryModelFile("gru", seed: 9);
        file.Int("gru.dim", dim).Int("gru.layers", depth).Random("embed", words, dim, 1f).Random("head", words, dim);
        for (int l = 0; l < depth; l++)
            file.Random($"layer{l}/ih", 3 * dim, dim, 0.4f).Vector($"layer{l}/ih_bias", 3 * dim, 0.3f)
                .Random($"layer{l}/hh", 3 * dim, dim, 0.4f).Vector($"layer{l}/hh_bias", 3 * dim, 0.3f);
        var model = Load(GruAssembly.Value, "Recurrent.GruLm", file);
        var shape = model.StateShape;
        Assert.Equal(depth, shape.Tensors.Length);
        for (int l = 0; l < depth; l++) Assert.Equal(new StateTensorShape(Ops.GruHidden, l, 1, dim), shape.Tensors[shape.IndexOf(l, Ops.GruHidden)]);

        using var plan = model.Compile(new PlanOptions(32, Threads: 2));
        Assert.Contains("gru:", plan.FusionReport);
        var eager = new AttentionContext(shape.CreateCache(3), 32);
        var compiled = new AttentionContext(shape.CreateCache(3), 32);
        var random = new Random(9);
        (int Slot, int Start, int Count)[][] steps = [[(0, 0, 6), (1, 0, 1), (2, 0, 9)], [(2, 9, 1), (0, 6, 4)], [(1, 1, 7), (0, 10, 1)]];
        double worst = 0;
        foreach (var step in steps)
        {
            eager.Clear();
            compiled.Clear();
            var tokens = new List<int>();
            foreach (var (slot, start, count) in step)
            {
                for (int i = 0; i < count; i++) tokens.Add(random.Next(words));
                eager.AddRecurrentChunk(slot, start, count, wantLogits: true);
                compiled.AddRecurrentChunk(slot, start, count, wantLogits: true);
            }
            var expected = model.ForwardEager(tokens.ToArray(), eager).Data;
            var logits = new float[step.Length * words];
            plan.Step(tokens.ToArray(), compiled, logits);
            for (int i = 0; i < logits.Length; i++) worst = Math.Max(worst, Math.Abs(logits[i] - expected[i]));
        }
        Assert.True(worst <= Tolerance, $"the GRU plan differs from its eager forward by {worst:E2}");
    }

    private static readonly Lazy<Assembly> LlamaAssembly = new(() => Compile(
        (Path.Combine(CSharpGeneratorTest<KilnGenerator>.RepoRoot, "samples", "Models", "Llama.cs"), null)));

    private static readonly Lazy<Assembly> VariantAssembly = new(() => Compile(("Variant.cs", Variant)));

    private static Assembly Compile((string Path, string? Text) source)
    {
        var compilation = CSharpGeneratorTest<KilnGenerator>.CreateCompilation((source.Path, source.Text ?? File.ReadAllText(source.Path)));
        var run = CSharpGeneratorTest<KilnGenerator>.RunGenerator(compilation);
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Empty(run.CompilationErrors);
        return CSharpGeneratorTest<KilnGenerator>.Load(run.Output);
    }

    private static IKilnModel Load(Assembly assembly, string typeName, ModelFile file)
    {
        var type = assembly.GetType(typeName, throwOnError: true)!;
        try
        {
            return (IKilnModel)type.GetMethod("Load", BindingFlags.Public | BindingFlags.Static)!.Invoke(null, new object[] { file })!;
        }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            throw e.InnerException;
        }
    }

    [Theory]
    [InlineData(4, 2, true)]
    [InlineData(4, 1, false)]
    [InlineData(2, 2, true)]
    public void LlamaPlanMatchesEagerOnSyntheticWeights(int heads, int kvHeads, bool tiedOutput)
    {
        const int dim = 32, hidden = 40, layers = 2, vocab = 37;
        int headDim = dim / heads;
        var file = new MemoryModelFile("llama", seed: heads * 10 + kvHeads);
        file.Int("llama.embedding_length", dim).Int("llama.feed_forward_length", hidden).Int("llama.block_count", layers)
            .Int("llama.attention.head_count", heads).Int("llama.attention.head_count_kv", kvHeads)
            .Float("llama.attention.layer_norm_rms_epsilon", 1e-5).Float("llama.rope.freq_base", 10000.0);
        file.Random("token_embd.weight", vocab, dim).Norm("output_norm.weight", dim);
        if (!tiedOutput) file.Random("output.weight", vocab, dim);
        for (int l = 0; l < layers; l++)
        {
            file.Norm($"blk.{l}.attn_norm.weight", dim).Random($"blk.{l}.attn_q.weight", dim, dim)
                .Random($"blk.{l}.attn_k.weight", kvHeads * headDim, dim).Random($"blk.{l}.attn_v.weight", kvHeads * headDim, dim)
                .Random($"blk.{l}.attn_output.weight", dim, dim).Norm($"blk.{l}.ffn_norm.weight", dim)
                .Random($"blk.{l}.ffn_gate.weight", hidden, dim).Random($"blk.{l}.ffn_up.weight", hidden, dim)
                .Random($"blk.{l}.ffn_down.weight", dim, hidden);
        }
        var model = Load(LlamaAssembly.Value, "Kiln.Models.Llama", file);
        Assert.Equal(vocab, model.VocabSize);
        Differential(model);
    }

    [Fact]
    public void VariantPlanMatchesEagerAndFusesByPattern()
    {
        const int dim = 16, ffn = 24, depth = 3, words = 29, heads = 4, kvHeads = 1;
        var file = new MemoryModelFile("variant", seed: 7);
        file.Int("variant.dim", dim).Int("variant.layers", depth);
        file.Random("embed", words, dim).Norm("final_norm", dim).Random("head", words, dim);
        for (int l = 0; l < depth; l++)
        {
            file.Norm($"layer{l}/norm1", dim).Random($"layer{l}/q", dim, dim).Random($"layer{l}/k", kvHeads * dim / heads, dim)
                .Random($"layer{l}/v", kvHeads * dim / heads, dim).Random($"layer{l}/o", dim, dim).Norm($"layer{l}/norm2", dim)
                .Random($"layer{l}/up", ffn, dim).Random($"layer{l}/down", dim, ffn);
        }
        var model = Load(VariantAssembly.Value, "Variant.Small", file);
        var report = model.Compile(4).FusionReport;
        foreach (var expected in new[]
        {
            "RmsNorm(Norm1) fused",                        // norm → q/k/v matmul input
            "rope([Q]) epilogue",                          // rope on q and k
            "h3 ← h2 + [O] epilogue",                      // h += Linear(att, O) into a buffer of its own, not over h2: an in-place residual slows the tiles
            "h2 ← (h3 + [Down]) + m epilogue",             // the layer's last value straight into the loop's buffer, no copy after it
            "elementwise: m ← rmsnorm(h3, Norm2)",          // m is also added later: the norm cannot fold
            "silu([Up])·[Up] epilogue",                    // the same weight twice still pairs
        })
        {
            Assert.True(report.Contains(expected), $"missing \"{expected}\" in:\n{report}");
        }
        Differential(model);
    }

    [Fact]
    public void LoadRejectsAWrongShapeNamingTensorAndShapes()
    {
        var file = new MemoryModelFile("llama", seed: 1);
        file.Int("llama.embedding_length", 8).Int("llama.feed_forward_length", 8).Int("llama.block_count", 0)
            .Int("llama.attention.head_count", 2);
        file.Random("token_embd.weight", 11, 8).Norm("output_norm.weight", 9);
        var error = Assert.Throws<ModelLoadException>(() => Load(LlamaAssembly.Value, "Kiln.Models.Llama", file));
        Assert.Contains("output_norm.weight", error.Message);
        Assert.Contains("[Dim] = [8]", error.Message);
        Assert.Contains("[9]", error.Message);
    }

    [Fact]
    public void LoadRejectsAMissingRequiredHyperAndAWrongArchitecture()
    {
        var file = new MemoryModelFile("llama", seed: 1);
        var missing = Assert.Throws<ModelLoadException>(() => Load(LlamaAssembly.Value, "Kiln.Models.Llama", file));
        Assert.Contains("llama.embedding_length", missing.Message);
        var wrong = Assert.Throws<ModelLoadException>(() => Load(LlamaAssembly.Value, "Kiln.Models.Llama", new MemoryModelFile("gpt2", seed: 1)));
        Assert.Contains("general.architecture", wrong.Message);
    }

    /// <summary>Prefill of 5 (all rows), 3 decodes, then two sequences mixed in one step; then a step that must not allocate.</summary>
    private static void Differential(IKilnModel model)
    {
        const int maxTokens = 8;
        var plan = model.Compile(maxTokens);
        var eager = new AttentionContext(model.CreateKvCache(2, 32), maxTokens);
        var compiled = new AttentionContext(model.CreateKvCache(2, 32), maxTokens);
        var logits = new float[maxTokens * model.VocabSize];
        int vocab = model.VocabSize;

        void Step(int[] tokens, params (int Position, int Slot, bool Want)[] layout)
        {
            eager.Clear();
            compiled.Clear();
            foreach (var (p, s, w) in layout)
            {
                eager.Add(p, s, w);
                compiled.Add(p, s, w);
            }
            var expected = model.ForwardEager(tokens, eager);
            plan.Step(tokens, compiled, logits);
            Assert.Equal(eager.OutputCount * vocab, expected.Data.Length);
            for (int i = 0; i < expected.Data.Length; i++)
                Assert.True(MathF.Abs(expected.Data[i] - logits[i]) <= Tolerance, $"logit {i}: eager {expected.Data[i]}, compiled {logits[i]}");
        }

        Step(new[] { 1, 2, 3, 4, 5 }, (0, 0, true), (1, 0, true), (2, 0, true), (3, 0, true), (4, 0, true));
        for (int p = 5; p < 8; p++) Step(new[] { p % vocab }, (p, 0, true));
        Step(new[] { 9, 10, 11, 12, 13 }, (8, 0, true), (0, 1, false), (1, 1, true), (9, 0, false), (2, 1, true));

        // After warm-up a step allocates nothing.
        compiled.Clear();
        compiled.Add(3, 1, true);
        int[] token = { 6 };
        plan.Step(token, compiled, logits);
        long before = GC.GetAllocatedBytesForCurrentThread();
        plan.Step(token, compiled, logits);
        Assert.Equal(before, GC.GetAllocatedBytesForCurrentThread());

        Assert.Throws<ArgumentException>(() => plan.Step(new[] { 1, 2 }, compiled, logits));
        Assert.Throws<ArgumentException>(() => plan.Step(new[] { 1 }, compiled, new float[vocab - 1]));
    }
}
