using System.Text;
using Kiln.Bench;
using Kiln.Loading;
using Kiln.Runtime.Tests.Tokenization;
using Kiln.Tokenization;
using LLama;
using LLama.Common;
using LLama.Native;
using Xunit.Abstractions;

namespace Kiln.PeerTests;

/// <summary>
/// Peer oracle for tokenization: llama.cpp (LLamaSharp 0.30.0) loads the same GGUF vocabulary (vocab only, no
/// weights) and both engines encode the same texts; every disagreement is listed.
/// </summary>
public sealed class TokenizerPeerTests(ITestOutputHelper output)
{
    private static readonly string[] Corpus =
    [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "don't, I'll, we've, she's, they're, I'm, he'd, DON'T, We'Ve",
        "Digits 0123456789, 3.14159e-10 and 1,000,000 or 12345678901",
        "line one\nline two\r\n\n\ttabbed line\n\n\n",
        "   leading spaces, double  spaces and trailing   ",
        "Accents: café, naïve, Ångström, żółć, São Paulo",
        "CJK: 日本語のテキスト, 中文文本, 한국어 텍스트",
        "Emoji: 😀🚀👍🏽 and a flag 🇫🇷 ",
        "Code: for (int i = 0; i < n; i++) { sum += a[i]; } // «ok» $x ^ y | z ~ w <= 3",
        "Mixed 🐍 snake_case, camelCase, kebab-case\u00A0nbsp\u3000ideographic space",
        "Separators:\u001Cfile\u001Dgroup\u001Erecord\u001Funit",
        "Punctuation runs!!! ... ??? ((nested)) \"quotes\" 'single' — dashes –",
        "Scripts: नमस्ते दुनिया, مرحبا بالعالم, สวัสดีชาวโลก, Привет мир, Γειά σου",
        "Combining e\u0301 and a ZWJ family 👨\u200D👩\u200D👧, line\u2028separator",
        "Astral letters 𝐀𝐁𝐂 x𝐀y, CJK extension B 𠀀𠀁 and digits 𝟏𝟐𝟑",
        " ",
        "\n",
        "x",
    ];

    [Theory]
    [InlineData("gpt-2")]
    [InlineData("qwen2")]
    [InlineData("llama-bpe")]
    [InlineData("smaug-bpe")]
    [InlineData("default")]
    public void Gpt2VocabularyEncodesAndDecodesAsLlamaCpp(string pre)
    {
        WithFile(writer => Gpt2Vocabulary.AddTokenizer(writer, pre), (kiln, llama) =>
        {
            var problems = new List<string>();
            foreach (string text in Corpus) CompareEncoding(kiln, llama, text, addBos: false, parseSpecial: false, problems);
            CompareEncoding(kiln, llama, "one<|endoftext|>two <|endoftext|>", addBos: false, parseSpecial: true, problems);
            CompareEncoding(kiln, llama, "one<|endoftext|>two", addBos: false, parseSpecial: false, problems);
            foreach (string text in Corpus) CompareDecoding(kiln, llama, kiln.Encode(text, addBos: false), problems);
            Report($"GPT-2 vocabulary, pre '{pre}'", problems);
        });
    }

    [Theory]
    [InlineData("gpt-2")]
    [InlineData("qwen2")]
    public void SyntheticByteLevelVocabularyLoadsInLlamaCppAndEncodesAlike(string pre)
    {
        var vocabulary = ByteLevelVocabulary.Create(32000);
        WithFile(writer => vocabulary.AddTo(writer, pre), (kiln, llama) =>
        {
            Assert.Equal(32000, llama.Vocab.Count);
            Assert.Equal(vocabulary.EndOfTextId, (int)llama.Vocab.BOS!.Value);
            var problems = new List<string>();
            foreach (string text in Corpus) CompareEncoding(kiln, llama, text, addBos: kiln.AddBosToken, parseSpecial: false, problems);
            foreach (string text in Corpus) CompareDecoding(kiln, llama, kiln.Encode(text, addBos: false), problems);
            Report($"synthetic vocabulary, pre '{pre}'", problems);
        });
    }

    /// <summary>
    /// Where a character class ends is where a pre-tokenizer cuts, and only a merge across the cut shows it: each of
    /// these characters (whitespace or not, and letters, digits and punctuation beyond U+FFFF, which .NET's regular
    /// expressions see as two surrogates) gets merges with the space before and after it, with itself and with the
    /// letters around it, so a piece boundary that differs from llama.cpp's changes the ids.
    /// </summary>
    [Theory]
    [InlineData("gpt-2")]
    [InlineData("qwen2")]
    [InlineData("llama-bpe")]
    [InlineData("default")]
    public void PieceBoundariesMatchLlamaCpp(string pre)
    {
        string[] characters = ["\t", "\v", "\f", "\r", "\u001C", "\u001F", "\u0085", "\u00A0", "\u1680", "\u2000", "\u2028", "\u202F",
            "\u3000", "\u200B", "𝐀", "𠮷", "𝟏", "𐄀", "😀", "\U000E0041"];
        string space = ByteLevelAlphabet.ToChar((byte)' ').ToString();
        var tokens = new List<string>();
        var merges = new List<string>();
        for (int value = 0; value < 256; value++) tokens.Add(ByteLevelAlphabet.ToChar((byte)value).ToString());
        void Merge(string left, string right)
        {
            if (tokens.Contains(left + right)) return;
            merges.Add($"{left} {right}");
            tokens.Add(left + right);
        }
        foreach (string character in characters)
        {
            string spelled = ByteLevelAlphabet.Encode(Encoding.UTF8.GetBytes(character));
            for (int length = 2; length <= spelled.Length; length++) Merge(spelled[..(length - 1)], spelled[(length - 1)..length]);
            Merge(space, spelled);
            Merge(spelled, space);
            Merge(spelled, spelled);
            Merge("a", spelled);
            Merge(spelled, "b");
        }
        tokens.Add("<|endoftext|>");
        int[] types = [.. Enumerable.Repeat((int)TokenType.Normal, tokens.Count - 1), (int)TokenType.Control];

        WithFile(writer => writer
            .AddMetadata("tokenizer.ggml.model", "gpt2")
            .AddMetadata("tokenizer.ggml.pre", pre)
            .AddMetadata("tokenizer.ggml.tokens", tokens.ToArray())
            .AddMetadata("tokenizer.ggml.token_type", types)
            .AddMetadata("tokenizer.ggml.merges", merges.ToArray())
            .AddMetadata("tokenizer.ggml.bos_token_id", (uint)(tokens.Count - 1))
            .AddMetadata("tokenizer.ggml.eos_token_id", (uint)(tokens.Count - 1)), (kiln, llama) =>
        {
            var problems = new List<string>();
            foreach (string c in characters)
            {
                foreach (string text in (string[])[$"a{c}b", $"a {c}b", $"a{c} b", $"a {c} b", $"{c}{c}x", $"x {c}{c}", $"{c} \n{c}1 2", $"{c}", $"1{c}{c}{c}{c}2"])
                    CompareEncoding(kiln, llama, text, addBos: false, parseSpecial: false, problems);
            }
            Report($"piece boundaries, pre '{pre}'", problems);
        });
    }

    [Theory]
    [InlineData("stories260K.gguf")]
    [InlineData("llama-2-tiny-random.gguf")]
    public void SentencePieceModelsEncodeAsLlamaCpp(string name)
    {
        string path = SideBySide.ModelPath(name);
        using var file = ModelFile.Open(path);
        var kiln = KilnTokenizer.FromModelFile(file);
        using var llama = LoadVocabulary(path);
        var problems = new List<string>();
        foreach (string text in Corpus) CompareEncoding(kiln, llama, text, addBos: true, parseSpecial: false, problems);
        CompareEncoding(kiln, llama, "<s>hi</s> there<unk>", addBos: true, parseSpecial: true, problems);
        CompareEncoding(kiln, llama, "<s>hi</s> there<unk>", addBos: true, parseSpecial: false, problems);
        Report(name, problems);
    }

    /// <summary>
    /// The special-token rules on a tiny SentencePiece vocabulary: a user-defined token found whole (and the dummy
    /// space after it), Phi-3's whitespace stripping (keyed on general.name), Gemma's add_space_prefix = false.
    /// </summary>
    [Theory]
    [InlineData("Llama-2", true)]
    [InlineData("Phi-3-mini-4k-instruct", true)]
    [InlineData("gemma-2-2b", false)]
    public void SentencePieceSpecialTokenRulesMatchLlamaCpp(string modelName, bool addSpacePrefix)
    {
        // llama.cpp falls back to <0xNN> tokens for any character that is no piece, so the vocabulary has all 256;
        // for a model named Phi-3 it also looks up <|endoftext|>.
        string[] tokens = ["<unk>", "<s>", "</s>", "▁a", "b", "<tag>", "<", "t", "a", "g", ">", "▁", "<|user|>", "ab", "▁ab", "<|endoftext|>",
            .. Enumerable.Range(0, 256).Select(value => $"<0x{value:X2}>")];
        float[] scores = [0, 0, 0, -1, -2, 0, -3, -4, -5, -6, -7, -8, 0, -10, -11, 0, .. new float[256]];
        int[] types = [2, 3, 3, 1, 1, 4, 1, 1, 1, 1, 1, 1, 3, 1, 1, 3, .. Enumerable.Repeat(6, 256)];
        WithFile(writer =>
        {
            writer.AddMetadata("general.name", modelName)
                .AddMetadata("tokenizer.ggml.model", "llama")
                .AddMetadata("tokenizer.ggml.tokens", tokens)
                .AddMetadata("tokenizer.ggml.scores", scores)
                .AddMetadata("tokenizer.ggml.token_type", types)
                .AddMetadata("tokenizer.ggml.bos_token_id", 1u)
                .AddMetadata("tokenizer.ggml.eos_token_id", 2u)
                .AddMetadata("tokenizer.ggml.unknown_token_id", 0u);
            if (!addSpacePrefix) writer.AddMetadata("tokenizer.ggml.add_space_prefix", false);
            return writer;
        }, (kiln, llama) =>
        {
            var problems = new List<string>();
            foreach (string text in (string[])["a<tag>b", "ab a", "<|user|>\n ab<tag>\nab", "<s>\tab</s> a<|endoftext|> b", " ab", "ab<tag>", ""])
            {
                CompareEncoding(kiln, llama, text, addBos: true, parseSpecial: false, problems);
                CompareEncoding(kiln, llama, text, addBos: true, parseSpecial: true, problems);
            }
            Report($"tiny SentencePiece vocabulary named '{modelName}'", problems);
        });
    }

    private void WithFile(Func<GgufWriter, GgufWriter> addTokenizer, Action<KilnTokenizer, LLamaWeights> check)
    {
        string directory = Directory.CreateTempSubdirectory("kiln-peer-tokenizer-").FullName;
        try
        {
            string path = Path.Combine(directory, "vocab.gguf");
            addTokenizer(VocabOnlyModel()).Write(path);
            KilnTokenizer kiln;
            using (var file = ModelFile.Open(path)) kiln = KilnTokenizer.FromModelFile(file);
            using var llama = LoadVocabulary(path);
            check(kiln, llama);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>The hyperparameters llama.cpp reads before the vocabulary, even when it loads nothing else.</summary>
    private static GgufWriter VocabOnlyModel() => new GgufWriter()
        .AddMetadata("general.architecture", "llama")
        .AddMetadata("llama.context_length", 256u)
        .AddMetadata("llama.embedding_length", 64u)
        .AddMetadata("llama.feed_forward_length", 128u)
        .AddMetadata("llama.block_count", 1u)
        .AddMetadata("llama.attention.head_count", 4u)
        .AddMetadata("llama.attention.head_count_kv", 4u)
        .AddMetadata("llama.attention.layer_norm_rms_epsilon", 1e-5f);

    private static LLamaWeights LoadVocabulary(string path)
    {
        LlamaCpp.Configure();
        try
        {
            return LLamaWeights.LoadFromFile(new ModelParams(path) { VocabOnly = true, GpuLayerCount = 0 });
        }
        catch (Exception e)
        {
            throw new InvalidOperationException($"llama.cpp could not load the vocabulary of '{path}': {e.Message}; llama.cpp said: {LlamaCpp.LastErrors()}", e);
        }
    }

    private static void CompareEncoding(KilnTokenizer kiln, LLamaWeights llama, string text, bool addBos, bool parseSpecial, List<string> problems)
    {
        int[] expected = [.. llama.Tokenize(text, addBos, parseSpecial, Encoding.UTF8).Select(token => (int)token)];
        int[] actual = kiln.Encode(text, addBos, parseSpecial);
        if (!expected.AsSpan().SequenceEqual(actual))
        {
            problems.Add($"encode {Show(text)} (bos {addBos}, special {parseSpecial}):\n  llama.cpp [{string.Join(", ", expected)}]\n  Kiln      [{string.Join(", ", actual)}]");
        }
    }

    /// <summary>llama.cpp's token_to_piece bytes, joined, against Kiln's decoding of the same ids.</summary>
    private static void CompareDecoding(KilnTokenizer kiln, LLamaWeights llama, int[] ids, List<string> problems)
    {
        var bytes = new List<byte>();
        Span<byte> piece = stackalloc byte[256];
        foreach (int id in ids)
        {
            int length = (int)llama.NativeHandle.TokenToSpan((LLamaToken)id, piece, 0, false);
            bytes.AddRange(piece[..length]);
        }
        string expected = Encoding.UTF8.GetString([.. bytes]);
        string actual = kiln.Decode(ids);
        if (expected != actual) problems.Add($"decode [{string.Join(", ", ids)}]:\n  llama.cpp {Show(expected)}\n  Kiln      {Show(actual)}");
    }

    private void Report(string what, List<string> problems)
    {
        output.WriteLine($"{what}: {problems.Count} disagreement(s) with llama.cpp");
        foreach (string problem in problems) output.WriteLine(problem);
        Assert.True(problems.Count == 0, $"{what}: {problems.Count} disagreement(s) with llama.cpp; first: {problems.FirstOrDefault()}");
    }

    private static string Show(string text) =>
        "\"" + string.Concat(text.Select(c => c < ' ' ? $"\\x{(int)c:X2}" : c.ToString())) + "\"";
}
