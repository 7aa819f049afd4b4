using System.Collections.Immutable;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Ir;
using Kiln.Generators.Passes;
using Kiln.Generators.Syntax;
using Microsoft.CodeAnalysis;

namespace Kiln.Generators.Tests;

/// <summary>One tiny model per KLN id: the id, severity Error, the location's text, no exception, and no plan emitted.</summary>
public sealed class DiagnosticTests
{
    private const string Template = """
        using Kiln;

        namespace Test;

        [Model("tiny")]
        public partial class Tiny
        {
            [Hyper("{arch}.dim", Required = true)] public int Dim;
            [Hyper("{arch}.hidden")] public int Hidden = 8;
            [Weight("embd", "Vocab", "Dim")] public Tensor Embedding = null!;
            [Weight("norm", "Dim")] public Tensor Norm = null!;
            [Weight("out", "Vocab", "Dim")] public Tensor Output = null!;
            /*MEMBERS*/

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

    private static string Model(string members = "", string body = "") =>
        Template.Replace("/*MEMBERS*/", members).Replace("/*BODY*/", body);

    private static (CSharpGeneratorTest<KilnGenerator>.Run Run, string Source) Generate(string source)
    {
        var compilation = CSharpGeneratorTest<KilnGenerator>.CreateCompilation(("Tiny.cs", source));
        return (CSharpGeneratorTest<KilnGenerator>.RunGenerator(compilation), source);
    }

    /// <summary>Exactly the expected Kiln diagnostic, as an error, located on text that starts with <paramref name="locatedText"/>.</summary>
    private static Diagnostic AssertSingle(string source, string id, string locatedText)
    {
        var (run, text) = Generate(source);
        var kiln = run.GeneratorDiagnostics.Where(d => d.Id.StartsWith("KLN")).ToList();
        var diagnostic = Assert.Single(kiln);
        Assert.Equal(id, diagnostic.Id);
        Assert.Equal(DiagnosticSeverity.Error, diagnostic.Severity);
        var span = diagnostic.Location.SourceSpan;
        string located = text.Substring(span.Start, span.Length);
        Assert.StartsWith(locatedText, located);
        Assert.Equal("Tiny.cs", diagnostic.Location.GetLineSpan().Path);
        Assert.Empty(run.Sources); // a model with errors gets no plan
        return diagnostic;
    }

    [Fact]
    public void ValidModelHasNoDiagnosticsAndCompiles()
    {
        var (run, _) = Generate(Model());
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Single(run.Sources);
        Assert.Empty(run.CompilationErrors);
    }

    [Theory]
    [InlineData("while (Dim > 100) { }", "while")]
    [InlineData("switch (Dim) { default: break; }", "switch")]
    [InlineData("foreach (var i in new int[0]) { }", "foreach")]
    [InlineData("try { } finally { }", "try")]
    [InlineData("Func<Tensor> f = () => x;", "Func<Tensor> f")]
    [InlineData("x = x + Ops.Silu(x switch { _ => x });", "x switch")]
    [InlineData("do { } while (Dim > 100);", "do")]
    public void Kln0001UnsupportedConstruct(string body, string located) =>
        AssertSingle(Model(body: body), "KLN0001", located);

    [Fact]
    public void Kln0002UnknownOp()
    {
        var diagnostic = AssertSingle(Model(members: "private static Tensor Helper(Tensor t) => t;", body: "x = Helper(x);"), "KLN0002", "Helper(x)");
        Assert.Contains("Tiny.Helper", diagnostic.GetMessage());
    }

    [Fact]
    public void Kln0003ShapeMismatchNamesBothShapes()
    {
        var diagnostic = AssertSingle(Model(members: "[Weight(\"w\", \"Hidden\", \"Hidden\")] public Tensor W = null!;", body: "x = Ops.Linear(x, W);"),
            "KLN0003", "W");
        Assert.Contains("[T, Dim]", diagnostic.GetMessage());
        Assert.Contains("[Hidden, Hidden]", diagnostic.GetMessage());
    }

    [Fact]
    public void Kln0003LstmWhoseRecurrentWeightIsNotFourGatesOfTheHiddenSize()
    {
        var diagnostic = AssertSingle(Model(
                members: "[Weight(\"ih\", \"4*Dim\", \"Dim\")] public Tensor Ih = null!; [Weight(\"hh\", \"3*Dim\", \"Dim\")] public Tensor Hh = null!;",
                body: "x = Ops.Lstm(Ops.Linear(x, Ih), Hh, context, 0);"),
            "KLN0003", "Hh");
        Assert.Contains("[4*Dim, Dim]", diagnostic.GetMessage());
    }

    [Fact]
    public void Kln0003LstmGatesOfAnotherWidth() =>
        AssertSingle(Model(
                members: "[Weight(\"ih\", \"Hidden\", \"Dim\")] public Tensor Ih = null!; [Weight(\"hh\", \"4*Dim\", \"Dim\")] public Tensor Hh = null!;",
                body: "x = Ops.Lstm(Ops.Linear(x, Ih), Hh, context, 0);"),
            "KLN0003", "Ops.Linear(x, Ih)");

    [Fact]
    public void Kln0003GruWhoseRecurrentBiasIsNotThreeGatesOfTheHiddenSize()
    {
        var diagnostic = AssertSingle(Model(
                members: "[Weight(\"ih\", \"3*Dim\", \"Dim\")] public Tensor Ih = null!; [Weight(\"hh\", \"3*Dim\", \"Dim\")] public Tensor Hh = null!; [Weight(\"bh\", \"Dim\")] public Tensor Bh = null!;",
                body: "x = Ops.Gru(Ops.Linear(x, Ih), Hh, Bh, context, 0);"),
            "KLN0003", "Bh");
        Assert.Contains("3*Dim", diagnostic.GetMessage());
    }

    [Fact]
    public void Kln0003CausalConvolutionWhoseKernelsAreNotOnePerChannel()
    {
        var diagnostic = AssertSingle(Model(
                members: "[Weight(\"conv\", \"Hidden\", \"Dim\")] public Tensor Conv = null!;",
                body: "x = Ops.CausalConv1d(x, Conv, context, 0);"),
            "KLN0003", "Conv");
        Assert.Contains("channels", diagnostic.GetMessage());
    }

    [Fact]
    public void Kln0003SelectiveScanWhoseInputMatrixIsNotOfTheStateSize()
    {
        var diagnostic = AssertSingle(Model(
                members: "[Weight(\"a\", \"Dim\", \"Hidden\")] public Tensor A = null!; [Weight(\"d\", \"Dim\")] public Tensor D = null!;",
                body: "x = Ops.SelectiveScan(x, x, A, Ops.Silu(x), x, D, x, context, 0);"),
            "KLN0003", "Ops.Silu(x)");
        Assert.Contains("[T, Hidden]", diagnostic.GetMessage());
    }

    [Fact]
    public void Kln0003AddOfDifferentShapes() =>
        AssertSingle(Model(members: "[Weight(\"w\", \"Hidden\", \"Dim\")] public Tensor W = null!;", body: "x = x + Ops.Linear(x, W);"),
            "KLN0003", "Ops.Linear(x, W)");

    [Fact]
    public void Kln0004WeightThatIsNotATensor() =>
        AssertSingle(Model(members: "[Weight(\"w\", \"Dim\")] public float[] W = null!;"), "KLN0004", "float[]");

    [Fact]
    public void Kln0004HyperOfWrongType() =>
        AssertSingle(Model(members: "[Hyper(\"{arch}.name\")] public string Name = \"\";"), "KLN0004", "string");

    [Fact]
    public void Kln0004WeightWhereActivationExpected() =>
        AssertSingle(Model(body: "x = x + Ops.Silu(Norm);"), "KLN0004", "Norm");

    [Fact]
    public void Kln0005TensorWithoutWeight() =>
        AssertSingle(Model(members: "public Tensor Bias = null!;", body: "x = x + Bias;"), "KLN0005", "Bias");

    [Theory]
    [InlineData("Dim+")]
    [InlineData("Dim*Unknown")]
    [InlineData("Dim+Unknown")]
    [InlineData("Dim*")]
    public void Kln0006InvalidShapeExpression(string dim) =>
        AssertSingle(Model(members: $"[Weight(\"w\", \"{dim}\")] public Tensor W = null!;"), "KLN0006", $"\"{dim}\"");

    [Fact]
    public void Kln0007NotPartial() =>
        AssertSingle(Model().Replace("public partial class Tiny", "public class Tiny"), "KLN0007", "Tiny");

    [Fact]
    public void Kln0007WrongForwardSignature() =>
        AssertSingle(Model().Replace("public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)",
            "public Tensor Forward(int[] tokens, AttentionContext context)"), "KLN0007", "Forward");

    [Fact]
    public void Kln0007NoForward() =>
        AssertSingle(Model().Replace("[Forward]", ""), "KLN0007", "Tiny");

    [Fact]
    public void Kln0008LayersNotAnArrayOfANestedClass() =>
        AssertSingle(Model(members: "[Layers(\"blk.{0}.\", nameof(Dim))] public int[] Blocks = null!;"), "KLN0008", "int[]");

    [Fact]
    public void Kln0008CountNotAnIntHyper() =>
        AssertSingle(Model(members: "[Layers(\"blk.{0}.\", \"Missing\")] public Block[] Blocks = null!; public partial class Block { }"), "KLN0008", "Block[]");

    /// <summary>The template with Hugging Face names on its required hyperparameter and its three weights.</summary>
    private static string HuggingFaceModel(string members = "") => Model(members)
        .Replace("[Hyper(\"{arch}.dim\", Required = true)]", "[Hyper(\"{arch}.dim\", Required = true, HuggingFace = \"hidden_size\")]")
        .Replace("[Weight(\"embd\", \"Vocab\", \"Dim\")]", "[Weight(\"embd\", \"Vocab\", \"Dim\", HuggingFace = \"embed.weight\")]")
        .Replace("[Weight(\"norm\", \"Dim\")]", "[Weight(\"norm\", \"Dim\", HuggingFace = \"norm.weight\", FromHuggingFace = HuggingFaceConversion.AddOne)]")
        .Replace("[Weight(\"out\", \"Vocab\", \"Dim\")]", "[Weight(\"out\", \"Vocab\", \"Dim\", HuggingFace = \"lm_head.weight\")]");

    [Fact]
    public void HuggingFaceNamesOnEveryWeightAreValidAndBindEitherNaming()
    {
        var (run, _) = Generate(HuggingFaceModel("[Hyper(HuggingFace = \"extra\")] public int Extra = 3;"));
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Empty(run.CompilationErrors);
        string text = Assert.Single(run.Sources).SourceText.ToString();
        Assert.Contains("name = huggingFace ? \"norm.weight\" : \"norm\";", text);
        Assert.Contains("if (huggingFace) model.Norm = global::Kiln.Loading.HuggingFaceConversions.AddOne(file, name, model.Norm);", text);
        Assert.Contains("key = huggingFace ? \"hidden_size\" : \"tiny.dim\";", text);
    }

    [Fact]
    public void OnlyGgufNamesRejectAHuggingFaceFileAtLoad()
    {
        var (run, _) = Generate(Model());
        string text = Assert.Single(run.Sources).SourceText.ToString();
        Assert.Contains("if (file.Naming != global::Kiln.Loading.ModelNaming.Gguf)", text);
        Assert.DoesNotContain("huggingFace", text);
    }

    [Fact]
    public void Kln0007AWeightWithoutAHuggingFaceNameBesideOthersWithOne() =>
        AssertSingle(HuggingFaceModel().Replace(", HuggingFace = \"lm_head.weight\"", ""), "KLN0007", "Weight(\"out\"");

    [Fact]
    public void Kln0007ARequiredHyperWithoutAHuggingFaceKey() =>
        AssertSingle(HuggingFaceModel().Replace(", HuggingFace = \"hidden_size\"", ""), "KLN0007", "int");

    [Fact]
    public void Kln0007AHyperWithNoKeyAtAll() =>
        AssertSingle(Model(members: "[Hyper] public int Extra;"), "KLN0007", "int");

    [Theory]
    [InlineData("FromHuggingFace = HuggingFaceConversion.RopeHalvesToPairs", "needs HeadSize")]
    [InlineData("FromHuggingFace = HuggingFaceConversion.RopeHalvesToPairs, HeadSize = \"Vocab\"", "'Vocab' is not an int member")]
    [InlineData("HeadSize = \"Dim\"", "only FromHuggingFace = HuggingFaceConversion.RopeHalvesToPairs reads")]
    public void Kln0007AMalformedConversion(string arguments, string message)
    {
        var diagnostic = AssertSingle(HuggingFaceModel().Replace("HuggingFace = \"lm_head.weight\"", "HuggingFace = \"lm_head.weight\", " + arguments),
            "KLN0007", "Weight(\"out\"");
        Assert.Contains(message, diagnostic.GetMessage());
    }

    [Fact]
    public void Kln0007AConversionWithoutAName() =>
        AssertSingle(Model().Replace("[Weight(\"norm\", \"Dim\")]", "[Weight(\"norm\", \"Dim\", FromHuggingFace = HuggingFaceConversion.AddOne)]"), "KLN0007", "Weight(\"norm\"");

    [Fact]
    public void Kln0008LayersWithoutTheHuggingFacePrefix() =>
        AssertSingle(HuggingFaceModel("[Layers(\"blk.{0}.\", nameof(Count))] public Block[] Blocks = null!; [Hyper(\"{arch}.count\")] public int Count = 1; " +
            "public partial class Block { [Weight(\"w\", \"Dim\", HuggingFace = \"w\")] public Tensor W = null!; }"), "KLN0008", "Block[]");

    [Fact]
    public void Kln0008AHuggingFacePrefixWithoutTheLayerIndex() =>
        AssertSingle(Model(members: "[Layers(\"blk.{0}.\", nameof(Count), HuggingFace = \"layers.\")] public Block[] Blocks = null!; [Hyper(\"{arch}.count\")] public int Count = 1; public partial class Block { }"),
            "KLN0008", "Block[]");

    [Fact]
    public void Kln0010QuantizeOnAMemberThatIsNotAWeight() =>
        AssertSingle(Model(members: "[Quantize(WeightFormat.Q8_0)] [Hyper(\"{arch}.extra\")] public int Extra;"), "KLN0010", "Quantize(WeightFormat.Q8_0)");

    [Fact]
    public void Kln0010QuantizeOnTheEmbeddingTable()
    {
        var diagnostic = AssertSingle(Model().Replace("[Weight(\"embd\"", "[Quantize(WeightFormat.Q4_0)] [Weight(\"embd\""), "KLN0010", "Quantize(WeightFormat.Q4_0)");
        Assert.Contains("Embedding", diagnostic.GetMessage());
    }

    [Fact]
    public void Kln0010QuantizeOnANormWeight() =>
        AssertSingle(Model().Replace("[Weight(\"norm\"", "[Quantize(WeightFormat.Q8_0)] [Weight(\"norm\""), "KLN0010", "Quantize(WeightFormat.Q8_0)");

    [Fact]
    public void Kln0010QuantizeOnAnUnusedWeight() =>
        AssertSingle(Model(members: "[Quantize(WeightFormat.Q8_0)] [Weight(\"w\", \"Dim\", \"Dim\")] public Tensor W = null!;"), "KLN0010", "Quantize(WeightFormat.Q8_0)");

    [Fact]
    public void Kln0010QuantizeOnALayerClass() =>
        AssertSingle(Model(members: "[Layers(\"blk.{0}.\", nameof(Count))] public Block[] Blocks = null!; [Hyper(\"{arch}.count\")] public int Count = 1; [Quantize(WeightFormat.Q8_0)] public partial class Block { }"),
            "KLN0010", "Quantize(WeightFormat.Q8_0)");

    [Fact]
    public void Kln0010QuantizeWithAValueThatIsNotAFormat() =>
        AssertSingle(Model().Replace("[Weight(\"out\"", "[Quantize((WeightFormat)42)] [Weight(\"out\""), "KLN0010", "Quantize((WeightFormat)42)");

    [Fact]
    public void Kln0014SparseOnAMemberThatIsNotAWeight() =>
        AssertSingle(Model(members: "[Sparse(SparsePattern.TwoFour)] [Hyper(\"{arch}.extra\")] public int Extra;"), "KLN0014", "Sparse(SparsePattern.TwoFour)");

    [Fact]
    public void Kln0014SparseOnANormWeight() =>
        AssertSingle(Model().Replace("[Weight(\"norm\"", "[Sparse(SparsePattern.Blocks)] [Weight(\"norm\""), "KLN0014", "Sparse(SparsePattern.Blocks)");

    [Fact]
    public void Kln0014BlockPruningWithoutAKeepFraction() =>
        AssertSingle(Model().Replace("[Weight(\"out\"", "[Sparse(SparsePattern.Blocks, Prune = true)] [Weight(\"out\""), "KLN0014", "Sparse(SparsePattern.Blocks, Prune = true)");

    [Fact]
    public void Kln0014SparseOnAWeightQuantizedToAnotherFormat() =>
        AssertSingle(Model().Replace("[Weight(\"out\"", "[Quantize(WeightFormat.F32)] [Sparse(SparsePattern.TwoFour)] [Weight(\"out\""), "KLN0014", "Sparse(SparsePattern.TwoFour)");

    [Fact]
    public void QuantizeOnTheClassAndOnALinearWeightIsValidAndReported()
    {
        string source = Model(members: "[Quantize(WeightFormat.Q4_0)] [Weight(\"w\", \"Hidden\", \"Dim\")] public Tensor W = null!; [Weight(\"w2\", \"Dim\", \"Hidden\")] public Tensor W2 = null!;",
                body: "x = x + Ops.Linear(Ops.Silu(Ops.Linear(x, W)), W2);")
            .Replace("[Model(\"tiny\")]", "[Model(\"tiny\")] [Quantize(WeightFormat.Q8_0)]");
        var (run, _) = Generate(source);
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Empty(run.CompilationErrors);
        string text = Assert.Single(run.Sources).SourceText.ToString();
        Assert.Contains("W → _w [Hidden, Dim], one segment: Q4_0x8 interleaved, as [Quantize(WeightFormat.Q4_0)] on the weight asks", text);
        Assert.Contains("W2 → _w2 [Dim, Hidden], one segment: Q8_0x8 interleaved, as [Quantize(WeightFormat.Q8_0)] on Tiny asks", text);
        Assert.Contains("global::Kiln.Kernels.MatMul.Gemm.Q4_0(Weights, Input, first, end, ref epilogue); // [Quantize(Q4_0)]: the one kernel needed", text);
        Assert.DoesNotContain("switch (Weights.Format)", text); // explicit formats emit only their own kernel
    }

    [Fact]
    public void Kln0009InternalErrorBecomesADiagnostic()
    {
        // A graph whose result refers to a value that does not exist: the planner throws inside, and must report instead.
        var location = new LocationInfo("Tiny.cs", 0, 4, 0, 0, 0, 4);
        var model = new ModelInfo("Test", "Tiny", "public", "tiny", default, default, default, default, default, "Forward", default, location);
        var graph = new Graph(model, EquatableArray<Node>.Empty, EquatableArray.Create(new RegionInfo(0, false, "", "", "")), EquatableArray<GuardInfo>.Empty, Result: 7);
        var result = Planner.Build(new GraphResult("Tiny.g.cs", graph, EquatableArray<DiagnosticInfo>.Empty), CancellationToken.None);

        Assert.Null(result.Plan);
        var diagnostic = Assert.Single(result.Diagnostics).ToDiagnostic();
        Assert.Equal("KLN0009", diagnostic.Id);
        Assert.Equal(DiagnosticSeverity.Error, diagnostic.Severity);
        Assert.Equal(0, diagnostic.Location.SourceSpan.Start);
        Assert.Equal(4, diagnostic.Location.SourceSpan.Length);
        Assert.Contains("Tiny", diagnostic.GetMessage());
    }

    [Fact]
    public void EveryDescriptorIsListedInTheReleaseTable()
    {
        string table = File.ReadAllText(Path.Combine(CSharpGeneratorTest<KilnGenerator>.RepoRoot, "src", "Generators", "AnalyzerReleases.Unshipped.md"));
        foreach (string id in Enumerable.Range(1, 14).Select(i => $"KLN{i:0000}"))
        {
            Assert.Equal(id, id == "KLN0009" ? DiagnosticDescriptors.InternalError.Id : DiagnosticDescriptors.ById(id).Id);
            Assert.Equal(DiagnosticSeverity.Error, DiagnosticDescriptors.ById(id).DefaultSeverity);
            Assert.Contains(id + " |", table);
        }
    }

    [Fact]
    public void Kln0011TwoAttentionsWritingOneCacheLayer()
    {
        var diagnostic = AssertSingle(Model(
                members: "[Weight(\"q\", \"Dim\", \"Dim\")] public Tensor Q = null!;",
                body: "var a = Ops.Attention(Ops.Linear(x, Q), x, x, context, 0, 2, 2); x = x + Ops.Attention(a, x, x, context, 0, 2, 2);"),
            "KLN0011", "Ops.Attention(a");
        Assert.Contains("layer '0'", diagnostic.GetMessage());
    }

    private static string Encoder(string body, string result = "Ops.L2Normalize(Ops.Pool(x, context, Pooling.Mean), 1e-12f)") => $$"""
        using System;
        using Kiln;

        namespace Test;

        [Model("tiny", Kind = ModelKind.Encoder)]
        public partial class Tiny
        {
            [Hyper("{arch}.dim", Required = true)] public int Dim;
            [Weight("embd", "Vocab", "Dim")] public Tensor Embedding = null!;
            [Weight("types", "TypeCount", "Dim")] public Tensor Types = null!;
            [Weight("q", "Dim", "Dim")] public Tensor Q = null!;

            [Forward]
            public Tensor Forward(ReadOnlySpan<int> tokens, AttentionContext context)
            {
                var x = Ops.Embedding(Embedding, tokens) + Ops.TokenTypeEmbedding(Types, context);
                {{body}}
                return {{result}};
            }
        }
        """;

    [Fact]
    public void Kln0012EncoderAttentionThatDoesNotStateCausality() =>
        AssertSingle(Encoder("x = x + Ops.Attention(Ops.Linear(x, Q), x, x, context, 0, 2, 2);"), "KLN0012", "Ops.Attention(Ops.Linear");

    [Fact]
    public void Kln0013SelectRowsInAnEncoder() =>
        AssertSingle(Encoder("", result: "Ops.SelectRows(x, context)"), "KLN0013", "Ops.SelectRows");

    [Fact]
    public void Kln0003PoolingPooledRows() =>
        AssertSingle(Encoder("", result: "Ops.Pool(Ops.Pool(x, context, Pooling.Cls), context, Pooling.Mean)"), "KLN0003", "Ops.Pool(x");

    [Fact]
    public void EncoderThatStatesCausalityCompilesAndSaysWhatItIs()
    {
        var (run, _) = Generate(Encoder("x = x + Ops.Attention(Ops.Linear(x, Q), x, x, context, 0, 2, 2, causal: false); x = x + Ops.Attention(x, x, x, context, 0, 2, 2, causal: true);"));
        Assert.Empty(run.GeneratorDiagnostics); // two attentions on "layer" 0: an encoder writes no cache
        Assert.Empty(run.CompilationErrors);
        string source = Assert.Single(run.Sources).SourceText.ToString();
        Assert.Contains("Kind: encoder (no KV cache)", source);
        Assert.Contains("the result is one row of Dim per sequence", source);
        Assert.Contains("bidirectional GQA within each sequence", source);
        Assert.Contains("causal GQA within each sequence", source);
        Assert.Contains("each gathered row decoded by itself, by token type", source);
    }

    [Fact]
    public void AttentionsInTheTwoBranchesOfAnIfMayShareALayer()
    {
        var (run, _) = Generate(Model(body: "Tensor a; if (Dim > 4) a = Ops.Attention(x, x, x, context, 0, 2, 2); else a = Ops.Attention(x, x, x, context, 0, 2, 2, window: 3); x = x + a;"));
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Empty(run.CompilationErrors);
    }

    [Fact]
    public void Kln0004RopeStyleThatIsNotAConstant() =>
        AssertSingle(Model(body: "RopeStyle style = Dim > 4 ? RopeStyle.NeoX : RopeStyle.Adjacent; x = Ops.Rope(x, context, 4, 10000f, style, 0);"),
            "KLN0004", "style");

    [Fact]
    public void Kln0004RopeThatChangesPerLayer() =>
        AssertSingle(Model(members: "[Hyper(\"{arch}.layers\")] public int Count = 2; [Layers(\"blk.{0}.\", nameof(Count))] public Block[] Blocks = null!; public partial class Block { }",
                body: "for (int layer = 0; layer < Count; layer++) { x = Ops.Rope(x, context, 4, 100f * (layer + 1)); }"),
            "KLN0004", "Ops.Rope(x, context, 4, 100f * (layer + 1))");

    [Fact]
    public void Kln0003SliceWhoseLengthChangesPerLayer() =>
        AssertSingle(Model(members: "[Hyper(\"{arch}.layers\")] public int Count = 2; [Layers(\"blk.{0}.\", nameof(Count))] public Block[] Blocks = null!; public partial class Block { }",
                body: "for (int layer = 0; layer < Count; layer++) { x = x + Ops.Slice(Ops.Concat(x, x), layer, Dim); }"),
            "KLN0003", "Ops.Slice(Ops.Concat(x, x), layer, Dim)");

    [Fact]
    public void Kln0003BranchesThatLeaveALocalInDifferentShapes() =>
        AssertSingle(Model(body: "var y = x; if (Dim > 4) y = Ops.Slice(x, 0, 2); x = x + Ops.Silu(x);"),
            "KLN0003", "if");

    [Fact]
    public void Kln0001AssigningAScalarLocal() =>
        AssertSingle(Model(body: "float scale = 2f; scale = 3f; x = x * scale;"), "KLN0001", "scale = 3f;");

    [Fact]
    public void Kln0004ArithmeticOnWeightsAlone() =>
        AssertSingle(Model(body: "x = x + Ops.Silu(x) * (Norm + Norm);"), "KLN0004", "Norm + Norm");

    // Per-layer hyperparameters and optional layer weights (a hybrid's per-layer choice).
    private const string OneLayer = "[Hyper(\"{arch}.count\")] public int Count = 1; [Layers(\"blk.{0}.\", nameof(Count))] public Block[] Blocks = null!; ";

    [Fact]
    public void Kln0007APerLayerHyperWithoutLayersToCount() =>
        AssertSingle(Model(members: "[Hyper(\"{arch}.per_layer\")] public int[] PerLayer = null!;"), "KLN0007", "int[]");

    [Fact]
    public void Kln0004APerLayerHyperOfAnotherElementType() =>
        AssertSingle(Model(members: OneLayer + "[Hyper(\"{arch}.per_layer\")] public long[] PerLayer = null!; public partial class Block { }"), "KLN0004", "long[]");

    [Fact]
    public void Kln0007AnOptionalModelWeight() =>
        AssertSingle(Model().Replace("[Weight(\"norm\", \"Dim\")]", "[Weight(\"norm\", \"Dim\", Optional = true)]"), "KLN0007", "Tensor");

    [Fact]
    public void Kln0007AnOptionalWeightWithATie() =>
        AssertSingle(Model(members: OneLayer + "public partial class Block { [Weight(\"w\", \"Dim\", TiedTo = \"v\", Optional = true)] public Tensor W = null!; }"), "KLN0007", "Tensor");

    [Fact]
    public void Kln0001IndexingAnArrayThatIsNotAModelMember() =>
        AssertSingle(Model(body: "x = x * new float[] { 2f }[0];"), "KLN0001", "new float[] { 2f }[0]");

    [Fact]
    public void Kln0004AttentionHeadsThatChangePerLayer() =>
        AssertSingle(Model(
            members: OneLayer + "[Hyper(\"{arch}.kv\")] public int[] KvHeads = null!; public partial class Block { }",
            body: "for (int layer = 0; layer < Count; layer++) { x = x + Ops.Attention(x, x, x, context, layer, 2, KvHeads[layer]); }"),
            "KLN0004", "Ops.Attention");

    [Fact]
    public void PerLayerChoicesAndOptionalWeightsCompile()
    {
        var (run, _) = Generate(Model(
            members: OneLayer + "[Hyper(\"{arch}.kind\")] public int[] Kind = null!; [Hyper(\"{arch}.gain\")] public float[] Gain = { 1f };" +
                     "public partial class Block { [Weight(\"w\", \"Dim\", \"Dim\", Optional = true)] public Tensor W = null!; }",
            body: "for (int layer = 0; layer < Count; layer++) { if (Kind[layer] == 1) x = x + Ops.Linear(x, Blocks[layer].W) * Gain[layer]; }"));
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Empty(run.CompilationErrors);
        string source = Assert.Single(run.Sources).SourceText.ToString();
        Assert.Contains("(only when Kind[layer] == 1)", source); // the report shows each layer's choice
        Assert.Contains("PerLayerValues.ReadInts(file, \"tiny.kind\"", source);
        Assert.Contains("PerLayerValues.ReadFloats(file, \"tiny.gain\"", source);
        Assert.Contains("lacks it, but takes the forward's branch that reads it", source);
    }

    [Fact]
    public void ScalarArithmeticBranchesAndRowVectorsCompile()
    {
        var (run, _) = Generate(Model(
            members: "[Hyper(\"{arch}.scale\")] public float Scale = 2f; [Weight(\"bias\", \"Dim\")] public Tensor Bias = null!;",
            body: "float half = Scale / 2f; x = (x * MathF.Sqrt(Dim) + Bias) / half - 1f; x = Dim > 8 ? Ops.Tanh(x) : -x;"));
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Empty(run.CompilationErrors);
        string source = Assert.Single(run.Sources).SourceText.ToString();
        Assert.Contains("only when Dim > 8", source);    // each side of the ?: runs under its branch
        Assert.Contains("Lanes.Tanh(", source);           // composed into a generated loop, not a runtime routine
    }
}
