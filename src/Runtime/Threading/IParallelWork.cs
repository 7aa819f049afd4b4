namespace Kiln.Threading;

/// <summary>
/// A loop body for <see cref="WorkerPool.Run{TWork}"/>: a struct, so the pool's generic chunk loop calls
/// <see cref="Execute"/> directly (inlinable; no delegate or interface dispatch per chunk).
/// </summary>
/// <remarks>
/// Every participating thread works on its own copy of the struct, so fields may be used as per-thread scratch
/// state; what it points to (arrays, native buffers) is shared, and chunks must write disjoint parts of it.
/// </remarks>
public interface IParallelWork
{
    /// <summary>Processes items [<paramref name="start"/>, <paramref name="end"/>); never an empty range.</summary>
    void Execute(int start, int end);
}
