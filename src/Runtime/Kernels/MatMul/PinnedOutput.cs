using Kiln.Threading;

namespace Kiln.Kernels.MatMul;

/// <summary>A parallel work whose epilogue writes into memory the caller owns (a step's logits span).</summary>
public interface IOutputWork : IParallelWork
{
    /// <summary>Points the work's output at <paramref name="output"/>, pinned for the duration of the run.</summary>
    void BindOutput(FloatBuffer output);
}

/// <summary>Runs a work on a pool with a caller's span pinned as its output, so no staging copy is needed.</summary>
public static class PinnedOutput
{
    public static unsafe void Run<TWork>(WorkerPool pool, Span<float> output, int itemCount, int chunkSize, TWork work)
        where TWork : struct, IOutputWork
    {
        ArgumentNullException.ThrowIfNull(pool);
        fixed (float* pointer = output)
        {
            work.BindOutput(new FloatBuffer(pointer, output.Length));
            pool.Run(itemCount, chunkSize, work);
        }
    }
}
