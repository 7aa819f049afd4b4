namespace Kiln.Kernels.MatMul;

/// <summary>
/// A matmul's work items for the worker pool: blocks of 4-row groups × tokens, claimed one at a time. The F32 layout
/// with many tokens on several threads splits both ways: items of whole 64-row tiles (<see cref="PanelKernels"/>) ×
/// a block of tokens, about <see cref="ItemsPerThread"/> per thread, so a thread that starts late or is preempted
/// leaves the others at most one short item to wait for (split by rows alone, MiniLM's steps lost 1–2 ms per thread
/// to such waits at the ends of their matmuls). Items go token block by token block, the threads side by side on
/// the same tokens. Every other case splits rows only, as <see cref="Gemm.ChunkSize"/> says, each item holding every
/// token, so only <see cref="Gemm.F32{TEpilogue}(PackedMatrix, in GemmInput, int, int, int, int, ref TEpilogue)"/>
/// is ever given part of the tokens.
/// </summary>
public readonly struct GemmBlocks
{
    /// <summary>Items each thread gets about, when tokens are split too.</summary>
    public const int ItemsPerThread = 24;

    // Tokens per block at least: 8 of the F32 kernel's tiles, so a block still reads each weight panel for many tokens.
    private const int MinTokensPerBlock = 8 * PanelKernels.TileTokens;

    private readonly int _groups, _tokens;

    private GemmBlocks(int groups, int tokens, int groupsPerBlock, int tokensPerBlock)
    {
        _groups = groups;
        _tokens = tokens;
        GroupsPerBlock = groupsPerBlock;
        TokensPerBlock = tokensPerBlock;
        GroupBlocks = (groups + groupsPerBlock - 1) / groupsPerBlock;
        TokenBlocks = tokens <= tokensPerBlock ? 1 : (tokens + tokensPerBlock - 1) / tokensPerBlock;
    }

    /// <summary>4-row groups per item (the last block of a row may hold fewer).</summary>
    public int GroupsPerBlock { get; }

    /// <summary>Tokens per item (the last block of tokens may hold fewer); all of them when tokens are not split.</summary>
    public int TokensPerBlock { get; }

    /// <summary>Blocks across the weights' groups.</summary>
    public int GroupBlocks { get; }

    /// <summary>Blocks across the tokens: 1 unless the F32 layout splits them.</summary>
    public int TokenBlocks { get; }

    /// <summary>Work items: one per (token block, group block).</summary>
    public int Count => GroupBlocks * TokenBlocks;

    /// <summary>The blocks of <paramref name="weights"/> times <paramref name="tokens"/> tokens for a pool of <paramref name="threads"/>.</summary>
    public static GemmBlocks For(PackedMatrix weights, int tokens, int threads)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        int groups = weights.Groups;
        int rowsOnly = Gemm.ChunkSize(weights, tokens, threads);
        if (weights.Format != PackedFormat.F32 || threads <= 1 || tokens < 2 * MinTokensPerBlock)
            return new GemmBlocks(groups, tokens, rowsOnly, Math.Max(1, tokens));
        const int tileGroups = 4 * PanelKernels.PanelRows / 4; // one 4-panel tile: 64 rows
        int groupsPerBlock = Math.Min(groups, tileGroups);
        int groupBlocks = (groups + groupsPerBlock - 1) / groupsPerBlock;
        int tokenBlocks = Math.Clamp((ItemsPerThread * threads + groupBlocks - 1) / groupBlocks, 1, tokens / MinTokensPerBlock);
        // Whole tiles per block, so only the last block of tokens ends on a short tile.
        int tokensPerBlock = ((tokens + tokenBlocks - 1) / tokenBlocks + PanelKernels.TileTokens - 1) / PanelKernels.TileTokens * PanelKernels.TileTokens;
        return new GemmBlocks(groups, tokens, groupsPerBlock, tokensPerBlock);
    }

    /// <summary>Item <paramref name="item"/>'s groups [<paramref name="firstGroup"/>, <paramref name="endGroup"/>) and tokens [<paramref name="firstToken"/>, <paramref name="endToken"/>).</summary>
    public void Get(int item, out int firstGroup, out int endGroup, out int firstToken, out int endToken)
    {
        if ((uint)item >= (uint)Count) throw new ArgumentOutOfRangeException(nameof(item), $"Item {item} of {Count} blocks.");
        int tokenBlock = item / GroupBlocks, groupBlock = item - tokenBlock * GroupBlocks;
        firstGroup = groupBlock * GroupsPerBlock;
        endGroup = Math.Min(_groups, firstGroup + GroupsPerBlock);
        firstToken = tokenBlock * TokensPerBlock;
        endToken = Math.Min(_tokens, firstToken + TokensPerBlock);
    }
}
