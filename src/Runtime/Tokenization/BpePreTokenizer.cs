using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Kiln.Tokenization;

/// <summary>
/// The word splitting a byte-level BPE vocabulary was trained with, named by GGUF's tokenizer.ggml.pre. The
/// regular expressions are llama.cpp's (src/llama-vocab.cpp) and are applied its way: each stage splits every
/// piece the stage before left, and the text between matches stays a piece of its own, so nothing is dropped.
/// Merges never cross a piece boundary.
/// </summary>
internal sealed partial class BpePreTokenizer
{
    // Verbatim from llama.cpp, whose \s and \S agree with .NET's (U+001C..U+001F, U+0085, U+200B: Kiln.PeerTests).
    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

    // Llama 3's pattern with (?i:...) spelled out, as llama.cpp adapts it; Qwen2 differs only in taking digits one at a time.
    private const string Llama3Pattern =
        @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private const string Qwen2Pattern =
        @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private const string PunctuationRunPattern = @"[\p{P}\$\+<=>\^~\|]+";
    private const string NumberPattern = @"\p{N}+";
    private const string ThreeDigitsPattern = "[0-9][0-9][0-9]";

    // .NET's regular expressions see a character beyond U+FFFF as two surrogates of no category; llama.cpp sees one
    // code point of its own category. Such a character is matched as one stand-in of its class, so that \p{L},
    // \p{N}, \p{P} and counts like \p{N}{1,3} work on code points there too.
    private const char LetterStandIn = '\u00AA';      // ª, Lo
    private const char NumberStandIn = '\u0660';      // Arabic-Indic zero, Nd, outside [0-9]
    private const char PunctuationStandIn = '\u00A1'; // ¡, Po
    private const char OtherStandIn = '\u00A9';       // ©, So: symbols, marks, private use

    private readonly Regex[] _stages;

    private BpePreTokenizer(Regex[] stages, bool ignoresMerges, bool addsBos)
    {
        _stages = stages;
        IgnoresMerges = ignoresMerges;
        AddsBos = addsBos;
    }

    /// <summary>What llama.cpp assumes when a file names no pre-tokenizer (it warns that quality may suffer).</summary>
    public const string DefaultName = "default";

    /// <summary>The tokenizer.ggml.pre values Kiln knows, in the order an error message lists them.</summary>
    public static IReadOnlyList<string> KnownNames { get; } =
        ["gpt-2", "qwen2", "llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", DefaultName];

    /// <summary>
    /// Whether a piece that is itself a vocabulary entry becomes that token without merging (llama.cpp's
    /// ignore_merges, set for Llama 3, whose merges do not reach every entry).
    /// </summary>
    public bool IgnoresMerges { get; }

    /// <summary>Whether the model wants BOS when tokenizer.ggml.add_bos_token does not say (llama.cpp: Llama 3 does).</summary>
    public bool AddsBos { get; }

    public static bool TryGet(string name, [NotNullWhen(true)] out BpePreTokenizer? preTokenizer)
    {
        preTokenizer = name switch
        {
            "gpt-2" => new([Gpt2Words()], ignoresMerges: false, addsBos: false),
            "qwen2" => new([Qwen2Words()], ignoresMerges: false, addsBos: false),
            "llama-bpe" or "llama3" or "llama-v3" => new([Llama3Words()], ignoresMerges: true, addsBos: true),
            "smaug-bpe" or "dbrx" => new([Llama3Words()], ignoresMerges: false, addsBos: false),
            DefaultName => new([PunctuationRuns(), Gpt2Words(), Numbers(), ThreeDigits()], ignoresMerges: false, addsBos: false),
            _ => null,
        };
        return preTokenizer is not null;
    }

    /// <summary>Replaces <paramref name="pieces"/> with the pieces of <paramref name="text"/>, in order.</summary>
    public void Split(ReadOnlySpan<char> text, List<Range> pieces)
    {
        if (!text.ContainsAnyInRange('\uD800', '\uDFFF'))
        {
            SplitCodePoints(text, pieces);
            return;
        }

        // One stand-in per code point, and where each code point starts in the text (plus the text's end).
        var standIns = new char[text.Length];
        var starts = new int[text.Length + 1];
        int count = 0;
        for (int i = 0; i < text.Length; count++)
        {
            starts[count] = i;
            if (Rune.DecodeFromUtf16(text[i..], out Rune rune, out int used) == OperationStatus.Done && used == 2)
                standIns[count] = StandInFor(Rune.GetUnicodeCategory(rune));
            else
                standIns[count] = text[i]; // a character of the BMP, or a lone surrogate, which no UTF-8 can hold anyway
            i += used;
        }
        starts[count] = text.Length;

        SplitCodePoints(standIns.AsSpan(0, count), pieces);
        for (int p = 0; p < pieces.Count; p++)
        {
            (int start, int length) = pieces[p].GetOffsetAndLength(count);
            pieces[p] = starts[start]..starts[start + length];
        }
    }

    private void SplitCodePoints(ReadOnlySpan<char> text, List<Range> pieces)
    {
        pieces.Clear();
        if (text.IsEmpty) return;
        pieces.Add(0..text.Length);
        var refined = new List<Range>();
        foreach (Regex stage in _stages)
        {
            refined.Clear();
            foreach (Range piece in pieces)
            {
                (int start, int length) = piece.GetOffsetAndLength(text.Length);
                int end = start;
                // The slice is the regex's whole input, so look-arounds stop at the piece's edges, as in llama.cpp.
                foreach (ValueMatch match in stage.EnumerateMatches(text.Slice(start, length)))
                {
                    if (match.Length == 0) continue;
                    int matchStart = start + match.Index;
                    if (matchStart > end) refined.Add(end..matchStart);
                    end = matchStart + match.Length;
                    refined.Add(matchStart..end);
                }
                if (end < start + length) refined.Add(end..(start + length));
            }
            pieces.Clear();
            pieces.AddRange(refined);
        }
    }

    private static char StandInFor(UnicodeCategory category) => category switch
    {
        UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
            or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => LetterStandIn,
        UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => NumberStandIn,
        UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation or UnicodeCategory.OpenPunctuation
            or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation => PunctuationStandIn,
        _ => OtherStandIn,
    };

    [GeneratedRegex(Gpt2Pattern, RegexOptions.ExplicitCapture | RegexOptions.CultureInvariant)]
    private static partial Regex Gpt2Words();

    [GeneratedRegex(Llama3Pattern, RegexOptions.ExplicitCapture | RegexOptions.CultureInvariant)]
    private static partial Regex Llama3Words();

    [GeneratedRegex(Qwen2Pattern, RegexOptions.ExplicitCapture | RegexOptions.CultureInvariant)]
    private static partial Regex Qwen2Words();

    [GeneratedRegex(PunctuationRunPattern, RegexOptions.ExplicitCapture | RegexOptions.CultureInvariant)]
    private static partial Regex PunctuationRuns();

    [GeneratedRegex(NumberPattern, RegexOptions.ExplicitCapture | RegexOptions.CultureInvariant)]
    private static partial Regex Numbers();

    [GeneratedRegex(ThreeDigitsPattern, RegexOptions.ExplicitCapture | RegexOptions.CultureInvariant)]
    private static partial Regex ThreeDigits();
}
