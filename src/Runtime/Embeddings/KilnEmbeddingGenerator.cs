using Kiln.Tokenization;
using Microsoft.Extensions.AI;

namespace Kiln.Embeddings;

/// <summary>
/// Embeddings from a compiled encoder (a [Model(Kind = ModelKind.Encoder)] whose forward returns one row per sequence)
/// as Microsoft.Extensions.AI's <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/>: each call tokenizes its inputs
/// and returns one embedding per input, in order. Whole sequences are packed into steps of up to the plan's tokens (no
/// padding), and calls that overlap share steps: one runner at a time takes sequences from every waiting call in turn
/// (oldest call first, one sequence each per round), so a short call that arrives behind a long one finishes within a
/// step or two, and many small concurrent calls cost a few full steps rather than many near-empty ones.
/// </summary>
public sealed class KilnEmbeddingGenerator : IEmbeddingGenerator<string, Embedding<float>>
{
    private readonly ICompiledPlan _plan;
    private readonly BertWordPiece _tokenizer;
    private readonly bool _ownsPlan;
    private readonly int _maxSequenceTokens;
    private readonly EmbeddingGeneratorMetadata _metadata;

    // The runner's own: touched only by the one thread that runs steps.
    private readonly AttentionContext _context;
    private readonly int[] _tokens;
    private readonly float[] _output;
    private readonly List<Call> _active = [];
    private readonly List<(Call Call, int Index)> _stepRows = [];

    // Guarded by _gate: calls not yet seen by the runner, whether a runner is going, whether disposed.
    private readonly object _gate = new();
    private readonly Queue<Call> _arrived = new();
    private bool _running;
    private bool _disposed;

    /// <summary>
    /// Embeds through <paramref name="plan"/> (an encoder's, whose steps take a context without a KV cache), with
    /// <paramref name="tokenizer"/>; a text longer than <paramref name="maxSequenceTokens"/> tokens ([CLS] and [SEP]
    /// included) is cut to fit, as sentence-transformers cuts it. Disposing the generator disposes the plan when
    /// <paramref name="ownsPlan"/>.
    /// </summary>
    public KilnEmbeddingGenerator(ICompiledPlan plan, BertWordPiece tokenizer, int maxSequenceTokens, string modelId, bool ownsPlan = true)
    {
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(modelId);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSequenceTokens, 2);
        if (maxSequenceTokens > plan.MaxTokensPerStep)
            throw new ArgumentOutOfRangeException(nameof(maxSequenceTokens), $"Sequences of {maxSequenceTokens} tokens do not fit a plan compiled for steps of {plan.MaxTokensPerStep}.");
        _plan = plan;
        _tokenizer = tokenizer;
        _ownsPlan = ownsPlan;
        _maxSequenceTokens = maxSequenceTokens;
        _context = new AttentionContext(plan.MaxTokensPerStep);
        _tokens = new int[plan.MaxTokensPerStep];
        _output = new float[plan.MaxTokensPerStep * plan.VocabSize];
        _metadata = new EmbeddingGeneratorMetadata("kiln", null, modelId, plan.VocabSize);
    }

    /// <summary>Values per embedding.</summary>
    public int Dimensions => _plan.VocabSize;

    /// <summary>The most tokens a text keeps ([CLS] and [SEP] included).</summary>
    public int MaxSequenceTokens => _maxSequenceTokens;

    /// <summary>The tokenizer inputs go through.</summary>
    public BertWordPiece Tokenizer => _tokenizer;

    /// <summary>Token ids <see cref="EmbedAsync"/> accepts are below this: the tokenizer's vocabulary.</summary>
    public int VocabularySize => _tokenizer.VocabularySize;

    /// <summary>
    /// Embeds <paramref name="values"/>, in order. Usage counts the tokens embedded (after any cut), [CLS] and [SEP]
    /// included. Cancelling drops this call's sequences that have not run yet; other calls are not affected.
    /// </summary>
    public async Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(IEnumerable<string> values, EmbeddingGenerationOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(values);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (options?.Dimensions is int wanted && wanted != Dimensions)
            throw new ArgumentException($"This model's embeddings have {Dimensions} values, not the {wanted} asked for.", nameof(options));
        var sequences = new List<int[]>();
        long tokens = 0;
        foreach (var text in values)
        {
            ArgumentNullException.ThrowIfNull(text, nameof(values));
            var ids = _tokenizer.Encode(text, _maxSequenceTokens);
            sequences.Add(ids);
            tokens += ids.Length;
        }
        var vectors = await EmbedAsync(sequences, cancellationToken).ConfigureAwait(false);

        var now = DateTimeOffset.UtcNow;
        var embeddings = new List<Embedding<float>>(vectors.Length);
        foreach (var vector in vectors) embeddings.Add(new Embedding<float>(vector) { ModelId = _metadata.DefaultModelId, CreatedAt = now });
        return new GeneratedEmbeddings<Embedding<float>>(embeddings)
        {
            Usage = new UsageDetails { InputTokenCount = tokens, TotalTokenCount = tokens },
        };
    }

    /// <summary>
    /// Embeds sequences of token ids as they are: each is one sequence of the model's vocabulary ([CLS] and [SEP]
    /// included where the model expects them, as <see cref="BertWordPiece.Encode"/> writes them), of 1 to
    /// <see cref="MaxSequenceTokens"/> ids, each below <see cref="VocabularySize"/>. Returns one vector per sequence,
    /// in order, packed into steps as <see cref="GenerateAsync"/> packs texts.
    /// </summary>
    /// <exception cref="ArgumentException">A sequence is empty, too long, or holds an id outside the vocabulary.</exception>
    public async Task<float[][]> EmbedAsync(IReadOnlyList<int[]> sequences, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        ObjectDisposedException.ThrowIf(_disposed, this);
        int vocabulary = VocabularySize;
        for (int s = 0; s < sequences.Count; s++)
        {
            int[] ids = sequences[s] ?? throw new ArgumentNullException(nameof(sequences), $"Sequence {s} is null.");
            if (ids.Length == 0 || ids.Length > _maxSequenceTokens)
                throw new ArgumentException($"Sequence {s} has {ids.Length} tokens; this model embeds 1 to {_maxSequenceTokens}.", nameof(sequences));
            foreach (int id in ids)
            {
                if ((uint)id >= (uint)vocabulary)
                    throw new ArgumentException($"Sequence {s} holds the token id {id}; the vocabulary's ids are 0 to {vocabulary - 1}.", nameof(sequences));
            }
        }
        cancellationToken.ThrowIfCancellationRequested();
        if (sequences.Count == 0) return [];

        var call = new Call(sequences);
        bool startRunner;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _arrived.Enqueue(call);
            startRunner = !_running;
            _running = true;
        }
        if (startRunner) ThreadPool.UnsafeQueueUserWorkItem(static generator => generator.Run(), this, preferLocal: false);
        using (cancellationToken.Register(static state => ((Call)state!).Cancel(), call))
            return await call.Completion.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// The runner: takes in the calls that arrived, packs one step from all active calls, runs it, hands out its rows;
    /// until no call is left. One runner at a time (<see cref="_running"/>), so the plan and its buffers are its alone.
    /// </summary>
    private void Run()
    {
        while (true)
        {
            lock (_gate)
            {
                while (_arrived.TryDequeue(out var call)) _active.Add(call);
                _active.RemoveAll(static call => call.IsFinished);
                if (_disposed || _active.Count == 0)
                {
                    foreach (var call in _active) call.Fail(new ObjectDisposedException(nameof(KilnEmbeddingGenerator)));
                    _active.Clear();
                    _running = false;
                    if (_disposed && _ownsPlan) _plan.Dispose(); // deferred by Dispose while this runner held the plan
                    return;
                }
            }

            try
            {
                int tokenCount = PackStep();
                _plan.Step(_tokens.AsSpan(0, tokenCount), _context, _output);
                int dimensions = Dimensions;
                for (int row = 0; row < _stepRows.Count; row++)
                {
                    var (call, index) = _stepRows[row];
                    call.Deliver(index, _output.AsSpan(row * dimensions, dimensions).ToArray());
                }
            }
            catch (Exception e)
            {
                // A step that fails fails the calls it held rows of; the others go on.
                foreach (var (call, _) in _stepRows) call.Fail(e);
            }
        }
    }

    /// <summary>
    /// Fills the step: rounds over the active calls, oldest first, one sequence from each per round, while they fit.
    /// The oldest call's next sequence always goes in (a sequence fits an empty step), so every call finishes.
    /// </summary>
    private int PackStep()
    {
        _context.Clear();
        _stepRows.Clear();
        int count = 0;
        for (bool added = true; added;)
        {
            added = false;
            foreach (var call in _active)
            {
                if (call.IsFinished || call.Next == call.Sequences.Count) continue;
                int[] sequence = call.Sequences[call.Next];
                if (count + sequence.Length > _tokens.Length) continue;
                sequence.CopyTo(_tokens, count);
                _context.AddSequence(sequence.Length);
                _stepRows.Add((call, call.Next++));
                count += sequence.Length;
                added = true;
            }
        }
        return count;
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(EmbeddingGeneratorMetadata)) return _metadata;
        return serviceType.IsInstanceOfType(this) ? this : serviceType.IsInstanceOfType(_plan) ? _plan : null;
    }

    /// <summary>Fails calls still waiting with <see cref="ObjectDisposedException"/>; the plan is disposed once no step runs on it.</summary>
    public void Dispose()
    {
        bool disposePlan;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            while (_arrived.TryDequeue(out var call)) call.Fail(new ObjectDisposedException(nameof(KilnEmbeddingGenerator)));
            disposePlan = _ownsPlan && !_running;
        }
        if (disposePlan) _plan.Dispose();
    }

    /// <summary>One GenerateAsync call: its sequences, the next one to run, and its vectors as steps deliver them.</summary>
    private sealed class Call(IReadOnlyList<int[]> sequences)
    {
        private readonly float[][] _vectors = new float[sequences.Count][];
        private int _delivered;
        private volatile bool _cancelled;

        public IReadOnlyList<int[]> Sequences { get; } = sequences;

        /// <summary>The next sequence to pack (the runner's alone).</summary>
        public int Next { get; set; }

        public TaskCompletionSource<float[][]> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public bool IsFinished => _cancelled || Completion.Task.IsCompleted;

        public void Deliver(int index, float[] vector)
        {
            _vectors[index] = vector;
            if (++_delivered == _vectors.Length) Completion.TrySetResult(_vectors);
        }

        public void Fail(Exception error) => Completion.TrySetException(error);

        /// <summary>From the caller's token: the runner skips what is left (the caller's wait throws by itself).</summary>
        public void Cancel() => _cancelled = true;
    }
}
