namespace Kiln.Tokenization;

/// <summary>
/// What a vocabulary entry is. The values are shared by GGUF's tokenizer.ggml.token_type and SentencePiece's
/// ModelProto.SentencePiece.Type, so they pass between the two unchanged.
/// </summary>
public enum TokenType
{
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}
