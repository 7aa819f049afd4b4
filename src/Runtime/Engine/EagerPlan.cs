namespace Kiln;

/// <summary>
/// Runs a model's eager [Forward] (the reference semantics) behind the compiled-plan interface, so anything that
/// drives a plan can run the reference instead. Allocates per step: for tests and comparison, not for speed.
/// </summary>
public sealed class EagerPlan : ICompiledPlan
{
    private readonly IKilnModel _model;

    public EagerPlan(IKilnModel model, int maxTokensPerStep)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxTokensPerStep);
        _model = model;
        MaxTokensPerStep = maxTokensPerStep;
    }

    public int MaxTokensPerStep { get; }

    public int VocabSize => _model.VocabSize;

    public string FusionReport => "eager reference: every op runs its Kiln.Ops reference kernel, nothing fused";

    public void Step(ReadOnlySpan<int> tokens, AttentionContext context, Span<float> logits)
    {
        var result = _model.ForwardEager(tokens, context);
        result.Data.AsSpan().CopyTo(logits);
    }

    /// <summary>Nothing to release: the eager reference owns no threads or native memory.</summary>
    public void Dispose()
    {
    }
}
