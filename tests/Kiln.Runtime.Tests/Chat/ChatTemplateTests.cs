using Kiln.Chat;
using Kiln.Loading;
using Kiln.Runtime.Tests.Tokenization;
using Kiln.Tokenization;

namespace Kiln.Runtime.Tests.Chat;

/// <summary>Where a template comes from (the model file, or the fallback) and what it tells about a turn's end.</summary>
public class ChatTemplateTests
{
    private static readonly ChatMessage[] Conversation =
    [
        new("system", "You are terse."),
        new("user", " Hello "),
        new("assistant", "Hi."),
        new("user", "Who are you?"),
    ];

    [Fact]
    public void TheFallbackIsAPlainRoleColonFormat()
    {
        var fallback = ChatTemplate.Fallback;

        Assert.True(fallback.IsFallback);
        Assert.Equal("System: You are terse.\n\nUser: Hello\n\nAssistant: Hi.\n\nUser: Who are you?\n\nAssistant:", fallback.Render(Conversation));
        Assert.Equal("System: You are terse.\n\nUser: Hello\n\nAssistant: Hi.\n\nUser: Who are you?\n\n", fallback.Render(Conversation, addGenerationPrompt: false));
        Assert.Equal("Tool: 42\n\nAssistant:", fallback.Render([new("tool", "42")]));
    }

    [Fact]
    public void AFileWithoutATemplateGetsTheFallback()
    {
        using var file = ModelFile.Open(TokenizerTestFiles.ModelPath("stories260K.gguf"));

        Assert.Same(ChatTemplate.Fallback, ChatTemplate.FromModelFile(file));
        Assert.Same(ChatTemplate.Fallback, ChatTemplate.FromModelFile(file, KilnTokenizer.FromModelFile(file)));
        Assert.Same(ChatTemplate.Fallback, ChatTemplate.FromModelFile(new MetadataOnlyFile(new() { [ChatTemplate.MetadataKey] = "" })));
    }

    [Fact]
    public void TheFilesTemplateGetsItsBosAndEosText()
    {
        var metadata = ChatMLVocabulary();
        metadata[ChatTemplate.MetadataKey] = FamilyTemplates.Llama3Instruct;
        var file = new MetadataOnlyFile(metadata);

        var fromMetadata = ChatTemplate.FromModelFile(file);
        var fromTokenizer = ChatTemplate.FromModelFile(file, KilnTokenizer.FromModelFile(file));

        Assert.False(fromMetadata.IsFallback);
        Assert.Equal(FamilyTemplates.Llama3Instruct, fromMetadata.Source);
        string expected = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        Assert.Equal(expected, fromMetadata.Render([new("user", "Hi")]));
        Assert.Equal(expected, fromTokenizer.Render([new("user", "Hi")]));
    }

    [Fact]
    public void ABrokenTemplateInAFileIsALoadErrorNamingTheKeyAndPlace()
    {
        var file = new MetadataOnlyFile(new() { [ChatTemplate.MetadataKey] = "{% for m in messages %}\n{{ m.content" });

        var error = Assert.Throws<ModelLoadException>(() => ChatTemplate.FromModelFile(file));

        Assert.Equal(ChatTemplate.MetadataKey, error.Field);
        Assert.Equal($"{MetadataOnlyFile.FakePath}: {ChatTemplate.MetadataKey}: the chat template does not parse: 2:1: the tag is never closed: expected '}}}}'", error.Message);
        Assert.IsType<ChatTemplateException>(error.InnerException);
    }

    [Fact]
    public void ATemplateKeyThatIsNotTextIsALoadError()
    {
        var error = Assert.Throws<ModelLoadException>(() => ChatTemplate.FromModelFile(new MetadataOnlyFile(new() { [ChatTemplate.MetadataKey] = 7u })));

        Assert.Equal($"{MetadataOnlyFile.FakePath}: {ChatTemplate.MetadataKey}: should be a string, but is 7.", error.Message);
    }

    [Fact]
    public void MessagesWithoutRoleOrContentAreRejected()
    {
        var error = Assert.Throws<ArgumentException>(() => ChatTemplate.Fallback.Render([new("user", null!)]));
        Assert.StartsWith("Message 0 has a null content.", error.Message);
    }

    [Theory]
    [InlineData(FamilyTemplates.Llama2Chat, " </s><s>[INST] ")]
    [InlineData(FamilyTemplates.Llama3Instruct, "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")]
    [InlineData(FamilyTemplates.Qwen25Instruct, "<|im_end|>\n<|im_start|>user\n")]
    [InlineData(FamilyTemplates.Qwen3, "<|im_end|>\n<|im_start|>user\n")]
    [InlineData(FamilyTemplates.Gemma2, "<end_of_turn>\n<start_of_turn>user\n")]
    [InlineData(FamilyTemplates.Phi3Mini4k, "<|end|>\n<|user|>\n")]
    public void TheAssistantTurnEndIsWhatTheTemplateWritesAfterAReply(string source, string expected)
    {
        Assert.Equal(expected, ChatTemplate.Parse(source, "<s>", "</s>").AssistantTurnEnd());
    }

    [Fact]
    public void EndOfTurnTokensAreTheTemplatesMarkerAndEos()
    {
        var metadata = ChatMLVocabulary();
        var tokenizer = KilnTokenizer.FromModelFile(new MetadataOnlyFile(metadata));
        int imEnd = Array.IndexOf((string[])metadata["tokenizer.ggml.tokens"], "<|im_end|>");

        Assert.Equal([imEnd], KilnChatClient.EndOfTurnTokens(ChatTemplate.Parse(FamilyTemplates.Qwen25Instruct), tokenizer));
        // Phi-3's <|end|> is no token of this vocabulary: nothing to stop at besides EOS, which the engine stops at itself.
        Assert.Empty(KilnChatClient.EndOfTurnTokens(ChatTemplate.Parse(FamilyTemplates.Phi3Mini4k), tokenizer));
        Assert.Empty(KilnChatClient.EndOfTurnTokens(ChatTemplate.Fallback, tokenizer));
    }

    /// <summary>A byte-level vocabulary with ChatML's and Llama 3's special tokens (control tokens).</summary>
    internal static Dictionary<string, object> ChatMLVocabulary()
    {
        var tokens = new List<string>();
        var types = new List<int>();
        for (int value = 0; value < 256; value++)
        {
            tokens.Add(ByteLevelAlphabet.ToChar((byte)value).ToString());
            types.Add((int)TokenType.Normal);
        }
        foreach (string special in new[] { "<|begin_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>" })
        {
            tokens.Add(special);
            types.Add((int)TokenType.Control);
        }
        return new Dictionary<string, object>
        {
            ["tokenizer.ggml.model"] = "gpt2",
            ["tokenizer.ggml.pre"] = "qwen2",
            ["tokenizer.ggml.tokens"] = tokens.ToArray(),
            ["tokenizer.ggml.token_type"] = types.ToArray(),
            ["tokenizer.ggml.merges"] = Array.Empty<string>(),
            ["tokenizer.ggml.bos_token_id"] = (uint)tokens.IndexOf("<|begin_of_text|>"),
            ["tokenizer.ggml.eos_token_id"] = (uint)tokens.IndexOf("<|eot_id|>"),
        };
    }
}
