using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Kernels.Recurrent;
using Kiln.Models;
using Kiln.Testing;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Mamba's two recurrent ops, each compiled kernel against its float64 eager reference on every kernel path, over
/// steps that pack sequences of different lengths in their own state slots and continue them in later steps (a chunk
/// that starts mid-sequence reads what the previous step left); then the Mamba definition (samples/Models/Mamba.cs),
/// its compiled plan against its eager forward on the same packed steps.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed unsafe class MambaTests(ITestOutputHelper output)
{
    internal const int Dim = 32, Inner = 64, StateSize = 16, ConvKernel = 4, DtRank = 8, Layers = 2, Vocab = 96;

    /// <summary>A small Mamba in memory, named as llama.cpp's mamba (and make-model --arch mamba) names it.</summary>
    internal static MemoryModelFile File(int seed, int vocab = Vocab)
    {
        var file = new MemoryModelFile("mamba", seed).Int("mamba.embedding_length", Dim).Int("mamba.block_count", Layers)
            .Int("mamba.ssm.conv_kernel", ConvKernel).Int("mamba.ssm.inner_size", Inner).Int("mamba.ssm.state_size", StateSize)
            .Int("mamba.ssm.time_step_rank", DtRank)
            .Random("token_embd.weight", vocab, Dim, 1f).Norm("output_norm.weight", Dim).Random("output.weight", vocab, Dim, 0.5f);
        for (int layer = 0; layer < Layers; layer++)
        {
            string p = $"blk.{layer}.";
            file.Norm(p + "attn_norm.weight", Dim).Random(p + "ssm_in.weight", 2 * Inner, Dim, 0.3f)
                .Random(p + "ssm_conv1d.weight", Inner, ConvKernel, 0.5f).Vector(p + "ssm_conv1d.bias", Inner, 0.1f)
                .Random(p + "ssm_x.weight", DtRank + 2 * StateSize, Inner, 0.2f)
                .Random(p + "ssm_dt.weight", Inner, DtRank, 0.3f).Uniform(p + "ssm_dt.bias", [Inner], -3f, -1f)
                .Uniform(p + "ssm_a", [Inner, StateSize], -4f, -0.5f).Uniform(p + "ssm_d", [Inner], 0.5f, 1.5f)
                .Random(p + "ssm_out.weight", Dim, Inner, 0.2f);
        }
        return file;
    }

    /// <summary>Each step: (slot, first position, token count) per sequence.</summary>
    private static readonly (int Slot, int Start, int Count)[][] Steps =
    [
        [(0, 0, 7), (1, 0, 1), (2, 0, 13), (3, 0, 4)],
        [(2, 13, 1), (0, 7, 5), (3, 4, 1)],
        [(1, 1, 9), (3, 5, 2), (0, 12, 1), (2, 14, 1)],
    ];

    // Float32 against float64: a few-term conv and a 16-wide state over ≤ 15 steps agree to ~1e-6 of unit values;
    // a wrong tap, a swapped slot or a state not carried differs by ≥ 1e-2.
    private const double OpBound = 1e-4;

    [SkippableTheory]
    [MemberData(nameof(KernelPathCases.All), MemberType = typeof(KernelPathCases))]
    public void CausalConvolutionMatchesTheEagerReference(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "CausalConvolution", KernelPathCases.NoVnniForm);
        const int channels = 40; // two full blocks of 16 channels and a partial one
        var random = new Random(31);
        var weight = RandomTensor(random, 1f, channels, ConvKernel);
        var shape = new RecurrentStateShape([new StateTensorShape(Ops.ConvState, 0, channels, ConvKernel - 1)]);
        CompareOverSteps(shape, random, channels, (x, context) => Ops.CausalConv1d(x, weight, context, 0), (x, context, result) =>
        {
            var work = new CausalConvolution
            {
                Input = x, Output = result, Weight = weight.Data, Channels = channels, Width = ConvKernel, Context = context,
                StateTensor = context.State.Require(0, Ops.ConvState),
            };
            work.Execute(0, MambaWork.Items(context.SequenceCount, channels));
        });
    }

    [SkippableTheory]
    [MemberData(nameof(KernelPathCases.All), MemberType = typeof(KernelPathCases))]
    public void SelectiveScanMatchesTheEagerReference(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "SelectiveScanRecurrence", KernelPathCases.NoVnniForm);
        const int channels = 40, n = 20; // a partial channel block, and a state not a whole number of vectors
        var random = new Random(32);
        var a = RandomTensor(random, 1f, channels, n);
        for (int i = 0; i < a.Data.Length; i++) a.Data[i] = -0.2f - 3 * MathF.Abs(a.Data[i]);
        var d = RandomTensor(random, 1f, channels);
        var shape = new RecurrentStateShape([new StateTensorShape(Ops.ScanState, 0, channels, n)]);
        // The op's other inputs are drawn per step from the same stream, for both sides.
        Tensor? dt = null, b = null, c = null, z = null;
        void Draw(int tokens)
        {
            dt = RandomTensor(random, 2f, tokens, channels);
            dt.Data[0] = 25; // above softplus's threshold: Δ = dt
            b = RandomTensor(random, 1f, tokens, n);
            c = RandomTensor(random, 1f, tokens, n);
            z = RandomTensor(random, 2f, tokens, channels);
        }
        CompareOverSteps(shape, random, channels, (x, context) =>
        {
            Draw(x.Rows);
            return Ops.SelectiveScan(x, dt!, a, b!, c!, d, z!, context, 0);
        }, (x, context, result) =>
        {
            fixed (float* pDt = dt!.Data, pB = b!.Data, pC = c!.Data, pZ = z!.Data)
            {
                var work = new SelectiveScanRecurrence
                {
                    X = x, Output = result, Dt = new FloatBuffer(pDt, dt.Data.Length), B = new FloatBuffer(pB, b.Data.Length),
                    C = new FloatBuffer(pC, c.Data.Length), Z = new FloatBuffer(pZ, z.Data.Length), A = a.Data, D = d.Data,
                    Channels = channels, StateSize = n, Context = context, StateTensor = context.State.Require(0, Ops.ScanState),
                };
                work.Execute(0, MambaWork.Items(context.SequenceCount, channels));
            }
        });
    }

    [SkippableTheory]
    [MemberData(nameof(KernelPathCases.All), MemberType = typeof(KernelPathCases))]
    public void CompiledPlanMatchesTheEagerForward(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Mamba's recurrences", KernelPathCases.NoVnniForm);
        var model = Mamba.Load(File(41));
        using var plan = model.Compile(new PlanOptions(64, Threads: 2));
        var eagerState = model.StateShape.CreateCache(4);
        var compiledState = model.StateShape.CreateCache(4);
        var eager = new AttentionContext(eagerState, 64);
        var compiled = new AttentionContext(compiledState, 64);
        var random = new Random(41);
        double worst = 0;
        foreach (var step in Steps)
        {
            eager.Clear();
            compiled.Clear();
            var tokens = new List<int>();
            foreach (var (slot, start, count) in step)
            {
                for (int i = 0; i < count; i++) tokens.Add(random.Next(Vocab));
                eager.AddRecurrentChunk(slot, start, count, wantLogits: true);
                compiled.AddRecurrentChunk(slot, start, count, wantLogits: true);
            }
            var expected = model.Forward(tokens.ToArray(), eager).Data;
            var logits = new float[step.Length * Vocab];
            plan.Step(tokens.ToArray(), compiled, logits);
            for (int i = 0; i < logits.Length; i++) worst = Math.Max(worst, Math.Abs(logits[i] - expected[i]));
        }
        output.WriteLine($"{path}: largest |compiled − eager| logit = {worst:E2} (bound {OpBound:E0})");
        Assert.True(worst <= OpBound, $"Mamba's compiled logits differ from the eager forward by {worst:E2} > {OpBound:E0} on {path}.");
    }

    [Fact]
    public void StateShapeDeclaresEachLayersConvolutionAndScanState()
    {
        var model = Mamba.Load(File(1));
        var shape = model.StateShape;
        Assert.Equal(2 * Layers, shape.Tensors.Length);
        for (int layer = 0; layer < Layers; layer++)
        {
            Assert.Equal(new StateTensorShape(Ops.ConvState, layer, Inner, ConvKernel - 1), shape.Tensors[shape.IndexOf(layer, Ops.ConvState)]);
            Assert.Equal(new StateTensorShape(Ops.ScanState, layer, Inner, StateSize), shape.Tensors[shape.IndexOf(layer, Ops.ScanState)]);
        }
        Assert.Equal(0, model.KvShape.Layers);
    }

    /// <summary>
    /// Runs <see cref="Steps"/> through the eager op and the kernel on separate state caches, each step's input drawn
    /// at random, and compares every output row and, after the last step, every slot's state.
    /// </summary>
    private void CompareOverSteps(RecurrentStateShape shape, Random random, int channels, Func<Tensor, AttentionContext, Tensor> eagerOp,
        Action<FloatBuffer, AttentionContext, FloatBuffer> kernel)
    {
        var eagerState = shape.CreateCache(4);
        var kernelState = shape.CreateCache(4);
        var eager = new AttentionContext(eagerState, 64);
        var compiled = new AttentionContext(kernelState, 64);
        double worst = 0;
        foreach (var step in Steps)
        {
            eager.Clear();
            compiled.Clear();
            foreach (var (slot, start, count) in step)
            {
                eager.AddRecurrentChunk(slot, start, count, wantLogits: false);
                compiled.AddRecurrentChunk(slot, start, count, wantLogits: false);
            }
            var x = RandomTensor(random, 1f, eager.TokenCount, channels);
            var expected = eagerOp(x, eager);
            var actual = new float[expected.Data.Length];
            fixed (float* px = x.Data, pa = actual)
                kernel(new FloatBuffer(px, x.Data.Length), compiled, new FloatBuffer(pa, actual.Length));
            for (int i = 0; i < actual.Length; i++) worst = Math.Max(worst, Math.Abs(actual[i] - expected.Data[i]));
        }
        int length = shape.Tensors[0].Length;
        float[] left = new float[length], right = new float[length];
        for (int slot = 0; slot < 4; slot++)
        {
            eagerState.Read(0, slot, left);
            kernelState.Read(0, slot, right);
            for (int i = 0; i < length; i++) worst = Math.Max(worst, Math.Abs(left[i] - right[i]));
        }
        output.WriteLine($"{KernelPaths.Active}: largest |kernel − eager| over outputs and states = {worst:E2} (bound {OpBound:E0})");
        Assert.True(worst <= OpBound, $"The kernel differs from the eager op by {worst:E2} > {OpBound:E0} on {KernelPaths.Active}.");
    }

    private static Tensor RandomTensor(Random random, float scale, params int[] shape)
    {
        var tensor = Tensor.Zeros(shape);
        for (int i = 0; i < tensor.Data.Length; i++) tensor.Data[i] = (float)(random.NextDouble() * 2 - 1) * scale;
        return tensor;
    }
}
