using System.Runtime.InteropServices;
using Kiln.Loading;

namespace Kiln.Testing;

/// <summary>
/// An F32 model file in memory, for tests that bind a definition to seeded weights without writing a file:
/// metadata by key, tensors by name with the shape the definition declares (outer dimension first).
/// </summary>
public sealed class MemoryModelFile : ModelFile
{
    private readonly Dictionary<string, TensorInfo> _tensors = new();
    private readonly Dictionary<string, float[]> _data = new();
    private readonly Dictionary<string, MetadataValue> _metadata = new();
    private readonly Random _random;

    public MemoryModelFile(string architecture, int seed) : base("memory://" + architecture)
    {
        Architecture = architecture;
        Seed = seed;
        _random = new Random(seed);
    }

    public int Seed { get; }

    public override string Architecture { get; }

    public override IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;

    public override IReadOnlyDictionary<string, MetadataValue> Metadata => _metadata;

    public override ReadOnlySpan<byte> GetTensorBytes(TensorInfo tensor) => MemoryMarshal.AsBytes(_data[tensor.Name].AsSpan());

    public MemoryModelFile Int(string key, int value)
    {
        _metadata[key] = new MetadataValue((uint)value);
        return this;
    }

    /// <summary>An array of integers (a GGUF INT32 array): one value per layer, as llama.cpp's jamba writes head_count_kv.</summary>
    public MemoryModelFile Ints(string key, params int[] values)
    {
        _metadata[key] = new MetadataValue(values);
        return this;
    }

    public MemoryModelFile Float(string key, double value)
    {
        _metadata[key] = new MetadataValue((float)value);
        return this;
    }

    public MemoryModelFile Text(string key, string value)
    {
        _metadata[key] = new MetadataValue(value);
        return this;
    }

    /// <summary>A matrix of uniform values in ±<paramref name="scale"/>.</summary>
    public MemoryModelFile Random(string name, int rows, int cols, float scale = 0.3f) =>
        Add(name, new[] { rows, cols }, () => (float)(_random.NextDouble() * 2 - 1) * scale);

    /// <summary>A vector of uniform values in ±<paramref name="scale"/> (a bias).</summary>
    public MemoryModelFile Vector(string name, int length, float scale = 0.2f) =>
        Add(name, new[] { length }, () => (float)(_random.NextDouble() * 2 - 1) * scale);

    /// <summary>A tensor of <paramref name="shape"/> (rows first) of uniform values in [<paramref name="low"/>, <paramref name="high"/>).</summary>
    public MemoryModelFile Uniform(string name, int[] shape, float low, float high) =>
        Add(name, shape, () => low + (float)_random.NextDouble() * (high - low));

    /// <summary>A norm weight around 1.</summary>
    public MemoryModelFile Norm(string name, int length) => Add(name, new[] { length }, () => 0.5f + (float)_random.NextDouble());

    public MemoryModelFile Remove(string name)
    {
        _tensors.Remove(name);
        _data.Remove(name);
        return this;
    }

    private MemoryModelFile Add(string name, int[] shape, Func<float> next)
    {
        int count = shape.Aggregate(1, (a, b) => a * b);
        var data = new float[count];
        for (int i = 0; i < count; i++) data[i] = next();
        _data[name] = data;
        _tensors[name] = new TensorInfo(name, GgmlType.F32, shape.Reverse().Select(d => (long)d).ToArray(), 0, count * 4L);
        return this;
    }
}
