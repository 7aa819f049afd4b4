using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Kiln.Loading;
using LLama;

namespace Kiln.Bench;

/// <summary>
/// Teacher-forced agreement of Kiln and llama.cpp on one file: the same token sequence in one batch, logits at
/// every position from both, compared position by position.
/// </summary>
public sealed record AgreementResult(
    string Architecture, int[] Tokens, bool AddBos, double[] MaxAbsDiff, double[] LlamaTopGap, int ArgmaxAgree, int ArgmaxCompared)
{
    public int Positions => Tokens.Length;

    public double WorstDiff => MaxAbsDiff.Max();

    /// <summary>The first position where the compared argmaxes differ, or -1.</summary>
    public int FirstArgmaxDifference { get; init; } = -1;

    public string Summary()
    {
        var c = CultureInfo.InvariantCulture;
        string bos = AddBos ? " (BOS first)" : "";
        string first = FirstArgmaxDifference >= 0 ? string.Create(c, $"; first difference at position {FirstArgmaxDifference}") : "";
        return string.Create(c, $"{Architecture}: {Positions} positions{bos}: max |Δlogit| {WorstDiff:G3} (at position {Array.IndexOf(MaxAbsDiff, WorstDiff)}); ") +
               string.Create(c, $"argmax equal at {ArgmaxAgree} of {ArgmaxCompared} compared positions ({Positions - ArgmaxCompared} with llama.cpp's top-2 gap under {Agreement.MinTopGap} not compared){first}");
    }

    public string Describe() =>
        Summary() + "\n" +
        $"  max |Δlogit| per position: {string.Join(" ", MaxAbsDiff.Select(d => d.ToString("G2", CultureInfo.InvariantCulture)))}\n" +
        $"  tokens: [{string.Join(", ", Tokens)}]";

    public string ToJson() => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["architecture"] = Architecture,
        ["positions"] = Positions,
        ["max_abs_dlogit"] = WorstDiff,
        ["argmax_agree"] = ArgmaxAgree,
        ["argmax_compared"] = ArgmaxCompared,
        ["min_top_gap"] = Agreement.MinTopGap,
        ["add_bos"] = AddBos,
        ["tokens"] = Tokens,
        ["max_abs_dlogit_per_position"] = MaxAbsDiff,
    }, new JsonSerializerOptions { WriteIndented = true, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals }); // a NaN logit reads as Infinity
}

public static class Agreement
{
    /// <summary>Positions where llama.cpp's two largest logits are closer than this are not compared by argmax: a near-tie flips on noise.</summary>
    public const double MinTopGap = 0.05;

    /// <summary>Loads both engines on <paramref name="path"/> and compares them over <paramref name="positions"/> positions.</summary>
    public static AgreementResult Run(string path, int positions, int threads)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(positions);
        using var file = ModelFile.Open(path);
        using var kiln = new KilnSession(file, maxTokensPerStep: positions, threads); // first: an architecture Kiln lacks fails fast
        using var weights = LlamaCpp.LoadWeights(path, threads);
        var vocab = weights.Vocab;
        int bos = vocab.ShouldAddBOS && vocab.BOS is { } token ? (int)token : -1;
        int[] tokens = TokenSequence(file, vocab.Count, positions, bos);
        float[] llama = LlamaCppLogits(weights, tokens, threads);
        float[] ours = KilnLogits(kiln, tokens);
        return Compare(file.Architecture, tokens, bos >= 0, ours, llama, vocab.Count);
    }

    /// <summary>
    /// A fixed sequence from the vocabulary size alone: <paramref name="bos"/> first when it is a token id (not -1),
    /// then ids drawn by a generator seeded with the vocabulary size from the ordinary tokens (token type 1 when the
    /// file lists types; otherwise every id but the special ones it names), so no control token enters.
    /// </summary>
    public static int[] TokenSequence(ModelFile file, int vocabSize, int positions, int bos)
    {
        var ordinary = new List<int>(vocabSize);
        if (file.Metadata.TryGetValue("tokenizer.ggml.token_type", out var types) && types.Value is int[] typeArray && typeArray.Length >= vocabSize)
        {
            for (int id = 0; id < vocabSize; id++)
                if (typeArray[id] == SyntheticVocabulary.Normal) ordinary.Add(id);
        }
        else
        {
            var special = new HashSet<long>();
            foreach (string key in (ReadOnlySpan<string>)["bos", "eos", "unknown", "padding", "separator"])
                if (file.TryGetInt($"tokenizer.ggml.{key}_token_id", out long id)) special.Add(id);
            for (int id = 0; id < vocabSize; id++)
                if (!special.Contains(id)) ordinary.Add(id);
        }
        if (ordinary.Count == 0) throw new InvalidOperationException($"{file.Path}: no ordinary tokens to build a sequence from");

        var random = new Random(vocabSize);
        var tokens = new int[positions];
        for (int i = 0; i < positions; i++) tokens[i] = i == 0 && bos >= 0 ? bos : ordinary[random.Next(ordinary.Count)];
        return tokens;
    }

    /// <summary>llama.cpp's logits at every position of one batch, [positions × vocab], F32 KV cache and no flash attention.</summary>
    public static float[] LlamaCppLogits(LLamaWeights weights, int[] tokens, int threads)
    {
        int vocab = weights.Vocab.Count;
        using var session = new LlamaCppSession(weights, threads, contextSize: (tokens.Length + 255) / 256 * 256, sequences: 1,
            batchSize: Math.Max(64, tokens.Length), exactAttention: true);
        session.BeginBatch();
        var rows = new int[tokens.Length];
        for (int p = 0; p < tokens.Length; p++) rows[p] = session.Add(tokens[p], p, 0, wantLogits: true);
        session.Decode();
        var logits = new float[(long)tokens.Length * vocab];
        for (int p = 0; p < tokens.Length; p++) session.Logits(rows[p]).CopyTo(logits.AsSpan(p * vocab, vocab));
        return logits;
    }

    /// <summary>Kiln's logits at every position of one step, [positions × vocab], F32 KV cache.</summary>
    public static float[] KilnLogits(KilnSession kiln, int[] tokens)
    {
        var context = kiln.CreateContext(slots: 1, maxContext: tokens.Length);
        context.Clear();
        for (int p = 0; p < tokens.Length; p++) context.Attention.Add(p, slot: 0, wantLogits: true);
        return kiln.Step(tokens, context).ToArray();
    }

    /// <summary>Compares [positions × vocab] logits: the largest difference at each position, and argmaxes where llama.cpp's top-2 gap is at least <see cref="MinTopGap"/>.</summary>
    public static AgreementResult Compare(string architecture, int[] tokens, bool addBos, float[] kiln, float[] llama, int vocab)
    {
        int positions = tokens.Length;
        var diffs = new double[positions];
        var gaps = new double[positions];
        int agree = 0, compared = 0, firstDifference = -1;
        for (int p = 0; p < positions; p++)
        {
            var k = kiln.AsSpan(p * vocab, vocab);
            var l = llama.AsSpan(p * vocab, vocab);
            double worst = 0;
            for (int i = 0; i < vocab; i++)
            {
                double d = Math.Abs((double)k[i] - l[i]);
                if (double.IsNaN(d) || d > worst) worst = double.IsNaN(d) ? double.PositiveInfinity : d;
            }
            diffs[p] = worst;
            gaps[p] = TopGap(l);
            if (gaps[p] < MinTopGap) continue;
            compared++;
            if (Sampler.ArgMax(k) == Sampler.ArgMax(l)) agree++;
            else if (firstDifference < 0) firstDifference = p;
        }
        return new AgreementResult(architecture, tokens, addBos, diffs, gaps, agree, compared) { FirstArgmaxDifference = firstDifference };
    }

    /// <summary>The gap between the two largest values.</summary>
    public static double TopGap(ReadOnlySpan<float> logits)
    {
        float first = float.NegativeInfinity, second = float.NegativeInfinity;
        foreach (float v in logits)
        {
            if (v > first) { second = first; first = v; }
            else if (v > second) second = v;
        }
        return (double)first - second;
    }
}

/// <summary>
/// An encoder's agreement: the pooled, L2-normalized embedding of each sequence from Kiln and from llama.cpp (its
/// pooled embedding, normalized here: llama.cpp leaves that to the caller), compared value by value and by cosine.
/// </summary>
public sealed record EmbeddingAgreementResult(string Architecture, string Pooling, int[][] Sequences, double[] MaxAbsDiff, double[] Cosine)
{
    public double WorstDiff => MaxAbsDiff.Max();

    public double LowestCosine => Cosine.Min();

    public string Summary() => string.Create(CultureInfo.InvariantCulture,
        $"{Architecture} ({Pooling} pooling, L2-normalized): {Sequences.Length} sequences of {string.Join("/", Sequences.Select(s => s.Length))} tokens in one batch: " +
        $"max |Δ| {WorstDiff:G3} (sequence {Array.IndexOf(MaxAbsDiff, WorstDiff)}), lowest cosine {LowestCosine:F8} (sequence {Array.IndexOf(Cosine, LowestCosine)})");

    public string Describe() =>
        Summary() + "\n" +
        $"  max |Δ| per sequence: {string.Join(" ", MaxAbsDiff.Select(d => d.ToString("G2", CultureInfo.InvariantCulture)))}\n" +
        $"  cosine per sequence: {string.Join(" ", Cosine.Select(c => c.ToString("F8", CultureInfo.InvariantCulture)))}";

    public string ToJson() => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["architecture"] = Architecture,
        ["pooling"] = Pooling,
        ["sequence_lengths"] = Sequences.Select(s => s.Length).ToArray(),
        ["max_abs_diff"] = WorstDiff,
        ["lowest_cosine"] = LowestCosine,
        ["max_abs_diff_per_sequence"] = MaxAbsDiff,
        ["cosine_per_sequence"] = Cosine,
        ["sequences"] = Sequences,
    }, new JsonSerializerOptions { WriteIndented = true, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals });
}

public static class EmbeddingAgreement
{
    /// <summary>
    /// Loads both engines on the encoder <paramref name="path"/> and embeds four sequences packed in one batch:
    /// [CLS], ordinary tokens, [SEP], of <paramref name="positions"/> tokens, half that, 5 and 2 (the file's pooling).
    /// </summary>
    public static EmbeddingAgreementResult Run(string path, int positions, int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(positions, 2);
        using var file = ModelFile.Open(path);
        int[] lengths = [positions, Math.Max(2, positions / 2), Math.Min(5, positions), 2];
        int total = lengths.Sum();
        // First: a file Kiln cannot bind or tokenize fails fast. Every sequence fits one step.
        using var kiln = Kiln.Models.ModelCatalog.CreateEmbeddingGenerator(file, Path.GetFileNameWithoutExtension(path), new PlanOptions(total, threads), maxSequenceTokens: positions);
        int cls = kiln.Tokenizer.ClassificationTokenId, sep = kiln.Tokenizer.SeparatorTokenId;
        int[] stream = Agreement.TokenSequence(file, kiln.VocabularySize, total, bos: -1);
        var sequences = new int[lengths.Length][];
        for (int s = 0, at = 0; s < lengths.Length; at += lengths[s], s++)
            sequences[s] = [cls, .. stream.AsSpan(at, lengths[s] - 2), sep];
        float[][] ours = kiln.EmbedAsync(sequences).GetAwaiter().GetResult();

        using var weights = LlamaCpp.LoadWeights(path, threads);
        float[][] theirs = LlamaCppEmbeddings(weights, sequences, threads);
        var diffs = new double[sequences.Length];
        var cosines = new double[sequences.Length];
        for (int s = 0; s < sequences.Length; s++)
        {
            if (ours[s].Length != theirs[s].Length)
                throw new InvalidOperationException($"Kiln's embeddings have {ours[s].Length} values, llama.cpp's {theirs[s].Length}");
            double dot = 0, norm = 0, worst = 0;
            for (int i = 0; i < ours[s].Length; i++)
            {
                dot += (double)ours[s][i] * theirs[s][i];
                norm += (double)theirs[s][i] * theirs[s][i];
            }
            double scale = 1 / Math.Sqrt(norm);
            for (int i = 0; i < ours[s].Length; i++)
            {
                double d = Math.Abs(ours[s][i] - theirs[s][i] * scale);
                if (double.IsNaN(d) || d > worst) worst = double.IsNaN(d) ? double.PositiveInfinity : d;
            }
            diffs[s] = worst;
            cosines[s] = dot * scale; // Kiln's is unit length already
        }
        string pooling = file.TryGetInt($"{file.Architecture}.pooling_type", out long type) ? type switch { 1 => "mean", 2 => "CLS", 3 => "last-token", _ => $"type {type}" } : "mean";
        return new EmbeddingAgreementResult(file.Architecture, pooling, sequences, diffs, cosines);
    }

    /// <summary>llama.cpp's pooled embedding of each sequence, all in one encoder batch (the model's own pooling), as it returns them: not normalized.</summary>
    public static float[][] LlamaCppEmbeddings(LLamaWeights weights, int[][] sequences, int threads)
    {
        int total = sequences.Sum(s => s.Length);
        uint cells = (uint)((total + 255) / 256 * 256);
        var parameters = new LLama.Common.ModelParams(string.Empty)
        {
            ContextSize = cells,
            SeqMax = (uint)sequences.Length,
            BatchSize = cells,
            UBatchSize = cells, // an encoder's batch runs in one micro-batch
            Threads = threads,
            BatchThreads = threads,
            GpuLayerCount = 0,
            Embeddings = true,
            PoolingType = LLama.Native.LLamaPoolingType.Unspecified, // the file's pooling_type
        };
        LLamaContext context;
        try
        {
            context = weights.CreateContext(parameters);
        }
        catch (Exception e)
        {
            throw new InvalidOperationException($"llama.cpp could not create an embeddings context: {e.Message}; llama.cpp said: {LlamaCpp.LastErrors()}", e);
        }
        using (context)
        {
            var batch = new LLama.Native.LLamaBatch();
            for (int s = 0; s < sequences.Length; s++)
                for (int p = 0; p < sequences[s].Length; p++)
                    batch.Add(sequences[s][p], p, (LLama.Native.LLamaSeqId)s, logits: true);
            var result = context.NativeHandle.Encode(batch);
            if ((int)result != 0)
                throw new InvalidOperationException($"llama_encode returned {result} for {sequences.Length} sequences of {total} tokens; llama.cpp said: {LlamaCpp.LastErrors()}");
            var embeddings = new float[sequences.Length][];
            for (int s = 0; s < sequences.Length; s++)
                embeddings[s] = context.NativeHandle.GetEmbeddingsSeq((LLama.Native.LLamaSeqId)s).ToArray();
            return embeddings;
        }
    }
}
