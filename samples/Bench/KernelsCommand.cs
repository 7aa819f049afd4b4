using System.Diagnostics;
using System.Globalization;
using System.Runtime.Intrinsics;
using Kiln.Kernels.MatMul;
using Kiln.Threading;

namespace Kiln.Bench;

/// <summary>
/// The matmul kernels alone, the profile behind compare's figures: each of the 110m model's matmul shapes (fused
/// QKV, output projection, fused gate/up, down, vocabulary) in each packed format, at a few token counts, on Kiln's
/// worker pool exactly as a plan splits it (Gemm.ChunkSize items), timed best of 5 and set against the same-threads
/// compute roof of compare (the int8 block-dot rate for Q8_0 and, with nibbles to unpack, for Q4_0 and the K-quants;
/// fp32 FMA for F32). Weights are random, quantized by the packer; results are stored and summed so no work can be
/// skipped.
/// </summary>
internal static class KernelsCommand
{
    internal static readonly (string Name, int Rows, int K)[] Shapes =
    [
        ("wq|wk|wv", 3 * 768, 768), ("wo", 768, 768), ("gate|up", 2 * 2048, 768), ("down", 768, 2048), ("output", 32000, 768),
    ];

    public static int Run(int threads, PackedFormat[] formats, int[] tokenCounts, TextWriter output, TextWriter log)
    {
        var c = CultureInfo.InvariantCulture;
        using var pool = new WorkerPool(threads);
        output.WriteLine(string.Create(c, $"kernels: Kiln's matmul kernels on the 110m shapes, {threads} threads (its worker pool, Gemm.ChunkSize items), best of 5; GMAC/s and % of the same-threads roof"));
        foreach (var format in formats)
        {
            log.WriteLine($"kernels: measuring the {format} roof...");
            double roof = format switch
            {
                PackedFormat.Q8_0 => MachineLimits.PeakInt8BlockMacs(threads, nibbles: false),
                _ when WeightLayouts.IsQuantized(format) => MachineLimits.PeakInt8BlockMacs(threads, nibbles: true),
                _ => MachineLimits.PeakFp32Flops(threads) / 2,
            };
            string roofName = WeightLayouts.IsQuantized(format) ? "int8 block-dot" : "fp32 FMA";
            output.WriteLine();
            output.WriteLine(string.Create(c, $"{WeightLayouts.Describe(format)}: roof {roof / 1e9:F0} GMAC/s ({roofName}, L1 data)"));
            output.WriteLine(string.Create(c, $"{"matmul",-10} {"rows×K",12} {"tokens",6} {"GMAC/s",8} {"%roof",6} {"GB/s weights",12}"));
            foreach (var (name, rows, k) in Shapes)
            {
                log.WriteLine($"kernels: packing {name} [{rows}, {k}] as {format}...");
                using var weights = RandomWeights(format, rows, k, seed: rows * 31 + k);
                foreach (int tokens in tokenCounts)
                {
                    double macs = Measure(weights, tokens, pool, out double seconds);
                    output.WriteLine(string.Create(c,
                        $"{name,-10} {rows + "×" + k,12} {tokens,6} {macs / 1e9,8:F1} {100 * macs / roof,5:F0}% {weights.ByteCount / seconds / 1e9,12:F1}"));
                }
            }
        }
        output.WriteLine();
        output.WriteLine("GB/s weights: the packed matrix's bytes over one run's time (one pass over the weights per run, whatever the tokens).");
        return 0;
    }

    private static PackedMatrix RandomWeights(PackedFormat format, int rows, int k, int seed)
    {
        var random = new Random(seed);
        var values = new float[rows * k];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(random.NextDouble() - 0.5);
        var weights = new PackedMatrix(format, rows, k);
        weights.Pack(0, new Tensor(values, rows, k));
        return weights;
    }

    /// <summary>Multiply-adds per second of one matmul over <paramref name="tokens"/> tokens, best of 5 timed batches.</summary>
    private static unsafe double Measure(PackedMatrix weights, int tokens, WorkerPool pool, out double secondsPerRun)
    {
        int k = weights.K;
        using var scratch = new GemmScratch(tokens, k);
        using var memory = new NativeBlock(((long)tokens * k + (long)tokens * weights.Rows) * sizeof(float));
        var x = memory.Floats(0, tokens * k);
        var random = new Random(tokens);
        for (int i = 0; i < x.Length; i++) x[i] = (float)(random.NextDouble() - 0.5);
        var input = scratch.Prepare(weights.Format, x, k, tokens, k, norm: null, eps: 0, pool);
        var work = new MatMulWork { Weights = weights, Input = input, Output = memory.Floats((long)tokens * k * sizeof(float), tokens * weights.Rows), Rows = weights.Rows };
        int chunk = Gemm.ChunkSize(weights, tokens, pool.ThreadCount);
        double macsPerRun = (double)weights.Rows * k * tokens;
        int runs = (int)Math.Clamp(2e9 / macsPerRun, 1, 10_000);
        pool.Run(weights.Groups, chunk, work); // warm-up: JIT, first touch
        double best = double.MaxValue;
        for (int repetition = 0; repetition < 5; repetition++)
        {
            long start = Stopwatch.GetTimestamp();
            for (int run = 0; run < runs; run++) pool.Run(weights.Groups, chunk, work);
            best = Math.Min(best, Stopwatch.GetElapsedTime(start).TotalSeconds / runs);
        }
        double checksum = 0;
        for (int i = 0; i < work.Output.Length; i += 97) checksum += work.Output[i];
        if (double.IsNaN(checksum)) throw new InvalidOperationException($"The {weights.Format} kernel produced NaN.");
        secondsPerRun = best;
        return macsPerRun / best;
    }

    internal struct MatMulWork : IParallelWork
    {
        public PackedMatrix Weights;
        public GemmInput Input;
        public FloatBuffer Output;
        public int Rows;

        public void Execute(int start, int end)
        {
            var store = new PlainStore { Output = Output, Rows = Rows };
            Gemm.Run(Weights, Input, start, end, ref store);
        }
    }

    // A plain store, as a plan's simplest epilogue: y[token, row..row+3].
    private struct PlainStore : ITileEpilogue
    {
        public FloatBuffer Output;
        public int Rows;

        public void Store(int row, int token, Vector128<float> sums) => Output.Store4(token * Rows + row, sums);

        public void Store16(int row, int token, Vector512<float> sums) => Output.Store16(token * Rows + row, sums);
    }
}
