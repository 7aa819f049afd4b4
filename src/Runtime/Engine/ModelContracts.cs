namespace Kiln;

/// <summary>
/// A model definition bound to a model file's weights. The source generator implements this on every [Model]
/// class: hyperparameter and weight binding, cache creation, and compilation into a fused plan.
/// </summary>
public interface IKilnModel
{
    /// <summary>Number of logits per output row.</summary>
    int VocabSize { get; }

    /// <summary>A cache shaped for this model's attention layers.</summary>
    KvCache CreateKvCache(int slots, int maxContext);

    /// <summary>The eager reference forward pass: returns [OutputCount, Vocab] logits.</summary>
    Tensor ForwardEager(ReadOnlySpan<int> tokens, AttentionContext context);

    /// <summary>Compiles the fused plan, sized for at most <paramref name="maxTokensPerStep"/> tokens in one step.</summary>
    ICompiledPlan Compile(int maxTokensPerStep);
}

/// <summary>A model compiled by the generator: fused kernels over one preallocated arena.</summary>
public interface ICompiledPlan
{
    int MaxTokensPerStep { get; }

    int VocabSize { get; }

    /// <summary>What the generator fused and which layout each weight got, and why.</summary>
    string FusionReport { get; }

    /// <summary>
    /// Runs one step over <paramref name="tokens"/> (one per context token) and writes
    /// [context.OutputCount, VocabSize] logits. Allocates nothing.
    /// </summary>
    void Step(ReadOnlySpan<int> tokens, AttentionContext context, Span<float> logits);
}
