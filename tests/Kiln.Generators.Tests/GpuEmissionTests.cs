using Microsoft.CodeAnalysis;

namespace Kiln.Generators.Tests;

/// <summary>
/// When the generator emits a GPU plan: only into a compilation that has Kiln.Gpu's marker type, never for an encoder
/// (its CPU plan alone), and for a decoder using an op with no GPU kernel, an error naming the op instead of a plan
/// that leaves it out.
/// </summary>
public sealed class GpuEmissionTests
{
    /// <summary>Stands in for a reference to Kiln.Gpu: the generator looks for this type by name.</summary>
    private const string Marker = "namespace Kiln.Gpu { public abstract class GpuPlan { } }";

    private const string Decoder = """
        using Kiln;

        namespace Test;

        [Model("tiny")]
        public partial class Tiny
        {
            [Hyper("{arch}.dim", Required = true)] public int Dim;
            [Weight("embd", "Vocab", "Dim")] public Tensor Embedding = null!;
            [Weight("norm", "Dim")] public Tensor Norm = null!;
            [Weight("out", "Vocab", "Dim")] public Tensor Output = null!;

            [Forward]
            public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
            {
                var x = Ops.Embedding(Embedding, tokens);
                /*BODY*/
                x = Ops.SelectRows(x, context);
                return Ops.Linear(Ops.RmsNorm(x, Norm, 1e-5f), Output);
            }
        }
        """;

    private const string Encoder = """
        using Kiln;

        namespace Test;

        [Model("tiny", Kind = ModelKind.Encoder)]
        public partial class Tiny
        {
            [Hyper("{arch}.dim", Required = true)] public int Dim;
            [Weight("embd", "Vocab", "Dim")] public Tensor Embedding = null!;

            [Forward]
            public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
            {
                var x = Ops.Embedding(Embedding, tokens);
                x = x + Ops.Attention(x, x, x, context, 0, 2, 2, causal: false);
                return Ops.L2Normalize(Ops.Pool(x, context, Pooling.Mean), 1e-12f);
            }
        }
        """;

    private static CSharpGeneratorTest<KilnGenerator>.Run Generate(string model, bool gpu)
    {
        var sources = new List<(string, string)> { ("Tiny.cs", model) };
        if (gpu) sources.Add(("GpuMarker.cs", Marker));
        return CSharpGeneratorTest<KilnGenerator>.RunGenerator(CSharpGeneratorTest<KilnGenerator>.CreateCompilation(sources.ToArray()));
    }

    private static string[] HintNames(CSharpGeneratorTest<KilnGenerator>.Run run) => run.Sources.Select(s => s.HintName).OrderBy(n => n, StringComparer.Ordinal).ToArray();

    [Fact]
    public void DecoderGetsAGpuPlanOnlyWhereKilnGpuIsThere()
    {
        string model = Decoder.Replace("/*BODY*/", "");
        var cpuOnly = Generate(model, gpu: false);
        Assert.Empty(cpuOnly.GeneratorDiagnostics);
        Assert.Equal(["Test.Tiny.g.cs"], HintNames(cpuOnly));

        var both = Generate(model, gpu: true);
        Assert.Empty(both.GeneratorDiagnostics);
        Assert.Equal(["Test.Tiny.Gpu.g.cs", "Test.Tiny.g.cs"], HintNames(both));
        Assert.Contains("CompileGpu", both.Sources.Single(s => s.HintName == "Test.Tiny.Gpu.g.cs").SourceText.ToString());
    }

    [Fact]
    public void EncoderGetsItsCpuPlanOnly()
    {
        var run = Generate(Encoder, gpu: true);
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Equal(["Test.Tiny.g.cs"], HintNames(run));
    }

    [Theory]
    [InlineData("x = Ops.L2Normalize(x, 1e-12f);", "Ops.L2Normalize has no GPU kernel")]
    public void DecoderOpWithoutAGpuKernelIsAnErrorNamingIt(string body, string reason)
    {
        var run = Generate(Decoder.Replace("/*BODY*/", body), gpu: true);
        var diagnostic = Assert.Single(run.GeneratorDiagnostics, d => d.Id.StartsWith("KLN", StringComparison.Ordinal));
        Assert.Equal("KLN0009", diagnostic.Id);
        Assert.Equal(DiagnosticSeverity.Error, diagnostic.Severity);
        Assert.Contains(reason, diagnostic.GetMessage());
        Assert.Equal(["Test.Tiny.g.cs"], HintNames(run)); // the CPU plan is still there
    }
}
