using Kiln.Engine.Paging;

namespace Kiln.Runtime.Tests.Engine.Paging;

public sealed class BlockHashTests
{
    [Fact]
    public void EqualPrefixesGiveEqualChains()
    {
        var first = BlockHash.Chain(null, [1, 2, 3, 4]);
        var second = BlockHash.Chain(first, [5, 6, 7, 8]);
        Assert.Equal(first, BlockHash.Chain(null, [1, 2, 3, 4]));
        Assert.Equal(second, BlockHash.Chain(BlockHash.Chain(null, [1, 2, 3, 4]), [5, 6, 7, 8]));
    }

    [Fact]
    public void TheSameBlockUnderADifferentParentHashesDifferently()
    {
        var parentA = BlockHash.Chain(null, [1, 2, 3, 4]);
        var parentB = BlockHash.Chain(null, [1, 2, 3, 9]);
        Assert.NotEqual(BlockHash.Chain(parentA, [5, 6, 7, 8]), BlockHash.Chain(parentB, [5, 6, 7, 8]));
        Assert.NotEqual(BlockHash.Chain(null, [5, 6, 7, 8]), BlockHash.Chain(parentA, [5, 6, 7, 8]));
    }

    [Fact]
    public void ADifferentExtraKeyHashesDifferently()
    {
        ReadOnlySpan<int> tokens = [1, 2, 3, 4];
        var none = BlockHash.Chain(null, tokens);
        var zero = BlockHash.Chain(null, tokens, extraKey: 0);
        var one = BlockHash.Chain(null, tokens, extraKey: 1);
        Assert.NotEqual(none, zero);
        Assert.NotEqual(zero, one);
        Assert.Equal(one, BlockHash.Chain(null, tokens, extraKey: 1));
    }

    [Fact]
    public void OrderLengthAndSignOfTokensMatter()
    {
        var hashes = new HashSet<BlockHash>
        {
            BlockHash.Chain(null, [1, 2]),
            BlockHash.Chain(null, [2, 1]),
            BlockHash.Chain(null, [1, 2, 0]),
            BlockHash.Chain(null, [1]),
            BlockHash.Chain(null, [-1, 2]),
            BlockHash.Chain(null, []),
        };
        Assert.Equal(6, hashes.Count);
    }

    [Fact]
    public void NoCollisionsAmongManySmallBlocksInEitherHalf()
    {
        var lows = new HashSet<ulong>();
        var highs = new HashSet<ulong>();
        for (int a = 0; a < 64; a++)
        for (int b = 0; b < 64; b++)
        for (int c = 0; c < 16; c++)
        {
            var hash = BlockHash.Chain(null, [a, b, c]);
            Assert.True(lows.Add(hash.Low));
            Assert.True(highs.Add(hash.High));
        }
    }

    [Fact]
    public void IsStableAcrossRunsAndMachines()
    {
        // Pinned: a change here invalidates any cache keyed on block hashes beyond one process.
        var hash = BlockHash.Chain(BlockHash.Chain(null, [1, 2, 3, 4]), [5, 6, 7, 8], extraKey: 42);
        Assert.Equal(PinnedHash, hash.ToString());
    }

    private const string PinnedHash = "e23c6a1ae078544378628b492adb3d3a";
}
