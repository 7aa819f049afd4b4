using Kiln.Loading;
using Kiln.Tokenization;
using Microsoft.ML.Tokenizers;

namespace Kiln.Runtime.Tests.Tokenization;

/// <summary>
/// Byte-level BPE with GPT-2's real vocabulary and merges, from a GGUF file written the way convert_hf_to_gguf.py
/// writes GPT-2's, checked against Microsoft.ML.Tokenizers' own GPT-2 tokenizer (tiktoken's ranks and regex).
/// </summary>
public class Gpt2TokenizerTests
{
    private static readonly Lazy<KilnTokenizer> Gpt2 = new(() => TokenizerTestFiles.FromGguf(Gpt2Vocabulary.AddTokenizer(new GgufWriter())));

    private static readonly Lazy<Tokenizer> Tiktoken = new(() => TiktokenTokenizer.CreateForModel("gpt2"));

    private static readonly string[] SampleTexts =
    [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "don't, I'll, we've, she's, they're, I'm, he'd",
        "Digits 0123456789, 3.14159e-10 and 1,000,000",
        "line one\nline two\r\n\n\ttabbed line\n",
        "   leading spaces, double  spaces and trailing   ",
        "Accents: café, naïve, Ångström, żółć, São Paulo",
        "CJK: 日本語のテキスト, 中文文本, 한국어 텍스트",
        "Emoji: 😀🚀👍🏽 and a flag 🇫🇷",
        "Code: for (int i = 0; i < n; i++) { sum += a[i]; } // «ok»",
        "Mixed 🐍 snake_case, camelCase, kebab-case\u00A0nbsp",
        " ",
        "\n\n",
        "x",
    ];

    public static TheoryData<string> Texts => [.. SampleTexts];

    [Fact]
    public void ReadsTheVocabulary()
    {
        var tokenizer = Gpt2.Value;

        Assert.Equal(TokenizerKind.ByteLevelBpe, tokenizer.Kind);
        Assert.Equal(50257, tokenizer.VocabSize);
        Assert.Equal((Gpt2Vocabulary.EndOfTextId, Gpt2Vocabulary.EndOfTextId), (tokenizer.BosId, tokenizer.EosId));
        Assert.False(tokenizer.AddBosToken);
        Assert.Equal("Ġthe", tokenizer.GetToken(262));
        Assert.Equal(TokenType.Control, tokenizer.GetTokenType(Gpt2Vocabulary.EndOfTextId));
        Assert.Equal("Ġ t", Gpt2Vocabulary.Merges[0]); // the first line of GPT-2's merges.txt
    }

    [Theory]
    [MemberData(nameof(Texts))]
    public void EncodesLikeTheLibrarysGpt2Tokenizer(string text)
    {
        int[] expected = [.. Tiktoken.Value.EncodeToIds(text)];

        Assert.Equal(expected, Gpt2.Value.Encode(text, addBos: false));
    }

    [Theory]
    [MemberData(nameof(Texts))]
    public void RoundTripsText(string text)
    {
        var tokenizer = Gpt2.Value;

        Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text, addBos: false)));
        Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text, addBos: true)));
    }

    [Fact]
    public void EncodesFromManyThreadsAtOnce()
    {
        var tokenizer = Gpt2.Value;
        // Fresh words in every text, so that threads fill the library's word cache while others read it.
        string[] texts = [.. Enumerable.Range(0, 256).Select(i => $"{SampleTexts[i % SampleTexts.Length]} word{i}x{i * 7} 😀{i}")];
        int[][] expected = [.. texts.Select(text => Tiktoken.Value.EncodeToIds(text).ToArray())];

        var actual = new int[texts.Length][];
        Parallel.For(0, texts.Length, new ParallelOptions { MaxDegreeOfParallelism = 4 },
            i => actual[i] = tokenizer.Encode(texts[i], addBos: false));

        for (int i = 0; i < texts.Length; i++) Assert.Equal(expected[i], actual[i]);
    }

    [Fact]
    public void EncodesKnownIds()
    {
        // "Hello world" is [15496, 995] in GPT-2; BOS comes first only when asked for.
        Assert.Equal([15496, 995], Gpt2.Value.Encode("Hello world", addBos: false));
        Assert.Equal([Gpt2Vocabulary.EndOfTextId, 15496, 995], Gpt2.Value.Encode("Hello world"));
        Assert.Empty(Gpt2.Value.Encode("", addBos: false));
    }

    [Fact]
    public void StreamsCharactersSplitAcrossTokensWhole()
    {
        var tokenizer = Gpt2.Value;
        // GPT-2 has no token for 😀: its four bytes come as 'ðŁĺ' (F0 9F 98) and 'Ģ' (80).
        int[] ids = tokenizer.Encode("😀", addBos: false);
        Assert.Equal(["ðŁĺ", "Ģ"], ids.Select(tokenizer.GetToken));

        var decoder = tokenizer.CreateStreamingDecoder();
        Assert.Equal(["", "😀"], ids.Select(decoder.Append));
        Assert.Equal("", decoder.Flush());
    }

    [Fact]
    public void StreamedTextOfManySplitCharactersIsWhole()
    {
        var tokenizer = Gpt2.Value;
        const string text = "Fire 🔥 and ice 🧊, 日本 👍🏽 🇫🇷 done.";
        int[] ids = tokenizer.Encode(text, addBos: false);
        Assert.Contains(ids, id => tokenizer.PieceBytesOf(id) is not null);

        var decoder = tokenizer.CreateStreamingDecoder();
        string[] pieces = [.. ids.Select(decoder.Append), decoder.Flush()];

        Assert.Equal(text, string.Concat(pieces));
        Assert.All(pieces, piece => Assert.DoesNotContain('\uFFFD', piece));
        Assert.All(pieces, piece => Assert.True(piece.Length == 0 || !char.IsHighSurrogate(piece[^1]), $"'{piece}' ends inside a character"));
    }

    [Fact]
    public void StreamingOrdinaryTokensAllocatesNothing()
    {
        var tokenizer = Gpt2.Value;
        int[] ids = tokenizer.Encode("The quick brown fox jumps over the lazy dog.\nIt said: don't, 42 times!", addBos: false);
        var decoder = tokenizer.CreateStreamingDecoder();
        foreach (int id in ids) decoder.Append(id);

        long before = GC.GetAllocatedBytesForCurrentThread();
        int length = 0;
        for (int round = 0; round < 100; round++)
        {
            foreach (int id in ids) length += decoder.Append(id).Length;
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.True(length > 0);
        Assert.Equal(0, allocated);
    }

    [Fact]
    public void AnUnfinishedCharacterBecomesAReplacementCharacter()
    {
        var tokenizer = Gpt2.Value;
        int partial = tokenizer.Encode("😀", addBos: false)[0]; // F0 9F 98, waiting for one more byte
        int hello = tokenizer.Encode("Hello", addBos: false)[0];

        Assert.Equal("\uFFFDHello", tokenizer.Decode([partial, hello]));
        Assert.Equal("\uFFFD", tokenizer.Decode([partial]));
    }

    [Fact]
    public void EndOfTextInTextIsTextUnlessSpecialTokensAreParsed()
    {
        var tokenizer = Gpt2.Value;
        const string text = "one<|endoftext|>two";

        int[] asText = tokenizer.Encode(text, addBos: false);
        int[] parsed = tokenizer.Encode(text, addBos: false, parseSpecial: true);

        Assert.DoesNotContain(Gpt2Vocabulary.EndOfTextId, asText);
        Assert.Equal(text, tokenizer.Decode(asText));
        Assert.Equal([.. tokenizer.Encode("one", addBos: false), Gpt2Vocabulary.EndOfTextId, .. tokenizer.Encode("two", addBos: false)], parsed);
        Assert.Equal([.. Tiktoken.Value.EncodeToIds(text)], parsed); // tiktoken's GPT-2 knows <|endoftext|> as special
        Assert.Equal("onetwo", tokenizer.Decode(parsed)); // control tokens print nothing
    }
}
