using System.Text;
using Microsoft.ML.Tokenizers;

namespace Kiln.Tokenization;

/// <summary>
/// BERT's uncased WordPiece tokenization (all-MiniLM-L6-v2, bert-base-uncased) through Microsoft.ML.Tokenizers'
/// <see cref="BertTokenizer"/>: text cleaned, split on whitespace and punctuation, lower-cased with accents stripped (NFD,
/// non-spacing marks removed), every CJK ideograph a word of its own, then greedy longest-match WordPiece with "##"
/// continuations; [CLS] first and [SEP] last, the words between cut to fit a sequence limit as Hugging Face truncates.
/// <para>
/// One repair: BertTokenizer judges text one UTF-16 unit at a time, so it drops a character outside the BMP (an emoji,
/// whose halves are surrogates) where BERT, judging code points, keeps it as a letter of its word — and a word the
/// vocabulary cannot spell is [UNK]. Each such character is given to BertTokenizer as <see cref="AstralStandIn"/>, a
/// symbol of the same class that is not in the vocabulary either, so the word comes out as BERT's.
/// </para>
/// </summary>
public sealed class BertWordPiece
{
    /// <summary>U+2BD1, a BMP symbol (category So, like most emoji) that BERT vocabularies do not hold.</summary>
    public const char AstralStandIn = '\u2BD1';

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
        var options = new BertOptions
        {
            LowerCaseBeforeTokenization = true,
            RemoveNonSpacingMarks = true, // BERT strips accents whenever it lower-cases
            IndividuallyTokenizeCjk = true,
            ApplyBasicTokenization = true,
            SplitOnSpecialTokens = true,
        };
        return new BertWordPiece(BertTokenizer.Create(vocabulary, options));
    }

    /// <summary>The underlying Microsoft.ML.Tokenizers tokenizer.</summary>
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
        var words = _tokenizer.EncodeToIds(StandInForAstral(text), addSpecialTokens: false);
        int kept = Math.Min(words.Count, maxTokens - 2);
        var ids = new int[kept + 2];
        ids[0] = _tokenizer.ClassificationTokenId;
        for (int i = 0; i < kept; i++) ids[i + 1] = words[i];
        ids[^1] = _tokenizer.SeparatorTokenId;
        return ids;
    }

    /// <summary>The text with every character outside the BMP (a surrogate pair) replaced by <see cref="AstralStandIn"/>.</summary>
    internal static string StandInForAstral(string text)
    {
        int first = -1;
        for (int i = 0; i < text.Length && first < 0; i++) if (char.IsSurrogate(text[i])) first = i;
        if (first < 0) return text;
        var result = new StringBuilder(text.Length);
        result.Append(text, 0, first);
        for (int i = first; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                result.Append(AstralStandIn);
                i++;
            }
            else if (char.IsSurrogate(text[i])) result.Append('\uFFFD'); // a lone half: not a character; BERT's cleaning drops U+FFFD
            else result.Append(text[i]);
        }
        return result.ToString();
    }
}
