using Kiln.Bench;
using Kiln.Loading;
using Xunit.Abstractions;

namespace Kiln.PeerTests;

/// <summary>
/// The K-quants against llama.cpp: make-model's mixes are the ones llama.cpp's own quantizer makes, Kiln reads
/// K-quant files as llama.cpp does (logits at every position, teacher-forced), and stories260K requantized by
/// llama.cpp to Q4_K_M continues greedily as it does in llama.cpp.
/// </summary>
public sealed class KQuantPeerTests(ITestOutputHelper output)
{
    private const int Seed = 5;

    /// <summary>Rows of whole 256-value super-blocks, 8 layers (so use_more_bits picks some and leaves others), a small vocabulary.</summary>
    private static SyntheticShape Shape(string architecture, bool tied) =>
        SyntheticModel.Architecture(architecture).Tiny with
        {
            Name = "k", Dim = 256, Hidden = 512, Layers = 8, Heads = 4, KvHeads = architecture == "gpt2" ? 4 : 2, TiedOutput = tied, KeyLength = 0,
        };

    [Theory]
    [InlineData("llama", false, "q4_k_m")]
    [InlineData("llama", false, "q5_k_m")]
    [InlineData("qwen2", true, "q4_k_m")]  // the tied embedding is the output matrix
    [InlineData("phi3", false, "q4_k_m")]  // a fused attn_qkv
    [InlineData("gpt2", false, "q6_k")]    // position embeddings, which llama.cpp leaves as they are
    public void MakeModelWritesTheMixLlamaCppsQuantizerMakes(string architecture, bool tied, string format)
    {
        string directory = Directory.CreateTempSubdirectory("kiln-mix-").FullName;
        try
        {
            var arch = SyntheticModel.Architecture(architecture);
            var shape = Shape(architecture, tied);
            string f32 = Path.Combine(directory, "f32.gguf"), llama = Path.Combine(directory, "llama.gguf"), kiln = Path.Combine(directory, "kiln.gguf");
            SyntheticModel.Write(f32, arch, shape, GgmlType.F32, Seed);
            LlamaCpp.Quantize(f32, llama, format.ToUpperInvariant(), SideBySide.Threads);
            SyntheticModel.Write(kiln, arch, shape, SyntheticFormat.Parse(format), Seed);

            using var theirs = new GgufFile(llama);
            using var ours = new GgufFile(kiln);
            Assert.Equal(theirs.Tensors.Keys.Order(), ours.Tensors.Keys.Order());
            var types = new SortedDictionary<string, int>();
            var differences = new List<string>();
            foreach (var (name, info) in theirs.Tensors.OrderBy(t => t.Key, StringComparer.Ordinal))
            {
                if (info.Type != ours.Tensors[name].Type) differences.Add($"{name}: llama.cpp {info.Type}, make-model {ours.Tensors[name].Type}");
                types[info.Type.ToString()] = types.GetValueOrDefault(info.Type.ToString()) + 1;
            }
            Assert.True(differences.Count == 0, string.Join("; ", differences));
            Assert.Equal(SyntheticFormat.Parse(format).FileType, (uint)(theirs.TryGetInt("general.file_type", out long fileType) ? fileType : -1));
            output.WriteLine($"{architecture} {format}: {string.Join(", ", types.Select(t => $"{t.Value} {t.Key}"))}");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>
    /// A Q4_K_M file (Q4_K, Q6_K where llama.cpp's rules say) and its Q4_0 twin, teacher-forced through both engines:
    /// the K-quant file agrees at least as closely as the Q4_0 one (both engines dot the same stored weights with
    /// activations quantized by the same rule: Q8_K for the K-quants, Q8_0 for Q4_0), every clear argmax equal.
    /// </summary>
    [Fact]
    public void AQ4KMFileAgreesWithLlamaCppWithinTheQ4_0Bound()
    {
        string directory = Directory.CreateTempSubdirectory("kiln-kquant-").FullName;
        try
        {
            var arch = SyntheticModel.Architecture("llama");
            var shape = Shape("llama", tied: false) with { Layers = 2 };
            var scales = new SyntheticModel.Scales(LinearGain: 0.5f, LogitScale: 1f);
            var results = new Dictionary<string, AgreementResult>();
            foreach (string format in new[] { "q4_0", "q4_k_m" })
            {
                string path = Path.Combine(directory, format + ".gguf");
                SyntheticModel.Write(path, arch, shape, SyntheticFormat.Parse(format), Seed, scales);
                results[format] = Agreement.Run(path, positions: 32, SideBySide.Threads);
                output.WriteLine($"llama dim 256 {format}: {results[format].Describe()}");
            }
            var k = results["q4_k_m"];
            Assert.True(k.WorstDiff <= Math.Max(results["q4_0"].WorstDiff, 1e-3), $"Q4_K_M max |Δlogit| {k.WorstDiff:G3} exceeds Q4_0's {results["q4_0"].WorstDiff:G3}");
            Assert.True(k.ArgmaxCompared >= 16, $"only {k.ArgmaxCompared} positions had a clear argmax");
            Assert.Equal(k.ArgmaxCompared, k.ArgmaxAgree);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>
    /// stories260K requantized by llama.cpp to Q4_K_M. Its rows (64 and 172 values) are not whole 256-value
    /// super-blocks, so llama.cpp's fallbacks decide the types (Q4_K → Q5_0, Q6_K → Q8_0, F16 where not even 32
    /// divides a row): the file is what a user gets, and Kiln must read it as llama.cpp does.
    /// </summary>
    [Fact]
    public void Stories260KRequantizedToQ4KMContinuesAsInLlamaCpp()
    {
        string directory = Directory.CreateTempSubdirectory("kiln-stories-q4km-").FullName;
        try
        {
            string path = Path.Combine(directory, "stories260K-q4_k_m.gguf");
            LlamaCpp.Quantize(SideBySide.ModelPath("stories260K.gguf"), path, "Q4_K_M", SideBySide.Threads);
            using (var file = new GgufFile(path))
                output.WriteLine("types: " + string.Join(", ", file.Tensors.Values.GroupBy(t => t.Type).OrderBy(g => g.Key).Select(g => $"{g.Count()} {g.Key}")));
            int[] prompt = [1, 403, 407, 261, 378];
            var result = SideBySide.Run(path, prompt, steps: 64);
            output.WriteLine($"stories260K Q4_K_M, prompt [{string.Join(", ", prompt)}], 64 greedy steps: {result.Describe()}");
            Assert.Equal(result.LlamaTokens, result.KilnTokens);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
