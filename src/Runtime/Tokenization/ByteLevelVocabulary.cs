using Kiln.Loading;

namespace Kiln.Tokenization;

/// <summary>
/// A made-up but valid byte-level BPE vocabulary, for synthetic GGUF files (benchmarks, tests) of architectures
/// whose real tokenizer is byte-level (GPT-2, Qwen2, Qwen3): the 256 byte tokens at ids 0..255 (byte b at id b),
/// then merged tokens in merge order, then &lt;|endoftext|&gt; as the one control token, standing for BOS and EOS
/// as in GPT-2. The merges spell lowercase words, each with or without a leading space ('Ġ'), shortest first:
/// "Ġ a" → "Ġa", "a b" → "ab", then "Ġa b" → "Ġab" and so on, so every merge joins two earlier tokens into a new
/// one and English text takes fewer tokens than bytes. Deterministic: the same size gives the same vocabulary.
/// </summary>
public sealed class ByteLevelVocabulary
{
    public const string EndOfText = "<|endoftext|>";

    /// <summary>The smallest vocabulary: the 256 byte tokens and &lt;|endoftext|&gt;, with no merges.</summary>
    public const int MinTokenCount = 257;

    private const string Letters = "abcdefghijklmnopqrstuvwxyz";

    private readonly string[] _tokens;
    private readonly int[] _tokenTypes;
    private readonly string[] _merges;

    private ByteLevelVocabulary(string[] tokens, int[] tokenTypes, string[] merges)
    {
        _tokens = tokens;
        _tokenTypes = tokenTypes;
        _merges = merges;
    }

    /// <summary>The entries, in the byte alphabet (GGUF tokenizer.ggml.tokens).</summary>
    public IReadOnlyList<string> Tokens => _tokens;

    /// <summary>Each entry's <see cref="TokenType"/> as GGUF stores it (tokenizer.ggml.token_type).</summary>
    public IReadOnlyList<int> TokenTypes => _tokenTypes;

    /// <summary>The merges in rank order, "left right" (tokenizer.ggml.merges).</summary>
    public IReadOnlyList<string> Merges => _merges;

    /// <summary>&lt;|endoftext|&gt;, the last id: BOS and EOS.</summary>
    public int EndOfTextId => _tokens.Length - 1;

    /// <summary>A vocabulary of exactly <paramref name="tokenCount"/> tokens.</summary>
    public static ByteLevelVocabulary Create(int tokenCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokenCount, MinTokenCount);
        var tokens = new string[tokenCount];
        var types = new int[tokenCount];
        Array.Fill(types, (int)TokenType.Normal);
        for (int value = 0; value < 256; value++) tokens[value] = ByteLevelAlphabet.ToChar((byte)value).ToString();
        tokens[^1] = EndOfText;
        types[^1] = (int)TokenType.Control;

        int mergeCount = tokenCount - MinTokenCount;
        var merges = new string[mergeCount];
        // Words grow one letter per level; the first level is a space alone or one letter, both byte tokens already.
        var level = new List<string>(Letters.Length + 1) { ByteLevelAlphabet.ToChar((byte)' ').ToString() };
        foreach (char letter in Letters) level.Add(letter.ToString());
        int made = 0;
        while (made < mergeCount)
        {
            var next = new List<string>(level.Count * Letters.Length);
            foreach (string prefix in level)
            {
                foreach (char letter in Letters)
                {
                    if (made == mergeCount) break;
                    string word = prefix + letter;
                    merges[made] = $"{prefix} {letter}";
                    tokens[256 + made] = word;
                    next.Add(word);
                    made++;
                }
            }
            level = next;
        }
        return new ByteLevelVocabulary(tokens, types, merges);
    }

    /// <summary>
    /// Adds the tokenizer.ggml.* metadata of this vocabulary to <paramref name="writer"/>: model "gpt2", the
    /// pre-tokenizer <paramref name="preTokenizer"/> ("gpt-2" for GPT-2, "qwen2" for Qwen2 and Qwen3), tokens,
    /// types, merges, &lt;|endoftext|&gt; as BOS and EOS, and no BOS before prompts. llama.cpp and
    /// <see cref="KilnTokenizer.FromModelFile"/> both read the result.
    /// </summary>
    public GgufWriter AddTo(GgufWriter writer, string preTokenizer = "gpt-2")
    {
        ArgumentNullException.ThrowIfNull(writer);
        ArgumentNullException.ThrowIfNull(preTokenizer);
        if (!BpePreTokenizer.TryGet(preTokenizer, out _))
        {
            throw new ArgumentException(
                $"Pre-tokenizer '{preTokenizer}' is not one Kiln knows ({string.Join(", ", BpePreTokenizer.KnownNames)}).", nameof(preTokenizer));
        }
        return writer
            .AddMetadata("tokenizer.ggml.model", "gpt2")
            .AddMetadata("tokenizer.ggml.pre", preTokenizer)
            .AddMetadata("tokenizer.ggml.tokens", _tokens)
            .AddMetadata("tokenizer.ggml.token_type", _tokenTypes)
            .AddMetadata("tokenizer.ggml.merges", _merges)
            .AddMetadata("tokenizer.ggml.bos_token_id", (uint)EndOfTextId)
            .AddMetadata("tokenizer.ggml.eos_token_id", (uint)EndOfTextId)
            .AddMetadata("tokenizer.ggml.add_bos_token", false);
    }
}
