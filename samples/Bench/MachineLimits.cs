using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Bench;

/// <summary>
/// The machine's measured limits with a given thread count: streaming read bandwidth over a buffer far larger
/// than the last-level cache, fp32 FMA throughput, and the int8 block-dot rate quantized matmuls are built from. Each
/// is the best of a few repetitions (a peak, as STREAM reports).
/// </summary>
public static unsafe class MachineLimits
{
    /// <summary>Read bandwidth in bytes per second: <paramref name="threads"/> threads each sum a contiguous share of a <paramref name="bytes"/> buffer.</summary>
    public static double ReadBandwidth(int threads, long bytes = 1L << 30, int repetitions = 8)
    {
        bytes = bytes / (threads * 256L) * threads * 256L;
        byte* buffer = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 4096);
        try
        {
            // Write every page (each thread its own share, so pages land near the thread that reads them) so the
            // timed passes read real, non-zero memory.
            RunOnThreads(threads, t =>
            {
                long share = bytes / threads;
                for (long i = t * share; i < (t + 1) * share; i += 1L << 28)
                    new Span<byte>(buffer + i, (int)Math.Min(1L << 28, (t + 1) * share - i)).Fill((byte)(1 + (i >> 20)));
            });
            double best = 0;
            for (int r = 0; r < repetitions; r++)
            {
                double seconds = RunOnThreads(threads, t =>
                {
                    long share = bytes / threads;
                    Sink[t * 16] = SumBytes(buffer + t * share, share);
                });
                best = Math.Max(best, bytes / seconds);
            }
            return best;
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
        }
    }

    /// <summary>Peak fp32 FLOP/s: <paramref name="threads"/> threads run independent vector FMA chains.</summary>
    public static double PeakFp32Flops(int threads, int repetitions = 5)
    {
        const long Iterations = 20_000_000;
        double best = 0;
        for (int r = 0; r < repetitions; r++)
        {
            double seconds = RunOnThreads(threads, t => Sink[t * 16] = FmaChains(Iterations));
            long lanes = Vector512.IsHardwareAccelerated ? 16 : 8;
            best = Math.Max(best, threads * Iterations * 12 * lanes * 2.0 / seconds);
        }
        return best;
    }

    /// <summary>
    /// Peak int8 multiply-adds per second of the Q4_0 × Q8 block dot, in registers (no memory traffic): per 32-element
    /// block and row, unpack the nibbles, vpmaddubsw + vpmaddwd, convert to float and FMA with the block's scale — the
    /// instructions every Q8_0/Q4_0 matmul kernel needs per block without VNNI (.NET 10 has no 512-bit VNNI class).
    /// An upper bound for int8 GEMM speed here; 0 without AVX-512BW.
    /// </summary>
    public static double PeakInt8BlockMacs(int threads, int repetitions = 5)
    {
        if (!Avx512BW.IsSupported) return 0;
        const long Iterations = 10_000_000;
        double best = 0;
        for (int r = 0; r < repetitions; r++)
        {
            double seconds = RunOnThreads(threads, t => Sink[t * 16] = Int8BlockDots(Iterations));
            best = Math.Max(best, threads * Iterations * 8 * 64.0 / seconds);
        }
        return best;
    }

    private static readonly double[] Sink = new double[64 * 16];

    private static double RunOnThreads(int threads, Action<int> body)
    {
        using var start = new Barrier(threads + 1);
        using var done = new CountdownEvent(threads);
        var workers = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            int id = t;
            workers[t] = new Thread(() => { start.SignalAndWait(); body(id); done.Signal(); }) { IsBackground = true };
            workers[t].Start();
        }
        start.SignalAndWait();
        long begin = Stopwatch.GetTimestamp();
        done.Wait();
        double seconds = Stopwatch.GetElapsedTime(begin).TotalSeconds;
        foreach (var worker in workers) worker.Join();
        return seconds;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static double SumBytes(byte* data, long length)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<ulong> a = default, b = default, c = default, d = default;
            for (long i = 0; i + 256 <= length; i += 256)
            {
                a += Vector512.Load((ulong*)(data + i));
                b += Vector512.Load((ulong*)(data + i + 64));
                c += Vector512.Load((ulong*)(data + i + 128));
                d += Vector512.Load((ulong*)(data + i + 192));
            }
            return Vector512.Sum(a + b + c + d);
        }
        else
        {
            Vector256<ulong> a = default, b = default, c = default, d = default;
            for (long i = 0; i + 128 <= length; i += 128)
            {
                a += Vector256.Load((ulong*)(data + i));
                b += Vector256.Load((ulong*)(data + i + 32));
                c += Vector256.Load((ulong*)(data + i + 64));
                d += Vector256.Load((ulong*)(data + i + 96));
            }
            return Vector256.Sum(a + b + c + d);
        }
    }

    // Eight independent block dots per round (2 × 32 elements each): as many live accumulators as a 4-row ×
    // 2-token register tile keeps.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static double Int8BlockDots(long iterations)
    {
        var packed = Vector512.Create((byte)0x5A);
        var ones = Vector512.Create((short)1);
        var low = Vector512.Create((byte)0x0F);
        Vector512<sbyte> x0 = Vector512.Create((sbyte)1), x1 = Vector512.Create((sbyte)2);
        var scale = Vector512.Create(0.5f);
        Vector512<float> f0 = default, f1 = default, f2 = default, f3 = default, f4 = default, f5 = default, f6 = default, f7 = default;
        for (long i = 0; i < iterations; i++)
        {
            var q0 = packed & low;
            var q1 = (packed.AsUInt16() >>> 4).AsByte() & low;
            var flipped = packed ^ low;
            var q2 = flipped & low;
            var q3 = (flipped.AsUInt16() >>> 4).AsByte() & low;
            f0 = Vector512.FusedMultiplyAdd(BlockDot(q0, x0, ones), scale, f0);
            f1 = Vector512.FusedMultiplyAdd(BlockDot(q1, x0, ones), scale, f1);
            f2 = Vector512.FusedMultiplyAdd(BlockDot(q0, x1, ones), scale, f2);
            f3 = Vector512.FusedMultiplyAdd(BlockDot(q1, x1, ones), scale, f3);
            f4 = Vector512.FusedMultiplyAdd(BlockDot(q2, x0, ones), scale, f4);
            f5 = Vector512.FusedMultiplyAdd(BlockDot(q3, x0, ones), scale, f5);
            f6 = Vector512.FusedMultiplyAdd(BlockDot(q2, x1, ones), scale, f6);
            f7 = Vector512.FusedMultiplyAdd(BlockDot(q3, x1, ones), scale, f7);
            packed += Vector512<byte>.One; // new quants each round, so nothing is hoisted
        }
        return Vector512.Sum(f0 + f1 + f2 + f3 + f4 + f5 + f6 + f7);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> BlockDot(Vector512<byte> quants, Vector512<sbyte> activations, Vector512<short> ones) =>
        Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(quants, activations), ones));

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static double FmaChains(long iterations)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            var x = Vector512.Create(0.999999f);
            var y = Vector512.Create(1e-7f);
            Vector512<float> a0 = Vector512.Create(1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
                             a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
            for (long i = 0; i < iterations; i++)
            {
                a0 = Vector512.FusedMultiplyAdd(a0, x, y); a1 = Vector512.FusedMultiplyAdd(a1, x, y);
                a2 = Vector512.FusedMultiplyAdd(a2, x, y); a3 = Vector512.FusedMultiplyAdd(a3, x, y);
                a4 = Vector512.FusedMultiplyAdd(a4, x, y); a5 = Vector512.FusedMultiplyAdd(a5, x, y);
                a6 = Vector512.FusedMultiplyAdd(a6, x, y); a7 = Vector512.FusedMultiplyAdd(a7, x, y);
                a8 = Vector512.FusedMultiplyAdd(a8, x, y); a9 = Vector512.FusedMultiplyAdd(a9, x, y);
                a10 = Vector512.FusedMultiplyAdd(a10, x, y); a11 = Vector512.FusedMultiplyAdd(a11, x, y);
            }
            return Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
        }
        else
        {
            var x = Vector256.Create(0.999999f);
            var y = Vector256.Create(1e-7f);
            Vector256<float> a0 = Vector256.Create(1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
                             a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
            for (long i = 0; i < iterations; i++)
            {
                a0 = Vector256.FusedMultiplyAdd(a0, x, y); a1 = Vector256.FusedMultiplyAdd(a1, x, y);
                a2 = Vector256.FusedMultiplyAdd(a2, x, y); a3 = Vector256.FusedMultiplyAdd(a3, x, y);
                a4 = Vector256.FusedMultiplyAdd(a4, x, y); a5 = Vector256.FusedMultiplyAdd(a5, x, y);
                a6 = Vector256.FusedMultiplyAdd(a6, x, y); a7 = Vector256.FusedMultiplyAdd(a7, x, y);
                a8 = Vector256.FusedMultiplyAdd(a8, x, y); a9 = Vector256.FusedMultiplyAdd(a9, x, y);
                a10 = Vector256.FusedMultiplyAdd(a10, x, y); a11 = Vector256.FusedMultiplyAdd(a11, x, y);
            }
            return Vector256.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
        }
    }
}
