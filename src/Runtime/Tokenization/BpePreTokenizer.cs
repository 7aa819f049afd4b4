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
    // llama.cpp's whitespace is Python's str.isspace(), which counts the separators U+001C..U+001F that .NET's \s leaves out.
    private const string Space = @"\s\x1C-\x1F";

    private const string Gpt2Pattern =
        @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^" + Space + @"\p{L}\p{N}]+|[" + Space + @"]+(?![^" + Space + "])";

    // Llama 3's pattern with (?i:...) spelled out; Qwen2 differs only in taking digits one at a time.
    private const string Llama3Pattern =
        @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^" + Space + @"\p{L}\p{N}]+[\r\n]*|[" + Space + @"]*[\r\n]+|[" + Space + @"]+(?![^" + Space + @"])|[" + Space + "]+";

    private const string Qwen2Pattern =
        @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^" + Space + @"\p{L}\p{N}]+[\r\n]*|[" + Space + @"]*[\r\n]+|[" + Space + @"]+(?![^" + Space + @"])|[" + Space + "]+";

    private const string PunctuationRunPattern = @"[\p{P}\$\+<=>\^~\|]+";
    private const string NumberPattern = @"\p{N}+";
    private const string ThreeDigitsPattern = "[0-9][0-9][0-9]";

    private readonly Regex[] _stages;

    private BpePreTokenizer(string name, Regex[] stages, bool ignoresMerges, bool addsBos)
    {
        Name = name;
        _stages = stages;
        IgnoresMerges = ignoresMerges;
        AddsBos = addsBos;
    }

    /// <summary>What llama.cpp assumes when a file names no pre-tokenizer (it warns that quality may suffer).</summary>
    public const string DefaultName = "default";

    /// <summary>The tokenizer.ggml.pre values Kiln knows, in the order an error message lists them.</summary>
    public static IReadOnlyList<string> KnownNames { get; } =
        ["gpt-2", "qwen2", "llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", DefaultName];

    public string Name { get; }

    /// <summary>
    /// Whether a piece that is itself a vocabulary entry becomes that token without merging (llama.cpp's
    /// ignore_merges, set for Llama 3, whose merges do not reach every entry).
    /// </summary>
    public bool IgnoresMerges { get; }

    /// <summary>Whether the model wants BOS when tokenizer.ggml.add_bos_token does not say (llama.cpp: Llama 3 does).</summary>
    public bool AddsBos { get; }

    public static bool TryGet(string name, out BpePreTokenizer preTokenizer)
    {
        preTokenizer = name switch
        {
            "gpt-2" => new(name, [Gpt2Words()], ignoresMerges: false, addsBos: false),
            "qwen2" => new(name, [Qwen2Words()], ignoresMerges: false, addsBos: false),
            "llama-bpe" or "llama3" or "llama-v3" => new(name, [Llama3Words()], ignoresMerges: true, addsBos: true),
            "smaug-bpe" or "dbrx" => new(name, [Llama3Words()], ignoresMerges: false, addsBos: false),
            DefaultName => new(name, [PunctuationRuns(), Gpt2Words(), Numbers(), ThreeDigits()], ignoresMerges: false, addsBos: false),
            _ => null!,
        };
        return preTokenizer is not null;
    }

    /// <summary>Replaces <paramref name="pieces"/> with the pieces of <paramref name="text"/>, in order.</summary>
    public void Split(ReadOnlySpan<char> text, List<Range> pieces)
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
