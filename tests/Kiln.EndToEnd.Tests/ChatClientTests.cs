using Kiln.Chat;
using Kiln.Engine.Serving;
using Kiln.Loading;
using Microsoft.Extensions.AI;
using static Kiln.EndToEnd.Tests.EngineTestModel;
using AIChatMessage = Microsoft.Extensions.AI.ChatMessage;
using ChatMessage = Kiln.Chat.ChatMessage;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// KilnChatClient over the engine serving the real stories260K model, which has no chat template: its conversations
/// go through the plain fallback format, and its replies are what the engine generates from that prompt.
/// </summary>
public sealed class ChatClientTests
{
    private const string ModelId = "stories260K";

    private static readonly AIChatMessage[] Conversation = [new(ChatRole.User, "Once upon a time")];

    private static EngineOptions Small() => new()
    {
        BlockSize = 4,
        TokenBudget = 16,
        MaxRunningRequests = 8,
        MaxContext = 256,
        KvCacheBytes = 4 << 20,
    };

    /// <summary>The prompt ids the client sends for <paramref name="conversation"/>: the fallback format after BOS.</summary>
    private static int[] PromptFor(params ChatMessage[] conversation) =>
        Tokenizer.Encode(ChatTemplate.Fallback.Render(conversation), Tokenizer.AddBosToken, parseSpecial: true);

    private static async Task<(string Text, List<ChatResponseUpdate> Updates)> Stream(IChatClient client, IEnumerable<AIChatMessage> messages, ChatOptions? options)
    {
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in client.GetStreamingResponseAsync(messages, options).Patiently()) updates.Add(update);
        return (string.Concat(updates.Select(update => update.Text)), updates);
    }

    [Fact]
    public async Task TheReadmeChatExampleRuns()
    {
        // The README's chat code ("Using it from code"), with its console output captured.
        using var file = ModelFile.Open(StoriesReference.ModelPath("stories260K.gguf"));
        var model = Model;
        var tokenizer = Tokenizer;
        var console = new StringWriter();

        var template = ChatTemplate.FromModelFile(file, tokenizer);
        string prompt = template.Render([new("system", "You are terse."), new("user", "Hello")]); // ends with the reply's start
        await using var engine = new KilnEngine(model, tokens => model.Compile(new PlanOptions(tokens)), tokenizer);
        IChatClient chat = new KilnChatClient(engine, template, "stories260K");
        var reply = await chat.GetResponseAsync("Tell me a story.", new ChatOptions { MaxOutputTokens = 64 }).WaitAsync(Patience);
        console.WriteLine($"{reply.Text} [{reply.FinishReason}, {reply.Usage!.OutputTokenCount} tokens]");

        Assert.Equal("System: You are terse.\n\nUser: Hello\n\nAssistant:", prompt);
        Assert.Matches(@"^[\s\S]+ \[(length|stop), \d+ tokens\]\r?\n$", console.ToString());
    }

    [Fact]
    public async Task StreamingAndWholeRepliesAreTheGreedyContinuationOfTheRenderedPrompt()
    {
        await using var engine = CreateEngine(Small());
        using var client = new KilnChatClient(engine, ChatTemplate.Fallback, ModelId);
        var options = new ChatOptions { MaxOutputTokens = 24, Temperature = 0 };

        var response = await client.GetResponseAsync(Conversation, options).WaitAsync(Patience);
        var (streamed, updates) = await Stream(client, Conversation, options);

        int[] prompt = PromptFor(new ChatMessage("user", "Once upon a time"));
        int[] reference = Reference(prompt, maxTokens: 24);
        var decoder = Tokenizer.CreateStreamingDecoder(previousId: prompt[^1]);
        string expected = string.Concat(reference.Select(decoder.Append)) + decoder.Flush();
        Assert.DoesNotContain("\nUser:", expected); // else the fallback's stop would have cut it
        Assert.NotEmpty(expected);
        Assert.Equal(expected, response.Text);
        Assert.Equal(expected, streamed);

        var finish = reference.Length == 24 ? ChatFinishReason.Length : ChatFinishReason.Stop;
        Assert.Equal(finish, response.FinishReason);
        Assert.Equal(prompt.Length, response.Usage!.InputTokenCount);
        Assert.Equal(reference.Length, response.Usage.OutputTokenCount);
        Assert.Equal(prompt.Length + reference.Length, response.Usage.TotalTokenCount);
        Assert.Equal(ModelId, response.ModelId);
        Assert.Equal(ChatRole.Assistant, Assert.Single(response.Messages).Role);

        // Text deltas first, each with the same ids; then one last update with the finish reason and the usage.
        Assert.All(updates, update => Assert.Equal((ChatRole.Assistant, ModelId, updates[0].ResponseId), (update.Role!.Value, update.ModelId, update.ResponseId)));
        Assert.All(updates[..^1], update => Assert.Null(update.FinishReason));
        Assert.Equal(finish, updates[^1].FinishReason);
        var usage = Assert.IsType<UsageContent>(Assert.Single(updates[^1].Contents)).Details;
        Assert.Equal((prompt.Length, reference.Length), (usage.InputTokenCount, usage.OutputTokenCount));
    }

    [Fact]
    public async Task SamplingOptionsReachTheEngine()
    {
        await using var engine = CreateEngine(Small());
        using var client = new KilnChatClient(engine, ChatTemplate.Fallback, ModelId);
        var options = new ChatOptions { MaxOutputTokens = 16, Temperature = 0.9f, TopP = 0.95f, TopK = 40, Seed = 7 };

        var first = await client.GetResponseAsync(Conversation, options).WaitAsync(Patience);
        var second = await client.GetResponseAsync(Conversation, options).WaitAsync(Patience);
        var direct = await Collect(engine.GenerateAsync(PromptFor(new ChatMessage("user", "Once upon a time")),
            new GenerationOptions { MaxTokens = 16, Temperature = 0.9f, TopP = 0.95f, TopK = 40, Seed = 7, StopStrings = ["\nUser:"] }));

        Assert.Equal(direct.Text, first.Text);
        Assert.Equal(first.Text, second.Text);
        Assert.Equal(direct.Final.Usage!.Value.CompletionTokens, first.Usage!.OutputTokenCount);

        var shorter = await client.GetResponseAsync(Conversation, new ChatOptions { MaxOutputTokens = 3 }).WaitAsync(Patience);
        Assert.Equal(3, shorter.Usage!.OutputTokenCount);
        Assert.Equal(ChatFinishReason.Length, shorter.FinishReason);
    }

    [Fact]
    public async Task AStopSequenceCutsTheReply()
    {
        await using var engine = CreateEngine(Small());
        using var client = new KilnChatClient(engine, ChatTemplate.Fallback, ModelId);
        string whole = (await client.GetResponseAsync(Conversation, new ChatOptions { MaxOutputTokens = 24 }).WaitAsync(Patience)).Text;
        string stop = whole.Substring(whole.Length / 2, 3);

        var response = await client.GetResponseAsync(Conversation, new ChatOptions { MaxOutputTokens = 24, StopSequences = [stop] }).WaitAsync(Patience);

        Assert.Equal(whole[..whole.IndexOf(stop, StringComparison.Ordinal)], response.Text);
        Assert.Equal(ChatFinishReason.Stop, response.FinishReason);
    }

    [Fact]
    public async Task InstructionsJoinTheSystemMessage()
    {
        await using var engine = CreateEngine(Small());
        using var client = new KilnChatClient(engine, ChatTemplate.Fallback, ModelId);
        var options = new ChatOptions { MaxOutputTokens = 1, Instructions = "Tell a story." };

        var alone = await client.GetResponseAsync(Conversation, options).WaitAsync(Patience);
        var joined = await client.GetResponseAsync([new(ChatRole.System, "Be kind."), .. Conversation], options).WaitAsync(Patience);

        Assert.Equal(PromptFor(new("system", "Tell a story."), new("user", "Once upon a time")).Length, alone.Usage!.InputTokenCount);
        Assert.Equal(PromptFor(new("system", "Tell a story.\n\nBe kind."), new("user", "Once upon a time")).Length, joined.Usage!.InputTokenCount);
    }

    [Fact]
    public async Task TheFunctionInvokingPipelineRunsAPlainChat()
    {
        await using var engine = CreateEngine(Small());
        using var client = new KilnChatClient(engine, ChatTemplate.Fallback, ModelId);
        bool called = false;
        var weather = AIFunctionFactory.Create(() => { called = true; return "sunny"; }, "get_weather", "The weather today");
        var options = new ChatOptions { MaxOutputTokens = 24, Tools = [weather] };
        using var pipeline = client.AsBuilder().UseFunctionInvocation().Build();

        var direct = await client.GetResponseAsync(Conversation, new ChatOptions { MaxOutputTokens = 24 }).WaitAsync(Patience);
        var response = await pipeline.GetResponseAsync(Conversation, options).WaitAsync(Patience);
        var (streamed, _) = await Stream(pipeline, Conversation, options);

        Assert.Equal(direct.Text, response.Text);
        Assert.Equal(direct.Text, streamed);
        Assert.Equal(direct.Usage!.OutputTokenCount, response.Usage!.OutputTokenCount);
        Assert.False(called);
        Assert.Equal(KilnChatClient.ProviderName, pipeline.GetService<ChatClientMetadata>()!.ProviderName);
    }

    [Fact]
    public async Task GetServiceDescribesTheClient()
    {
        await using var engine = CreateEngine(Small());
        using var client = new KilnChatClient(engine, ChatTemplate.Fallback, ModelId);

        var metadata = client.GetService<ChatClientMetadata>()!;
        Assert.Equal(("kiln", ModelId), (metadata.ProviderName, metadata.DefaultModelId));
        Assert.Same(engine, client.GetService<KilnEngine>());
        Assert.Same(ChatTemplate.Fallback, client.GetService<ChatTemplate>());
        Assert.Same(client, client.GetService<IChatClient>());
        Assert.Null(client.GetService<string>());
        Assert.Null(client.GetService<ChatClientMetadata>(serviceKey: "other"));
    }

    [Fact]
    public async Task CancellingTheStreamThrowsAndFreesTheRequest()
    {
        var (engine, plan) = CreateHeldEngine(Small(), holdFromStep: 5);
        await using var disposeEngine = engine;
        using var client = new KilnChatClient(engine, ChatTemplate.Fallback, ModelId);
        using var cancel = new CancellationTokenSource();
        int seen = 0;

        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var update in client.GetStreamingResponseAsync(Conversation, new ChatOptions { MaxOutputTokens = 200 }, cancel.Token).Patiently())
            {
                if (++seen != 1) continue;
                cancel.Cancel();
                plan.Release();
            }
        });

        Assert.Equal(1, seen);
        var idle = await WaitUntilIdle(engine);
        Assert.True(idle.GeneratedTokens < 200, $"the cancelled request ran on: {idle}");
    }

    [Fact]
    public async Task LeavingTheStreamEarlyFreesTheRequest()
    {
        var (engine, plan) = CreateHeldEngine(Small(), holdFromStep: 5);
        await using var disposeEngine = engine;
        using var client = new KilnChatClient(engine, ChatTemplate.Fallback, ModelId);

        await foreach (var update in client.GetStreamingResponseAsync(Conversation, new ChatOptions { MaxOutputTokens = 200 }).Patiently())
        {
            break;
        }
        plan.Release();

        var idle = await WaitUntilIdle(engine);
        Assert.True(idle.GeneratedTokens < 200, $"the abandoned request ran on: {idle}");
    }

    [Fact]
    public async Task ContentOtherThanTextIsRefused()
    {
        await using var engine = CreateEngine(Small());
        using var client = new KilnChatClient(engine, ChatTemplate.Fallback, ModelId);
        var picture = new AIChatMessage(ChatRole.User, [new TextContent("What is this?"), new DataContent(new byte[] { 1, 2, 3 }, "image/png")]);

        var error = await Assert.ThrowsAsync<NotSupportedException>(() => client.GetResponseAsync([picture]));
        Assert.Equal("Message 0 (user) holds DataContent; Kiln's chat client renders text only.", error.Message);
    }
}
