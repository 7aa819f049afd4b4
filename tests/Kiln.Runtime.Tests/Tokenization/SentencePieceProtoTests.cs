using Kiln.Tokenization;
using Microsoft.ML.Tokenizers;

namespace Kiln.Runtime.Tests.Tokenization;

/// <summary>
/// The ModelProto built in memory from a bare vocabulary must make the library tokenize exactly as the real
/// SentencePiece model file of the same vocabulary (tok512.model, written by SentencePiece's trainer).
/// </summary>
public class SentencePieceProtoTests
{
    private static readonly Lazy<Tokenizer> RealModel = new(() =>
    {
        using var stream = File.OpenRead(TokenizerTestFiles.ModelPath("tok512.model"));
        return LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
    });

    private static readonly Lazy<KilnTokenizer> BuiltFromVocabulary = new(TokenizerTestFiles.Tok512FromLlama2cFile);

    // No leading, trailing or doubled spaces: tok512.model was trained with remove_extra_whitespaces, which
    // collapses them, while Kiln keeps them as llama2.c and llama.cpp do (see KeepsRunsOfSpaces). No single
    // characters either: with that option on, Microsoft.ML.Tokenizers (2.0.1, still 3.0.0) encodes one-character
    // text to nothing.
    [Theory]
    [InlineData("Once upon a time")]
    [InlineData("Hello world")]
    [InlineData("The quick brown fox jumps over the lazy dog.")]
    [InlineData("Lily's mom said, \"Don't touch the red ball!\"")]
    [InlineData("12345 + 678 = 9023; pi is 3.14159")]
    [InlineData("line one\nline two\n\nline four")]
    [InlineData("tab\tseparated\tvalues")]
    [InlineData("café naïve façade")]
    [InlineData("日本語のテキスト")]
    [InlineData("emoji 😀 and 🚀 here")]
    [InlineData("supercalifragilisticexpialidocious")]
    [InlineData("ALL CAPS AND MiXeD cAsE")]
    [InlineData("xy")]
    public void EncodesLikeTheRealModelProto(string text)
    {
        int[] expected = RealModel.Value.EncodeToIds(text).ToArray();

        Assert.Equal(expected, BuiltFromVocabulary.Value.Encode(text, addBos: false));
    }

    [Fact]
    public void EncodesTheReferencePrompt()
    {
        Assert.Equal(TokenizerTestFiles.ReferencePromptIds, BuiltFromVocabulary.Value.Encode("Once upon a time"));
    }

    [Fact]
    public void KeepsRunsOfSpaces()
    {
        var tokenizer = BuiltFromVocabulary.Value;
        const string text = "  two leading, two  inside and one trailing ";

        Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text)));
    }

    [Theory]
    [InlineData("a", new[] { 1, 261 })]
    [InlineData("x", new[] { 1, 410, 444 })]
    public void EncodesASingleCharacter(string text, int[] expected)
    {
        Assert.Equal(expected, BuiltFromVocabulary.Value.Encode(text));
    }

    [Fact]
    public void FallsBackToBytesForCharactersOutsideTheVocabulary()
    {
        var tokenizer = BuiltFromVocabulary.Value;

        int[] ids = tokenizer.Encode("😀", addBos: false);

        // The dummy-prefix space, then U+1F600 as its four UTF-8 bytes F0 9F 98 80.
        Assert.Equal(["▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"], ids.Select(tokenizer.GetToken));
    }
}
