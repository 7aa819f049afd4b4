using System.Runtime.Intrinsics;
using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Loading;
using Kiln.Threading;
using Kiln.Tests;

namespace Kiln.Generators.Tests;

/// <summary>
/// The sparse Q8_0 layouts (2:4 and block-sparse) and their kernels, on each kernel path in turn: the sparse kernel
/// must give the dense kernel's bits on the same weights with their zeros (it skips only zero work, in the same
/// order), the scalar oracle's sums, and GGML's own Q8_0 dot on the stored rows; a split run the same bits as one run.
/// Load-time checks and pruning: a weight that is not 2:4 is named with its row; pruning keeps the largest values.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class SparseGemmTests
{
    public static TheoryData<SparsePattern, KernelPath> PatternsOnPaths()
    {
        var data = new TheoryData<SparsePattern, KernelPath>();
        foreach (var pattern in new[] { SparsePattern.TwoFour, SparsePattern.Blocks })
            foreach (var path in KernelPathCases.AllPaths)
                data.Add(pattern, path);
        return data;
    }

    // The sparse kernels are 256-bit (AVX2), which the AVX-512 path runs too, as the dense quantized strips do; a 2:4
    // decode (one token) on the AVX-512 path has a 512-bit tile of its own.
    private static KernelPaths.ForcedPath Force(SparsePattern pattern, KernelPath path) =>
        KernelPathCases.Force(path, $"The {pattern} Q8_0 GEMM", KernelPathCases.NoVnniForm);

    [SkippableTheory]
    [MemberData(nameof(PatternsOnPaths))]
    public void SparseKernelsGiveTheDenseKernelsBitsOnTheSameZeros(SparsePattern pattern, KernelPath path)
    {
        using var forced = Force(pattern, path);
        foreach (var (rows, k, tokens, seed) in new[] { (8, 32, 1, 1), (12, 64, 3, 2), (36, 128, 9, 3), (4, 96, 16, 4), (20, 256, 1, 5), (72, 192, 1, 14) })
        {
            Console.WriteLine($"seed {seed}: {pattern} [{rows}×{k}]·{tokens} on {path}");
            var tensor = Pruned(pattern, rows, k, seed);
            using var dense = new PackedMatrix(PackedFormat.Q8_0, WeightLayouts.PadRows(rows), k);
            dense.Pack(0, tensor, "W");
            using var sparse = new PackedMatrix(PackedFormat.Q8_0, WeightLayouts.PadRows(rows), k, pattern);
            sparse.Pack(0, tensor, "W");
            sparse.FinishPacking();
            Assert.True(sparse.IsCompacted);

            var x = Values(tokens * k, seed + 100);
            var expected = Run(dense, rows, x, tokens);
            var actual = Run(sparse, rows, x, tokens);
            Assert.Equal(expected, actual); // the same bits: only zero work is skipped
            float[] scalar;
            using (KernelPaths.Force(KernelPath.Scalar)) scalar = Run(sparse, rows, x, tokens);
            var reference = GgmlDots(tensor, rows, k, x, tokens);
            double scale = reference.Max(Math.Abs) + 1e-30;
            for (int i = 0; i < reference.Length; i++)
            {
                Assert.True(Math.Abs(actual[i] - reference[i]) <= 2e-5 * scale, $"{pattern} {path} seed {seed}: y[{i}] = {actual[i]}, GGML's dot {reference[i]}");
                Assert.True(Math.Abs(scalar[i] - reference[i]) <= 2e-5 * scale, $"{pattern} scalar seed {seed}: y[{i}] = {scalar[i]}, GGML's dot {reference[i]}");
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(PatternsOnPaths))]
    public void StripsKeepingDifferentColumnsGiveTheDenseBits(SparsePattern pattern, KernelPath path)
    {
        using var forced = Force(pattern, path);
        const int rows = 48, k = 160;
        var values = Pruned(pattern, rows, k, seed: 16).Data;
        // Whole zero strip blocks in some strips only (not stored): the decode tiles skip them, strip by strip.
        foreach (var (strip, block) in new[] { (1, 1), (2, 4), (3, 0), (3, 3), (4, 2) })
            for (int r = 8 * strip; r < 8 * strip + 8; r++)
                values.AsSpan(r * k + 32 * block, 32).Clear();
        var tensor = Stored(values, rows, k);
        using var dense = new PackedMatrix(PackedFormat.Q8_0, rows, k);
        dense.Pack(0, tensor, "W");
        using var sparse = new PackedMatrix(PackedFormat.Q8_0, rows, k, pattern);
        sparse.Pack(0, tensor, "W");
        sparse.FinishPacking();
        var x = Values(k, 17);
        Assert.Equal(Run(dense, rows, x, 1), Run(sparse, rows, x, 1));
    }

    [SkippableTheory]
    [MemberData(nameof(PatternsOnPaths))]
    public void ASplitRunGivesTheSameBitsAsOneRun(SparsePattern pattern, KernelPath path)
    {
        using var forced = Force(pattern, path);
        foreach (int tokens in new[] { 7, 1 })
            SplitRun(pattern, tokens);
    }

    private static void SplitRun(SparsePattern pattern, int tokens)
    {
        const int rows = 44, k = 64;
        using var packed = new PackedMatrix(PackedFormat.Q8_0, rows, k, pattern);
        packed.Pack(0, Pruned(pattern, rows, k, seed: 6));
        packed.FinishPacking();
        using var pool = new WorkerPool(1);
        using var scratch = new GemmScratch(tokens, k);
        using var memory = new NativeBlock(tokens * k * sizeof(float));
        Values(tokens * k, 7).CopyTo(memory.Floats(0, tokens * k).Span);
        var input = scratch.Prepare(PackedFormat.Q8_0, memory.Floats(0, tokens * k), k, tokens, k, null, 0, pool);
        var whole = new float[tokens * rows];
        var one = new CollectingEpilogue { Y = whole, Stride = rows, Calls = new int[packed.Groups * tokens] };
        Gemm.Run(packed, input, 0, packed.Groups, ref one);
        var parts = new float[tokens * rows];
        var collect = new CollectingEpilogue { Y = parts, Stride = rows, Calls = new int[packed.Groups * tokens] };
        foreach (var (first, end) in new[] { (0, 1), (1, 4), (4, 5), (5, 11) })
            Gemm.Run(packed, input, first, end, ref collect);
        Assert.Equal(whole, parts);
        Assert.All(collect.Calls!, calls => Assert.Equal(1, calls)); // every (group, token) exactly once
    }

    [Fact]
    public void TheSparseLayoutsHoldTheDenseValuesInFewerBytes()
    {
        const int rows = 64, k = 256;
        foreach (var pattern in new[] { SparsePattern.TwoFour, SparsePattern.Blocks })
        {
            var tensor = Pruned(pattern, rows, k, seed: 8);
            using var dense = new PackedMatrix(PackedFormat.Q8_0, rows, k);
            dense.Pack(0, tensor, "W");
            using var sparse = new PackedMatrix(PackedFormat.Q8_0, rows, k, pattern);
            sparse.Pack(0, tensor, "W");
            sparse.FinishPacking();
            var expected = new float[k];
            var actual = new float[k];
            for (int r = 0; r < rows; r++)
            {
                dense.DequantizeRow(r, expected);
                sparse.DequantizeRow(r, actual);
                Assert.Equal(expected, actual);
            }
            double ratio = (double)sparse.ByteCount / dense.ByteCount;
            // 2:4: 176 of 272 bytes per block (+ its column); blocks: the 30% of 8×32 tiles kept, and their columns.
            if (pattern == SparsePattern.TwoFour) Assert.InRange(ratio, 0.64, 0.67);
            else Assert.InRange(ratio, 0.30, 0.32);
            Assert.Contains(pattern == SparsePattern.TwoFour ? "2:4" : "block-sparse", sparse.Describe());
        }
    }

    [Fact]
    public void ARowThatIsNotTwoFourIsNamedWithItsRow()
    {
        const int rows = 8, k = 64;
        var values = Pruned(SparsePattern.TwoFour, rows, k, seed: 9).Data;
        values[5 * k + 36 + 2] = 1.5f; // a third nonzero in row 5's group at columns 36..39
        var tensor = new Tensor(values, rows, k);
        var load = Assert.Throws<ModelLoadException>(() => SparseWeights.Check("model.gguf", "blk.0.ffn_up.weight", tensor, SparsePattern.TwoFour));
        Assert.Contains("model.gguf", load.Message);
        Assert.Contains("tensor 'blk.0.ffn_up.weight' row 5", load.Message);
        Assert.Contains("columns 36..39 hold 3 nonzero values", load.Message);
        SparseWeights.Check("model.gguf", "blk.0.ffn_up.weight", tensor, SparsePattern.Blocks); // any weight is block-sparse

        using var packed = new PackedMatrix(PackedFormat.Q8_0, rows, k, SparsePattern.TwoFour);
        packed.Pack(0, tensor, 0, rows, "Wup");
        var plan = Assert.Throws<InvalidOperationException>(packed.FinishPacking);
        Assert.Contains("Wup row 5 is not 2:4 sparse: columns 36..39", plan.Message);
        Assert.Throws<ArgumentException>(() => new PackedMatrix(PackedFormat.Q4_0, rows, k, SparsePattern.TwoFour));
    }

    [Fact]
    public void PruningKeepsTheLargestMagnitudes()
    {
        var weight = new Tensor([0.5f, -3f, 2f, 0.1f, 0, 0, 0, 7f, -1f, 1f, -1f, 1f], 1, 12);
        var twoFour = SparseWeights.Prune(weight, SparsePattern.TwoFour);
        Assert.Equal([0, -3f, 2f, 0, 0, 0, 0, 7f, -1f, 1f, 0, 0], twoFour.Data);
        SparseWeights.Check("f", "w", twoFour, SparsePattern.TwoFour);

        const int rows = 32, k = 128;
        var values = Values(rows * k, 10);
        for (int c = 0; c < 32; c++) values[9 * k + 64 + c] *= 100; // tile (1, 2) of 8 rows is by far the largest
        var blocks = SparseWeights.Prune(new Tensor(values, rows, k), SparsePattern.Blocks, keepFraction: 1.0 / 16);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < k; c++)
                Assert.Equal(r / 8 == 1 && c / 32 == 2 ? values[r * k + c] : 0f, blocks.Data[r * k + c]);

        // A gate/up pair shares 4-row tiles, chosen by their joint norm: interleaved, each kept pair fills one strip block.
        var gate = new Tensor(Values(rows * k, 12), rows, k);
        var up = new Tensor(Values(rows * k, 13), rows, k);
        var pair = SparseWeights.PruneBlocksTogether(0.25, gate, up);
        using var packed = new PackedMatrix(PackedFormat.Q8_0, 2 * rows, k, SparsePattern.Blocks);
        packed.PackInterleaved(0, pair[0], pair[1], "Wgate", "Wup");
        packed.FinishPacking();
        Assert.Equal(2 * rows / 8 * (k / 32) / 4, packed.KeptBlocks); // a quarter of the strip blocks, none half empty
        for (int i = 0; i < pair[0].Data.Length; i++) Assert.Equal(pair[0].Data[i] == 0, pair[1].Data[i] == 0);

        // Stored Q8_0 blocks keep their scales and every kept quant: the pruned tensor dequantizes to its values.
        var stored = Stored(Values(rows * k, 11), rows, k);
        var pruned = SparseWeights.Prune(stored, SparsePattern.TwoFour);
        var decoded = new float[rows * k];
        Dequantize.ToFloat32(GgmlType.Q8_0, pruned.Stored!.Bytes, decoded);
        Assert.Equal(pruned.Data, decoded);
    }

    [Fact]
    public void CheckingAndPruningReadTheStoredRowsWithoutAFloatCopy()
    {
        const int rows = 16, k = 64;
        foreach (var type in new[] { GgmlType.Q8_0, GgmlType.F16, GgmlType.F32, GgmlType.Q4_0, GgmlType.Q4_K })
        {
            int cols = type == GgmlType.Q4_K ? 256 : k;
            var source = Values(rows * cols, 15);
            var bytes = new byte[GgmlTypeTraits.Of(type).ByteCount(source.Length)];
            Quantize.FromFloat32(type, source, bytes);
            var weight = new Tensor(new StoredTensor(type, bytes), rows, cols);

            var twoFour = SparseWeights.Prune(weight, SparsePattern.TwoFour);
            var blocks = SparseWeights.Prune(weight, SparsePattern.Blocks, keepFraction: 0.5);
            SparseWeights.Check("f", "w", twoFour, SparsePattern.TwoFour);
            // Types whose elements hold an exact zero keep their bytes; block formats with offsets or mins become Q8_0.
            var expected = type is GgmlType.Q4_0 or GgmlType.Q4_K ? GgmlType.Q8_0 : type;
            Assert.Equal(expected, twoFour.Stored!.Type);
            Assert.Equal(expected, blocks.Stored!.Type);
            Assert.False(weight.HasFloatData, $"{type}: pruning decoded the whole weight");
            Assert.False(twoFour.HasFloatData, $"{type}: checking decoded the whole weight");

            var original = new float[cols];
            var pruned = new float[cols];
            int zeroBlocks = 0;
            for (int r = 0; r < rows; r++)
            {
                weight.ReadRow(r, original);
                twoFour.ReadRow(r, pruned);
                for (int c = 0; c < cols; c += 4)
                {
                    int nonzero = 0;
                    for (int e = c; e < c + 4; e++) nonzero += pruned[e] != 0 ? 1 : 0;
                    Assert.True(nonzero <= 2, $"{type} row {r} columns {c}..{c + 3}: {nonzero} nonzero");
                }
                if (expected == type)
                    for (int c = 0; c < cols; c++)
                        Assert.True(pruned[c] == 0 || pruned[c] == original[c], $"{type} row {r} column {c}: {pruned[c]} is neither kept nor zero");
                blocks.ReadRow(r, pruned);
                for (int b = 0; b < cols / 32; b++)
                {
                    bool zero = true;
                    for (int c = b * 32; c < b * 32 + 32; c++) zero &= pruned[c] == 0;
                    zeroBlocks += zero ? 1 : 0;
                    if (!zero && expected == type)
                        for (int c = b * 32; c < b * 32 + 32; c++) Assert.Equal(original[c], pruned[c]); // a kept tile is kept whole
                }
            }
            Assert.Equal(rows * (cols / 32) / 2, zeroBlocks); // half the 8×32 tiles, every row of each
        }
    }

    /// <summary>A random Q8_0-stored [rows, k] weight pruned to <paramref name="pattern"/> (blocks: 30% of tiles kept).</summary>
    private static Tensor Pruned(SparsePattern pattern, int rows, int k, int seed) =>
        SparseWeights.Prune(Stored(Values(rows * k, seed), rows, k), pattern, keepFraction: 0.3);

    private static Tensor Stored(float[] values, int rows, int k)
    {
        var bytes = new byte[GgmlTypeTraits.Of(GgmlType.Q8_0).ByteCount(values.Length)];
        Quantize.FromFloat32(GgmlType.Q8_0, values, bytes);
        var decoded = new float[values.Length];
        Dequantize.ToFloat32(GgmlType.Q8_0, bytes, decoded);
        return new Tensor(decoded, rows, k) { Stored = new StoredTensor(GgmlType.Q8_0, bytes) };
    }

    private static float[] Values(int count, int seed)
    {
        var random = new Random(seed);
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = (float)(random.NextDouble() * 2 - 1) * (i % 32 == 5 ? 6 : 1);
        return values;
    }

    private static float[] Run(PackedMatrix packed, int rows, float[] x, int tokens)
    {
        int k = packed.K;
        using var pool = new WorkerPool(1);
        using var scratch = new GemmScratch(tokens, k);
        using var memory = new NativeBlock(x.Length * sizeof(float));
        var buffer = memory.Floats(0, x.Length);
        x.CopyTo(buffer.Span);
        var input = scratch.Prepare(packed.Format, buffer, k, tokens, k, null, 0, pool);
        var y = new float[tokens * rows];
        var collect = new CollectingEpilogue { Y = y, Stride = rows };
        Gemm.Run(packed, input, 0, packed.Groups, ref collect);
        return y;
    }

    /// <summary>GGML's scalar Q8_0 dot of each stored (pruned) row with the same Q8 activations.</summary>
    private static double[] GgmlDots(Tensor weights, int rows, int k, float[] x, int tokens)
    {
        var scratch = new byte[Q8Activations.ScratchBytes(tokens, k)];
        var activations = Q8Activations.Quantize(x.AsSpan(0, tokens * k), tokens, k, scratch, KernelPath.Scalar);
        int rowBytes = Kiln.Kernels.Quantized.Q8_0.RowBytes(k);
        var y = new double[tokens * rows];
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < rows; r++)
                y[t * rows + r] = Kiln.Kernels.Quantized.Q8_0.Dot(weights.Stored!.Bytes.Slice(r * rowBytes, rowBytes), activations[t], KernelPath.Scalar);
        return y;
    }

}
