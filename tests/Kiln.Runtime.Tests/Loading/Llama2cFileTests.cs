using System.Buffers.Binary;
using Kiln.Loading;
using static Kiln.Runtime.Tests.Loading.LoadingTestFiles;

namespace Kiln.Runtime.Tests.Loading;

public sealed class Llama2cFileTests : IDisposable
{
    private readonly ScratchDirectory _scratch = new();

    public void Dispose() => _scratch.Dispose();

    [Fact]
    public void Stories260K_bin_reads_as_a_llama_with_gguf_keys()
    {
        using var file = new Llama2cFile(StoriesBin);

        Assert.Equal("llama", file.Architecture);
        Assert.Equal(new Llama2cConfig(64, 172, 5, 8, 4, 512, 512, SharedClassifier: true), file.Config);
        Assert.Equal(StoriesTokenizer, file.TokenizerPath);
        Expect(file, "llama.embedding_length", 64);
        Expect(file, "llama.feed_forward_length", 172);
        Expect(file, "llama.block_count", 5);
        Expect(file, "llama.attention.head_count", 8);
        Expect(file, "llama.attention.head_count_kv", 4);
        Expect(file, "llama.context_length", 512);
        Expect(file, "llama.rope.dimension_count", 8);
        Assert.True(file.TryGetFloat("llama.attention.layer_norm_rms_epsilon", out double epsilon));
        Assert.Equal(1e-5f, (float)epsilon);
        Assert.True(file.TryGetFloat("llama.rope.freq_base", out double freqBase));
        Assert.Equal(10000.0, freqBase);
        // The classifier is shared with the embedding, so there is no output.weight.
        Assert.Equal(47, file.Tensors.Count);
        Assert.False(file.Tensors.ContainsKey("output.weight"));
    }

    [Fact]
    public void Stories260K_bin_and_gguf_hold_bit_identical_weights()
    {
        using var gguf = new GgufFile(StoriesGguf);
        using var bin = new Llama2cFile(StoriesBin);

        foreach (var (name, ggufTensor) in gguf.Tensors)
        {
            // The GGUF conversion spelled the shared classifier out as output.weight.
            string binName = name == "output.weight" && !bin.Tensors.ContainsKey(name) ? "token_embd.weight" : name;
            var binTensor = bin.Tensors[binName];
            Assert.Equal(ggufTensor.Dimensions, binTensor.Dimensions);
            Assert.True(gguf.GetTensorBytes(ggufTensor).SequenceEqual(bin.GetTensorBytes(binTensor)), name);

            var fromGguf = gguf.LoadTensor(name);
            var fromBin = bin.LoadTensor(binName);
            Assert.Equal(fromGguf.Shape, fromBin.Shape);
            Assert.Equal(fromGguf.Data, fromBin.Data);
        }
    }

    [Fact]
    public void The_tokenizer_reads_as_the_gguf_vocabulary()
    {
        using var gguf = new GgufFile(StoriesGguf);
        using var bin = new Llama2cFile(StoriesBin);

        foreach (string key in (string[])["tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"])
            Assert.Equal(gguf.Metadata[key].Value, bin.Metadata[key].Value);
        var tokens = Assert.IsType<string[]>(bin.Metadata["tokenizer.ggml.tokens"].Value);
        var types = Assert.IsType<int[]>(bin.Metadata["tokenizer.ggml.token_type"].Value);
        Assert.IsType<float[]>(bin.Metadata["tokenizer.ggml.scores"].Value);
        Assert.Equal(("<s>", 3), (tokens[1], types[1]));
        Assert.Equal(("<0x0A>", 6), (tokens[3 + 10], types[3 + 10]));
        foreach (string key in (string[])["tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"])
            Assert.Equal(gguf.Metadata[key].Value, bin.Metadata[key].Value);
    }

    [Fact]
    public void Without_a_tokenizer_the_model_still_loads()
    {
        string model = _scratch.PathOf("model.bin");
        File.Copy(StoriesBin, model);

        using var file = new Llama2cFile(model);

        Assert.Null(file.TokenizerPath);
        Assert.False(file.Metadata.ContainsKey("tokenizer.ggml.tokens"));
        Assert.Equal(47, file.Tensors.Count);
    }

    [Fact]
    public void An_explicit_tokenizer_path_is_used_and_must_exist()
    {
        string model = _scratch.PathOf("model.bin");
        File.Copy(StoriesBin, model);

        using (var file = (Llama2cFile)ModelFile.Open(model, StoriesTokenizer))
            Assert.Equal(512, Assert.IsType<string[]>(file.Metadata["tokenizer.ggml.tokens"].Value).Length);

        string missing = _scratch.PathOf("missing-tokenizer.bin");
        var error = Assert.Throws<ModelLoadException>(() => new Llama2cFile(model, missing));
        Assert.Contains(missing, error.Message);
    }

    [Fact]
    public void A_truncated_tokenizer_is_a_ModelLoadException_naming_the_tokenizer()
    {
        string model = _scratch.PathOf("model.bin");
        File.Copy(StoriesBin, model);
        byte[] tokenizer = File.ReadAllBytes(StoriesTokenizer);
        string truncated = _scratch.Write("tokenizer.bin", tokenizer[..^3]);

        var error = Assert.Throws<ModelLoadException>(() => new Llama2cFile(model));
        Assert.Equal(truncated, error.FilePath);
        Assert.Contains(truncated, error.Message);
        Assert.NotNull(error.Offset);
        Assert.Contains("token #511", error.Message);
    }

    [Fact]
    public void The_file_length_must_match_the_header()
    {
        byte[] bytes = File.ReadAllBytes(StoriesBin);

        var truncated = AssertLoadFails(_scratch.Write("short.bin", bytes[..^4]), path => new Llama2cFile(path));
        Assert.Contains("freq_cis_imag", truncated.Field);

        var cutInALayer = AssertLoadFails(_scratch.Write("cut.bin", bytes[..300_000]), path => new Llama2cFile(path));
        Assert.StartsWith("tensor 'blk.", cutInALayer.Field);

        var extra = AssertLoadFails(_scratch.Write("long.bin", [.. bytes, 0, 0, 0, 0]), path => new Llama2cFile(path));
        Assert.Equal("file length", extra.Field);
        Assert.Equal(bytes.Length, extra.Offset);
    }

    [Theory]
    [InlineData(0, 0, "header dim")]
    [InlineData(3, 7, "header n_heads")]           // 64 does not split into 7 heads
    [InlineData(4, 3, "header n_kv_heads")]        // 8 heads cannot share 3 kv heads
    [InlineData(5, 0, "header vocab_size")]
    [InlineData(2, int.MaxValue, "tensor 'blk.")]  // layers far beyond the file's length
    public void Bad_header_values_are_rejected(int field, int value, string expectedField)
    {
        byte[] bytes = File.ReadAllBytes(StoriesBin);
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(field * 4), value);

        var error = AssertLoadFails(_scratch.Write("bad.bin", bytes), path => new Llama2cFile(path));
        Assert.StartsWith(expectedField, error.Field);
    }

    [Fact]
    public void Versioned_exports_and_tiny_files_are_rejected()
    {
        byte[] versioned = new byte[256];
        BinaryPrimitives.WriteUInt32LittleEndian(versioned, 0x616B3432);
        BinaryPrimitives.WriteInt32LittleEndian(versioned.AsSpan(4), 1);
        Assert.Contains("version 1", AssertLoadFails(_scratch.Write("v1.bin", versioned), OpenAny).Message);

        AssertLoadFails(_scratch.Write("tiny.bin", [1, 2, 3]), OpenAny);
        AssertLoadFails(_scratch.Write("empty.bin", []), OpenAny);
    }

    [Fact]
    public void An_unshared_classifier_becomes_output_weight_and_every_array_lands_where_llama2c_puts_it()
    {
        // dim 8, hidden 16, 2 layers, 2 heads (head size 4), 1 kv head (kv dim 4), vocab 10 (negative: separate
        // classifier), seq_len 3. Every float holds its own index, so each tensor's first value names its position.
        const int Dim = 8, Hidden = 16, Layers = 2, KvDim = 4, Vocab = 10, SeqLen = 3, HalfHead = 2;
        int[] header = [Dim, Hidden, Layers, 2, 1, -Vocab, SeqLen];
        long floats = Vocab * Dim + Layers * (Dim + Dim * Dim + 2 * KvDim * Dim + Dim * Dim + Dim + 3 * Hidden * Dim) + Dim + 2 * SeqLen * HalfHead + Vocab * Dim;
        var bytes = new byte[28 + floats * 4];
        for (int i = 0; i < header.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(4 * i), header[i]);
        for (int i = 0; i < floats; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(28 + 4 * i), i);
        string path = _scratch.Write("unshared.bin", bytes);

        using var file = new Llama2cFile(path);

        Assert.False(file.Config.SharedClassifier);
        Assert.Null(file.TokenizerPath);
        Assert.Equal(3 + 9 * Layers, file.Tensors.Count);
        // Start of each array in the llama2.c order: embedding, then each per-layer array for all layers.
        long embedding = 0, attnNorm = embedding + Vocab * Dim, wq = attnNorm + Layers * Dim, wk = wq + Layers * Dim * Dim;
        long wv = wk + Layers * KvDim * Dim, wo = wv + Layers * KvDim * Dim, ffnNorm = wo + Layers * Dim * Dim;
        long w1 = ffnNorm + Layers * Dim, w2 = w1 + Layers * Hidden * Dim, w3 = w2 + Layers * Dim * Hidden;
        long finalNorm = w3 + Layers * Hidden * Dim, classifier = finalNorm + Dim + 2 * SeqLen * HalfHead;
        ExpectFirst(file, "token_embd.weight", embedding, [Vocab, Dim]);
        ExpectFirst(file, "blk.1.attn_norm.weight", attnNorm + Dim, [Dim]);
        ExpectFirst(file, "blk.1.attn_q.weight", wq + Dim * Dim, [Dim, Dim]);
        ExpectFirst(file, "blk.1.attn_k.weight", wk + KvDim * Dim, [KvDim, Dim]);
        ExpectFirst(file, "blk.0.attn_v.weight", wv, [KvDim, Dim]);
        ExpectFirst(file, "blk.1.attn_output.weight", wo + Dim * Dim, [Dim, Dim]);
        ExpectFirst(file, "blk.1.ffn_norm.weight", ffnNorm + Dim, [Dim]);
        ExpectFirst(file, "blk.1.ffn_gate.weight", w1 + Hidden * Dim, [Hidden, Dim]);
        ExpectFirst(file, "blk.1.ffn_down.weight", w2 + Dim * Hidden, [Dim, Hidden]);
        ExpectFirst(file, "blk.0.ffn_up.weight", w3, [Hidden, Dim]);
        ExpectFirst(file, "output_norm.weight", finalNorm, [Dim]);
        ExpectFirst(file, "output.weight", classifier, [Vocab, Dim]);
        Assert.Equal(classifier + Vocab * Dim - 1, file.LoadTensor("output.weight").Data[^1]);
    }

    private static ModelFile OpenAny(string path) => ModelFile.Open(path);

    private static void ExpectFirst(ModelFile file, string name, long firstValue, int[] shape)
    {
        var tensor = file.LoadTensor(name);
        Assert.Equal(shape, tensor.Shape);
        Assert.Equal(firstValue, tensor.Data[0]);
        Assert.Equal(firstValue + 1, tensor.Data[1]);
    }

    private static void Expect(ModelFile file, string key, long expected)
    {
        Assert.True(file.TryGetInt(key, out long value), key);
        Assert.Equal(expected, value);
    }
}
