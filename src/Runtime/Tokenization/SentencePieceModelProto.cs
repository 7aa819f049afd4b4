namespace Kiln.Tokenization;

/// <summary>
/// Serializes a vocabulary as a SentencePiece ModelProto (src/sentencepiece_model.proto in google/sentencepiece),
/// the only input Microsoft.ML.Tokenizers builds a SentencePiece BPE tokenizer from. Model files carry the
/// vocabulary as plain arrays, so the proto is written here in memory and never touches the disk.
/// </summary>
internal static class SentencePieceModelProto
{
    // ModelProto
    private const int PiecesField = 1;
    private const int TrainerSpecField = 2;
    private const int NormalizerSpecField = 3;

    // ModelProto.SentencePiece
    private const int PieceTextField = 1;
    private const int PieceScoreField = 2;
    private const int PieceTypeField = 3;

    // TrainerSpec
    private const int ModelTypeField = 3;
    private const int VocabSizeField = 4;
    private const int ByteFallbackField = 35;
    private const int UnknownIdField = 40;
    private const int BosIdField = 41;
    private const int EosIdField = 42;
    private const int PadIdField = 43;
    private const int UnknownPieceField = 45;
    private const int BosPieceField = 46;
    private const int EosPieceField = 47;
    private const int BpeModelType = 2;
    private const int NoPadding = -1;

    // NormalizerSpec
    private const int NormalizerNameField = 1;
    private const int AddDummyPrefixField = 3;
    private const int RemoveExtraWhitespacesField = 4;
    private const int EscapeWhitespacesField = 5;

    /// <summary>
    /// The serialized ModelProto of a BPE model whose pieces are merged by score, with the normalization
    /// llama2.c and llama.cpp apply to Llama vocabularies: a dummy '▁' before the text when
    /// <paramref name="addDummyPrefix"/> (Gemma's files turn it off), every space escaped to '▁', and whitespace
    /// otherwise kept as it is.
    /// </summary>
    public static byte[] Build(IReadOnlyList<string> pieces, IReadOnlyList<float> scores, IReadOnlyList<TokenType> types,
        int unknownId, int bosId, int eosId, bool byteFallback, bool addDummyPrefix)
    {
        var model = new ProtobufWriter();
        var message = new ProtobufWriter();

        for (int id = 0; id < pieces.Count; id++)
        {
            message.Clear();
            message.WriteString(PieceTextField, pieces[id]);
            message.WriteFloat(PieceScoreField, scores[id]);
            message.WriteInt32(PieceTypeField, (int)types[id]);
            model.WriteMessage(PiecesField, message.WrittenSpan);
        }

        message.Clear();
        message.WriteInt32(ModelTypeField, BpeModelType);
        message.WriteInt32(VocabSizeField, pieces.Count);
        message.WriteBool(ByteFallbackField, byteFallback);
        message.WriteInt32(UnknownIdField, unknownId);
        message.WriteInt32(BosIdField, bosId);
        message.WriteInt32(EosIdField, eosId);
        message.WriteInt32(PadIdField, NoPadding);
        // The tokenizer takes its special-token strings from these fields, not from the pieces at those ids.
        message.WriteString(UnknownPieceField, pieces[unknownId]);
        message.WriteString(BosPieceField, pieces[bosId]);
        message.WriteString(EosPieceField, pieces[eosId]);
        model.WriteMessage(TrainerSpecField, message.WrittenSpan);

        message.Clear();
        message.WriteString(NormalizerNameField, "identity");
        message.WriteBool(AddDummyPrefixField, addDummyPrefix);
        // Written explicitly: the proto's default is true, which would collapse "a  b" to "a b".
        message.WriteBool(RemoveExtraWhitespacesField, false);
        message.WriteBool(EscapeWhitespacesField, true);
        model.WriteMessage(NormalizerSpecField, message.WrittenSpan);

        return model.WrittenSpan.ToArray();
    }
}
