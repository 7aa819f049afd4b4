using System.Text;
using System.Text.Unicode;
using Kiln.Loading;
using Microsoft.ML.Tokenizers;

namespace Kiln.Tokenization;

// Byte-level BPE: tokenizer.ggml.model "gpt2".
public sealed partial class KilnTokenizer
{
    private const string ByteLevelModelName = "gpt2";
    private const string MergesKey = "tokenizer.ggml.merges";
    private const string PreTokenizerKey = "tokenizer.ggml.pre";
    private const string ByteLevelNeeds = "a byte-level BPE tokenizer";

    // Bytes that never occur in UTF-8 (overlong lead bytes C0/C1, F5..FF): text can never need their tokens.
    private static bool OccursInUtf8(int value) => value is not (0xC0 or 0xC1) and < 0xF5;

    private static KilnTokenizer FromByteLevelFile(ModelFile file)
    {
        var source = VocabularySource.ForModelFile(file);
        string[] tokens = ReadMetadata<string[]>(file, TokensKey, "an array of strings", ByteLevelNeeds);
        int[] rawTypes = ReadMetadata<int[]>(file, TypesKey, "an array of int32", ByteLevelNeeds);
        string[] merges = ReadMetadata<string[]>(file, MergesKey, "an array of strings", ByteLevelNeeds);

        // llama.cpp falls back to its "default" splitting when a file names none.
        string preName = file.Metadata.ContainsKey(PreTokenizerKey)
            ? ReadMetadata<string>(file, PreTokenizerKey, "a string", ByteLevelNeeds)
            : BpePreTokenizer.DefaultName;
        if (!BpePreTokenizer.TryGet(preName, out BpePreTokenizer? preTokenizer))
        {
            throw new ModelLoadException(file.Path, PreTokenizerKey, file.Metadata[PreTokenizerKey].Offset,
                $"pre-tokenizer '{preName}' is not supported; Kiln knows {string.Join(", ", BpePreTokenizer.KnownNames.Select(name => $"'{name}'"))}.");
        }

        int bosId = ReadTokenId(file, BosKey, ByteLevelNeeds);
        int eosId = ReadTokenId(file, EosKey, ByteLevelNeeds);
        int unknownId = file.Metadata.ContainsKey(UnknownKey) ? ReadTokenId(file, UnknownKey, ByteLevelNeeds) : NoToken;
        bool addBos = ReadFlag(file, AddBosKey, whenAbsent: preTokenizer.AddsBos);

        Dictionary<string, int> idOfToken = IndexTokens(tokens, source);
        TokenType[] types = ReadTypes(tokens, rawTypes, source);
        CheckSpecialId(bosId, source.Bos, tokens.Length, source);
        CheckSpecialId(eosId, source.Eos, tokens.Length, source);
        if (unknownId != NoToken) CheckSpecialId(unknownId, source.Unknown, tokens.Length, source);

        var displayText = new string[tokens.Length];
        var pieceBytes = new byte[]?[tokens.Length];
        var vocabulary = new Dictionary<string, int>(tokens.Length, StringComparer.Ordinal);
        for (int id = 0; id < tokens.Length; id++)
        {
            string token = tokens[id];
            switch (types[id])
            {
                case TokenType.Normal:
                    if (!ByteLevelAlphabet.TryDecode(token, out byte[] bytes, out int bad))
                    {
                        throw source.Problem(source.Tokens,
                            $"entry {id} ('{token}') is a normal token but its character {bad} (U+{(int)token[bad]:X4}) is not one of the 256 that spell bytes.");
                    }
                    vocabulary.Add(token, id);
                    // Most pieces are whole UTF-8; the rest hold part of a character and wait for their neighbours.
                    if (Utf8.IsValid(bytes)) displayText[id] = Encoding.UTF8.GetString(bytes);
                    else (displayText[id], pieceBytes[id]) = ("", bytes);
                    break;
                case TokenType.UserDefined or TokenType.Unknown:
                    displayText[id] = token; // stored as the text itself, not in the byte alphabet
                    break;
                case TokenType.Control or TokenType.Unused:
                    displayText[id] = "";
                    break;
                default:
                    throw source.Problem(source.Types,
                        $"entry {id} ('{token}') has type 6 (byte); <0xNN> byte tokens belong to SentencePiece vocabularies, byte-level ones spell bytes as characters.");
            }
        }

        CheckEveryByteIsAToken(vocabulary, source);
        CheckMerges(merges, vocabulary, source);

        // Special and unused tokens stay out of the library's vocabulary: the library sees only the text between
        // special tokens, and must never produce an id that is not an ordinary token.
        var library = BpeTokenizer.Create(new BpeOptions(vocabulary) { Merges = merges, ByteLevel = true });
        var encoder = new ByteLevelEncoder(library, preTokenizer, preTokenizer.IgnoresMerges ? vocabulary : null);
        return new KilnTokenizer(TokenizerKind.ByteLevelBpe, encoder, tokens, types, displayText, pieceBytes,
            bosId, eosId, unknownId, addBos, addsSpacePrefix: false, specialTokensStripFollowingSpace: IsPhi3(file));
    }

    /// <summary>
    /// The library drops a byte it has no token for, silently; every byte that UTF-8 text can hold must be one.
    /// </summary>
    private static void CheckEveryByteIsAToken(Dictionary<string, int> vocabulary, VocabularySource source)
    {
        for (int value = 0; value < 256; value++)
        {
            if (!OccursInUtf8(value)) continue;
            string spelling = ByteLevelAlphabet.ToChar((byte)value).ToString();
            if (!vocabulary.ContainsKey(spelling))
            {
                throw source.Problem(source.Tokens,
                    $"has no normal token for byte 0x{value:X2} ('{spelling}'); a byte-level vocabulary spells every byte as a token of its own.");
            }
        }
    }

    /// <summary>
    /// Each merge is "left right": two normal tokens whose concatenation is a normal token too, at most once.
    /// llama.cpp tolerates less, but such a vocabulary could only have been damaged.
    /// </summary>
    private static void CheckMerges(string[] merges, Dictionary<string, int> vocabulary, VocabularySource source)
    {
        var firstIndexOfMerge = new Dictionary<string, int>(merges.Length, StringComparer.Ordinal);
        for (int index = 0; index < merges.Length; index++)
        {
            string merge = merges[index];
            int space = merge.IndexOf(' ');
            if (space <= 0 || space == merge.Length - 1 || merge.IndexOf(' ', space + 1) >= 0)
                throw source.Problem(MergesKey, $"entry {index} ('{merge}') is not two tokens joined by one space.");
            string left = merge[..space], right = merge[(space + 1)..];
            if (!vocabulary.ContainsKey(left)) throw MergeProblem(index, merge, $"'{left}' is not a normal token");
            if (!vocabulary.ContainsKey(right)) throw MergeProblem(index, merge, $"'{right}' is not a normal token");
            if (!vocabulary.ContainsKey(left + right)) throw MergeProblem(index, merge, $"its result '{left + right}' is not a normal token");
            if (!firstIndexOfMerge.TryAdd(merge, index)) throw MergeProblem(index, merge, $"it repeats entry {firstIndexOfMerge[merge]}");
        }

        Exception MergeProblem(int index, string merge, string problem) =>
            source.Problem(MergesKey, $"entry {index} ('{merge}'): {problem}.");
    }

    /// <summary>
    /// Splits a run of text as tokenizer.ggml.pre says and has the library merge each piece: its UTF-8 bytes in the
    /// byte alphabet, merged by the file's merge ranks.
    /// </summary>
    private sealed class ByteLevelEncoder(BpeTokenizer library, BpePreTokenizer preTokenizer, Dictionary<string, int>? wholePieces)
        : ITextEncoder
    {
        public void Encode(ReadOnlySpan<char> text, List<int> ids)
        {
            var pieces = new List<Range>();
            preTokenizer.Split(text, pieces);
            foreach (Range range in pieces)
            {
                ReadOnlySpan<char> piece = text[range];
                if (wholePieces is not null && wholePieces.TryGetValue(ByteLevelAlphabet.Encode(piece), out int id))
                {
                    ids.Add(id);
                    continue;
                }
                ids.AddRange(library.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
            }
        }
    }
}
