using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using Kiln.EndToEnd.Tests;

namespace Kiln.Cli.Tests;

/// <summary>kiln serve over loopback: the server's greedy text is kiln run's, and the API key guards /v1.</summary>
public sealed partial class ServeCommandTests
{
    private static readonly string Stories = StoriesReference.ModelPath("stories260K.gguf");
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task The_servers_greedy_completion_is_kiln_runs_text()
    {
        var output = new StringWriter();
        var errorText = new StringWriter();
        var error = TextWriter.Synchronized(errorText); // written by the server's threads, read by the test's
        string ErrorSoFar() { lock (error) return errorText.ToString(); }
        var console = new CliConsole(TextReader.Null, TextWriter.Synchronized(output), error, outputIsTerminal: false, errorIsTerminal: false);
        using var stop = new CancellationTokenSource();
        var serving = KilnCommandLine.RunAsync(["serve", "--model", Stories, "--port", "0", "--api-key", "sesame", "--max-queue", "8"], console, stop.Token);
        try
        {
            Uri api = await ListeningAddress(ErrorSoFar, serving);
            using var http = new HttpClient { BaseAddress = api, Timeout = Limit };

            using (var anonymous = await http.GetAsync("models"))
                Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);

            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "sesame");
            using var response = await http.PostAsJsonAsync("completions", new { model = "stories260K", prompt = "Once upon a time", max_tokens = 16, temperature = 0 });
            Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync());
            using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
            string served = body.RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!;

            var run = await CliRun.Of(["run", "--model", Stories, "--prompt", "Once upon a time", "--max-tokens", "16", "--temperature", "0"]);
            Assert.True(run.ExitCode == 0, run.ToString());
            Assert.Equal(run.Out, "Once upon a time" + served + Environment.NewLine);
        }
        finally
        {
            stop.Cancel();
        }
        Assert.Equal(ExitCodes.Ok, await serving.WaitAsync(Limit));
        Assert.DoesNotContain("kiln: error", ErrorSoFar(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_chat_is_rendered_with_the_model_files_own_template()
    {
        // The template writes the user's words and nothing else, so the chat's greedy reply is kiln run's continuation
        // of them; the fallback format ("User: ...") would give another text.
        string path = WithChatTemplate("{% for message in messages %}{{ message['content'] }}{% endfor %}");
        var errorText = new StringWriter();
        var error = TextWriter.Synchronized(errorText);
        string ErrorSoFar() { lock (error) return errorText.ToString(); }
        var console = new CliConsole(TextReader.Null, TextWriter.Null, error, outputIsTerminal: false, errorIsTerminal: false);
        using var stop = new CancellationTokenSource();
        var serving = KilnCommandLine.RunAsync(["serve", "--model", path, "--port", "0", "--context", "256", "--parallel", "4", "--kv-cache-mb", "1"], console, stop.Token);
        try
        {
            Uri api = await ListeningAddress(ErrorSoFar, serving, Path.GetFileNameWithoutExtension(path));
            using var http = new HttpClient { BaseAddress = api, Timeout = Limit };
            using var response = await http.PostAsJsonAsync("chat/completions", new
            {
                messages = new[] { new { role = "user", content = "Once upon a time" } },
                max_tokens = 16,
                temperature = 0,
            });
            Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync());
            using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
            string reply = body.RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;

            var run = await CliRun.Of(["run", "--model", Stories, "--prompt", "Once upon a time", "--max-tokens", "16", "--temperature", "0"]);
            Assert.True(run.ExitCode == 0, run.ToString());
            Assert.Equal(run.Out, "Once upon a time" + reply + Environment.NewLine);
            Assert.Contains("256 tokens of context", ErrorSoFar(), StringComparison.Ordinal);
        }
        finally
        {
            stop.Cancel();
            try { Assert.Equal(ExitCodes.Ok, await serving.WaitAsync(Limit)); }
            finally { File.Delete(path); }
        }
    }

    /// <summary>A temporary copy of stories260K.gguf carrying <paramref name="template"/> as its chat template.</summary>
    private static string WithChatTemplate(string template)
    {
        using var source = Kiln.Loading.ModelFile.Open(Stories);
        var writer = new Kiln.Loading.GgufWriter();
        foreach (var (name, entry) in source.Metadata) writer.AddMetadata(name, entry.Value);
        writer.AddMetadata(Kiln.Chat.ChatTemplate.MetadataKey, template);
        foreach (var (name, info) in source.Tensors) writer.AddEncodedTensor(name, info.Type, source.GetTensorBytes(info), info.Dimensions);
        string path = Path.Combine(Path.GetTempPath(), $"kiln-cli-{Guid.NewGuid():N}.gguf");
        writer.Write(path);
        return path;
    }

    /// <summary>The base address of the API, from the line kiln prints once the server listens.</summary>
    private static async Task<Uri> ListeningAddress(Func<string> error, Task<int> serving, string modelId = "stories260K")
    {
        var deadline = DateTime.UtcNow + Limit;
        while (DateTime.UtcNow < deadline)
        {
            var match = ServingLine().Match(error());
            if (match.Success && match.Groups["id"].Value != modelId) Assert.Fail($"kiln serve named the model {match.Groups["id"].Value}, not {modelId}");
            if (match.Success) return new Uri(match.Groups["url"].Value + "/");
            if (serving.IsCompleted) Assert.Fail($"kiln serve ended with {await serving}:\n{error()}");
            await Task.Delay(50);
        }
        Assert.Fail($"kiln serve printed no address within {Limit.TotalSeconds} s:\n{error()}");
        return null!;
    }

    [GeneratedRegex(@"kiln: serving (?<id>\S+) at (?<url>http://127\.0\.0\.1:\d+/v1) \(Ctrl\+C stops\)")]
    private static partial Regex ServingLine();
}
