using System.Text;

namespace Kiln.Tokenization;

/// <summary>
/// Turns token ids into text one at a time, as they are generated (see <see cref="KilnTokenizer.Decode"/>).
/// A character can arrive split over several tokens: SentencePiece &lt;0xNN&gt; byte tokens, or byte-level pieces
/// that end inside a character's UTF-8 bytes. Its text comes out with the token that completes it, and the tokens
/// before that return only what they finished. Ordinary tokens return the tokenizer's cached strings, so the
/// common path allocates nothing. One decoder per output stream; not thread-safe.
/// </summary>
public sealed class TokenTextDecoder
{
    private static readonly string[] AsciiText = CreateAsciiText();

    private readonly KilnTokenizer _tokenizer;

    // Holds the bytes of an unfinished UTF-8 sequence between calls; invalid bytes become U+FFFD.
    private readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();

    // A piece's bytes and at most three pending ones yield at most one char per byte.
    private readonly char[] _chars;

    private int _previousId;

    /// <param name="tokenizer">The vocabulary the ids come from.</param>
    /// <param name="previousId">The token shown just before the first one appended, or -1 for none.</param>
    public TokenTextDecoder(KilnTokenizer tokenizer, int previousId = -1)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
        _previousId = previousId;
        _chars = new char[tokenizer.MaxPieceBytes + 4];
    }

    /// <summary>The text that <paramref name="id"/> adds to the output; "" when it adds nothing yet.</summary>
    public string Append(int id)
    {
        byte[]? bytes = _tokenizer.PieceBytesOf(id);
        bool followsBos = _previousId == _tokenizer.BosId;
        _previousId = id;

        if (bytes is not null) return CharsToText(_utf8.GetChars(bytes, _chars, flush: false));

        string text = _tokenizer.DisplayTextOf(id);
        // SentencePiece puts a dummy space before the first word; run.c drops it from the piece after BOS.
        if (followsBos && _tokenizer.DropsSpaceAfterBos && text.StartsWith(' ')) text = text[1..];

        // Any other token ends a byte sequence, finished or not.
        string unfinished = Flush();
        return unfinished.Length == 0 ? text : unfinished + text;
    }

    /// <summary>
    /// Ends the output: bytes of a character that never completed come back as U+FFFD. Call it after the last
    /// token; the decoder then starts afresh at the next byte.
    /// </summary>
    public string Flush() => CharsToText(_utf8.GetChars(ReadOnlySpan<byte>.Empty, _chars, flush: true));

    /// <summary>Forgets any unfinished character, ready for a new sequence that follows <paramref name="previousId"/>.</summary>
    public void Reset(int previousId = -1)
    {
        _utf8.Reset();
        _previousId = previousId;
    }

    private string CharsToText(int count) => count switch
    {
        0 => "",
        1 when _chars[0] < AsciiText.Length => AsciiText[_chars[0]],
        _ => new string(_chars, 0, count),
    };

    private static string[] CreateAsciiText()
    {
        var text = new string[128];
        for (int c = 0; c < text.Length; c++) text[c] = ((char)c).ToString();
        return text;
    }
}
