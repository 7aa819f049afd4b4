using System.Text.Json;

namespace Kiln.Loading;

/// <summary>
/// A JSON value with the byte offset in its file where it starts, read strictly (RFC 8259: no comments, no trailing
/// commas, one value; and no key twice in an object), so that every problem found in a safetensors header, a
/// config.json or a shard index names where it is. Values are small (headers and configs); the tree is plain data.
/// </summary>
internal sealed class LocatedJson
{
    private LocatedJson(JsonValueKind kind, long offset)
    {
        Kind = kind;
        Offset = offset;
    }

    public JsonValueKind Kind { get; }

    /// <summary>Absolute byte offset of the value's first byte in its file.</summary>
    public long Offset { get; }

    /// <summary>A string's text.</summary>
    public string Text { get; private init; } = "";

    /// <summary>A number that is an integer in the int64 range, written without a fraction or exponent.</summary>
    public long? Integer { get; private init; }

    /// <summary>A number's value.</summary>
    public double Number { get; private init; }

    /// <summary>An object's members, in file order (names are unique).</summary>
    public IReadOnlyList<Member> Members { get; private init; } = [];

    /// <summary>An array's elements.</summary>
    public IReadOnlyList<LocatedJson> Items { get; private init; } = [];

    /// <summary>An object member: its name, where the name starts, its value.</summary>
    public readonly record struct Member(string Name, long NameOffset, LocatedJson Value);

    /// <summary>The member named <paramref name="name"/> of an object, or null.</summary>
    public LocatedJson? this[string name]
    {
        get
        {
            foreach (var member in Members)
                if (member.Name == name) return member.Value;
            return null;
        }
    }

    /// <summary>
    /// Parses <paramref name="json"/>, which lies at <paramref name="baseOffset"/> in <paramref name="path"/>. Malformed
    /// JSON or a key that appears twice is a <see cref="ModelLoadException"/> on <paramref name="what"/> (a repeated key
    /// on "<paramref name="what"/> 'key'") at the offending byte.
    /// </summary>
    public static LocatedJson Parse(string path, ReadOnlySpan<byte> json, long baseOffset, string what)
    {
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow });
        try
        {
            if (!reader.Read())
                throw new ModelLoadException(path, what, baseOffset, "there is no JSON value (the text is empty or only whitespace).");
            var value = ReadValue(ref reader, path, baseOffset, what);
            if (reader.Read()) // a second value is itself rejected by the reader; kept as a guard
                throw new ModelLoadException(path, what, baseOffset + reader.TokenStartIndex, "more JSON follows the value.");
            return value;
        }
        catch (JsonException e)
        {
            throw new ModelLoadException(path, what, baseOffset + reader.BytesConsumed, $"malformed JSON: {e.Message}", e);
        }
        catch (InvalidOperationException e) // a string that is not valid UTF-8
        {
            throw new ModelLoadException(path, what, baseOffset + reader.TokenStartIndex, $"malformed JSON: {e.Message}", e);
        }
    }

    private static LocatedJson ReadValue(ref Utf8JsonReader reader, string path, long baseOffset, string what)
    {
        long at = baseOffset + reader.TokenStartIndex;
        switch (reader.TokenType)
        {
            case JsonTokenType.StartObject:
            {
                var members = new List<Member>();
                var names = new HashSet<string>(StringComparer.Ordinal);
                while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                {
                    long nameAt = baseOffset + reader.TokenStartIndex;
                    string name = reader.GetString()!;
                    if (!names.Add(name))
                        throw new ModelLoadException(path, $"{what} '{name}'", nameAt, "the name appears twice in one object.");
                    reader.Read();
                    members.Add(new Member(name, nameAt, ReadValue(ref reader, path, baseOffset, what)));
                }
                return new LocatedJson(JsonValueKind.Object, at) { Members = members };
            }
            case JsonTokenType.StartArray:
            {
                var items = new List<LocatedJson>();
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                    items.Add(ReadValue(ref reader, path, baseOffset, what));
                return new LocatedJson(JsonValueKind.Array, at) { Items = items };
            }
            case JsonTokenType.String:
                return new LocatedJson(JsonValueKind.String, at) { Text = reader.GetString()! };
            case JsonTokenType.Number:
            {
                if (!reader.TryGetDouble(out double number) || !double.IsFinite(number))
                    throw new ModelLoadException(path, what, at, "a number is out of the double range.");
                bool integral = reader.ValueSpan.IndexOfAny((byte)'.', (byte)'e', (byte)'E') < 0;
                long? integer = integral && reader.TryGetInt64(out long value) ? value : null;
                return new LocatedJson(JsonValueKind.Number, at) { Number = number, Integer = integer };
            }
            case JsonTokenType.True:
                return new LocatedJson(JsonValueKind.True, at);
            case JsonTokenType.False:
                return new LocatedJson(JsonValueKind.False, at);
            default:
                return new LocatedJson(JsonValueKind.Null, at);
        }
    }

    /// <summary>How a value reads in an error message.</summary>
    public override string ToString() => Kind switch
    {
        JsonValueKind.String => $"\"{Text}\"",
        JsonValueKind.Number => Integer?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? Number.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        JsonValueKind.True => "true",
        JsonValueKind.False => "false",
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => $"an array of {Items.Count}",
        _ => "null",
    };
}
