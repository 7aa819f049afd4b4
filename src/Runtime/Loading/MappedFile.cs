using System.IO.MemoryMappedFiles;

namespace Kiln.Loading;

/// <summary>
/// A whole file mapped read-only into memory, addressed by 64-bit offsets. Tensor bytes are handed out as spans
/// over the mapping, so weights are paged in by the OS on first touch and never copied by the loader.
/// </summary>
internal sealed unsafe class MappedFile : IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private byte* _start;
    private bool _disposed;

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

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_view is not null && _start != null)
        {
            _start = null;
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
        }
        _view?.Dispose();
        _map?.Dispose();
    }
}
