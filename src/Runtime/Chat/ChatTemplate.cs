using System.Collections;
using Kiln.Chat.Jinja;
using Kiln.Loading;
using Kiln.Tokenization;

namespace Kiln.Chat;

/// <summary>
/// A model's chat template: the Jinja program in its GGUF's <c>tokenizer.chat_template</c> (copied there from
/// transformers' tokenizer_config.json), which turns a conversation into the prompt text the model was trained on.
/// Kiln runs it with its own interpreter of the Jinja subset chat templates use, rendering as transformers'
/// <c>apply_chat_template</c> does: <c>trim_blocks</c> and <c>lstrip_blocks</c> on, the variables
/// <c>messages</c>, <c>add_generation_prompt</c>, <c>bos_token</c>, <c>eos_token</c> (and <c>tools</c>,
/// <c>documents</c> as none), the globals <c>raise_exception</c> and <c>strftime_now</c>. Immutable and safe to
/// share between threads.
/// </summary>
public sealed class ChatTemplate
{
    /// <summary>The GGUF key holding the template.</summary>
    public const string MetadataKey = "tokenizer.chat_template";

    /// <summary>
    /// The plain format <see cref="Fallback"/> renders: each message as its capitalized role, a colon, a space, its
    /// trimmed content and a blank line ("User: Hello\n\n"), then "Assistant:" when a reply is asked for.
    /// </summary>
    private const string FallbackSource =
        "{% for message in messages %}{{ message.role | capitalize }}: {{ message.content | trim }}\n\n{% endfor %}"
        + "{% if add_generation_prompt %}Assistant:{% endif %}";

    // Deeper macro recursion than any real template needs ends the rendering instead of the process.
    private const int MaxMacroDepth = 64;

    private readonly IReadOnlyList<Node> _program;
    private readonly string _bosToken;
    private readonly string _eosToken;

    private ChatTemplate(string source, IReadOnlyList<Node> program, string bosToken, string eosToken, bool isFallback)
    {
        Source = source;
        _program = program;
        _bosToken = bosToken;
        _eosToken = eosToken;
        IsFallback = isFallback;
    }

    /// <summary>
    /// The format used for a model file without a template. Each message becomes "Role: content" and a blank line,
    /// and a reply is prompted with "Assistant:":
    /// <code>
    /// System: You are terse.
    ///
    /// User: Hello
    ///
    /// Assistant:
    /// </code>
    /// A model not tuned for chat continues such text as any other; stop it at "\nUser:" to keep one turn.
    /// </summary>
    public static ChatTemplate Fallback { get; } = new(FallbackSource, Parser.Parse(FallbackSource), "", "", isFallback: true);

    /// <summary>Whether this is <see cref="Fallback"/>, the plain format for a model file without a template.</summary>
    public bool IsFallback { get; }

    /// <summary>The template's Jinja source.</summary>
    public string Source { get; }

    /// <summary>
    /// The template of <paramref name="file"/> (<see cref="MetadataKey"/>), or <see cref="Fallback"/> when it has none.
    /// <c>bos_token</c> and <c>eos_token</c> are the vocabulary's BOS and EOS tokens, taken from
    /// <paramref name="tokenizer"/> when given, otherwise from the file's tokenizer.ggml.* metadata.
    /// </summary>
    /// <exception cref="ModelLoadException">The key is not a string, or its template does not parse (the message says where).</exception>
    public static ChatTemplate FromModelFile(ModelFile file, KilnTokenizer? tokenizer = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (!file.Metadata.TryGetValue(MetadataKey, out var entry)) return Fallback;
        if (entry.Value is not string source)
            throw new ModelLoadException(file.Path, MetadataKey, entry.Offset, $"should be a string, but is {entry}.");
        if (source.Length == 0) return Fallback;

        string bos = tokenizer is not null ? TokenText(tokenizer, tokenizer.BosId) : TokenText(file, "tokenizer.ggml.bos_token_id");
        string eos = tokenizer is not null ? TokenText(tokenizer, tokenizer.EosId) : TokenText(file, "tokenizer.ggml.eos_token_id");
        try
        {
            return Parse(source, bos, eos);
        }
        catch (ChatTemplateException error)
        {
            throw new ModelLoadException(file.Path, MetadataKey, entry.Offset, $"the chat template does not parse: {error.Message}", error);
        }
    }

    /// <summary>A template from its Jinja source, with the text its <c>bos_token</c> and <c>eos_token</c> print.</summary>
    /// <exception cref="ChatTemplateException">The source is not valid Jinja, or uses something the interpreter lacks (the message says where).</exception>
    public static ChatTemplate Parse(string jinjaSource, string bosToken = "", string eosToken = "")
    {
        ArgumentNullException.ThrowIfNull(jinjaSource);
        ArgumentNullException.ThrowIfNull(bosToken);
        ArgumentNullException.ThrowIfNull(eosToken);
        return new ChatTemplate(jinjaSource, Parser.Parse(jinjaSource), bosToken, eosToken, isFallback: false);
    }

    /// <summary>
    /// The prompt text for <paramref name="messages"/>, ending with the start of the assistant's reply when
    /// <paramref name="addGenerationPrompt"/> (what a model generates from). Special tokens appear as their text
    /// (&lt;|im_start|&gt;): encode it with <c>parseSpecial: true</c>.
    /// </summary>
    /// <exception cref="ChatTemplateException">
    /// The template refused the conversation (<c>raise_exception</c>, e.g. roles that do not alternate), or failed on it.
    /// </exception>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var list = new List<object?>(messages.Count);
        for (int i = 0; i < messages.Count; i++)
        {
            var message = messages[i] ?? throw new ArgumentException($"Message {i} is null.", nameof(messages));
            if (message.Role is null || message.Content is null)
                throw new ArgumentException($"Message {i} has a null {(message.Role is null ? "role" : "content")}.", nameof(messages));
            var dict = new JinjaDict();
            dict.Set("role", message.Role);
            dict.Set("content", message.Content);
            list.Add(dict);
        }
        return RenderWith(new Dictionary<string, object?>
        {
            ["messages"] = list,
            ["add_generation_prompt"] = addGenerationPrompt,
        });
    }

    /// <summary>
    /// Renders with <paramref name="variables"/> beside bos_token, eos_token, tools and documents (which they may
    /// replace): plain CLR values, lists and string-keyed dictionaries become the Python values a template sees.
    /// </summary>
    internal string RenderWith(IReadOnlyDictionary<string, object?> variables, Func<DateTime>? now = null)
    {
        var globals = new Scope(null);
        foreach (string name in Builtins.GlobalNames) globals.Set(name, new GlobalFunction(name));
        var scope = new Scope(globals);
        scope.Set("bos_token", _bosToken);
        scope.Set("eos_token", _eosToken);
        scope.Set("tools", null);
        scope.Set("documents", null);
        foreach (var (name, value) in variables) scope.Set(name, ToTemplateValue(value));
        try
        {
            return Renderer.Render(_program, scope, now ?? (() => DateTime.Now), MaxMacroDepth);
        }
        catch (TemplateRuntimeException error)
        {
            throw new ChatTemplateException(error.Message, error.Line, error.Column, error.RaisedByTemplate);
        }
    }

    /// <summary>
    /// What the template writes right after an assistant's message, up to the next message (" &lt;/s&gt;",
    /// "&lt;|im_end|&gt;\n", "&lt;end_of_turn&gt;\n"): the marker a model ends its turn with. Null when the template
    /// cannot render a short user/assistant exchange.
    /// </summary>
    internal string? AssistantTurnEnd()
    {
        const string Reply = "\u2063Kiln\u2063";
        try
        {
            string rendered = Render([new ChatMessage("user", "Hi"), new ChatMessage("assistant", Reply), new ChatMessage("user", "Hi")], addGenerationPrompt: false);
            int replyAt = rendered.IndexOf(Reply, StringComparison.Ordinal);
            if (replyAt < 0) return null;
            int after = replyAt + Reply.Length;
            int nextUser = rendered.IndexOf("Hi", after, StringComparison.Ordinal);
            return nextUser < 0 ? rendered[after..] : rendered[after..nextUser];
        }
        catch (ChatTemplateException)
        {
            return null;
        }
    }

    private static object? ToTemplateValue(object? value) => value switch
    {
        null or string or bool or long or double or JinjaDict or Namespace => value,
        int i => (long)i,
        float f => (double)f,
        ChatMessage message => ToTemplateValue(new Dictionary<string, object?> { ["role"] = message.Role, ["content"] = message.Content }),
        IDictionary dict => ToDict(dict),
        IEnumerable items => items.Cast<object?>().Select(ToTemplateValue).ToList(),
        _ => throw new ArgumentException($"A {value.GetType().Name} cannot be a template variable."),
    };

    private static JinjaDict ToDict(IDictionary source)
    {
        var dict = new JinjaDict();
        foreach (DictionaryEntry entry in source) dict.Set(ToTemplateValue(entry.Key), ToTemplateValue(entry.Value));
        return dict;
    }

    private static string TokenText(KilnTokenizer tokenizer, int id) => (uint)id < (uint)tokenizer.VocabSize ? tokenizer.GetToken(id) : "";

    private static string TokenText(ModelFile file, string idKey)
    {
        if (!file.Metadata.TryGetValue(idKey, out var idEntry) || !idEntry.TryGetInt64(out long id)) return "";
        if (!file.Metadata.TryGetValue("tokenizer.ggml.tokens", out var tokensEntry) || tokensEntry.Value is not IReadOnlyList<string> tokens) return "";
        return id >= 0 && id < tokens.Count ? tokens[(int)id] : "";
    }
}
