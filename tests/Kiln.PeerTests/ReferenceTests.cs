using Kiln.Bench;
using Kiln.Loading;
using Xunit.Abstractions;

namespace Kiln.PeerTests;

/// <summary>
/// The architecture facts, checked end to end: <see cref="ReferenceDecoder"/> (float64, written from llama.cpp's
/// graphs) against llama.cpp on every family's synthetic F32 file. Agreement to 1e-3 over 32 positions means the
/// reference has each family's norms, rope kind, head layout, fused-tensor splits, gate order, scales, soft-caps,
/// window and GELU as llama.cpp has them — a wrong fact moves logits by far more.
/// </summary>
public sealed class ReferenceTests(ITestOutputHelper output)
{
    private const int Positions = 32;

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("gemma2")]
    [InlineData("phi3")]
    public void ReferenceDecoderMatchesLlamaCpp(string architecture)
    {
        string directory = Directory.CreateTempSubdirectory("kiln-reference-").FullName;
        try
        {
            var arch = SyntheticModel.Architecture(architecture);
            string path = Path.Combine(directory, $"{architecture}-tiny-f32.gguf");
            SyntheticModel.Write(path, arch, arch.Tiny, GgmlType.F32, seed: 11);

            using var weights = LlamaCpp.LoadWeights(path, SideBySide.Threads);
            using var file = ModelFile.Open(path);
            var vocab = weights.Vocab;
            int bos = vocab.ShouldAddBOS && vocab.BOS is { } token ? (int)token : -1;
            int[] tokens = Agreement.TokenSequence(file, vocab.Count, Positions, bos);
            float[] llama = Agreement.LlamaCppLogits(weights, tokens, SideBySide.Threads);

            double emulated = MaxDifference(new ReferenceDecoder(file).Forward(tokens), llama);
            double exact = MaxDifference(new ReferenceDecoder(file, ggmlGelu: false).Forward(tokens), llama);
            double spread = llama.Max() - llama.Min();
            output.WriteLine($"{architecture} tiny f32, {Positions} positions, logit range {spread:G3}: max |reference − llama.cpp| {emulated:G3}" +
                             (architecture is "gpt2" or "gemma2" ? $" (with exact tanh GELU instead of ggml's fp16 table: {exact:G3})" : ""));

            Assert.True(emulated <= 1e-3, $"{architecture}: the reference differs from llama.cpp by {emulated:G3}");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static double MaxDifference(double[] reference, float[] llama)
    {
        Assert.Equal(reference.Length, llama.Length);
        double worst = 0;
        for (int i = 0; i < reference.Length; i++) worst = Math.Max(worst, Math.Abs(reference[i] - llama[i]));
        return worst;
    }
}
