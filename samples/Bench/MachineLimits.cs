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
    /// Peak int8 multiply-adds per second of a quantized block dot against Q8 activations, on L1-resident data (no
    /// memory traffic), in the cheapest form Kiln's kernels use for that weight format without VNNI (.NET 10 has no
    /// 512-bit VNNI class): for Q4_0 nibbles, an 8-row strip's eight vpmaddubsw against broadcast activations summed
    /// in int16 (nibbles cannot saturate), one vpmaddwd, the offset, convert and scale FMA per 256 multiply-adds; for
    /// Q8_0 bytes, |w| against activations signed by w, each vpmaddubsw widened alone, then convert and FMA. An upper
    /// bound for that format's GEMM here; 0 without AVX2.
    /// </summary>
    public static double PeakInt8BlockMacs(int threads, bool nibbles, int repetitions = 5)
    {
        if (!Avx2.IsSupported || !Fma.IsSupported) return 0;
        const long Iterations = 5_000_000;
        double best = 0;
        for (int r = 0; r < repetitions; r++)
        {
            // A round is 8 tokens × one 8-row strip block: 8 × 256 multiply-adds.
            double seconds = RunOnThreads(threads, t => Sink[t * 16] = nibbles ? NibbleBlockDots(Iterations) : ByteBlockDots(Iterations));
            best = Math.Max(best, threads * Iterations * 8 * 256.0 / seconds);
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

    // One token's Q8 block in the strip roofs: 8 ints of quants, an offset, a float scale.
    private const int TokenInts = 10;

    private static void FillActivations(int* activations, int tokens)
    {
        for (int i = 0; i < tokens * TokenInts; i++) activations[i] = i % TokenInts == 9 ? BitConverter.SingleToInt32Bits(0.5f) : 0x01020304 + i;
    }

    // An 8-token × 8-row register tile (the Q4_0 kernel's): per round, one strip block unpacked, then per token eight
    // broadcast loads of 4 activations and 256 multiply-adds. Two activation sets alternate so no load is hoisted.
    // ByteBlockDots has the same shape, written out again rather than shared through a struct of weight vectors: the
    // JIT keeps plain locals in registers, while a struct of 8 vectors goes through the stack (a third of the rate lost).
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static double NibbleBlockDots(long iterations)
    {
        int* activations = stackalloc int[2 * 8 * TokenInts];
        FillActivations(activations, 2 * 8);
        var packed = Vector256.Create((byte)0x5A);
        var low = Vector256.Create((byte)0x0F);
        var scales = Vector256.Create(0.25f);
        Vector256<float> f0 = default, f1 = default, f2 = default, f3 = default, f4 = default, f5 = default, f6 = default, f7 = default;
        for (long i = 0; i < iterations; i++)
        {
            Vector256<byte> v0 = packed, v1 = packed ^ low, v2 = packed + low, v3 = packed - low;
            // Plain locals, not a struct: the JIT keeps them in registers (a struct of 8 vectors goes through the stack).
            Vector256<byte> l0 = v0 & low, l1 = v1 & low, l2 = v2 & low, l3 = v3 & low;
            Vector256<byte> h0 = (v0.AsUInt16() >>> 4).AsByte() & low, h1 = (v1.AsUInt16() >>> 4).AsByte() & low;
            Vector256<byte> h2 = (v2.AsUInt16() >>> 4).AsByte() & low, h3 = (v3.AsUInt16() >>> 4).AsByte() & low;
            int* a = activations + (i & 1) * 8 * TokenInts;
            f0 = StripToken(f0, l0, l1, l2, l3, h0, h1, h2, h3, scales, a);
            f1 = StripToken(f1, l0, l1, l2, l3, h0, h1, h2, h3, scales, a + TokenInts);
            f2 = StripToken(f2, l0, l1, l2, l3, h0, h1, h2, h3, scales, a + 2 * TokenInts);
            f3 = StripToken(f3, l0, l1, l2, l3, h0, h1, h2, h3, scales, a + 3 * TokenInts);
            f4 = StripToken(f4, l0, l1, l2, l3, h0, h1, h2, h3, scales, a + 4 * TokenInts);
            f5 = StripToken(f5, l0, l1, l2, l3, h0, h1, h2, h3, scales, a + 5 * TokenInts);
            f6 = StripToken(f6, l0, l1, l2, l3, h0, h1, h2, h3, scales, a + 6 * TokenInts);
            f7 = StripToken(f7, l0, l1, l2, l3, h0, h1, h2, h3, scales, a + 7 * TokenInts);
            packed += Vector256<byte>.One; // new quants each round, so nothing is hoisted
        }
        return Vector256.Sum(f0 + f1 + f2 + f3 + f4 + f5 + f6 + f7);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> StripToken(Vector256<float> accumulator, Vector256<byte> l0, Vector256<byte> l1, Vector256<byte> l2, Vector256<byte> l3,
        Vector256<byte> h0, Vector256<byte> h1, Vector256<byte> h2, Vector256<byte> h3, Vector256<float> scales, int* a)
    {
        Vector256<short> sums = Avx2.MultiplyAddAdjacent(l0, Vector256.Create(a[0]).AsSByte()) + Avx2.MultiplyAddAdjacent(l1, Vector256.Create(a[1]).AsSByte())
            + (Avx2.MultiplyAddAdjacent(l2, Vector256.Create(a[2]).AsSByte()) + Avx2.MultiplyAddAdjacent(l3, Vector256.Create(a[3]).AsSByte()))
            + (Avx2.MultiplyAddAdjacent(h0, Vector256.Create(a[4]).AsSByte()) + Avx2.MultiplyAddAdjacent(h1, Vector256.Create(a[5]).AsSByte())
            + (Avx2.MultiplyAddAdjacent(h2, Vector256.Create(a[6]).AsSByte()) + Avx2.MultiplyAddAdjacent(h3, Vector256.Create(a[7]).AsSByte())));
        Vector256<int> dots = Avx2.MultiplyAddAdjacent(sums, Vector256<short>.One) - Vector256.Create(a[8]);
        return Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dots), scales * Vector256.Create(*(float*)(a + 9)), accumulator);
    }

    // The same 8-token × 8-row tile in Q8_0's form: per token, eight broadcasts signed by the weights, eight
    // vpmaddubsw of |w| each widened alone (two byte products can overflow int16), 256 multiply-adds.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static double ByteBlockDots(long iterations)
    {
        int* activations = stackalloc int[2 * 8 * TokenInts];
        FillActivations(activations, 2 * 8);
        var packed = Vector256.Create((sbyte)-37);
        var flip = Vector256.Create((sbyte)0x55);
        var scales = Vector256.Create(0.25f);
        Vector256<float> f0 = default, f1 = default, f2 = default, f3 = default, f4 = default, f5 = default, f6 = default, f7 = default;
        for (long i = 0; i < iterations; i++)
        {
            // Four distinct weight vectors, each used twice, and their magnitudes, as plain locals (kept in registers).
            Vector256<sbyte> w0 = packed, w1 = packed ^ flip, w2 = packed + flip, w3 = packed - flip;
            Vector256<byte> m0 = Avx2.Abs(w0), m1 = Avx2.Abs(w1), m2 = Avx2.Abs(w2), m3 = Avx2.Abs(w3);
            int* a = activations + (i & 1) * 8 * TokenInts;
            f0 = ByteStripToken(f0, m0, m1, m2, m3, w0, w1, w2, w3, scales, a);
            f1 = ByteStripToken(f1, m0, m1, m2, m3, w0, w1, w2, w3, scales, a + TokenInts);
            f2 = ByteStripToken(f2, m0, m1, m2, m3, w0, w1, w2, w3, scales, a + 2 * TokenInts);
            f3 = ByteStripToken(f3, m0, m1, m2, m3, w0, w1, w2, w3, scales, a + 3 * TokenInts);
            f4 = ByteStripToken(f4, m0, m1, m2, m3, w0, w1, w2, w3, scales, a + 4 * TokenInts);
            f5 = ByteStripToken(f5, m0, m1, m2, m3, w0, w1, w2, w3, scales, a + 5 * TokenInts);
            f6 = ByteStripToken(f6, m0, m1, m2, m3, w0, w1, w2, w3, scales, a + 6 * TokenInts);
            f7 = ByteStripToken(f7, m0, m1, m2, m3, w0, w1, w2, w3, scales, a + 7 * TokenInts);
            packed += Vector256<sbyte>.One;
        }
        return Vector256.Sum(f0 + f1 + f2 + f3 + f4 + f5 + f6 + f7);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> ByteStripToken(Vector256<float> accumulator, Vector256<byte> m0, Vector256<byte> m1, Vector256<byte> m2, Vector256<byte> m3,
        Vector256<sbyte> w0, Vector256<sbyte> w1, Vector256<sbyte> w2, Vector256<sbyte> w3, Vector256<float> scales, int* a)
    {
        Vector256<int> dots = (SignedProducts(m0, w0, a[0]) + SignedProducts(m1, w1, a[1])) + (SignedProducts(m2, w2, a[2]) + SignedProducts(m3, w3, a[3]))
            + ((SignedProducts(m0, w0, a[4]) + SignedProducts(m1, w1, a[5])) + (SignedProducts(m2, w2, a[6]) + SignedProducts(m3, w3, a[7])));
        return Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dots), scales * Vector256.Create(*(float*)(a + 9)), accumulator);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> SignedProducts(Vector256<byte> magnitudes, Vector256<sbyte> weights, int activations) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(magnitudes, Avx2.Sign(Vector256.Create(activations).AsSByte(), weights)), Vector256<short>.One);

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
