using System.Buffers.Binary;
using System.Text.Json;

namespace Kiln.Loading;

/// <summary>
/// A Hugging Face checkpoint: config.json beside one model.safetensors, or beside shards listed by
/// model.safetensors.index.json; every shard memory-mapped. Opened from the directory, its config.json, its index or
/// one of its .safetensors files. Names are Hugging Face's (<see cref="ModelNaming.HuggingFace"/>): metadata is the
/// config (<see cref="HuggingFaceConfig"/>), tensors keep the checkpoint's names, and the generated Load of a
/// definition binds them through the HuggingFace names its attributes declare.
/// <para>
/// Every header is checked before it is used: the 8-byte length, the JSON, each entry's dtype, shape and
/// data_offsets (in range, their length the shape's size in the dtype, no two tensors overlapping, no gap, the data
/// wholly covered, as the format requires) and no name twice. Every problem is a <see cref="ModelLoadException"/>
/// naming the file, the tensor or key, and the byte offset. F32, F16 and BF16 tensors load; any other dtype is an
/// error naming the tensor and dtype.
/// </para>
/// </summary>
public sealed class SafetensorsModel : ModelFile
{
    public const string ConfigFileName = "config.json";
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>The safetensors format's own limit on a header.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    /// <summary>Bytes <see cref="LooksLikeSafetensors"/> reads: the header length and the header's first byte.</summary>
    internal const int SniffBytes = 9;

    /// <summary>
    /// Buffers a checkpoint may save beside its weights that no forward reads: GPT-2's causal mask (attn.bias,
    /// attn.masked_bias) and a rotary table (rotary_emb.inv_freq). Their entries are checked like any other, then left
    /// out of <see cref="Tensors"/>.
    /// </summary>
    private static readonly string[] BufferSuffixes = [".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"];

    private readonly MappedFile[] _shards;
    private readonly string[] _shardPaths;
    private readonly Dictionary<string, int> _shardOf = new(StringComparer.Ordinal);
    private readonly Dictionary<string, TensorInfo> _tensors = new(StringComparer.Ordinal);
    private readonly Dictionary<string, MetadataValue> _metadata;

    /// <summary>Opens the checkpoint at <paramref name="path"/>: its directory, config.json, index, or a .safetensors file in it.</summary>
    public SafetensorsModel(string path) : base(DirectoryOf(path))
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors reading assumes a little-endian machine.");
        ConfigPath = System.IO.Path.Combine(Path, ConfigFileName);
        var config = HuggingFaceConfig.Read(ConfigPath);
        _metadata = config.Metadata;
        HuggingFaceArchitecture = config.HuggingFaceArchitecture;
        Architecture = config.Architecture;

        var (shardPaths, index) = FindWeights(path);
        _shardPaths = shardPaths;
        _shards = new MappedFile[shardPaths.Length];
        try
        {
            var found = new List<Entry>[shardPaths.Length];
            for (int s = 0; s < shardPaths.Length; s++)
            {
                _shards[s] = MappedFile.Open(shardPaths[s]);
                found[s] = ReadHeader(shardPaths[s], _shards[s]);
            }
            Bind(found, index);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public override ModelNaming Naming => ModelNaming.HuggingFace;

    /// <summary>Kiln's name for the checkpoint's architecture (from <see cref="HuggingFaceArchitecture"/>).</summary>
    public override string Architecture { get; }

    /// <summary>The model class config.json names first in "architectures", e.g. "LlamaForCausalLM".</summary>
    public string HuggingFaceArchitecture { get; }

    public string ConfigPath { get; }

    /// <summary>The .safetensors files the tensors are in.</summary>
    public IReadOnlyList<string> ShardPaths => _shardPaths;

    public override IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;

    public override IReadOnlyDictionary<string, MetadataValue> Metadata => _metadata;

    public override ReadOnlySpan<byte> GetTensorBytes(TensorInfo tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        int shard = _shardOf[tensor.Name];
        return _shards[shard].TensorBytes(_shardPaths[shard], tensor);
    }

    internal override MappedFile? MappingOf(TensorInfo tensor) => _shards[_shardOf[tensor.Name]];

    public override void Dispose()
    {
        foreach (var shard in _shards) shard?.Dispose();
        base.Dispose();
    }

    /// <summary>
    /// A file that begins like a safetensors header: a little-endian length below 4 GiB (so the next four bytes are
    /// zero — never so in a llama2.c checkpoint, whose second int32 is a positive hidden size), then '{'.
    /// </summary>
    internal static bool LooksLikeSafetensors(ReadOnlySpan<byte> start) =>
        start.Length >= SniffBytes && BinaryPrimitives.ReadUInt32LittleEndian(start[4..]) == 0 && start[8] == (byte)'{';

    private static string DirectoryOf(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Directory.Exists(path)) return System.IO.Path.GetFullPath(path);
        if (!File.Exists(path)) throw new ModelLoadException(path, "file", null, "the file or directory does not exist.");
        return System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
    }

    /// <summary>
    /// The shards to read, and the index that lists them (null for one file): a .safetensors path is that file unless
    /// the directory's index lists it; otherwise the index when there is one, else model.safetensors.
    /// </summary>
    private (string[] Shards, Index? Index) FindWeights(string path)
    {
        string indexPath = System.IO.Path.Combine(Path, IndexFileName);
        bool sharded = File.Exists(indexPath);
        if (!Directory.Exists(path) && path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            var listed = sharded ? ReadIndex(indexPath) : null;
            string name = System.IO.Path.GetFileName(path);
            return listed is not null && listed.Shards.Contains(name)
                ? (listed.Shards.Select(s => System.IO.Path.Combine(Path, s)).ToArray(), listed)
                : ([System.IO.Path.GetFullPath(path)], null);
        }
        if (sharded)
        {
            var index = ReadIndex(indexPath);
            return (index.Shards.Select(s => System.IO.Path.Combine(Path, s)).ToArray(), index);
        }
        string single = System.IO.Path.Combine(Path, SingleFileName);
        if (!File.Exists(single))
            throw new ModelLoadException(Path, "weights", null, $"the directory has neither {SingleFileName} nor {IndexFileName} beside {ConfigFileName}.");
        return ([single], null);
    }

    /// <summary>model.safetensors.index.json: which shard holds each tensor (weight_map), with where each entry is.</summary>
    private sealed record Index(string Path, List<string> Shards, Dictionary<string, (string Shard, long Offset)> WeightMap);

    private static Index ReadIndex(string indexPath)
    {
        byte[] bytes;
        using (var stream = MappedFile.OpenRead(indexPath))
        {
            const int MaxIndexBytes = 64 << 20;
            if (stream.Length > MaxIndexBytes)
                throw new ModelLoadException(indexPath, "index", 0, $"{stream.Length} bytes is far too long for a shard index.");
            bytes = new byte[stream.Length];
            stream.ReadExactly(bytes);
        }
        var root = LocatedJson.Parse(indexPath, bytes, 0, "index");
        var map = root.Kind == JsonValueKind.Object ? root["weight_map"] : null;
        if (map is null || map.Kind != JsonValueKind.Object)
            throw new ModelLoadException(indexPath, "weight_map", map?.Offset ?? root.Offset, $"expected an object from tensor names to shard files, found {map?.ToString() ?? "none"}.");

        var shards = new List<string>();
        var weightMap = new Dictionary<string, (string, long)>(StringComparer.Ordinal);
        foreach (var (name, _, value) in map.Members)
        {
            string field = $"weight_map '{name}'";
            if (value.Kind != JsonValueKind.String)
                throw new ModelLoadException(indexPath, field, value.Offset, $"expected a shard file name, found {value}.");
            string shard = value.Text;
            // A shard is a file beside the index, never a path that leaves the directory.
            if (shard.Length == 0 || shard != System.IO.Path.GetFileName(shard) || shard is "." or ".." || shard.Contains('\\'))
                throw new ModelLoadException(indexPath, field, value.Offset, $"\"{shard}\" is not a file name in the checkpoint's directory.");
            if (!shards.Contains(shard))
            {
                string shardPath = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(indexPath)!, shard);
                if (!File.Exists(shardPath))
                    throw new ModelLoadException(indexPath, field, value.Offset, $"the shard {shard} does not exist (looked for {shardPath}).");
                shards.Add(shard);
            }
            weightMap.Add(name, (shard, value.Offset));
        }
        if (shards.Count == 0)
            throw new ModelLoadException(indexPath, "weight_map", map.Offset, "the index lists no tensors.");
        return new Index(indexPath, shards, weightMap);
    }

    /// <summary>Adds every shard's tensors, each in the shard the index names for it (and only there).</summary>
    private void Bind(List<Entry>[] found, Index? index)
    {
        for (int s = 0; s < found.Length; s++)
        {
            string shardName = System.IO.Path.GetFileName(_shardPaths[s]);
            foreach (var entry in found[s])
            {
                string field = $"tensor '{entry.Name}'";
                if (index is not null)
                {
                    if (!index.WeightMap.TryGetValue(entry.Name, out var listed))
                        throw new ModelLoadException(_shardPaths[s], field, entry.NameOffset, $"the tensor is not in {IndexFileName}'s weight_map.");
                    if (listed.Shard != shardName)
                        throw new ModelLoadException(_shardPaths[s], field, entry.NameOffset, $"{IndexFileName} puts the tensor in {listed.Shard}, not in this shard.");
                }
                if (IsBuffer(entry.Name)) continue;
                if (entry.Type is not GgmlType type)
                    throw new ModelLoadException(_shardPaths[s], $"{field} dtype", entry.DtypeOffset, $"{entry.Dtype} tensors cannot be loaded; F32, F16 and BF16 can.");
                _tensors.Add(entry.Name, new TensorInfo(entry.Name, type, entry.Dimensions, entry.Offset, entry.ByteLength));
                _shardOf.Add(entry.Name, s);
            }
        }
        if (index is null) return;
        foreach (var (name, (shard, offset)) in index.WeightMap)
        {
            if (_tensors.ContainsKey(name) || IsBuffer(name)) continue;
            throw new ModelLoadException(index.Path, $"weight_map '{name}'", offset, $"the shard {shard} has no tensor of that name.");
        }
    }

    private static bool IsBuffer(string name)
    {
        foreach (string suffix in BufferSuffixes)
            if (name.EndsWith(suffix, StringComparison.Ordinal)) return true;
        return false;
    }

    /// <summary>A safetensors dtype: its element size (so every entry's range is checked), and the GGML type Kiln reads it as (null: not loadable).</summary>
    private static (int Bytes, GgmlType? Type)? DtypeOf(string dtype) => dtype switch
    {
        "F32" => (4, GgmlType.F32),
        "F16" => (2, GgmlType.F16),
        "BF16" => (2, GgmlType.BF16),
        "F64" or "I64" or "U64" => (8, null),
        "I32" or "U32" => (4, null),
        "I16" or "U16" => (2, null),
        "I8" or "U8" or "BOOL" or "F8_E4M3" or "F8_E5M2" or "F8_E8M0" => (1, null),
        _ => null,
    };

    /// <summary>
    /// One header entry, checked: its dtype and the GGML type Kiln reads it as (null: not loadable), GGML dimensions
    /// (innermost first), absolute data offset and length, and where its name, dtype and data_offsets are.
    /// </summary>
    private sealed record Entry(string Name, string Dtype, GgmlType? Type, long[] Dimensions, long Offset, long ByteLength,
        long NameOffset, long DtypeOffset, long DataOffsetsAt);

    /// <summary>Reads and checks one shard's header; the tensors are in file order.</summary>
    private static List<Entry> ReadHeader(string path, MappedFile file)
    {
        if (file.Length < 8)
            throw new ModelLoadException(path, "header length", 0, $"the file is {file.Length} bytes; a safetensors file starts with an 8-byte header length (truncated, or not a safetensors file).");
        ulong declared = BinaryPrimitives.ReadUInt64LittleEndian(file.Slice(0, 8));
        if (declared == 0 || declared > (ulong)MaxHeaderBytes)
            throw new ModelLoadException(path, "header length", 0, $"{declared} bytes is not a header length (1 to {MaxHeaderBytes}).");
        if (declared > (ulong)(file.Length - 8))
            throw new ModelLoadException(path, "header length", 0, $"the header is {declared} bytes but only {file.Length - 8} follow the length; the file is truncated.");
        long headerLength = (long)declared;
        long dataStart = 8 + headerLength;
        long dataLength = file.Length - dataStart;

        var root = LocatedJson.Parse(path, file.Slice(8, (int)headerLength), 8, "header");
        if (root.Kind != JsonValueKind.Object)
            throw new ModelLoadException(path, "header", root.Offset, $"the header is {root}, not a JSON object.");

        var tensors = new List<Entry>();
        foreach (var (name, nameOffset, entry) in root.Members)
        {
            if (name == "__metadata__")
            {
                CheckMetadata(path, entry);
                continue;
            }
            tensors.Add(ReadEntry(path, name, nameOffset, entry, dataStart, dataLength));
        }

        // The data section is the tensors back to back: sorted by start, each begins where the previous ends.
        var ordered = tensors.OrderBy(t => t.Offset).ThenBy(t => t.ByteLength).ToList();
        long expected = dataStart;
        string? previous = null;
        foreach (var entry in ordered)
        {
            string field = $"tensor '{entry.Name}' data_offsets";
            if (entry.Offset < expected)
                throw new ModelLoadException(path, field, entry.DataOffsetsAt,
                    $"its bytes [{entry.Offset - dataStart}, {entry.Offset - dataStart + entry.ByteLength}) overlap tensor '{previous}', which ends at {expected - dataStart}.");
            if (entry.Offset > expected)
                throw new ModelLoadException(path, field, entry.DataOffsetsAt,
                    $"{entry.Offset - expected} bytes before it (from data offset {expected - dataStart}) belong to no tensor; the format allows no gaps.");
            expected = entry.Offset + entry.ByteLength;
            previous = entry.Name;
        }
        if (expected != file.Length)
            throw new ModelLoadException(path, "file length", expected, $"{file.Length - expected} bytes follow the last tensor's data; they belong to no tensor.");
        return tensors;
    }

    private static void CheckMetadata(string path, LocatedJson metadata)
    {
        if (metadata.Kind != JsonValueKind.Object)
            throw new ModelLoadException(path, "header __metadata__", metadata.Offset, $"expected an object of strings, found {metadata}.");
        foreach (var (key, _, value) in metadata.Members)
            if (value.Kind != JsonValueKind.String)
                throw new ModelLoadException(path, $"header __metadata__ '{key}'", value.Offset, $"expected a string, found {value}.");
    }

    private static Entry ReadEntry(string path, string name, long nameOffset, LocatedJson entry,
        long dataStart, long dataLength)
    {
        string label = $"tensor '{name}'";
        if (name.Length == 0)
            throw new ModelLoadException(path, "tensor ''", nameOffset, "a tensor name is empty.");
        if (entry.Kind != JsonValueKind.Object)
            throw new ModelLoadException(path, label, entry.Offset, $"expected an object with dtype, shape and data_offsets, found {entry}.");
        foreach (var member in entry.Members)
            if (member.Name is not ("dtype" or "shape" or "data_offsets"))
                throw new ModelLoadException(path, $"{label} {member.Name}", member.NameOffset, "is not a field of a tensor entry (dtype, shape, data_offsets).");
        LocatedJson Field(string field) => entry[field]
            ?? throw new ModelLoadException(path, $"{label} {field}", entry.Offset, "the entry has no such field.");

        var dtypeValue = Field("dtype");
        var dtype = dtypeValue.Kind == JsonValueKind.String ? DtypeOf(dtypeValue.Text) : null;
        if (dtype is null)
            throw new ModelLoadException(path, $"{label} dtype", dtypeValue.Offset, $"{dtypeValue} is not a safetensors dtype.");
        var (elementBytes, type) = dtype.Value;

        var shapeValue = Field("shape");
        if (shapeValue.Kind != JsonValueKind.Array)
            throw new ModelLoadException(path, $"{label} shape", shapeValue.Offset, $"expected a list of extents, found {shapeValue}.");
        var shape = new long[shapeValue.Items.Count];
        long elements = 1;
        for (int d = 0; d < shape.Length; d++)
        {
            var extent = shapeValue.Items[d];
            if (extent.Integer is not long value || value < 0)
                throw new ModelLoadException(path, $"{label} shape", extent.Offset, $"extent {d} is {extent}, not a non-negative integer.");
            if (value != 0 && elements > long.MaxValue / value)
                throw new ModelLoadException(path, $"{label} shape", extent.Offset, "the element count overflows 64 bits.");
            shape[d] = value;
            elements *= value;
        }
        if (elements > long.MaxValue / elementBytes)
            throw new ModelLoadException(path, $"{label} shape", shapeValue.Offset, "the byte size overflows 64 bits.");
        long byteLength = elements * elementBytes;

        var offsets = Field("data_offsets");
        if (offsets.Kind != JsonValueKind.Array || offsets.Items.Count != 2
            || offsets.Items[0].Integer is not long begin || offsets.Items[1].Integer is not long end || begin < 0 || end < begin)
            throw new ModelLoadException(path, $"{label} data_offsets", offsets.Offset, $"expected [begin, end] with 0 ≤ begin ≤ end, found {Describe(offsets)}.");
        if (end - begin != byteLength)
            throw new ModelLoadException(path, $"{label} data_offsets", offsets.Offset,
                $"shape [{string.Join(", ", shape)}] of {dtypeValue.Text} ({elementBytes} bytes each) is {byteLength} bytes, but data_offsets [{begin}, {end}] span {end - begin}.");
        if (end > dataLength)
            throw new ModelLoadException(path, $"{label} data_offsets", offsets.Offset,
                $"bytes [{begin}, {end}) run past the end of the {dataLength}-byte data section (the file is {dataStart + dataLength} bytes).");

        var dimensions = new long[shape.Length]; // GGML order: the innermost extent first
        for (int d = 0; d < shape.Length; d++) dimensions[d] = shape[shape.Length - 1 - d];
        return new Entry(name, dtypeValue.Text, type, dimensions, dataStart + begin, byteLength, nameOffset, dtypeValue.Offset, offsets.Offset);
    }

    private static string Describe(LocatedJson value) =>
        value.Kind == JsonValueKind.Array ? "[" + string.Join(", ", value.Items.Select(i => i.ToString())) + "]" : value.ToString();
}
