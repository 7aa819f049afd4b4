using System.Globalization;
using System.Text.Json;

namespace Kiln.Server.Protocol;

/// <summary>
/// The fields of one JSON object of a request, read with the checks the API makes: a wrong type or a value out of
/// range is a 400 naming the field. A field that is absent or JSON null reads as not given, as OpenAI treats it.
/// </summary>
internal readonly struct JsonFields
{
    private readonly JsonElement _object;
    private readonly string _prefix; // "" at the top level, "stream_options." inside an object

    public JsonFields(JsonElement element, string? path = null)
    {
        if (element.ValueKind != JsonValueKind.Object)
            throw OpenAiException.BadRequest(path is null ? "The request body must be a JSON object." : $"'{path}' must be a JSON object.", path);
        _object = element;
        _prefix = path is null ? "" : path + ".";
    }

    /// <summary>The parameter name an error about <paramref name="name"/> reports.</summary>
    public string Param(string name) => _prefix + name;

    public bool TryGet(string name, out JsonElement value)
    {
        if (_object.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null) return true;
        value = default;
        return false;
    }

    public string? String(string name)
    {
        if (!TryGet(name, out var value)) return null;
        return value.ValueKind == JsonValueKind.String ? value.GetString() : throw Wrong(name, "a string", value);
    }

    public bool? Bool(string name)
    {
        if (!TryGet(name, out var value)) return null;
        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Wrong(name, "true or false", value),
        };
    }

    /// <summary>An integer from <paramref name="min"/> to <paramref name="max"/>.</summary>
    public long? Integer(string name, long min = long.MinValue, long max = long.MaxValue)
    {
        if (!TryGet(name, out var value)) return null;
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out long number)) throw Wrong(name, "an integer", value);
        if (number < min || number > max) throw OutOfRange(name, number.ToString(CultureInfo.InvariantCulture), Range(min, max));
        return number;
    }

    /// <summary>A finite number from <paramref name="min"/> to <paramref name="max"/> (above <paramref name="min"/> when it is exclusive).</summary>
    public double? Number(string name, double min, double max, bool minExclusive = false)
    {
        if (!TryGet(name, out var value)) return null;
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetDouble(out double number) || !double.IsFinite(number))
            throw Wrong(name, "a number", value);
        if (number < min || number > max || minExclusive && number == min)
        {
            string range = double.IsPositiveInfinity(max)
                ? $"{(minExclusive ? "above" : "at least")} {Format(min)}"
                : $"{(minExclusive ? "above " + Format(min) + " and at most" : "from " + Format(min) + " to")} {Format(max)}";
            throw OutOfRange(name, Format(number), range);
        }
        return number;
    }

    public OpenAiException Wrong(string name, string expected, JsonElement value) =>
        OpenAiException.BadRequest($"'{Param(name)}' must be {expected}; got {Describe(value)}.", Param(name));

    private OpenAiException OutOfRange(string name, string value, string range) =>
        OpenAiException.BadRequest($"'{Param(name)}' must be {range}; got {value}.", Param(name));

    private static string Range(long min, long max) =>
        max == long.MaxValue ? $"at least {min}" : $"from {min} to {max}";

    private static string Format(double value) => value.ToString("0.###", CultureInfo.InvariantCulture);

    /// <summary>A short account of a JSON value for an error message: its kind, and a number's or short string's text.</summary>
    public static string Describe(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => value.GetString()!.Length <= 40 ? $"\"{JsonEncodedText.Encode(value.GetString()!)}\"" : "a string",
        JsonValueKind.Number => value.GetRawText(),
        JsonValueKind.True or JsonValueKind.False => value.GetRawText(),
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        _ => "null",
    };
}
