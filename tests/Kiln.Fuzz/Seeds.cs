using System.Buffers.Binary;
using System.Text;
using Kiln.Loading;
using Kiln.Testing;

namespace Kiln.Fuzz;

/// <summary>
/// Small valid inputs for each target, made here rather than stored: every structure the parser knows appears at
/// least once (each GGUF value type, nested arrays, each decodable tensor type; both llama2.c classifier layouts;
/// safetensors metadata, buffers and dtypes Kiln does not load; the config keys that are normalized; both tokenizer
/// families), each a few kilobytes at most so that a fuzzer's mutations land in structure, not in weights.
/// </summary>
internal static class Seeds
{
    public static IReadOnlyDictionary<string, byte[]> Gguf() => new Dictionary<string, byte[]>
    {
        ["every-value-type.gguf"] = ToBytes(new GgufWriter()
            .AddMetadata("general.architecture", "llama")
            .AddMetadata("u8", (byte)7).AddMetadata("i8", (sbyte)-7)
            .AddMetadata("u16", (ushort)700).AddMetadata("i16", (short)-700)
            .AddMetadata("u32", 70000u).AddMetadata("i32", -70000)
            .AddMetadata("u64", 7UL << 40).AddMetadata("i64", -(7L << 40))
            .AddMetadata("f32", 0.5f).AddMetadata("f64", -0.25).AddMetadata("flag", true)
            .AddMetadata("names", new[] { "a", "bc", "" })
            .AddMetadata("ints", new[] { 1, 2, 3 })
            .AddMetadata("nested", new object[] { new[] { 1u, 2u }, new[] { "x" } })
            .AddTensor("f32", GgmlType.F32, Ramp(8), 4, 2)
            .AddTensor("f16", GgmlType.F16, Ramp(4), 4)
            .AddTensor("bf16", GgmlType.BF16, Ramp(4), 2, 2)),
        ["quantized.gguf"] = ToBytes(new GgufWriter(alignment: 64)
            .AddMetadata("general.architecture", "llama")
            .AddTensor("q8_0", GgmlType.Q8_0, Ramp(32), 32)
            .AddTensor("q4_0", GgmlType.Q4_0, Ramp(64), 32, 2)
            .AddEncodedTensor("q4_k", GgmlType.Q4_K, Pattern(144), 256)
            .AddEncodedTensor("q6_k", GgmlType.Q6_K, Pattern(210), 256)
            .AddTensor("one", GgmlType.F32, Ramp(1), 1)),
    };

    public static IReadOnlyDictionary<string, byte[]> Llama2c() => new Dictionary<string, byte[]>
    {
        ["shared-classifier.bin"] = Llama2cFile(dim: 4, hidden: 6, layers: 2, heads: 2, kvHeads: 1, vocab: 5, seqLen: 3),
        ["own-classifier.bin"] = Llama2cFile(dim: 4, hidden: 4, layers: 1, heads: 1, kvHeads: 1, vocab: -3, seqLen: 2),
    };

    public static IReadOnlyDictionary<string, byte[]> Safetensors() => new Dictionary<string, byte[]>
    {
        ["floats.safetensors"] = SmallSafetensors,
        ["metadata-and-buffers.safetensors"] = new SafetensorsWriter()
            .AddMetadata("format", "pt")
            .Add("model.embed_tokens.weight", Ramp(6), [3, 2], GgmlType.BF16)
            .AddRaw("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", new byte[8], 2)
            .AddRaw("model.layers.0.attn.bias", "BOOL", new byte[4], 2, 2)
            .Add("model.norm.weight", Ramp(2), [2], GgmlType.F16)
            .ToBytes(),
        ["unloadable-dtype.safetensors"] = new SafetensorsWriter().AddRaw("lm_head.scales", "I8", new byte[3], 3).ToBytes(),
        ["scalar-and-empty.safetensors"] = new SafetensorsWriter()
            .Add("scalar", Ramp(1), [])
            .AddRaw("empty", "F32", [], 0, 4)
            .ToBytes(),
    };

    public static IReadOnlyDictionary<string, byte[]> Configs() => new Dictionary<string, byte[]>
    {
        ["llama.json"] = LlamaConfig,
        ["qwen2.json"] = Utf8("""
            {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 4, "num_hidden_layers": 2, "use_sliding_window": false,
             "sliding_window": 4096, "max_window_layers": 28, "rope_theta": 1000000.0, "tie_word_embeddings": true,
             "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
            """),
        ["gemma2.json"] = Utf8("""
            {"architectures": ["Gemma2ForCausalLM"], "hidden_size": 4, "head_dim": 2, "query_pre_attn_scalar": 256,
             "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "sliding_window": 4096,
             "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
             "eos_token_id": [1, 107], "hidden_activation": "gelu_pytorch_tanh", "flags": [true, false], "mixed": [1, "a", null, 2.5]}
            """),
    };

    public static IReadOnlyDictionary<string, byte[]> Tokenizers() => new Dictionary<string, byte[]>
    {
        ["sentencepiece.gguf"] = ToBytes(SentencePiece(byteFallback: false)),
        ["sentencepiece-bytes.gguf"] = ToBytes(SentencePiece(byteFallback: true)),
        ["byte-level.gguf"] = ToBytes(ByteLevel()),
    };

    public static IReadOnlyDictionary<string, byte[]> Onnx() => new Dictionary<string, byte[]>
    {
        ["bert.onnx"] = OnnxBert(),
    };

    /// <summary>The config the safetensors target's inputs are read with.</summary>
    public static byte[] LlamaConfig { get; } = Utf8("""
        {"architectures": ["LlamaForCausalLM"], "hidden_size": 4, "intermediate_size": 8, "num_attention_heads": 2,
         "num_key_value_heads": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "torch_dtype": "bfloat16", "vocab_size": 3}
        """);

    /// <summary>The weights the config target's inputs are read with.</summary>
    public static byte[] SmallSafetensors { get; } = new SafetensorsWriter()
        .Add("a", Ramp(4), [2, 2])
        .Add("b", Ramp(4), [4], GgmlType.F16)
        .Add("c", Ramp(8), [2, 4], GgmlType.BF16)
        .ToBytes();

    private static float[] Ramp(int count)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = i * 0.25f - 1;
        return values;
    }

    /// <summary>Stored bytes of a block type Kiln decodes but does not encode: any bytes are a valid block.</summary>
    private static byte[] Pattern(int count)
    {
        var bytes = new byte[count];
        for (int i = 0; i < count; i++) bytes[i] = (byte)(i * 37 % 251);
        return bytes;
    }

    private static byte[] Utf8(string text) => Encoding.UTF8.GetBytes(text);

    private static byte[] ToBytes(GgufWriter writer)
    {
        var stream = new MemoryStream();
        writer.Write(stream);
        return stream.ToArray();
    }

    /// <summary>A legacy llama2.c checkpoint: the header, then as many float32 weights as it describes (a negative vocab: own classifier).</summary>
    private static byte[] Llama2cFile(int dim, int hidden, int layers, int heads, int kvHeads, int vocab, int seqLen)
    {
        int v = Math.Abs(vocab), kvDim = dim / heads * kvHeads, headSize = dim / heads;
        long floats = (long)v * dim
                      + (long)layers * (dim + dim * dim + 2 * dim * kvDim + dim * dim + dim + 3 * dim * hidden)
                      + dim + 2L * (headSize / 2) * seqLen + (vocab < 0 ? (long)v * dim : 0);
        var bytes = new byte[Kiln.Loading.Llama2cFile.HeaderBytes + floats * sizeof(float)];
        int[] header = [dim, hidden, layers, heads, kvHeads, vocab, seqLen];
        for (int i = 0; i < header.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(i * 4), header[i]);
        for (long i = 0; i < floats; i++)
            BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan((int)(Kiln.Loading.Llama2cFile.HeaderBytes + i * 4)), i % 7 * 0.125f);
        return bytes;
    }

    /// <summary>A SentencePiece vocabulary: unknown, BOS, EOS, a user-defined token, then pieces (and, with byte fallback, &lt;0x00&gt;..&lt;0xFF&gt;).</summary>
    private static GgufWriter SentencePiece(bool byteFallback)
    {
        var tokens = new List<string> { "<unk>", "<s>", "</s>", "<|im_end|>" };
        var types = new List<int> { 2, 3, 3, 4 };
        if (byteFallback)
        {
            for (int b = 0; b < 256; b++)
            {
                tokens.Add($"<0x{b:X2}>");
                types.Add(6);
            }
        }
        foreach (string piece in (string[])["▁", "▁a", "a", "b", "▁time", "e", "o", "n", "▁on", "ce", "▁up"])
        {
            tokens.Add(piece);
            types.Add(1);
        }
        var scores = new float[tokens.Count];
        for (int i = 0; i < scores.Length; i++) scores[i] = -i;
        return new GgufWriter()
            .AddMetadata("general.architecture", "llama")
            .AddMetadata("tokenizer.ggml.model", "llama")
            .AddMetadata("tokenizer.ggml.tokens", tokens.ToArray())
            .AddMetadata("tokenizer.ggml.scores", scores)
            .AddMetadata("tokenizer.ggml.token_type", types.ToArray())
            .AddMetadata("tokenizer.ggml.bos_token_id", 1u)
            .AddMetadata("tokenizer.ggml.eos_token_id", 2u)
            .AddMetadata("tokenizer.ggml.unknown_token_id", 0u)
            .AddMetadata("tokenizer.ggml.add_bos_token", true)
            .AddMetadata("tokenizer.ggml.add_space_prefix", !byteFallback);
    }

    /// <summary>A byte-level BPE vocabulary: the 256 byte characters, a few merges and their results, a control token.</summary>
    private static GgufWriter ByteLevel()
    {
        var tokens = new List<string>();
        var types = new List<int>();
        for (int b = 0; b < 256; b++)
        {
            tokens.Add(ByteCharacter((byte)b).ToString());
            types.Add(1);
        }
        string[] merges = ["Ġ t", "h e", "Ġt he", "o n", "c e"];
        foreach (string merge in merges)
        {
            tokens.Add(merge.Replace(" ", ""));
            types.Add(1);
        }
        tokens.Add("<|endoftext|>");
        types.Add(3);
        return new GgufWriter()
            .AddMetadata("general.architecture", "gpt2")
            .AddMetadata("tokenizer.ggml.model", "gpt2")
            .AddMetadata("tokenizer.ggml.pre", "qwen2")
            .AddMetadata("tokenizer.ggml.tokens", tokens.ToArray())
            .AddMetadata("tokenizer.ggml.token_type", types.ToArray())
            .AddMetadata("tokenizer.ggml.merges", merges)
            .AddMetadata("tokenizer.ggml.bos_token_id", (uint)(tokens.Count - 1))
            .AddMetadata("tokenizer.ggml.eos_token_id", (uint)(tokens.Count - 1));
    }

    /// <summary>
    /// A BertModel-shaped ONNX graph, as torch.onnx exports one, in miniature: named embeddings, matmul weights named
    /// only by an exporter's number and recovered from the bias they are added to, the key reshaped to heads by a
    /// Concat of int64 constants, and a LayerNorm's epsilon added before a square root.
    /// </summary>
    private static byte[] OnnxBert()
    {
        var graph = new Protobuf();
        graph.Message(5, Initializer("embeddings.word_embeddings.weight", [5, 4]));
        graph.Message(5, Initializer("embeddings.position_embeddings.weight", [4, 4]));
        graph.Message(5, Initializer("embeddings.token_type_embeddings.weight", [2, 4]));
        graph.Message(5, Initializer("encoder.layer.0.intermediate.dense.weight", [6, 4]));
        graph.Message(5, Initializer("encoder.layer.0.attention.self.query.bias", [4]));
        graph.Message(5, Initializer("encoder.layer.0.attention.self.key.bias", [4]));
        graph.Message(5, Initializer("7", [4, 4]));
        graph.Message(5, Initializer("8", [4, 4]));
        graph.Message(1, Node("Constant", [], "eps", ConstantValue(new Protobuf().Varint(2, 1).Bytes(9, BitConverter.GetBytes(1e-12f)))));
        graph.Message(1, Node("Add", ["embeddings.word_embeddings.weight", "eps"], "v"));
        graph.Message(1, Node("Sqrt", ["v"], "s"));
        graph.Message(1, Node("MatMul", ["s", "7"], "mq"));
        graph.Message(1, Node("Add", ["encoder.layer.0.attention.self.query.bias", "mq"], "q"));
        graph.Message(1, Node("MatMul", ["s", "8"], "mk"));
        graph.Message(1, Node("Add", ["encoder.layer.0.attention.self.key.bias", "mk"], "k"));
        foreach (var (name, value) in (ReadOnlySpan<(string, long)>)[("b", 1), ("t", 5), ("heads", 2), ("size", 2)])
            graph.Message(1, Node("Constant", [], name, ConstantValue(new Protobuf().Varint(2, 7).Message(7, new Protobuf().Varint(value)))));
        graph.Message(1, Node("Concat", ["b", "t", "heads", "size"], "shape"));
        graph.Message(1, Node("Reshape", ["k", "shape"], "heads_k"));
        graph.Message(1, Node("Sum", ["q", "heads_k", "embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight",
            "encoder.layer.0.intermediate.dense.weight"], "out"));
        graph.Message(12, new Protobuf().String(1, "out"));
        return new Protobuf().Varint(1, 7).Message(7, graph).ToArray();

        static Protobuf Initializer(string name, int[] dims)
        {
            var packed = new Protobuf();
            foreach (int d in dims) packed.Varint(d);
            int count = dims.Aggregate(1, (a, b) => a * b);
            var data = new byte[count * 4];
            for (int i = 0; i < count; i++) BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(i * 4), i * 0.5f - 1);
            return new Protobuf().Message(1, packed).Varint(2, 1).String(8, name).Bytes(9, data);
        }

        static Protobuf Node(string op, string[] inputs, string output, Protobuf? attribute = null)
        {
            var node = new Protobuf();
            foreach (string input in inputs) node.String(1, input);
            node.String(2, output).String(4, op);
            if (attribute is not null) node.Message(5, attribute);
            return node;
        }

        static Protobuf ConstantValue(Protobuf tensor) => new Protobuf().String(1, "value").Message(5, tensor);
    }

    /// <summary>Protocol-buffer wire format, written field by field.</summary>
    private sealed class Protobuf
    {
        private readonly List<byte> _bytes = [];

        public Protobuf Varint(long value)
        {
            for (ulong v = unchecked((ulong)value); ; v >>= 7)
            {
                if (v < 0x80)
                {
                    _bytes.Add((byte)v);
                    return this;
                }
                _bytes.Add((byte)(v | 0x80));
            }
        }

        public Protobuf Varint(int field, long value) => Varint(field << 3).Varint(value);

        public Protobuf Bytes(int field, byte[] bytes)
        {
            Varint(field << 3 | 2).Varint(bytes.Length);
            _bytes.AddRange(bytes);
            return this;
        }

        public Protobuf String(int field, string text) => Bytes(field, Encoding.UTF8.GetBytes(text));

        public Protobuf Message(int field, Protobuf message) => Bytes(field, message.ToArray());

        public byte[] ToArray() => [.. _bytes];
    }

    /// <summary>GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the rest for U+0100 onwards in order.</summary>
    private static char ByteCharacter(byte value)
    {
        static bool Printable(int b) => b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
        if (Printable(value)) return (char)value;
        int shifted = 0;
        for (int b = 0; b < value; b++)
            if (!Printable(b)) shifted++;
        return (char)(256 + shifted);
    }
}
