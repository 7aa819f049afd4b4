using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// A view of floats in native memory that never moves, as a plain value: a parallel work struct can hold it (a
/// <see cref="Span{T}"/> cannot be a field). Element access is unchecked in release builds — the plan that owns the
/// memory sizes every view when it is compiled — and <see cref="Slice"/> is checked.
/// </summary>
public readonly unsafe struct FloatBuffer
{
    private readonly float* _data;

    public FloatBuffer(float* data, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        _data = data;
        Length = length;
    }

    public int Length { get; }

    /// <summary>The first element.</summary>
    public float* Pointer => _data;

    public ref float this[int index]
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            Debug.Assert((uint)index < (uint)Length);
            return ref _data[index];
        }
    }

    public Span<float> Span => new(_data, Length);

    /// <summary>Elements [<paramref name="start"/>, <paramref name="start"/> + <paramref name="length"/>) as a span (checked).</summary>
    public Span<float> Slice(int start, int length)
    {
        if ((uint)start > (uint)Length || (uint)length > (uint)(Length - start))
            throw new ArgumentOutOfRangeException(nameof(length), $"[{start}, {start}+{length}) is outside a buffer of {Length}.");
        return new Span<float>(_data + start, length);
    }

    /// <summary>Elements [<paramref name="start"/>, <paramref name="start"/> + <paramref name="length"/>) as a buffer of their own (checked).</summary>
    public FloatBuffer View(int start, int length)
    {
        if ((uint)start > (uint)Length || (uint)length > (uint)(Length - start))
            throw new ArgumentOutOfRangeException(nameof(length), $"[{start}, {start}+{length}) is outside a buffer of {Length}.");
        return new FloatBuffer(_data + start, length);
    }

    /// <summary>Sixteen consecutive elements from <paramref name="index"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector512<float> Load16(int index)
    {
        Debug.Assert((uint)index <= (uint)(Length - 16));
        return Vector512.Load(_data + index);
    }

    /// <summary>Eight consecutive elements from <paramref name="index"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector256<float> Load8(int index)
    {
        Debug.Assert((uint)index <= (uint)(Length - 8));
        return Vector256.Load(_data + index);
    }

    /// <summary>Stores sixteen consecutive elements from <paramref name="index"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store16(int index, Vector512<float> value)
    {
        Debug.Assert((uint)index <= (uint)(Length - 16));
        value.Store(_data + index);
    }

    /// <summary>Stores eight consecutive elements from <paramref name="index"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store8(int index, Vector256<float> value)
    {
        Debug.Assert((uint)index <= (uint)(Length - 8));
        value.Store(_data + index);
    }

    /// <summary>
    /// Asks for the cache line of element <paramref name="index"/> ahead of its use (a hint: an index past the end is
    /// harmless, as a prefetch never faults).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Prefetch(int index)
    {
        if (Sse.IsSupported) Sse.Prefetch0(_data + index);
    }

    /// <summary>Four consecutive elements from <paramref name="index"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector128<float> Load4(int index)
    {
        Debug.Assert((uint)index <= (uint)(Length - 4));
        return Vector128.Load(_data + index);
    }

    /// <summary>Stores four consecutive elements from <paramref name="index"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store4(int index, Vector128<float> value)
    {
        Debug.Assert((uint)index <= (uint)(Length - 4));
        value.Store(_data + index);
    }
}

/// <summary>
/// One block of zeroed, 64-byte aligned native memory that a compiled plan owns (its arena, scratch or packed
/// weights): it never moves, so kernels on every thread may hold pointers into it. Freed by <see cref="Dispose"/>
/// or, failing that, by the finalizer.
/// </summary>
public sealed unsafe class NativeBlock : IDisposable
{
    private void* _data;

    /// <summary>Allocates <paramref name="bytes"/> bytes (at least one), zeroed.</summary>
    public NativeBlock(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        Bytes = Math.Max(bytes, 64);
        _data = NativeMemory.AlignedAlloc((nuint)Bytes, 64);
        NativeMemory.Clear(_data, (nuint)Bytes);
        GC.AddMemoryPressure(Bytes);
    }

    public long Bytes { get; }

    /// <summary>The first byte; throws once disposed.</summary>
    public byte* Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(_data is null, this);
            return (byte*)_data;
        }
    }

    /// <summary><paramref name="count"/> floats from byte <paramref name="byteOffset"/> (a multiple of 4).</summary>
    public FloatBuffer Floats(long byteOffset, int count)
    {
        if (byteOffset < 0 || byteOffset % sizeof(float) != 0 || count < 0 || byteOffset + (long)count * sizeof(float) > Bytes)
            throw new ArgumentOutOfRangeException(nameof(count), $"{count} floats at byte {byteOffset} do not fit a block of {Bytes} bytes.");
        return new FloatBuffer((float*)(Pointer + byteOffset), count);
    }

    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    ~NativeBlock() => Free();

    private void Free()
    {
        void* data = _data;
        if (data is null) return;
        _data = null;
        NativeMemory.AlignedFree(data);
        GC.RemoveMemoryPressure(Bytes);
    }
}
