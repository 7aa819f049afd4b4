using Kiln.Loading;

namespace Kiln.Bench;

/// <summary>
/// A synthetic model's tokenizer, written as the <c>tokenizer.ggml.*</c> keys llama.cpp reads: every token string
/// unique (llama.cpp rejects a duplicate), the special tokens the family expects, and whether to prepend BOS.
/// </summary>
public abstract record SyntheticVocabulary(bool AddBos)
{
    /// <summary>GGUF token types (llama_token_type).</summary>
    public const int Normal = 1, Unknown = 2, Control = 3, Byte = 6;

    /// <summary>
    /// A SentencePiece vocabulary ("llama" tokenizer model): &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, 256 byte tokens, then pieces,
    /// and <paramref name="specials"/> (control tokens) in the last ids.
    /// </summary>
    public static SyntheticVocabulary SentencePiece(bool addBos, bool addSpacePrefix = true, params string[] specials) =>
        new SentencePieceVocabulary(addBos, addSpacePrefix, specials);

    /// <summary>A byte-level BPE vocabulary ("gpt2" tokenizer model) with pre-tokenizer <paramref name="pre"/> and <paramref name="specials"/> at its end.</summary>
    public static SyntheticVocabulary ByteLevelBpe(string pre, params string[] specials) => new ByteLevelBpeVocabulary(pre, specials);

    /// <summary>A WordPiece vocabulary ("bert" tokenizer model) as llama.cpp's converter spells BERT's: see <see cref="WordPieceVocabulary"/>.</summary>
    public static SyntheticVocabulary WordPiece() => new WordPieceVocabulary();

    public abstract void Write(GgufWriter writer, int size);
}

/// <summary>The vocabulary today's synthetic Llama files carry, unchanged.</summary>
public sealed record SentencePieceVocabulary(bool AddBos, bool AddSpacePrefix, string[] Specials) : SyntheticVocabulary(AddBos)
{
    public override void Write(GgufWriter writer, int size)
    {
        var (tokens, scores, types) = Build(size);
        for (int i = 0; i < Specials.Length; i++)
        {
            int id = size - Specials.Length + i;
            if (id < 259 || Array.IndexOf(tokens, Specials[i]) >= 0) throw new ArgumentException($"special token '{Specials[i]}' does not fit a {size}-token vocabulary");
            tokens[id] = Specials[i];
            scores[id] = 0;
            types[id] = Control;
        }
        writer.AddMetadata("tokenizer.ggml.model", "llama");
        writer.AddMetadata("tokenizer.ggml.tokens", tokens);
        writer.AddMetadata("tokenizer.ggml.scores", scores);
        writer.AddMetadata("tokenizer.ggml.token_type", types);
        writer.AddMetadata("tokenizer.ggml.unknown_token_id", 0u);
        writer.AddMetadata("tokenizer.ggml.bos_token_id", 1u);
        writer.AddMetadata("tokenizer.ggml.eos_token_id", 2u);
        writer.AddMetadata("tokenizer.ggml.add_bos_token", AddBos);
        writer.AddMetadata("tokenizer.ggml.add_eos_token", false);
        if (!AddSpacePrefix) writer.AddMetadata("tokenizer.ggml.add_space_prefix", false);
    }

    /// <summary>
    /// A valid SentencePiece vocabulary of <paramref name="size"/> unique pieces: &lt;unk&gt; (unknown), &lt;s&gt; and
    /// &lt;/s&gt; (control), the 256 byte tokens &lt;0x00&gt;…&lt;0xFF&gt;, then "▁a", "a", "▁b", … "▁aa", "aa", … by
    /// increasing length. Scores fall with rank, as a trained model's do.
    /// </summary>
    public static (string[] Tokens, float[] Scores, int[] Types) Build(int size)
    {
        if (size < 259 + 26) throw new ArgumentOutOfRangeException(nameof(size), size, "a SentencePiece vocabulary needs at least 285 tokens");
        var tokens = new string[size];
        var scores = new float[size];
        var types = new int[size];
        tokens[0] = "<unk>"; types[0] = Unknown;
        tokens[1] = "<s>"; types[1] = Control;
        tokens[2] = "</s>"; types[2] = Control;
        for (int b = 0; b < 256; b++) { tokens[3 + b] = $"<0x{b:X2}>"; types[3 + b] = Byte; }

        int next = 259;
        var buffer = new char[8];
        for (int length = 1; next < size; length++)
        {
            if (length > 6) throw new InvalidOperationException("vocabulary too large for the piece generator");
            long combinations = (long)Math.Pow(26, length);
            for (long index = 0; index < combinations && next < size; index++)
            {
                long rest = index;
                for (int i = length - 1; i >= 0; i--) { buffer[i] = (char)('a' + rest % 26); rest /= 26; }
                string piece = new(buffer, 0, length);
                foreach (string token in (ReadOnlySpan<string>)["\u2581" + piece, piece])
                {
                    if (next == size) break;
                    tokens[next] = token;
                    scores[next] = -(next - 259);
                    types[next] = Normal;
                    next++;
                }
            }
        }
        return (tokens, scores, types);
    }
}

/// <summary>
/// GPT-2's byte-level BPE: ids 0–255 are the bytes in GPT-2's byte-to-unicode alphabet (in GPT-2's order: the
/// printable bytes '!'…'~', '¡'…'¬', '®'…'ÿ', then the rest mapped to U+0100…), then merged tokens, each with the
/// merge ("a b") that makes it, then the special tokens (control). llama.cpp decodes every non-control token
/// through that alphabet at load, so merged tokens are concatenations of byte tokens only.
/// </summary>
public sealed record ByteLevelBpeVocabulary(string Pre, string[] Specials) : SyntheticVocabulary(AddBos: false)
{
    public override void Write(GgufWriter writer, int size)
    {
        var (tokens, types, merges) = Build(size, Specials);
        uint endOfText = (uint)(size - Specials.Length); // the first special: <|endoftext|>
        writer.AddMetadata("tokenizer.ggml.model", "gpt2");
        writer.AddMetadata("tokenizer.ggml.pre", Pre);
        writer.AddMetadata("tokenizer.ggml.tokens", tokens);
        writer.AddMetadata("tokenizer.ggml.token_type", types);
        writer.AddMetadata("tokenizer.ggml.merges", merges);
        writer.AddMetadata("tokenizer.ggml.bos_token_id", endOfText);
        writer.AddMetadata("tokenizer.ggml.eos_token_id", endOfText);
        writer.AddMetadata("tokenizer.ggml.padding_token_id", endOfText);
        writer.AddMetadata("tokenizer.ggml.add_bos_token", AddBos);
        writer.AddMetadata("tokenizer.ggml.add_eos_token", false);
    }

    /// <summary>GPT-2's byte-to-unicode alphabet in GPT-2's token order: (byte, its character).</summary>
    public static (byte Byte, char Char)[] ByteAlphabet()
    {
        var alphabet = new List<(byte, char)>(256);
        static bool Printable(int b) => b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
        for (int b = 0; b < 256; b++)
            if (Printable(b)) alphabet.Add(((byte)b, (char)b));
        int shifted = 0;
        for (int b = 0; b < 256; b++)
            if (!Printable(b)) alphabet.Add(((byte)b, (char)(256 + shifted++)));
        return [.. alphabet];
    }

    /// <summary>
    /// <paramref name="size"/> unique tokens: 256 bytes, merges, then <paramref name="specials"/>. Merges are drawn by
    /// a fixed-seed generator so the vocabulary depends on its size only: word-like pieces (an optional leading 'Ġ',
    /// GPT-2's space, then letters), each the concatenation of two earlier tokens, never repeated.
    /// </summary>
    public static (string[] Tokens, int[] Types, string[] Merges) Build(int size, string[] specials)
    {
        int mergeCount = size - 256 - specials.Length;
        if (mergeCount < 0) throw new ArgumentOutOfRangeException(nameof(size), size, $"a byte-level BPE vocabulary with {specials.Length} special tokens needs at least {256 + specials.Length} tokens");
        var tokens = new string[size];
        var types = new int[size];
        var merges = new string[mergeCount];
        var known = new HashSet<string>(StringComparer.Ordinal);

        var alphabet = ByteAlphabet();
        for (int i = 0; i < 256; i++)
        {
            tokens[i] = alphabet[i].Char.ToString();
            types[i] = Normal;
            known.Add(tokens[i]);
        }

        // Left parts may start a word (leading 'Ġ'); right parts continue one. Letters seed both lists.
        const char Space = '\u0120'; // 'Ġ', byte 0x20
        var starts = new List<string> { Space.ToString() };
        var continuations = new List<string>();
        for (char c = 'a'; c <= 'z'; c++) { starts.Add(c.ToString()); continuations.Add(c.ToString()); }
        for (char c = 'A'; c <= 'Z'; c++) starts.Add(c.ToString());

        var random = new Random(20240917);
        int next = 256;
        for (int merge = 0; merge < mergeCount;)
        {
            // Favour recent tokens a little so pieces grow into longer words, as a trained merge list does.
            string left = starts[Pick(random, starts.Count)];
            string right = continuations[Pick(random, continuations.Count)];
            string merged = left + right;
            if (merged.Length > 16 || !known.Add(merged)) continue;
            tokens[next] = merged;
            types[next] = Normal;
            merges[merge++] = left + " " + right;
            next++;
            starts.Add(merged);
            if (merged[0] != Space) continuations.Add(merged);
        }

        for (int i = 0; i < specials.Length; i++)
        {
            if (!known.Add(specials[i])) throw new ArgumentException($"special token '{specials[i]}' repeats a token", nameof(specials));
            tokens[next + i] = specials[i];
            types[next + i] = Control;
        }
        return (tokens, types, merges);
    }

    private static int Pick(Random random, int count) =>
        random.Next(2) == 0 ? random.Next(count) : count - 1 - random.Next(Math.Min(count, 64));
}

/// <summary>
/// BERT's WordPiece as llama.cpp's converter writes it ("bert" tokenizer model): [PAD], [UNK], [CLS], [SEP], [MASK]
/// first, then pieces by increasing length, each as a word start ("▁ab", vocab.txt's "ab") and a continuation ("ab",
/// vocab.txt's "##ab"). The special ids are stated, since llama.cpp's defaults are bert-base's (CLS 101, SEP 102).
/// </summary>
public sealed record WordPieceVocabulary() : SyntheticVocabulary(AddBos: true)
{
    public const int Pad = 0, Unk = 1, Cls = 2, Sep = 3, Mask = 4;

    public override void Write(GgufWriter writer, int size)
    {
        var (tokens, types) = Build(size);
        writer.AddMetadata("tokenizer.ggml.model", "bert");
        writer.AddMetadata("tokenizer.ggml.tokens", tokens);
        writer.AddMetadata("tokenizer.ggml.token_type", types);
        writer.AddMetadata("tokenizer.ggml.token_type_count", 2u); // BERT's segments A and B: rows of token_types.weight
        writer.AddMetadata("tokenizer.ggml.bos_token_id", (uint)Cls);
        writer.AddMetadata("tokenizer.ggml.eos_token_id", (uint)Sep);
        writer.AddMetadata("tokenizer.ggml.cls_token_id", (uint)Cls);
        writer.AddMetadata("tokenizer.ggml.seperator_token_id", (uint)Sep); // llama.cpp's spelling of the key
        writer.AddMetadata("tokenizer.ggml.unknown_token_id", (uint)Unk);
        writer.AddMetadata("tokenizer.ggml.padding_token_id", (uint)Pad);
        writer.AddMetadata("tokenizer.ggml.mask_token_id", (uint)Mask);
        writer.AddMetadata("tokenizer.ggml.add_bos_token", true);
        writer.AddMetadata("tokenizer.ggml.add_eos_token", true);
    }

    public static (string[] Tokens, int[] Types) Build(int size)
    {
        string[] specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
        if (size < specials.Length + 52) throw new ArgumentOutOfRangeException(nameof(size), size, $"a WordPiece vocabulary needs at least {specials.Length + 52} tokens");
        var tokens = new string[size];
        var types = new int[size];
        for (int i = 0; i < specials.Length; i++)
        {
            tokens[i] = specials[i];
            types[i] = i == Unk ? Unknown : Control;
        }
        int next = specials.Length;
        var buffer = new char[8];
        for (int length = 1; next < size; length++)
        {
            if (length > 6) throw new InvalidOperationException("vocabulary too large for the piece generator");
            long combinations = (long)Math.Pow(26, length);
            for (long index = 0; index < combinations && next < size; index++)
            {
                long rest = index;
                for (int i = length - 1; i >= 0; i--) { buffer[i] = (char)('a' + rest % 26); rest /= 26; }
                string piece = new(buffer, 0, length);
                foreach (string token in (ReadOnlySpan<string>)["\u2581" + piece, piece])
                {
                    if (next == size) break;
                    tokens[next] = token;
                    types[next] = Normal;
                    next++;
                }
            }
        }
        return (tokens, types);
    }
}
