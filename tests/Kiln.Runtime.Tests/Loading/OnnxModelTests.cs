using System.Text;
using Kiln.Loading;
using Xunit.Abstractions;

namespace Kiln.Runtime.Tests.Loading;

/// <summary>
/// OnnxModel on a small ONNX file written here (a BertModel-shaped graph: named embeddings, one unnamed matmul weight
/// added to a named bias): names recovered, matmul weights transposed, config stated; and every truncation and every
/// single-byte change of the file either loads or is a ModelLoadException naming the file, never another exception.
/// </summary>
public sealed class OnnxModelTests(ITestOutputHelper output)
{
    [Fact]
    public void RecoversMatmulNamesTransposesAndStatesTheConfig()
    {
        string path = Write(Model());
        using var file = new OnnxModel(path);
        Assert.Equal("bert", file.Architecture);
        Assert.Equal(ModelNaming.HuggingFace, file.Naming);
        var query = file.LoadTensor("encoder.layer.0.attention.self.query.weight");
        Assert.Equal([3, 2], query.Shape); // stored [in 2, out 3], presented [out, in]
        Assert.Equal([0f, 3f, 1f, 4f, 2f, 5f], query.Data);
        Assert.False(file.Tensors.ContainsKey("7"));
        Assert.False(file.Tensors.ContainsKey("pooler.dense.bias")); // feeds no part of the first output
        Assert.True(file.TryGetInt("hidden_size", out long hidden) && hidden == 2);
        Assert.True(file.TryGetInt("num_hidden_layers", out long layers) && layers == 1);
        Assert.True(file.TryGetFloat("layer_norm_eps", out double eps) && Math.Abs(eps - 1e-12) < 1e-18);
    }

    [Fact]
    public void EveryTruncationAndByteChangeLoadsOrNamesTheFault()
    {
        byte[] model = Model();
        int faults = 0, loads = 0;
        for (int length = 0; length < model.Length; length++) Check(model[..length]);
        var random = new Random(17);
        output.WriteLine($"seed 17, {model.Length} bytes");
        for (int i = 0; i < model.Length; i++)
        {
            var changed = (byte[])model.Clone();
            changed[i] ^= (byte)(1 << random.Next(8));
            Check(changed);
        }
        output.WriteLine($"{faults} rejected with a ModelLoadException, {loads} loaded");
        Assert.True(faults > model.Length);

        void Check(byte[] bytes)
        {
            string path = Write(bytes);
            try
            {
                using var file = new OnnxModel(path);
                foreach (var name in file.Tensors.Keys) file.LoadTensor(name);
                loads++;
            }
            catch (ModelLoadException e)
            {
                Assert.Equal(path, e.FilePath);
                Assert.False(string.IsNullOrEmpty(e.Field));
                faults++;
            }
        }
    }

    // Found by fuzzing (tests/Kiln.Fuzz, onnx target): an exception other than ModelLoadException, or a rejection
    // without a byte offset.

    [Fact]
    public void AnAddOfTheKeyBiasWithoutOutputsIsNotMistakenForTheKeyProjection()
    {
        // Was an IndexOutOfRangeException looking for the key's Reshape after an Add that has no output.
        string path = Write(Model(graph =>
        {
            var node = new List<byte>();
            Bytes(node, 1, Encoding.UTF8.GetBytes("encoder.layer.0.attention.self.key.bias"));
            Bytes(node, 4, Encoding.UTF8.GetBytes("Add"));
            Bytes(graph, 1, node.ToArray());
        }));
        using var file = new OnnxModel(path);
        Assert.False(file.Metadata.ContainsKey("num_attention_heads"));
    }

    [Fact]
    public void AnEmbeddingThatIsNotAMatrixIsNamedWithItsOffset()
    {
        // Was an IndexOutOfRangeException reading a one-dimensional embedding's second extent.
        var graph = new List<byte>();
        byte[] words = Tensor("embeddings.word_embeddings.weight", [10]);
        Bytes(graph, 5, words);
        Bytes(graph, 5, Tensor("encoder.layer.0.attention.self.query.weight", [2, 2]));
        var (bytes, graphAt) = ModelOf(graph, "embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight");
        var error = Assert.Throws<ModelLoadException>(() => new OnnxModel(Write(bytes)));
        Assert.Equal("graph.initializer 'embeddings.word_embeddings.weight'", error.Field);
        Assert.True(words.Length < 128);
        Assert.Equal(graphAt + 2, error.Offset); // the initializer's message, after its key and one-byte length
    }

    [Fact]
    public void WholeGraphProblemsNameTheGraphsOffset()
    {
        // Each was a rejection with no offset: a missing BertModel weight, no output, no graph at all.
        var graph = new List<byte>();
        Bytes(graph, 5, Tensor("embeddings.word_embeddings.weight", [5, 2]));
        Bytes(graph, 5, Tensor("encoder.layer.0.attention.self.query.weight", [2, 2]));
        var (bytes, graphAt) = ModelOf(graph, "embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight");
        var missing = Assert.Throws<ModelLoadException>(() => new OnnxModel(Write(bytes)));
        Assert.Equal("graph.initializer 'embeddings.position_embeddings.weight'", missing.Field);
        Assert.Equal(graphAt, missing.Offset);

        (bytes, graphAt) = ModelOf(graph);
        var noOutput = Assert.Throws<ModelLoadException>(() => new OnnxModel(Write(bytes)));
        Assert.Equal(("graph.output", (long?)graphAt), (noOutput.Field, noOutput.Offset));

        var noGraph = Assert.Throws<ModelLoadException>(() => new OnnxModel(Write([0x08, 7])));
        Assert.Equal(("ModelProto.graph", 0L), (noGraph.Field, noGraph.Offset));
    }

    /// <summary>
    /// ModelProto { graph } of <paramref name="graph"/>'s initializers, with one Sum node of <paramref name="summed"/>
    /// as its output; and where the graph's message starts (it ends the file).
    /// </summary>
    private static (byte[] Bytes, long GraphOffset) ModelOf(List<byte> graph, params string[] summed)
    {
        var body = new List<byte>(graph);
        if (summed.Length > 0)
        {
            var node = new List<byte>();
            foreach (var input in summed) Bytes(node, 1, Encoding.UTF8.GetBytes(input));
            Bytes(node, 2, "out"u8.ToArray());
            Bytes(node, 4, "Sum"u8.ToArray());
            Bytes(body, 1, node.ToArray());
            var output = new List<byte>();
            Bytes(output, 1, "out"u8.ToArray());
            Bytes(body, 12, output.ToArray());
        }
        var model = new List<byte>();
        Bytes(model, 7, body.ToArray());
        return (model.ToArray(), model.Count - body.Count);
    }

    private static string Write(byte[] bytes)
    {
        string path = Path.Combine(Path.GetTempPath(), $"kiln-onnx-{Environment.ProcessId}.onnx");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>ModelProto { ir_version, graph { nodes, initializers, output } }, as torch.onnx writes them.</summary>
    private static byte[] Model(Action<List<byte>>? addToGraph = null)
    {
        var graph = new List<byte>();
        void Node(string op, string[] inputs, string output, byte[]? constant = null)
        {
            var node = new List<byte>();
            foreach (var input in inputs) Bytes(node, 1, Encoding.UTF8.GetBytes(input));
            Bytes(node, 2, Encoding.UTF8.GetBytes(output));
            Bytes(node, 4, Encoding.UTF8.GetBytes(op));
            if (constant is not null)
            {
                var attribute = new List<byte>();
                Bytes(attribute, 1, Encoding.UTF8.GetBytes("value"));
                Bytes(attribute, 5, constant);
                Bytes(node, 5, attribute.ToArray());
            }
            Bytes(graph, 1, node.ToArray());
        }
        Bytes(graph, 5, Tensor("embeddings.word_embeddings.weight", [5, 2]));
        Bytes(graph, 5, Tensor("embeddings.position_embeddings.weight", [4, 2]));
        Bytes(graph, 5, Tensor("embeddings.token_type_embeddings.weight", [2, 2]));
        Bytes(graph, 5, Tensor("encoder.layer.0.intermediate.dense.weight", [6, 2]));
        Bytes(graph, 5, Tensor("encoder.layer.0.attention.self.query.bias", [3]));
        Bytes(graph, 5, Tensor("7", [2, 3]));
        Bytes(graph, 5, Tensor("pooler.dense.bias", [2]));
        Node("Constant", [], "eps", Tensor("", [], [1e-12f]));
        Node("Add", ["embeddings.word_embeddings.weight", "eps"], "v");
        Node("Sqrt", ["v"], "s");
        Node("MatMul", ["s", "7"], "m");
        Node("Add", ["encoder.layer.0.attention.self.query.bias", "m"], "q");
        Node("Sum", ["q", "embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight", "encoder.layer.0.intermediate.dense.weight"], "out");
        Node("Add", ["out", "pooler.dense.bias"], "pooled");
        addToGraph?.Invoke(graph);
        var output = new List<byte>();
        Bytes(output, 1, Encoding.UTF8.GetBytes("out"));
        Bytes(graph, 12, output.ToArray());
        var model = new List<byte> { 0x08, 7 };
        Bytes(model, 7, graph.ToArray());
        return model.ToArray();
    }

    /// <summary>A float TensorProto with packed dims and raw_data 0, 1, 2, … (or the given values).</summary>
    private static byte[] Tensor(string name, int[] dims, float[]? values = null)
    {
        var tensor = new List<byte>();
        var packed = new List<byte>();
        foreach (int d in dims) Varint(packed, (ulong)d);
        if (dims.Length > 0) Bytes(tensor, 1, packed.ToArray());
        tensor.Add(2 << 3);
        Varint(tensor, 1);
        if (name.Length > 0) Bytes(tensor, 8, Encoding.UTF8.GetBytes(name));
        int count = dims.Aggregate(1, (a, b) => a * b);
        values ??= Enumerable.Range(0, count).Select(i => (float)i).ToArray();
        Bytes(tensor, 9, values.SelectMany(BitConverter.GetBytes).ToArray());
        return tensor.ToArray();
    }

    private static void Bytes(List<byte> message, int field, byte[] bytes)
    {
        Varint(message, (ulong)(field << 3 | 2));
        Varint(message, (ulong)bytes.Length);
        message.AddRange(bytes);
    }

    private static void Varint(List<byte> message, ulong value)
    {
        for (; value >= 0x80; value >>= 7) message.Add((byte)(value | 0x80));
        message.Add((byte)value);
    }
}
