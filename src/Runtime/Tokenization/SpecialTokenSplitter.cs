using System.Text;

namespace Kiln.Tokenization;

/// <summary>A run of text to tokenize, or one special token found whole in the text.</summary>
internal readonly record struct TextFragment(int Start, int Length, int TokenId)
{
    public const int RawText = -1;

    public bool IsToken => TokenId != RawText;
}

/// <summary>
/// Finds special tokens in text before it is tokenized, as llama.cpp's tokenizer_st_partition does: the tokens
/// are tried longest first (by UTF-8 length), each splitting every piece of raw text the longer ones left, left
/// to right. A token that strips the whitespace after it (llama.cpp's RSTRIP) swallows the spaces, tabs and line
/// breaks that follow it.
/// </summary>
internal sealed class SpecialTokenSplitter
{
    private readonly SpecialToken[] _tokens;

    private readonly record struct SpecialToken(string Text, int Id, bool StripsFollowingSpace);

    public SpecialTokenSplitter(IEnumerable<(string Text, int Id, bool StripsFollowingSpace)> tokens)
    {
        // Ties in length go by id, where llama.cpp leaves them to std::sort; they matter only for overlapping tokens.
        _tokens = [.. tokens
            .Select(token => new SpecialToken(token.Text, token.Id, token.StripsFollowingSpace))
            .OrderByDescending(token => Encoding.UTF8.GetByteCount(token.Text))
            .ThenBy(token => token.Id)];
    }

    /// <summary>Replaces <paramref name="fragments"/> with the raw runs and special tokens of <paramref name="text"/>.</summary>
    public void Split(string text, List<TextFragment> fragments)
    {
        fragments.Clear();
        if (text.Length == 0) return;
        fragments.Add(new TextFragment(0, text.Length, TextFragment.RawText));
        if (_tokens.Length == 0) return;

        var refined = new List<TextFragment>();
        foreach (SpecialToken token in _tokens)
        {
            if (!AnyRawFragmentHolds(text, fragments, token.Text)) continue;
            refined.Clear();
            foreach (TextFragment fragment in fragments)
            {
                if (fragment.IsToken) refined.Add(fragment);
                else SplitAt(text, fragment, token, refined);
            }
            fragments.Clear();
            fragments.AddRange(refined);
        }
    }

    private static bool AnyRawFragmentHolds(string text, List<TextFragment> fragments, string tokenText)
    {
        foreach (TextFragment fragment in fragments)
        {
            if (!fragment.IsToken && text.AsSpan(fragment.Start, fragment.Length).Contains(tokenText, StringComparison.Ordinal)) return true;
        }
        return false;
    }

    private static void SplitAt(string text, TextFragment fragment, SpecialToken token, List<TextFragment> refined)
    {
        int start = fragment.Start, end = fragment.Start + fragment.Length;
        while (start < end)
        {
            int found = text.AsSpan(start, end - start).IndexOf(token.Text, StringComparison.Ordinal);
            if (found < 0) break;
            found += start;
            if (found > start) refined.Add(new TextFragment(start, found - start, TextFragment.RawText));
            refined.Add(new TextFragment(found, token.Text.Length, token.Id));
            start = found + token.Text.Length;
            if (token.StripsFollowingSpace)
            {
                while (start < end && IsCSpace(text[start])) start++;
            }
        }
        if (start < end) refined.Add(new TextFragment(start, end - start, TextFragment.RawText));
    }

    /// <summary>C's isspace, which llama.cpp's stripping uses: ASCII whitespace only.</summary>
    private static bool IsCSpace(char c) => c is ' ' or '\t' or '\n' or '\v' or '\f' or '\r';
}
