using Kiln.Engine.Serving;

namespace Kiln.Cli.Loading;

/// <summary>Engine options whose KV memory holds exactly the context a command needs, no more.</summary>
internal static class EngineSizing
{
    private const int BlockSize = 16;

    /// <summary>
    /// <paramref name="maxRunningRequests"/> sequences of up to <paramref name="context"/> tokens each, in F32, with
    /// steps of up to <paramref name="tokenBudget"/> tokens.
    /// </summary>
    public static EngineOptions ForContext(IKilnModel model, int context, int tokenBudget, int maxRunningRequests)
    {
        long blocksPerSequence = (context + BlockSize - 1) / BlockSize;
        return new EngineOptions
        {
            BlockSize = BlockSize,
            KvCacheBytes = Math.Max(1, blocksPerSequence * maxRunningRequests * model.KvShape.BytesPerBlock(BlockSize)),
            MaxContext = Math.Max(2, context),
            TokenBudget = Math.Max(tokenBudget, maxRunningRequests),
            MaxRunningRequests = maxRunningRequests,
        };
    }
}
