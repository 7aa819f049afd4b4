using Kiln.Kernels.Quantized;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Testing;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The LSTM definition (samples/Models/Lstm.cs) against a plain float64 LSTM written here from the equations, on
/// steps that pack sequences of different lengths, each in its own state slot, and continue them over later steps
/// (chunks that start mid-sequence read the state the previous step left). The compiled plan runs every kernel path.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class LstmTests(ITestOutputHelper output)
{
    internal const int Dim = 48, Layers = 2, Vocab = 96;

    /// <summary>A small LSTM language model in memory, as a GGUF file written by make-model --arch lstm names its tensors.</summary>
    internal static MemoryModelFile File(int seed, int vocab = Vocab)
    {
        var file = new MemoryModelFile("lstm", seed).Int("lstm.embedding_length", Dim).Int("lstm.block_count", Layers)
            .Random("token_embd.weight", vocab, Dim, 1f).Random("output.weight", vocab, Dim, 0.5f).Vector("output.bias", vocab);
        for (int layer = 0; layer < Layers; layer++)
        {
            // Recurrent weights big enough that the state matters: U(±0.4) over 48 inputs swings the gates by ~±1.6.
            file.Random($"blk.{layer}.lstm_ih.weight", 4 * Dim, Dim, 0.3f).Vector($"blk.{layer}.lstm.bias", 4 * Dim, 0.3f)
                .Random($"blk.{layer}.lstm_hh.weight", 4 * Dim, Dim, 0.4f);
        }
        return file;
    }

    /// <summary>Each step: (slot, first position, token count) per sequence; every chunk wants its last row's logits.</summary>
    private static readonly (int Slot, int Start, int Count)[][] Steps =
    [
        [(0, 0, 7), (1, 0, 1), (2, 0, 13), (3, 0, 4)],
        [(2, 13, 1), (0, 7, 5), (3, 4, 1)],
        [(1, 1, 9), (3, 5, 2), (0, 12, 1), (2, 14, 1)],
    ];

    // Float32 accumulation over 48-term dots and up to 14 recurrent steps per layer, against float64: logits of unit
    // size agree to a few float32 ulps (≤ 3e-7 seen on every path); 1e-5 leaves 30× room and stays far below a wrong
    // gate, a swapped slot or a lost state (≥ 1e-2).
    private const double Bound = 1e-5;

    [Fact]
    public void EagerMatchesTheFloat64Reference() => Check(seed: 11, plan: null);

    [SkippableTheory]
    [MemberData(nameof(KernelPathCases.All), MemberType = typeof(KernelPathCases))]
    public void CompiledPlanMatchesTheFloat64Reference(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Lstm (VectorMath.Dot)", KernelPathCases.NoVnniForm);
        Check(seed: 12, plan: model => model.Compile(new PlanOptions(64, Threads: 2)));
    }

    [Fact]
    public void StateShapeDeclaresEachLayersHiddenAndCell()
    {
        var model = Lstm.Load(File(1));
        var shape = model.StateShape;
        Assert.Equal(2 * Layers, shape.Tensors.Length);
        for (int layer = 0; layer < Layers; layer++)
        {
            Assert.Equal(new StateTensorShape(Ops.LstmHidden, layer, 1, Dim), shape.Tensors[shape.IndexOf(layer, Ops.LstmHidden)]);
            Assert.Equal(new StateTensorShape(Ops.LstmCell, layer, 1, Dim), shape.Tensors[shape.IndexOf(layer, Ops.LstmCell)]);
        }
        Assert.Equal(0, model.KvShape.Layers);
        Assert.Throws<NotSupportedException>(() => model.CreateKvCache(1, 16));
    }

    [Fact]
    public void AStepWithoutRecurrentStateIsRefusedByName()
    {
        var model = Lstm.Load(File(2));
        using var plan = model.Compile(new PlanOptions(8, Threads: 1));
        var context = new AttentionContext(8);
        context.AddSequence(2);
        var error = Assert.Throws<InvalidOperationException>(() => plan.Step([1, 2], context, new float[Vocab]));
        Assert.Contains("no recurrent state", error.Message);
    }

    private void Check(int seed, Func<Lstm, ICompiledPlan>? plan)
    {
        var file = File(seed);
        var model = Lstm.Load(file);
        var reference = new Float64Lstm(file);
        var state = model.StateShape.CreateCache(slots: 4);
        var context = new AttentionContext(state, capacity: 64);
        using var compiled = plan?.Invoke(model);
        var random = new Random(seed);
        var sequences = new List<int>[4];
        for (int s = 0; s < 4; s++) sequences[s] = [];
        double worst = 0;
        foreach (var step in Steps)
        {
            context.Clear();
            var tokens = new List<int>();
            foreach (var (slot, start, count) in step)
            {
                Assert.Equal(start, sequences[slot].Count);
                for (int i = 0; i < count; i++)
                {
                    int token = random.Next(Vocab);
                    sequences[slot].Add(token);
                    tokens.Add(token);
                    context.Add(start + i, slot, wantLogits: i == count - 1);
                }
            }
            var logits = new float[step.Length * Vocab];
            if (compiled is null) model.Forward(tokens.ToArray(), context).Data.CopyTo(logits, 0);
            else compiled.Step(tokens.ToArray(), context, logits);
            for (int row = 0; row < step.Length; row++)
            {
                double[] expected = reference.Logits(sequences[step[row].Slot]);
                for (int v = 0; v < Vocab; v++) worst = Math.Max(worst, Math.Abs(logits[row * Vocab + v] - expected[v]));
            }
        }
        output.WriteLine($"seed {seed}: largest |logit − float64 reference| = {worst:E2} (bound {Bound:E0})");
        Assert.True(worst <= Bound, $"The LSTM's logits differ from the float64 reference by {worst:E2} > {Bound:E0} (seed {seed}).");
    }

    /// <summary>The LSTM language model in float64 from its equations, one whole sequence at a time from zero state.</summary>
    private sealed class Float64Lstm(ModelFile file)
    {
        private readonly double[] _embedding = Read(file, "token_embd.weight");
        private readonly double[] _output = Read(file, "output.weight");
        private readonly double[] _outputBias = Read(file, "output.bias");
        private readonly double[][] _input = Enumerable.Range(0, Layers).Select(l => Read(file, $"blk.{l}.lstm_ih.weight")).ToArray();
        private readonly double[][] _recurrent = Enumerable.Range(0, Layers).Select(l => Read(file, $"blk.{l}.lstm_hh.weight")).ToArray();
        private readonly double[][] _bias = Enumerable.Range(0, Layers).Select(l => Read(file, $"blk.{l}.lstm.bias")).ToArray();

        public double[] Logits(List<int> tokens)
        {
            var h = new double[Layers][];
            var c = new double[Layers][];
            for (int l = 0; l < Layers; l++) (h[l], c[l]) = (new double[Dim], new double[Dim]);
            var x = new double[Dim];
            foreach (int token in tokens)
            {
                Array.Copy(_embedding, token * Dim, x, 0, Dim);
                for (int l = 0; l < Layers; l++)
                {
                    double[] wi = _input[l], wh = _recurrent[l], b = _bias[l];
                    var z = new double[4 * Dim];
                    for (int r = 0; r < 4 * Dim; r++)
                    {
                        double sum = b[r];
                        for (int k = 0; k < Dim; k++) sum += wi[r * Dim + k] * x[k] + wh[r * Dim + k] * h[l][k];
                        z[r] = sum;
                    }
                    for (int j = 0; j < Dim; j++)
                    {
                        double i = Sigmoid(z[j]), f = Sigmoid(z[Dim + j]), g = Math.Tanh(z[2 * Dim + j]), o = Sigmoid(z[3 * Dim + j]);
                        c[l][j] = f * c[l][j] + i * g;
                        h[l][j] = o * Math.Tanh(c[l][j]);
                    }
                    Array.Copy(h[l], x, Dim);
                }
            }
            var logits = new double[Vocab];
            for (int v = 0; v < Vocab; v++)
            {
                double sum = _outputBias[v];
                for (int k = 0; k < Dim; k++) sum += _output[v * Dim + k] * x[k];
                logits[v] = sum;
            }
            return logits;
        }

        private static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));

        private static double[] Read(ModelFile file, string name)
        {
            var bytes = file.GetTensorBytes(file.Tensors[name]);
            var floats = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes);
            var values = new double[floats.Length];
            for (int i = 0; i < values.Length; i++) values[i] = floats[i];
            return values;
        }
    }
}
