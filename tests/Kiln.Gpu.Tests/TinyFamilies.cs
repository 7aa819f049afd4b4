using Kiln.Models;
using Kiln.Testing;

namespace Kiln.Gpu.Tests;

/// <summary>
/// Each decoder family of samples/Models at a tiny shape (two heads of 32 over one KV head, two layers, 40 tokens),
/// seeded, with llama.cpp's names: small enough for ILGPU's CPU accelerator, rows a multiple of 32 so every matrix can
/// take every layout. Gemma-2 and Phi-3 get windows shorter than the test's prompt; Qwen3 a key length of 40 (its q
/// and o rows then stay F32 in the quantized files); Phi-3 a partial rotary.
/// </summary>
internal static class TinyFamilies
{
    public const int Heads = 2, KvHeads = 1, HeadDim = 32, Dim = Heads * HeadDim, Hidden = 96, Layers = 2, Vocab = 40, Context = 64;

    public static readonly string[] Names = ["llama", "gpt2", "qwen2", "qwen3", "gemma2", "phi3"];

    public static IKilnGpuModel Load(Kiln.Loading.ModelFile file) => file.Architecture switch
    {
        "llama" => Llama.Load(file),
        "gpt2" => Gpt2.Load(file),
        "qwen2" => Qwen2.Load(file),
        "qwen3" => Qwen3.Load(file),
        "gemma2" => Gemma2.Load(file),
        _ => Phi3.Load(file),
    };

    public static MemoryModelFile File(string family, int seed)
    {
        var file = new MemoryModelFile(family, seed);
        string a = family;
        const int kvDim = KvHeads * HeadDim;
        file.Int($"{a}.embedding_length", Dim).Int($"{a}.feed_forward_length", Hidden).Int($"{a}.block_count", Layers)
            .Int($"{a}.attention.head_count", Heads).Int($"{a}.context_length", Context);
        file.Random("token_embd.weight", Vocab, Dim, 1f).Norm("output_norm.weight", Dim);
        for (int l = 0; l < Layers; l++)
        {
            string b = $"blk.{l}.";
            switch (family)
            {
                case "llama":
                    if (l == 0) file.Int("llama.attention.head_count_kv", KvHeads).Random("output.weight", Vocab, Dim);
                    file.Norm(b + "attn_norm.weight", Dim).Random(b + "attn_q.weight", Dim, Dim).Random(b + "attn_k.weight", kvDim, Dim)
                        .Random(b + "attn_v.weight", kvDim, Dim).Random(b + "attn_output.weight", Dim, Dim);
                    Mlp(file, b);
                    break;
                case "gpt2":
                    if (l == 0) file.Float("gpt2.attention.layer_norm_epsilon", 1e-5).Random("position_embd.weight", Context, Dim, 0.5f)
                        .Vector("output_norm.bias", Dim).Random("output.weight", Vocab, Dim);
                    file.Norm(b + "attn_norm.weight", Dim).Vector(b + "attn_norm.bias", Dim)
                        .Random(b + "attn_qkv.weight", 3 * Dim, Dim).Vector(b + "attn_qkv.bias", 3 * Dim)
                        .Random(b + "attn_output.weight", Dim, Dim).Vector(b + "attn_output.bias", Dim)
                        .Norm(b + "ffn_norm.weight", Dim).Vector(b + "ffn_norm.bias", Dim)
                        .Random(b + "ffn_up.weight", Hidden, Dim).Vector(b + "ffn_up.bias", Hidden)
                        .Random(b + "ffn_down.weight", Dim, Hidden).Vector(b + "ffn_down.bias", Dim);
                    break;
                case "qwen2":
                    if (l == 0) file.Int("qwen2.attention.head_count_kv", KvHeads).Float("qwen2.attention.layer_norm_rms_epsilon", 1e-6).Float("qwen2.rope.freq_base", 1e6);
                    file.Norm(b + "attn_norm.weight", Dim).Random(b + "attn_q.weight", Dim, Dim).Vector(b + "attn_q.bias", Dim)
                        .Random(b + "attn_k.weight", kvDim, Dim).Vector(b + "attn_k.bias", kvDim)
                        .Random(b + "attn_v.weight", kvDim, Dim).Vector(b + "attn_v.bias", kvDim).Random(b + "attn_output.weight", Dim, Dim);
                    Mlp(file, b);
                    break;
                case "qwen3":
                {
                    const int keyLength = HeadDim + 8;
                    if (l == 0) file.Int("qwen3.attention.head_count_kv", KvHeads).Int("qwen3.attention.key_length", keyLength)
                        .Int("qwen3.attention.value_length", keyLength).Float("qwen3.attention.layer_norm_rms_epsilon", 1e-6).Random("output.weight", Vocab, Dim);
                    file.Norm(b + "attn_norm.weight", Dim).Random(b + "attn_q.weight", Heads * keyLength, Dim).Norm(b + "attn_q_norm.weight", keyLength)
                        .Random(b + "attn_k.weight", KvHeads * keyLength, Dim).Norm(b + "attn_k_norm.weight", keyLength)
                        .Random(b + "attn_v.weight", KvHeads * keyLength, Dim).Random(b + "attn_output.weight", Dim, Heads * keyLength);
                    Mlp(file, b);
                    break;
                }
                case "gemma2":
                    if (l == 0) file.Int("gemma2.attention.head_count_kv", KvHeads).Float("gemma2.attention.layer_norm_rms_epsilon", 1e-6)
                        .Int("gemma2.attention.sliding_window", 3).Float("gemma2.attn_logit_softcapping", 1.5).Float("gemma2.final_logit_softcapping", 2.0);
                    file.Norm(b + "attn_norm.weight", Dim).Random(b + "attn_q.weight", Dim, Dim).Random(b + "attn_k.weight", kvDim, Dim)
                        .Random(b + "attn_v.weight", kvDim, Dim).Random(b + "attn_output.weight", Dim, Dim).Norm(b + "post_attention_norm.weight", Dim)
                        .Norm(b + "post_ffw_norm.weight", Dim);
                    Mlp(file, b);
                    break;
                default:
                    if (l == 0) file.Int("phi3.attention.head_count_kv", KvHeads).Float("phi3.attention.layer_norm_rms_epsilon", 1e-5)
                        .Int("phi3.rope.dimension_count", 20).Int("phi3.attention.sliding_window", 5).Random("output.weight", Vocab, Dim);
                    file.Norm(b + "attn_norm.weight", Dim).Random(b + "attn_qkv.weight", Dim + 2 * kvDim, Dim).Random(b + "attn_output.weight", Dim, Dim)
                        .Norm(b + "ffn_norm.weight", Dim).Random(b + "ffn_up.weight", 2 * Hidden, Dim).Random(b + "ffn_down.weight", Dim, Hidden);
                    break;
            }
        }
        return file;
    }

    private static void Mlp(MemoryModelFile file, string b) =>
        file.Norm(b + "ffn_norm.weight", Dim).Random(b + "ffn_gate.weight", Hidden, Dim).Random(b + "ffn_up.weight", Hidden, Dim)
            .Random(b + "ffn_down.weight", Dim, Hidden);
}
