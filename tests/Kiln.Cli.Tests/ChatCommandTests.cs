using Kiln.Chat;
using Kiln.EndToEnd.Tests;
using Kiln.Engine.Serving;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;
using Microsoft.Extensions.AI;
using AIChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace Kiln.Cli.Tests;

/// <summary>kiln chat is <see cref="KilnChatClient"/> at the terminal: each reply is the client's reply to the conversation so far.</summary>
public sealed class ChatCommandTests
{
    private static readonly string Stories = StoriesReference.ModelPath("stories260K.gguf");
    private const int ReplyTokens = 24;

    [Fact]
    public async Task Each_reply_is_the_chat_clients_reply_to_the_conversation_so_far()
    {
        const string first = "Tell me a story about a cat.", second = "What did the cat do next?";
        var run = await CliRun.Of(["chat", "--model", Stories, "--max-tokens", $"{ReplyTokens}"], input: $"{first}\n\n{second}\n/exit\nnot read\n");

        Assert.True(run.ExitCode == 0, run.ToString());
        string firstReply = await ClientReply([new(ChatRole.User, first)]);
        string secondReply = await ClientReply([new(ChatRole.User, first), new(ChatRole.Assistant, firstReply), new(ChatRole.User, second)]);
        Assert.NotEqual("", firstReply);
        Assert.Equal($"{firstReply}{Environment.NewLine}{secondReply}{Environment.NewLine}", run.Out);
        Assert.Contains("kiln: the file has no chat template; using Kiln's plain format (User: / Assistant:).", run.ErrorLines);
        Assert.Equal(2, run.ErrorLines.Count(line => line.StartsWith($"kiln: {ReplyTokens} tokens in ", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Reset_starts_a_new_conversation_and_a_too_long_message_does_not_end_the_chat()
    {
        const string first = "Tell me a story about a cat.", second = "Where is the dog?";
        string tooLong = string.Concat(Enumerable.Repeat("The dog ran to the park. ", 100));
        var run = await CliRun.Of(["chat", "-m", Stories, "-n", $"{ReplyTokens}"], input: $"{first}\n{tooLong}\n/reset\n{second}\n");

        Assert.True(run.ExitCode == 0, run.ToString());
        string firstReply = await ClientReply([new(ChatRole.User, first)]);
        string fresh = await ClientReply([new(ChatRole.User, second)]);
        Assert.Equal($"{firstReply}{Environment.NewLine}{fresh}{Environment.NewLine}", run.Out);
        string error = Assert.Single(run.ErrorLines, line => line.StartsWith("kiln: error:", StringComparison.Ordinal));
        Assert.EndsWith("Type /reset to start over.", error, StringComparison.Ordinal);
        Assert.Contains("kiln: a new conversation.", run.ErrorLines);
    }

    /// <summary>The README's one line of IChatClient (in "Use it in your app"): <see cref="ClientReply"/> compiles it as written.</summary>
    private const string ReadmeChatLine = "IChatClient chat = new KilnChatClient(engine, ChatTemplate.FromModelFile(file, tokenizer), \"stories260K\");";

    [Fact]
    public void The_readme_chat_client_line_is_the_one_these_tests_use() =>
        Assert.Contains($"`{ReadmeChatLine}`", Kiln.Tests.Repository.ReadReadme(), StringComparison.Ordinal);

    private static async Task<string> ClientReply(AIChatMessage[] conversation)
    {
        using var file = ModelFile.Open(Stories);
        var model = ModelCatalog.Load(file);
        var tokenizer = KilnTokenizer.FromModelFile(file);
        await using var engine = new KilnEngine(model, tokens => model.Compile(tokens), tokenizer, new EngineOptions { MaxContext = 512 });
        IChatClient chat = new KilnChatClient(engine, ChatTemplate.FromModelFile(file, tokenizer), "stories260K");
        using var client = chat;
        var response = await chat.GetResponseAsync(conversation, new ChatOptions { MaxOutputTokens = ReplyTokens });
        return response.Text;
    }
}
