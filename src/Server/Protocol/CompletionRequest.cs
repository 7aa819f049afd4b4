using System.Text;
using System.Text.Json;
using Kiln.Chat;
using Kiln.Engine.Serving;

namespace Kiln.Server.Protocol;

/// <summary>Which of OpenAI's two generation endpoints a request came to.</summary>
internal enum ApiKind
{
    /// <summary>POST /v1/completions: a prompt, continued.</summary>
    Completions,

    /// <summary>POST /v1/chat/completions: messages, rendered through the model's chat template.</summary>
    Chat,
}

/// <summary>
/// A completions or chat-completions request body, read and checked field by field. Sampling fields follow OpenAI's
/// ranges and defaults (temperature 1, top_p 1, n 1; completions generate 16 tokens unless told, chats up to the
/// context's end), plus top_k, min_p and repetition_penalty as vLLM spells them. Fields that would change the output
/// in ways this server does not implement (penalties, logit bias, tools, response formats, echo) are refused unless
/// left at their defaults: never silently ignored.
/// </summary>
internal sealed class CompletionRequest
{
    /// <summary>The most alternatives the completions endpoint's <c>logprobs</c> asks for, as OpenAI limits it.</summary>
    public const int MaxCompletionLogprobs = 5;

    private const int CompletionsDefaultMaxTokens = 16;

    private static readonly string[] ChatRoles = ["system", "developer", "user", "assistant", "tool"];

    public required ApiKind Kind { get; init; }

    /// <summary>The model the client named; null when it named none (the server hosts one).</summary>
    public string? Model { get; init; }

    /// <summary>Completions: the prompt as text (encoded by the server) ...</summary>
    public string? PromptText { get; init; }

    /// <summary>... or as token ids.</summary>
    public int[]? PromptIds { get; init; }

    /// <summary>Chat: the conversation so far.</summary>
    public IReadOnlyList<ChatMessage> Messages { get; init; } = [];

    /// <summary>Tokens to generate at most; null for the endpoint's default.</summary>
    public int? MaxTokens { get; init; }

    public float Temperature { get; init; } = 1f;

    public float TopP { get; init; } = 1f;

    public int TopK { get; init; }

    public float MinP { get; init; }

    public float RepetitionPenalty { get; init; } = 1f;

    public ulong? Seed { get; init; }

    public IReadOnlyList<string> Stop { get; init; } = [];

    public int N { get; init; } = 1;

    public bool Stream { get; init; }

    /// <summary>A streamed response ends with a chunk holding the usage (stream_options.include_usage).</summary>
    public bool IncludeUsage { get; init; }

    public bool Logprobs { get; init; }

    /// <summary>Alternatives reported per token: chat's top_logprobs, or the completions endpoint's logprobs count.</summary>
    public int TopLogprobs { get; init; }

    /// <summary>The end user's id, which OpenAI keeps for abuse monitoring; read and checked, it changes no output.</summary>
    public string? User { get; init; }

    /// <summary>
    /// The engine's options for this request, stopping also at <paramref name="stopTokens"/> and
    /// <paramref name="extraStops"/> (what ends a chat's turn).
    /// </summary>
    public GenerationOptions ToGenerationOptions(int promptLength, int maxContext, IReadOnlyList<int>? stopTokens = null, IReadOnlyList<string>? extraStops = null) => new()
    {
        MaxTokens = MaxTokens ?? (Kind == ApiKind.Completions ? CompletionsDefaultMaxTokens : Math.Max(1, maxContext - promptLength)),
        Temperature = Temperature,
        TopP = TopP,
        TopK = TopK,
        MinP = MinP,
        RepetitionPenalty = RepetitionPenalty,
        Seed = Seed,
        N = N,
        StopStrings = extraStops is { Count: > 0 } ? [.. Stop, .. extraStops] : Stop.Count > 0 ? Stop : null,
        StopTokens = stopTokens is { Count: > 0 } ? stopTokens : null,
        Logprobs = Logprobs,
        TopLogprobs = TopLogprobs,
    };

    public static CompletionRequest Parse(JsonElement body, ApiKind kind)
    {
        var fields = new JsonFields(body);
        RefuseUnsupported(fields, kind);

        bool stream = fields.Bool("stream") ?? false;
        bool includeUsage = false;
        if (fields.TryGet("stream_options", out var streamOptions))
        {
            if (!stream) throw OpenAiException.BadRequest("'stream_options' is only allowed when 'stream' is true.", "stream_options");
            includeUsage = new JsonFields(streamOptions, "stream_options").Bool("include_usage") ?? false;
        }

        // Chat names the limit max_completion_tokens now, and still takes max_tokens.
        long? maxTokens = kind == ApiKind.Chat ? fields.Integer("max_completion_tokens", min: 1, max: int.MaxValue) : null;
        maxTokens ??= fields.Integer("max_tokens", min: 1, max: int.MaxValue);

        bool logprobs;
        int topLogprobs;
        if (kind == ApiKind.Chat)
        {
            logprobs = fields.Bool("logprobs") ?? false;
            topLogprobs = (int)(fields.Integer("top_logprobs", 0, GenerationOptions.MaxTopLogprobs) ?? 0);
            if (topLogprobs > 0 && !logprobs) throw OpenAiException.BadRequest("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs");
        }
        else
        {
            long? count = fields.Integer("logprobs", 0, MaxCompletionLogprobs);
            logprobs = count is not null;
            topLogprobs = (int)(count ?? 0);
        }

        string? promptText = null;
        int[]? promptIds = null;
        IReadOnlyList<ChatMessage> messages = [];
        if (kind == ApiKind.Chat) messages = ReadMessages(fields);
        else ReadPrompt(fields, out promptText, out promptIds);

        return new CompletionRequest
        {
            Kind = kind,
            Model = fields.String("model"),
            PromptText = promptText,
            PromptIds = promptIds,
            Messages = messages,
            MaxTokens = (int?)maxTokens,
            Temperature = (float)(fields.Number("temperature", 0, 2) ?? 1),
            TopP = (float)(fields.Number("top_p", 0, 1, minExclusive: true) ?? 1),
            // vLLM spells "no top-k" -1.
            TopK = (int)Math.Max(0, fields.Integer("top_k", -1, int.MaxValue) ?? 0),
            MinP = (float)(fields.Number("min_p", 0, 1) ?? 0),
            RepetitionPenalty = (float)(fields.Number("repetition_penalty", 0, double.PositiveInfinity, minExclusive: true) ?? 1),
            Seed = fields.Integer("seed") is { } seed ? unchecked((ulong)seed) : null,
            Stop = ReadStop(fields),
            N = (int)(fields.Integer("n", 1, GenerationOptions.MaxSamples) ?? 1),
            Stream = stream,
            IncludeUsage = includeUsage,
            Logprobs = logprobs,
            TopLogprobs = topLogprobs,
            User = fields.String("user"),
        };
    }

    /// <summary>The prompt: a string or token ids, alone or as the one item of an array (one prompt per request).</summary>
    private static void ReadPrompt(JsonFields fields, out string? text, out int[]? ids)
    {
        text = null;
        ids = null;
        if (!fields.TryGet("prompt", out var prompt)) throw OpenAiException.BadRequest("'prompt' is required.", "prompt");
        if (prompt.ValueKind == JsonValueKind.Array && prompt.GetArrayLength() > 0 && prompt[0].ValueKind is JsonValueKind.String or JsonValueKind.Array)
        {
            if (prompt.GetArrayLength() != 1)
                throw OpenAiException.BadRequest($"'prompt' holds {prompt.GetArrayLength()} prompts; this server takes one prompt per request.", "prompt");
            prompt = prompt[0];
        }
        if (prompt.ValueKind == JsonValueKind.String)
        {
            text = prompt.GetString()!;
            return;
        }
        if (prompt.ValueKind == JsonValueKind.Array)
        {
            ids = new int[prompt.GetArrayLength()];
            int i = 0;
            foreach (var item in prompt.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out ids[i++]))
                    throw OpenAiException.BadRequest($"'prompt' must be a string or an array of token ids; item {i - 1} is {JsonFields.Describe(item)}.", "prompt");
            }
            if (ids.Length > 0) return;
        }
        throw fields.Wrong("prompt", "a non-empty string or array of token ids", prompt);
    }

    private static IReadOnlyList<ChatMessage> ReadMessages(JsonFields fields)
    {
        if (!fields.TryGet("messages", out var messages) || messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw OpenAiException.BadRequest("'messages' must be a non-empty array of messages.", "messages");
        var result = new List<ChatMessage>(messages.GetArrayLength());
        foreach (var element in messages.EnumerateArray())
        {
            string path = $"messages[{result.Count}]";
            var message = new JsonFields(element, path);
            string role = message.String("role") ?? throw OpenAiException.BadRequest($"'{path}.role' is required.", $"{path}.role");
            if (Array.IndexOf(ChatRoles, role) < 0)
                throw OpenAiException.BadRequest($"'{path}.role' must be one of {string.Join(", ", ChatRoles)}; got \"{role}\".", $"{path}.role");
            if (message.TryGet("tool_calls", out _) || message.TryGet("function_call", out _))
                throw OpenAiException.BadRequest($"'{path}' carries tool calls; this server does not support tools.", $"{path}.tool_calls");
            // OpenAI's newer name for the system role; chat templates know "system".
            result.Add(new ChatMessage(role == "developer" ? "system" : role, ReadContent(message, path)));
        }
        return result;
    }

    /// <summary>A message's text: a string, or an array of text parts joined (other parts, like images, are refused).</summary>
    private static string ReadContent(JsonFields message, string path)
    {
        if (!message.TryGet("content", out var content)) throw OpenAiException.BadRequest($"'{path}.content' is required.", $"{path}.content");
        if (content.ValueKind == JsonValueKind.String) return content.GetString()!;
        if (content.ValueKind != JsonValueKind.Array) throw message.Wrong("content", "a string or an array of text parts", content);
        var text = new StringBuilder();
        int index = 0;
        foreach (var element in content.EnumerateArray())
        {
            var part = new JsonFields(element, $"{path}.content[{index}]");
            string? type = part.String("type");
            if (type != "text")
                throw OpenAiException.BadRequest($"'{part.Param("type")}' is \"{type}\"; this server takes text parts only.", part.Param("type"));
            text.Append(part.String("text") ?? throw OpenAiException.BadRequest($"'{part.Param("text")}' is required.", part.Param("text")));
            index++;
        }
        return text.ToString();
    }

    private static IReadOnlyList<string> ReadStop(JsonFields fields)
    {
        if (!fields.TryGet("stop", out var stop)) return [];
        if (stop.ValueKind == JsonValueKind.String) return NonEmpty([stop.GetString()!]);
        if (stop.ValueKind != JsonValueKind.Array) throw fields.Wrong("stop", "a string or an array of strings", stop);
        var result = new List<string>();
        foreach (var item in stop.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String) throw fields.Wrong("stop", "a string or an array of strings", stop);
            result.Add(item.GetString()!);
        }
        return NonEmpty(result);

        static IReadOnlyList<string> NonEmpty(List<string> stops) =>
            stops.Contains("") ? throw OpenAiException.BadRequest("'stop' strings must not be empty.", "stop") : stops;
    }

    /// <summary>Fields whose meaning this server does not implement: accepted only at the value that means "off".</summary>
    private static void RefuseUnsupported(JsonFields fields, ApiKind kind)
    {
        foreach (string penalty in new[] { "frequency_penalty", "presence_penalty" })
        {
            if (fields.Number(penalty, -2, 2) is { } value && value != 0) throw Unsupported(fields, penalty);
        }
        if (fields.TryGet("logit_bias", out var bias) && (bias.ValueKind != JsonValueKind.Object || bias.EnumerateObject().Any()))
            throw Unsupported(fields, "logit_bias");
        foreach (string tools in new[] { "tools", "functions" })
        {
            if (fields.TryGet(tools, out var list) && (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() > 0)) throw Unsupported(fields, tools);
        }
        if (fields.TryGet("response_format", out var format) && new JsonFields(format, "response_format").String("type") is not (null or "text"))
            throw Unsupported(fields, "response_format");
        if (kind == ApiKind.Completions)
        {
            if (fields.Bool("echo") == true) throw Unsupported(fields, "echo");
            if (fields.String("suffix") is { Length: > 0 }) throw Unsupported(fields, "suffix");
            if (fields.Integer("best_of", 1, GenerationOptions.MaxSamples) is > 1) throw Unsupported(fields, "best_of");
        }
    }

    private static OpenAiException Unsupported(JsonFields fields, string name) =>
        OpenAiException.BadRequest($"'{fields.Param(name)}' is not supported by this server; leave it out or at its default.", fields.Param(name), "unsupported_parameter");
}
