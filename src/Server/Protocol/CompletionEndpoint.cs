using System.Text.Json;
using Kiln.Chat;
using Kiln.Engine.Serving;
using Microsoft.AspNetCore.Http;

namespace Kiln.Server.Protocol;

/// <summary>
/// POST /v1/completions and /v1/chat/completions: reads and checks the request, turns it into prompt tokens and
/// generation options, hands it to the engine with the connection's abort token (a client that leaves cancels its
/// request, and the engine frees its KV blocks), and answers whole or streamed.
/// </summary>
internal sealed class CompletionEndpoint(KilnServerModel model, ApiKind kind)
{
    // The fallback chat format marks a user's turn with "User:": a model continuing the text would write the next one.
    private static readonly string[] FallbackStops = ["\nUser:"];

    public async Task HandleAsync(HttpContext context)
    {
        CompletionRequest request;
        IAsyncEnumerable<GenerationUpdate> updates;
        try
        {
            using var body = await JsonDocument.ParseAsync(context.Request.Body, cancellationToken: context.RequestAborted).ConfigureAwait(false);
            request = CompletionRequest.Parse(body.RootElement, kind);
            if (request.Model is { } name && name != model.Id) throw ModelNotFound(name);
            if (model.IsEncoder) throw NotADecoder(model.Id);
            int[] prompt = kind == ApiKind.Chat ? EncodeChat(request.Messages) : EncodePrompt(request);
            if (prompt.Length + 1 > model.Engine.MaxContext)
            {
                throw OpenAiException.BadRequest(
                    $"This model's context holds {model.Engine.MaxContext} tokens; the {PromptParam} take {prompt.Length}, leaving no room to generate.",
                    PromptParam, "context_length_exceeded");
            }
            var options = kind == ApiKind.Chat
                ? request.ToGenerationOptions(prompt.Length, model.Engine.MaxContext, model.EndOfTurnTokens, model.ChatTemplate.IsFallback ? FallbackStops : null)
                : request.ToGenerationOptions(prompt.Length, model.Engine.MaxContext);
            updates = model.Engine.GenerateAsync(prompt, options, context.RequestAborted);
        }
        catch (Exception e) when (Translate(e, context) is { } error)
        {
            if (!context.RequestAborted.IsCancellationRequested) await error.WriteAsync(context.Response).ConfigureAwait(false);
            return;
        }

        var response = new CompletionResponse(model, request);
        try
        {
            if (request.Stream) await response.StreamAsync(context, updates).ConfigureAwait(false);
            else await response.RespondAsync(context, updates).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException && context.RequestAborted.IsCancellationRequested)
        {
            // The client left mid-answer: leaving the stream has cancelled the request already.
        }
    }

    private string PromptParam => kind == ApiKind.Chat ? "messages" : "prompt";

    /// <summary>The error an encoder answers: it embeds text and generates none.</summary>
    public static OpenAiException NotADecoder(string id) => OpenAiException.BadRequest(
        $"The model '{id}' is an encoder: it embeds text (POST /v1/embeddings) and does not generate it.", "model", "model_not_supported");

    public static OpenAiException ModelNotFound(string name) =>
        new(StatusCodes.Status404NotFound, $"The model '{name}' does not exist; this server hosts one model, listed at /v1/models.", "model", "model_not_found");

    /// <summary>The completions prompt's ids: given, or the text encoded as the engine encodes a string prompt (after BOS when the model asks for it).</summary>
    private int[] EncodePrompt(CompletionRequest request)
    {
        var tokenizer = model.Tokenizer!; // HandleAsync turned encoders away
        int[] ids = request.PromptIds ?? tokenizer.Encode(request.PromptText!, tokenizer.AddBosToken);
        if (ids.Length == 0) throw OpenAiException.BadRequest("The prompt is empty: there is nothing to continue.", "prompt");
        return ids;
    }

    /// <summary>
    /// The conversation rendered by the model's chat template and encoded with its special tokens (the template's
    /// markers are control tokens), after BOS unless the template wrote it already.
    /// </summary>
    private int[] EncodeChat(IReadOnlyList<ChatMessage> messages)
    {
        string prompt;
        try
        {
            prompt = model.ChatTemplate.Render(messages, addGenerationPrompt: true);
        }
        catch (ChatTemplateException e) when (e.IsRaisedByTemplate)
        {
            // The template refused the conversation (roles out of order, say): the request's fault, not the server's.
            throw OpenAiException.BadRequest($"The model's chat template refused the messages: {e.Message}", "messages");
        }
        catch (ChatTemplateException e)
        {
            throw new OpenAiException(StatusCodes.Status500InternalServerError, $"The model's chat template failed: {e.Message}", type: "server_error");
        }
        var tokenizer = model.Tokenizer!; // HandleAsync turned encoders away
        string bos = (uint)tokenizer.BosId < (uint)tokenizer.VocabSize ? tokenizer.GetToken(tokenizer.BosId) : "";
        bool addBos = tokenizer.AddBosToken && !(bos.Length > 0 && prompt.StartsWith(bos, StringComparison.Ordinal));
        return tokenizer.Encode(prompt, addBos, parseSpecial: true);
    }

    /// <summary>The OpenAI error for what went wrong before anything was streamed; null for a bug, left to the host.</summary>
    private OpenAiException? Translate(Exception e, HttpContext context) => e switch
    {
        OpenAiException error => error,
        JsonException json => OpenAiException.BadRequest($"The request body is not valid JSON: {json.Message}"),
        EngineOverloadedException overloaded => new OpenAiException(StatusCodes.Status429TooManyRequests, overloaded.Message, code: "rate_limit_exceeded", type: "requests")
        {
            RetryAfterSeconds = (int)Math.Clamp(Math.Ceiling(overloaded.RetryAfter.TotalSeconds), 1, int.MaxValue),
        },
        EngineFaultedException or ObjectDisposedException => new OpenAiException(StatusCodes.Status503ServiceUnavailable, e.Message, type: "server_error"),
        // What the engine itself refuses (a token id outside the vocabulary, more samples than it holds).
        ArgumentException argument => OpenAiException.BadRequest(argument.Message, argument.ParamName switch
        {
            "promptIds" => PromptParam,
            "N" => "n",
            _ => null,
        }),
        // The client left while its body was read: nothing is written back, but the request ends here, not in the host.
        OperationCanceledException when context.RequestAborted.IsCancellationRequested => new OpenAiException(499, "The client closed the request.", type: "client_closed_request"),
        _ => null,
    };
}
