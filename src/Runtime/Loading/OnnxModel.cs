using System.Runtime.InteropServices;

namespace Kiln.Loading;

/// <summary>
/// The weights of an ONNX export (a PyTorch model saved with torch.onnx) as a model file: the graph's float
/// initializers that its first output depends on, under their Hugging Face names (<see cref="ModelNaming.HuggingFace"/>),
/// with the config the graph implies as metadata. Read by its own protobuf reader (<see cref="ProtobufReader"/>) over a
/// memory-mapped file: no ONNX library.
/// <para>
/// Exporters keep the names of biases, norms and embeddings but give each matmul weight a number (nn.Linear's weight is
/// exported transposed, [in, out], and renamed). Its name is recovered from the graph: the MatMul that reads it feeds
/// an Add whose other input is a named bias ("encoder.layer.0.attention.self.query.bias"), so it is that module's
/// "weight"; it is presented as nn.Linear stores it, [out, in] (transposed once, when first loaded). A float
/// initializer whose name cannot be recovered, a graph with external data, or any malformed field is a
/// <see cref="ModelLoadException"/> naming the file, the field and its byte offset.
/// </para>
/// <para>
/// Architectures: a BertModel export ("bert": sentence-transformers' all-MiniLM-L6-v2 and its kin). Its config is read off
/// the initializers' shapes (hidden_size, intermediate_size, num_hidden_layers, vocab_size, max_position_embeddings,
/// type_vocab_size) and the graph (num_attention_heads from the shape the key projection is reshaped to,
/// layer_norm_eps from the constant the first LayerNorm adds to its variance).
/// </para>
/// </summary>
public sealed class OnnxModel : ModelFile
{
    private const int FloatType = 1, Int64Type = 7;
    private const string ExternalData = "the tensor's data lies outside the file (external data), which is not supported: export with the weights inside.";

    private readonly MappedFile _file;
    private readonly Dictionary<string, TensorInfo> _tensors = new(StringComparer.Ordinal);
    private readonly Dictionary<string, MetadataValue> _metadata = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _storedName = new(StringComparer.Ordinal); // presented name → initializer name
    private readonly Dictionary<string, Initializer> _initializers = new(StringComparer.Ordinal);
    private long _graphOffset; // where GraphProto starts: named by problems of the graph as a whole

    /// <summary>One initializer as the file stores it: dims outermost first, element type, where its raw bytes are.</summary>
    private sealed record Initializer(string Name, long[] Dims, int DataType, long DataOffset, long DataLength, long EntryOffset, ulong ScalarBits);

    private sealed record Node(string OpType, string[] Inputs, string[] Outputs, long Offset, Initializer? Value);

    /// <summary>Opens the ONNX file at <paramref name="path"/>; its weights are mapped, and only the transposed matmul weights are copied (when loaded).</summary>
    public OnnxModel(string path) : base(path)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("ONNX reading assumes a little-endian machine.");
        _file = MappedFile.Open(path);
        try
        {
            var (nodes, initializers, outputs) = ReadGraph();
            Bind(nodes, initializers, outputs);
            Architecture = DescribeConfig(nodes);
        }
        catch
        {
            _file.Dispose();
            throw;
        }
    }

    public override ModelNaming Naming => ModelNaming.HuggingFace;

    public override string Architecture { get; }

    /// <summary>The graph output whose weights this file presents (the first the graph declares).</summary>
    public string Output { get; private set; } = "";

    public override IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;

    public override IReadOnlyDictionary<string, MetadataValue> Metadata => _metadata;

    /// <summary>A weight's bytes: in place from the mapping, or (a matmul weight stored [in, out]) a transposed copy.</summary>
    public override ReadOnlySpan<byte> GetTensorBytes(TensorInfo tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var stored = _initializers[_storedName[tensor.Name]];
        var bytes = _file.Slice(stored.DataOffset, checked((int)stored.DataLength));
        if (stored.Name == tensor.Name) return bytes;
        int rows = (int)stored.Dims[0], cols = (int)stored.Dims[1];
        var source = MemoryMarshal.Cast<byte, float>(bytes);
        var copy = new byte[bytes.Length];
        var destination = MemoryMarshal.Cast<byte, float>(copy.AsSpan());
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) destination[c * rows + r] = source[r * cols + c];
        return copy;
    }

    public override void Dispose()
    {
        _file.Dispose();
        base.Dispose();
    }

    // ---- The protobuf messages (onnx.proto3): ModelProto → GraphProto → NodeProto, TensorProto, ValueInfoProto ----

    private (List<Node> Nodes, List<Initializer> Initializers, List<(string Name, long Offset)> Outputs) ReadGraph()
    {
        if (_file.Length > int.MaxValue)
            throw new ModelLoadException(Path, "file", null, $"{_file.Length} bytes: ONNX files over 2 GiB keep their weights as external data, which is not supported.");
        var model = new ProtobufReader(_file.Slice(0, (int)_file.Length), Path, 0);
        Delimited graph = default;
        bool found = false;
        while (!model.AtEnd)
        {
            long at = model.Offset;
            var (field, wire) = model.ReadKey("ModelProto");
            if (field == 7)
            {
                model.Expect(wire, ProtobufReader.LengthDelimited, "ModelProto.graph", at);
                graph = model.ReadBytes("ModelProto.graph");
                found = true;
            }
            else model.Skip(wire, $"ModelProto field {field}");
        }
        if (!found) throw new ModelLoadException(Path, "ModelProto.graph", 0, "the file holds no graph (is it an ONNX model?).");
        _graphOffset = graph.Offset;

        var nodes = new List<Node>();
        var initializers = new List<Initializer>();
        var outputs = new List<(string, long)>();
        var reader = new ProtobufReader(graph.Bytes, Path, graph.Offset);
        while (!reader.AtEnd)
        {
            long at = reader.Offset;
            var (field, wire) = reader.ReadKey("GraphProto");
            switch (field)
            {
                case 1:
                    reader.Expect(wire, ProtobufReader.LengthDelimited, $"graph.node[{nodes.Count}]", at);
                    nodes.Add(ReadNode(reader.ReadBytes($"graph.node[{nodes.Count}]"), $"graph.node[{nodes.Count}]"));
                    break;
                case 5:
                    reader.Expect(wire, ProtobufReader.LengthDelimited, $"graph.initializer[{initializers.Count}]", at);
                    initializers.Add(ReadTensor(reader.ReadBytes($"graph.initializer[{initializers.Count}]"), $"graph.initializer[{initializers.Count}]"));
                    break;
                case 12:
                    reader.Expect(wire, ProtobufReader.LengthDelimited, $"graph.output[{outputs.Count}]", at);
                    outputs.Add((ReadValueName(reader.ReadBytes($"graph.output[{outputs.Count}]"), $"graph.output[{outputs.Count}]"), at));
                    break;
                default:
                    reader.Skip(wire, $"GraphProto field {field}");
                    break;
            }
        }
        return (nodes, initializers, outputs);
    }

    private Node ReadNode(Delimited message, string context)
    {
        var inputs = new List<string>();
        var outputs = new List<string>();
        string opType = "";
        Initializer? value = null;
        var reader = new ProtobufReader(message.Bytes, Path, message.Offset);
        while (!reader.AtEnd)
        {
            long at = reader.Offset;
            var (field, wire) = reader.ReadKey(context);
            switch (field)
            {
                case 1 or 2 or 4:
                    string name = field == 1 ? "input" : field == 2 ? "output" : "op_type";
                    reader.Expect(wire, ProtobufReader.LengthDelimited, $"{context}.{name}", at);
                    string text = reader.ReadString($"{context}.{name}");
                    if (field == 1) inputs.Add(text);
                    else if (field == 2) outputs.Add(text);
                    else opType = text;
                    break;
                case 5:
                    reader.Expect(wire, ProtobufReader.LengthDelimited, $"{context}.attribute", at);
                    value = ReadAttributeTensor(reader.ReadBytes($"{context}.attribute"), $"{context}.attribute") ?? value;
                    break;
                default:
                    reader.Skip(wire, $"{context} field {field}");
                    break;
            }
        }
        return new Node(opType, inputs.ToArray(), outputs.ToArray(), message.Offset, value);
    }

    /// <summary>An attribute's tensor (field t: a Constant's value), or null for any other attribute.</summary>
    private Initializer? ReadAttributeTensor(Delimited message, string context)
    {
        Initializer? tensor = null;
        var reader = new ProtobufReader(message.Bytes, Path, message.Offset);
        while (!reader.AtEnd)
        {
            long at = reader.Offset;
            var (field, wire) = reader.ReadKey(context);
            if (field == 5)
            {
                reader.Expect(wire, ProtobufReader.LengthDelimited, $"{context}.t", at);
                tensor = ReadTensor(reader.ReadBytes($"{context}.t"), $"{context}.t");
            }
            else reader.Skip(wire, $"{context} field {field}");
        }
        return tensor;
    }

    private string ReadValueName(Delimited message, string context)
    {
        string name = "";
        var reader = new ProtobufReader(message.Bytes, Path, message.Offset);
        while (!reader.AtEnd)
        {
            long at = reader.Offset;
            var (field, wire) = reader.ReadKey(context);
            if (field == 1)
            {
                reader.Expect(wire, ProtobufReader.LengthDelimited, $"{context}.name", at);
                name = reader.ReadString($"{context}.name");
            }
            else reader.Skip(wire, $"{context} field {field}");
        }
        return name;
    }

    /// <summary>
    /// A TensorProto: dims (packed or not), data_type, name, raw_data; a one-element value held in the typed fields
    /// (float_data, int64_data) is kept as its bits. External data is an error: only the weights inside the file are read.
    /// </summary>
    private Initializer ReadTensor(Delimited message, string context)
    {
        var dims = new List<long>();
        int dataType = 0;
        string name = "";
        long dataOffset = -1, dataLength = 0;
        ulong scalar = 0;
        int typedValues = 0;
        var reader = new ProtobufReader(message.Bytes, Path, message.Offset);
        while (!reader.AtEnd)
        {
            long at = reader.Offset;
            var (field, wire) = reader.ReadKey(context);
            switch (field)
            {
                case 1 when wire == ProtobufReader.Varint:
                    dims.Add(reader.ReadInt64($"{context}.dims"));
                    break;
                case 1:
                {
                    reader.Expect(wire, ProtobufReader.LengthDelimited, $"{context}.dims", at);
                    var (packed, offset) = reader.ReadBytes($"{context}.dims");
                    var inner = new ProtobufReader(packed, Path, offset);
                    while (!inner.AtEnd) dims.Add(inner.ReadInt64($"{context}.dims"));
                    break;
                }
                case 2:
                    reader.Expect(wire, ProtobufReader.Varint, $"{context}.data_type", at);
                    dataType = (int)reader.ReadVarint($"{context}.data_type");
                    break;
                case 8:
                    reader.Expect(wire, ProtobufReader.LengthDelimited, $"{context}.name", at);
                    name = reader.ReadString($"{context}.name");
                    break;
                case 9:
                {
                    reader.Expect(wire, ProtobufReader.LengthDelimited, $"{context}.raw_data", at);
                    var (bytes, offset) = reader.ReadBytes($"{context}.raw_data");
                    (dataOffset, dataLength) = (offset, bytes.Length);
                    if (bytes.Length is 4 or 8) scalar = bytes.Length == 4 ? BitConverter.ToUInt32(bytes) : BitConverter.ToUInt64(bytes);
                    break;
                }
                case 4 when wire == ProtobufReader.LengthDelimited: // float_data, packed
                {
                    var (bytes, _) = reader.ReadBytes($"{context}.float_data");
                    typedValues += bytes.Length / 4;
                    if (bytes.Length >= 4) scalar = BitConverter.ToUInt32(bytes);
                    break;
                }
                case 7 when wire == ProtobufReader.LengthDelimited: // int64_data, packed
                {
                    var (bytes, offset) = reader.ReadBytes($"{context}.int64_data");
                    var inner = new ProtobufReader(bytes, Path, offset);
                    while (!inner.AtEnd)
                    {
                        long value = inner.ReadInt64($"{context}.int64_data");
                        if (typedValues++ == 0) scalar = unchecked((ulong)value);
                    }
                    break;
                }
                case 13:
                    throw reader.Error($"{context}{(name.Length > 0 ? $" ('{name}')" : "")}.external_data", at, ExternalData);
                case 14:
                    reader.Expect(wire, ProtobufReader.Varint, $"{context}.data_location", at);
                    if (reader.ReadVarint($"{context}.data_location") != 0)
                        throw reader.Error($"{context}{(name.Length > 0 ? $" ('{name}')" : "")}.data_location", at, ExternalData);
                    break;
                default:
                    reader.Skip(wire, $"{context} field {field}");
                    break;
            }
        }
        long count = 1;
        foreach (long d in dims)
        {
            if (d < 0) throw new ModelLoadException(Path, $"{context} ('{name}').dims", message.Offset, $"a negative dimension {d}.");
            count = d == 0 ? 0 : count <= long.MaxValue / d ? count * d : throw new ModelLoadException(Path, $"{context} ('{name}').dims", message.Offset, "the dimensions' product overflows.");
        }
        if (dataOffset >= 0)
        {
            int size = dataType switch { FloatType => 4, Int64Type => 8, _ => 0 };
            if (size > 0 && (count > long.MaxValue / size || count * size != dataLength))
                throw new ModelLoadException(Path, $"{context} ('{name}').raw_data", dataOffset,
                    $"holds {dataLength} bytes, but dims [{string.Join(", ", dims)}] of {(dataType == FloatType ? "float" : "int64")} take {count * size}.");
        }
        return new Initializer(name, dims.ToArray(), dataType, dataOffset, dataLength, message.Offset, scalar);
    }

    // ---- Weights and their names ----------------------------------------------------------------------------------

    private void Bind(List<Node> nodes, List<Initializer> initializers, List<(string Name, long Offset)> outputs)
    {
        foreach (var initializer in initializers)
        {
            if (initializer.Name.Length == 0) throw new ModelLoadException(Path, "graph.initializer name", initializer.EntryOffset, "an initializer without a name.");
            if (!_initializers.TryAdd(initializer.Name, initializer))
                throw new ModelLoadException(Path, $"graph.initializer '{initializer.Name}'", initializer.EntryOffset, "a second initializer of this name.");
        }
        if (outputs.Count == 0) throw new ModelLoadException(Path, "graph.output", _graphOffset, "the graph declares no output.");
        Output = outputs[0].Name;

        // What the first output depends on: walk the graph back from it.
        var producer = new Dictionary<string, Node>(StringComparer.Ordinal);
        foreach (var node in nodes)
            foreach (var output in node.Outputs) producer[output] = node;
        var needed = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<string>();
        pending.Push(Output);
        while (pending.Count > 0)
        {
            string value = pending.Pop();
            if (!needed.Add(value) || !producer.TryGetValue(value, out var node)) continue;
            foreach (var input in node.Inputs) if (input.Length > 0) pending.Push(input);
        }

        // Matmul weights' names, from the named bias their product is added to.
        var consumers = new Dictionary<string, List<Node>>(StringComparer.Ordinal);
        foreach (var node in nodes)
            foreach (var input in node.Inputs)
            {
                if (!consumers.TryGetValue(input, out var list)) consumers[input] = list = new List<Node>();
                list.Add(node);
            }
        var recovered = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var node in nodes.Where(n => n.OpType == "MatMul" && n.Inputs.Length == 2 && n.Outputs.Length == 1))
        {
            if (!_initializers.TryGetValue(node.Inputs[1], out var weight) || weight.DataType != FloatType || !IsUnnamed(weight.Name)) continue;
            string? bias = consumers.GetValueOrDefault(node.Outputs[0])?.Where(c => c.OpType == "Add")
                .SelectMany(c => c.Inputs).FirstOrDefault(i => i != node.Outputs[0] && i.EndsWith(".bias", StringComparison.Ordinal) && _initializers.ContainsKey(i));
            if (bias is null) continue;
            string name = bias[..^"bias".Length] + "weight";
            if (weight.Dims.Length != 2 || _initializers[bias].Dims is not [long outputs1] || outputs1 != weight.Dims[1])
                throw new ModelLoadException(Path, $"graph.initializer '{weight.Name}'", weight.EntryOffset,
                    $"the MatMul weight added to {bias} is [{string.Join(", ", weight.Dims)}], not [in, {string.Join(", ", _initializers[bias].Dims)}].");
            if (!recovered.TryAdd(weight.Name, name) || _initializers.ContainsKey(name))
                throw new ModelLoadException(Path, $"graph.initializer '{weight.Name}'", weight.EntryOffset, $"the name {name} it is given by the graph is taken twice.");
        }

        foreach (var initializer in initializers)
        {
            if (!needed.Contains(initializer.Name) || initializer.DataType != FloatType) continue; // another output's, or a graph constant
            if (initializer.DataOffset < 0)
                throw new ModelLoadException(Path, $"graph.initializer '{initializer.Name}'", initializer.EntryOffset, "a float weight without raw_data (typed float_data is not read for weights).");
            bool transposed = recovered.TryGetValue(initializer.Name, out string? name);
            if (!transposed && IsUnnamed(initializer.Name))
                throw new ModelLoadException(Path, $"graph.initializer '{initializer.Name}'", initializer.EntryOffset,
                    "a float initializer with an exporter's number for a name, whose name the graph does not give (no MatMul of it is added to a named bias).");
            name ??= initializer.Name;
            var dims = initializer.Dims.Reverse().ToArray(); // GGML order: innermost first
            if (transposed) dims = [initializer.Dims[0], initializer.Dims[1]]; // presented [out, in]: ne = [in, out]
            _tensors[name] = new TensorInfo(name, GgmlType.F32, dims, initializer.DataOffset, initializer.DataLength);
            _storedName[name] = initializer.Name;
        }
        if (_tensors.Count == 0) throw new ModelLoadException(Path, $"graph.output '{Output}'", outputs[0].Offset, "no float weight feeds the graph's output.");
    }

    private static bool IsUnnamed(string name) => name.Length > 0 && name.All(char.IsAsciiDigit);

    // ---- The config the graph implies ----------------------------------------------------------------------------

    /// <summary>Recognizes the architecture by its weights' names and states its config; returns Kiln's architecture name.</summary>
    private string DescribeConfig(List<Node> nodes)
    {
        const string Words = "embeddings.word_embeddings.weight";
        if (!_tensors.ContainsKey(Words) || !_tensors.ContainsKey("encoder.layer.0.attention.self.query.weight"))
            throw new ModelLoadException(Path, "graph.initializer", _graphOffset,
                $"the weights name no architecture Kiln reads from ONNX (a BertModel export has {Words} and encoder.layer.N.attention.self.query.weight).");
        long Rows(string name, int axis)
        {
            if (!_tensors.TryGetValue(name, out var tensor))
                throw new ModelLoadException(Path, $"graph.initializer '{name}'", _graphOffset, "missing from the BertModel export.");
            if (tensor.Dimensions.Length != 2)
                throw new ModelLoadException(Path, $"graph.initializer '{name}'", _initializers[_storedName[name]].EntryOffset,
                    $"dims [{string.Join(", ", tensor.Dimensions.Reverse())}]; a BertModel export stores it as a matrix.");
            return tensor.Dimensions[^(axis + 1)];
        }
        _metadata["architectures"] = new MetadataValue(new[] { "BertModel" });
        _metadata["vocab_size"] = new MetadataValue(Rows(Words, 0));
        _metadata["hidden_size"] = new MetadataValue(Rows(Words, 1));
        _metadata["max_position_embeddings"] = new MetadataValue(Rows("embeddings.position_embeddings.weight", 0));
        _metadata["type_vocab_size"] = new MetadataValue(Rows("embeddings.token_type_embeddings.weight", 0));
        _metadata["intermediate_size"] = new MetadataValue(Rows("encoder.layer.0.intermediate.dense.weight", 0));
        int layers = 0;
        while (_tensors.ContainsKey($"encoder.layer.{layers}.attention.self.query.weight")) layers++;
        _metadata["num_hidden_layers"] = new MetadataValue((long)layers);

        // Heads: the key projection (MatMul + Add of its bias) is reshaped to [batch, sequence, heads, head size].
        var byOutput = new Dictionary<string, Node>(StringComparer.Ordinal);
        foreach (var node in nodes) foreach (var output in node.Outputs) byOutput[output] = node;
        var keyAdd = nodes.FirstOrDefault(n => n.OpType == "Add" && n.Outputs.Length == 1 && n.Inputs.Contains("encoder.layer.0.attention.self.key.bias"));
        var reshape = keyAdd is null ? null : nodes.FirstOrDefault(n => n.OpType == "Reshape" && n.Inputs.Length == 2 && n.Inputs[0] == keyAdd.Outputs[0]);
        if (reshape is not null && byOutput.TryGetValue(reshape.Inputs[1], out var shape) && shape.OpType == "Concat" && shape.Inputs.Length == 4
            && Int64Scalar(shape.Inputs[2], byOutput) is long heads && Int64Scalar(shape.Inputs[3], byOutput) is long headSize)
        {
            if (heads <= 0 || heads * headSize != Rows(Words, 1))
                throw new ModelLoadException(Path, $"graph.node Concat '{shape.Outputs[0]}'", shape.Offset, $"the keys are reshaped to {heads} heads of {headSize}, which is not the hidden size {Rows(Words, 1)}.");
            _metadata["num_attention_heads"] = new MetadataValue(heads);
        }

        // LayerNorm's epsilon: the constant added to the variance before its square root (the first norm's).
        foreach (var sqrt in nodes.Where(n => n.OpType == "Sqrt" && n.Inputs.Length == 1))
        {
            if (!byOutput.TryGetValue(sqrt.Inputs[0], out var add) || add.OpType != "Add") continue;
            if (add.Inputs.Select(i => FloatScalar(i, byOutput)).FirstOrDefault(v => v is not null) is float eps)
            {
                _metadata["layer_norm_eps"] = new MetadataValue((double)eps);
                break;
            }
        }
        return "bert";
    }

    /// <summary>The value of a one-element int64 initializer or Constant, or null.</summary>
    private long? Int64Scalar(string name, Dictionary<string, Node> byOutput)
    {
        var tensor = _initializers.GetValueOrDefault(name) ?? byOutput.GetValueOrDefault(name)?.Value;
        return tensor is { DataType: Int64Type } && tensor.Dims.Aggregate(1L, (a, b) => a * b) == 1 ? unchecked((long)tensor.ScalarBits) : null;
    }

    /// <summary>The value of a one-element float initializer or Constant, or null.</summary>
    private float? FloatScalar(string name, Dictionary<string, Node> byOutput)
    {
        var tensor = _initializers.GetValueOrDefault(name) ?? byOutput.GetValueOrDefault(name)?.Value;
        return tensor is { DataType: FloatType } && tensor.Dims.Aggregate(1L, (a, b) => a * b) == 1 ? BitConverter.UInt32BitsToSingle((uint)tensor.ScalarBits) : null;
    }
}
