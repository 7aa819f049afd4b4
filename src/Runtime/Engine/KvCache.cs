namespace Kiln;

/// <summary>
/// A contiguous key/value cache: for each layer and sequence slot, <see cref="MaxContext"/> rows of
/// <see cref="KvDim"/> floats. Layout [layer][slot][position][kvDim], keys and values in separate arrays.
/// </summary>
public sealed class KvCache
{
    private readonly float[] _keys;
    private readonly float[] _values;

    public KvCache(int layers, int slots, int maxContext, int kvDim)
    {
        if (layers <= 0 || slots <= 0 || maxContext <= 0 || kvDim <= 0)
            throw new ArgumentOutOfRangeException(nameof(layers), $"KV cache dimensions must be positive: layers {layers}, slots {slots}, context {maxContext}, kvDim {kvDim}.");
        long length = (long)layers * slots * maxContext * kvDim;
        if (length > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(maxContext), $"A KV cache of {layers}×{slots}×{maxContext}×{kvDim} floats exceeds one array; lower the context or slot count.");
        Layers = layers;
        Slots = slots;
        MaxContext = maxContext;
        KvDim = kvDim;
        _keys = new float[length];
        _values = new float[length];
    }

    public int Layers { get; }

    public int Slots { get; }

    public int MaxContext { get; }

    public int KvDim { get; }

    public Span<float> Key(int layer, int slot, int position) => _keys.AsSpan(Offset(layer, slot, position), KvDim);

    public Span<float> Value(int layer, int slot, int position) => _values.AsSpan(Offset(layer, slot, position), KvDim);

    /// <summary>All positions of one slot in one layer: [MaxContext, KvDim].</summary>
    public Span<float> Keys(int layer, int slot) => _keys.AsSpan(Offset(layer, slot, 0), MaxContext * KvDim);

    /// <summary>All positions of one slot in one layer: [MaxContext, KvDim].</summary>
    public Span<float> Values(int layer, int slot) => _values.AsSpan(Offset(layer, slot, 0), MaxContext * KvDim);

    private int Offset(int layer, int slot, int position)
    {
        if ((uint)layer >= (uint)Layers || (uint)slot >= (uint)Slots || (uint)position >= (uint)MaxContext)
            throw new ArgumentOutOfRangeException(nameof(position), $"KV cache has {Layers} layers, {Slots} slots and {MaxContext} positions; asked for layer {layer}, slot {slot}, position {position}.");
        return ((layer * Slots + slot) * MaxContext + position) * KvDim;
    }
}
