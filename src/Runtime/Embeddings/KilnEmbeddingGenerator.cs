using Kiln.Tokenization;
using Microsoft.Extensions.AI;

namespace Kiln.Embeddings;

/// <summary>
/// Embeddings from a compiled encoder (a [Model(Kind = ModelKind.Encoder)] whose forward returns one row per sequence)
/// as Microsoft.Extensions.AI's <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/>: each call tokenizes all its
/// inputs, packs as many whole sequences into each step as its plan holds (no padding), and returns one embedding per
/// input, in order. Calls from several threads take turns on the plan, one step at a time.
/// </summary>
public sealed class KilnEmbeddingGenerator : IEmbeddingGenerator<string, Embedding<float>>
{
    private readonly ICompiledPlan _plan;
    private readonly BertWordPiece _tokenizer;
    private readonly bool _ownsPlan;
    private readonly int _maxSequenceTokens;
    private readonly AttentionContext _context;
    private readonly int[] _tokens;
    private readonly float[] _output;
    private readonly SemaphoreSlim _turn = new(1, 1);
    private readonly EmbeddingGeneratorMetadata _metadata;
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

    public async Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(IEnumerable<string> values, EmbeddingGenerationOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(values);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (options?.Dimensions is int wanted && wanted != Dimensions)
            throw new ArgumentException($"This model's embeddings have {Dimensions} values, not the {wanted} asked for.", nameof(options));
        var sequences = new List<int[]>();
        foreach (var text in values)
        {
            ArgumentNullException.ThrowIfNull(text, nameof(values));
            sequences.Add(_tokenizer.Encode(text, _maxSequenceTokens));
        }
        var vectors = new float[sequences.Count][];
        await _turn.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            Embed(sequences, vectors, cancellationToken);
        }
        finally
        {
            _turn.Release();
        }
        long tokens = 0;
        foreach (var sequence in sequences) tokens += sequence.Length;
        var now = DateTimeOffset.UtcNow;
        var embeddings = new GeneratedEmbeddings<Embedding<float>>(vectors.Select(v => new Embedding<float>(v) { ModelId = _metadata.DefaultModelId, CreatedAt = now }))
        {
            Usage = new UsageDetails { InputTokenCount = tokens, TotalTokenCount = tokens },
        };
        return embeddings;
    }

    /// <summary>Packs whole sequences into steps of at most the plan's tokens and runs them, in order.</summary>
    private void Embed(List<int[]> sequences, float[][] vectors, CancellationToken cancellationToken)
    {
        int dimensions = Dimensions;
        for (int first = 0; first < sequences.Count;)
        {
            cancellationToken.ThrowIfCancellationRequested();
            _context.Clear();
            int count = 0, end = first;
            while (end < sequences.Count && count + sequences[end].Length <= _tokens.Length)
            {
                sequences[end].CopyTo(_tokens, count);
                _context.AddSequence(sequences[end].Length);
                count += sequences[end].Length;
                end++;
            }
            _plan.Step(_tokens.AsSpan(0, count), _context, _output);
            for (int s = first; s < end; s++) vectors[s] = _output.AsSpan((s - first) * dimensions, dimensions).ToArray();
            first = end;
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(EmbeddingGeneratorMetadata)) return _metadata;
        return serviceType.IsInstanceOfType(this) ? this : serviceType.IsInstanceOfType(_plan) ? _plan : null;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_ownsPlan) _plan.Dispose();
        _turn.Dispose();
    }
}
