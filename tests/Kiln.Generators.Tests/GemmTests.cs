using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Kiln.Kernels;
using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Loading;
using Kiln.Threading;
using Kiln.Tests;

namespace Kiln.Generators.Tests;

/// <summary>
/// The runtime pieces the generated plans call: packing (stored bytes copied, everything else converted), input
/// preparation (norm, Q8 quantization) and the tile kernels, on each kernel path in turn, each against an independent
/// reference — the per-format dots of Kiln.Kernels.Quantized on the same Q8 activations, or float64 loops — and the
/// scalar kernels, on shapes with partial groups and odd token counts. Also: a run split into ranges gives the same
/// bits as one run (thread-count independence).
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class GemmTests
{
    private static readonly PackedFormat[] Formats = [PackedFormat.F32, PackedFormat.BF16, PackedFormat.Q8_0, PackedFormat.Q4_0];

    public static TheoryData<PackedFormat, KernelPath> FormatsOnPaths() => On(Formats);

    public static TheoryData<PackedFormat, KernelPath> QuantizedOnPaths() => On([PackedFormat.Q4_0, PackedFormat.Q8_0]);

    public static TheoryData<PackedFormat, KernelPath> SomeOnPaths() => On([PackedFormat.Q4_0, PackedFormat.Q8_0, PackedFormat.F32]);

    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    private static TheoryData<PackedFormat, KernelPath> On(PackedFormat[] formats)
    {
        var data = new TheoryData<PackedFormat, KernelPath>();
        foreach (var format in formats)
            foreach (var path in KernelPathCases.AllPaths)
                data.Add(format, path);
        return data;
    }

    /// <summary>
    /// Forces <paramref name="path"/> for the <paramref name="format"/> GEMM and its input preparation: F32 has AVX2 and
    /// AVX-512 forms (its panel tiles); BF16 an AVX-512 form only; the quantized ones an AVX2 form (their strips, which
    /// AVX-512 runs too, with its own activation quantization).
    /// </summary>
    private static KernelPaths.ForcedPath Force(PackedFormat format, KernelPath path) =>
        KernelPathCases.Force(path, $"The {format} GEMM", format == PackedFormat.BF16
            ? [KernelPath.Scalar, KernelPath.Avx512BW]
            : KernelPathCases.NoVnniForm);

    [SkippableTheory]
    [MemberData(nameof(FormatsOnPaths))]
    public void KernelsMatchTheReferenceDots(PackedFormat format, KernelPath path)
    {
        using var forced = Force(format, path);
        // One token on 9 and 5 groups: the AVX-512 decode tile's pairs of strips, with a strip or a half left over.
        var shapes = new List<(int Rows, int K, int Tokens)> { (4, 32, 1), (36, 96, 1), (20, 64, 1), (13, 64, 3), (32, 96, 5), (8, 256, 8), (7, 128, 2), (12, 64, 13) };
        if (!WeightLayouts.IsQuantized(format)) shapes.AddRange([(6, 40, 3), (5, 24, 4)]); // K not a multiple of 16: the float kernels' scalar tail
        if (format == PackedFormat.F32) shapes.AddRange([(72, 48, 14), (40, 17, 6)]); // F32: tiles of 4 panels and 6 tokens, then a partial panel and a token tail
        foreach (var (rows, k, tokens) in shapes)
        {
            var weights = Matrix(rows, k, seed: rows * 31 + k);
            var x = Matrix(tokens, k, seed: tokens + 7);
            var tensor = Stored(format, weights, rows, k);
            using var packed = new PackedMatrix(format, WeightLayouts.PadRows(rows), k);
            packed.Pack(0, tensor);

            var expected = Expected(format, tensor, rows, k, x, tokens);
            var actual = Prepare(packed, rows, x, tokens, norm: null);
            float[] scalar;
            using (KernelPaths.Force(KernelPath.Scalar)) scalar = Prepare(packed, rows, x, tokens, norm: null);
            double scale = expected.Max(Math.Abs) + 1e-30;
            for (int i = 0; i < expected.Length; i++)
            {
                Assert.True(Math.Abs(actual[i] - expected[i]) <= 2e-5 * scale, $"{format} {path} [{rows}×{k}]·{tokens}: y[{i}] = {actual[i]}, reference {expected[i]}");
                Assert.True(Math.Abs(actual[i] - scalar[i]) <= 2e-5 * scale, $"{format} {path} [{rows}×{k}]·{tokens}: y[{i}] = {actual[i]}, scalar kernel {scalar[i]}");
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(QuantizedOnPaths))]
    public void TinyWeightsWithSubnormalFp16ScalesStayExact(PackedFormat format, KernelPath path)
    {
        using var forced = Force(format, path);
        const int rows = 8, k = 64, tokens = 2;
        // Weights near 1e-4: their block scales are fp16 subnormals (below 6.1e-5), which the kernels widen themselves.
        var weights = Matrix(rows, k, seed: 21).Select(v => v * 1e-4f).ToArray();
        var x = Matrix(tokens, k, seed: 22);
        var tensor = Stored(format, weights, rows, k);
        using var packed = new PackedMatrix(format, rows, k);
        packed.Pack(0, tensor);
        var expected = Expected(format, tensor, rows, k, x, tokens);
        var actual = Prepare(packed, rows, x, tokens, norm: null);
        double scale = expected.Max(Math.Abs);
        Assert.True(scale > 0);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 2e-5 * scale, $"y[{i}] = {actual[i]}, reference {expected[i]}");
    }

    [SkippableTheory]
    [MemberData(nameof(SomeOnPaths))]
    public void ASplitRunGivesTheSameBitsAsOneRun(PackedFormat format, KernelPath path)
    {
        using var forced = Force(format, path);
        const int rows = 44, k = 64;
        var tensor = Stored(format, Matrix(rows, k, 3), rows, k);
        using var packed = new PackedMatrix(format, rows, k);
        packed.Pack(0, tensor);
        foreach (int tokens in new[] { 1, 7 }) // one token: the AVX-512 path's pairs of strips, where a range has them
        {
            using var pool = new WorkerPool(1);
            using var scratch = new GemmScratch(tokens, k);
            using var memory = new NativeBlock(tokens * k * sizeof(float));
            Matrix(tokens, k, 4).CopyTo(memory.Floats(0, tokens * k).Span);
            var input = scratch.Prepare(format, memory.Floats(0, tokens * k), k, tokens, k, null, 0, pool);

            var whole = Run(packed, input, rows, tokens);
            var parts = new float[tokens * rows];
            var collect = new CollectingEpilogue { Y = parts, Stride = rows, Calls = new int[packed.Groups * tokens] };
            foreach (var (first, end) in new[] { (0, 1), (1, 4), (4, 5), (5, 11) })
                Gemm.Run(packed, input, first, end, ref collect);
            Assert.Equal(whole, parts);
            Assert.All(collect.Calls!, calls => Assert.Equal(1, calls)); // every (group, token) exactly once
        }
    }

    [SkippableTheory]
    [MemberData(nameof(SomeOnPaths))]
    public void GemmBlocksCoverEveryTileOnceWithTheSameBitsAsOneRun(PackedFormat format, KernelPath path)
    {
        using var forced = Force(format, path);
        // 50 groups: three whole 64-row tiles and a short one; 203 tokens: blocks of whole 6-token tiles and a tail.
        const int rows = 200, k = 64, tokens = 203;
        var tensor = Stored(format, Matrix(rows, k, 5), rows, k);
        using var packed = new PackedMatrix(format, rows, k);
        packed.Pack(0, tensor);
        using var pool = new WorkerPool(1);
        using var scratch = new GemmScratch(tokens, k);
        using var memory = new NativeBlock(tokens * k * sizeof(float));
        Matrix(tokens, k, 6).CopyTo(memory.Floats(0, tokens * k).Span);
        var input = scratch.Prepare(format, memory.Floats(0, tokens * k), k, tokens, k, null, 0, pool);
        var whole = Run(packed, input, rows, tokens);

        var blocks = GemmBlocks.For(packed, tokens, threads: 2);
        // Only F32 splits the tokens (its kernel alone takes a token range); the others keep Gemm.ChunkSize's rows.
        if (format == PackedFormat.F32)
        {
            Assert.True(blocks.TokenBlocks > 1, $"{blocks.TokenBlocks} token blocks");
            Assert.Equal(0, blocks.TokensPerBlock % 6);
            Assert.Equal(16, blocks.GroupsPerBlock);
        }
        else
        {
            Assert.Equal(1, blocks.TokenBlocks);
            Assert.Equal(Gemm.ChunkSize(packed, tokens, 2), blocks.GroupsPerBlock);
        }
        var parts = new float[tokens * rows];
        var collect = new CollectingEpilogue { Y = parts, Stride = rows, Calls = new int[packed.Groups * tokens] };
        for (int item = blocks.Count - 1; item >= 0; item--) // in reverse: the order items run in does not matter
        {
            blocks.Get(item, out int first, out int end, out int firstToken, out int endToken);
            if (format == PackedFormat.F32) Gemm.F32(packed, input, first, end, firstToken, endToken, ref collect);
            else
            {
                Assert.Equal((0, tokens), (firstToken, endToken));
                Gemm.Run(packed, input, first, end, ref collect);
            }
        }
        Assert.Equal(whole, parts);
        Assert.All(collect.Calls!, calls => Assert.Equal(1, calls)); // every (group, token) exactly once
        Assert.Throws<ArgumentOutOfRangeException>(() => blocks.Get(blocks.Count, out _, out _, out _, out _));
        // One thread, or few tokens: rows only, every item all the tokens.
        Assert.Equal(1, GemmBlocks.For(packed, tokens, threads: 1).TokenBlocks);
        Assert.Equal(1, GemmBlocks.For(packed, 60, threads: 2).TokenBlocks);
    }

    [SkippableTheory]
    [MemberData(nameof(SomeOnPaths))]
    public void PreparationFusesTheRmsNormAsTheEagerOpComputesIt(PackedFormat format, KernelPath path)
    {
        using var forced = Force(format, path);
        const int rows = 8, k = 64, tokens = 3;
        var tensor = Stored(format, Matrix(rows, k, 5), rows, k);
        using var packed = new PackedMatrix(format, rows, k);
        packed.Pack(0, tensor);
        var x = Matrix(tokens, k, 6);
        var g = Enumerable.Range(0, k).Select(i => 0.5f + i / (float)k).ToArray();

        // The eager op's normalized rows, then the same matmul on them.
        var normalized = Ops.RmsNorm(new Tensor(x, tokens, k), new Tensor(g, k), 1e-5f).Data;
        var expected = Expected(format, tensor, rows, k, normalized, tokens);
        var actual = Prepare(packed, rows, x, tokens, g, threads: 2);
        double scale = expected.Max(Math.Abs);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 2e-5 * scale, $"y[{i}] = {actual[i]}, reference {expected[i]}");
    }

    [Theory]
    [InlineData(GgmlType.Q4_0, PackedFormat.Q4_0)]
    [InlineData(GgmlType.Q8_0, PackedFormat.Q8_0)]
    [InlineData(GgmlType.BF16, PackedFormat.BF16)]
    public void PackingCopiesStoredBlocksWithoutRequantizing(GgmlType type, PackedFormat format)
    {
        const int rows = 6, k = 64;
        var values = Matrix(rows, k, 9);
        var bytes = new byte[GgmlTypeTraits.Of(type).ByteCount(values.Length)];
        Quantize.FromFloat32(type, values, bytes);
        var decoded = new float[values.Length];
        Dequantize.ToFloat32(type, bytes, decoded);
        // Data deliberately unrelated to the stored bytes: the packed layout must come from the bytes.
        var tensor = new Tensor(new float[values.Length], rows, k) { Stored = new StoredTensor(type, bytes) };
        using var packed = new PackedMatrix(format, 8, k);
        packed.Pack(0, tensor, "W");
        var row = new float[k];
        for (int r = 0; r < rows; r++)
        {
            packed.DequantizeRow(r, row);
            Assert.Equal(decoded.AsSpan(r * k, k).ToArray(), row);
        }
        packed.DequantizeRow(rows, row);
        Assert.All(row, v => Assert.Equal(0f, v)); // the padding rows are zero
        Assert.Contains($"W: stored {type} copied", packed.Describe());
    }

    [Fact]
    public void ConvertedWeightsUseGgmlsReferenceQuantizer()
    {
        const int rows = 4, k = 96;
        var values = Matrix(rows, k, 11);
        using var packed = new PackedMatrix(PackedFormat.Q4_0, rows, k);
        packed.Pack(0, new Tensor(values, rows, k), "W");
        var expected = new float[values.Length];
        var bytes = new byte[Kiln.Kernels.Quantized.Q4_0.RowBytes(k) * rows];
        Quantize.FromFloat32(GgmlType.Q4_0, values, bytes);
        Dequantize.ToFloat32(GgmlType.Q4_0, bytes, expected);
        var row = new float[k];
        for (int r = 0; r < rows; r++)
        {
            packed.DequantizeRow(r, row);
            Assert.Equal(expected.AsSpan(r * k, k).ToArray(), row);
        }
        Assert.Contains("W: F32 converted", packed.Describe());
        Assert.Throws<InvalidOperationException>(() => new PackedMatrix(PackedFormat.Q8_0, 4, 48)); // not whole blocks
    }

    [Fact]
    public void AsStoredPicksTheLayoutOfTheStoredTypeAndTheMostPreciseForAMix()
    {
        Tensor Of(GgmlType type) => new(new float[256], 1, 256) { Stored = type == GgmlType.F32 ? null : new StoredTensor(type, Array.Empty<byte>()) };
        Assert.Equal(PackedFormat.F32, WeightLayouts.Resolve(WeightFormat.AsStored, Of(GgmlType.F32)));
        Assert.Equal(PackedFormat.F32, WeightLayouts.Resolve(WeightFormat.AsStored, Of(GgmlType.F16)));
        Assert.Equal(PackedFormat.BF16, WeightLayouts.Resolve(WeightFormat.AsStored, Of(GgmlType.BF16)));
        Assert.Equal(PackedFormat.Q8_0, WeightLayouts.Resolve(WeightFormat.AsStored, Of(GgmlType.Q8_0)));
        Assert.Equal(PackedFormat.Q4_0, WeightLayouts.Resolve(WeightFormat.AsStored, Of(GgmlType.Q4_0)));
        Assert.Equal(PackedFormat.Q8_0, WeightLayouts.Resolve(WeightFormat.AsStored, Of(GgmlType.Q2_K))); // no kernel of its own
        Assert.Equal(PackedFormat.Q8_0, WeightLayouts.Resolve(WeightFormat.AsStored, Of(GgmlType.Q4_0), Of(GgmlType.Q8_0)));
        Assert.Equal(PackedFormat.BF16, WeightLayouts.Resolve(WeightFormat.AsStored, Of(GgmlType.Q4_0), Of(GgmlType.BF16)));
        Assert.Equal(PackedFormat.Q4_0, WeightLayouts.Resolve(WeightFormat.Q4_0, Of(GgmlType.F32)));
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void AttentionRowsMatchTheirDefinition(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Attention over F32 rows", KernelPathCases.NoVnniForm);
        foreach (var (headDim, positions) in new[] { (64, 1), (64, 37), (40, 9), (8, 5) })
        {
            const int stride = 96;
            var random = new Random(headDim + positions);
            float[] query = Enumerable.Range(0, headDim).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            float[] rows = Enumerable.Range(0, positions * stride).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            var scores = new float[positions];
            VectorMath.AttentionScores(query, rows, stride, 0.25f, scores);
            for (int p = 0; p < positions; p++)
            {
                double dot = 0;
                for (int i = 0; i < headDim; i++) dot += (double)query[i] * rows[p * stride + i];
                Assert.Equal(dot * 0.25, scores[p], 1e-5);
            }
            var result = Enumerable.Repeat(float.NaN, headDim).ToArray(); // overwritten, not accumulated into
            VectorMath.WeightedSum(rows, stride, scores, result);
            for (int i = 0; i < headDim; i++)
            {
                double sum = 0;
                for (int p = 0; p < positions; p++) sum += (double)scores[p] * rows[p * stride + i];
                Assert.Equal(sum, result[i], 1e-5);
            }
        }
    }

    /// <summary>Head size, first KV head in the row, query heads, query heads per KV head, positions.</summary>
    private static readonly (int HeadDim, int KvOffset, int Heads, int Group, int Positions)[] HeadShapes =
    [
        (64, 1, 4, 1, 33),   // every head of a token, MHA, a partial block of positions
        (64, 4, 6, 2, 13),   // GQA (two query heads per KV head), a chunk of 3 of 4 KV heads
        (16, 2, 2, 1, 1),    // one position
        (40, 1, 3, 1, 9),    // a head size the vector rows do not cover: the per-head path
    ];

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void MultiHeadAttentionMatchesTheDefinition(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "Multi-head attention over F32 rows", KernelPathCases.NoVnniForm);
        foreach (var (headDim, kvOffset, heads, group, positions) in HeadShapes)
        {
            int kvHeadsInRow = kvOffset + heads / group, stride = kvHeadsInRow * headDim;
            var random = new Random(headDim * 7 + heads);
            float[] Values(int n) => Enumerable.Range(0, n).Select(_ => (float)random.NextDouble() * 2 - 1).ToArray();
            float[] queries = Values(heads * headDim), keys = Values(positions * stride), values = Values(positions * stride);
            var scores = new float[heads * positions];
            var output = new float[heads * headDim];
            const float scale = 0.125f;
            VectorMath.Attention(queries, heads, headDim, group, keys.AsSpan(kvOffset * headDim), values.AsSpan(kvOffset * headDim), stride,
                positions, scale, scores, output);
            for (int h = 0; h < heads; h++)
            {
                int kv = (kvOffset + h / group) * headDim;
                var weights = new double[positions];
                for (int p = 0; p < positions; p++)
                {
                    double dot = 0;
                    for (int i = 0; i < headDim; i++) dot += (double)queries[h * headDim + i] * keys[p * stride + kv + i];
                    weights[p] = dot * scale;
                }
                double max = weights.Max(), sum = weights.Sum(x => Math.Exp(x - max));
                for (int i = 0; i < headDim; i++)
                {
                    double expected = 0;
                    for (int p = 0; p < positions; p++) expected += Math.Exp(weights[p] - max) / sum * values[p * stride + kv + i];
                    Assert.Equal(expected, output[h * headDim + i], 1e-5);
                }
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void HalfRowsGiveWhatTheirWidenedFloatsGive(KernelPath path)
    {
        // The F16 rows have no 256-bit form: AVX2 widens them one at a time, as the scalar path does.
        using var forced = KernelPathCases.Force(path, "Attention over F16 rows", [KernelPath.Scalar, KernelPath.Avx512BW]);
        foreach (var (headDim, kvOffset, heads, group, positions) in HeadShapes)
        {
            int stride = (kvOffset + heads / group) * headDim;
            var random = new Random(headDim * 5 + heads);
            Half[] Halves(int n) => Enumerable.Range(0, n).Select(_ => (Half)(random.NextDouble() * 2 - 1)).ToArray();
            float[] queries = Enumerable.Range(0, heads * headDim).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            Half[] keys = Halves(positions * stride), values = Halves(positions * stride);
            float[] keyFloats = keys.Select(h => (float)h).ToArray(), valueFloats = values.Select(h => (float)h).ToArray();
            int scoreStride = positions + 3, first = 2; // scores land mid-row, as for a sequence's second block
            var expectedScores = new float[heads * scoreStride];
            var scores = new float[heads * scoreStride];
            VectorMath.AttentionScores(queries, heads, headDim, group, keyFloats.AsSpan(kvOffset * headDim), stride, positions, 0.125f, expectedScores, scoreStride, first);
            VectorMath.AttentionScores(queries, heads, headDim, group, keys.AsSpan(kvOffset * headDim), stride, positions, 0.125f, scores, scoreStride, first);
            var expectedOutput = Enumerable.Repeat(0.5f, heads * headDim).ToArray(); // accumulated into
            var output = (float[])expectedOutput.Clone();
            VectorMath.AttentionValues(expectedScores, scoreStride, first, heads, headDim, group, valueFloats.AsSpan(kvOffset * headDim), stride, positions, expectedOutput);
            VectorMath.AttentionValues(expectedScores, scoreStride, first, heads, headDim, group, values.AsSpan(kvOffset * headDim), stride, positions, output);
            // The same kernel over either element type gives the same bits: the vector rows, or the scalar loops.
            bool sameKernel = path == KernelPath.Scalar || headDim % 16 == 0;
            for (int i = 0; i < scores.Length; i++) Assert.Equal(expectedScores[i], scores[i], sameKernel ? 0 : 1e-5);
            for (int i = 0; i < output.Length; i++) Assert.Equal(expectedOutput[i], output[i], sameKernel ? 0 : 1e-5);
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void FiniteHalfRowsGiveTheExactWideningsBits(KernelPath path)
    {
        // Keys and values vouched finite are widened short of 2^112, which the query or the weight takes instead: the
        // same bits as the exact widening for every finite half (subnormals, ±0, ±65504 among them), and the exact
        // widening itself where a query or a weight of 2^16 or more would overflow when scaled.
        using var forced = KernelPathCases.Force(path, "Attention over finite F16 rows", [KernelPath.Scalar, KernelPath.Avx512BW]);
        const int Seed = 2205;
        foreach (var (headDim, kvOffset, heads, group, positions) in HeadShapes)
        {
            int stride = (kvOffset + heads / group) * headDim;
            var random = new Random(Seed + headDim * 5 + heads);
            Half Draw() => random.Next(10) switch
            {
                0 => BitConverter.UInt16BitsToHalf((ushort)(random.Next(1, 0x400) | random.Next(2) << 15)), // subnormal
                1 => random.Next(2) == 0 ? Half.MaxValue : Half.MinValue,
                2 => BitConverter.UInt16BitsToHalf((ushort)(random.Next(2) << 15)),                         // ±0
                _ => (Half)((random.NextDouble() * 2 - 1) * Math.Pow(2, random.Next(-20, 12))),
            };
            Half[] keys = Enumerable.Range(0, positions * stride).Select(_ => Draw()).ToArray();
            Half[] values = Enumerable.Range(0, positions * stride).Select(_ => Draw()).ToArray();
            int scoreStride = positions + 3, first = 2;
            foreach (float largest in new[] { 1f, 60000f, 70000f })
            {
                float[] queries = Enumerable.Range(0, heads * headDim).Select(_ => (float)(random.NextDouble() * 2 - 1) * largest).ToArray();
                var weights = Enumerable.Range(0, heads * scoreStride).Select(_ => (float)random.NextDouble() * largest).ToArray();
                queries[^1] = -largest;
                weights[(heads - 1) * scoreStride + first + positions - 1] = largest;
                var expected = new float[heads * scoreStride];
                var actual = new float[heads * scoreStride];
                VectorMath.AttentionScores(queries, heads, headDim, group, keys.AsSpan(kvOffset * headDim), stride, positions, 0.125f, expected, scoreStride, first);
                VectorMath.AttentionScores(queries, heads, headDim, group, keys.AsSpan(kvOffset * headDim), stride, positions, 0.125f, actual, scoreStride, first, finiteKeys: true);
                Assert.Equal(expected, actual);
                var expectedOutput = Enumerable.Repeat(0.5f, heads * headDim).ToArray();
                var output = (float[])expectedOutput.Clone();
                VectorMath.AttentionValues(weights, scoreStride, first, heads, headDim, group, values.AsSpan(kvOffset * headDim), stride, positions, expectedOutput);
                VectorMath.AttentionValues(weights, scoreStride, first, heads, headDim, group, values.AsSpan(kvOffset * headDim), stride, positions, output, finiteValues: true);
                Assert.True(expectedOutput.SequenceEqual(output), $"seed {Seed}, head {headDim}, {heads} heads, largest factor {largest}: weighted values differ");
                Assert.All(output, x => Assert.True(float.IsFinite(x), $"seed {Seed}: a weighted value {x} overflowed"));
            }
        }
    }

    [Fact]
    public void RotatePairsTurnsEachAdjacentPairByItsAngle()
    {
        var pairs = Vector128.Create(1.5f, -2f, -3.25f, 0.75f); // a₀, b₀, a₁, b₁
        var rotated = VectorMath.RotatePairs(pairs, Vector128.Create(0.6f, 0.6f, -0.8f, -0.8f), Vector128.Create(-0.8f, 0.8f, -0.6f, 0.6f));
        Assert.Equal(1.5 * 0.6 - -2 * 0.8, rotated[0], 1e-6);
        Assert.Equal(1.5 * 0.8 + -2 * 0.6, rotated[1], 1e-6);
        Assert.Equal(-3.25 * -0.8 - 0.75 * 0.6, rotated[2], 1e-6);
        Assert.Equal(-3.25 * 0.6 + 0.75 * -0.8, rotated[3], 1e-6);
    }

    private static float[] Run(PackedMatrix packed, GemmInput input, int rows, int tokens)
    {
        var y = new float[tokens * rows];
        var collect = new CollectingEpilogue { Y = y, Stride = rows };
        Gemm.Run(packed, input, 0, packed.Groups, ref collect);
        return y;
    }

    /// <summary>
    /// Prepares <paramref name="x"/> (normalized by <paramref name="norm"/> when given) for <paramref name="packed"/>'s
    /// layout and runs the GEMM on the active path: y [tokens, rows], the padding rows left out.
    /// </summary>
    private static float[] Prepare(PackedMatrix packed, int rows, float[] x, int tokens, float[]? norm, int threads = 1)
    {
        int k = packed.K;
        using var pool = new WorkerPool(threads);
        using var scratch = new GemmScratch(tokens, k);
        using var memory = new NativeBlock(x.Length * sizeof(float));
        var buffer = memory.Floats(0, x.Length);
        x.CopyTo(buffer.Span);
        var input = scratch.Prepare(packed.Format, buffer, k, tokens, k, norm, 1e-5f, pool);
        return Run(packed, input, rows, tokens);
    }

    /// <summary>A tensor of <paramref name="values"/> stored in the format's own type (the plan's usual case).</summary>
    private static Tensor Stored(PackedFormat format, float[] values, int rows, int k)
    {
        var type = format switch { PackedFormat.BF16 => GgmlType.BF16, PackedFormat.Q8_0 => GgmlType.Q8_0, PackedFormat.Q4_0 => GgmlType.Q4_0, _ => GgmlType.F32 };
        if (type == GgmlType.F32) return new Tensor(values, rows, k);
        var bytes = new byte[GgmlTypeTraits.Of(type).ByteCount(values.Length)];
        Quantize.FromFloat32(type, values, bytes);
        var decoded = new float[values.Length];
        Dequantize.ToFloat32(type, bytes, decoded);
        return new Tensor(decoded, rows, k) { Stored = new StoredTensor(type, bytes) };
    }

    /// <summary>
    /// The reference: quantized layouts dot the stored rows with Kiln.Kernels.Quantized's scalar Dot against the same
    /// Q8 activations (Q8Activations quantizes by the same rule); float layouts in float64 on the stored values.
    /// </summary>
    private static double[] Expected(PackedFormat format, Tensor weights, int rows, int k, float[] x, int tokens)
    {
        var y = new double[tokens * rows];
        if (WeightLayouts.IsQuantized(format))
        {
            var scratch = new byte[Q8Activations.ScratchBytes(tokens, k)];
            var activations = Q8Activations.Quantize(x.AsSpan(0, tokens * k), tokens, k, scratch, KernelPath.Scalar);
            int rowBytes = format == PackedFormat.Q8_0 ? Kiln.Kernels.Quantized.Q8_0.RowBytes(k) : Kiln.Kernels.Quantized.Q4_0.RowBytes(k);
            for (int t = 0; t < tokens; t++)
                for (int r = 0; r < rows; r++)
                {
                    var row = weights.Stored!.Bytes.Slice(r * rowBytes, rowBytes);
                    y[t * rows + r] = format == PackedFormat.Q8_0
                        ? Kiln.Kernels.Quantized.Q8_0.Dot(row, activations[t], KernelPath.Scalar)
                        : Kiln.Kernels.Quantized.Q4_0.Dot(row, activations[t], KernelPath.Scalar);
                }
            return y;
        }
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < rows; r++)
            {
                double sum = 0;
                for (int i = 0; i < k; i++) sum += (double)weights.Data[r * k + i] * x[t * k + i];
                y[t * rows + r] = sum;
            }
        return y;
    }

    private static float[] Matrix(int rows, int columns, int seed)
    {
        var random = new Random(seed);
        var values = new float[rows * columns];
        for (int i = 0; i < values.Length; i++)
        {
            double u1 = 1 - random.NextDouble(), u2 = random.NextDouble();
            values[i] = (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2)) * (i % 32 == 5 ? 6 : 1);
        }
        return values;
    }
}
