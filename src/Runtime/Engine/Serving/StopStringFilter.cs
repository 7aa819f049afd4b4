namespace Kiln.Engine.Serving;

/// <summary>
/// Streams text through while watching for stop strings: text that could still turn out to be the start of a stop
/// string is held back until the next piece decides it, so a caller never sees part of a stop string. Once one
/// appears, only the text before it comes out and <see cref="Stopped"/> is set.
/// </summary>
internal sealed class StopStringFilter
{
    private readonly string[] _stopStrings;
    private readonly int _longestStop;
    private char[] _pending = new char[32];
    private int _pendingLength;

    public StopStringFilter(IReadOnlyList<string> stopStrings)
    {
        _stopStrings = [.. stopStrings];
        foreach (string stop in _stopStrings) _longestStop = Math.Max(_longestStop, stop.Length);
    }

    public bool Stopped { get; private set; }

    /// <summary>Adds the next piece of output; returns the text now safe to show ("" while held back or after a stop).</summary>
    public string Push(string text)
    {
        if (Stopped || text.Length == 0) return "";
        bool nothingHeld = _pendingLength == 0;
        if (_pendingLength + text.Length > _pending.Length) Array.Resize(ref _pending, Math.Max(_pending.Length * 2, _pendingLength + text.Length));
        text.CopyTo(_pending.AsSpan(_pendingLength));
        _pendingLength += text.Length;
        var pending = _pending.AsSpan(0, _pendingLength);

        int stopAt = -1;
        foreach (string stop in _stopStrings)
        {
            int at = pending.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (stopAt < 0 || at < stopAt)) stopAt = at;
        }
        if (stopAt >= 0)
        {
            Stopped = true;
            _pendingLength = 0;
            return new string(pending[..stopAt]);
        }

        int held = LongestStopPrefixAtEnd(pending);
        int safe = pending.Length - held;
        // The common case, nothing held before or after, hands the piece through without copying it.
        string result = safe == 0 ? "" : nothingHeld && held == 0 ? text : new string(pending[..safe]);
        pending[safe..].CopyTo(_pending);
        _pendingLength = held;
        return result;
    }

    /// <summary>The output has ended: whatever was held back is shown after all.</summary>
    public string Flush()
    {
        if (Stopped || _pendingLength == 0) return "";
        string rest = new(_pending, 0, _pendingLength);
        _pendingLength = 0;
        return rest;
    }

    /// <summary>The length of the longest tail of <paramref name="text"/> that some stop string starts with (a stop string itself is never a tail here).</summary>
    private int LongestStopPrefixAtEnd(ReadOnlySpan<char> text)
    {
        for (int length = Math.Min(text.Length, _longestStop - 1); length > 0; length--)
        {
            var tail = text[^length..];
            foreach (string stop in _stopStrings)
            {
                if (stop.AsSpan().StartsWith(tail, StringComparison.Ordinal)) return length;
            }
        }
        return 0;
    }
}
