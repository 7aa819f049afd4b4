using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;

namespace Kiln.Runtime.Tests.Engine.Serving;

public sealed class UpdateStreamTests
{
    /// <summary>How long a read may wait before the test fails instead of hanging.</summary>
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task AReaderSeesEveryUpdateInOrderWhateverTheTiming()
    {
        for (int round = 0; round < 200; round++)
        {
            const int Count = 50;
            var stream = new UpdateStream(Count + 1);
            var random = new Random(round);
            int[] pauses = Enumerable.Range(0, Count).Select(_ => random.Next(3) == 0 ? random.Next(200) : 0).ToArray();
            var writer = new Thread(() =>
            {
                for (int i = 0; i < Count; i++)
                {
                    Thread.SpinWait(pauses[i]);
                    stream.Write(new GenerationUpdate(i, ""));
                }
                stream.Write(new GenerationUpdate(-1, "", FinishReason: FinishReason.Length));
                stream.Complete();
            });
            writer.Start();

            var seen = new List<int>();
            bool final = false;
            while (await stream.WaitToReadAsync().AsTask().WaitAsync(Patience))
            {
                while (stream.TryRead(out var update))
                {
                    if (update.IsFinal) final = true;
                    else seen.Add(update.TokenId);
                }
            }
            writer.Join();
            Assert.True(seen.SequenceEqual(Enumerable.Range(0, Count)), $"round {round} (its seed): read [{string.Join(", ", seen)}]");
            Assert.True(final, $"round {round} (its seed): no final update");
        }
    }

    [Fact]
    public async Task ACompletedEmptyStreamEndsAndTheBoundIsKept()
    {
        var stream = new UpdateStream(1);
        stream.Write(new GenerationUpdate(7, "x"));
        Assert.Throws<InvalidOperationException>(() => stream.Write(new GenerationUpdate(8, "y")));
        stream.Complete();
        Assert.True(await stream.WaitToReadAsync().AsTask().WaitAsync(Patience));
        Assert.True(stream.TryRead(out var update));
        Assert.Equal(7, update.TokenId);
        Assert.False(await stream.WaitToReadAsync().AsTask().WaitAsync(Patience));
        Assert.False(stream.TryRead(out _));
    }
}
