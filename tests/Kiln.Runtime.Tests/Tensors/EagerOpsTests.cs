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

    [Fact]
    public void LayerNormCentersScalesAndShifts()
    {
        var x = new Tensor([1, 2, 3, 6], 1, 4); // mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5
        var y = Ops.LayerNorm(x, new Tensor([1, 1, 2, 1], 4), new Tensor([0, 0, 0, 10], 4), eps: 0);
        double sigma = Math.Sqrt(3.5);
        Assert.Equal(-2 / sigma, y[0, 0], 5);
        Assert.Equal(0, y[0, 2], 6);                  // (3 − 3)·2
        Assert.Equal(3 / sigma + 10, y[0, 3], 5);
        Assert.Equal(Ops.LayerNorm(x, new Tensor([1, 1, 1, 1], 4), 1e-5f).Data, Ops.LayerNorm(x, new Tensor([1, 1, 1, 1], 4), new Tensor(new float[4], 4), 1e-5f).Data);
        Assert.Throws<ArgumentException>(() => Ops.LayerNorm(x, new Tensor([1, 1, 1], 3), 1e-5f));
    }

    [Fact]
    public void HeadRmsNormNormalizesEachHeadOnItsOwn()
    {
        var x = new Tensor([3, 4, 0, 2], 1, 4); // heads [3, 4] (mean square 12.5) and [0, 2] (mean square 2)
        var y = Ops.HeadRmsNorm(x, new Tensor([1, 10], 2), eps: 0);
        Assert.Equal(3 / Math.Sqrt(12.5), y[0, 0], 5);
        Assert.Equal(10 * 4 / Math.Sqrt(12.5), y[0, 1], 4);
        Assert.Equal(10 * 2 / Math.Sqrt(2), y[0, 3], 4);
        Assert.Throws<ArgumentException>(() => Ops.HeadRmsNorm(x, new Tensor([1, 1, 1], 3), 0));
    }

    [Fact]
    public void LinearWithBiasAddsTheBiasToEveryRow()
    {
        var x = new Tensor([1, 2, 3, 4, 5, 6], 2, 3);
        var y = Ops.Linear(x, new Tensor([1, 0, 0, 0, 1, -1], 2, 3), new Tensor([10, 20], 2));
        Assert.Equal([11f, 19f, 14f, 19f], y.Data);
        Assert.Throws<ArgumentException>(() => Ops.Linear(x, new Tensor([1, 0, 0, 0, 1, -1], 2, 3), new Tensor([1, 2, 3], 3)));
    }

    [Fact]
    public void ActivationsMatchTheirFormulas()
    {
        var x = new Tensor([-2, -0.5f, 0, 0.5f, 3], 1, 5);
        for (int i = 0; i < 5; i++)
        {
            double v = x.Data[i];
            Assert.Equal(0.5 * v * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v))), Ops.Gelu(x).Data[i], 6);
            Assert.Equal(Math.Max(v, 0), Ops.Relu(x).Data[i], 6);
            Assert.Equal(1 / (1 + Math.Exp(-v)), Ops.Sigmoid(x).Data[i], 6);
            Assert.Equal(Math.Tanh(v), Ops.Tanh(x).Data[i], 6);
            Assert.Equal(Math.Exp(v), Ops.Exp(x).Data[i], 5);
            Assert.Equal(Math.Log(1 + Math.Exp(v)), Ops.Softplus(x).Data[i], 6);
            Assert.Equal(30 * Math.Tanh(v / 30), Ops.SoftCap(x, 30).Data[i], 6);
            Assert.Equal(-v, Ops.Neg(x).Data[i], 6);
        }
        // The exact GELU at known points: erf(1/√2) = 0.682689492137086.
        Assert.Equal(0.5 * (1 + 0.682689492137086), Ops.GeluErf(new Tensor([1f], 1, 1)).Data[0], 6);
        Assert.Equal(-1 * 0.5 * (1 - 0.682689492137086), Ops.GeluErf(new Tensor([-1f], 1, 1)).Data[0], 6);
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.SoftCap(x, 0));
    }

    [Fact]
    public void ArithmeticBroadcastsRowVectorsAndScalars()
    {
        var a = new Tensor([1, 2, 3, 4], 2, 2);
        var bias = new Tensor([10, 20], 2);
        Assert.Equal([11f, 22f, 13f, 24f], (a + bias).Data);
        Assert.Equal([9f, 18f, 7f, 16f], (bias - a).Data);
        Assert.Equal([2f, 4f, 6f, 8f], (a * 2).Data);
        Assert.Equal([2f, 4f, 6f, 8f], (2 * a).Data);
        Assert.Equal([0f, -1f, -2f, -3f], (1 - a).Data);
        Assert.Equal([0.5f, 1f, 1.5f, 2f], (a / 2).Data);
        Assert.Equal([1f, 0.5f, 1f / 3, 0.25f], (1 / a).Data);
        Assert.Equal([-1f, -2f, -3f, -4f], (-a).Data);
        Assert.Throws<ArgumentException>(() => a + new Tensor([1, 2, 3], 3));
    }

    [Fact]
    public void SliceAndConcatCutAndJoinColumns()
    {
        var x = new Tensor([1, 2, 3, 4, 5, 6], 2, 3);
        var right = Ops.Slice(x, 1, 2);
        Assert.Equal([2f, 3f, 5f, 6f], right.Data);
        Assert.Equal(x.Data, Ops.Concat(Ops.Slice(x, 0, 1), right).Data);
        Assert.Throws<ArgumentException>(() => Ops.Slice(x, 2, 2));
    }

    [Fact]
    public void PositionEmbeddingGathersRowsByPosition()
    {
        var context = new AttentionContext(new KvCache(1, 1, 8, 1), 4);
        context.Add(2, 0, true);
        context.Add(0, 0, true);
        var table = new Tensor([0, 0, 1, 1, 2, 2], 3, 2);
        Assert.Equal([2f, 2f, 0f, 0f], Ops.PositionEmbedding(table, context).Data);
        var far = new AttentionContext(new KvCache(1, 1, 8, 1), 4);
        far.Add(5, 0, true);
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.PositionEmbedding(table, far));
    }

    [Fact]
    public void NeoXRopeTurnsHalvesAndPartialRopeLeavesTheRest()
    {
        var context = Context(tokens: 2);
        var x = new Tensor([1, 2, 3, 4, 1, 2, 3, 4], 2, 4);
        var neox = Ops.Rope(x, context, headDim: 4, freqBase: 100, RopeStyle.NeoX);
        Assert.Equal(x.Row(0).ToArray(), neox.Row(0).ToArray()); // position 0
        // Pair 0 is (x0, x2) at angle 1; pair 1 is (x1, x3) at angle 0.1.
        Assert.Equal(1 * Math.Cos(1) - 3 * Math.Sin(1), neox[1, 0], 5);
        Assert.Equal(1 * Math.Sin(1) + 3 * Math.Cos(1), neox[1, 2], 5);
        Assert.Equal(2 * Math.Cos(0.1) - 4 * Math.Sin(0.1), neox[1, 1], 5);
        var partial = Ops.Rope(x, context, headDim: 4, freqBase: 100, RopeStyle.Adjacent, rotaryDims: 2);
        Assert.Equal(1 * Math.Cos(1) - 2 * Math.Sin(1), partial[1, 0], 5);
        Assert.Equal([3f, 4f], partial.Row(1)[2..].ToArray()); // past the rotary dims: as they were
        Assert.Throws<ArgumentException>(() => Ops.Rope(x, context, 4, 100, RopeStyle.NeoX, rotaryDims: 3));
    }

    [Fact]
    public void AttentionOptionsWindowCapScaleAndBidirectional()
    {
        var cache = new KvCache(1, 1, 8, kvDim: 1);
        var context = new AttentionContext(cache, 4);
        for (int p = 0; p < 3; p++) context.Add(p, 0, true);
        var q = new Tensor([1, 1, 1], 3, 1);
        var k = new Tensor([0, 1, 2], 3, 1);
        var v = new Tensor([10, 20, 30], 3, 1);

        // A window of 1: each token sees only itself.
        Assert.Equal([10f, 20f, 30f], Ops.Attention(q, k, v, context, 0, 1, 1, window: 1).Data);

        // Bidirectional: token 0 sees all three (scores 0, 1, 2 at scale 1).
        var all = Ops.Attention(q, k, v, context, 0, 1, 1, scale: 1, causal: false);
        double z = 1 + Math.E + Math.Exp(2);
        Assert.Equal((10 + 20 * Math.E + 30 * Math.Exp(2)) / z, all.Data[0], 4);

        // A soft cap of 1 squashes scores 0, 1, 2 to tanh of them.
        var capped = Ops.Attention(q, k, v, context, 0, 1, 1, scale: 1, softCap: 1);
        double t1 = Math.Exp(Math.Tanh(1)), t2 = Math.Exp(Math.Tanh(2));
        Assert.Equal((10 + 20 * t1 + 30 * t2) / (1 + t1 + t2), capped.Data[2], 4);
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.Attention(q, k, v, context, 0, 1, 1, window: -1));
    }
}
