using System.Runtime.CompilerServices;
using ILGPU;

namespace Kiln.Gpu;

/// <summary>
/// How a kernel's threads share its work units (a matrix's 4-row group, a token's row, a token's head): every
/// kernel loops over its units with a stride of the whole grid (so a launch has as many groups as the device keeps
/// busy, not one per unit), and each unit is worked by <c>lanes</c> threads: a whole warp on CUDA (coalesced loads,
/// sums folded by shuffles), or one thread on ILGPU's CPU accelerator, where a shuffle is an operating-system
/// barrier. Lanes is 1 or the warp size, so a warp's threads always stay together.
/// </summary>
public static class GpuLaunch
{
    /// <summary>This thread's index in the grid.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Thread() => Grid.IdxX * Group.DimX + Group.IdxX;

    /// <summary>The unit this thread's lanes start at.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Worker(int lanes) => Thread() / lanes;

    /// <summary>Workers in the grid: the stride between one worker's units.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Workers(int lanes) => Grid.DimX * Group.DimX / lanes;

    /// <summary>This thread's lane within its worker.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Lane(int lanes) => Thread() % lanes;

    /// <summary>The sum of <paramref name="value"/> over a worker's lanes, in every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(float value, int lanes)
    {
        for (int offset = lanes / 2; offset > 0; offset /= 2) value += Warp.ShuffleXor(value, offset);
        return value;
    }

    /// <summary>The maximum of <paramref name="value"/> over a worker's lanes, in every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Max(float value, int lanes)
    {
        for (int offset = lanes / 2; offset > 0; offset /= 2) value = GpuMath.Max(value, Warp.ShuffleXor(value, offset));
        return value;
    }
}
