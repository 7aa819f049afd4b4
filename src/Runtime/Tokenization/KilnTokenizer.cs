using System.Globalization;
using System.Text;
using Kiln.Loading;
using Microsoft.ML.Tokenizers;

namespace Kiln.Tokenization;

/// <summary>
/// The SentencePiece BPE tokenizer of a Llama-family model (GGUF tokenizer.ggml.model "llama", or a llama2.c
/// tokenizer.bin presented with the same keys). Encoding is Microsoft.ML.Tokenizers' SentencePiece BPE, fed a
/// ModelProto built from the model file's vocabulary; decoding follows llama2.c's run.c. Immutable and safe to
/// share between threads; each output stream needs its own <see cref="TokenTextDecoder"/>.
/// </summary>
public sealed class KilnTokenizer
{
    private const string ModelKey = "tokenizer.ggml.model";
    private const string TokensKey = "tokenizer.ggml.tokens";
    private const string ScoresKey = "tokenizer.ggml.scores";
    private const string TypesKey = "tokenizer.ggml.token_type";
    private const string BosKey = "tokenizer.ggml.bos_token_id";
    private const string EosKey = "tokenizer.ggml.eos_token_id";
    private const string UnknownKey = "tokenizer.ggml.unknown_token_id";
    private const string AddBosKey = "tokenizer.ggml.add_bos_token";
    private const string SentencePieceModelName = "llama";

    private const char EscapedSpace = '\u2581'; // '▁', SentencePiece's stand-in for a space inside pieces
    private const int NotAByte = -1;

    private readonly Tokenizer _encoder;
    private readonly string[] _tokens;
    private readonly TokenType[] _types;

    // What each token prints as, precomputed so that streaming decoding allocates nothing per token.
    private readonly string[] _displayText;
    private readonly short[] _byteValue;

    private KilnTokenizer(Tokenizer encoder, string[] tokens, TokenType[] types, short[] byteValue,
        int bosId, int eosId, int unknownId, bool addBosToken)
    {
        _encoder = encoder;
        _tokens = tokens;
        _types = types;
        _byteValue = byteValue;
        BosId = bosId;
        EosId = eosId;
        UnknownId = unknownId;
        AddBosToken = addBosToken;

        _displayText = new string[tokens.Length];
        for (int id = 0; id < tokens.Length; id++)
        {
            _displayText[id] = types[id] switch
            {
                TokenType.Control or TokenType.Unused or TokenType.Byte => "",
                _ => tokens[id].Replace(EscapedSpace, ' '),
            };
        }
    }

    public int VocabSize => _tokens.Length;

    public int BosId { get; }

    public int EosId { get; }

    public int UnknownId { get; }

    /// <summary>
    /// Whether the model expects a prompt to start with BOS (tokenizer.ggml.add_bos_token; true when absent, as
    /// for every Llama). Pass it to <see cref="Encode"/> when the model file should decide.
    /// </summary>
    public bool AddBosToken { get; }

    /// <summary>Builds the tokenizer from a model file's tokenizer.ggml.* metadata.</summary>
    /// <exception cref="ModelLoadException">A key is missing, has the wrong type, or disagrees with another.</exception>
    public static KilnTokenizer FromModelFile(ModelFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        var source = VocabularySource.ForModelFile(file.Path);

        string model = ReadMetadata<string>(file, ModelKey, "a string");
        if (model != SentencePieceModelName)
        {
            throw source.Problem(ModelKey,
                $"tokenizer model '{model}' is not supported; Kiln reads only '{SentencePieceModelName}' (SentencePiece BPE).");
        }

        string[] tokens = ReadMetadata<string[]>(file, TokensKey, "an array of strings");
        float[] scores = ReadMetadata<float[]>(file, ScoresKey, "an array of float32");
        int[] types = ReadMetadata<int[]>(file, TypesKey, "an array of int32");
        int bosId = ReadTokenId(file, BosKey);
        int eosId = ReadTokenId(file, EosKey);
        int unknownId = file.Metadata.ContainsKey(UnknownKey)
            ? ReadTokenId(file, UnknownKey)
            : FindUnknownToken(file.Path, types);
        bool addBos = !file.Metadata.ContainsKey(AddBosKey) || ReadMetadata<bool>(file, AddBosKey, "a bool");

        return Create(tokens, scores, types, bosId, eosId, unknownId, addBos, source);
    }

    /// <summary>
    /// Builds the tokenizer from a vocabulary in SentencePiece form: pieces with '▁' for spaces, byte tokens
    /// spelled &lt;0xNN&gt;, and types as in <see cref="TokenType"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The vocabulary is inconsistent.</exception>
    public static KilnTokenizer FromVocabulary(IReadOnlyList<string> tokens, IReadOnlyList<float> scores,
        IReadOnlyList<int> types, int bos, int eos, int unk)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(scores);
        ArgumentNullException.ThrowIfNull(types);
        return Create(tokens, scores, types, bos, eos, unk, addBosToken: true, VocabularySource.Arguments);
    }

    /// <summary>The token ids of <paramref name="text"/>, after BOS when <paramref name="addBos"/>.</summary>
    public int[] Encode(string text, bool addBos = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        // Empty text gets no dummy-prefix piece (llama2.c does the same), so it is BOS alone.
        IReadOnlyList<int> pieces = text.Length == 0
            ? []
            : _encoder.EncodeToIds(text, considerPreTokenization: true, considerNormalization: true);

        int offset = addBos ? 1 : 0;
        var ids = new int[pieces.Count + offset];
        if (addBos) ids[0] = BosId;
        for (int i = 0; i < pieces.Count; i++) ids[offset + i] = pieces[i];
        return ids;
    }

    /// <summary>
    /// The text of <paramref name="ids"/>, decoded like llama2.c's run.c: '▁' is a space, the leading space of
    /// the piece right after BOS is dropped, &lt;0xNN&gt; tokens are raw UTF-8 bytes, control and unused tokens
    /// print nothing, the unknown token prints its piece ("&lt;unk&gt;"). Bytes that do not form valid UTF-8
    /// become U+FFFD. Same result as streaming the ids through a <see cref="TokenTextDecoder"/> and flushing it.
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

    /// <summary>The vocabulary entry of <paramref name="id"/> as stored (with '▁', &lt;0xNN&gt;, &lt;s&gt;...).</summary>
    public string GetToken(int id) => _tokens[CheckId(id)];

    public TokenType GetTokenType(int id) => _types[CheckId(id)];

    internal string DisplayTextOf(int id) => _displayText[CheckId(id)];

    /// <summary>The byte a &lt;0xNN&gt; token stands for, or -1 for any other token.</summary>
    internal int ByteValueOf(int id) => _byteValue[CheckId(id)];

    private int CheckId(int id)
    {
        if ((uint)id >= (uint)_tokens.Length)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"Token ids run from 0 to {_tokens.Length - 1}.");
        return id;
    }

    private static KilnTokenizer Create(IReadOnlyList<string> tokens, IReadOnlyList<float> scores, IReadOnlyList<int> types,
        int bosId, int eosId, int unknownId, bool addBosToken, VocabularySource source)
    {
        int count = tokens.Count;
        if (count == 0) throw source.Problem(source.Tokens, "is empty.");
        if (scores.Count != count)
            throw source.Problem(source.Scores, $"has {scores.Count} entries but {source.Tokens} has {count}.");
        if (types.Count != count)
            throw source.Problem(source.Types, $"has {types.Count} entries but {source.Tokens} has {count}.");
        CheckSpecialId(bosId, source.Bos, count, source);
        CheckSpecialId(eosId, source.Eos, count, source);
        CheckSpecialId(unknownId, source.Unknown, count, source);

        var pieces = new string[count];
        var pieceScores = new float[count];
        var pieceTypes = new TokenType[count];
        var byteValue = new short[count];
        var firstIdOfPiece = new Dictionary<string, int>(count, StringComparer.Ordinal);
        int byteTokenCount = 0;
        bool anyEscapedSpace = false;
        int firstPieceWithRawSpace = -1;

        for (int id = 0; id < count; id++)
        {
            string piece = tokens[id];
            if (string.IsNullOrEmpty(piece))
                throw source.Problem(source.Tokens, $"entry {id} is empty; every SentencePiece piece has text.");
            if (!firstIdOfPiece.TryAdd(piece, id))
                throw source.Problem(source.Tokens, $"'{piece}' appears twice, at ids {firstIdOfPiece[piece]} and {id}.");

            float score = scores[id];
            if (float.IsNaN(score)) throw source.Problem(source.Scores, $"entry {id} ('{piece}') is NaN.");

            int type = types[id];
            if (type < (int)TokenType.Normal || type > (int)TokenType.Byte)
            {
                throw source.Problem(source.Types,
                    $"entry {id} ('{piece}') is {type}; token types run from 1 (normal) to 6 (byte).");
            }

            byteValue[id] = NotAByte;
            if ((TokenType)type == TokenType.Byte)
            {
                if (!TryParseByteToken(piece, out byte value))
                    throw source.Problem(source.Tokens, $"entry {id} ('{piece}') has type 6 (byte) but is not spelled <0xNN>.");
                byteValue[id] = value;
                byteTokenCount++;
            }

            anyEscapedSpace |= piece.Contains(EscapedSpace);
            if (firstPieceWithRawSpace < 0 && (TokenType)type == TokenType.Normal && piece.Contains(' '))
                firstPieceWithRawSpace = id;

            pieces[id] = piece;
            pieceScores[id] = score;
            pieceTypes[id] = (TokenType)type;
        }

        // llama2.c's tokenizer.bin spells spaces as ' '; such a vocabulary would never match the escaped text.
        if (!anyEscapedSpace && firstPieceWithRawSpace >= 0)
        {
            throw source.Problem(source.Tokens,
                $"entry {firstPieceWithRawSpace} ('{pieces[firstPieceWithRawSpace]}') holds a plain space and no piece uses " +
                "'▁' (U+2581); SentencePiece vocabularies spell spaces as '▁' (convert a llama2.c tokenizer.bin first).");
        }

        if (pieceTypes[unknownId] != TokenType.Unknown)
        {
            throw source.Problem(source.Unknown,
                $"token {unknownId} ('{pieces[unknownId]}') has type {(int)pieceTypes[unknownId]}, not 2 (unknown).");
        }

        bool byteFallback = byteTokenCount > 0;
        if (byteFallback) CheckByteTokensAreContiguous(pieces, byteValue, byteTokenCount, source);

        byte[] modelProto = SentencePieceModelProto.Build(pieces, pieceScores, pieceTypes, unknownId, bosId, eosId, byteFallback);
        Tokenizer encoder = LlamaTokenizer.Create(new MemoryStream(modelProto, writable: false),
            addBeginOfSentence: false, addEndOfSentence: false, specialTokens: UserDefinedTokens(pieces, pieceTypes));
        return new KilnTokenizer(encoder, pieces, pieceTypes, byteValue, bosId, eosId, unknownId, addBosToken);
    }

    /// <summary>
    /// Byte fallback encodes byte b as the id of &lt;0x00&gt; plus b, so the 256 byte tokens must sit in order at
    /// consecutive ids, as SentencePiece's trainer lays them out.
    /// </summary>
    private static void CheckByteTokensAreContiguous(string[] pieces, short[] byteValue, int byteTokenCount, VocabularySource source)
    {
        int firstByteId = Array.IndexOf(byteValue, (short)0);
        bool contiguous = byteTokenCount == 256 && firstByteId >= 0 && firstByteId + 256 <= pieces.Length;
        for (int b = 0; contiguous && b < 256; b++) contiguous = byteValue[firstByteId + b] == b;
        if (!contiguous)
        {
            throw source.Problem(source.Types,
                $"has {byteTokenCount} byte tokens; byte fallback needs all 256, <0x00> to <0xFF> in order at consecutive ids.");
        }
    }

    /// <summary>
    /// SentencePiece matches user-defined pieces whole before merging; the library does the same for the
    /// special tokens it is given.
    /// </summary>
    private static Dictionary<string, int>? UserDefinedTokens(string[] pieces, TokenType[] types)
    {
        Dictionary<string, int>? userDefined = null;
        for (int id = 0; id < pieces.Length; id++)
        {
            if (types[id] == TokenType.UserDefined) (userDefined ??= new(StringComparer.Ordinal))[pieces[id]] = id;
        }
        return userDefined;
    }

    private static bool TryParseByteToken(string piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value);
    }

    private static void CheckSpecialId(int id, string field, int vocabSize, VocabularySource source)
    {
        if ((uint)id >= (uint)vocabSize)
            throw source.Problem(field, $"is {id}, outside the vocabulary of {vocabSize} tokens.");
    }

    private static T ReadMetadata<T>(ModelFile file, string key, string expected)
    {
        if (!file.Metadata.TryGetValue(key, out var entry))
            throw new ModelLoadException(file.Path, key, null, "is missing; a SentencePiece tokenizer needs it.");
        if (entry.Value is not T value)
            throw new ModelLoadException(file.Path, key, null, $"should be {expected}, but is {entry}.");
        return value;
    }

    private static int ReadTokenId(ModelFile file, string key)
    {
        if (!file.Metadata.TryGetValue(key, out var entry))
            throw new ModelLoadException(file.Path, key, null, "is missing; a SentencePiece tokenizer needs it.");
        if (!entry.TryGetInt64(out long id))
            throw new ModelLoadException(file.Path, key, null, $"should be an integer token id, but is {entry}.");
        // Whether the id lies inside the vocabulary is checked with the rest of it.
        if (id is < int.MinValue or > int.MaxValue)
            throw new ModelLoadException(file.Path, key, null, $"is {id}, far outside any vocabulary.");
        return (int)id;
    }

    /// <summary>Files converted without an unknown_token_id still mark the token by its type.</summary>
    private static int FindUnknownToken(string path, int[] types)
    {
        int id = Array.IndexOf(types, (int)TokenType.Unknown);
        if (id < 0)
            throw new ModelLoadException(path, UnknownKey, null, "is missing, and no token has type 2 (unknown) to stand in.");
        return id;
    }

    /// <summary>
    /// Where a vocabulary came from, so that a problem names what the caller passed: GGUF keys and a
    /// <see cref="ModelLoadException"/> for a model file, parameter names and an <see cref="ArgumentException"/>
    /// for <see cref="FromVocabulary"/>.
    /// </summary>
    private sealed record VocabularySource(string? Path, string Tokens, string Scores, string Types, string Bos, string Eos, string Unknown)
    {
        public static readonly VocabularySource Arguments = new(null, "tokens", "scores", "types", "bos", "eos", "unk");

        public static VocabularySource ForModelFile(string path) =>
            new(path, TokensKey, ScoresKey, TypesKey, BosKey, EosKey, UnknownKey);

        public Exception Problem(string field, string problem) =>
            Path is null ? new ArgumentException(problem, field) : new ModelLoadException(Path, field, null, problem);
    }
}
