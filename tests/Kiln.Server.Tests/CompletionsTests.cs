using System.Net;
using System.Text.Json;
using Kiln.Engine.Serving;

namespace Kiln.Server.Tests;

/// <summary>
/// POST /v1/completions, over plain HTTP: the official OpenAI client (2.15) keeps its legacy completions client
/// internal, so these requests are written as its JSON would be; the chat tests use the client itself.
/// </summary>
public sealed class CompletionsTests
{
    [Fact]
    public async Task AtTemperatureZeroTheServedTextIsWhatTheGeneratorWritesWholeAndStreamed()
    {
        // The server as `kiln serve` makes it: the model file loaded through the catalog, the compiled plan.
        var options = new KilnServerOptions { Engine = LoopbackServer.SmallEngine };
        await using var server = await LoopbackServer.StartAsync(KilnServerModel.Load(Stories.ModelPath, options.Engine), options);
        const string prompt = "Once upon a time, a little bird";
        var expected = Stories.Greedy(prompt, 48);

        string request = $$"""{"model": "stories260K", "prompt": "{{prompt}}", "max_tokens": 48, "temperature": 0}""";
        var root = await Complete(server, request);
        Assert.Equal("text_completion", root.GetProperty("object").GetString());
        Assert.StartsWith("cmpl-", root.GetProperty("id").GetString());
        Assert.Equal("stories260K", root.GetProperty("model").GetString());
        var choice = root.GetProperty("choices").EnumerateArray().Single();
        Assert.Equal(expected.Text, choice.GetProperty("text").GetString());
        Assert.Equal(expected.Tokens.Length == 48 ? "length" : "stop", choice.GetProperty("finish_reason").GetString());
        Assert.Equal(JsonValueKind.Null, choice.GetProperty("logprobs").ValueKind);
        var usage = root.GetProperty("usage");
        Assert.Equal(expected.PromptTokens, usage.GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(expected.Tokens.Length, usage.GetProperty("completion_tokens").GetInt32());
        Assert.Equal(expected.PromptTokens + expected.Tokens.Length, usage.GetProperty("total_tokens").GetInt32());

        string streamed = request.Replace("}", """, "stream": true, "stream_options": {"include_usage": true}}""");
        using var response = await server.Http.PostJsonAsync("v1/completions", streamed, streamed: true);
        var events = await ServerEvents.ReadEventsAsync(response);
        Assert.Equal("[DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonDocument.Parse(e).RootElement).ToList();
        Assert.All(chunks, c => Assert.Equal("text_completion", c.GetProperty("object").GetString()));
        var text = string.Concat(chunks.SelectMany(c => c.GetProperty("choices").EnumerateArray()).Select(c => c.GetProperty("text").GetString()));
        Assert.Equal(expected.Text, text);
        // The last chunk holds the usage and no choice; the one before it ends the choice.
        Assert.Empty(chunks[^1].GetProperty("choices").EnumerateArray());
        Assert.Equal(expected.Tokens.Length, chunks[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(choice.GetProperty("finish_reason").GetString(), chunks[^2].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.All(chunks[..^2], c => Assert.Equal(JsonValueKind.Null, c.GetProperty("choices")[0].GetProperty("finish_reason").ValueKind));
        Assert.All(chunks[..^1], c => Assert.Equal(JsonValueKind.Null, c.GetProperty("usage").ValueKind));
    }

    [Fact]
    public async Task AStopStringEndsTheTextBeforeIt()
    {
        await using var server = await LoopbackServer.StartAsync();
        const string prompt = "Once upon a time";
        string full = Stories.Greedy(prompt, 64).Text;
        string stop = full.Split(' ', StringSplitOptions.RemoveEmptyEntries)[4];
        var root = await Complete(server, $$"""{"prompt": "{{prompt}}", "max_tokens": 64, "temperature": 0, "stop": ["{{stop}}", "never written"]}""");

        var choice = root.GetProperty("choices")[0];
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], choice.GetProperty("text").GetString());
        Assert.Equal("stop", choice.GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task NSamplesAreChoicesEachAsItsSeedGivesAlone()
    {
        await using var server = await LoopbackServer.StartAsync();
        const string request = """{"prompt": "Lily and Ben", "max_tokens": 12, "temperature": 1, "seed": 40, "n": 3}""";
        var choices = (await Complete(server, request)).GetProperty("choices").EnumerateArray().ToList();

        Assert.Equal([0, 1, 2], choices.Select(c => c.GetProperty("index").GetInt32()));
        for (int i = 0; i < 3; i++)
        {
            // Sample i draws with seed + i: the same text a request of one sample with that seed gets.
            var alone = await Complete(server, request.Replace("\"seed\": 40, \"n\": 3", $"\"seed\": {40 + i}"));
            Assert.Equal(alone.GetProperty("choices")[0].GetProperty("text").GetString(), choices[i].GetProperty("text").GetString());
        }
        Assert.NotEqual(choices[0].GetProperty("text").GetString(), choices[1].GetProperty("text").GetString());

        // Streamed, every chunk names its choice, and each choice ends once.
        using var response = await server.Http.PostJsonAsync("v1/completions", request.Replace("}", ", \"stream\": true}"), streamed: true);
        var chunks = (await ServerEvents.ReadEventsAsync(response))[..^1].Select(e => JsonDocument.Parse(e).RootElement.GetProperty("choices")[0]).ToList();
        for (int i = 0; i < 3; i++)
        {
            var mine = chunks.Where(c => c.GetProperty("index").GetInt32() == i).ToList();
            Assert.Equal(choices[i].GetProperty("text").GetString(), string.Concat(mine.Select(c => c.GetProperty("text").GetString())));
            Assert.Single(mine, c => c.GetProperty("finish_reason").ValueKind == JsonValueKind.String);
        }
    }

    [Fact]
    public async Task LogprobsListEachTokenWithItsAlternativesAndOffset()
    {
        await using var server = await LoopbackServer.StartAsync();
        var root = await Complete(server, """{"prompt": "The cat", "max_tokens": 10, "temperature": 0, "logprobs": 3}""");
        var choice = root.GetProperty("choices")[0];
        string text = choice.GetProperty("text").GetString()!;
        var logprobs = choice.GetProperty("logprobs");
        var tokens = logprobs.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()!).ToList();
        var tokenLogprobs = logprobs.GetProperty("token_logprobs").EnumerateArray().Select(t => t.GetSingle()).ToList();
        var top = logprobs.GetProperty("top_logprobs").EnumerateArray().ToList();
        var offsets = logprobs.GetProperty("text_offset").EnumerateArray().Select(t => t.GetInt32()).ToList();

        Assert.Equal(root.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), tokens.Count);
        Assert.Equal(text, string.Concat(tokens)); // whole-character tokens: the text is theirs, in order
        for (int i = 0; i < tokens.Count; i++)
        {
            Assert.InRange(tokenLogprobs[i], -100f, 0f);
            Assert.Equal(text.Length - string.Concat(tokens.Skip(i)).Length, offsets[i]);
            var alternatives = top[i].EnumerateObject().ToList();
            Assert.InRange(alternatives.Count, 1, 3); // three, unless two decode to the same text
            // Greedy: the chosen token is the most likely, with the same logprob.
            Assert.Equal(tokens[i], alternatives[0].Name);
            Assert.Equal(tokenLogprobs[i], alternatives[0].Value.GetSingle());
            Assert.All(alternatives, a => Assert.True(a.Value.GetSingle() <= tokenLogprobs[i]));
        }
    }

    [Fact]
    public async Task ThirtyTwoConcurrentStreamsEachGetTheTextTheirPromptGetsAlone()
    {
        await using var server = await LoopbackServer.StartAsync();
        string[] names = ["Lily", "Ben", "Tom", "Sue", "Max", "Mia", "Sam", "Anna"];
        string[] starts = ["went to the park", "had a red ball", "saw a big dog", "was very happy"];
        var prompts = names.SelectMany(n => starts.Select(s => $"{n} {s}")).ToArray();
        Assert.Equal(32, prompts.Length);

        // Every stream is open before the first ends: each waits at its first chunk until all 32 have one.
        var allStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int started = 0;
        var texts = await Task.WhenAll(prompts.Select(async prompt =>
        {
            using var response = await server.Http.PostJsonAsync("v1/completions", $$"""{"prompt": "{{prompt}}", "max_tokens": 16, "temperature": 0, "stream": true}""", streamed: true);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            var text = new System.Text.StringBuilder();
            bool first = true;
            while (await reader.ReadLineAsync() is { } line)
            {
                if (line.Length == 0 || line == "data: [DONE]") continue;
                text.Append(JsonDocument.Parse(line["data: ".Length..]).RootElement.GetProperty("choices")[0].GetProperty("text").GetString());
                if (!first) continue;
                first = false;
                if (Interlocked.Increment(ref started) == prompts.Length) allStarted.SetResult();
                await allStarted.Task.WaitAsync(TimeSpan.FromSeconds(60));
            }
            return text.ToString();
        }));

        for (int i = 0; i < prompts.Length; i++) Assert.Equal(Stories.Greedy(prompts[i], 16).Text, texts[i]);
        var idle = await server.WaitUntilIdle();
        Assert.Equal(0, idle.KvBlocksUsed);
    }

    private static async Task<JsonElement> Complete(LoopbackServer server, string request)
    {
        using var response = await server.Http.PostJsonAsync("v1/completions", request);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        return JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
    }
}
