using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace Kiln.Loading;

/// <summary>
/// A whole file mapped read-only into memory, addressed by 64-bit offsets. Tensor bytes are handed out as spans
/// over the mapping, so weights are paged in by the OS on first touch and never copied by the loader.
/// <para>
/// Tensors bound from the file (<see cref="StoredTensor"/>) hold the mapping too (<see cref="Lend"/>): once one has,
/// disposing the file only stops new reads through it, and the mapping goes when the last of them is collected
/// (the finalizer). <see cref="ReleasePages"/> drops a range's resident pages (they come back on the next touch),
/// so weights a plan has packed stop counting in the process's memory.
/// </para>
/// </summary>
internal sealed unsafe class MappedFile : IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private byte* _start;
    private bool _disposed, _lent, _unmapped;

    private MappedFile(MemoryMappedFile? map, MemoryMappedViewAccessor? view, byte* start, long length)
    {
        _map = map;
        _view = view;
        _start = start;
        Length = length;
    }

    public long Length { get; }

    /// <summary>Maps <paramref name="path"/>; a missing or unreadable file is a <see cref="ModelLoadException"/>.</summary>
    public static MappedFile Open(string path)
    {
        var stream = OpenRead(path);
        long length = stream.Length;
        if (length == 0)
        {
            // A zero-length file cannot be mapped; an empty span describes it just as well.
            stream.Dispose();
            return new MappedFile(null, null, null, 0);
        }

        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            map = MemoryMappedFile.CreateFromFile(stream, mapName: null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            view = map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            byte* start = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref start);
            return new MappedFile(map, view, start + view.PointerOffset, length);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            view?.Dispose();
            map?.Dispose();
            stream.Dispose();
            throw new ModelLoadException(path, "file", null, $"cannot map the file into memory: {e.Message}", e);
        }
    }

    /// <summary>Opens <paramref name="path"/> for reading; a missing or unreadable file is a <see cref="ModelLoadException"/>.</summary>
    public static FileStream OpenRead(string path)
    {
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            string problem = e is FileNotFoundException or DirectoryNotFoundException ? "the file does not exist." : $"cannot open the file: {e.Message}";
            throw new ModelLoadException(path, "file", null, problem, e);
        }
    }

    /// <summary>The first byte of the mapping; valid until <see cref="Dispose"/>.</summary>
    public byte* Start
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _start;
        }
    }

    /// <summary>
    /// Marks the mapping as held by tensors: from now on it outlives <see cref="Dispose"/>, until nothing refers to it.
    /// Returns the first byte.
    /// </summary>
    public byte* Lend()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _lent = true;
        return _start;
    }

    /// <summary>
    /// Drops the resident pages of bytes [<paramref name="offset"/>, +<paramref name="length"/>) from this process
    /// (Linux: madvise MADV_DONTNEED on the read-only mapping; the bytes stay valid and are read again from the page
    /// cache or the file on the next touch). Elsewhere, or when the call fails, the pages simply stay.
    /// </summary>
    public void ReleasePages(long offset, long length)
    {
        if (_unmapped || _start == null || length <= 0 || !PageAdvice.Available) return;
        long page = Environment.SystemPageSize;
        long first = (offset & ~(page - 1)), end = Math.Min(Length, (offset + length + page - 1) & ~(page - 1));
        if (end > first) PageAdvice.DontNeed(_start + first, (nuint)(end - first));
    }

    /// <summary>Bytes [offset, offset + length) of the file; the caller has checked the range.</summary>
    public ReadOnlySpan<byte> Slice(long offset, int length)
    {
        if ((ulong)offset > (ulong)Length || (ulong)length > (ulong)(Length - offset))
            throw new ArgumentOutOfRangeException(nameof(offset), $"Bytes [{offset}, {offset + length}) lie outside the {Length}-byte file.");
        return new ReadOnlySpan<byte>(Start + offset, length);
    }

    /// <summary>A tensor's stored bytes; <paramref name="path"/> names the file in the error for one too large for a span.</summary>
    public ReadOnlySpan<byte> TensorBytes(string path, TensorInfo tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensor.ByteLength > Array.MaxLength)
            throw new ModelLoadException(path, $"tensor '{tensor.Name}'", tensor.Offset,
                $"its {tensor.ByteLength} bytes exceed what one span can address.");
        return Slice(tensor.Offset, (int)tensor.ByteLength);
    }

    /// <summary>Closes the file for reads through it; the mapping itself goes now, or — when tensors hold it — once they are collected.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_lent) return; // the finalizer unmaps once no tensor refers to the mapping
        Unmap();
        GC.SuppressFinalize(this);
    }

    ~MappedFile() => Unmap();

    private void Unmap()
    {
        if (_unmapped) return;
        _unmapped = true;
        if (_view is not null && _start != null)
        {
            _start = null;
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
        }
        _view?.Dispose();
        _map?.Dispose();
    }

    /// <summary>madvise(MADV_DONTNEED) from the C library, found once; absent off Linux.</summary>
    private static class PageAdvice
    {
        private const int DontNeedAdvice = 4; // MADV_DONTNEED on Linux
        private static readonly delegate* unmanaged<void*, nuint, int, int> Madvise = Find();

        public static bool Available => Madvise != null;

        public static void DontNeed(void* start, nuint length) => Madvise(start, length, DontNeedAdvice);

        private static delegate* unmanaged<void*, nuint, int, int> Find()
        {
            if (!OperatingSystem.IsLinux()) return null;
            foreach (string name in new[] { "libc.so.6", "libc" })
                if (NativeLibrary.TryLoad(name, out nint library) && NativeLibrary.TryGetExport(library, "madvise", out nint export))
                    return (delegate* unmanaged<void*, nuint, int, int>)export;
            return null;
        }
    }
}
