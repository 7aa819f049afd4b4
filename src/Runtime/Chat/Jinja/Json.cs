using System.Globalization;
using System.Text;

namespace Kiln.Chat.Jinja;

/// <summary>
/// The <c>tojson</c> filter as transformers defines it for chat templates: Python's
/// <c>json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)</c>, so
/// non-ASCII text stays as it is and nothing is HTML-escaped (unlike Jinja's own tojson).
/// </summary>
internal static class Json
{
    public static string Serialize(object? value, CallArguments arguments)
    {
        object? indent = arguments.Get(int.MaxValue, "indent", null);
        bool ensureAscii = Py.IsTrue(arguments.Get(int.MaxValue, "ensure_ascii", false));
        bool sortKeys = Py.IsTrue(arguments.Get(int.MaxValue, "sort_keys", false));
        // Positionally, as with transformers' tojson(x, ensure_ascii, indent, separators, sort_keys).
        if (arguments.Count > 0) ensureAscii = Py.IsTrue(arguments.Positional[0]);
        if (arguments.Count > 1) indent = arguments.Positional[1];
        string? indentText = indent switch
        {
            null => null,
            string s => s,
            _ when Py.AsInteger(indent) is long spaces => new string(' ', (int)Math.Max(0, spaces)),
            _ => throw new TemplateRuntimeException($"tojson: indent must be an integer or a string, not {Py.TypeName(indent)}"),
        };
        (string Item, string Key) separators = indentText is null ? (", ", ": ") : (",", ": ");
        object? given = arguments.Get(int.MaxValue, "separators", null) ?? (arguments.Count > 2 ? arguments.Positional[2] : null);
        if (given is List<object?> { Count: 2 } pair && pair[0] is string item && pair[1] is string key) separators = (item, key);
        if (arguments.Count > 3) sortKeys = Py.IsTrue(arguments.Positional[3]);

        var writer = new Writer(indentText, separators, ensureAscii, sortKeys);
        writer.Write(value, 0);
        return writer.ToString();
    }

    private sealed class Writer(string? indent, (string Item, string Key) separators, bool ensureAscii, bool sortKeys)
    {
        private readonly StringBuilder _text = new();

        public override string ToString() => _text.ToString();

        public void Write(object? value, int depth)
        {
            switch (value)
            {
                case null: _text.Append("null"); break;
                case bool b: _text.Append(b ? "true" : "false"); break;
                case long l: _text.Append(l.ToString(CultureInfo.InvariantCulture)); break;
                case double d: _text.Append(FormatNumber(d)); break;
                case string s: WriteString(s); break;
                case List<object?> list:
                    if (list.Count == 0)
                    {
                        _text.Append("[]");
                        break;
                    }
                    _text.Append('[');
                    for (int i = 0; i < list.Count; i++)
                    {
                        if (i > 0) _text.Append(separators.Item);
                        NewLine(depth + 1);
                        Write(list[i], depth + 1);
                    }
                    NewLine(depth);
                    _text.Append(']');
                    break;
                case JinjaDict dict:
                    if (dict.Count == 0)
                    {
                        _text.Append("{}");
                        break;
                    }
                    IEnumerable<object> keys = dict.Keys;
                    if (sortKeys) keys = keys.OrderBy(key => key, Comparer<object>.Create((a, b) => Py.Compare(a, b, "<")));
                    _text.Append('{');
                    bool first = true;
                    foreach (object key in keys)
                    {
                        if (!first) _text.Append(separators.Item);
                        first = false;
                        NewLine(depth + 1);
                        WriteString(KeyText(key));
                        _text.Append(separators.Key);
                        Write(dict[key], depth + 1);
                    }
                    NewLine(depth);
                    _text.Append('}');
                    break;
                default:
                    throw new TemplateRuntimeException($"Object of type {Py.TypeName(value)} is not JSON serializable");
            }
        }

        private static string KeyText(object key) => key switch
        {
            string s => s,
            bool b => b ? "true" : "false",
            long l => l.ToString(CultureInfo.InvariantCulture),
            double d => FormatNumber(d),
            _ => throw new TemplateRuntimeException($"keys must be str, int, float, bool or None, not {Py.TypeName(key)}"),
        };

        private static string FormatNumber(double d) =>
            double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : Py.FormatFloat(d);

        private void NewLine(int depth)
        {
            if (indent is null) return;
            _text.Append('\n');
            for (int i = 0; i < depth; i++) _text.Append(indent);
        }

        private void WriteString(string s)
        {
            _text.Append('"');
            foreach (char c in s)
            {
                switch (c)
                {
                    case '"': _text.Append("\\\""); break;
                    case '\\': _text.Append("\\\\"); break;
                    case '\n': _text.Append("\\n"); break;
                    case '\r': _text.Append("\\r"); break;
                    case '\t': _text.Append("\\t"); break;
                    case '\b': _text.Append("\\b"); break;
                    case '\f': _text.Append("\\f"); break;
                    default:
                        if (c < 0x20 || ensureAscii && c > 0x7e) _text.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                        else _text.Append(c);
                        break;
                }
            }
            _text.Append('"');
        }
    }
}
