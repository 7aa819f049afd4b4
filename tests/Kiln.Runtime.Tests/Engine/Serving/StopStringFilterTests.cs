using Kiln.Engine.Serving;

namespace Kiln.Runtime.Tests.Engine.Serving;

public sealed class StopStringFilterTests
{
    [Fact]
    public void TextThatMightStartAStopStringWaitsForTheNextPiece()
    {
        var filter = new StopStringFilter(["Hello!"]);
        Assert.Equal("Say ", filter.Push("Say Hel"));
        Assert.Equal("", filter.Push("l"));
        Assert.Equal("Hellp", filter.Push("p")); // no longer a prefix: released whole
        Assert.False(filter.Stopped);
        Assert.Equal("", filter.Push("Hell"));
        Assert.Equal("Hell", filter.Flush()); // the output ended: held text is shown after all
    }

    [Fact]
    public void AStopStringAcrossPiecesEndsTheOutputBeforeIt()
    {
        var filter = new StopStringFilter(["END", "stop"]);
        Assert.Equal("abc ", filter.Push("abc E"));
        Assert.Equal("", filter.Push("N"));
        Assert.Equal("", filter.Push("D and more"));
        Assert.True(filter.Stopped);
        Assert.Equal("", filter.Push("later"));
        Assert.Equal("", filter.Flush());
    }

    [Fact]
    public void TheEarliestStopStringWinsAndPlainTextPassesThroughUncopied()
    {
        var filter = new StopStringFilter(["zz", "b"]);
        string plain = "plain text";
        Assert.Same(plain, filter.Push(plain));
        Assert.Equal("a", filter.Push("abzz"));
        Assert.True(filter.Stopped);
    }
}
