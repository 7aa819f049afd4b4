using Kiln.Engine.Paging;
using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;
using Kiln.Engine.State;
using Kiln.Models;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// State slots under preemption and cancellation: seeded random arrivals, prompt and output lengths and cancels,
/// scheduled by the continuous-batching scheduler over block pools small enough to preempt constantly, and run on
/// the compiled LSTM plan with one state slot per running request — and on the compiled Jamba plan, a hybrid whose
/// requests each hold paged KV blocks (its attention layers) and a state slot (its Mamba layers). Every request that is
/// not cancelled generates exactly the greedy tokens it generates alone (a cancelled one, a prefix of them); no slot or
/// block is leaked. Time is counted in steps, so each seed replays the same schedule on any machine.
/// </summary>
public sealed class RecurrentStatePropertyTests(ITestOutputHelper output)
{
    private const int MaxContext = 64;

    private static readonly Lazy<Lstm> Model = new(() => Lstm.Load(LstmTests.File(seed: 5)));
    private static readonly Lazy<Jamba> Hybrid = new(() => Jamba.Load(JambaTests.File(seed: 5)));

    private sealed record Spec(int Arrival, int[] Prompt, int MaxTokens, int CancelAt);

    [Fact]
    public void EveryRequestGeneratesWhatItGeneratesAloneUnderPreemptionAndCancellation() =>
        Check(Model.Value, LstmTests.Vocab, defaultSeed: 20261204);

    [Fact]
    public void EveryHybridRequestGeneratesWhatItGeneratesAloneUnderPreemptionAndCancellation()
    {
        Assert.True(Hybrid.Value.KvShape.Layers > 0 && !Hybrid.Value.StateShape.IsEmpty, "Jamba keeps both KV blocks and state");
        Check(Hybrid.Value, JambaTests.Vocab, defaultSeed: 20261205);
    }

    private void Check(IKilnModel model, int vocab, ulong defaultSeed)
    {
        ulong seed = SeededCases.Resolve(defaultSeed);
        output.WriteLine($"seed {seed} (set KILN_SEED to replay another)");
        var random = new Random((int)(seed % int.MaxValue));
        using var plan = model.Compile(new PlanOptions(32, Threads: 2));
        long preemptions = 0, cancelled = 0, refills = 0;
        for (int round = 0; round < 24; round++)
        {
            var (p, c, r) = RunCase(random, model, plan, vocab, round, seed);
            preemptions += p;
            cancelled += c;
            refills += r;
        }
        output.WriteLine($"24 cases: {preemptions} preemptions, {cancelled} cancels, {refills} slots taken in the step that freed them");
        // The schedules the assertions rely on happened.
        Assert.True(preemptions > 0, "no case preempted");
        Assert.True(cancelled > 0, "no case cancelled a running request");
        Assert.True(refills > 0, "no freed slot was refilled in the same schedule");
    }

    private static (long Preemptions, int Cancelled, int Refills) RunCase(Random random, IKilnModel model, ICompiledPlan plan, int vocab, int round, ulong seed)
    {
        int blockSize = random.Next(2, 9);
        int blocks = (MaxContext + blockSize - 1) / blockSize + random.Next(0, 12);
        int maxRunning = random.Next(2, 7);
        int budget = random.Next(maxRunning, 33);
        var pool = new BlockPool(blocks, blockSize);
        var slots = new StateSlotPool(maxRunning);
        var scheduler = new ContinuousBatchScheduler(pool, new SchedulerOptions { TokenBudget = budget, MaxRunningRequests = maxRunning, MaxContext = MaxContext }, slots);
        var state = model.StateShape.CreateCache(maxRunning);
        // A hybrid's attention layers keep their rows in the pool's blocks, as the engine lays them out.
        var cache = model.KvShape.Layers == 0 ? null : model.KvShape.CreatePaged(blocks, blockSize, maxContext: MaxContext);
        var context = cache is null
            ? new AttentionContext(state, budget)
            : new AttentionContext(cache, budget, maxBlockIds: maxRunning * pool.BlocksFor(MaxContext), state);

        var specs = new Spec[random.Next(4, 12)];
        for (int i = 0; i < specs.Length; i++)
        {
            var prompt = new int[random.Next(1, 24)];
            for (int t = 0; t < prompt.Length; t++) prompt[t] = random.Next(vocab);
            specs[i] = new Spec(random.Next(0, 20), prompt, random.Next(1, 20), random.Next(3) == 0 ? random.Next(0, 30) : -1);
        }

        var requests = new GenerationRequest?[specs.Length];
        var tokens = new int[budget];
        var logits = new float[maxRunning * vocab];
        var sampled = new int[maxRunning];
        int cancelled = 0, refills = 0;
        for (int step = 0; step < 10_000; step++)
        {
            for (int i = 0; i < specs.Length; i++)
            {
                if (specs[i].Arrival == step) requests[i] = scheduler.Add(specs[i].Prompt, new RequestParameters(specs[i].MaxTokens));
                if (specs[i].CancelAt == step && requests[i] is { Status: not RequestStatus.Finished } request)
                {
                    if (request.Status == RequestStatus.Running) cancelled++;
                    scheduler.Cancel(request.Id);
                }
            }
            if (step > 20 && scheduler.UnfinishedCount == 0) break;

            int freeBefore = slots.FreeCount;
            var batch = scheduler.Schedule();
            // A slot freed by a cancel in this schedule and taken by an admission in the same one.
            if (batch.Finished.Length > 0 && slots.FreeCount < freeBefore + batch.Finished.Length) refills++;
            if (batch.IsEmpty) continue;
            context.Clear();
            int count = 0;
            foreach (var chunk in batch.Chunks)
            {
                Assert.True(chunk.Request.StateSlot >= 0, $"{chunk.Request} runs without a state slot");
                chunk.Request.Tokens.Slice(chunk.Start, chunk.Count).CopyTo(tokens.AsSpan(count));
                count += chunk.Count;
                if (cache is null) context.AddRecurrentChunk(chunk.Request.StateSlot, chunk.Start, chunk.Count, chunk.NeedsLogits);
                else context.AddChunk(chunk.Request.Blocks.BlockIds, chunk.Start, chunk.Count, chunk.NeedsLogits, chunk.Request.StateSlot);
            }
            AssertDistinctSlots(batch);
            plan.Step(tokens.AsSpan(0, count), context, logits.AsSpan(0, batch.LogitsCount * vocab));
            for (int row = 0; row < batch.LogitsCount; row++) sampled[row] = Argmax(logits.AsSpan(row * vocab, vocab));
            scheduler.OnStepCompleted(sampled.AsSpan(0, batch.LogitsCount));
        }

        Assert.Equal(0, scheduler.UnfinishedCount);
        Assert.Equal(0, pool.UsedBlockCount);
        Assert.Equal(slots.SlotCount, slots.FreeCount);
        for (int i = 0; i < specs.Length; i++)
        {
            var request = requests[i]!;
            int[] alone = AloneWith(plan, model, specs[i].Prompt, specs[i].MaxTokens, blockSize);
            int[] got = request.GeneratedTokens.ToArray();
            string where = $"seed {seed}, case {round}, request {i} ({request}, {request.PreemptionCount} preemptions)";
            if (request.FinishReason == FinishReason.Cancelled) Assert.True(alone.AsSpan().StartsWith(got), $"{where}: a cancelled request's tokens are not a prefix of its run alone");
            else Assert.True(alone.AsSpan().SequenceEqual(got), $"{where}: [{string.Join(",", got)}] vs alone [{string.Join(",", alone)}]");
        }
        return (scheduler.PreemptionCount, cancelled, refills);
    }

    private static void AssertDistinctSlots(ScheduledBatch batch)
    {
        var seen = new HashSet<int>();
        foreach (var chunk in batch.Chunks) Assert.True(seen.Add(chunk.Request.StateSlot), $"state slot {chunk.Request.StateSlot} is held by two running requests");
    }

    /// <summary>
    /// The greedy continuation of <paramref name="prompt"/> on <paramref name="model"/>'s plan, alone: the prompt in one
    /// step from a fresh slot, then one token per step; a hybrid's KV in blocks of <paramref name="blockSize"/> (as batched).
    /// </summary>
    internal static int[] AloneWith(ICompiledPlan plan, IKilnModel model, int[] prompt, int maxTokens, int blockSize = 16)
    {
        var state = model.StateShape.CreateCache(1);
        int blocks = (MaxContext + blockSize - 1) / blockSize;
        int[] blockTable = Enumerable.Range(0, blocks).ToArray();
        var context = model.KvShape.Layers == 0
            ? new AttentionContext(state, Math.Max(prompt.Length, 1))
            : new AttentionContext(model.KvShape.CreatePaged(blocks, blockSize, maxContext: MaxContext), Math.Max(prompt.Length, 1), maxBlockIds: blocks, state);
        void Add(int start, int count)
        {
            if (model.KvShape.Layers == 0) context.AddRecurrentChunk(0, start, count, wantLogits: true);
            else context.AddChunk(blockTable, start, count, wantLogits: true, stateSlot: 0);
        }
        var logits = new float[plan.VocabSize];
        var generated = new List<int>();
        Add(0, prompt.Length);
        plan.Step(prompt, context, logits);
        for (int position = prompt.Length; ; position++)
        {
            int token = Argmax(logits);
            generated.Add(token);
            if (generated.Count == maxTokens || position + 1 == MaxContext) return generated.ToArray();
            context.Clear();
            Add(position, 1);
            plan.Step([token], context, logits);
        }
    }

    private static int Argmax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++)
        {
            if (values[i] > values[best]) best = i;
        }
        return best;
    }
}
