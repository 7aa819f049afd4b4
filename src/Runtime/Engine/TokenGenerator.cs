namespace Kiln;

/// <summary>
/// Generates one sequence with a plan: the prompt is prefilled in chunks of the plan's step size, then one token
/// is decoded per step. Holds its own KV cache (one slot) and step buffers, reused across calls.
/// </summary>
public sealed class TokenGenerator
{
    private readonly ICompiledPlan _plan;
    private readonly AttentionContext _context;
    private readonly float[] _logits;

    public TokenGenerator(IKilnModel model, ICompiledPlan plan, int maxContext)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxContext);
        _plan = plan;
        // A plan that keeps its cache in its own memory (a GPU plan) makes it; otherwise the model's host cache.
        var cache = plan is IKvCacheProvider provider ? provider.CreateKvCache(slots: 1, maxContext) : model.CreateKvCache(slots: 1, maxContext);
        _context = new AttentionContext(cache, plan.MaxTokensPerStep);
        _logits = new float[plan.VocabSize];
    }

    public int MaxContext => _context.Cache.MaxContext;

    /// <summary>
    /// Yields up to <paramref name="maxNewTokens"/> tokens after <paramref name="prompt"/>; stops early at
    /// <paramref name="stopToken"/> (not yielded) or when the context is full.
    /// </summary>
    public IEnumerable<int> Generate(IReadOnlyList<int> prompt, int maxNewTokens, SamplingOptions sampling, int stopToken = -1, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(sampling);
        if (prompt.Count == 0) throw new ArgumentException("The prompt must hold at least one token.", nameof(prompt));
        if (prompt.Count > MaxContext)
            throw new ArgumentException($"The prompt has {prompt.Count} tokens but the context holds {MaxContext}.", nameof(prompt));
        ArgumentOutOfRangeException.ThrowIfNegative(maxNewTokens);
        return Run(prompt, maxNewTokens, new Sampler(sampling, _plan.VocabSize), stopToken, cancellationToken);
    }

    private IEnumerable<int> Run(IReadOnlyList<int> prompt, int maxNewTokens, Sampler sampler, int stopToken, CancellationToken cancellationToken)
    {
        var tokens = new int[_plan.MaxTokensPerStep];
        int position = 0;
        while (position < prompt.Count)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int count = Math.Min(tokens.Length, prompt.Count - position);
            for (int i = 0; i < count; i++) tokens[i] = prompt[position + i];
            _context.SetSequence(slot: 0, position, count);
            _plan.Step(tokens.AsSpan(0, count), _context, _logits);
            position += count;
        }

        for (int generated = 0; generated < maxNewTokens; generated++)
        {
            int next = sampler.Sample(_logits);
            if (next == stopToken) yield break;
            yield return next;
            if (generated + 1 == maxNewTokens || position == MaxContext) yield break;
            cancellationToken.ThrowIfCancellationRequested();
            tokens[0] = next;
            _context.SetSequence(slot: 0, position, 1);
            _plan.Step(tokens.AsSpan(0, 1), _context, _logits);
            position++;
        }
    }
}
