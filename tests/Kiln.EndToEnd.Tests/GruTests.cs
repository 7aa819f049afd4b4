using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Kernels.Recurrent;
using Kiln.Testing;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The GRU cell's compiled kernel (<see cref="GruRecurrence"/>) against its float64 eager op (<see cref="Ops.Gru"/>) on
/// every kernel path, over steps that pack sequences of different lengths in their own state slots and continue them
/// in later steps; outputs and every slot's final h compared. (Its path through the generator: CompiledPlanTests.)
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed unsafe class GruTests(ITestOutputHelper output)
{
    private const int Hidden = 40;

    private static readonly (int Slot, int Start, int Count)[][] Steps =
    [
        [(0, 0, 7), (1, 0, 1), (2, 0, 13), (3, 0, 4)],
        [(2, 13, 1), (0, 7, 5), (3, 4, 1)],
        [(1, 1, 9), (3, 5, 2), (0, 12, 1), (2, 14, 1)],
    ];

    // Float32 40-term dots and ≤ 15 recurrent steps against float64: ~1e-6 on unit values; a wrong gate or a lost
    // state differs by ≥ 1e-2.
    private const double Bound = 1e-4;

    [SkippableTheory]
    [MemberData(nameof(KernelPathCases.All), MemberType = typeof(KernelPathCases))]
    public void GruRecurrenceMatchesTheEagerReference(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "GruRecurrence (VectorMath.Dot)", KernelPathCases.NoVnniForm);
        var random = new Random(51);
        var recurrent = RandomTensor(random, 0.4f, 3 * Hidden, Hidden);
        var bias = RandomTensor(random, 0.3f, 3 * Hidden);
        var shape = new RecurrentStateShape([new StateTensorShape(Ops.GruHidden, 0, 1, Hidden)]);
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
            var gates = RandomTensor(random, 1.5f, eager.TokenCount, 3 * Hidden);
            var expected = Ops.Gru(gates, recurrent, bias, eager, 0);
            var actual = new float[expected.Data.Length];
            fixed (float* pg = gates.Data, pa = actual)
            {
                var work = new GruRecurrence
                {
                    Gates = new FloatBuffer(pg, gates.Data.Length), Output = new FloatBuffer(pa, actual.Length), Recurrent = recurrent.Data,
                    RecurrentBias = bias.Data, Hidden = Hidden, Context = compiled, HiddenTensor = kernelState.Require(0, Ops.GruHidden),
                };
                work.Execute(0, compiled.SequenceCount);
            }
            for (int i = 0; i < actual.Length; i++) worst = Math.Max(worst, Math.Abs(actual[i] - expected.Data[i]));
        }
        float[] left = new float[Hidden], right = new float[Hidden];
        for (int slot = 0; slot < 4; slot++)
        {
            eagerState.Read(0, slot, left);
            kernelState.Read(0, slot, right);
            for (int i = 0; i < Hidden; i++) worst = Math.Max(worst, Math.Abs(left[i] - right[i]));
        }
        output.WriteLine($"{path}: largest |kernel − eager| over outputs and states = {worst:E2} (bound {Bound:E0})");
        Assert.True(worst <= Bound, $"GruRecurrence differs from Ops.Gru by {worst:E2} > {Bound:E0} on {path}.");
    }

    private static Tensor RandomTensor(Random random, float scale, params int[] shape)
    {
        var tensor = Tensor.Zeros(shape);
        for (int i = 0; i < tensor.Data.Length; i++) tensor.Data[i] = (float)(random.NextDouble() * 2 - 1) * scale;
        return tensor;
    }
}
