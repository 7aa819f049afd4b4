namespace Kiln.Testing;

/// <summary>
/// Runs its plan; step <c>holdFromStep</c> and later wait for <see cref="Release"/>, so a request is still running
/// when a test's cancel, disconnect or overload arrives, however loaded the machine. A step held longer than
/// <c>patience</c> throws, failing the engine instead of hanging the test.
/// </summary>
public sealed class HeldPlan(ICompiledPlan inner, int holdFromStep, TimeSpan patience) : ICompiledPlan
{
    private readonly ManualResetEventSlim _released = new();
    private int _steps;

    public int MaxTokensPerStep => inner.MaxTokensPerStep;

    public int VocabSize => inner.VocabSize;

    public string FusionReport => inner.FusionReport;

    public void Release() => _released.Set();

    public void Step(ReadOnlySpan<int> tokens, AttentionContext context, Span<float> logits)
    {
        if (_steps++ >= holdFromStep && !_released.Wait(patience)) throw new TimeoutException("The test never released the held step.");
        inner.Step(tokens, context, logits);
    }

    public void Dispose() => inner.Dispose();
}
