using System.Globalization;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace Kiln.Tokenization;

/// <summary>
/// BERT's uncased WordPiece tokenization (all-MiniLM-L6-v2, bert-base-uncased): BERT's basic tokenization here — text
/// cleaned (controls dropped, whitespace unified), every CJK ideograph a word of its own, words lower-cased with accents
/// stripped (NFD, non-spacing marks removed) and split at punctuation, the special tokens ([CLS], [SEP], …) kept whole
/// — then Microsoft.ML.Tokenizers' <see cref="BertTokenizer"/> for the greedy longest-match WordPiece with "##"
/// continuations (a word it cannot spell is one [UNK]); [CLS] first and [SEP] last, the words between cut to fit a
/// sequence limit as Hugging Face truncates.
/// <para>
/// Why not BertTokenizer's own basic tokenization: it judges text one UTF-16 unit at a time and drops symbols (category
/// So: ©, °, ™, ☃) and every character outside the BMP (emoji), where BERT, judging code points, keeps them as letters of
/// their word.
/// </para>
/// </summary>
public sealed class BertWordPiece
{
    private static readonly string[] SpecialTokens = ["[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]"];

    private readonly BertTokenizer _tokenizer;

    private BertWordPiece(BertTokenizer tokenizer) => _tokenizer = tokenizer;

    /// <summary>The tokenizer of the vocabulary file <paramref name="vocabPath"/> (one token per line, its line number its id).</summary>
    public static BertWordPiece FromVocabulary(string vocabPath)
    {
        ArgumentNullException.ThrowIfNull(vocabPath);
        using var stream = File.OpenRead(vocabPath);
        return FromVocabulary(stream);
    }

    /// <inheritdoc cref="FromVocabulary(string)"/>
    public static BertWordPiece FromVocabulary(Stream vocabulary)
    {
        ArgumentNullException.ThrowIfNull(vocabulary);
        // Words arrive split and normalized (BasicTokens): the tokenizer only looks them up.
        var options = new BertOptions { ApplyBasicTokenization = false, LowerCaseBeforeTokenization = false, SplitOnSpecialTokens = true };
        return new BertWordPiece(BertTokenizer.Create(vocabulary, options));
    }

    /// <summary>The underlying Microsoft.ML.Tokenizers tokenizer (WordPiece over words already split).</summary>
    public BertTokenizer Tokenizer => _tokenizer;

    public int ClassificationTokenId => _tokenizer.ClassificationTokenId;

    public int SeparatorTokenId => _tokenizer.SeparatorTokenId;

    /// <summary>
    /// [CLS], the text's WordPiece ids, [SEP]: at most <paramref name="maxTokens"/> (at least 2) ids, the text's own cut
    /// from the end to fit, as Hugging Face truncates a single sequence.
    /// </summary>
    public int[] Encode(string text, int maxTokens)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens, 2);
        var words = _tokenizer.EncodeToIds(BasicTokens(text), addSpecialTokens: false);
        int kept = Math.Min(words.Count, maxTokens - 2);
        var ids = new int[kept + 2];
        ids[0] = _tokenizer.ClassificationTokenId;
        for (int i = 0; i < kept; i++) ids[i + 1] = words[i];
        ids[^1] = _tokenizer.SeparatorTokenId;
        return ids;
    }

    /// <summary>BERT's basic tokenization (uncased): the words WordPiece will spell, separated by single spaces.</summary>
    public static string BasicTokens(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var result = new StringBuilder(text.Length + 16);
        var word = new StringBuilder();
        for (int i = 0; i < text.Length;)
        {
            if (text[i] == '[' && SpecialAt(text, i) is { } special)
            {
                Flush(word, result);
                Append(result, special);
                i += special.Length;
                continue;
            }
            int codePoint = CodePointAt(text, i, out int length);
            i += length;
            if (codePoint is 0 or 0xFFFD) continue;
            if (IsWhitespace(codePoint)) { Flush(word, result); continue; }
            if (IsControl(codePoint)) continue;
            if (IsCjk(codePoint))
            {
                Flush(word, result);
                Append(result, char.ConvertFromUtf32(codePoint));
                continue;
            }
            word.Append(char.ConvertFromUtf32(codePoint));
        }
        Flush(word, result);
        return result.ToString();
    }

    /// <summary>A whitespace-delimited word: lower-cased, accents stripped, split at each punctuation character.</summary>
    private static void Flush(StringBuilder word, StringBuilder result)
    {
        if (word.Length == 0) return;
        string normalized = word.ToString().ToLowerInvariant().Normalize(NormalizationForm.FormD);
        word.Clear();
        var piece = new StringBuilder();
        for (int i = 0; i < normalized.Length;)
        {
            int codePoint = CodePointAt(normalized, i, out int length);
            string character = normalized.Substring(i, length);
            i += length;
            if (CharUnicodeInfo.GetUnicodeCategory(codePoint) == UnicodeCategory.NonSpacingMark) continue;
            if (IsPunctuation(codePoint))
            {
                if (piece.Length > 0) Append(result, piece.ToString());
                piece.Clear();
                Append(result, character);
            }
            else piece.Append(character);
        }
        if (piece.Length > 0) Append(result, piece.ToString());
    }

    /// <summary>The code point at <paramref name="index"/> (a surrogate pair read whole, a lone half as U+FFFD) and its length in chars.</summary>
    private static int CodePointAt(string text, int index, out int length)
    {
        char c = text[index];
        if (char.IsHighSurrogate(c) && index + 1 < text.Length && char.IsLowSurrogate(text[index + 1]))
        {
            length = 2;
            return char.ConvertToUtf32(c, text[index + 1]);
        }
        length = 1;
        return char.IsSurrogate(c) ? 0xFFFD : c;
    }

    private static void Append(StringBuilder result, string token)
    {
        if (result.Length > 0) result.Append(' ');
        result.Append(token);
    }

    private static string? SpecialAt(string text, int at)
    {
        foreach (var special in SpecialTokens)
            if (string.CompareOrdinal(text, at, special, 0, special.Length) == 0) return special;
        return null;
    }

    private static bool IsWhitespace(int c) =>
        c is ' ' or '\t' or '\n' or '\r' || CharUnicodeInfo.GetUnicodeCategory(c) == UnicodeCategory.SpaceSeparator;

    private static bool IsControl(int c) => CharUnicodeInfo.GetUnicodeCategory(c) is UnicodeCategory.Control or UnicodeCategory.Format
        or UnicodeCategory.PrivateUse or UnicodeCategory.Surrogate or UnicodeCategory.OtherNotAssigned;

    /// <summary>ASCII symbols count as punctuation (as BERT counts them), and every character of a Unicode punctuation category.</summary>
    private static bool IsPunctuation(int c) =>
        c is >= 33 and <= 47 or >= 58 and <= 64 or >= 91 and <= 96 or >= 123 and <= 126
        || CharUnicodeInfo.GetUnicodeCategory(c) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;

    /// <summary>The CJK Unified Ideographs blocks BERT splits one character at a time (not kana, not hangul).</summary>
    private static bool IsCjk(int c) =>
        c is >= 0x4E00 and <= 0x9FFF or >= 0x3400 and <= 0x4DBF or >= 0x20000 and <= 0x2A6DF or >= 0x2A700 and <= 0x2B73F
            or >= 0x2B740 and <= 0x2B81F or >= 0x2B820 and <= 0x2CEAF or >= 0xF900 and <= 0xFAFF or >= 0x2F800 and <= 0x2FA1F;
}
