using static Kiln.EndToEnd.Tests.EngineTestModel;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// What the engine leans on, checked on the plans themselves (eager and compiled) with the real stories260K weights:
/// a sequence's logits are bitwise the same whatever else shares its step (batch invariance), and whether its KV
/// lives in one contiguous slot or in small blocks scattered through a paged cache.
/// </summary>
public sealed class EnginePlanInvarianceTests
{
    private const int MaxContext = 64;

    private static readonly int[] SequenceA = [1, 403, 407, 261, 378, 432, 383, 286, 261];
    private static readonly int[] SequenceB = [1, 385, 410, 317, 290];
    private static readonly int[] SequenceC = [1, 300, 301];

    [Theory]
    [InlineData(PlanKind.Eager)]
    [InlineData(PlanKind.Compiled)]
    public void ASequencesLogitsDoNotDependOnWhatElseIsInItsStep(PlanKind kind)
    {
        using var plan = CreatePlan(kind, maxTokensPerStep: 32);
        int vocab = plan.VocabSize;

        // Alone: A's prompt in one step, every row's logits, then one decode step.
        var alone = new AttentionContext(Model.CreateKvCache(slots: 3, MaxContext), 32);
        var aloneLogits = new float[32 * vocab];
        for (int p = 0; p < SequenceA.Length; p++) alone.Add(p, slot: 0, wantLogits: true);
        plan.Step(SequenceA, alone, aloneLogits);
        float[] prefillAlone = aloneLogits[..(SequenceA.Length * vocab)];
        alone.SetSequence(slot: 0, startPosition: SequenceA.Length, count: 1);
        plan.Step([290], alone, aloneLogits);
        float[] decodeAlone = aloneLogits[..vocab];

        // Batched: B's prompt before A's rows and C's after, then a decode step with A between the other two.
        var batched = new AttentionContext(Model.CreateKvCache(slots: 3, MaxContext), 32);
        var batchedLogits = new float[32 * vocab];
        int[] tokens = [.. SequenceB, .. SequenceA, .. SequenceC];
        for (int p = 0; p < SequenceB.Length; p++) batched.Add(p, slot: 1, wantLogits: p == SequenceB.Length - 1);
        for (int p = 0; p < SequenceA.Length; p++) batched.Add(p, slot: 0, wantLogits: true);
        for (int p = 0; p < SequenceC.Length; p++) batched.Add(p, slot: 2, wantLogits: false);
        plan.Step(tokens, batched, batchedLogits);
        Assert.Equal(prefillAlone, batchedLogits[vocab..((1 + SequenceA.Length) * vocab)]);

        batched.Clear();
        batched.Add(SequenceB.Length, slot: 1, wantLogits: true);
        batched.Add(SequenceA.Length, slot: 0, wantLogits: true);
        batched.Add(SequenceC.Length, slot: 2, wantLogits: true);
        plan.Step([400, 290, 401], batched, batchedLogits);
        Assert.Equal(decodeAlone, batchedLogits[vocab..(2 * vocab)]);
    }

    [Theory]
    [InlineData(PlanKind.Eager, 4)]
    [InlineData(PlanKind.Compiled, 4)]
    [InlineData(PlanKind.Compiled, 16)]
    public void PagedWithShuffledBlocksGivesTheContiguousLogits(PlanKind kind, int blockSize)
    {
        using var plan = CreatePlan(kind, maxTokensPerStep: 16);
        int vocab = plan.VocabSize;
        int[] prompt = [.. SequenceA, .. SequenceB[1..], .. SequenceA[1..]]; // 21 tokens: several blocks
        var contiguous = new AttentionContext(Model.CreateKvCache(slots: 1, MaxContext), 16);
        var cache = KvCache.Paged(Model.LayerCount, blockCount: 32, blockSize, Model.KvDim, maxContext: MaxContext);
        var paged = new AttentionContext(cache, 16);
        int[] blockTable = [.. Enumerable.Range(0, 32).OrderBy(i => (i * 7919) % 32).Take(MaxContext / blockSize)];
        var expected = new float[16 * vocab];
        var actual = new float[16 * vocab];

        // The prompt in chunks of 6 (the last row's logits), then greedy decodes.
        int position = 0;
        while (position < prompt.Length)
        {
            int count = Math.Min(6, prompt.Length - position);
            contiguous.SetSequence(slot: 0, position, count);
            paged.Clear();
            paged.AddChunk(blockTable, position, count, wantLogits: true);
            var chunk = prompt.AsSpan(position, count);
            plan.Step(chunk, contiguous, expected);
            plan.Step(chunk, paged, actual);
            Assert.Equal(expected[..vocab], actual[..vocab]);
            position += count;
        }
        int next = Sampler.ArgMax(expected.AsSpan(0, vocab));
        for (int step = 0; step < 12; step++, position++)
        {
            contiguous.SetSequence(slot: 0, position, 1);
            paged.Clear();
            paged.AddChunk(blockTable, position, 1, wantLogits: true);
            plan.Step([next], contiguous, expected);
            plan.Step([next], paged, actual);
            Assert.Equal(expected[..vocab], actual[..vocab]);
            next = Sampler.ArgMax(expected.AsSpan(0, vocab));
        }
    }
}
