using Kiln.Loading;

namespace Kiln.Bench;

/// <summary>
/// How a synthetic file stores its matrices: one GGML type for all of them (f32, f16, q8_0, q4_0), or one of
/// llama.cpp's K-quant mixes (q4_k_m, q5_k_m, q6_k), whose type per tensor follows llama.cpp's rules
/// (<c>llama_tensor_get_type</c> in src/llama-quant.cpp) for a dense, non-Falcon model without an imatrix:
/// <list type="bullet">
/// <item>the output matrix — output.weight, or token_embd.weight when the output is tied to it — is Q6_K;</item>
/// <item>Q4_K_M and Q5_K_M give attn_v.weight (or a fused attn_qkv.weight, which llama.cpp counts as one) and
/// ffn_down.weight Q6_K in the layers <see cref="UseMoreBits"/> picks (the first and last eighth, and every third
/// between);</item>
/// <item>position embeddings stay as they are (F32 here); norms and biases are never quantized;</item>
/// <item>every other matrix takes the mix's base type: Q4_K, Q5_K or Q6_K.</item>
/// </list>
/// llama.cpp falls back to other types for rows that are not whole 256-value super-blocks; these files require
/// whole super-blocks instead (<see cref="BlockElements"/>). tests/Kiln.PeerTests checks these rules against the
/// quantizer of the llama.cpp in LLamaSharp 0.30.0, tensor by tensor.
/// </summary>
public sealed record SyntheticFormat(string Name, GgmlType Base, uint FileType, bool IsMix)
{
    public static readonly string[] Names = ["f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"];

    /// <summary>The format called <paramref name="text"/> (case-insensitive), or null.</summary>
    public static SyntheticFormat? TryParse(string text) => text.ToLowerInvariant() switch
    {
        "f32" => new("f32", GgmlType.F32, 0, false),       // LLAMA_FTYPE_ALL_F32
        "f16" => new("f16", GgmlType.F16, 1, false),       // LLAMA_FTYPE_MOSTLY_F16
        "q4_0" => new("q4_0", GgmlType.Q4_0, 2, false),    // LLAMA_FTYPE_MOSTLY_Q4_0
        "q8_0" => new("q8_0", GgmlType.Q8_0, 7, false),    // LLAMA_FTYPE_MOSTLY_Q8_0
        "q4_k_m" => new("q4_k_m", GgmlType.Q4_K, 15, true), // LLAMA_FTYPE_MOSTLY_Q4_K_M
        "q5_k_m" => new("q5_k_m", GgmlType.Q5_K, 17, true), // LLAMA_FTYPE_MOSTLY_Q5_K_M
        "q6_k" => new("q6_k", GgmlType.Q6_K, 18, true),     // LLAMA_FTYPE_MOSTLY_Q6_K
        _ => null,
    };

    public static SyntheticFormat Parse(string text) =>
        TryParse(text) ?? throw new ArgumentException($"unknown format '{text}' (expected {string.Join(", ", Names)})");

    /// <summary>Every matrix in <paramref name="type"/>: the files written before the mixes existed.</summary>
    public static implicit operator SyntheticFormat(GgmlType type) => type switch
    {
        GgmlType.F32 or GgmlType.F16 or GgmlType.Q4_0 or GgmlType.Q8_0 => Parse(type.ToString()),
        _ => throw new ArgumentException($"no synthetic format stores every matrix as {type}"),
    };

    /// <summary>Values per block of the matrices' types: each matrix row must be whole blocks.</summary>
    public int BlockElements => GgmlTypeTraits.Of(Base).BlockElements;

    /// <summary>The type of the 2-D tensor <paramref name="name"/> of a model of <paramref name="shape"/>.</summary>
    public GgmlType TypeOf(string name, SyntheticShape shape)
    {
        if (!IsMix) return Base;
        if (name == "position_embd.weight") return GgmlType.F32;
        if (name == "output.weight" || (shape.TiedOutput && name == "token_embd.weight")) return GgmlType.Q6_K;
        bool mediumMix = Base is GgmlType.Q4_K or GgmlType.Q5_K;
        bool sensitive = name.EndsWith(".attn_v.weight", StringComparison.Ordinal) || name.EndsWith(".attn_qkv.weight", StringComparison.Ordinal)
                         || name.EndsWith(".ffn_down.weight", StringComparison.Ordinal);
        return mediumMix && sensitive && UseMoreBits(LayerOf(name), shape.Layers) ? GgmlType.Q6_K : Base;
    }

    /// <summary>llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between.</summary>
    public static bool UseMoreBits(int layer, int layers) =>
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;

    /// <summary>i in "blk.{i}.…".</summary>
    private static int LayerOf(string name)
    {
        int start = name.IndexOf('.') + 1, end = name.IndexOf('.', start);
        return int.Parse(name.AsSpan(start, end - start), System.Globalization.CultureInfo.InvariantCulture);
    }

    public override string ToString() => Name;
}
