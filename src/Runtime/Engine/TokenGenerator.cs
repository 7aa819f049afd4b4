namespace Kiln;

/// <summary>
/// Generates one sequence with a plan: the prompt is prefilled in chunks of the plan's step size, then one token
/// is decoded per step. Holds its own memory for one sequence, reused across calls: a KV cache slot for the model's
/// attention layers and a recurrent state slot for its recurrent ones (a Mamba has only the state, a hybrid both).
/// </summary>
public sealed class TokenGenerator
{
    private readonly ICompiledPlan _plan;
    private readonly AttentionContext _context;
    private readonly float[] _logits;
    private readonly int _maxContext;

    public TokenGenerator(IKilnModel model, ICompiledPlan plan, int maxContext)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxContext);
        _plan = plan;
        // A plan that keeps its KV cache in its own memory (a GPU plan) makes it; a model without attention has none.
        var cache = plan is IKvCacheProvider provider && model.KvShape.Layers > 0 ? provider.CreateKvCache(slots: 1, maxContext) : null;
        _context = AttentionContext.ForSlots(model, slots: 1, maxContext, plan.MaxTokensPerStep, cache);
        _maxContext = _context.HasCache ? _context.Cache.MaxContext : maxContext;
        _logits = new float[plan.VocabSize];
    }

    public int MaxContext => _maxContext;

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
