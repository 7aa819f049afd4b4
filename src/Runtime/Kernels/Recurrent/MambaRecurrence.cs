using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Kiln.Kernels.MatMul;
using Kiln.Kernels.Quantized;
using Kiln.Threading;

namespace Kiln.Kernels.Recurrent;

/// <summary>How Mamba's recurrences split a step into work items: channels are independent in both ops.</summary>
public static class MambaWork
{
    /// <summary>Channels per work item: a block's state stays on the stack (16 × d_state floats for the scan).</summary>
    public const int ChannelsPerItem = 16;

    /// <summary>Work items for <paramref name="sequences"/> sequences of <paramref name="channels"/> channels: one per (sequence, block of channels).</summary>
    public static int Items(int sequences, int channels) => sequences * BlocksOf(channels);

    internal static int BlocksOf(int channels) => (channels + ChannelsPerItem - 1) / ChannelsPerItem;
}

/// <summary>
/// <see cref="Ops.CausalConv1d"/> as a parallel work struct over a packed step: one item per (sequence, block of
/// <see cref="MambaWork.ChannelsPerItem"/> channels), each running the sequence's tokens in order from the block's
/// carried inputs in the sequence's state slot, and writing the last K − 1 inputs back. Sequences of different
/// lengths cost what their tokens cost; none is padded to another.
/// </summary>
public unsafe struct CausalConvolution : IParallelWork
{
    /// <summary>[T, channels] input and output.</summary>
    public FloatBuffer Input, Output;

    /// <summary>[channels, K]: each channel's kernel, oldest input first.</summary>
    public float[] Weight;

    public int Channels, Width;
    public AttentionContext Context;

    /// <summary>The layer's <see cref="Ops.ConvState"/> tensor in the context's state ([channels, K − 1]).</summary>
    public int StateTensor;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end)
    {
        int channels = Channels, width = Width, taps = width - 1, blocks = MambaWork.BlocksOf(channels);
        Span<float> carried = stackalloc float[MambaWork.ChannelsPerItem * taps];
        Span<float> window = stackalloc float[width];
        var starts = Context.QueryIndptr;
        for (int item = start; item < end; item++)
        {
            int s = item / blocks, c0 = item % blocks * MambaWork.ChannelsPerItem, count = Math.Min(MambaWork.ChannelsPerItem, channels - c0);
            int first = starts[s], length = starts[s + 1] - first, slot = Context.StateSlot(s);
            var block = carried[..(count * taps)];
            if (Context.Positions[first] == 0) block.Clear();
            else Context.State.ReadRange(StateTensor, slot, c0 * taps, block);
            for (int c = c0; c < c0 + count; c++)
            {
                var kernel = Weight.AsSpan(c * width, width);
                // The window slides over the channel's inputs: the carried taps, then the step's tokens.
                block.Slice((c - c0) * taps, taps).CopyTo(window);
                for (int t = 0; t < length; t++)
                {
                    float* row = Input.Pointer + (long)(first + t) * channels;
                    window[taps] = row[c];
                    float sum = 0;
                    for (int k = 0; k < width; k++) sum += kernel[k] * window[k];
                    Output.Pointer[(long)(first + t) * channels + c] = sum;
                    window[1..].CopyTo(window);
                }
                window[..taps].CopyTo(block.Slice((c - c0) * taps, taps));
            }
            Context.State.WriteRange(StateTensor, slot, c0 * taps, block);
        }
    }
}

/// <summary>
/// <see cref="Ops.SelectiveScan"/> as a parallel work struct over a packed step: one item per (sequence, block of
/// <see cref="MambaWork.ChannelsPerItem"/> channels), each carrying its channels' d_state-wide h through the
/// sequence's tokens in order from its state slot. The per-token update over the state index (exp, decay, input,
/// readout) runs on the active kernel path's vectors.
/// </summary>
public unsafe struct SelectiveScanRecurrence : IParallelWork
{
    /// <summary>[T, channels]: the input, the time step before softplus, the gate, and the output.</summary>
    public FloatBuffer X, Dt, Z, Output;

    /// <summary>[T, N]: each token's input matrix and readout.</summary>
    public FloatBuffer B, C;

    /// <summary>A, [channels, N] (negative); D, [channels].</summary>
    public float[] A, D;

    public int Channels, StateSize;
    public AttentionContext Context;

    /// <summary>The layer's <see cref="Ops.ScanState"/> tensor in the context's state ([channels, N]).</summary>
    public int StateTensor;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end)
    {
        int channels = Channels, n = StateSize, blocks = MambaWork.BlocksOf(channels);
        Span<float> h = stackalloc float[MambaWork.ChannelsPerItem * n];
        var starts = Context.QueryIndptr;
        for (int item = start; item < end; item++)
        {
            int s = item / blocks, c0 = item % blocks * MambaWork.ChannelsPerItem, count = Math.Min(MambaWork.ChannelsPerItem, channels - c0);
            int first = starts[s], last = starts[s + 1], slot = Context.StateSlot(s);
            var block = h[..(count * n)];
            if (Context.Positions[first] == 0) block.Clear();
            else Context.State.ReadRange(StateTensor, slot, c0 * n, block);
            for (int t = first; t < last; t++)
            {
                long row = (long)t * channels;
                var b = new ReadOnlySpan<float>(B.Pointer + (long)t * n, n);
                var c = new ReadOnlySpan<float>(C.Pointer + (long)t * n, n);
                for (int ch = c0; ch < c0 + count; ch++)
                {
                    float raw = Dt.Pointer[row + ch], delta = raw > 20 ? raw : MathF.Log(1 + MathF.Exp(raw)), x = X.Pointer[row + ch];
                    float y = Step(block.Slice((ch - c0) * n, n), A.AsSpan(ch * n, n), b, c, delta, delta * x);
                    float gate = Z.Pointer[row + ch];
                    Output.Pointer[row + ch] = (y + D[ch] * x) * (gate / (1 + MathF.Exp(-gate)));
                }
            }
            Context.State.WriteRange(StateTensor, slot, c0 * n, block);
        }
    }

    /// <summary>One token of one channel: h ← exp(Δ·a)·h + b·(Δx), returning Σ c·h; on the active path.</summary>
    public static float Step(Span<float> h, ReadOnlySpan<float> a, ReadOnlySpan<float> b, ReadOnlySpan<float> c, float delta, float deltaX)
    {
        if (KernelPaths.Uses512Bits) return StepVector512(h, a, b, c, delta, deltaX);
        if (KernelPaths.UsesVectors) return StepVector256(h, a, b, c, delta, deltaX);
        return StepScalar(h, a, b, c, delta, deltaX);
    }

    public static float StepVector512(Span<float> h, ReadOnlySpan<float> a, ReadOnlySpan<float> b, ReadOnlySpan<float> c, float delta, float deltaX)
    {
        int n = h.Length, i = 0;
        ref float ph = ref MemoryMarshal.GetReference(h);
        ref float pa = ref MemoryMarshal.GetReference(a);
        ref float pb = ref MemoryMarshal.GetReference(b);
        ref float pc = ref MemoryMarshal.GetReference(c);
        var vDelta = Vector512.Create(delta);
        var vDeltaX = Vector512.Create(deltaX);
        var sum = Vector512<float>.Zero;
        for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
        {
            var next = Vector512.Exp(vDelta * Vector512.LoadUnsafe(ref pa, (nuint)i)) * Vector512.LoadUnsafe(ref ph, (nuint)i)
                + Vector512.LoadUnsafe(ref pb, (nuint)i) * vDeltaX;
            next.StoreUnsafe(ref ph, (nuint)i);
            sum += next * Vector512.LoadUnsafe(ref pc, (nuint)i);
        }
        return Vector512.Sum(sum) + StepScalar(h[i..], a[i..], b[i..], c[i..], delta, deltaX);
    }

    public static float StepVector256(Span<float> h, ReadOnlySpan<float> a, ReadOnlySpan<float> b, ReadOnlySpan<float> c, float delta, float deltaX)
    {
        int n = h.Length, i = 0;
        ref float ph = ref MemoryMarshal.GetReference(h);
        ref float pa = ref MemoryMarshal.GetReference(a);
        ref float pb = ref MemoryMarshal.GetReference(b);
        ref float pc = ref MemoryMarshal.GetReference(c);
        var vDelta = Vector256.Create(delta);
        var vDeltaX = Vector256.Create(deltaX);
        var sum = Vector256<float>.Zero;
        for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
        {
            var next = Vector256.Exp(vDelta * Vector256.LoadUnsafe(ref pa, (nuint)i)) * Vector256.LoadUnsafe(ref ph, (nuint)i)
                + Vector256.LoadUnsafe(ref pb, (nuint)i) * vDeltaX;
            next.StoreUnsafe(ref ph, (nuint)i);
            sum += next * Vector256.LoadUnsafe(ref pc, (nuint)i);
        }
        return Vector256.Sum(sum) + StepScalar(h[i..], a[i..], b[i..], c[i..], delta, deltaX);
    }

    public static float StepScalar(Span<float> h, ReadOnlySpan<float> a, ReadOnlySpan<float> b, ReadOnlySpan<float> c, float delta, float deltaX)
    {
        float sum = 0;
        for (int i = 0; i < h.Length; i++)
        {
            h[i] = MathF.Exp(delta * a[i]) * h[i] + b[i] * deltaX;
            sum += h[i] * c[i];
        }
        return sum;
    }
}
