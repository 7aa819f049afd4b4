using System.Diagnostics.CodeAnalysis;
using Kiln.Chat;
using Kiln.Embeddings;
using Kiln.Engine.Serving;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;

namespace Kiln.Server;

/// <summary>
/// The one model a server hosts, under the id clients name it by. A decoder (<see cref="IsEncoder"/> false) generates
/// text: the engine that runs it, its tokenizer, and what a chat needs (its chat template, the end-of-turn tokens that
/// close an assistant's reply). An encoder embeds text: its <see cref="Embeddings"/> generator. Disposing the model
/// disposes the engine or the generator.
/// </summary>
public sealed class KilnServerModel : IAsyncDisposable
{
    /// <summary>Tokens that end a turn in the chat formats of the families Kiln runs (ChatML, Llama 3, Gemma, Phi-3).</summary>
    private static readonly string[] EndOfTurnTokenTexts = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"];

    // Each token's own text, decoded when a logprobs response first names it.
    private readonly string?[] _tokenText;

    /// <summary>
    /// Serves <paramref name="engine"/> (whose tokenizer is <paramref name="tokenizer"/>) under <paramref name="id"/>,
    /// rendering chats with <paramref name="chatTemplate"/> (<see cref="ChatTemplate.Fallback"/> when null); takes
    /// ownership of the engine.
    /// </summary>
    public KilnServerModel(string id, KilnEngine engine, KilnTokenizer tokenizer, ChatTemplate? chatTemplate = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(id);
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (tokenizer.VocabSize != engine.VocabSize)
            throw new ArgumentException($"The tokenizer has {tokenizer.VocabSize} tokens; the engine's model has {engine.VocabSize}.", nameof(tokenizer));
        Id = id;
        Engine = engine;
        Tokenizer = tokenizer;
        ChatTemplate = chatTemplate ?? ChatTemplate.Fallback;
        _tokenText = new string?[tokenizer.VocabSize];

        var endOfTurn = new List<int>();
        for (int token = 0; token < tokenizer.VocabSize; token++)
        {
            if (Array.IndexOf(EndOfTurnTokenTexts, tokenizer.GetToken(token)) >= 0 && token != tokenizer.EosId) endOfTurn.Add(token);
        }
        EndOfTurnTokens = endOfTurn;
    }

    /// <summary>Serves the encoder behind <paramref name="embeddings"/> under <paramref name="id"/> (for /v1/embeddings); takes ownership of it.</summary>
    public KilnServerModel(string id, KilnEmbeddingGenerator embeddings)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(id);
        ArgumentNullException.ThrowIfNull(embeddings);
        Id = id;
        Embeddings = embeddings;
        ChatTemplate = ChatTemplate.Fallback;
        _tokenText = [];
        EndOfTurnTokens = [];
    }

    /// <summary>
    /// Loads a model file through <see cref="ModelCatalog"/> (its architecture picks the definition). A decoder comes
    /// with its chat template (tokenizer.chat_template, or the fallback format) and an engine on its compiled plan; an
    /// encoder (a BERT GGUF, ONNX export or checkpoint) with an embedding generator
    /// (<see cref="ModelCatalog.CreateEmbeddingGenerator"/>: its WordPiece vocabulary, texts cut at its sequence limit),
    /// its plan's threads those of <paramref name="embeddingPlan"/> (default: every processor, steps of 8192 tokens). The
    /// id is <paramref name="id"/>, or the file's name without its extension.
    /// </summary>
    /// <exception cref="ModelLoadException">The file cannot be read, no definition fits it, its chat template does not
    /// parse, or an encoder has no vocabulary.</exception>
    public static KilnServerModel Load(string path, EngineOptions? engineOptions = null, string? id = null, PlanOptions? embeddingPlan = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        id ??= Path.GetFileNameWithoutExtension(path);
        using var file = ModelFile.Open(path);
        if (ModelCatalog.KindOf(file) == ModelKind.Encoder)
            return new KilnServerModel(id, ModelCatalog.CreateEmbeddingGenerator(file, id, embeddingPlan));
        var model = ModelCatalog.Load(file);
        var tokenizer = KilnTokenizer.FromModelFile(file);
        var template = ChatTemplate.FromModelFile(file, tokenizer);
        var engine = new KilnEngine(model, tokens => model.Compile(new PlanOptions(tokens)), tokenizer, engineOptions);
        return new KilnServerModel(id, engine, tokenizer, template);
    }

    /// <summary>The name clients give as "model", and /v1/models lists.</summary>
    public string Id { get; }

    /// <summary>Whether the model embeds text (<see cref="Embeddings"/>) rather than generating it (<see cref="Engine"/>, <see cref="Tokenizer"/>).</summary>
    [MemberNotNullWhen(true, nameof(Embeddings))]
    [MemberNotNullWhen(false, nameof(Engine), nameof(Tokenizer))]
    public bool IsEncoder => Embeddings is not null;

    /// <summary>The engine a decoder generates with; null for an encoder.</summary>
    public KilnEngine? Engine { get; }

    /// <summary>A decoder's tokenizer; null for an encoder (whose own is <see cref="KilnEmbeddingGenerator.Tokenizer"/>).</summary>
    public KilnTokenizer? Tokenizer { get; }

    /// <summary>An encoder's embedding generator; null for a decoder.</summary>
    public KilnEmbeddingGenerator? Embeddings { get; }

    /// <summary>The longest sequence the model takes, in tokens: a decoder's context, an encoder's longest text (as /v1/models reports it).</summary>
    public int MaxSequenceTokens => IsEncoder ? Embeddings.MaxSequenceTokens : Engine.MaxContext;

    /// <summary>How a conversation becomes the prompt text (the model file's template, or <see cref="ChatTemplate.Fallback"/>).</summary>
    public ChatTemplate ChatTemplate { get; }

    /// <summary>When the model was loaded, as /v1/models reports it ("created").</summary>
    public DateTimeOffset Created { get; } = DateTimeOffset.UtcNow;

    /// <summary>Tokens of the vocabulary that end an assistant's turn besides EOS (&lt;|im_end|&gt;, &lt;|eot_id|&gt;, &lt;end_of_turn&gt;, &lt;|end|&gt;): a chat stops at them.</summary>
    public IReadOnlyList<int> EndOfTurnTokens { get; }

    /// <summary>The text of one token on its own, as logprobs report it (a piece of a character reads U+FFFD).</summary>
    internal string TokenText(int token) => _tokenText[token] ??= Tokenizer!.Decode([token]);

    public ValueTask DisposeAsync()
    {
        if (!IsEncoder) return Engine.DisposeAsync();
        Embeddings.Dispose();
        return ValueTask.CompletedTask;
    }
}
