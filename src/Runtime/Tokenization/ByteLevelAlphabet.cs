using System.Text;

namespace Kiln.Tokenization;

/// <summary>
/// GPT-2's byte-to-character table, in which byte-level BPE vocabularies (GGUF tokenizer.ggml.model "gpt2": GPT-2,
/// Qwen, Llama 3...) spell their tokens: each of the 256 byte values is one printable character, so a token is a
/// string whatever bytes it holds. Printable Latin-1 bytes stand for themselves; the other 68 (controls, space,
/// DEL, NBSP, soft hyphen) take U+0100 onwards in byte order, which is why a space shows as 'Ġ' (U+0120).
/// </summary>
public static class ByteLevelAlphabet
{
    private const char FirstStandIn = '\u0100';
    private const int NotInAlphabet = -1;

    private static readonly char[] CharOfByte = CreateCharOfByte();
    private static readonly short[] ByteOfChar = CreateByteOfChar();

    /// <summary>The character that spells <paramref name="value"/>.</summary>
    public static char ToChar(byte value) => CharOfByte[value];

    /// <summary>The byte that <paramref name="c"/> spells, when it is one of the 256 characters of the alphabet.</summary>
    public static bool TryGetByte(char c, out byte value)
    {
        int found = c < ByteOfChar.Length ? ByteOfChar[c] : NotInAlphabet;
        value = (byte)found;
        return found != NotInAlphabet;
    }

    /// <summary>The token spelling of <paramref name="bytes"/>: one character per byte.</summary>
    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        return string.Create(bytes.Length, bytes, static (chars, source) =>
        {
            for (int i = 0; i < chars.Length; i++) chars[i] = CharOfByte[source[i]];
        });
    }

    /// <summary>The token spelling of <paramref name="text"/>'s UTF-8 bytes.</summary>
    public static string Encode(ReadOnlySpan<char> text)
    {
        int length = Encoding.UTF8.GetByteCount(text);
        byte[] bytes = new byte[length];
        Encoding.UTF8.GetBytes(text, bytes);
        return Encode(bytes);
    }

    /// <summary>
    /// The bytes a token spells, or false (with the index of the first stranger) when a character lies outside
    /// the alphabet.
    /// </summary>
    public static bool TryDecode(ReadOnlySpan<char> token, out byte[] bytes, out int badIndex)
    {
        bytes = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
        {
            if (!TryGetByte(token[i], out bytes[i]))
            {
                badIndex = i;
                return false;
            }
        }
        badIndex = -1;
        return true;
    }

    private static bool StandsForItself(int value) =>
        value is >= '!' and <= '~' or >= '\u00A1' and <= '\u00AC' or >= '\u00AE' and <= '\u00FF';

    private static char[] CreateCharOfByte()
    {
        var chars = new char[256];
        char next = FirstStandIn;
        for (int value = 0; value < chars.Length; value++) chars[value] = StandsForItself(value) ? (char)value : next++;
        return chars;
    }

    private static short[] CreateByteOfChar()
    {
        // The 68 stand-ins end at U+0143, so the reverse table stays small.
        var bytes = new short[FirstStandIn + 68];
        Array.Fill(bytes, (short)NotInAlphabet);
        for (int value = 0; value < 256; value++) bytes[CharOfByte[value]] = (short)value;
        return bytes;
    }
}
