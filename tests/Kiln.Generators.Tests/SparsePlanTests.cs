using System.Reflection;
using Kiln.Kernels.Quantized;
using Kiln.Loading;
using Kiln.Testing;
using Kiln.Tests;

namespace Kiln.Generators.Tests;

/// <summary>
/// [Sparse] through the generator: weights pruned at load (2:4 on the model, blocks on one weight) give a plan whose
/// logits are the dense Q8_0 twin's bits (PlanOptions.Sparsity = None on the same pruned weights) and close to the eager
/// forward's, on each kernel path in turn; the report says which layout each weight got and why; a weight that is not
/// 2:4 is refused at load.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class SparsePlanTests
{
    private const string Source = """
        using Kiln;

        namespace SparseModels;

        [Model("pruned")]
        [Quantize(WeightFormat.Q8_0)]
        [Sparse(SparsePattern.TwoFour, Prune = true)]
        public partial class Pruned
        {
            [Hyper("{arch}.dim", Required = true)] public int Dim;
            [Hyper("{arch}.layers", Required = true)] public int Depth;

            [Weight("embed", "Words", "Dim")] public Tensor Embed = null!;
            [Weight("final_norm", "Dim")] public Tensor FinalNorm = null!;
            [Weight("head", "Words", "Dim")] public Tensor Head = null!;
            [Layers("layer{0}/", nameof(Depth))] public Layer[] Stack = null!;

            public partial class Layer
            {
                [Weight("norm", "Dim")] public Tensor Norm = null!;
                [Weight("q", "Dim", "Dim")] public Tensor Q = null!;
                [Weight("o", "Dim", "Dim")] public Tensor O = null!;
                [Sparse(SparsePattern.Blocks, Prune = true, KeepFraction = 0.5)]
                [Weight("up", "Ffn", "Dim")] public Tensor Up = null!;
                [Weight("down", "Dim", "Ffn")] public Tensor Down = null!;
            }

            [Forward]
            public Tensor Run(ReadOnlySpan<int> tokens, AttentionContext context)
            {
                var h = Ops.Embedding(Embed, tokens);
                for (int i = 0; i < Depth; i++)
                {
                    var n = Ops.RmsNorm(h, Stack[i].Norm, 1e-6f);
                    h += Ops.Linear(Ops.Linear(n, Stack[i].Q), Stack[i].O);
                    h += Ops.Linear(Ops.Gelu(Ops.Linear(n, Stack[i].Up)), Stack[i].Down);
                }
                return Ops.Linear(Ops.RmsNorm(Ops.SelectRows(h, context), FinalNorm, 1e-6f), Head);
            }
        }

        [Model("strict")]
        [Sparse(SparsePattern.TwoFour)]
        public partial class Strict
        {
            [Hyper("{arch}.dim", Required = true)] public int Dim;
            [Weight("embed", "Words", "Dim")] public Tensor Embed = null!;
            [Weight("head", "Words", "Dim")] public Tensor Head = null!;

            [Forward]
            public Tensor Run(ReadOnlySpan<int> tokens, AttentionContext context) =>
                Ops.Linear(Ops.SelectRows(Ops.Embedding(Embed, tokens), context), Head);
        }
        """;

    private static readonly Lazy<Assembly> Models = new(() =>
    {
        var compilation = CSharpGeneratorTest<KilnGenerator>.CreateCompilation(("SparseModels.cs", Source));
        var run = CSharpGeneratorTest<KilnGenerator>.RunGenerator(compilation);
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Empty(run.CompilationErrors);
        return CSharpGeneratorTest<KilnGenerator>.Load(run.Output);
    });

    private static IKilnModel Load(string typeName, ModelFile file)
    {
        try
        {
            return (IKilnModel)Models.Value.GetType(typeName, throwOnError: true)!.GetMethod("Load", BindingFlags.Public | BindingFlags.Static)!.Invoke(null, [file])!;
        }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            throw e.InnerException;
        }
    }

    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void PrunedWeightsGiveTheDenseTwinsBitsAndTheReportSaysWhy(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "The sparse Q8_0 plan", KernelPathCases.NoVnniForm);
        const int dim = 64, ffn = 64, depth = 2, words = 29, maxTokens = 6;
        var file = new MemoryModelFile("pruned", seed: 5);
        file.Int("pruned.dim", dim).Int("pruned.layers", depth);
        file.Random("embed", words, dim).Norm("final_norm", dim).Random("head", words, dim);
        for (int l = 0; l < depth; l++)
            file.Norm($"layer{l}/norm", dim).Random($"layer{l}/q", dim, dim).Random($"layer{l}/o", dim, dim)
                .Random($"layer{l}/up", ffn, dim).Random($"layer{l}/down", dim, ffn);
        var model = Load("SparseModels.Pruned", file);
        using var sparse = model.Compile(new PlanOptions(maxTokens, 2));
        using var dense = model.Compile(new PlanOptions(maxTokens, 2) { Sparsity = SparsePattern.None });

        string report = sparse.FusionReport;
        foreach (var expected in new[]
        {
            "2:4 sparse Q8_0", "as [Sparse(SparsePattern.TwoFour)] on Pruned asks; magnitude-pruned at load (the 2 smallest of every 4 zeroed)",
            "block-sparse Q8_0", "as [Sparse(SparsePattern.Blocks)] on the weight asks; magnitude-pruned at load (the 8×32 tiles of smallest norm zeroed, 0.5 kept)",
            "Q8_0x8 interleaved 2:4 (16 of 32 values", "Q8_0x8 interleaved block-sparse 8×32 (",
        })
            Assert.True(report.Contains(expected), $"missing \"{expected}\" in:\n{report}");
        Assert.DoesNotContain("2:4 (16 of 32", dense.FusionReport);

        var tokens = new[] { 3, 7, 11, 2, 28 };
        int vocab = model.VocabSize;
        var sparseLogits = new float[maxTokens * vocab];
        var denseLogits = new float[maxTokens * vocab];
        var contexts = new AttentionContext[3];
        for (int i = 0; i < contexts.Length; i++)
        {
            contexts[i] = new AttentionContext(model.CreateKvCache(1, 16), maxTokens);
            for (int p = 0; p < tokens.Length; p++) contexts[i].Add(p, 0, true);
        }
        sparse.Step(tokens, contexts[0], sparseLogits);
        dense.Step(tokens, contexts[1], denseLogits);
        Assert.Equal(denseLogits, sparseLogits); // the sparse kernels skip only zero work, on every path

        var eager = model.ForwardEager(tokens, contexts[2]).Data; // the same pruned weights, in float
        double scale = eager.Max(MathF.Abs);
        for (int i = 0; i < eager.Length; i++)
            Assert.True(Math.Abs(eager[i] - sparseLogits[i]) <= 0.03 * scale, $"{path} logit {i}: eager {eager[i]}, sparse plan {sparseLogits[i]}");
    }

    [Fact]
    public void AWeightThatIsNotTwoFourIsRefusedAtLoadNamingTensorAndRow()
    {
        var file = new MemoryModelFile("strict", seed: 6);
        file.Int("strict.dim", 32).Random("embed", 7, 32).Random("head", 7, 32);
        var error = Assert.Throws<ModelLoadException>(() => Load("SparseModels.Strict", file));
        Assert.Contains("tensor 'head' row 0", error.Message);
        Assert.Contains("allows at most 2 of every 4", error.Message);
    }
}
