using System.Reflection;
using Kiln.Kernels.Quantized;
using Kiln.Loading;
using Kiln.Testing;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.Generators.Tests;

/// <summary>
/// A hybrid definition compiled by the generator: each layer attends or convolves as a per-layer [Hyper] array says,
/// holds only that branch's [Weight(Optional = true)] tensors, and the KV cache and recurrent state count only the
/// layers whose branch uses them (the attention names its cache layer through a per-layer mapping). The compiled
/// plan equals the eager forward on every kernel path; bad per-layer values and missing weights are refused at load.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class HybridLayerTests(ITestOutputHelper output)
{
    private const string Source = """
        using System;
        using Kiln;

        namespace Hybrid;

        [Model("hybrid")]
        public partial class Mixed
        {
            [Hyper("{arch}.dim", Required = true)] public int Dim;
            [Hyper("{arch}.layers")] public int Depth = 3;
            [Hyper("{arch}.kv_heads", Required = true)] public int[] KvHeadsPerLayer = null!;
            [Hyper("{arch}.gain")] public float[] Gain = { 1f };
            public int Heads => 2;
            public int[] CacheLayerOf => _cacheLayerOf ??= Number(KvHeadsPerLayer);
            private int[]? _cacheLayerOf;

            [Weight("embed", "Words", "Dim")] public Tensor Embed = null!;
            [Weight("norm", "Dim")] public Tensor Norm = null!;
            [Weight("out", "Words", "Dim")] public Tensor Head = null!;
            [Layers("blk.{0}.", nameof(Depth))] public Layer[] Stack = null!;

            public partial class Layer
            {
                [Weight("ln", "Dim")] public Tensor Ln = null!;
                [Weight("conv", "Dim", "3", Optional = true)] public Tensor Conv = null!;
                [Weight("qkv", "3*Dim", "Dim", Optional = true)] public Tensor Qkv = null!;
                [Weight("mix", "Dim", "Dim")] public Tensor Mix = null!;
            }

            [Forward]
            public Tensor Run(ReadOnlySpan<int> tokens, AttentionContext context)
            {
                var x = Ops.Embedding(Embed, tokens);
                for (int layer = 0; layer < Depth; layer++)
                {
                    var s = Stack[layer];
                    var h = Ops.RmsNorm(x, s.Ln, 1e-5f);
                    Tensor mixed;
                    if (KvHeadsPerLayer[layer] == 0)
                    {
                        mixed = Ops.Silu(Ops.CausalConv1d(h, s.Conv, context, layer));
                    }
                    else
                    {
                        var qkv = Ops.Linear(h, s.Qkv);
                        mixed = Ops.Attention(Ops.Slice(qkv, 0, Dim), Ops.Slice(qkv, Dim, Dim), Ops.Slice(qkv, 2 * Dim, Dim),
                            context, CacheLayerOf[layer], Heads, Heads);
                    }
                    x = x + Ops.Linear(mixed, s.Mix) * Gain[layer];
                }
                return Ops.Linear(Ops.RmsNorm(Ops.SelectRows(x, context), Norm, 1e-5f), Head);
            }

            private static int[] Number(int[] perLayer)
            {
                var cacheLayer = new int[perLayer.Length];
                int next = 0;
                for (int layer = 0; layer < perLayer.Length; layer++) cacheLayer[layer] = perLayer[layer] == 0 ? -1 : next++;
                return cacheLayer;
            }
        }
        """;

    private static readonly Lazy<Assembly> Compiled = new(() =>
    {
        var compilation = CSharpGeneratorTest<KilnGenerator>.CreateCompilation(("Mixed.cs", Source));
        var run = CSharpGeneratorTest<KilnGenerator>.RunGenerator(compilation);
        Assert.Empty(run.GeneratorDiagnostics);
        Assert.Empty(run.CompilationErrors);
        return CSharpGeneratorTest<KilnGenerator>.Load(run.Output);
    });

    private const int Dim = 16, Words = 19, Depth = 3;

    /// <summary>A seeded file whose layers are <paramref name="kinds"/> (0: convolution, else attention), each with only its branch's tensors.</summary>
    private static MemoryModelFile File(int seed, int[] kinds)
    {
        var file = new MemoryModelFile("hybrid", seed);
        file.Int("hybrid.dim", Dim).Int("hybrid.layers", kinds.Length).Ints("hybrid.kv_heads", kinds);
        file.Random("embed", Words, Dim, 1f).Norm("norm", Dim).Random("out", Words, Dim);
        for (int l = 0; l < kinds.Length; l++)
        {
            file.Norm($"blk.{l}.ln", Dim).Random($"blk.{l}.mix", Dim, Dim);
            if (kinds[l] == 0) file.Random($"blk.{l}.conv", Dim, 3, 0.5f);
            else file.Random($"blk.{l}.qkv", 3 * Dim, Dim);
        }
        return file;
    }

    private static IKilnModel Load(ModelFile file)
    {
        var type = Compiled.Value.GetType("Hybrid.Mixed", throwOnError: true)!;
        try
        {
            return (IKilnModel)type.GetMethod("Load", BindingFlags.Public | BindingFlags.Static)!.Invoke(null, [file])!;
        }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            throw e.InnerException;
        }
    }

    [SkippableTheory]
    [MemberData(nameof(KernelPathCases.All), MemberType = typeof(KernelPathCases))]
    public void TheCompiledHybridEqualsItsEagerForward(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "A plan's generated loops", KernelPathCases.NoVnniForm);
        const int seed = 23;
        var model = Load(File(seed, [0, 2, 0]));
        output.WriteLine($"seed {seed}, path {path}");

        // One attention layer: one KV cache layer; two convolution layers: state for those two only.
        Assert.Equal(1, model.KvShape.Layers);
        var state = model.StateShape.Tensors.ToArray();
        Assert.Equal([0, 2], state.Select(t => t.Layer).ToArray());
        Assert.All(state, t => Assert.Equal(Ops.ConvState, t.Name));

        using var plan = model.Compile(new PlanOptions(8, Threads: 2));
        Assert.Contains("(only when KvHeadsPerLayer[layer] == 0)", plan.FusionReport);
        Assert.Contains("none (the layer takes the other branch)", plan.FusionReport); // layers 0 and 2 pack no qkv
        var eager = AttentionContext.ForSlots(model, 2, 16, 8);
        var compiled = AttentionContext.ForSlots(model, 2, 16, 8);
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
    public void AFileWhoseLayersAllTakeTheRecurrentBranchKeepsNoKvCache()
    {
        var model = Load(File(5, [0, 0, 0]));
        Assert.Equal(default, model.KvShape);
        Assert.Equal(3, model.StateShape.Tensors.Length);
        var noCache = Assert.Throws<NotSupportedException>(() => model.CreateKvCache(1, 16));
        Assert.Contains("no attention layers", noCache.Message);
        using var plan = model.Compile(new PlanOptions(8, Threads: 2));
        var eager = AttentionContext.ForSlots(model, 1, 16, 8);
        var compiled = AttentionContext.ForSlots(model, 1, 16, 8);
        Assert.False(compiled.HasCache);
        int[] tokens = [3, 1, 4, 1, 5];
        for (int p = 0; p < tokens.Length; p++)
        {
            eager.Add(p, 0, true);
            compiled.Add(p, 0, true);
        }
        var expected = model.ForwardEager(tokens, eager).Data;
        var logits = new float[tokens.Length * Words];
        plan.Step(tokens, compiled, logits);
        for (int i = 0; i < logits.Length; i++)
            Assert.True(Math.Abs(expected[i] - logits[i]) <= 1e-4 + 1e-4 * Math.Abs(expected[i]), $"logit {i}: eager {expected[i]}, compiled {logits[i]}");
    }

    [Fact]
    public void AScalarIsEveryLayersValue()
    {
        var file = File(3, [2, 2, 2]);
        file.Int("hybrid.kv_heads", 2); // one count for every layer: all attend
        var model = Load(file);
        Assert.Equal(Depth, model.KvShape.Layers);
        Assert.True(model.StateShape.IsEmpty);
        // The absent gain keeps its one-value default, broadcast to every layer.
        var gain = (float[])model.GetType().GetField("Gain")!.GetValue(model)!;
        Assert.Equal([1f, 1f, 1f], gain);
    }

    [Fact]
    public void AnArrayOfAnotherLengthThanTheLayersIsRefused()
    {
        var file = File(3, [0, 2, 0]);
        file.Ints("hybrid.kv_heads", 0, 2);
        var e = Assert.Throws<ModelLoadException>(() => Load(file));
        output.WriteLine(e.Message);
        Assert.Contains("hybrid.kv_heads", e.Message);
        Assert.Contains("holds 2 values, but the file has 3 layers", e.Message);
    }

    [Fact]
    public void APerLayerValueThatIsNotANumberIsRefused()
    {
        var file = File(3, [0, 2, 0]);
        file.Text("hybrid.kv_heads", "two");
        var e = Assert.Throws<ModelLoadException>(() => Load(file));
        Assert.Contains("hybrid.kv_heads", e.Message);
        Assert.Contains("not an integer", e.Message);
    }

    [Fact]
    public void AMissingOptionalWeightInABranchTheLayerTakesIsRefused()
    {
        var file = File(3, [0, 2, 0]).Remove("blk.1.qkv");
        var e = Assert.Throws<ModelLoadException>(() => Load(file));
        output.WriteLine(e.Message);
        Assert.Contains("tensor 'blk.1.qkv'", e.Message);
        Assert.Contains("layer 1 lacks it", e.Message);
    }

    [Fact]
    public void AnOptionalWeightALayerDoesNotReadMayBeAbsentAndIsNotBound()
    {
        var model = Load(File(3, [0, 2, 0]));
        var stack = (Array)model.GetType().GetField("Stack")!.GetValue(model)!;
        object Weight(int layer, string name) => stack.GetValue(layer)!.GetType().GetField(name)!.GetValue(stack.GetValue(layer))!;
        Assert.Null(Weight(0, "Qkv"));
        Assert.NotNull(Weight(1, "Qkv"));
        Assert.Null(Weight(1, "Conv"));
    }
}
