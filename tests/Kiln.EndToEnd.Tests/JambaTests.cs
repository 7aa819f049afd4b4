using Kiln.Kernels.Quantized;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Testing;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The Jamba definition (samples/Models/Jamba.cs), a hybrid: its compiled plan against its eager forward on steps that
/// pack sequences of different lengths over a paged KV cache (for the attention layers) and state slots (for the Mamba
/// layers); its KV cache and state hold only the layers whose branch uses them; a layer that lacks a tensor its branch
/// reads is refused at load.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class JambaTests(ITestOutputHelper output)
{
    internal const int Dim = 32, Heads = 4, KvHeads = 2, Hidden = 48, Inner = 64, StateSize = 16, ConvKernel = 4, DtRank = 8, Vocab = 96;

    /// <summary>Which layers attend (the rest are Mamba layers): two of each, so cache layer ≠ model layer.</summary>
    internal static readonly int[] KvHeadsPerLayer = [0, KvHeads, 0, KvHeads];

    private const double Bound = 1e-4;
    private const int BlockSize = 4, Blocks = 16;

    /// <summary>A small Jamba in memory, named as llama.cpp's jamba (and make-model --arch jamba) names it.</summary>
    internal static MemoryModelFile File(int seed, int vocab = Vocab)
    {
        int headDim = Dim / Heads, kvDim = KvHeads * headDim;
        var file = new MemoryModelFile("jamba", seed).Int("jamba.embedding_length", Dim).Int("jamba.feed_forward_length", Hidden)
            .Int("jamba.block_count", KvHeadsPerLayer.Length).Int("jamba.attention.head_count", Heads).Ints("jamba.attention.head_count_kv", KvHeadsPerLayer)
            .Int("jamba.ssm.conv_kernel", ConvKernel).Int("jamba.ssm.inner_size", Inner).Int("jamba.ssm.state_size", StateSize)
            .Int("jamba.ssm.time_step_rank", DtRank)
            .Random("token_embd.weight", vocab, Dim, 1f).Norm("output_norm.weight", Dim).Random("output.weight", vocab, Dim, 0.5f);
        for (int layer = 0; layer < KvHeadsPerLayer.Length; layer++)
        {
            string p = $"blk.{layer}.";
            file.Norm(p + "attn_norm.weight", Dim);
            if (KvHeadsPerLayer[layer] == 0)
            {
                file.Random(p + "ssm_in.weight", 2 * Inner, Dim, 0.3f)
                    .Random(p + "ssm_conv1d.weight", Inner, ConvKernel, 0.5f).Vector(p + "ssm_conv1d.bias", Inner, 0.1f)
                    .Random(p + "ssm_x.weight", DtRank + 2 * StateSize, Inner, 0.2f)
                    .Norm(p + "ssm_dt_norm.weight", DtRank).Norm(p + "ssm_b_norm.weight", StateSize).Norm(p + "ssm_c_norm.weight", StateSize)
                    .Random(p + "ssm_dt.weight", Inner, DtRank, 0.3f).Uniform(p + "ssm_dt.bias", [Inner], -3f, -1f)
                    .Uniform(p + "ssm_a", [Inner, StateSize], -4f, -0.5f).Uniform(p + "ssm_d", [Inner], 0.5f, 1.5f)
                    .Random(p + "ssm_out.weight", Dim, Inner, 0.2f);
            }
            else
            {
                file.Random(p + "attn_q.weight", Dim, Dim, 0.4f).Random(p + "attn_k.weight", kvDim, Dim, 0.4f)
                    .Random(p + "attn_v.weight", kvDim, Dim, 0.3f).Random(p + "attn_output.weight", Dim, Dim, 0.3f);
            }
            file.Norm(p + "ffn_norm.weight", Dim).Random(p + "ffn_gate.weight", Hidden, Dim, 0.3f)
                .Random(p + "ffn_up.weight", Hidden, Dim, 0.3f).Random(p + "ffn_down.weight", Dim, Hidden, 0.3f);
        }
        return file;
    }

    /// <summary>Each step: (sequence, first position, token count); sequence s owns state slot s and KV blocks 4s…4s+3.</summary>
    private static readonly (int Sequence, int Start, int Count)[][] Steps =
    [
        [(0, 0, 7), (1, 0, 1), (2, 0, 13), (3, 0, 4)],
        [(2, 13, 1), (0, 7, 5), (3, 4, 1)],
        [(1, 1, 9), (3, 5, 2), (0, 12, 1), (2, 14, 1)],
    ];

    [SkippableTheory]
    [MemberData(nameof(KernelPathCases.All), MemberType = typeof(KernelPathCases))]
    public void CompiledPlanMatchesTheEagerForward(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Jamba's plan", KernelPathCases.NoVnniForm);
        var model = Jamba.Load(File(43));
        using var plan = model.Compile(new PlanOptions(64, Threads: 2));
        AttentionContext Context() => new(model.KvShape.CreatePaged(Blocks, BlockSize), 64, maxBlockIds: Blocks, model.StateShape.CreateCache(4));
        var eager = Context();
        var compiled = Context();
        var random = new Random(43);
        double worst = 0;
        foreach (var step in Steps)
        {
            eager.Clear();
            compiled.Clear();
            var tokens = new List<int>();
            foreach (var (sequence, start, count) in step)
            {
                for (int i = 0; i < count; i++) tokens.Add(random.Next(Vocab));
                int[] blockTable = [4 * sequence, 4 * sequence + 1, 4 * sequence + 2, 4 * sequence + 3];
                eager.AddChunk(blockTable, start, count, wantLogits: true, stateSlot: sequence);
                compiled.AddChunk(blockTable, start, count, wantLogits: true, stateSlot: sequence);
            }
            var expected = model.Forward(tokens.ToArray(), eager).Data;
            var logits = new float[step.Length * Vocab];
            plan.Step(tokens.ToArray(), compiled, logits);
            for (int i = 0; i < logits.Length; i++) worst = Math.Max(worst, Math.Abs(logits[i] - expected[i]));
        }
        output.WriteLine($"{path}: largest |compiled − eager| logit = {worst:E2} (bound {Bound:E0})");
        Assert.True(worst <= Bound, $"Jamba's compiled logits differ from the eager forward by {worst:E2} > {Bound:E0} on {path}.");
    }

    [Fact]
    public void TheCacheHoldsTheAttentionLayersAndTheStateTheMambaLayers()
    {
        var model = Jamba.Load(File(1));
        Assert.Equal(new KvCacheShape(2, KvHeads * Dim / Heads, Dim / Heads), model.KvShape); // layers 1 and 3, as cache layers 0 and 1
        Assert.Equal([-1, 0, -1, 1], model.CacheLayerOf);
        var state = model.StateShape.Tensors.ToArray();
        Assert.Equal([(0, Ops.ConvState), (0, Ops.ScanState), (2, Ops.ConvState), (2, Ops.ScanState)],
            state.Select(t => (t.Layer, t.Name)).OrderBy(t => t.Layer).ThenBy(t => t.Name).ToArray());
        using var plan = model.Compile(new PlanOptions(8, Threads: 1));
        output.WriteLine(plan.FusionReport);
        Assert.Contains("(only when KvHeadsPerLayer[layer] == 0)", plan.FusionReport);
        Assert.Contains("(only when !(KvHeadsPerLayer[layer] == 0))", plan.FusionReport);
    }

    [Fact]
    public void AMambaLayerWithoutItsScanWeightIsRefusedNamingTensorAndLayer()
    {
        var e = Assert.Throws<ModelLoadException>(() => Jamba.Load(File(1).Remove("blk.2.ssm_a")));
        Assert.Contains("tensor 'blk.2.ssm_a'", e.Message);
        Assert.Contains("layer 2 lacks it", e.Message);
    }

    [Fact]
    public void AHeadCountArrayOfTheWrongLengthIsRefusedNamingTheKey()
    {
        var e = Assert.Throws<ModelLoadException>(() => Jamba.Load(File(1).Ints("jamba.attention.head_count_kv", 0, KvHeads)));
        Assert.Contains("jamba.attention.head_count_kv", e.Message);
        Assert.Contains("4 layers", e.Message);
    }
}
