using Kiln.Kernels.Quantized;
using Kiln.Models;
using Kiln.Testing;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The BERT encoder of samples/Models compiled by the generator against its own eager forward, on seeded F32 weights:
/// packed steps of sequences of different lengths (one token, odd lengths, two token types), each pooling a file can
/// ask for, every kernel path forced in turn. And what packing means: a sequence's embedding does not depend on what
/// else shares its step.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class EncoderTests(ITestOutputHelper output)
{
    private const int Heads = 3, Layers = 2, Vocab = 41, Context = 40, Types = 2;
    private const int MaxTokens = 48;

    public static TheoryData<int, int, KernelPath> Cases()
    {
        var cases = new TheoryData<int, int, KernelPath>();
        foreach (int headDim in new[] { 32, 18 }) // heads of 32 take the vector attention kernels; 18 the scalar tails
            foreach (int pooling in new[] { 1, 2, 3 })
                foreach (var path in KernelPathCases.AllPaths)
                    cases.Add(headDim, pooling, path);
        return cases;
    }

    [SkippableTheory]
    [MemberData(nameof(Cases))]
    public void CompiledPlanMatchesEagerForward(int headDim, int pooling, KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "A plan's generated loops", KernelPathCases.NoVnniForm);
        var file = File(headDim, seed: 1000 + headDim * 10 + pooling, pooling);
        IKilnModel model = Bert.Load(file);
        using var plan = model.Compile(new PlanOptions(MaxTokens, Threads: 2));
        output.WriteLine($"heads of {headDim}, pooling {pooling}, seed {file.Seed}, path {path}");

        // Five sequences packed in one step: lengths 7, 1, 13, 2 and 9, the third with a second segment.
        int[] lengths = [7, 1, 13, 2, 9];
        var (expected, embeddings, worst) = EagerAndCompiled(model, plan, lengths, MaxTokens);
        for (int s = 0; s < lengths.Length; s++)
        {
            double norm = 0;
            for (int c = 0; c < model.VocabSize; c++) norm += (double)embeddings[s * model.VocabSize + c] * embeddings[s * model.VocabSize + c];
            Assert.InRange(Math.Sqrt(norm), 1 - 1e-5, 1 + 1e-5);
        }
        output.WriteLine($"  {expected.Data.Length} values, worst {worst:P0} of the bound (1e-5 + 1e-4·|x|); every row of unit length");
    }

    public static TheoryData<KernelPath> Paths => KernelPathCases.All;

    /// <summary>
    /// A step of 148 tokens: enough for the F32 matmuls to split their tokens into blocks as well as their rows
    /// (GemmBlocks), so tiles of one matmul go through their epilogues in blocks of tokens on both threads.
    /// </summary>
    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void ALargeStepSplitByTokenBlocksMatchesEagerForward(KernelPath path)
    {
        using var forced = KernelPathCases.Force(path, "A plan's generated loops", KernelPathCases.NoVnniForm);
        const int maxTokens = 160;
        var file = File(32, seed: 4242, pooling: 1);
        IKilnModel model = Bert.Load(file);
        using var plan = model.Compile(new PlanOptions(maxTokens, Threads: 2));
        int[] lengths = [40, 33, 1, 39, 35];
        output.WriteLine($"seed {file.Seed}, path {path}, {lengths.Sum()} tokens");
        var (_, _, worst) = EagerAndCompiled(model, plan, lengths, maxTokens);
        output.WriteLine($"  worst {worst:P0} of the bound (1e-5 + 1e-4·|x|)");
    }

    /// <summary>
    /// The sequences of <paramref name="lengths"/> packed in one step, through the eager forward and the compiled plan:
    /// every compiled value within 1e-5 + 1e-4·|x| of the eager one (asserted); the worst error as a share of that bound.
    /// </summary>
    private static (Tensor Expected, float[] Embeddings, double Worst) EagerAndCompiled(IKilnModel model, ICompiledPlan plan, int[] lengths, int maxTokens)
    {
        var (tokens, types) = Sequences(lengths);
        var eager = new AttentionContext(maxTokens);
        var compiled = new AttentionContext(maxTokens);
        Fill(eager, lengths, types);
        Fill(compiled, lengths, types);
        var expected = model.ForwardEager(tokens, eager);
        var embeddings = new float[lengths.Length * model.VocabSize];
        Array.Fill(embeddings, float.NaN);
        plan.Step(tokens, compiled, embeddings);

        Assert.Equal([lengths.Length, model.VocabSize], expected.Shape);
        double worst = 0;
        for (int i = 0; i < expected.Data.Length; i++)
        {
            double error = Math.Abs(expected.Data[i] - embeddings[i]) / (1e-5 + 1e-4 * Math.Abs(expected.Data[i]));
            Assert.True(error <= 1, $"element {i}: eager {expected.Data[i]}, compiled {embeddings[i]}");
            worst = Math.Max(worst, error);
        }
        return (expected, embeddings, worst);
    }

    [Fact]
    public void SequencesPackedTogetherEmbedAsAlone()
    {
        var model = Bert.Load(File(32, seed: 77, pooling: 1));
        using var plan = model.Compile(new PlanOptions(MaxTokens, Threads: 2));
        int[] lengths = [5, 11, 3];
        var (tokens, types) = Sequences(lengths);
        var together = new float[lengths.Length * model.VocabSize];
        var context = new AttentionContext(MaxTokens);
        Fill(context, lengths, types);
        plan.Step(tokens, context, together);

        int start = 0;
        for (int s = 0; s < lengths.Length; s++)
        {
            var alone = new float[model.VocabSize];
            context.Clear();
            context.AddSequence(lengths[s], types.AsSpan(start, lengths[s]));
            plan.Step(tokens.AsSpan(start, lengths[s]), context, alone);
            for (int c = 0; c < alone.Length; c++)
                Assert.True(Math.Abs(alone[c] - together[s * model.VocabSize + c]) <= 1e-6f, $"sequence {s}, column {c}: alone {alone[c]}, packed {together[s * model.VocabSize + c]}");
            start += lengths[s];
        }
    }

    [Fact]
    public void EncoderRejectsDecoderContextsAndCaches()
    {
        var model = Bert.Load(File(32, seed: 5, pooling: 1));
        Assert.Equal(default, model.KvShape);
        Assert.Throws<NotSupportedException>(() => model.CreateKvCache(1, 8));
        using var plan = model.Compile(new PlanOptions(8, Threads: 1));
        var cached = new AttentionContext(new KvCache(1, 1, 8, 4), 8);
        cached.Add(0, 0, true);
        var error = Assert.Throws<ArgumentException>(() => plan.Step([1], cached, new float[model.VocabSize]));
        Assert.Contains("AddSequence", error.Message);
        var context = new AttentionContext(8);
        Assert.Throws<InvalidOperationException>(() => context.Add(0, 0, true));
        context.AddSequence(2, [0, 2]);
        Assert.Throws<ArgumentOutOfRangeException>(() => plan.Step([1, 2], context, new float[model.VocabSize]));
    }

    private static (int[] Tokens, int[] Types) Sequences(int[] lengths)
    {
        var tokens = new List<int>();
        var types = new List<int>();
        for (int s = 0; s < lengths.Length; s++)
            for (int i = 0; i < lengths[s]; i++)
            {
                tokens.Add((s * 13 + i * 7 + 1) % Vocab);
                types.Add(s == 2 && i >= lengths[s] / 2 ? 1 : 0);
            }
        return (tokens.ToArray(), types.ToArray());
    }

    private static void Fill(AttentionContext context, int[] lengths, int[] types)
    {
        context.Clear();
        int start = 0;
        foreach (int length in lengths)
        {
            context.AddSequence(length, types.AsSpan(start, length));
            start += length;
        }
    }

    /// <summary>BERT's tensors and keys as llama.cpp names them, at the test's dimensions; seeded.</summary>
    internal static MemoryModelFile File(int headDim, int seed, int pooling)
    {
        var file = new MemoryModelFile("bert", seed);
        int dim = Heads * headDim, hidden = headDim == 32 ? 160 : 70;
        file.Int("bert.embedding_length", dim).Int("bert.feed_forward_length", hidden).Int("bert.block_count", Layers)
            .Int("bert.attention.head_count", Heads).Int("bert.context_length", Context).Float("bert.attention.layer_norm_epsilon", 1e-12)
            .Int("bert.pooling_type", pooling);
        file.Random("token_embd.weight", Vocab, dim, 1f).Random("token_types.weight", Types, dim, 0.5f).Random("position_embd.weight", Context, dim, 0.5f)
            .Norm("token_embd_norm.weight", dim).Vector("token_embd_norm.bias", dim);
        for (int l = 0; l < Layers; l++)
        {
            string b = $"blk.{l}.";
            file.Random(b + "attn_q.weight", dim, dim).Vector(b + "attn_q.bias", dim).Random(b + "attn_k.weight", dim, dim).Vector(b + "attn_k.bias", dim)
                .Random(b + "attn_v.weight", dim, dim).Vector(b + "attn_v.bias", dim).Random(b + "attn_output.weight", dim, dim).Vector(b + "attn_output.bias", dim)
                .Norm(b + "attn_output_norm.weight", dim).Vector(b + "attn_output_norm.bias", dim)
                .Random(b + "ffn_up.weight", hidden, dim).Vector(b + "ffn_up.bias", hidden).Random(b + "ffn_down.weight", dim, hidden).Vector(b + "ffn_down.bias", dim)
                .Norm(b + "layer_output_norm.weight", dim).Vector(b + "layer_output_norm.bias", dim);
        }
        return file;
    }
}
