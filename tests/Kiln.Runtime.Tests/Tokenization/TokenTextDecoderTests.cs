using System.Text;
using Kiln.Tokenization;

namespace Kiln.Runtime.Tests.Tokenization;

public class TokenTextDecoderTests
{
    private static readonly Lazy<KilnTokenizer> Stories = new(() => TokenizerTestFiles.FromModelFile("stories260K.gguf"));

    [Fact]
    public void DecodesTheReferenceContinuation()
    {
        int[] ids = [.. TokenizerTestFiles.ReferencePromptIds, .. TokenizerTestFiles.ReferenceGeneratedIds];

        Assert.Equal(TokenizerTestFiles.ReferenceText(), Stories.Value.Decode(ids));
    }

    [Fact]
    public void StreamsTheReferenceContinuationTokenByToken()
    {
        var tokenizer = Stories.Value;
        int[] prompt = TokenizerTestFiles.ReferencePromptIds;

        var decoder = tokenizer.CreateStreamingDecoder(prompt[^1]);
        var text = new StringBuilder("Once upon a time");
        foreach (int id in TokenizerTestFiles.ReferenceGeneratedIds) text.Append(decoder.Append(id));
        text.Append(decoder.Flush());

        Assert.Equal(TokenizerTestFiles.ReferenceText(), text.ToString());
    }

    [Fact]
    public void StreamingFromBosDropsTheDummySpace()
    {
        var tokenizer = Stories.Value;
        var decoder = tokenizer.CreateStreamingDecoder();

        string[] pieces = [.. TokenizerTestFiles.ReferencePromptIds.Select(decoder.Append)];

        Assert.Equal(["", "Once", " upon", " a", " time"], pieces);
    }

    [Fact]
    public void ACharacterSplitOverByteTokensComesOutWhenComplete()
    {
        var tokenizer = Stories.Value;
        int[] ids = tokenizer.Encode("a😀ж"); // BOS, ▁a, then bytes F0 9F 98 80 and D0 B6 (neither is a piece)
        var decoder = tokenizer.CreateStreamingDecoder();

        string[] pieces = [.. ids.Select(decoder.Append)];

        Assert.Equal(["", "a", "", "", "", "😀", "", "ж"], pieces);
        Assert.Equal("", decoder.Flush());
    }

    [Fact]
    public void AnUnfinishedCharacterBecomesAReplacementCharacter()
    {
        var tokenizer = Stories.Value;
        int euroLead = ByteToken(tokenizer, 0xE2), euroSecond = ByteToken(tokenizer, 0x82);
        int a = tokenizer.Encode("a", addBos: false)[0];

        Assert.Equal("\uFFFD a", tokenizer.Decode([euroLead, euroSecond, a]));
        Assert.Equal("\uFFFD", tokenizer.Decode([euroLead, euroSecond]));

        var decoder = tokenizer.CreateStreamingDecoder();
        Assert.Equal("", decoder.Append(euroLead));
        Assert.Equal("\uFFFD", decoder.Flush());
        Assert.Equal("", decoder.Flush());
    }

    [Fact]
    public void ControlTokensPrintNothing()
    {
        var tokenizer = Stories.Value;
        int[] hello = tokenizer.Encode("Hello", addBos: false);

        Assert.Equal("", tokenizer.Decode([tokenizer.BosId, tokenizer.EosId]));
        Assert.Equal("Hello Hello", tokenizer.Decode([tokenizer.BosId, .. hello, tokenizer.EosId, .. hello]));
    }

    [Fact]
    public void OnlyThePieceRightAfterBosLosesItsSpace()
    {
        var tokenizer = Stories.Value;

        Assert.Equal("Hello", tokenizer.Decode(tokenizer.Encode("Hello")));
        Assert.Equal(" Hello", tokenizer.Decode(tokenizer.Encode("Hello", addBos: false)));
    }

    [Fact]
    public void StreamingOrdinaryTokensAllocatesNothing()
    {
        var tokenizer = Stories.Value;
        var decoder = tokenizer.CreateStreamingDecoder(TokenizerTestFiles.ReferencePromptIds[^1]);
        int[] ids = TokenizerTestFiles.ReferenceGeneratedIds; // words and one ASCII byte token (newline)
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
    public void RejectsIdsOutsideTheVocabulary()
    {
        var tokenizer = Stories.Value;

        Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.CreateStreamingDecoder().Append(tokenizer.VocabSize));
        Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.Decode([-1]));
    }

    private static int ByteToken(KilnTokenizer tokenizer, byte value) =>
        Enumerable.Range(0, tokenizer.VocabSize).Single(id => tokenizer.GetToken(id) == $"<0x{value:X2}>");
}
