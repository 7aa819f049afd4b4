using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace Kiln.Server.Tests;

/// <summary>Plain HTTP to the server, for what the OpenAI client does not expose: raw bodies, headers, event streams.</summary>
internal static class ServerEvents
{
    public static Task<HttpResponseMessage> PostJsonAsync(this HttpClient http, string path, string json, bool streamed = false, string? apiKey = null)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        if (apiKey is not null) request.Headers.Authorization = new("Bearer", apiKey);
        return http.SendAsync(request, streamed ? HttpCompletionOption.ResponseHeadersRead : HttpCompletionOption.ResponseContentRead);
    }

    /// <summary>The data of every server-sent event, in order, checking the framing: "data: ..." lines each followed by a blank one.</summary>
    public static async Task<List<string>> ReadEventsAsync(HttpResponseMessage response)
    {
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var events = new List<string>();
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        while (await reader.ReadLineAsync() is { } line)
        {
            Assert.StartsWith("data: ", line);
            events.Add(line["data: ".Length..]);
            Assert.Equal("", await reader.ReadLineAsync());
        }
        return events;
    }

    /// <summary>The error body of an OpenAI-style error response: its status, message, type, param and code.</summary>
    public static async Task<(int Status, JsonElement Error)> ReadErrorAsync(HttpResponseMessage response)
    {
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        var error = body.GetProperty("error");
        Assert.Equal(JsonValueKind.String, error.GetProperty("message").ValueKind);
        Assert.Equal(JsonValueKind.String, error.GetProperty("type").ValueKind);
        Assert.True(error.TryGetProperty("param", out _));
        Assert.True(error.TryGetProperty("code", out _));
        return ((int)response.StatusCode, error);
    }
}
