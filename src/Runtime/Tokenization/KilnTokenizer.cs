using System.Text;
using Kiln.Loading;

namespace Kiln.Tokenization;

/// <summary>The two tokenizer families of GGUF files that Kiln reads, told apart by tokenizer.ggml.model.</summary>
public enum TokenizerKind
{
    /// <summary>"llama": SentencePiece BPE with byte fallback (Llama 1/2, Mistral, Gemma, Phi-3).</summary>
    SentencePiece,

    /// <summary>"gpt2": byte-level BPE with merges and a pre-tokenizer (GPT-2, Qwen2, Qwen3, Llama 3).</summary>
    ByteLevelBpe,
}

/// <summary>
/// The tokenizer of a model file, built from its tokenizer.ggml.* metadata: SentencePiece BPE for
/// tokenizer.ggml.model "llama" (or a llama2.c tokenizer.bin presented with the same keys), byte-level BPE for
/// "gpt2". Encoding is Microsoft.ML.Tokenizers' (its SentencePiece BPE fed a ModelProto built from the vocabulary,
/// its byte-level BPE fed the vocabulary and merges), around the steps llama.cpp takes itself: special tokens
/// found whole first, the pre-tokenizer that tokenizer.ggml.pre names. Immutable and safe to share between
/// threads; each output stream needs its own <see cref="TokenTextDecoder"/>.
/// </summary>
public sealed partial class KilnTokenizer
{
    private const string ModelKey = "tokenizer.ggml.model";
    private const string TokensKey = "tokenizer.ggml.tokens";
    private const string TypesKey = "tokenizer.ggml.token_type";
    private const string BosKey = "tokenizer.ggml.bos_token_id";
    private const string EosKey = "tokenizer.ggml.eos_token_id";
    private const string UnknownKey = "tokenizer.ggml.unknown_token_id";
    private const string AddBosKey = "tokenizer.ggml.add_bos_token";
    private const string NameKey = "general.name";

    /// <summary>What <see cref="UnknownId"/> is when the vocabulary has no unknown token.</summary>
    public const int NoToken = -1;

    private readonly ITextEncoder _encoder;
    private readonly string[] _tokens;
    private readonly TokenType[] _types;

    // What each token prints as, precomputed so that streaming decoding allocates nothing per token: finished
    // text, or the bytes of a piece of a character that must wait for the bytes completing it.
    private readonly string[] _displayText;
    private readonly byte[]?[] _pieceBytes;

    // Special tokens found whole in the text: user-defined ones always, control and unknown ones when asked.
    private readonly SpecialTokenSplitter _userDefinedTokens;
    private readonly SpecialTokenSplitter _allSpecialTokens;

    private KilnTokenizer(TokenizerKind kind, ITextEncoder encoder, string[] tokens, TokenType[] types,
        string[] displayText, byte[]?[] pieceBytes, int bosId, int eosId, int unknownId, bool addBosToken,
        bool addsSpacePrefix, bool specialTokensStripFollowingSpace)
    {
        Kind = kind;
        _encoder = encoder;
        _tokens = tokens;
        _types = types;
        _displayText = displayText;
        _pieceBytes = pieceBytes;
        BosId = bosId;
        EosId = eosId;
        UnknownId = unknownId;
        AddBosToken = addBosToken;
        DropsSpaceAfterBos = addsSpacePrefix;
        foreach (byte[]? bytes in pieceBytes) MaxPieceBytes = Math.Max(MaxPieceBytes, bytes?.Length ?? 0);

        _userDefinedTokens = new SpecialTokenSplitter(SpecialTokens(tokens, types, specialTokensStripFollowingSpace, parsed: false));
        _allSpecialTokens = new SpecialTokenSplitter(SpecialTokens(tokens, types, specialTokensStripFollowingSpace, parsed: true));
    }

    public TokenizerKind Kind { get; }

    public int VocabSize => _tokens.Length;

    public int BosId { get; }

    public int EosId { get; }

    /// <summary>The unknown token, or <see cref="NoToken"/> where the vocabulary names none (byte-level BPE needs none).</summary>
    public int UnknownId { get; }

    /// <summary>
    /// Whether the model expects a prompt to start with BOS (tokenizer.ggml.add_bos_token; when absent, true for
    /// SentencePiece and false for byte-level BPE except Llama 3's, as llama.cpp assumes). Pass it to
    /// <see cref="Encode"/> when the model file should decide.
    /// </summary>
    public bool AddBosToken { get; }

    /// <summary>Builds the tokenizer from a model file's tokenizer.ggml.* metadata.</summary>
    /// <exception cref="ModelLoadException">
    /// A key is missing, has the wrong type or an unsupported value, or disagrees with another.
    /// </exception>
    public static KilnTokenizer FromModelFile(ModelFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        string model = ReadMetadata<string>(file, ModelKey, "a string", "every tokenizer");
        return model switch
        {
            SentencePieceModelName => FromSentencePieceFile(file),
            ByteLevelModelName => FromByteLevelFile(file),
            _ => throw new ModelLoadException(file.Path, ModelKey, file.Metadata[ModelKey].Offset,
                $"tokenizer model '{model}' is not supported; Kiln reads '{SentencePieceModelName}' (SentencePiece BPE) and '{ByteLevelModelName}' (byte-level BPE)."),
        };
    }

    /// <summary>
    /// The token ids of <paramref name="text"/>, after BOS when <paramref name="addBos"/>. User-defined tokens
    /// spelled in the text always become their ids; control tokens (and the unknown token) do only when
    /// <paramref name="parseSpecial"/>, as with llama.cpp's parse_special: by default "&lt;|im_start|&gt;" in a
    /// prompt is text, which keeps user input from forging a chat template's markers.
    /// </summary>
    public int[] Encode(string text, bool addBos = true, bool parseSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos) ids.Add(BosId);

        var fragments = new List<TextFragment>();
        (parseSpecial ? _allSpecialTokens : _userDefinedTokens).Split(text, fragments);
        foreach (TextFragment fragment in fragments)
        {
            if (fragment.IsToken) ids.Add(fragment.TokenId);
            else _encoder.Encode(text.AsSpan(fragment.Start, fragment.Length), ids);
        }
        return [.. ids];
    }

    /// <summary>
    /// The text of <paramref name="ids"/>. Control and unused tokens print nothing; user-defined and unknown tokens
    /// print their text. SentencePiece pieces print '▁' as a space (the dummy-prefix space of the piece right after
    /// BOS is dropped, as llama2.c's run.c does) and &lt;0xNN&gt; tokens as raw bytes; byte-level pieces print the
    /// bytes their characters stand for. Bytes that do not form valid UTF-8 become U+FFFD. Same result as
    /// streaming the ids through a <see cref="TokenTextDecoder"/> and flushing it.
    /// </summary>
    public string Decode(ReadOnlySpan<int> ids)
    {
        var decoder = new TokenTextDecoder(this);
        var text = new StringBuilder();
        foreach (int id in ids) text.Append(decoder.Append(id));
        text.Append(decoder.Flush());
        return text.ToString();
    }

    /// <summary>
    /// A decoder that turns ids into text one at a time, for printing tokens as they are generated.
    /// <paramref name="previousId"/> is the token already shown before the first one it gets (the prompt's last),
    /// so that a continuation of a bare BOS loses its dummy space as in <see cref="Decode"/>; -1 for none.
    /// </summary>
    public TokenTextDecoder CreateStreamingDecoder(int previousId = -1) => new(this, previousId);

    /// <summary>The vocabulary entry of <paramref name="id"/> as stored ('▁the', 'Ġthe', &lt;0xNN&gt;, &lt;s&gt;...).</summary>
    public string GetToken(int id) => _tokens[CheckId(id)];

    public TokenType GetTokenType(int id) => _types[CheckId(id)];

    /// <summary>Whether the piece right after BOS loses its leading space when decoded (SentencePiece's dummy prefix).</summary>
    internal bool DropsSpaceAfterBos { get; }

    /// <summary>The longest byte sequence <see cref="PieceBytesOf"/> returns.</summary>
    internal int MaxPieceBytes { get; }

    /// <summary>The finished text of <paramref name="id"/>; "" when it prints nothing or has <see cref="PieceBytesOf"/>.</summary>
    internal string DisplayTextOf(int id) => _displayText[CheckId(id)];

    /// <summary>
    /// The bytes of a token that is not whole UTF-8 on its own (a &lt;0xNN&gt; token, a byte-level piece of a
    /// character), to be joined with its neighbours'; null for any other token.
    /// </summary>
    internal byte[]? PieceBytesOf(int id) => _pieceBytes[CheckId(id)];

    private int CheckId(int id)
    {
        if ((uint)id >= (uint)_tokens.Length)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"Token ids run from 0 to {_tokens.Length - 1}.");
        return id;
    }

    /// <summary>
    /// The tokens llama.cpp finds whole in text (its cache_special_tokens): user-defined ones always, control and
    /// unknown ones only when parsing special tokens. Phi-3's strip the whitespace after them, except &lt;unk&gt;,
    /// &lt;s&gt; and &lt;|endoftext|&gt;.
    /// </summary>
    private static IEnumerable<(string Text, int Id, bool StripsFollowingSpace)> SpecialTokens(
        string[] tokens, TokenType[] types, bool stripFollowingSpace, bool parsed)
    {
        for (int id = 0; id < tokens.Length; id++)
        {
            bool special = types[id] == TokenType.UserDefined
                || parsed && types[id] is TokenType.Control or TokenType.Unknown;
            if (!special) continue;
            bool strips = stripFollowingSpace && tokens[id] is not ("<unk>" or "<s>" or "<|endoftext|>");
            yield return (tokens[id], id, strips);
        }
    }

    /// <summary>
    /// Whether llama.cpp gives this model's special tokens the RSTRIP attribute: it does for Phi-3, recognised by
    /// "phi-3" or "phi3" in general.name (the vocabulary itself cannot tell).
    /// </summary>
    private static bool IsPhi3(ModelFile file) =>
        file.TryGetString(NameKey, out string name)
        && (name.Contains("phi-3", StringComparison.OrdinalIgnoreCase) || name.Contains("phi3", StringComparison.OrdinalIgnoreCase));

    private static void CheckSpecialId(int id, string field, int vocabSize, VocabularySource source)
    {
        if ((uint)id >= (uint)vocabSize)
            throw source.Problem(field, $"is {id}, outside the vocabulary of {vocabSize} tokens.");
    }

    private static T ReadMetadata<T>(ModelFile file, string key, string expected, string neededBy)
    {
        if (!file.Metadata.TryGetValue(key, out var entry))
            throw new ModelLoadException(file.Path, key, null, $"is missing; {neededBy} needs it.");
        if (entry.Value is not T value)
            throw new ModelLoadException(file.Path, key, entry.Offset, $"should be {expected}, but is {entry}.");
        return value;
    }

    private static bool ReadFlag(ModelFile file, string key, bool whenAbsent)
    {
        if (!file.Metadata.TryGetValue(key, out var entry)) return whenAbsent;
        return entry.Value is bool value
            ? value
            : throw new ModelLoadException(file.Path, key, entry.Offset, $"should be a bool, but is {entry}.");
    }

    private static int ReadTokenId(ModelFile file, string key, string neededBy)
    {
        if (!file.Metadata.TryGetValue(key, out var entry))
            throw new ModelLoadException(file.Path, key, null, $"is missing; {neededBy} needs it.");
        if (!entry.TryGetInt64(out long id))
            throw new ModelLoadException(file.Path, key, entry.Offset, $"should be an integer token id, but is {entry}.");
        // Whether the id lies inside the vocabulary is checked with the rest of it.
        if (id is < int.MinValue or > int.MaxValue)
            throw new ModelLoadException(file.Path, key, entry.Offset, $"is {id}, far outside any vocabulary.");
        return (int)id;
    }

    /// <summary>Turns a vocabulary's raw type numbers into <see cref="TokenType"/>, naming the first bad one.</summary>
    private static TokenType[] ReadTypes(IReadOnlyList<string> tokens, IReadOnlyList<int> types, VocabularySource source)
    {
        if (types.Count != tokens.Count)
            throw source.Problem(source.Types, $"has {types.Count} entries but {source.Tokens} has {tokens.Count}.");
        var result = new TokenType[types.Count];
        for (int id = 0; id < result.Length; id++)
        {
            int type = types[id];
            if (type < (int)TokenType.Normal || type > (int)TokenType.Byte)
            {
                throw source.Problem(source.Types,
                    $"entry {id} ('{tokens[id]}') is {type}; token types run from 1 (normal) to 6 (byte).");
            }
            result[id] = (TokenType)type;
        }
        return result;
    }

    /// <summary>Checks that every entry has text and none appears twice (llama.cpp refuses such a vocabulary).</summary>
    private static Dictionary<string, int> IndexTokens(IReadOnlyList<string> tokens, VocabularySource source)
    {
        if (tokens.Count == 0) throw source.Problem(source.Tokens, "is empty.");
        var idOfToken = new Dictionary<string, int>(tokens.Count, StringComparer.Ordinal);
        for (int id = 0; id < tokens.Count; id++)
        {
            string token = tokens[id];
            if (string.IsNullOrEmpty(token)) throw source.Problem(source.Tokens, $"entry {id} is empty; every token has text.");
            if (!idOfToken.TryAdd(token, id))
                throw source.Problem(source.Tokens, $"'{token}' appears twice, at ids {idOfToken[token]} and {id}.");
        }
        return idOfToken;
    }

    /// <summary>The one step that differs between the kinds: a run of ordinary text to ids, appended.</summary>
    private interface ITextEncoder
    {
        void Encode(ReadOnlySpan<char> text, List<int> ids);
    }

    /// <summary>
    /// Where a vocabulary came from, so that a problem names what the caller passed: GGUF keys (and where their values
    /// are) and a <see cref="ModelLoadException"/> for a model file, parameter names and an
    /// <see cref="ArgumentException"/> for <see cref="FromVocabulary"/>.
    /// </summary>
    private sealed record VocabularySource(ModelFile? File, string Tokens, string Scores, string Types, string Bos, string Eos, string Unknown)
    {
        public static readonly VocabularySource Arguments = new(null, "tokens", "scores", "types", "bos", "eos", "unk");

        public static VocabularySource ForModelFile(ModelFile file) =>
            new(file, TokensKey, ScoresKey, TypesKey, BosKey, EosKey, UnknownKey);

        public Exception Problem(string field, string problem) =>
            File is null
                ? new ArgumentException(problem, field)
                : new ModelLoadException(File.Path, field, File.Metadata.TryGetValue(field, out var entry) ? entry.Offset : null, problem);
    }
}
