using System.Collections.Concurrent;
using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Testing;
using Kiln.Tokenization;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The plan a step runs on: <see cref="Eager"/>, the reference forward (double accumulators), or the generator's
/// <see cref="Compiled"/> one (float32, two threads). Each is held to itself run alone, as their logits differ in the
/// last bits and near-ties may pick different tokens.
/// </summary>
public enum PlanKind { Eager, Compiled }

/// <summary>
/// The real stories260K model and tokenizer, loaded once for the engine tests, with the reference every engine
/// output is held to: the request generated alone, by <see cref="TokenGenerator"/> over the eager forward and a
/// contiguous KV cache.
/// </summary>
internal static class EngineTestModel
{
    private static readonly Lazy<(Llama Model, KilnTokenizer Tokenizer)> Loaded = new(() =>
    {
        using var file = ModelFile.Open(StoriesReference.ModelPath("stories260K.gguf"));
        return (Llama.Load(file), KilnTokenizer.FromModelFile(file));
    });

    private static readonly ConcurrentDictionary<string, int[]> References = new();
    private static readonly object ReferenceLock = new();
    private static readonly Dictionary<PlanKind, TokenGenerator> ReferenceGenerators = new();

    public static Llama Model => Loaded.Value.Model;

    public static KilnTokenizer Tokenizer => Loaded.Value.Tokenizer;

    public static ICompiledPlan CreatePlan(PlanKind kind, int maxTokensPerStep) => kind == PlanKind.Eager
        ? new EagerPlan(Model, maxTokensPerStep)
        : Model.Compile(new PlanOptions(maxTokensPerStep, Threads: CompiledThreads));

    /// <summary>Threads of a compiled plan's worker pool, the caller included.</summary>
    public const int CompiledThreads = 2;

    public static KilnEngine CreateEngine(EngineOptions options, PlanKind kind = PlanKind.Eager) =>
        new(Model, tokens => CreatePlan(kind, tokens), Tokenizer, options);

    /// <summary>
    /// The greedy continuation of <paramref name="prompt"/> run alone, over a contiguous KV cache on the same kind of
    /// plan; stops at EOS unless told not to.
    /// </summary>
    public static int[] Reference(int[] prompt, int maxTokens, bool stopAtEndOfSequence = true, PlanKind kind = PlanKind.Eager)
    {
        string key = $"{kind}|{string.Join(",", prompt)}|{maxTokens}|{stopAtEndOfSequence}";
        return References.GetOrAdd(key, _ =>
        {
            lock (ReferenceLock)
            {
                if (!ReferenceGenerators.TryGetValue(kind, out var generator))
                    ReferenceGenerators[kind] = generator = new TokenGenerator(Model, CreatePlan(kind, maxTokensPerStep: 64), maxContext: 512);
                int stop = stopAtEndOfSequence ? Tokenizer.EosId : -1;
                return generator.Generate(prompt, maxTokens, SamplingOptions.Greedy, stop).ToArray();
            }
        });
    }

    /// <summary>Everything one request streamed.</summary>
    public sealed record Outcome(int[] Tokens, string Text, float?[] Logprobs, GenerationUpdate Final, int FinalCount);

    /// <summary>How long an engine test waits for any one thing (a stream, a disposal) before failing instead of hanging.</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    /// <summary>The stream, each of whose items must come within <see cref="Patience"/>.</summary>
    public static async IAsyncEnumerable<T> Patiently<T>(this IAsyncEnumerable<T> source)
    {
        await using var items = source.GetAsyncEnumerator();
        while (await items.MoveNextAsync().AsTask().WaitAsync(Patience)) yield return items.Current;
    }

    /// <summary>Everything <paramref name="updates"/> streams, within <see cref="Patience"/>.</summary>
    public static Task<Outcome> Collect(IAsyncEnumerable<GenerationUpdate> updates, Action<int>? afterToken = null) =>
        CollectAll(updates, afterToken).WaitAsync(Patience);

    private static async Task<Outcome> CollectAll(IAsyncEnumerable<GenerationUpdate> updates, Action<int>? afterToken)
    {
        var tokens = new List<int>();
        var logprobs = new List<float?>();
        var text = new System.Text.StringBuilder();
        GenerationUpdate final = default;
        int finals = 0;
        await foreach (var update in updates)
        {
            text.Append(update.Text);
            if (update.IsFinal)
            {
                final = update;
                finals++;
                continue;
            }
            Assert.Equal(0, finals); // nothing after the final update
            tokens.Add(update.TokenId);
            logprobs.Add(update.Logprob);
            afterToken?.Invoke(tokens.Count);
        }
        return new Outcome(tokens.ToArray(), text.ToString(), logprobs.ToArray(), final, finals);
    }

    /// <summary>Waits for the engine loop to publish an idle pool: every block free (a cancel frees at the next step).</summary>
    public static async Task<EngineStatistics> WaitUntilIdle(KilnEngine engine)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            var statistics = engine.GetStatistics();
            if (statistics.KvBlocksUsed == 0 && statistics.RunningRequests == 0 && statistics.WaitingRequests == 0) return statistics;
            if (DateTime.UtcNow > deadline) Assert.Fail($"The engine never went idle: {statistics}");
            await Task.Delay(5);
        }
    }

    /// <summary>
    /// An engine whose plan holds its steps from <paramref name="holdFromStep"/> on until the test releases it: a request
    /// is still running when the test's cancel (or disposal) is sent, however loaded the machine.
    /// </summary>
    public static (KilnEngine Engine, HeldPlan Plan) CreateHeldEngine(EngineOptions options, int holdFromStep)
    {
        HeldPlan? plan = null;
        var engine = new KilnEngine(Model, tokens => plan = new HeldPlan(new EagerPlan(Model, tokens), holdFromStep, Patience), Tokenizer, options);
        return (engine, plan!);
    }
}
