using System.ClientModel;
using System.ClientModel.Primitives;
using System.Text.Json;
using Kiln.Engine.Serving;
using Kiln.Testing;
using Microsoft.AspNetCore.Builder;
using OpenAI.Chat;

namespace Kiln.Server.Tests;

/// <summary>POST /v1/chat/completions through the official OpenAI client: whole, streamed, stopped, sampled, and refused.</summary>
public sealed class ChatTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    /// <summary>stories260K has no chat template: the fallback format renders "User: ...", and a reply stops before the next "\nUser:".</summary>
    private static (string Text, int[] Tokens, int PromptTokens) GreedyReply(string userMessage, int maxTokens)
    {
        var (text, tokens, promptTokens) = Stories.Greedy($"User: {userMessage}\n\nAssistant:", maxTokens);
        int stop = text.IndexOf("\nUser:", StringComparison.Ordinal);
        return (stop < 0 ? text : text[..stop], tokens, promptTokens);
    }

    [Fact]
    public async Task AtTemperatureZeroTheReplyIsTheGreedyContinuationOfTheRenderedChat()
    {
        await using var server = await LoopbackServer.StartAsync();
        var chat = server.OpenAI().GetChatClient("stories260K");
        var expected = GreedyReply("Tell me a story about a cat.", 40);

        ChatCompletion completion = await chat.CompleteChatAsync(
            [new UserChatMessage("Tell me a story about a cat.")],
            new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 40, EndUserId = "test-user" });

        Assert.Equal(expected.Text, completion.Content.Single().Text);
        Assert.Equal(ChatMessageRole.Assistant, completion.Role);
        Assert.StartsWith("chatcmpl-", completion.Id);
        Assert.Equal("stories260K", completion.Model);
        Assert.Equal(expected.PromptTokens, completion.Usage.InputTokenCount);
        Assert.Equal(completion.Usage.InputTokenCount + completion.Usage.OutputTokenCount, completion.Usage.TotalTokenCount);
        Assert.Equal(expected.Tokens.Length == 40 ? ChatFinishReason.Length : ChatFinishReason.Stop, completion.FinishReason);
        Assert.Null(completion.ContentTokenLogProbabilities.FirstOrDefault());
    }

    [Fact]
    public async Task AStreamedReplyIsTheSameTextInChunksEndingWithItsReasonAndUsage()
    {
        await using var server = await LoopbackServer.StartAsync();
        var chat = server.OpenAI().GetChatClient("stories260K");
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 24 };
        ChatCompletion whole = await chat.CompleteChatAsync([new UserChatMessage("Lily saw a bird.")], options);

        var text = new System.Text.StringBuilder();
        var updates = new List<StreamingChatCompletionUpdate>();
        await foreach (var update in chat.CompleteChatStreamingAsync([new UserChatMessage("Lily saw a bird.")], options))
        {
            updates.Add(update);
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
        }

        Assert.Equal(whole.Content.Single().Text, text.ToString());
        Assert.Equal(ChatMessageRole.Assistant, updates[0].Role);
        Assert.True(updates.Count > 3, $"only {updates.Count} updates");
        Assert.Single(updates, u => u.FinishReason is not null);
        Assert.Equal(whole.FinishReason, updates.Single(u => u.FinishReason is not null).FinishReason);
        var usage = updates[^1].Usage; // the client asks for it (stream_options.include_usage)
        Assert.NotNull(usage);
        Assert.Equal(whole.Usage.OutputTokenCount, usage.OutputTokenCount);
        Assert.Equal(whole.Usage.InputTokenCount, usage.InputTokenCount);
        Assert.All(updates, u => Assert.Equal(updates[0].CompletionId, u.CompletionId));
    }

    [Fact]
    public async Task AStopSequenceEndsTheReplyBeforeIt()
    {
        await using var server = await LoopbackServer.StartAsync();
        string full = GreedyReply("Once upon a time", 60).Text;
        string stop = full.Split(' ', StringSplitOptions.RemoveEmptyEntries)[3];
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 60 };
        options.StopSequences.Add(stop);

        ChatCompletion completion = await server.OpenAI().GetChatClient("stories260K").CompleteChatAsync([new UserChatMessage("Once upon a time")], options);
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], completion.Content.Single().Text);
        Assert.Equal(ChatFinishReason.Stop, completion.FinishReason);
    }

    [Fact]
    public async Task NChoicesComeBackThroughTheClientsProtocolMethodEachAsItsSeedGivesAlone()
    {
        await using var server = await LoopbackServer.StartAsync();
        var chat = server.OpenAI().GetChatClient("stories260K");
        const string request = """{"model": "stories260K", "messages": [{"role": "user", "content": "Ben had a toy."}], "max_tokens": 12, "temperature": 1.2, "seed": 7, "n": 3}""";
        ClientResult result = await chat.CompleteChatAsync(BinaryContent.Create(BinaryData.FromString(request)));
        var choices = JsonDocument.Parse(result.GetRawResponse().Content).RootElement.GetProperty("choices").EnumerateArray().ToList();

        Assert.Equal([0, 1, 2], choices.Select(c => c.GetProperty("index").GetInt32()));
        for (int i = 0; i < 3; i++)
        {
#pragma warning disable OPENAI001 // Seed is marked experimental in the client; the server implements it
            var alone = await chat.CompleteChatAsync([new UserChatMessage("Ben had a toy.")],
                new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 1.2f, Seed = 7 + i });
#pragma warning restore OPENAI001
            Assert.Equal(alone.Value.Content.Single().Text, choices[i].GetProperty("message").GetProperty("content").GetString());
        }
    }

    [Fact]
    public async Task LogprobsGiveEachTokenItsLogprobBytesAndAlternatives()
    {
        await using var server = await LoopbackServer.StartAsync();
        ChatCompletion completion = await server.OpenAI().GetChatClient("stories260K").CompleteChatAsync(
            [new UserChatMessage("The dog")],
            new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 12, IncludeLogProbabilities = true, TopLogProbabilityCount = 3 });

        var tokens = completion.ContentTokenLogProbabilities;
        Assert.Equal(completion.Usage.OutputTokenCount, tokens.Count);
        Assert.Equal(completion.Content.Single().Text, string.Concat(tokens.Select(t => t.Token)));
        foreach (var token in tokens)
        {
            Assert.InRange(token.LogProbability, -100f, 0f);
            Assert.Equal(System.Text.Encoding.UTF8.GetBytes(token.Token), token.Utf8Bytes!.Value.ToArray());
            Assert.Equal(3, token.TopLogProbabilities.Count);
            // Greedy: the token is the most likely one; the rest follow in order.
            Assert.Equal(token.Token, token.TopLogProbabilities[0].Token);
            Assert.Equal(token.LogProbability, token.TopLogProbabilities[0].LogProbability);
            Assert.Equal(token.TopLogProbabilities.Select(t => t.LogProbability).OrderDescending(), token.TopLogProbabilities.Select(t => t.LogProbability));
        }
    }

    [Fact]
    public async Task ThirtyTwoConcurrentStreamsEachGetTheReplyTheirMessageGetsAlone()
    {
        await using var server = await LoopbackServer.StartAsync();
        var chat = server.OpenAI().GetChatClient("stories260K");
        var messages = Enumerable.Range(0, 32).Select(i => $"Tell me about toy number {i}.").ToArray();
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 16 };

        // Every stream is open before any ends: each waits at its first update until all 32 have one.
        var allStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int started = 0;
        var replies = await Task.WhenAll(messages.Select(async message =>
        {
            var text = new System.Text.StringBuilder();
            bool first = true;
            await foreach (var update in chat.CompleteChatStreamingAsync([new UserChatMessage(message)], options))
            {
                foreach (var part in update.ContentUpdate) text.Append(part.Text);
                if (!first) continue;
                first = false;
                if (Interlocked.Increment(ref started) == messages.Length) allStarted.SetResult();
                await allStarted.Task.WaitAsync(Patience);
            }
            return text.ToString();
        }));

        for (int i = 0; i < messages.Length; i++) Assert.Equal(GreedyReply(messages[i], 16).Text, replies[i]);
        Assert.Equal(0, (await server.WaitUntilIdle()).KvBlocksUsed);
    }

    [Fact]
    public async Task LeavingAStreamEarlyCancelsTheRequestAndFreesItsBlocks()
    {
        // The plan holds its sixth step until the server has seen the client go.
        HeldPlan? plan = null;
        var aborted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await LoopbackServer.StartAsync(plan: tokens => plan = new HeldPlan(Stories.CompilePlan(tokens), holdFromStep: 6, Patience),
            configure: app => app.Use((context, next) =>
            {
                context.RequestAborted.Register(() => aborted.TrySetResult());
                return next(context);
            }));
        var chat = server.OpenAI().GetChatClient("stories260K");
        int seen = 0;
        await foreach (var update in chat.CompleteChatStreamingAsync([new UserChatMessage("Once upon a time")], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 300 }))
        {
            if (++seen == 3) break; // the role, then two tokens
        }

        await aborted.Task.WaitAsync(Patience);
        plan!.Release(); // the engine registered on the abort token after the test did, so its cancel went first: the held step is the last
        var idle = await server.WaitUntilIdle();
        Assert.Equal(0, idle.KvBlocksUsed);
        Assert.True(idle.GeneratedTokens < GreedyReply("Once upon a time", 300).Tokens.Length, $"the abandoned request ran on: {idle}");
    }

    [Fact]
    public async Task RefusalsReachTheClientAsItsExceptionsWithOpenAiStatuses()
    {
        HeldPlan? plan = null;
        var options = new KilnServerOptions { ApiKey = "sekrit", Engine = LoopbackServer.SmallEngine with { MaxRunningRequests = 1, MaxQueuedRequests = 0 } };
        await using var server = await LoopbackServer.StartAsync(options, tokens => plan = new HeldPlan(Stories.CompilePlan(tokens), holdFromStep: 1, Patience));
        var chat = server.OpenAI("sekrit").GetChatClient("stories260K");
        UserChatMessage[] hello = [new UserChatMessage("Hello")];

        Assert.Equal(400, (await Assert.ThrowsAsync<ClientResultException>(() => chat.CompleteChatAsync(hello, new ChatCompletionOptions { Temperature = -1 }))).Status);
        Assert.Equal(400, (await Assert.ThrowsAsync<ClientResultException>(() => chat.CompleteChatAsync(hello, new ChatCompletionOptions { MaxOutputTokenCount = 0 }))).Status);
        Assert.Equal(404, (await Assert.ThrowsAsync<ClientResultException>(() => server.OpenAI("sekrit").GetChatClient("gpt-4o").CompleteChatAsync(hello))).Status);
        Assert.Equal(401, (await Assert.ThrowsAsync<ClientResultException>(() => server.OpenAI("wrong").GetChatClient("stories260K").CompleteChatAsync(hello))).Status);

        // The one slot is taken and there is no waiting room: the next request is 429, with Retry-After.
        var running = chat.CompleteChatStreamingAsync(hello, new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 8 }).GetAsyncEnumerator();
        Assert.True(await running.MoveNextAsync().AsTask().WaitAsync(Patience));
        var overloaded = await Assert.ThrowsAsync<ClientResultException>(() => chat.CompleteChatAsync(hello));
        Assert.Equal(429, overloaded.Status);
        Assert.True(overloaded.GetRawResponse()!.Headers.TryGetValue("Retry-After", out string? retryAfter));
        Assert.True(int.Parse(retryAfter!) >= 1);

        plan!.Release();
        var text = new System.Text.StringBuilder();
        do
        {
            foreach (var part in running.Current.ContentUpdate) text.Append(part.Text);
        }
        while (await running.MoveNextAsync().AsTask().WaitAsync(Patience));
        await running.DisposeAsync();
        Assert.Equal(GreedyReply("Hello", 8).Text, text.ToString());
    }

    [Fact]
    public async Task TheModelFilesTemplateRendersTheChatAndAnEndOfTurnTokenEndsTheReply()
    {
        // A ChatML-like template that refuses a conversation opening with the assistant, and one of the tokens the
        // reply would generate renamed <|im_end|>, the end of a ChatML turn. (The template leaves <|im_end|> out of
        // the prompt, so the renamed token changes nothing before the reply.)
        const string template =
            "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversations start with a user or system message.') }}{% endif %}"
            + "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        const string message = "Tell me a story.";
        const string rendered = $"<|im_start|>user\n{message}\n<|im_start|>assistant\n";
        int[] prompt = Stories.Tokenizer.Encode(rendered, Stories.Tokenizer.AddBosToken);
        int[] reply = Stories.Greedy(prompt, 40).Tokens;
        int stopAt = Enumerable.Range(3, reply.Length - 3).First(i =>
            Array.IndexOf(prompt, reply[i]) < 0 && Array.IndexOf(reply, reply[i]) == i && Stories.Tokenizer.GetTokenType(reply[i]) == Tokenization.TokenType.Normal);
        string path = Stories.WriteModelWith(template, new Dictionary<int, string> { [reply[stopAt]] = "<|im_end|>" });
        try
        {
            var options = new KilnServerOptions { Engine = LoopbackServer.SmallEngine };
            await using var server = await LoopbackServer.StartAsync(KilnServerModel.Load(path, options.Engine), options);
            Assert.Equal([reply[stopAt]], server.Model.EndOfTurnTokens);
            Assert.False(server.Model.ChatTemplate.IsFallback);
            var served = server.Model.Tokenizer!;
            Assert.True(prompt.SequenceEqual(served.Encode(rendered, served.AddBosToken, parseSpecial: true)), "renaming the token changed how the prompt encodes");

            var chat = server.OpenAI().GetChatClient(Path.GetFileNameWithoutExtension(path));
            ChatCompletion completion = await chat.CompleteChatAsync([new UserChatMessage(message)], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 40 });
            Assert.Equal(Stories.Decode(reply[..stopAt], after: prompt[^1]), completion.Content.Single().Text);
            Assert.Equal(ChatFinishReason.Stop, completion.FinishReason);
            Assert.Equal(stopAt, completion.Usage.OutputTokenCount);
            Assert.Equal(prompt.Length, completion.Usage.InputTokenCount);

            var refused = await Assert.ThrowsAsync<ClientResultException>(() => chat.CompleteChatAsync([new AssistantChatMessage("Hi."), new UserChatMessage(message)]));
            Assert.Equal(400, refused.Status);
            Assert.Contains("start with a user or system message", refused.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
