using System.Text;

namespace Kiln.Tokenization;

/// <summary>
/// Turns token ids into text one at a time, as they are generated, decoding like llama2.c's run.c (see
/// <see cref="KilnTokenizer.Decode"/>). A character the vocabulary lacks arrives as several &lt;0xNN&gt; byte
/// tokens; its text comes out with the token that completes it, and the tokens before that return "".
/// Ordinary tokens return the tokenizer's cached strings, so the common path allocates nothing.
/// One decoder per output stream; not thread-safe.
/// </summary>
public sealed class TokenTextDecoder
{
    private static readonly string[] AsciiText = CreateAsciiText();

    private readonly KilnTokenizer _tokenizer;

    // Holds the bytes of an unfinished UTF-8 sequence between calls; invalid bytes become U+FFFD.
    private readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();

    // One byte, or a flush of at most three pending bytes, yields only a few chars.
    private readonly char[] _chars = new char[8];

    private int _previousId;

    /// <param name="tokenizer">The vocabulary the ids come from.</param>
    /// <param name="previousId">The token shown just before the first one appended, or -1 for none.</param>
    public TokenTextDecoder(KilnTokenizer tokenizer, int previousId = -1)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
        _previousId = previousId;
    }

    /// <summary>The text that <paramref name="id"/> adds to the output; "" when it adds nothing yet.</summary>
    public string Append(int id)
    {
        int byteValue = _tokenizer.ByteValueOf(id);
        bool followsBos = _previousId == _tokenizer.BosId;
        _previousId = id;

        if (byteValue >= 0)
        {
            byte value = (byte)byteValue;
            return CharsToText(_utf8.GetChars(new ReadOnlySpan<byte>(in value), _chars, flush: false));
        }

        string text = _tokenizer.DisplayTextOf(id);
        // SentencePiece puts a dummy space before the first word; run.c drops it from the piece after BOS.
        if (followsBos && text.StartsWith(' ')) text = text[1..];

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
