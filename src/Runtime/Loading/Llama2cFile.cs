using System.Buffers.Binary;
using System.Text;

namespace Kiln.Loading;

/// <summary>
/// A llama2.c legacy checkpoint (the headerless-version fp32 .bin: seven int32 hyperparameters, then every weight
/// in a fixed order), memory-mapped and presented exactly like a GGUF llama: GGUF tensor names with GGML dimension
/// order, <c>llama.*</c> hyperparameter keys and, when its llama2.c tokenizer.bin is found, <c>tokenizer.ggml.*</c>
/// keys. The file's length must match what the header describes, byte for byte.
/// </summary>
public sealed class Llama2cFile : ModelFile
{
    /// <summary>Bytes of the header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len.</summary>
    public const int HeaderBytes = 7 * sizeof(int);

    // Later llama2.c export versions start with this magic ("ak42") and a version number instead.
    private const uint VersionedExportMagic = 0x616B3432;

    private readonly MappedFile _file;
    private readonly Dictionary<string, TensorInfo> _tensors = new(StringComparer.Ordinal);
    private readonly Dictionary<string, MetadataValue> _metadata = new(StringComparer.Ordinal);

    /// <summary>
    /// Opens <paramref name="path"/>. The tokenizer is <paramref name="tokenizerPath"/> when given (it must exist),
    /// otherwise "tokenizer.bin" or "tok{vocab_size}.bin" beside the model; without one the model still loads, with
    /// no tokenizer keys.
    /// </summary>
    public Llama2cFile(string path, string? tokenizerPath = null) : base(path)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("llama2.c reading assumes a little-endian machine.");
        _file = MappedFile.Open(path);
        try
        {
            Config = ReadHeader();
            MapTensors();
            AddHyperparameters();
            TokenizerPath = tokenizerPath ?? FindTokenizerBeside(path, Config.VocabSize);
            if (TokenizerPath is not null) ReadTokenizer(TokenizerPath, Config.VocabSize);
        }
        catch
        {
            _file.Dispose();
            throw;
        }
    }

    /// <summary>The checkpoint's hyperparameters.</summary>
    public Llama2cConfig Config { get; }

    /// <summary>The tokenizer file read, or null when none was found.</summary>
    public string? TokenizerPath { get; }

    public override string Architecture => "llama";

    public override IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;

    public override IReadOnlyDictionary<string, MetadataValue> Metadata => _metadata;

    public override ReadOnlySpan<byte> GetTensorBytes(TensorInfo tensor) => _file.TensorBytes(Path, tensor);

    internal override MappedFile? MappingOf(TensorInfo tensor) => _file;

    public override void Dispose()
    {
        _file.Dispose();
        base.Dispose();
    }

    private Llama2cConfig ReadHeader()
    {
        if (_file.Length < HeaderBytes)
            throw new ModelLoadException(Path, "header", 0, $"the file is {_file.Length} bytes; a llama2.c header alone needs {HeaderBytes} (truncated, or not a model file).");
        var header = _file.Slice(0, HeaderBytes);
        if (BinaryPrimitives.ReadUInt32LittleEndian(header) == VersionedExportMagic)
            throw new ModelLoadException(Path, "header", 0,
                $"this is a versioned llama2.c export (version {BinaryPrimitives.ReadInt32LittleEndian(header[4..])}); only the legacy format (export version 0) is supported.");

        var values = new int[HeaderBytes / sizeof(int)];
        for (int i = 0; i < values.Length; i++) values[i] = BinaryPrimitives.ReadInt32LittleEndian(header[(i * 4)..]);

        int Field(int index, string name)
        {
            int value = values[index];
            if (value < 1)
                throw new ModelLoadException(Path, $"header {name}", index * 4, $"{value} is not a valid {name} (must be positive).");
            return value;
        }

        int dim = Field(0, "dim");
        int hidden = Field(1, "hidden_dim");
        int layers = Field(2, "n_layers");
        int heads = Field(3, "n_heads");
        int kvHeads = Field(4, "n_kv_heads");
        int signedVocab = values[5]; // negative: a separate classifier (wcls) follows the rest
        int seqLen = Field(6, "seq_len");

        if (signedVocab is 0 or int.MinValue)
            throw new ModelLoadException(Path, "header vocab_size", 20, $"{signedVocab} is not a valid vocab_size.");
        if (dim % heads != 0 || dim / heads % 2 != 0)
            throw new ModelLoadException(Path, "header n_heads", 12, $"dim {dim} does not split into {heads} heads of an even size.");
        if (kvHeads > heads || heads % kvHeads != 0)
            throw new ModelLoadException(Path, "header n_kv_heads", 16, $"{heads} query heads cannot share {kvHeads} key/value heads evenly.");

        return new Llama2cConfig(dim, hidden, layers, heads, kvHeads, Math.Abs(signedVocab), seqLen, SharedClassifier: signedVocab > 0);
    }

    /// <summary>
    /// One fp32 array of the checkpoint, in file order. A per-layer array (<see cref="PerLayer"/>) is stored once
    /// per layer, back to back, as blk.N.<see cref="TensorName"/>; a null tensor name is an array Kiln skips.
    /// </summary>
    private readonly record struct Section(string Source, string? TensorName, long[] Dimensions, bool PerLayer = false)
    {
        // 128-bit: a lying header cannot overflow it.
        public Int128 BytesEach
        {
            get
            {
                Int128 bytes = sizeof(float);
                foreach (long extent in Dimensions) bytes *= extent;
                return bytes;
            }
        }

        public string? NameAt(int layer) => PerLayer ? $"blk.{layer}.{TensorName}" : TensorName;

        public string FieldAt(int layer)
        {
            string source = PerLayer ? $"{Source} layer {layer}" : Source;
            return TensorName is null ? source : $"tensor '{NameAt(layer)}' ({source})";
        }
    }

    /// <summary>The checkpoint's arrays in file order, with GGUF names and GGML dimension order (ne[0] = row length).</summary>
    private static Section[] Layout(Llama2cConfig c) =>
    [
        new("token_embedding_table", "token_embd.weight", [c.Dim, c.VocabSize]),
        new("rms_att_weight", "attn_norm.weight", [c.Dim], PerLayer: true),
        new("wq", "attn_q.weight", [c.Dim, c.Dim], PerLayer: true),
        new("wk", "attn_k.weight", [c.Dim, c.KvDim], PerLayer: true),
        new("wv", "attn_v.weight", [c.Dim, c.KvDim], PerLayer: true),
        new("wo", "attn_output.weight", [c.Dim, c.Dim], PerLayer: true),
        new("rms_ffn_weight", "ffn_norm.weight", [c.Dim], PerLayer: true),
        new("w1", "ffn_gate.weight", [c.Dim, c.HiddenDim], PerLayer: true),
        new("w2", "ffn_down.weight", [c.HiddenDim, c.Dim], PerLayer: true),
        new("w3", "ffn_up.weight", [c.Dim, c.HiddenDim], PerLayer: true),
        new("rms_final_weight", "output_norm.weight", [c.Dim]),
        // Precomputed RoPE tables from early llama2.c; the runtime computes its own.
        new("freq_cis_real", null, [c.HeadSize / 2, c.SeqLen]),
        new("freq_cis_imag", null, [c.HeadSize / 2, c.SeqLen]),
        .. c.SharedClassifier ? (Section[])[] : [new("wcls", "output.weight", [c.Dim, c.VocabSize])],
    ];

    private void MapTensors()
    {
        var sections = Layout(Config);
        int layers = Config.Layers;
        long fileLength = _file.Length;

        Int128 expectedLength = HeaderBytes;
        foreach (var section in sections) expectedLength += section.BytesEach * (section.PerLayer ? layers : 1);
        if (expectedLength != fileLength) throw LengthMismatch(sections, expectedLength);

        long offset = HeaderBytes;
        foreach (var section in sections)
        {
            long bytes = (long)section.BytesEach;
            for (int layer = 0; layer < (section.PerLayer ? layers : 1); layer++)
            {
                if (section.NameAt(layer) is string name)
                    _tensors.Add(name, new TensorInfo(name, GgmlType.F32, section.Dimensions, offset, bytes));
                offset += bytes;
            }
        }
    }

    /// <summary>Names the first array the file is too short for, or the bytes left over after the last one.</summary>
    private ModelLoadException LengthMismatch(Section[] sections, Int128 expectedLength)
    {
        long fileLength = _file.Length;
        string header = $"the header ({Config}) describes a {expectedLength}-byte file, this one is {fileLength}";
        Int128 offset = HeaderBytes;
        foreach (var section in sections)
        {
            int copies = section.PerLayer ? Config.Layers : 1;
            Int128 each = section.BytesEach;
            if (offset + each * copies > fileLength)
            {
                int first = (int)((fileLength - offset) / each); // the first copy that does not fit
                long at = (long)(offset + each * first);
                return new ModelLoadException(Path, section.FieldAt(first), at,
                    $"needs {each} bytes but the file ends {fileLength - at} bytes later: {header}.");
            }
            offset += each * copies;
        }
        return new ModelLoadException(Path, "file length", (long)offset, $"{fileLength - offset} bytes follow the last weight: {header}.");
    }

    private void AddHyperparameters()
    {
        var c = Config;
        _metadata.Add("general.architecture", new MetadataValue("llama"));
        _metadata.Add("general.name", new MetadataValue(System.IO.Path.GetFileNameWithoutExtension(Path)));
        _metadata.Add("general.file_type", new MetadataValue(0u)); // all float32
        _metadata.Add("llama.context_length", new MetadataValue((uint)c.SeqLen));
        _metadata.Add("llama.embedding_length", new MetadataValue((uint)c.Dim));
        _metadata.Add("llama.feed_forward_length", new MetadataValue((uint)c.HiddenDim));
        _metadata.Add("llama.block_count", new MetadataValue((uint)c.Layers));
        _metadata.Add("llama.attention.head_count", new MetadataValue((uint)c.Heads));
        _metadata.Add("llama.attention.head_count_kv", new MetadataValue((uint)c.KvHeads));
        _metadata.Add("llama.rope.dimension_count", new MetadataValue((uint)c.HeadSize));
        _metadata.Add("llama.attention.layer_norm_rms_epsilon", new MetadataValue(1e-5f));
        _metadata.Add("llama.rope.freq_base", new MetadataValue(10000f));
        _metadata.Add("llama.vocab_size", new MetadataValue((uint)c.VocabSize));
    }

    private static string? FindTokenizerBeside(string modelPath, int vocabSize)
    {
        string directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(modelPath)) ?? ".";
        foreach (string name in (ReadOnlySpan<string>)["tokenizer.bin", $"tok{vocabSize}.bin"])
        {
            string candidate = System.IO.Path.Combine(directory, name);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }

    /// <summary>
    /// Reads a llama2.c tokenizer.bin (int32 max_token_length, then per token: float32 score, int32 byte length,
    /// UTF-8 bytes) into GGUF's tokenizer keys. llama2.c's exporter wrote SentencePiece's '▁' as a space and
    /// wrapped BOS/EOS in newlines; both are undone so the vocabulary reads as in a GGUF conversion.
    /// </summary>
    private void ReadTokenizer(string tokenizerPath, int vocabSize)
    {
        byte[] bytes;
        using (var stream = MappedFile.OpenRead(tokenizerPath))
        {
            // Each token takes at least 8 bytes, so a file this long cannot be a sane tokenizer for any vocab.
            if (stream.Length > Math.Min(Array.MaxLength, 4 + (long)vocabSize * (8 + 1024)))
                throw new ModelLoadException(tokenizerPath, "tokenizer file", null, $"{stream.Length} bytes is far too long for {vocabSize} tokens.");
            bytes = new byte[stream.Length];
            stream.ReadExactly(bytes);
        }

        int position = 0;
        int ReadInt32(string field)
        {
            if (bytes.Length - position < 4)
                throw new ModelLoadException(tokenizerPath, field, position, $"needs 4 bytes but only {bytes.Length - position} remain; the tokenizer file is truncated.");
            int value = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(position));
            position += 4;
            return value;
        }

        int maxTokenLength = ReadInt32("tokenizer max_token_length");
        if (maxTokenLength < 0)
            throw new ModelLoadException(tokenizerPath, "tokenizer max_token_length", 0, $"{maxTokenLength} is negative.");

        var tokens = new string[vocabSize];
        var scores = new float[vocabSize];
        var types = new int[vocabSize];
        for (int id = 0; id < vocabSize; id++)
        {
            scores[id] = BitConverter.Int32BitsToSingle(ReadInt32($"tokenizer token #{id} score"));
            int lengthAt = position;
            int length = ReadInt32($"tokenizer token #{id} length");
            if (length < 0 || length > bytes.Length - position)
                throw new ModelLoadException(tokenizerPath, $"tokenizer token #{id} length", lengthAt,
                    $"length {length} does not fit in the {bytes.Length - position} bytes left (is the tokenizer for a {vocabSize}-token vocabulary?).");
            string text = Encoding.UTF8.GetString(bytes, position, length);
            position += length;

            if (id is 1 or 2) text = text.Trim('\n');
            tokens[id] = text.Replace(' ', '\u2581');
            types[id] = id switch
            {
                0 => TokenType.Unknown,
                1 or 2 => TokenType.Control,
                _ => IsByteToken(text) ? TokenType.Byte : TokenType.Normal,
            };
        }
        if (position != bytes.Length)
            throw new ModelLoadException(tokenizerPath, "tokenizer file length", position,
                $"{bytes.Length - position} bytes follow token #{vocabSize - 1}; the tokenizer does not match the model's {vocabSize}-token vocabulary.");

        _metadata.Add("tokenizer.ggml.model", new MetadataValue("llama"));
        _metadata.Add("tokenizer.ggml.tokens", new MetadataValue(tokens));
        _metadata.Add("tokenizer.ggml.scores", new MetadataValue(scores));
        _metadata.Add("tokenizer.ggml.token_type", new MetadataValue(types));
        _metadata.Add("tokenizer.ggml.bos_token_id", new MetadataValue(1u));
        _metadata.Add("tokenizer.ggml.eos_token_id", new MetadataValue(2u));
        _metadata.Add("tokenizer.ggml.unknown_token_id", new MetadataValue(0u));
        // llama2.c's generate prepends BOS and never appends EOS.
        _metadata.Add("tokenizer.ggml.add_bos_token", new MetadataValue(true));
        _metadata.Add("tokenizer.ggml.add_eos_token", new MetadataValue(false));
    }

    // SentencePiece byte-fallback pieces: "<0x00>" .. "<0xFF>".
    private static bool IsByteToken(string text) =>
        text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) && text[5] == '>' &&
        char.IsAsciiHexDigit(text[3]) && char.IsAsciiHexDigit(text[4]);

    // GGUF's tokenizer.ggml.token_type values.
    private static class TokenType
    {
        public const int Normal = 1, Unknown = 2, Control = 3, Byte = 6;
    }
}

/// <summary>A llama2.c checkpoint's header (vocab size made positive; <see cref="SharedClassifier"/> from its sign).</summary>
public sealed record Llama2cConfig(int Dim, int HiddenDim, int Layers, int Heads, int KvHeads, int VocabSize, int SeqLen, bool SharedClassifier)
{
    public int HeadSize => Dim / Heads;

    public int KvDim => HeadSize * KvHeads;
}
