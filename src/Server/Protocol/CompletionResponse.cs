using System.Buffers;
using System.Text;
using System.Text.Json;
using Kiln.Engine.Scheduling;
using Kiln.Engine.Serving;
using Microsoft.AspNetCore.Http;

namespace Kiln.Server.Protocol;

/// <summary>
/// Writes one request's answer as OpenAI shapes it, from the engine's stream of updates: a whole
/// <c>text_completion</c> or <c>chat.completion</c> object, or the same as server-sent events of chunks ending in
/// <c>data: [DONE]</c>. Choices are the request's samples, in <see cref="GenerationUpdate.Index"/> order.
/// </summary>
internal sealed class CompletionResponse
{
    private static readonly byte[] DataPrefix = "data: "u8.ToArray();
    private static readonly byte[] EventEnd = "\n\n"u8.ToArray();
    private static readonly byte[] Done = "data: [DONE]\n\n"u8.ToArray();

    private readonly KilnServerModel _model;
    private readonly CompletionRequest _request;
    private readonly string _id;
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private readonly ArrayBufferWriter<byte> _buffer = new(1024);
    private readonly Utf8JsonWriter _json;
    private readonly Choice[] _choices;

    public CompletionResponse(KilnServerModel model, CompletionRequest request)
    {
        _model = model;
        _request = request;
        _id = (request.Kind == ApiKind.Chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        _json = new Utf8JsonWriter(_buffer, JsonOutput.Options);
        _choices = new Choice[request.N];
        for (int i = 0; i < _choices.Length; i++) _choices[i] = new Choice();
    }

    private bool IsChat => _request.Kind == ApiKind.Chat;

    /// <summary>Collects every sample, then answers with one JSON object (or the error that ended a sample).</summary>
    public async Task RespondAsync(HttpContext context, IAsyncEnumerable<GenerationUpdate> updates)
    {
        await foreach (var update in updates.ConfigureAwait(false))
        {
            var choice = _choices[update.Index];
            if (update.IsFinal) choice.End(update);
            else choice.AddToken(update, _request.Logprobs);
        }
        if (context.RequestAborted.IsCancellationRequested) return; // no one is left to answer
        foreach (var choice in _choices)
        {
            if (Failure(choice.Final) is { } failure)
            {
                await failure.WriteAsync(context.Response).ConfigureAwait(false);
                return;
            }
        }

        _json.WriteStartObject();
        WriteHeader(IsChat ? "chat.completion" : "text_completion");
        _json.WriteStartArray("choices");
        for (int i = 0; i < _choices.Length; i++)
        {
            var choice = _choices[i];
            _json.WriteStartObject();
            _json.WriteNumber("index", i);
            if (IsChat)
            {
                _json.WriteStartObject("message");
                _json.WriteString("role", "assistant");
                _json.WriteString("content", choice.Text.ToString());
                _json.WriteEndObject();
            }
            else
            {
                _json.WriteString("text", choice.Text.ToString());
            }
            WriteLogprobs(choice.Tokens);
            _json.WriteString("finish_reason", FinishReasonText(choice.Final.FinishReason));
            _json.WriteEndObject();
        }
        _json.WriteEndArray();
        WriteUsage();
        _json.WriteEndObject();
        _json.Flush();

        context.Response.ContentType = "application/json";
        await context.Response.Body.WriteAsync(_buffer.WrittenMemory, context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>
    /// Streams a chunk per update that adds text (or a token, with logprobs), a chunk with each sample's finish
    /// reason, the usage chunk if asked for, then <c>[DONE]</c>. A sample that fails ends the stream with an error event.
    /// </summary>
    public async Task StreamAsync(HttpContext context, IAsyncEnumerable<GenerationUpdate> updates)
    {
        var response = context.Response;
        var aborted = context.RequestAborted;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        // Headers go out now: the client knows the engine took the request even while it waits for a slot.
        await response.StartAsync(aborted).ConfigureAwait(false);
        await response.Body.FlushAsync(aborted).ConfigureAwait(false);

        // A chat stream opens every choice with the assistant's role, as OpenAI's does.
        if (IsChat)
        {
            for (int i = 0; i < _choices.Length; i++) WriteChunk(i, "", role: true, token: null, finishReason: null);
            await SendAsync(response, aborted).ConfigureAwait(false);
        }

        await foreach (var update in updates.ConfigureAwait(false))
        {
            var choice = _choices[update.Index];
            if (!update.IsFinal)
            {
                var token = choice.AddToken(update, _request.Logprobs);
                // Text held back (part of a character, a possible stop string) with no token to report: nothing to say yet.
                if (update.Text.Length == 0 && token is null) continue;
                WriteChunk(update.Index, update.Text, role: false, token, finishReason: null);
                await SendAsync(response, aborted).ConfigureAwait(false);
                continue;
            }

            choice.End(update);
            if (Failure(update) is { } failure)
            {
                if (aborted.IsCancellationRequested) return;
                BeginEvent();
                _json.WriteStartObject();
                failure.WriteErrorObject(_json);
                _json.WriteEndObject();
                EndEvent();
                await SendAsync(response, aborted).ConfigureAwait(false);
                await response.Body.WriteAsync(Done, aborted).ConfigureAwait(false);
                return;
            }
            if (update.Text.Length > 0) WriteChunk(update.Index, update.Text, role: false, token: null, finishReason: null);
            WriteChunk(update.Index, "", role: false, token: null, FinishReasonText(update.FinishReason));
            await SendAsync(response, aborted).ConfigureAwait(false);
        }

        if (_request.IncludeUsage)
        {
            BeginEvent();
            _json.WriteStartObject();
            WriteHeader(IsChat ? "chat.completion.chunk" : "text_completion");
            _json.WriteStartArray("choices");
            _json.WriteEndArray();
            WriteUsage();
            _json.WriteEndObject();
            EndEvent();
            await SendAsync(response, aborted).ConfigureAwait(false);
        }
        await response.Body.WriteAsync(Done, aborted).ConfigureAwait(false);
        await response.Body.FlushAsync(aborted).ConfigureAwait(false);
    }

    /// <summary>The error a sample ended with, if it did not end normally (the engine failed or was shut down).</summary>
    private static OpenAiException? Failure(GenerationUpdate final) => final.FinishReason switch
    {
        FinishReason.Error => new OpenAiException(StatusCodes.Status500InternalServerError, final.ErrorMessage ?? "The engine failed.", type: "server_error"),
        FinishReason.Cancelled => new OpenAiException(StatusCodes.Status503ServiceUnavailable, final.ErrorMessage ?? "The request was cancelled.", type: "server_error"),
        _ => null,
    };

    /// <summary>Writes the events in the buffer (one per JSON object written since the last send) and flushes them to the client.</summary>
    private async Task SendAsync(HttpResponse response, CancellationToken aborted)
    {
        _json.Flush();
        await response.Body.WriteAsync(_buffer.WrittenMemory, aborted).ConfigureAwait(false);
        await response.Body.FlushAsync(aborted).ConfigureAwait(false);
        _buffer.ResetWrittenCount();
        _json.Reset();
    }

    /// <summary>One chunk event: a choice's text delta (and the token's logprobs), or its finish reason.</summary>
    private void WriteChunk(int index, string text, bool role, TokenEntry? token, string? finishReason)
    {
        BeginEvent();
        _json.WriteStartObject();
        WriteHeader(IsChat ? "chat.completion.chunk" : "text_completion");
        _json.WriteStartArray("choices");
        _json.WriteStartObject();
        _json.WriteNumber("index", index);
        if (IsChat)
        {
            _json.WriteStartObject("delta");
            if (role) _json.WriteString("role", "assistant");
            if (finishReason is null) _json.WriteString("content", text);
            _json.WriteEndObject();
        }
        else
        {
            _json.WriteString("text", text);
        }
        if (token is { } entry) WriteLogprobs([entry]);
        else _json.WriteNull("logprobs");
        _json.WriteString("finish_reason", finishReason);
        _json.WriteEndObject();
        _json.WriteEndArray();
        // With include_usage, OpenAI's chunks carry "usage": null until the last.
        if (_request.IncludeUsage) _json.WriteNull("usage");
        _json.WriteEndObject();
        EndEvent();
    }

    private void BeginEvent()
    {
        _json.Flush();
        _buffer.Write(DataPrefix);
        _json.Reset();
    }

    private void EndEvent()
    {
        _json.Flush();
        _buffer.Write(EventEnd);
        _json.Reset();
    }

    private void WriteHeader(string objectType)
    {
        _json.WriteString("id", _id);
        _json.WriteString("object", objectType);
        _json.WriteNumber("created", _created);
        _json.WriteString("model", _model.Id);
    }

    /// <summary>Token counts over every sample: the prompt once (computed once), completions summed.</summary>
    private void WriteUsage()
    {
        int prompt = 0, cached = 0, completion = 0;
        foreach (var choice in _choices)
        {
            if (choice.Final.Usage is not { } usage) continue;
            prompt = usage.PromptTokens;
            completion += usage.CompletionTokens;
        }
        if (_choices[0].Final.Usage is { } first) cached = first.CachedPromptTokens;
        _json.WriteStartObject("usage");
        _json.WriteNumber("prompt_tokens", prompt);
        _json.WriteNumber("completion_tokens", completion);
        _json.WriteNumber("total_tokens", prompt + completion);
        _json.WriteStartObject("prompt_tokens_details");
        _json.WriteNumber("cached_tokens", cached);
        _json.WriteEndObject();
        _json.WriteEndObject();
    }

    /// <summary>
    /// <c>"logprobs"</c> for these tokens, or null when the request did not ask: chat's <c>{"content": [...]}</c> of
    /// token objects, or the completions endpoint's parallel arrays.
    /// </summary>
    private void WriteLogprobs(IReadOnlyList<TokenEntry> tokens)
    {
        if (!_request.Logprobs)
        {
            _json.WriteNull("logprobs");
            return;
        }
        _json.WriteStartObject("logprobs");
        if (IsChat)
        {
            _json.WriteStartArray("content");
            foreach (var token in tokens)
            {
                _json.WriteStartObject();
                WriteTokenFields(token.TokenId, token.Logprob);
                _json.WriteStartArray("top_logprobs");
                foreach (var alternative in token.Top.Span)
                {
                    _json.WriteStartObject();
                    WriteTokenFields(alternative.TokenId, alternative.Logprob);
                    _json.WriteEndObject();
                }
                _json.WriteEndArray();
                _json.WriteEndObject();
            }
            _json.WriteEndArray();
        }
        else
        {
            _json.WriteStartArray("tokens");
            foreach (var token in tokens) _json.WriteStringValue(_model.TokenText(token.TokenId));
            _json.WriteEndArray();
            _json.WriteStartArray("token_logprobs");
            foreach (var token in tokens) _json.WriteNumberValue(Finite(token.Logprob));
            _json.WriteEndArray();
            _json.WriteStartArray("top_logprobs");
            foreach (var token in tokens)
            {
                _json.WriteStartObject();
                foreach (var alternative in token.Top.Span) _json.WriteNumber(_model.TokenText(alternative.TokenId), Finite(alternative.Logprob));
                _json.WriteEndObject();
            }
            _json.WriteEndArray();
            _json.WriteStartArray("text_offset");
            foreach (var token in tokens) _json.WriteNumberValue(token.TextOffset);
            _json.WriteEndArray();
        }
        _json.WriteEndObject();
    }

    private void WriteTokenFields(int tokenId, float logprob)
    {
        string text = _model.TokenText(tokenId);
        _json.WriteString("token", text);
        _json.WriteNumber("logprob", Finite(logprob));
        _json.WriteStartArray("bytes");
        foreach (byte b in Encoding.UTF8.GetBytes(text)) _json.WriteNumberValue(b);
        _json.WriteEndArray();
    }

    /// <summary>JSON has no infinities: a token the model rules out entirely reads -9999, as OpenAI writes it.</summary>
    private static float Finite(float logprob) => float.IsFinite(logprob) ? logprob : -9999f;

    private static string? FinishReasonText(FinishReason reason) => reason switch
    {
        FinishReason.Stop => "stop",
        FinishReason.Length => "length",
        _ => null,
    };

    /// <summary>A generated token's logprobs, and where its text starts in its choice's text.</summary>
    private readonly record struct TokenEntry(int TokenId, float Logprob, ReadOnlyMemory<TokenLogprob> Top, int TextOffset);

    /// <summary>One sample's answer so far.</summary>
    private sealed class Choice
    {
        public StringBuilder Text { get; } = new();

        public List<TokenEntry> Tokens { get; } = [];

        public GenerationUpdate Final { get; private set; }

        /// <summary>Appends a token's text; returns its logprob entry when the request asked for logprobs.</summary>
        public TokenEntry? AddToken(in GenerationUpdate update, bool logprobs)
        {
            TokenEntry? entry = logprobs ? new TokenEntry(update.TokenId, update.Logprob ?? float.NaN, update.TopLogprobs, Text.Length) : null;
            if (entry is { } token) Tokens.Add(token);
            Text.Append(update.Text);
            return entry;
        }

        public void End(in GenerationUpdate final)
        {
            Text.Append(final.Text);
            Final = final;
        }
    }
}
