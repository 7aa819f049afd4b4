namespace Kiln.Runtime.Tests.Tensors;

/// <summary>The reference semantics themselves, against values worked out by hand.</summary>
public sealed class EagerOpsTests
{
    private static AttentionContext Context(int tokens, int maxContext = 8, int kvDim = 4, int slot = 0)
    {
        var context = new AttentionContext(new KvCache(layers: 1, slots: 2, maxContext, kvDim), capacity: 8);
        for (int i = 0; i < tokens; i++) context.Add(i, slot, wantLogits: true);
        return context;
    }

    [Fact]
    public void LinearMultipliesByTheTransposedWeight()
    {
        var x = new Tensor([1, 2, 3, 4, 5, 6], 2, 3);
        var w = new Tensor([1, 0, 0, 0, 1, -1], 2, 3); // rows are outputs
        var y = Ops.Linear(x, w);
        Assert.Equal([2, 2], y.Shape);
        Assert.Equal([1f, -1f, 4f, -1f], y.Data);
    }

    [Fact]
    public void RmsNormScalesEachRowToUnitRootMeanSquare()
    {
        var x = new Tensor([3, 4, 0, 0], 1, 4); // mean square 25/4
        var y = Ops.RmsNorm(x, new Tensor([1, 2, 1, 1], 4), eps: 0);
        Assert.Equal(3 / 2.5f, y.Data[0], 6);
        Assert.Equal(2 * 4 / 2.5f, y.Data[1], 6);
    }

    [Fact]
    public void RopeRotatesAdjacentPairsByPositionTimesFrequency()
    {
        var context = Context(tokens: 2);
        var x = new Tensor([1, 0, 1, 0, 1, 0, 1, 0], 2, 4);
        var y = Ops.Rope(x, context, headDim: 4, freqBase: 100);
        Assert.Equal([1f, 0f, 1f, 0f], y.Row(0).ToArray()); // position 0: identity
        Assert.Equal(MathF.Cos(1), y[1, 0], 6);             // pair 0: angle = position
        Assert.Equal(MathF.Sin(1), y[1, 1], 6);
        Assert.Equal(MathF.Cos(0.1f), y[1, 2], 6);          // pair 1: angle = position / 100^(2/4)
        Assert.Equal(MathF.Sin(0.1f), y[1, 3], 6);
    }

    [Fact]
    public void AttentionOfTheFirstTokenReturnsItsValueAndFillsTheCache()
    {
        var context = Context(tokens: 1);
        var q = new Tensor([1, 2, 3, 4], 1, 4);
        var k = new Tensor([5, 6], 1, 2);
        var v = new Tensor([7, 8], 1, 2);
        var context2 = new AttentionContext(new KvCache(1, 1, 4, kvDim: 2), 4);
        context2.Add(0, 0, true);
        var y = Ops.Attention(q, k, v, context2, layer: 0, heads: 2, kvHeads: 1);
        Assert.Equal([7f, 8f, 7f, 8f], y.Data); // both query heads share the one KV head
        Assert.Equal([5f, 6f], context2.Cache.Key(0, 0, 0).ToArray());
        Assert.Equal(1, context.TokenCount);
    }

    [Fact]
    public void AttentionIsCausalAndSoftmaxWeighted()
    {
        var cache = new KvCache(1, 1, 4, kvDim: 1);
        var context = new AttentionContext(cache, 4);
        context.Add(0, 0, true);
        context.Add(1, 0, true);
        var q = new Tensor([0, 1], 2, 1);
        var k = new Tensor([0, 1], 2, 1);
        var v = new Tensor([10, 20], 2, 1);
        var y = Ops.Attention(q, k, v, context, 0, 1, 1);
        Assert.Equal(10f, y.Data[0]); // token 0 sees only itself
        double w1 = Math.Exp(1) / (1 + Math.Exp(1));
        Assert.Equal(10 * (1 - w1) + 20 * w1, y.Data[1], 5);
    }

    [Fact]
    public void SelectRowsKeepsOnlyTheWantedRowsInOrder()
    {
        var context = new AttentionContext(new KvCache(1, 1, 8, 1), 4);
        context.Add(0, 0, false);
        context.Add(1, 0, true);
        context.Add(2, 0, true);
        var y = Ops.SelectRows(new Tensor([1, 2, 3], 3, 1), context);
        Assert.Equal([2f, 3f], y.Data);
    }

    [Fact]
    public void ElementwiseOpsAndShapeErrors()
    {
        var a = new Tensor([0, 1, -1], 1, 3);
        Assert.Equal(0.7310586f, Ops.Silu(a).Data[1], 6);
        Assert.Equal([0f, 2f, -2f], (a + a).Data);
        Assert.Equal([0f, 1f, 1f], (a * a).Data);
        Assert.Throws<ArgumentException>(() => Ops.Add(a, new Tensor([1, 2], 1, 2)));
        Assert.Throws<ArgumentException>(() => Ops.Linear(a, new Tensor([1, 2], 1, 2)));
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.Embedding(a, [5]));
    }
}
