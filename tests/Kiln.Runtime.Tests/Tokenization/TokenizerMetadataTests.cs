using Kiln.Loading;
using Kiln.Tokenization;

namespace Kiln.Runtime.Tests.Tokenization;

/// <summary>Missing or inconsistent tokenizer metadata is reported, naming the file and the key.</summary>
public class TokenizerMetadataTests
{
    private const string FakePath = MetadataOnlyFile.FakePath;

    [Fact]
    public void AValidVocabularyLoads()
    {
        var tokenizer = KilnTokenizer.FromModelFile(new MetadataOnlyFile(ValidMetadata()));

        Assert.Equal(6, tokenizer.VocabSize);
        Assert.Equal([1, 5, 3], tokenizer.Encode("ab a"));
        Assert.Equal("ab a", tokenizer.Decode([1, 5, 3]));
    }

    [Fact]
    public void ByteFallbackIsOffWithoutByteTokens()
    {
        var tokenizer = KilnTokenizer.FromModelFile(new MetadataOnlyFile(ValidMetadata()));

        // "▁z": neither character is a piece, and without byte tokens each becomes the unknown token.
        Assert.Equal([1, 0, 0], tokenizer.Encode("z"));
    }

    [Fact]
    public void AddBosTokenComesFromTheFile()
    {
        var metadata = ValidMetadata();
        metadata["tokenizer.ggml.add_bos_token"] = false;

        Assert.False(KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata)).AddBosToken);
    }

    [Fact]
    public void WithoutASpacePrefixTextGetsNoDummySpace()
    {
        // Gemma's files set add_space_prefix to false; Llama's leave it out.
        var metadata = ValidMetadata();
        metadata["tokenizer.ggml.tokens"] = new[] { "<unk>", "<s>", "</s>", "▁a", "b", "▁ab", "a", "ab" };
        metadata["tokenizer.ggml.scores"] = new float[] { 0, 0, 0, -1, -2, -3, -4, -5 };
        metadata["tokenizer.ggml.token_type"] = new[] { 2, 3, 3, 1, 1, 1, 1, 1 };
        var withPrefix = KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata));
        metadata["tokenizer.ggml.add_space_prefix"] = false;
        var withoutPrefix = KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata));

        Assert.Equal([1, 5, 3], withPrefix.Encode("ab a"));
        Assert.Equal([1, 7, 3], withoutPrefix.Encode("ab a"));
        Assert.Equal("ab a", withoutPrefix.Decode([1, 7, 3]));
        // Only a dummy space is dropped after BOS; without one, a leading space is the text's own.
        Assert.Equal("a", withPrefix.Decode([1, 3]));
        Assert.Equal(" a", withoutPrefix.Decode([1, 3]));
    }

    [Theory]
    [InlineData("Phi-3-mini-4k-instruct", new[] { 1, 6, 3 })] // llama.cpp strips the whitespace after Phi-3's special tokens
    [InlineData("phi3 medium", new[] { 1, 6, 3 })]
    [InlineData("Llama-2-7b", new[] { 1, 6, 7, 8, 9 })]       // anyone else's stays: "▁\na"
    public void Phi3SpecialTokensEatTheWhitespaceAfterThem(string name, int[] expected)
    {
        var metadata = ValidMetadata();
        metadata["general.name"] = name;
        metadata["tokenizer.ggml.tokens"] = new[] { "<unk>", "<s>", "</s>", "▁a", "b", "▁ab", "<|user|>", "▁", "\n", "a" };
        metadata["tokenizer.ggml.scores"] = new float[] { 0, 0, 0, -1, -2, -3, 0, -4, -5, -6 };
        metadata["tokenizer.ggml.token_type"] = new[] { 2, 3, 3, 1, 1, 1, 4, 1, 1, 1 };

        var tokenizer = KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata));

        Assert.Equal(expected, tokenizer.Encode("<|user|>\na"));
    }

    [Fact]
    public void AMissingUnknownIdFallsBackToTheUnknownTypedToken()
    {
        var metadata = ValidMetadata();
        metadata.Remove("tokenizer.ggml.unknown_token_id");

        Assert.Equal(0, KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata)).UnknownId);
    }

    [Theory]
    [InlineData("tokenizer.ggml.model")]
    [InlineData("tokenizer.ggml.tokens")]
    [InlineData("tokenizer.ggml.scores")]
    [InlineData("tokenizer.ggml.token_type")]
    [InlineData("tokenizer.ggml.bos_token_id")]
    [InlineData("tokenizer.ggml.eos_token_id")]
    public void AMissingKeyIsNamed(string key)
    {
        var metadata = ValidMetadata();
        metadata.Remove(key);

        var error = Load(metadata);

        Assert.Equal(key, error.Field);
        Assert.Contains("missing", error.Message);
    }

    [Fact]
    public void AnUnsupportedTokenizerModelIsNamed()
    {
        var metadata = ValidMetadata();
        metadata["tokenizer.ggml.model"] = "t5";

        var error = Load(metadata);

        Assert.Equal("tokenizer.ggml.model", error.Field);
        Assert.Contains("'t5' is not supported", error.Message);
    }

    /// <summary>The key given a bad value, the value, the key the problem is reported on, and the problem.</summary>
    public static TheoryData<string, object, string, string> Inconsistencies => new()
    {
        { "tokenizer.ggml.scores", new double[] { 0, 0, 0, -1, -2, -3 }, "tokenizer.ggml.scores", "should be an array of float32" },
        { "tokenizer.ggml.scores", new float[] { 0, 0, 0, -1, -2 }, "tokenizer.ggml.scores", "has 5 entries but tokenizer.ggml.tokens has 6" },
        { "tokenizer.ggml.token_type", new[] { 2, 3, 3, 1, 1, 9 }, "tokenizer.ggml.token_type", "entry 5 ('▁ab') is 9" },
        { "tokenizer.ggml.token_type", new[] { 1, 3, 3, 1, 1, 1 }, "tokenizer.ggml.unknown_token_id", "token 0 ('<unk>') has type 1, not 2 (unknown)" },
        { "tokenizer.ggml.token_type", new[] { 2, 3, 3, 1, 6, 1 }, "tokenizer.ggml.tokens", "entry 4 ('b') has type 6 (byte) but is not spelled <0xNN>" },
        { "tokenizer.ggml.tokens", new[] { "<unk>", "<s>", "</s>", "▁a", "▁a", "ab" }, "tokenizer.ggml.tokens", "'▁a' appears twice, at ids 3 and 4" },
        { "tokenizer.ggml.tokens", new[] { "<unk>", "<s>", "</s>", " a", "b", "ab" }, "tokenizer.ggml.tokens", "plain space" },
        { "tokenizer.ggml.bos_token_id", 6u, "tokenizer.ggml.bos_token_id", "is 6, outside the vocabulary of 6 tokens" },
        { "tokenizer.ggml.eos_token_id", -1, "tokenizer.ggml.eos_token_id", "is -1, outside the vocabulary" },
        { "tokenizer.ggml.eos_token_id", "2", "tokenizer.ggml.eos_token_id", "should be an integer token id" },
        { "tokenizer.ggml.add_bos_token", 1, "tokenizer.ggml.add_bos_token", "should be a bool" },
    };

    [Theory]
    [MemberData(nameof(Inconsistencies))]
    public void AnInconsistencyIsNamed(string key, object value, string reportedKey, string problem)
    {
        var metadata = ValidMetadata();
        metadata[key] = value;

        var error = Load(metadata);

        Assert.Equal(FakePath, error.FilePath);
        Assert.Equal(reportedKey, error.Field);
        Assert.Contains(problem, error.Message);
    }

    [Fact]
    public void IncompleteByteTokensAreRejected()
    {
        var metadata = ValidMetadata();
        metadata["tokenizer.ggml.tokens"] = new[] { "<unk>", "<s>", "</s>", "▁a", "<0x00>", "<0x01>" };
        metadata["tokenizer.ggml.token_type"] = new[] { 2, 3, 3, 1, 6, 6 };

        var error = Load(metadata);

        Assert.Equal("tokenizer.ggml.token_type", error.Field);
        Assert.Contains("has 2 byte tokens", error.Message);
    }

    [Fact]
    public void FromVocabularyReportsProblemsAsArgumentErrors()
    {
        string[] tokens = ["<unk>", "<s>", "</s>", "▁a"];
        float[] scores = [0, 0, 0, 0];

        var error = Assert.Throws<ArgumentException>(() =>
            KilnTokenizer.FromVocabulary(tokens, scores, [2, 3, 3], bos: 1, eos: 2, unk: 0));

        Assert.Equal("types", error.ParamName);
        Assert.Contains("has 3 entries but tokens has 4", error.Message);
    }

    private static ModelLoadException Load(Dictionary<string, object> metadata) =>
        Assert.Throws<ModelLoadException>(() => KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata)));

    /// <summary>A six-token vocabulary: unknown, BOS, EOS, and three pieces that merge "ab" by score.</summary>
    private static Dictionary<string, object> ValidMetadata() => new()
    {
        ["tokenizer.ggml.model"] = "llama",
        ["tokenizer.ggml.tokens"] = new[] { "<unk>", "<s>", "</s>", "▁a", "b", "▁ab" },
        ["tokenizer.ggml.scores"] = new float[] { 0, 0, 0, -1, -2, -3 },
        ["tokenizer.ggml.token_type"] = new[] { 2, 3, 3, 1, 1, 1 },
        ["tokenizer.ggml.bos_token_id"] = 1u,
        ["tokenizer.ggml.eos_token_id"] = 2u,
        ["tokenizer.ggml.unknown_token_id"] = 0u,
    };
}
