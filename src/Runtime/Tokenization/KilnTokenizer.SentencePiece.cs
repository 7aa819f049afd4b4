using System.Globalization;
using Kiln.Loading;
using Microsoft.ML.Tokenizers;

namespace Kiln.Tokenization;

// SentencePiece BPE: tokenizer.ggml.model "llama".
public sealed partial class KilnTokenizer
{
    private const string SentencePieceModelName = "llama";
    private const string ScoresKey = "tokenizer.ggml.scores";
    private const string AddSpacePrefixKey = "tokenizer.ggml.add_space_prefix";
    private const string SentencePieceNeeds = "a SentencePiece tokenizer";

    private const char EscapedSpace = '\u2581'; // '▁', SentencePiece's stand-in for a space inside pieces

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
        return CreateSentencePiece(tokens, scores, types, bos, eos, unk, addBosToken: true, addSpacePrefix: true,
            specialTokensStripFollowingSpace: false, VocabularySource.Arguments);
    }

    private static KilnTokenizer FromSentencePieceFile(ModelFile file)
    {
        string[] tokens = ReadMetadata<string[]>(file, TokensKey, "an array of strings", SentencePieceNeeds);
        float[] scores = ReadMetadata<float[]>(file, ScoresKey, "an array of float32", SentencePieceNeeds);
        int[] types = ReadMetadata<int[]>(file, TypesKey, "an array of int32", SentencePieceNeeds);
        int bosId = ReadTokenId(file, BosKey, SentencePieceNeeds);
        int eosId = ReadTokenId(file, EosKey, SentencePieceNeeds);
        int unknownId = file.Metadata.ContainsKey(UnknownKey)
            ? ReadTokenId(file, UnknownKey, SentencePieceNeeds)
            : FindUnknownToken(file.Path, types);
        bool addBos = ReadFlag(file, AddBosKey, whenAbsent: true);
        // Gemma's files turn the dummy space off; every Llama leaves the key out and keeps it.
        bool addSpacePrefix = ReadFlag(file, AddSpacePrefixKey, whenAbsent: true);

        return CreateSentencePiece(tokens, scores, types, bosId, eosId, unknownId, addBos, addSpacePrefix, IsPhi3(file),
            VocabularySource.ForModelFile(file));
    }

    private static KilnTokenizer CreateSentencePiece(IReadOnlyList<string> tokens, IReadOnlyList<float> scores,
        IReadOnlyList<int> types, int bosId, int eosId, int unknownId, bool addBosToken, bool addSpacePrefix,
        bool specialTokensStripFollowingSpace, VocabularySource source)
    {
        int count = tokens.Count;
        IndexTokens(tokens, source);
        if (scores.Count != count)
            throw source.Problem(source.Scores, $"has {scores.Count} entries but {source.Tokens} has {count}.");
        TokenType[] pieceTypes = ReadTypes(tokens, types, source);
        CheckSpecialId(bosId, source.Bos, count, source);
        CheckSpecialId(eosId, source.Eos, count, source);
        CheckSpecialId(unknownId, source.Unknown, count, source);

        var pieces = new string[count];
        var pieceScores = new float[count];
        var displayText = new string[count];
        var pieceBytes = new byte[]?[count];
        int byteTokenCount = 0, firstByteId = -1;
        bool anyEscapedSpace = false;
        int firstPieceWithRawSpace = -1;

        for (int id = 0; id < count; id++)
        {
            string piece = tokens[id];
            float score = scores[id];
            if (float.IsNaN(score)) throw source.Problem(source.Scores, $"entry {id} ('{piece}') is NaN.");

            TokenType type = pieceTypes[id];
            if (type == TokenType.Byte)
            {
                if (!TryParseByteToken(piece, out byte value))
                    throw source.Problem(source.Tokens, $"entry {id} ('{piece}') has type 6 (byte) but is not spelled <0xNN>.");
                if (byteTokenCount == 0) firstByteId = id;
                // In order at consecutive ids, as SentencePiece's trainer lays them out: byte fallback encodes b as <0x00>'s id + b.
                if (id != firstByteId + value)
                    throw source.Problem(source.Types, "holds byte tokens out of order; byte fallback needs <0x00> to <0xFF> in order at consecutive ids.");
                pieceBytes[id] = [value];
                byteTokenCount++;
            }

            anyEscapedSpace |= piece.Contains(EscapedSpace);
            if (firstPieceWithRawSpace < 0 && type == TokenType.Normal && piece.Contains(' '))
                firstPieceWithRawSpace = id;

            pieces[id] = piece;
            pieceScores[id] = score;
            displayText[id] = type switch
            {
                TokenType.Control or TokenType.Unused or TokenType.Byte => "",
                _ => piece.Replace(EscapedSpace, ' '),
            };
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
        if (byteFallback && byteTokenCount != 256)
        {
            throw source.Problem(source.Types,
                $"has {byteTokenCount} byte tokens; byte fallback needs all 256, <0x00> to <0xFF> in order at consecutive ids.");
        }

        byte[] modelProto = SentencePieceModelProto.Build(pieces, pieceScores, pieceTypes, unknownId, bosId, eosId, byteFallback, addSpacePrefix);
        // No special tokens for the library: the tokenizer finds them in the text first, as llama.cpp does, so that
        // the text after one starts with its own dummy space.
        Tokenizer encoder = LlamaTokenizer.Create(new MemoryStream(modelProto, writable: false),
            addBeginOfSentence: false, addEndOfSentence: false);
        return new KilnTokenizer(TokenizerKind.SentencePiece, new SentencePieceEncoder(encoder), pieces, pieceTypes,
            displayText, pieceBytes, bosId, eosId, unknownId, addBosToken, addSpacePrefix, specialTokensStripFollowingSpace);
    }

    private static bool TryParseByteToken(string piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value);
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
    /// Each run of text is a whole SentencePiece input: it gets the dummy prefix (when the model has one), as
    /// llama.cpp gives one to every run that follows a special token.
    /// </summary>
    private sealed class SentencePieceEncoder(Tokenizer library) : ITextEncoder
    {
        public void Encode(ReadOnlySpan<char> text, List<int> ids) =>
            ids.AddRange(library.EncodeToIds(text, considerPreTokenization: true, considerNormalization: true));
    }
}
