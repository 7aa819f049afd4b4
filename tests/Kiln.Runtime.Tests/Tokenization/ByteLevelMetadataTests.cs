using Kiln.Loading;
using Kiln.Tokenization;

namespace Kiln.Runtime.Tests.Tokenization;

/// <summary>
/// Byte-level BPE built from tokenizer.ggml.* metadata: the pre-tokenizers that tokenizer.ggml.pre names, and bad
/// metadata reported with the file and the key.
/// </summary>
public class ByteLevelMetadataTests
{
    /// <summary>Digits merge into " 123" (with 'Ġ', the byte alphabet's space) and, ranked after, "123".</summary>
    private static readonly string[] DigitMerges = ["Ġ 1", "Ġ1 2", "Ġ12 3", "1 2", "12 3"];

    [Theory]
    [InlineData("gpt-2", "123 123", new[] { "123", "Ġ123" })]
    [InlineData("qwen2", "123 123", new[] { "1", "2", "3", "Ġ", "1", "2", "3" })] // Qwen2 takes digits one by one
    [InlineData("llama-bpe", "123 123", new[] { "123", "Ġ", "123" })]           // Llama 3 up to three, without the space
    public void ThePreTokenizerDecidesWhatMayMerge(string pre, string text, string[] expected)
    {
        var tokenizer = KilnTokenizer.FromModelFile(new MetadataOnlyFile(SmallVocabulary(pre, DigitMerges)));

        Assert.Equal(expected, tokenizer.Encode(text, addBos: false).Select(tokenizer.GetToken));
        Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text, addBos: false)));
    }

    /// <summary>The pieces of each pre-tokenizer, as llama.cpp's regular expressions cut them.</summary>
    public static TheoryData<string, string, string[]> Splits => new()
    {
        { "gpt-2", "Hello world", ["Hello", " world"] },
        { "gpt-2", "I'm 12345, don't", ["I", "'m", " 12345", ",", " don", "'t"] },
        { "gpt-2", "DON'T", ["DON", "'", "T"] },
        { "qwen2", "DON'T", ["DON", "'T"] },
        { "qwen2", "x 12345", ["x", " ", "1", "2", "3", "4", "5"] },
        { "llama-bpe", "x 12345", ["x", " ", "123", "45"] },
        { "gpt-2", "a  b\n\nc", ["a", " ", " b", "\n", "\n", "c"] },
        { "qwen2", "a  b\n\nc", ["a", " ", " b", "\n\n", "c"] },
        { "qwen2", "(hi)\n", ["(hi", ")\n"] },
        { "gpt-2", "tail  ", ["tail", "  "] },
        { "default", "a+b=c 123456", ["a", "+", "b", "=", "c", " ", "123", "456"] },
        { "gpt-2", "😀 ok", ["😀", " ok"] },
        // Beyond U+FFFF classes and counts go by code point, as in llama.cpp, not by UTF-16 surrogate.
        { "qwen2", "吉𠮷野家", ["吉𠮷野家"] },
        { "qwen2", "𝟏𝟐", ["𝟏", "𝟐"] },
        { "llama-bpe", "x𝟏𝟐𝟑𝟒", ["x", "𝟏𝟐𝟑", "𝟒"] },
        { "gpt-2", "a😀b 𝐀𝐁", ["a", "😀", "b", " 𝐀𝐁"] },
    };

    [Theory]
    [MemberData(nameof(Splits))]
    public void PreTokenizersSplitAsLlamaCpp(string pre, string text, string[] expected)
    {
        Assert.True(BpePreTokenizer.TryGet(pre, out var preTokenizer));
        var pieces = new List<Range>();

        preTokenizer.Split(text, pieces);

        Assert.Equal(expected, pieces.Select(range => text[range]));
    }

    [Fact]
    public void Llama3TakesAWholeWordThatTheMergesCannotReach()
    {
        // "abc" is a token, but no merge makes it: Llama 3 (ignore_merges) takes it whole, smaug-bpe merges what it can.
        var metadata = SmallVocabulary("llama-bpe", ["a b"], extraTokens: ["abc"]);
        var llama3 = KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata));
        metadata["tokenizer.ggml.pre"] = "smaug-bpe";
        var smaug = KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata));

        Assert.Equal(["abc"], llama3.Encode("abc", addBos: false).Select(llama3.GetToken));
        Assert.Equal(["ab", "c"], smaug.Encode("abc", addBos: false).Select(smaug.GetToken));
        Assert.True(llama3.AddBosToken); // llama.cpp's default for Llama 3
        Assert.False(smaug.AddBosToken);
    }

    [Fact]
    public void AFileWithoutAPreTokenizerGetsLlamaCppsDefault()
    {
        var metadata = SmallVocabulary("gpt-2", DigitMerges);
        metadata.Remove("tokenizer.ggml.pre");
        var tokenizer = KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata));

        // "default" cuts numbers into threes after the GPT-2 pattern: " 123" loses its space to a piece of its own.
        Assert.Equal(["Ġ", "123"], tokenizer.Encode(" 123", addBos: false).Select(tokenizer.GetToken));
    }

    [Fact]
    public void UserDefinedTokensAreFoundWholeAndPrintAsTheirText()
    {
        var metadata = SmallVocabulary("qwen2", [], extraTokens: ["<think>"], extraTypes: [TokenType.UserDefined]);
        var tokenizer = KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata));
        int think = tokenizer.VocabSize - 2;

        int[] ids = tokenizer.Encode("a<think>b", addBos: false);

        Assert.Equal([.. tokenizer.Encode("a", addBos: false), think, .. tokenizer.Encode("b", addBos: false)], ids);
        Assert.Equal("a<think>b", tokenizer.Decode(ids));
    }

    [Fact]
    public void AnUnknownIdIsOptional()
    {
        var tokenizer = KilnTokenizer.FromModelFile(new MetadataOnlyFile(SmallVocabulary("gpt-2", [])));

        Assert.Equal(KilnTokenizer.NoToken, tokenizer.UnknownId);
    }

    [Fact]
    public void AnUnknownPreTokenizerIsNamed()
    {
        var metadata = SmallVocabulary("gpt-2", []);
        metadata["tokenizer.ggml.pre"] = "falcon";

        var error = Load(metadata);

        Assert.Equal("tokenizer.ggml.pre", error.Field);
        Assert.Contains("pre-tokenizer 'falcon' is not supported", error.Message);
        Assert.Contains("'qwen2'", error.Message);
    }

    [Theory]
    [InlineData("tokenizer.ggml.tokens")]
    [InlineData("tokenizer.ggml.token_type")]
    [InlineData("tokenizer.ggml.merges")]
    [InlineData("tokenizer.ggml.bos_token_id")]
    [InlineData("tokenizer.ggml.eos_token_id")]
    public void AMissingKeyIsNamed(string key)
    {
        var metadata = SmallVocabulary("gpt-2", DigitMerges);
        metadata.Remove(key);

        var error = Load(metadata);

        Assert.Equal(key, error.Field);
        Assert.Contains("missing; a byte-level BPE tokenizer needs it", error.Message);
    }

    /// <summary>The merges given, and the problem reported on tokenizer.ggml.merges.</summary>
    public static TheoryData<string[], string> BadMerges => new()
    {
        { ["12"], "entry 0 ('12') is not two tokens joined by one space" },
        { ["1 2", "12  3"], "entry 1 ('12  3') is not two tokens joined by one space" },
        { ["1 2 3"], "entry 0 ('1 2 3') is not two tokens joined by one space" },
        { [" 1"], "entry 0 (' 1') is not two tokens joined by one space" },
        { ["13 2"], "entry 0 ('13 2'): '13' is not a normal token" },
        { ["1 2", "2 1"], "entry 1 ('2 1'): its result '21' is not a normal token" },
        { ["1 2", "1 2"], "entry 1 ('1 2'): it repeats entry 0" },
        { ["1 <|endoftext|>"], "'<|endoftext|>' is not a normal token" },
    };

    [Theory]
    [MemberData(nameof(BadMerges))]
    public void AMalformedMergeIsNamed(string[] merges, string problem)
    {
        var metadata = SmallVocabulary("gpt-2", ["1 2"]);
        metadata["tokenizer.ggml.merges"] = merges;

        var error = Load(metadata);

        Assert.Equal("tokenizer.ggml.merges", error.Field);
        Assert.Contains(problem, error.Message);
    }

    [Fact]
    public void MergesOfTheWrongTypeAreNamed()
    {
        var metadata = SmallVocabulary("gpt-2", []);
        metadata["tokenizer.ggml.merges"] = new[] { 1, 2 };

        var error = Load(metadata);

        Assert.Equal("tokenizer.ggml.merges", error.Field);
        Assert.Contains("should be an array of strings", error.Message);
    }

    [Fact]
    public void ANormalTokenOutsideTheByteAlphabetIsNamed()
    {
        var metadata = SmallVocabulary("gpt-2", [], extraTokens: ["a b"]); // a raw space, where the alphabet has 'Ġ'

        var error = Load(metadata);

        Assert.Equal("tokenizer.ggml.tokens", error.Field);
        Assert.Contains("entry 256 ('a b') is a normal token but its character 1 (U+0020)", error.Message);
    }

    [Fact]
    public void AMissingByteTokenIsNamed()
    {
        var metadata = SmallVocabulary("gpt-2", []);
        string[] tokens = (string[])metadata["tokenizer.ggml.tokens"];
        int[] types = (int[])metadata["tokenizer.ggml.token_type"];
        tokens['q'] = "<q>";
        types['q'] = (int)TokenType.UserDefined;

        var error = Load(metadata);

        Assert.Equal("tokenizer.ggml.tokens", error.Field);
        Assert.Contains("has no normal token for byte 0x71 ('q')", error.Message);
    }

    [Fact]
    public void ByteTokensAreRejected()
    {
        var metadata = SmallVocabulary("gpt-2", [], extraTokens: ["<0x0A>"], extraTypes: [TokenType.Byte]);

        var error = Load(metadata);

        Assert.Equal("tokenizer.ggml.token_type", error.Field);
        Assert.Contains("entry 256 ('<0x0A>') has type 6 (byte)", error.Message);
    }

    [Fact]
    public void ASpecialIdOutsideTheVocabularyIsNamed()
    {
        var metadata = SmallVocabulary("gpt-2", []);
        metadata["tokenizer.ggml.eos_token_id"] = 257u;

        var error = Load(metadata);

        Assert.Equal("tokenizer.ggml.eos_token_id", error.Field);
        Assert.Contains("is 257, outside the vocabulary of 257 tokens", error.Message);
    }

    private static ModelLoadException Load(Dictionary<string, object> metadata)
    {
        var error = Assert.Throws<ModelLoadException>(() => KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata)));
        Assert.Equal(MetadataOnlyFile.FakePath, error.FilePath);
        return error;
    }

    /// <summary>
    /// The 256 byte tokens, the results of <paramref name="merges"/>, any extra tokens (normal unless typed), then
    /// &lt;|endoftext|&gt; as BOS and EOS.
    /// </summary>
    private static Dictionary<string, object> SmallVocabulary(string pre, string[] merges, string[]? extraTokens = null, TokenType[]? extraTypes = null)
    {
        var tokens = new List<string>();
        var types = new List<int>();
        for (int value = 0; value < 256; value++)
        {
            tokens.Add(ByteLevelAlphabet.ToChar((byte)value).ToString());
            types.Add((int)TokenType.Normal);
        }
        foreach (string merge in merges)
        {
            tokens.Add(merge.Replace(" ", ""));
            types.Add((int)TokenType.Normal);
        }
        for (int i = 0; i < (extraTokens?.Length ?? 0); i++)
        {
            tokens.Add(extraTokens![i]);
            types.Add((int)(extraTypes?[i] ?? TokenType.Normal));
        }
        tokens.Add("<|endoftext|>");
        types.Add((int)TokenType.Control);

        return new Dictionary<string, object>
        {
            ["tokenizer.ggml.model"] = "gpt2",
            ["tokenizer.ggml.pre"] = pre,
            ["tokenizer.ggml.tokens"] = tokens.ToArray(),
            ["tokenizer.ggml.token_type"] = types.ToArray(),
            ["tokenizer.ggml.merges"] = merges,
            ["tokenizer.ggml.bos_token_id"] = (uint)(tokens.Count - 1),
            ["tokenizer.ggml.eos_token_id"] = (uint)(tokens.Count - 1),
        };
    }
}
