using Kiln.Loading;
using static Kiln.Runtime.Tests.Loading.LoadingTestFiles;

namespace Kiln.Runtime.Tests.Loading;

public sealed class GgufFileTests
{
    [Fact]
    public void Stories260K_metadata_matches_the_model()
    {
        using var file = new GgufFile(StoriesGguf);

        Assert.Equal(3u, file.Version);
        Assert.Equal(32, file.Alignment);
        Assert.Equal("llama", file.Architecture);
        Assert.Equal(0, file.DataOffset % file.Alignment);
        AssertInt(file, "llama.embedding_length", 64);
        AssertInt(file, "llama.feed_forward_length", 172);
        AssertInt(file, "llama.block_count", 5);
        AssertInt(file, "llama.attention.head_count", 8);
        AssertInt(file, "llama.attention.head_count_kv", 4);
        AssertInt(file, "llama.context_length", 512);
        AssertInt(file, "llama.rope.dimension_count", 8);
        AssertInt(file, "tokenizer.ggml.bos_token_id", 1);
        AssertInt(file, "tokenizer.ggml.eos_token_id", 2);
        AssertInt(file, "tokenizer.ggml.unknown_token_id", 0);
        Assert.True(file.TryGetFloat("llama.attention.layer_norm_rms_epsilon", out double epsilon));
        Assert.Equal(1e-5f, (float)epsilon);
        Assert.True(file.TryGetString("tokenizer.ggml.model", out string model));
        Assert.Equal("llama", model);

        // Arrays come back as typed CLR arrays.
        var tokens = Assert.IsType<string[]>(file.Metadata["tokenizer.ggml.tokens"].Value);
        var scores = Assert.IsType<float[]>(file.Metadata["tokenizer.ggml.scores"].Value);
        var types = Assert.IsType<int[]>(file.Metadata["tokenizer.ggml.token_type"].Value);
        Assert.Equal(512, tokens.Length);
        Assert.Equal(512, scores.Length);
        Assert.Equal(512, types.Length);
        Assert.Equal(["<unk>", "<s>", "</s>", "<0x00>"], tokens[..4]);
        Assert.Equal([2, 3, 3, 6], types[..4]);
    }

    [Fact]
    public void Stories260K_has_every_llama_tensor_with_ggml_dimensions()
    {
        using var file = new GgufFile(StoriesGguf);

        Assert.Equal(48, file.Tensors.Count);
        AssertTensor(file, "token_embd.weight", 64, 512);
        AssertTensor(file, "output.weight", 64, 512);
        AssertTensor(file, "output_norm.weight", 64);
        for (int layer = 0; layer < 5; layer++)
        {
            AssertTensor(file, $"blk.{layer}.attn_norm.weight", 64);
            AssertTensor(file, $"blk.{layer}.attn_q.weight", 64, 64);
            AssertTensor(file, $"blk.{layer}.attn_k.weight", 64, 32);
            AssertTensor(file, $"blk.{layer}.attn_v.weight", 64, 32);
            AssertTensor(file, $"blk.{layer}.attn_output.weight", 64, 64);
            AssertTensor(file, $"blk.{layer}.ffn_norm.weight", 64);
            AssertTensor(file, $"blk.{layer}.ffn_gate.weight", 64, 172);
            AssertTensor(file, $"blk.{layer}.ffn_down.weight", 172, 64);
            AssertTensor(file, $"blk.{layer}.ffn_up.weight", 64, 172);
        }
        foreach (var tensor in file.Tensors.Values)
        {
            Assert.Equal(GgmlType.F32, tensor.Type);
            Assert.Equal(tensor.ElementCount * 4, tensor.ByteLength);
            Assert.Equal(0, (tensor.Offset - file.DataOffset) % file.Alignment);
        }
    }

    [Fact]
    public void LoadTensor_reverses_ggml_dimensions_into_a_row_major_shape()
    {
        using var file = new GgufFile(StoriesGguf);

        var down = file.LoadTensor("blk.0.ffn_down.weight");

        Assert.Equal([64, 172], down.Shape);
        var raw = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(file.GetTensorBytes(file.Tensors["blk.0.ffn_down.weight"]));
        Assert.Equal(raw[172 * 3 + 5], down[3, 5]);
    }

    [Fact]
    public void F16_weights_dequantize_like_a_manual_half_conversion()
    {
        using var file = new GgufFile(TinyRandomGguf);

        Assert.Equal("llama", file.Architecture);
        AssertInt(file, "llama.embedding_length", 8);
        AssertInt(file, "llama.block_count", 1);
        AssertInt(file, "llama.feed_forward_length", 32);
        AssertInt(file, "llama.attention.head_count", 2);
        Assert.Equal(32000, Assert.IsType<string[]>(file.Metadata["tokenizer.ggml.tokens"].Value).Length);
        Assert.Equal(GgmlType.F32, file.Tensors["blk.0.attn_norm.weight"].Type);

        var info = file.Tensors["token_embd.weight"];
        Assert.Equal(GgmlType.F16, info.Type);
        Assert.Equal([8L, 32000L], info.Dimensions);
        var embedding = file.LoadTensor("token_embd.weight");
        Assert.Equal([32000, 8], embedding.Shape);

        var bytes = file.GetTensorBytes(info);
        foreach (int index in (int[])[0, 1, 7, 8, 1234, 255_999])
        {
            ushort bits = (ushort)(bytes[2 * index] | bytes[2 * index + 1] << 8);
            Assert.Equal(HalfBitsToFloat(bits), embedding.Data[index]);
        }
        bool anyNonZero = false;
        foreach (float value in embedding.Data) anyNonZero |= value != 0;
        Assert.True(anyNonZero);
    }

    [Fact]
    public void Open_picks_the_format_by_content()
    {
        using (var gguf = ModelFile.Open(StoriesGguf)) Assert.IsType<GgufFile>(gguf);
        using (var bin = ModelFile.Open(StoriesBin)) Assert.IsType<Llama2cFile>(bin);
    }

    [Fact]
    public void A_missing_file_is_a_ModelLoadException_naming_the_path()
    {
        string path = Model("no-such-model.gguf");

        var error = Assert.Throws<ModelLoadException>(() => ModelFile.Open(path));
        Assert.Contains(path, error.Message);
        Assert.Equal(path, error.FilePath);
        Assert.Throws<ModelLoadException>(() => new GgufFile(path));
    }

    [Fact]
    public void A_missing_tensor_is_a_ModelLoadException()
    {
        using var file = new GgufFile(StoriesGguf);
        var error = Assert.Throws<ModelLoadException>(() => file.LoadTensor("blk.9.attn_q.weight"));
        Assert.Contains("blk.9.attn_q.weight", error.Message);
    }

    [Fact]
    public void Tensor_bytes_are_unavailable_after_dispose()
    {
        var file = new GgufFile(StoriesGguf);
        var info = file.Tensors["output_norm.weight"];
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.GetTensorBytes(info).Length);
    }

    private static void AssertInt(ModelFile file, string key, long expected)
    {
        Assert.True(file.TryGetInt(key, out long value), key);
        Assert.Equal(expected, value);
    }

    private static void AssertTensor(ModelFile file, string name, params long[] dimensions)
    {
        Assert.True(file.Tensors.TryGetValue(name, out var tensor), name);
        Assert.Equal(dimensions, tensor.Dimensions);
    }

    /// <summary>IEEE 754 binary16 → float, from the bit fields (independent of System.Half).</summary>
    internal static float HalfBitsToFloat(ushort bits)
    {
        int sign = bits >> 15 == 1 ? -1 : 1;
        int exponent = (bits >> 10) & 0x1F;
        int mantissa = bits & 0x3FF;
        if (exponent == 0) return sign * (float)Math.ScaleB(mantissa, -24);               // subnormal
        if (exponent == 31) return mantissa == 0 ? sign * float.PositiveInfinity : float.NaN;
        return sign * (float)Math.ScaleB(1024 + mantissa, exponent - 25);
    }
}
