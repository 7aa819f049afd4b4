using System.ClientModel;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;

namespace Kiln.Server.Tests;

/// <summary>The README's "Serve" section, run as written against a real server, and the one-call host the CLI uses.</summary>
public sealed class ReadmeTests
{
    private const string ReadmeAddress = "http://127.0.0.1:8080";

    private static readonly string Readme = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "README.md"));

    /// <summary>The README's fenced block of <paramref name="language"/> whose text contains <paramref name="marker"/>.</summary>
    private static string Block(string language, string marker)
    {
        foreach (string part in Readme.Split("```" + language + "\n").Skip(1))
        {
            string block = part[..part.IndexOf("```", StringComparison.Ordinal)];
            if (block.Contains(marker, StringComparison.Ordinal)) return block;
        }
        throw new InvalidOperationException($"The README has no ```{language} block containing '{marker}'.");
    }

    [Fact]
    public async Task TheCurlExampleGetsAChatCompletion()
    {
        await using var server = await LoopbackServer.StartAsync();
        string command = Block("bash", "curl -s http://127.0.0.1:8080/v1/chat/completions").Replace("\\\n", " ").Trim();
        string address = server.Address.ToString().TrimEnd('/');

        string output;
        if (File.Exists("/usr/bin/curl") || File.Exists("/bin/curl"))
        {
            // curl itself, on the command exactly as written but for the server's port.
            var start = new ProcessStartInfo("bash", ["-c", command.Replace(ReadmeAddress, address)]) { RedirectStandardOutput = true, RedirectStandardError = true };
            using var curl = Process.Start(start)!;
            output = await curl.StandardOutput.ReadToEndAsync();
            string errors = await curl.StandardError.ReadToEndAsync();
            await curl.WaitForExitAsync();
            Assert.True(curl.ExitCode == 0, $"curl exited {curl.ExitCode}: {errors}");
        }
        else
        {
            // No curl on this machine: the same request, the body taken from the command's -d '...'.
            int body = command.IndexOf("-d '", StringComparison.Ordinal) + 4;
            using var response = await server.Http.PostJsonAsync("v1/chat/completions", command[body..command.LastIndexOf('\'')]);
            output = await response.Content.ReadAsStringAsync();
        }

        var root = JsonDocument.Parse(output).RootElement;
        Assert.Equal("chat.completion", root.GetProperty("object").GetString());
        var choice = root.GetProperty("choices")[0];
        Assert.Equal("assistant", choice.GetProperty("message").GetProperty("role").GetString());
        var (text, tokens, _) = Stories.Greedy("User: Tell me a story.\n\nAssistant:", 32);
        int nextTurn = text.IndexOf("\nUser:", StringComparison.Ordinal);
        Assert.Equal(nextTurn < 0 ? text : text[..nextTurn], choice.GetProperty("message").GetProperty("content").GetString());
        Assert.Equal(tokens.Length == 32 && nextTurn < 0 ? "length" : "stop", choice.GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task TheOpenAiClientExampleStreamsAReply()
    {
        // The README's code, kept in step with it: the block must read as this test's copy below.
        string[] lines =
        [
            """var client = new ChatClient("stories260K", new ApiKeyCredential("no-key-needed"),""",
            """    new OpenAIClientOptions { Endpoint = new Uri("http://127.0.0.1:8080/v1") });""",
            """await foreach (var update in client.CompleteChatStreamingAsync([new UserChatMessage("Tell me a story.")],""",
            """    new ChatCompletionOptions { MaxOutputTokenCount = 64, Temperature = 0.8f }))""",
            "{",
            "    foreach (var part in update.ContentUpdate) Console.Write(part.Text);",
            "}",
        ];
        Assert.Equal(string.Join("\n", lines) + "\n", Block("csharp", "new ChatClient("));

        await using var server = await LoopbackServer.StartAsync();
        var console = new StringWriter();
        var client = new ChatClient("stories260K", new ApiKeyCredential("no-key-needed"),
            new OpenAIClientOptions { Endpoint = new Uri(server.Address, "v1") });
        await foreach (var update in client.CompleteChatStreamingAsync([new UserChatMessage("Tell me a story.")],
            new ChatCompletionOptions { MaxOutputTokenCount = 64, Temperature = 0.8f }))
        {
            foreach (var part in update.ContentUpdate) console.Write(part.Text);
        }

        Assert.Matches(@"\w", console.ToString());
        Assert.DoesNotContain("\nUser:", console.ToString());
    }

    [Fact]
    public async Task RunAsyncServesAModelFileUntilCancelled()
    {
        // What `kiln serve --model FILE --port N --api-key KEY` calls.
        int port = FreePort();
        using var stop = new CancellationTokenSource();
        var serving = KilnServer.RunAsync(Stories.ModelPath, new KilnServerOptions { Port = port, ApiKey = "sekrit" }, stop.Token);

        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}/"), Timeout = TimeSpan.FromSeconds(60) };
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            Assert.False(serving.IsCompleted, $"the server stopped: {serving.Exception}");
            try
            {
                using var health = await http.GetAsync("health");
                if (health.StatusCode == HttpStatusCode.OK) break;
            }
            catch (HttpRequestException) when (DateTime.UtcNow < deadline)
            {
            }
            await Task.Delay(50);
        }
        using (var completion = await http.PostJsonAsync("v1/completions", """{"model": "stories260K", "prompt": "Lily", "max_tokens": 8, "temperature": 0}""", apiKey: "sekrit"))
        {
            Assert.Equal(HttpStatusCode.OK, completion.StatusCode);
            string text = JsonDocument.Parse(await completion.Content.ReadAsStringAsync()).RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!;
            Assert.Equal(Stories.Greedy("Lily", 8).Text, text);
        }
        using (var unauthorized = await http.PostJsonAsync("v1/completions", """{"prompt": "Lily"}"""))
            Assert.Equal(HttpStatusCode.Unauthorized, unauthorized.StatusCode);

        stop.Cancel();
        await serving.WaitAsync(TimeSpan.FromSeconds(60));
        await Assert.ThrowsAnyAsync<HttpRequestException>(() => http.GetAsync("health"));
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
