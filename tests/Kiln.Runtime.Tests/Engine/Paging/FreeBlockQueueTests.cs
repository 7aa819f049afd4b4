using Kiln.Engine.Paging;

namespace Kiln.Runtime.Tests.Engine.Paging;

public sealed class FreeBlockQueueTests
{
    private static (FreeBlockQueue Queue, KvBlock[] Blocks) QueueOf(int count)
    {
        var queue = new FreeBlockQueue();
        var blocks = new KvBlock[count];
        for (int i = 0; i < count; i++) queue.Append(blocks[i] = new KvBlock(i));
        return (queue, blocks);
    }

    private static int[] Drain(FreeBlockQueue queue)
    {
        var ids = new List<int>();
        while (queue.Count > 0) ids.Add(queue.PopFront().Id);
        return [.. ids];
    }

    [Fact]
    public void PopsInTheOrderBlocksWereAppended()
    {
        var (queue, _) = QueueOf(4);
        Assert.Equal(0, queue.First!.Id);
        Assert.Equal(3, queue.Last!.Id);
        Assert.Equal([0, 1, 2, 3], Drain(queue));
        Assert.Null(queue.First);
    }

    [Fact]
    public void RemovingFromTheMiddleKeepsTheOthersInOrder()
    {
        var (queue, blocks) = QueueOf(5);
        queue.Remove(blocks[2]);
        queue.Remove(blocks[0]);
        queue.Remove(blocks[4]);
        Assert.False(queue.Contains(blocks[2]));
        Assert.Equal(2, queue.Count);
        queue.Append(blocks[2]);
        Assert.Equal([1, 3, 2], Drain(queue));
    }

    [Fact]
    public void MisuseIsReported()
    {
        var (queue, blocks) = QueueOf(2);
        Assert.Throws<InvalidOperationException>(() => queue.Append(blocks[0]));
        queue.Remove(blocks[1]);
        Assert.Throws<InvalidOperationException>(() => queue.Remove(blocks[1]));
        queue.PopFront();
        Assert.Throws<InvalidOperationException>(() => queue.PopFront());
    }
}
