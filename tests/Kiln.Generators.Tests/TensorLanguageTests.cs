using System.Reflection;
using Kiln.Kernels.Quantized;
using Kiln.Loading;
using Kiln.Testing;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.Generators.Tests;

/// <summary>
/// One model definition that uses every op of the tensor language the five decoder families do not — the exact GELU,
/// ReLU, sigmoid, tanh, exp, softplus, negation, scalar arithmetic on either side, a bias-free LayerNorm, a per-head
/// norm without rope, rope on adjacent pairs of part of each head, slices that are not weight rows, concat,
/// bidirectional and windowed attention in the two branches of an if, a tensor ?: on the layer, a chain fused into a
/// matmul's input preparation and a scaled result — compiled in memory and compared with its own eager forward, on
/// every kernel path.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class TensorLanguageTests(ITestOutputHelper output)
{
    private const string Source = """
        using Kiln;

        namespace Language;

        [Model("language")]
        public partial class Everything
        {
            [Hyper("{arch}.dim", Required = true)] public int Dim;
            [Hyper("{arch}.heads")] public int Heads = 2;
            [Hyper("{arch}.layers")] public int Depth = 2;
            [Hyper("{arch}.eps")] public float Eps = 1e-5f;
            public int HeadDim => Dim / Heads;
            public int Half => Dim / 2;

            [Weight("embed", "Words", "Dim")] public Tensor Embed = null!;
            [Weight("norm", "Dim")] public Tensor Norm = null!;
            [Weight("out", "Words", "Dim")] public Tensor Head = null!;
            [Layers("l{0}.", nameof(Depth))] public Layer[] Stack = null!;

            public partial class Layer
            {
                [Weight("ln", "Dim")] public Tensor Ln = null!;
                [Weight("qkv", "3*Dim", "Dim")] public Tensor Qkv = null!;
                [Weight("head_norm", "HeadDim")] public Tensor HeadNorm = null!;
                [Weight("a", "Dim", "Dim")] public Tensor A = null!;
                [Weight("bias", "Dim")] public Tensor Bias = null!;
                [Weight("b", "Dim", "Dim")] public Tensor B = null!;
                [Weight("c", "Dim", "Dim+Dim")] public Tensor C = null!;
            }

            [Forward]
            public Tensor Run(ReadOnlySpan<int> tokens, AttentionContext context)
            {
                var x = Ops.Embedding(Embed, tokens);
                for (int layer = 0; layer < Depth; layer++)
                {
                    var s = Stack[layer];
                    var qkv = Ops.Linear(Ops.LayerNorm(x, s.Ln, Eps), s.Qkv);
                    var q = Ops.Rope(Ops.Slice(qkv, 0, Dim), context, HeadDim, 100f, RopeStyle.Adjacent, HeadDim / 2);
                    var k = Ops.HeadRmsNorm(Ops.Slice(qkv, Dim, Dim), s.HeadNorm, Eps);
                    var v = Ops.Slice(qkv, 2 * Dim, Dim);
                    Tensor mixed;
                    if (layer % 2 == 0)
                        mixed = Ops.Attention(q, k, v, context, layer, Heads, Heads, causal: false);
                    else
                        mixed = Ops.Attention(q, k, v, context, layer, Heads, Heads, scale: 0.5f, window: 2);
                    var y = Ops.Linear(mixed, s.A, s.Bias);
                    var act = layer == 0 ? Ops.GeluErf(y) : Ops.Sigmoid(y) * Ops.Tanh(y);
                    x = x + Ops.Relu(act) - 0.5f * Ops.Softplus(y) + Ops.Exp(-Ops.Relu(y)) / 4f;
                    x = 1f - (1f - x) / (1f + 0f * Dim);
                    x = x + Ops.Linear(Ops.Gelu(x), s.B) / (2f + Dim);
                    x = x + Ops.Linear(Ops.Concat(x, Ops.Silu(x)), s.C);
                }
                return Ops.Linear(Ops.RmsNorm(Ops.SelectRows(x, context), Norm, Eps), Head) * 0.5f;
            }
        }
        """;

    private static readonly Lazy<Assembly> Compiled = new(() =>
    {
        var compilation = CSharpGeneratorTest<KilnGenerator>.CreateCompilation(("Everything.cs", Source));
        var run = CSharpGeneratorTest<KilnGenerator>.RunGenerator(compilation);
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Empty(run.CompilationErrors);
        return CSharpGeneratorTest<KilnGenerator>.Load(run.Output);
    });

    private const int Dim = 48, Words = 23, Depth = 2;

    private static IKilnModel Load(int seed)
    {
        var file = new MemoryModelFile("language", seed);
        file.Int("language.dim", Dim).Int("language.layers", Depth);
        file.Random("embed", Words, Dim, 1f).Norm("norm", Dim).Random("out", Words, Dim);
        for (int l = 0; l < Depth; l++)
        {
            file.Norm($"l{l}.ln", Dim).Random($"l{l}.qkv", 3 * Dim, Dim).Norm($"l{l}.head_norm", Dim / 2)
                .Random($"l{l}.a", Dim, Dim).Vector($"l{l}.bias", Dim).Random($"l{l}.b", Dim, Dim).Random($"l{l}.c", Dim, 2 * Dim, 0.1f);
        }
        var type = Compiled.Value.GetType("Language.Everything", throwOnError: true)!;
        return (IKilnModel)type.GetMethod("Load", BindingFlags.Public | BindingFlags.Static)!.Invoke(null, new object[] { file })!;
    }

    [SkippableTheory]
    [MemberData(nameof(KernelPathCases.All), MemberType = typeof(KernelPathCases))]
    public void EveryOpCompilesAndMatchesItsEagerSemantics(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "A plan's generated loops", KernelPathCases.NoVnniForm);
        const int seed = 17;
        var model = Load(seed);
        using var plan = model.Compile(new PlanOptions(8, Threads: 2));
        output.WriteLine($"seed {seed}, path {path}");
        var eager = new AttentionContext(model.CreateKvCache(2, 16), 8);
        var compiled = new AttentionContext(model.CreateKvCache(2, 16), 8);
        var logits = new float[8 * Words];

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
            Array.Fill(logits, float.NaN);
            plan.Step(tokens, compiled, logits);
            for (int i = 0; i < expected.Data.Length; i++)
                Assert.True(Math.Abs(expected.Data[i] - logits[i]) <= 1e-4 + 1e-4 * Math.Abs(expected.Data[i]),
                    $"logit {i}: eager {expected.Data[i]}, compiled {logits[i]}");
        }

        Step([1, 2, 3, 4, 5], (0, 0, true), (1, 0, true), (2, 0, true), (3, 0, true), (4, 0, true));
        Step([6], (5, 0, true));
        Step([7, 8, 9, 10], (6, 0, true), (0, 1, true), (1, 1, false), (2, 1, true));
    }

    [Fact]
    public void TheReportShowsEveryFusionDecision()
    {
        var report = Load(3).Compile(4).FusionReport;
        output.WriteLine(report);
        foreach (var expected in new[]
        {
            "LayerNorm(Ln) fused into the input preparation",
            "(only when (layer % 2) == 0)",           // each branch's attention runs under its condition
            "(only when !((layer % 2) == 0))",
            "(only when layer == 0)",                 // each side of the tensor ?:
            "x ← 1f − ((1f − (((x + relu(act)) − (softplus(y)·0.5f)) + (exp(neg(relu(y))) / 4f))) / (1f + (0f * Dim)))", // one loop
            "rope([Qkv]) epilogue",                 // partial rope of adjacent pairs ends the tile
            "(gelu(x))·[B]ᵀ (the input chain computed per row while preparing) → x2 ← x + ([B] / (2f + Dim)) epilogue",
            "logits ← [Head]·0.5f epilogue",        // the result's scale is the last matmul's epilogue
        })
        {
            Assert.True(report.Contains(expected), $"missing \"{expected}\" in:\n{report}");
        }
    }
}
