using Kiln.Kernels.Quantized;
using Kiln.Models;
using Kiln.Testing;
using Kiln.Tests;
using Xunit.Abstractions;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Each decoder family of samples/Models compiled by the generator against its own eager forward, on seeded F32
/// weights with small real-shaped dimensions: a prefill longer than Gemma-2's and Phi-3's windows, decode steps, then
/// two sequences in one step. Every kernel path is forced in turn (the generated loops' Vector512, Vector256 and
/// scalar code, and the runtime kernels'); a path this machine cannot run is reported skipped.
/// </summary>
[Collection(KernelPathCollection.Name)]
public sealed class DecoderFamilyTests(ITestOutputHelper output)
{
    private const int Heads = 2, KvHeads = 1, Layers = 3, Vocab = 37, Context = 64;
    private const int MaxTokens = 16, MaxContext = 32;

    /// <summary>
    /// Two shapes: heads of 64 (tiles of two whole pairs, so the rope epilogues' vector path runs) in rows of 128 with
    /// 96 hidden units; and heads of 54 (27 pairs: a Vector512 step, a Vector256 step and a scalar tail in the row
    /// loops; the epilogues pair by pair) in rows of 108 with 76.
    /// </summary>
    public static TheoryData<string, int, KernelPath> Cases()
    {
        var cases = new TheoryData<string, int, KernelPath>();
        foreach (string family in new[] { "gpt2", "qwen2", "qwen3", "gemma2", "phi3" })
            foreach (int headDim in new[] { 64, 54 })
                foreach (var path in KernelPathCases.AllPaths)
                    cases.Add(family, headDim, path);
        return cases;
    }

    [SkippableTheory]
    [MemberData(nameof(Cases))]
    public void CompiledPlanMatchesEagerForward(string family, int headDim, KernelPath path)
    {
        // Generated loops have no AVX-VNNI form (no int8 work): that path runs their AVX2 code.
        using var forced = KernelPathCases.Force(path, "A plan's generated loops", KernelPathCases.NoVnniForm);
        var file = File(family, headDim, seed: family.Length * 100 + headDim + (int)path);
        IKilnModel model = family switch
        {
            "gpt2" => Gpt2.Load(file),
            "qwen2" => Qwen2.Load(file),
            "qwen3" => Qwen3.Load(file),
            "gemma2" => Gemma2.Load(file),
            _ => Phi3.Load(file),
        };
        using var plan = model.Compile(new PlanOptions(MaxTokens, Threads: 2));
        output.WriteLine($"{family}, heads of {headDim}, seed {file.Seed}, path {path}");
        var run = new Differential(model, plan, output);

        // A prefill of 12 (past the windows of 3 and 5), every row wanted; then decodes; then two sequences at once.
        int[] prompt = Enumerable.Range(0, 12).Select(i => (i * 7 + 3) % Vocab).ToArray();
        run.Step(prompt, prompt.Select((_, p) => (p, 0, true)).ToArray(), "prefill");
        for (int p = 12; p < 16; p++) run.Step([(p * 5) % Vocab], [(p, 0, true)], $"decode {p}");
        run.Step([1, 2, 3, 4, 5, 6], [(16, 0, true), (0, 1, false), (1, 1, true), (17, 0, false), (2, 1, true), (3, 1, true)], "mixed");
    }

    /// <summary>Runs eager and compiled on the same steps with their own caches and compares every wanted logit.</summary>
    private sealed class Differential(IKilnModel model, ICompiledPlan plan, ITestOutputHelper output)
    {
        private readonly AttentionContext _eager = new(model.CreateKvCache(2, MaxContext), MaxTokens);
        private readonly AttentionContext _compiled = new(model.CreateKvCache(2, MaxContext), MaxTokens);
        private readonly float[] _logits = new float[MaxTokens * model.VocabSize];

        public void Step(int[] tokens, (int Position, int Slot, bool Want)[] layout, string what)
        {
            _eager.Clear();
            _compiled.Clear();
            foreach (var (p, s, w) in layout)
            {
                _eager.Add(p, s, w);
                _compiled.Add(p, s, w);
            }
            var expected = model.ForwardEager(tokens, _eager);
            Array.Fill(_logits, float.NaN);
            plan.Step(tokens, _compiled, _logits);
            double worst = 0;
            for (int i = 0; i < expected.Data.Length; i++)
            {
                double error = Math.Abs(expected.Data[i] - _logits[i]) / (1e-4 + 1e-4 * Math.Abs(expected.Data[i]));
                Assert.True(error <= 1, $"{what}: logit {i} eager {expected.Data[i]}, compiled {_logits[i]}");
                worst = Math.Max(worst, error);
            }
            output.WriteLine($"  {what}: {expected.Data.Length} logits, worst {worst:P0} of the bound (1e-4 + 1e-4·|x|)");
        }
    }

    /// <summary>A family's tensors and keys, as llama.cpp names them, at the test's dimensions; seeded.</summary>
    internal static MemoryModelFile File(string family, int headDim, int seed)
    {
        var file = new MemoryModelFile(family, seed);
        string a = family;
        int dim = Heads * headDim, hidden = headDim == 64 ? 96 : 76, kvDim = KvHeads * headDim;
        file.Int($"{a}.embedding_length", dim).Int($"{a}.feed_forward_length", hidden).Int($"{a}.block_count", Layers)
            .Int($"{a}.attention.head_count", Heads).Int($"{a}.context_length", Context);
        file.Random("token_embd.weight", Vocab, dim, 1f).Norm("output_norm.weight", dim);
        switch (family)
        {
            case "gpt2":
                file.Float("gpt2.attention.layer_norm_epsilon", 1e-5).Random("position_embd.weight", Context, dim, 0.5f)
                    .Vector("output_norm.bias", dim).Random("output.weight", Vocab, dim);
                for (int l = 0; l < Layers; l++)
                {
                    string b = $"blk.{l}.";
                    file.Norm(b + "attn_norm.weight", dim).Vector(b + "attn_norm.bias", dim)
                        .Random(b + "attn_qkv.weight", 3 * dim, dim).Vector(b + "attn_qkv.bias", 3 * dim)
                        .Random(b + "attn_output.weight", dim, dim).Vector(b + "attn_output.bias", dim)
                        .Norm(b + "ffn_norm.weight", dim).Vector(b + "ffn_norm.bias", dim)
                        .Random(b + "ffn_up.weight", hidden, dim).Vector(b + "ffn_up.bias", hidden)
                        .Random(b + "ffn_down.weight", dim, hidden).Vector(b + "ffn_down.bias", dim);
                }
                break;
            case "qwen2":
                file.Int("qwen2.attention.head_count_kv", KvHeads).Float("qwen2.attention.layer_norm_rms_epsilon", 1e-6)
                    .Float("qwen2.rope.freq_base", 1e6); // tied output
                for (int l = 0; l < Layers; l++)
                {
                    string b = $"blk.{l}.";
                    file.Norm(b + "attn_norm.weight", dim).Random(b + "attn_q.weight", dim, dim).Vector(b + "attn_q.bias", dim)
                        .Random(b + "attn_k.weight", kvDim, dim).Vector(b + "attn_k.bias", kvDim)
                        .Random(b + "attn_v.weight", kvDim, dim).Vector(b + "attn_v.bias", kvDim).Random(b + "attn_output.weight", dim, dim);
                    Mlp(file, b, dim, hidden);
                }
                break;
            case "qwen3":
            {
                int keyLength = headDim + 8; // wider than dim/Heads: q is wider than the model
                file.Int("qwen3.attention.head_count_kv", KvHeads).Int("qwen3.attention.key_length", keyLength)
                    .Int("qwen3.attention.value_length", keyLength).Float("qwen3.attention.layer_norm_rms_epsilon", 1e-6)
                    .Random("output.weight", Vocab, dim);
                for (int l = 0; l < Layers; l++)
                {
                    string b = $"blk.{l}.";
                    file.Norm(b + "attn_norm.weight", dim).Random(b + "attn_q.weight", Heads * keyLength, dim).Norm(b + "attn_q_norm.weight", keyLength)
                        .Random(b + "attn_k.weight", KvHeads * keyLength, dim).Norm(b + "attn_k_norm.weight", keyLength)
                        .Random(b + "attn_v.weight", KvHeads * keyLength, dim).Random(b + "attn_output.weight", dim, Heads * keyLength);
                    Mlp(file, b, dim, hidden);
                }
                break;
            }
            case "gemma2":
                // Small caps so both soft-caps bend the values they meet; a window of 3 on even layers.
                file.Int("gemma2.attention.head_count_kv", KvHeads).Float("gemma2.attention.layer_norm_rms_epsilon", 1e-6)
                    .Int("gemma2.attention.sliding_window", 3).Float("gemma2.attn_logit_softcapping", 1.5).Float("gemma2.final_logit_softcapping", 2.0);
                for (int l = 0; l < Layers; l++)
                {
                    string b = $"blk.{l}.";
                    file.Norm(b + "attn_norm.weight", dim).Random(b + "attn_q.weight", dim, dim).Random(b + "attn_k.weight", kvDim, dim)
                        .Random(b + "attn_v.weight", kvDim, dim).Random(b + "attn_output.weight", dim, dim).Norm(b + "post_attention_norm.weight", dim)
                        .Norm(b + "post_ffw_norm.weight", dim);
                    Mlp(file, b, dim, hidden);
                }
                break;
            case "phi3":
                // Partial rotary (a bit over half the head) and a window of 5.
                file.Int("phi3.attention.head_count_kv", KvHeads).Float("phi3.attention.layer_norm_rms_epsilon", 1e-5)
                    .Int("phi3.rope.dimension_count", headDim == 64 ? 40 : 38).Int("phi3.attention.sliding_window", 5).Random("output.weight", Vocab, dim);
                for (int l = 0; l < Layers; l++)
                {
                    string b = $"blk.{l}.";
                    file.Norm(b + "attn_norm.weight", dim).Random(b + "attn_qkv.weight", dim + 2 * kvDim, dim).Random(b + "attn_output.weight", dim, dim)
                        .Norm(b + "ffn_norm.weight", dim).Random(b + "ffn_up.weight", 2 * hidden, dim).Random(b + "ffn_down.weight", dim, hidden);
                }
                break;
        }
        return file;
    }

    private static void Mlp(MemoryModelFile file, string b, int dim, int hidden) =>
        file.Norm(b + "ffn_norm.weight", dim).Random(b + "ffn_gate.weight", hidden, dim).Random(b + "ffn_up.weight", hidden, dim)
            .Random(b + "ffn_down.weight", dim, hidden);
}
