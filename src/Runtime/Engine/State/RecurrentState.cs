namespace Kiln;

/// <summary>How a recurrent state tensor is stored between steps (kernels compute in float32 either way).</summary>
public enum StateStorage
{
    F32,

    /// <summary>Half the memory; the state is rounded to float16 at the end of every step that carries it on.</summary>
    F16,
}

/// <summary>
/// One per-sequence state tensor of a recurrent layer: <paramref name="Name"/> (what the op that reads it calls it,
/// e.g. "lstm.h"), the layer it belongs to, its shape, and how it is stored.
/// </summary>
public readonly record struct StateTensorShape(string Name, int Layer, int Rows, int Cols, StateStorage Storage = StateStorage.F32)
{
    /// <summary>Elements per sequence.</summary>
    public int Length => Rows * Cols;

    /// <summary>Bytes per sequence.</summary>
    public int Bytes => Length * (Storage == StateStorage.F16 ? 2 : sizeof(float));
}

/// <summary>
/// What a model keeps per sequence besides (or instead of) a KV cache: fixed-size state tensors that recurrent layers
/// (LSTM, GRU, SSM) read at the start of a sequence's chunk and write back at its end. Unlike KV rows it does not
/// grow with the sequence, so a sequence needs exactly one slot from the first token to the last.
/// </summary>
public sealed class RecurrentStateShape
{
    private readonly StateTensorShape[] _tensors;

    public RecurrentStateShape(IReadOnlyList<StateTensorShape> tensors)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        _tensors = new StateTensorShape[tensors.Count];
        for (int i = 0; i < tensors.Count; i++)
        {
            var tensor = tensors[i];
            if (string.IsNullOrEmpty(tensor.Name)) throw new ArgumentException($"State tensor {i} has no name.", nameof(tensors));
            if (tensor.Layer < 0 || tensor.Rows <= 0 || tensor.Cols <= 0)
                throw new ArgumentOutOfRangeException(nameof(tensors), $"State tensor '{tensor.Name}' of layer {tensor.Layer} must have a layer ≥ 0 and a positive shape, not [{tensor.Rows}, {tensor.Cols}].");
            if (!Enum.IsDefined(tensor.Storage)) throw new ArgumentOutOfRangeException(nameof(tensors), tensor.Storage, $"State tensor '{tensor.Name}': unknown storage.");
            for (int j = 0; j < i; j++)
            {
                if (_tensors[j].Layer == tensor.Layer && _tensors[j].Name == tensor.Name)
                    throw new ArgumentException($"Layer {tensor.Layer} declares state tensor '{tensor.Name}' twice.", nameof(tensors));
            }
            _tensors[i] = tensor;
        }
    }

    /// <summary>No recurrent state: a model with attention layers only.</summary>
    public static RecurrentStateShape None { get; } = new([]);

    public ReadOnlySpan<StateTensorShape> Tensors => _tensors;

    public bool IsEmpty => _tensors.Length == 0;

    /// <summary>Bytes one sequence's state takes, all layers.</summary>
    public long BytesPerSlot
    {
        get
        {
            long bytes = 0;
            foreach (var tensor in _tensors) bytes += tensor.Bytes;
            return bytes;
        }
    }

    /// <summary>The index of layer <paramref name="layer"/>'s tensor <paramref name="name"/>, or -1.</summary>
    public int IndexOf(int layer, string name)
    {
        for (int i = 0; i < _tensors.Length; i++)
        {
            if (_tensors[i].Layer == layer && _tensors[i].Name == name) return i;
        }
        return -1;
    }

    /// <summary>Storage for <paramref name="slots"/> sequences' states.</summary>
    public RecurrentStateCache CreateCache(int slots) => new(this, slots);

    public override string ToString() => _tensors.Length == 0 ? "no recurrent state" : $"{_tensors.Length} state tensors, {BytesPerSlot} bytes per sequence";
}

/// <summary>
/// The state of <see cref="Slots"/> sequences, one slot each (the engine's <see cref="Engine.State.StateSlotPool"/>
/// hands slots out). A recurrent op starts a sequence whose chunk begins at position 0 from zeros, whatever its slot
/// held, and otherwise from the slot; it writes the state after the chunk's last token back. So a slot needs no
/// clearing when it passes to a new sequence, and recomputing a sequence from its first token is always exact.
/// </summary>
public sealed class RecurrentStateCache
{
    private readonly float[]?[] _floats;
    private readonly Half[]?[] _halves;

    internal RecurrentStateCache(RecurrentStateShape shape, int slots)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(slots);
        KvCache.EnsureMemory((double)shape.BytesPerSlot * slots, $"Recurrent state for {slots} sequences ({shape})", "fewer running requests");
        Shape = shape;
        Slots = slots;
        var tensors = shape.Tensors;
        _floats = new float[tensors.Length][];
        _halves = new Half[tensors.Length][];
        for (int i = 0; i < tensors.Length; i++)
        {
            long length = (long)tensors[i].Length * slots;
            if (length > Array.MaxLength)
                throw new ArgumentOutOfRangeException(nameof(slots), $"State tensor '{tensors[i].Name}' of {slots} sequences exceeds one array; use fewer running requests.");
            if (tensors[i].Storage == StateStorage.F16) _halves[i] = new Half[length];
            else _floats[i] = new float[length];
        }
    }

    public RecurrentStateShape Shape { get; }

    public int Slots { get; }

    /// <summary>The index of layer <paramref name="layer"/>'s tensor <paramref name="name"/>; throws, naming both, when the model declared none.</summary>
    public int Require(int layer, string name)
    {
        int index = Shape.IndexOf(layer, name);
        if (index < 0)
            throw new InvalidOperationException($"The recurrent state has no tensor '{name}' for layer {layer} ({Shape}); create it from the model's StateShape.");
        return index;
    }

    /// <summary>Copies slot <paramref name="slot"/> of tensor <paramref name="tensor"/> into <paramref name="destination"/> as float32.</summary>
    public void Read(int tensor, int slot, Span<float> destination)
    {
        int length = Length(tensor, slot, destination.Length);
        if (_floats[tensor] is { } floats) floats.AsSpan(slot * length, length).CopyTo(destination);
        else
        {
            var halves = _halves[tensor].AsSpan(slot * length, length);
            for (int i = 0; i < length; i++) destination[i] = (float)halves[i];
        }
    }

    /// <summary>Stores <paramref name="source"/> as slot <paramref name="slot"/> of tensor <paramref name="tensor"/>, in its storage.</summary>
    public void Write(int tensor, int slot, ReadOnlySpan<float> source)
    {
        int length = Length(tensor, slot, source.Length);
        if (_floats[tensor] is { } floats) source.CopyTo(floats.AsSpan(slot * length, length));
        else
        {
            var halves = _halves[tensor].AsSpan(slot * length, length);
            for (int i = 0; i < length; i++) halves[i] = (Half)source[i];
        }
    }

    /// <summary>
    /// Copies values [<paramref name="offset"/>, offset + destination.Length) of slot <paramref name="slot"/> of
    /// tensor <paramref name="tensor"/> into <paramref name="destination"/> as float32: a kernel's share of the
    /// state (a block of channels), so work items over one sequence need not copy the whole slot.
    /// </summary>
    public void ReadRange(int tensor, int slot, int offset, Span<float> destination)
    {
        int length = Length(tensor, slot, offset, destination.Length);
        if (_floats[tensor] is { } floats) floats.AsSpan(slot * length + offset, destination.Length).CopyTo(destination);
        else
        {
            var halves = _halves[tensor].AsSpan(slot * length + offset, destination.Length);
            for (int i = 0; i < halves.Length; i++) destination[i] = (float)halves[i];
        }
    }

    /// <summary>Stores <paramref name="source"/> as values [<paramref name="offset"/>, offset + source.Length) of slot <paramref name="slot"/> of tensor <paramref name="tensor"/>.</summary>
    public void WriteRange(int tensor, int slot, int offset, ReadOnlySpan<float> source)
    {
        int length = Length(tensor, slot, offset, source.Length);
        if (_floats[tensor] is { } floats) source.CopyTo(floats.AsSpan(slot * length + offset, source.Length));
        else
        {
            var halves = _halves[tensor].AsSpan(slot * length + offset, source.Length);
            for (int i = 0; i < halves.Length; i++) halves[i] = (Half)source[i];
        }
    }

    /// <summary>Gives slot <paramref name="destination"/> the state of slot <paramref name="source"/>, every tensor (a forked sequence continues from its parent's state).</summary>
    public void CopySlot(int source, int destination)
    {
        if ((uint)source >= (uint)Slots || (uint)destination >= (uint)Slots)
            throw new ArgumentOutOfRangeException(nameof(source), $"Slots {source} and {destination} must lie in 0..{Slots - 1}.");
        var tensors = Shape.Tensors;
        for (int i = 0; i < tensors.Length; i++)
        {
            int length = tensors[i].Length;
            if (_floats[i] is { } floats) floats.AsSpan(source * length, length).CopyTo(floats.AsSpan(destination * length, length));
            else _halves[i].AsSpan(source * length, length).CopyTo(_halves[i].AsSpan(destination * length, length));
        }
    }

    private int Length(int tensor, int slot, int offset, int count)
    {
        if ((uint)tensor >= (uint)_floats.Length) throw new ArgumentOutOfRangeException(nameof(tensor), $"State tensor {tensor} is outside the {_floats.Length} declared.");
        int length = Length(tensor, slot, Shape.Tensors[tensor].Length);
        if (offset < 0 || count < 0 || offset + count > length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Values [{offset}, {offset + count}) are outside state tensor '{Shape.Tensors[tensor].Name}', which holds {length} per sequence.");
        return length;
    }

    private int Length(int tensor, int slot, int given)
    {
        if ((uint)tensor >= (uint)_floats.Length) throw new ArgumentOutOfRangeException(nameof(tensor), $"State tensor {tensor} is outside the {_floats.Length} declared.");
        if ((uint)slot >= (uint)Slots) throw new ArgumentOutOfRangeException(nameof(slot), $"State slot {slot} is outside the {Slots} slots.");
        int length = Shape.Tensors[tensor].Length;
        if (given != length) throw new ArgumentException($"State tensor '{Shape.Tensors[tensor].Name}' holds {length} values per sequence; the span has {given}.");
        return length;
    }
}
