using Kiln.Loading;
using Kiln.Tokenization;

namespace Kiln.Runtime.Tests.Tokenization;

/// <summary>The synthetic byte-level vocabulary that benchmark GGUF files of GPT-2 and Qwen shapes carry.</summary>
public class ByteLevelVocabularyTests
{
    [Theory]
    [InlineData(ByteLevelVocabulary.MinTokenCount)]
    [InlineData(1000)]
    [InlineData(32000)]
    [InlineData(151936)] // Qwen2's and Qwen3's vocabulary size
    public void HasExactlyTheTokensAskedForEachOnce(int size)
    {
        var vocabulary = ByteLevelVocabulary.Create(size);

        Assert.Equal(size, vocabulary.Tokens.Count);
        Assert.Equal(size, vocabulary.TokenTypes.Count);
        Assert.Equal(size - ByteLevelVocabulary.MinTokenCount, vocabulary.Merges.Count);
        Assert.Equal(size, vocabulary.Tokens.Distinct(StringComparer.Ordinal).Count());
        Assert.Equal(ByteLevelVocabulary.EndOfText, vocabulary.Tokens[vocabulary.EndOfTextId]);
        Assert.Equal((int)TokenType.Control, vocabulary.TokenTypes[vocabulary.EndOfTextId]);
        Assert.Equal(size - 1, vocabulary.TokenTypes.Count(type => type == (int)TokenType.Normal));
        for (int value = 0; value < 256; value++) Assert.Equal(ByteLevelAlphabet.ToChar((byte)value).ToString(), vocabulary.Tokens[value]);
    }

    [Fact]
    public void EveryMergeJoinsTwoEarlierTokensIntoTheNextOne()
    {
        var vocabulary = ByteLevelVocabulary.Create(5000);
        var idOf = vocabulary.Tokens.Select((token, id) => (token, id)).ToDictionary(entry => entry.token, entry => entry.id);

        for (int rank = 0; rank < vocabulary.Merges.Count; rank++)
        {
            string[] parts = vocabulary.Merges[rank].Split(' ');
            int result = 256 + rank;
            Assert.Equal(2, parts.Length);
            Assert.True(idOf[parts[0]] < result && idOf[parts[1]] < result, $"merge {rank} ('{vocabulary.Merges[rank]}') uses a later token");
            Assert.Equal(parts[0] + parts[1], vocabulary.Tokens[result]);
        }
    }

    [Fact]
    public void IsTheSameEveryTime()
    {
        var first = ByteLevelVocabulary.Create(3000);
        var second = ByteLevelVocabulary.Create(3000);

        Assert.Equal(first.Tokens, second.Tokens);
        Assert.Equal(first.Merges, second.Merges);
        Assert.Equal(["Ġ a", "Ġ b"], first.Merges.Take(2));
    }

    [Theory]
    [InlineData("gpt-2")]
    [InlineData("qwen2")]
    public void KilnBuildsATokenizerFromTheFileItWrites(string pre)
    {
        var vocabulary = ByteLevelVocabulary.Create(32000);
        var writer = new GgufWriter().AddMetadata("general.architecture", "qwen2");
        vocabulary.AddTo(writer, pre);
        const string text = "the quick brown fox, 42 times: «ÇA VA?» 😀\n";

        var tokenizer = TokenizerTestFiles.FromGguf(writer);

        Assert.Equal(TokenizerKind.ByteLevelBpe, tokenizer.Kind);
        Assert.Equal(32000, tokenizer.VocabSize);
        Assert.Equal((vocabulary.EndOfTextId, vocabulary.EndOfTextId), (tokenizer.BosId, tokenizer.EosId));
        Assert.False(tokenizer.AddBosToken);
        int[] ids = tokenizer.Encode(text, addBos: false);
        Assert.Equal(text, tokenizer.Decode(ids));
        // Merges grow words from the left but BPE takes the lowest-ranked pair first, so words come out in a few
        // pieces ("t", "he"): more tokens than a trained vocabulary would give, still well under one per byte.
        const string words = "the quick brown fox jumps over the lazy dog";
        Assert.True(tokenizer.Encode(words, addBos: false).Length * 2 < words.Length);
        Assert.Equal(["Ġbr", "own"], tokenizer.Encode(" brown", addBos: false).Select(tokenizer.GetToken));
    }

    [Fact]
    public void AnUnknownPreTokenizerIsRefused()
    {
        var error = Assert.Throws<ArgumentException>(() => ByteLevelVocabulary.Create(300).AddTo(new GgufWriter(), "falcon"));

        Assert.Equal("preTokenizer", error.ParamName);
    }

    [Fact]
    public void ASizeBelowTheByteTokensIsRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => ByteLevelVocabulary.Create(ByteLevelVocabulary.MinTokenCount - 1));
    }
}
