namespace Kiln.Loading;

/// <summary>A metadata entry's value (GGUF value types; arrays hold their elements).</summary>
public sealed class MetadataValue
{
    public MetadataValue(object value) => Value = value;

    /// <summary>The boxed value: an integer type, float, double, bool, string, or an array of one of them.</summary>
    public object Value { get; }

    /// <summary>
    /// Where the value starts in the file it was read from, so that a problem found in it later (a tokenizer's
    /// vocabulary, a chat template) names the byte; null for a value Kiln derived rather than read.
    /// </summary>
    public long? Offset { get; init; }

    public bool TryGetInt64(out long value)
    {
        switch (Value)
        {
            case byte v: value = v; return true;
            case sbyte v: value = v; return true;
            case ushort v: value = v; return true;
            case short v: value = v; return true;
            case uint v: value = v; return true;
            case int v: value = v; return true;
            case ulong v when v <= long.MaxValue: value = (long)v; return true;
            case long v: value = v; return true;
            default: value = 0; return false;
        }
    }

    public bool TryGetDouble(out double value)
    {
        switch (Value)
        {
            case float v: value = v; return true;
            case double v: value = v; return true;
            default:
                bool ok = TryGetInt64(out long integer);
                value = integer;
                return ok;
        }
    }

    public bool TryGetString(out string value)
    {
        value = Value as string ?? "";
        return Value is string;
    }

    public override string ToString() => Value is Array array ? $"[{array.Length} × {array.GetType().GetElementType()!.Name}]" : Value.ToString() ?? "";
}
