using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Kiln.Server.Protocol;

/// <summary>
/// A request the server answers with an error status and OpenAI's error body,
/// <c>{"error": {"message", "type", "param", "code"}}</c>, which OpenAI's clients turn into their own exceptions.
/// </summary>
internal sealed class OpenAiException(int status, string message, string? param = null, string? code = null, string type = "invalid_request_error")
    : Exception(message)
{
    public int Status { get; } = status;

    /// <summary>The request field at fault, as the API names it (<c>temperature</c>, <c>messages</c>).</summary>
    public string? Param { get; } = param;

    public string? Code { get; } = code;

    public string Type { get; } = type;

    /// <summary>Seconds a client should wait before trying again (429 and 503), sent as Retry-After.</summary>
    public int? RetryAfterSeconds { get; init; }

    public static OpenAiException BadRequest(string message, string? param = null, string? code = null) => new(StatusCodes.Status400BadRequest, message, param, code);

    public Task WriteAsync(HttpResponse response)
    {
        response.StatusCode = Status;
        if (RetryAfterSeconds is { } seconds) response.Headers.RetryAfter = seconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (Status == StatusCodes.Status401Unauthorized) response.Headers.WWWAuthenticate = "Bearer";
        response.ContentType = "application/json";
        return response.Body.WriteAsync(ToJson()).AsTask();
    }

    /// <summary>The error body, UTF-8.</summary>
    public byte[] ToJson()
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        using (var json = new Utf8JsonWriter(buffer, JsonOutput.Options))
        {
            json.WriteStartObject();
            WriteErrorObject(json);
            json.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>Writes <c>"error": {...}</c> into an object the caller has opened (a stream's last event, too).</summary>
    public void WriteErrorObject(Utf8JsonWriter json)
    {
        json.WriteStartObject("error");
        json.WriteString("message", Message);
        json.WriteString("type", Type);
        json.WriteString("param", Param);
        json.WriteString("code", Code);
        json.WriteEndObject();
    }
}
