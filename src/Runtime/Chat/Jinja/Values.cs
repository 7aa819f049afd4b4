using System.Globalization;
using System.Text;

namespace Kiln.Chat.Jinja;

// A template's values are plain CLR objects, each standing for the Python value Jinja would hold:
//   string → str, long → int, double → float, bool → bool, null → None, List<object?> → list (and tuple),
//   JinjaDict → dict, plus the few kinds below (Undefined, Namespace, LoopState, callables).
// Values are never mutated by a template (transformers renders in an immutable sandbox), except a namespace's
// attributes, which is what namespace() is for.

/// <summary>
/// Jinja's default Undefined: a missing variable, attribute or item. Prints as nothing, is false, iterates as empty;
/// using it further (an attribute of it, arithmetic, a call) fails with the hint of what was missing.
/// </summary>
internal sealed class Undefined
{
    public Undefined(string hint) => Hint = hint;

    /// <summary>Jinja's message for using it: "'foo' is undefined", "'dict object' has no attribute 'bar'".</summary>
    public string Hint { get; }

    public static Undefined Variable(string name) => new($"'{name}' is undefined");

    public static Undefined Attribute(object? owner, string name) => new($"'{Py.ObjectTypeRepr(owner)}' has no attribute '{name}'");

    public static Undefined Item(object? owner, object? key) => new($"'{Py.ObjectTypeRepr(owner)}' has no item {Py.Repr(key)}");
}

/// <summary>A Python tuple: a list that prints in parentheses and never equals a list.</summary>
internal sealed class PyTuple : List<object?>
{
    public PyTuple()
    {
    }

    public PyTuple(IEnumerable<object?> items) : base(items)
    {
    }
}

/// <summary>A Python dict: insertion-ordered, keys compared as Python compares them (1 == 1.0 == True).</summary>
internal sealed class JinjaDict
{
    private readonly Dictionary<object, object?> _entries = new(PyKeyComparer.Instance);
    private readonly List<object> _keys = [];

    public int Count => _keys.Count;

    public IReadOnlyList<object> Keys => _keys;

    public bool TryGetValue(object? key, out object? value)
    {
        if (key is null) { value = null; return false; }
        return _entries.TryGetValue(key, out value);
    }

    public bool ContainsKey(object? key) => key is not null && _entries.ContainsKey(key);

    public void Set(object? key, object? value)
    {
        if (key is null or Undefined || key is List<object?> or JinjaDict)
            throw new TemplateRuntimeException($"unhashable dict key: {Py.TypeName(key)}");
        if (!_entries.ContainsKey(key)) _keys.Add(key);
        _entries[key] = value;
    }

    public object? this[object key] => _entries[key];

    private sealed class PyKeyComparer : IEqualityComparer<object>
    {
        public static readonly PyKeyComparer Instance = new();

        public new bool Equals(object? x, object? y) => Py.AreEqual(x, y);

        public int GetHashCode(object value) => value switch
        {
            bool b => b ? 1 : 0,
            long l => l.GetHashCode(),
            double d when d == Math.Floor(d) && d is >= long.MinValue and <= long.MaxValue => ((long)d).GetHashCode(),
            double d => d.GetHashCode(),
            string s => StringComparer.Ordinal.GetHashCode(s),
            _ => value.GetHashCode(),
        };
    }
}

/// <summary>What namespace(...) makes: the one object whose attributes a template may set, across loop scopes.</summary>
internal sealed class Namespace
{
    public Dictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}

/// <summary>The <c>loop</c> variable inside a for loop.</summary>
internal sealed class LoopState
{
    public LoopState(IReadOnlyList<object?> items) => Items = items;

    public IReadOnlyList<object?> Items { get; }

    public int Index0 { get; set; }

    public bool TryGet(string name, out object? value)
    {
        int length = Items.Count;
        value = name switch
        {
            "index0" => (long)Index0,
            "index" => (long)Index0 + 1,
            "revindex0" => (long)(length - Index0 - 1),
            "revindex" => (long)(length - Index0),
            "first" => Index0 == 0,
            "last" => Index0 == length - 1,
            "length" => (long)length,
            "depth" => 1L,
            "depth0" => 0L,
            "previtem" => Index0 > 0 ? Items[Index0 - 1] : Undefined.Variable("previtem"),
            "nextitem" => Index0 < length - 1 ? Items[Index0 + 1] : Undefined.Variable("nextitem"),
            "cycle" => new BoundMethod(this, "cycle"),
            _ => null,
        };
        return value is not null;
    }
}

/// <summary>A method of a value, fetched by attribute (<c>content.strip</c>) and called later.</summary>
internal sealed record BoundMethod(object Target, string Name);

/// <summary>A global function (<c>raise_exception</c>, <c>range</c>, <c>namespace</c> ...).</summary>
internal sealed record GlobalFunction(string Name);

/// <summary>The arguments of a call: positional, then keyword.</summary>
internal readonly record struct CallArguments(List<object?> Positional, List<KeyValuePair<string, object?>> Keywords)
{
    public int Count => Positional.Count;

    /// <summary>The argument at <paramref name="position"/> or named <paramref name="name"/>; <paramref name="fallback"/> when absent.</summary>
    public object? Get(int position, string name, object? fallback)
    {
        if (position < Positional.Count) return Positional[position];
        foreach (var keyword in Keywords)
        {
            if (keyword.Key == name) return keyword.Value;
        }
        return fallback;
    }

    public void ExpectAtMost(int count, string function)
    {
        if (Positional.Count > count)
            throw new TemplateRuntimeException($"{function}() takes at most {count} positional argument{(count == 1 ? "" : "s")} ({Positional.Count} given)");
    }
}

/// <summary>An error while rendering; the evaluator gives it the location of the innermost node it passed through.</summary>
internal sealed class TemplateRuntimeException : Exception
{
    public TemplateRuntimeException(string message, bool raisedByTemplate = false) : base(message) => RaisedByTemplate = raisedByTemplate;

    /// <summary>From the template's own raise_exception(...): the message is the template's, word for word.</summary>
    public bool RaisedByTemplate { get; }

    public int Line { get; set; }

    public int Column { get; set; }
}

/// <summary>Python's meaning of the operations a template applies to values.</summary>
internal static class Py
{
    public static bool IsNumber(object? value) => value is long or double or bool;

    public static double ToDouble(object? value) => value switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new InvalidOperationException("not a number"),
    };

    /// <summary>An integer value (bool counts, as in Python), or null.</summary>
    public static long? AsInteger(object? value) => value switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        _ => null,
    };

    public static bool IsTrue(object? value) => value switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> list => list.Count > 0,
        JinjaDict dict => dict.Count > 0,
        _ => true,
    };

    /// <summary>Python's type name, for error messages.</summary>
    public static string TypeName(object? value) => value switch
    {
        null => "NoneType",
        Undefined => "Undefined",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        PyTuple => "tuple",
        List<object?> => "list",
        JinjaDict => "dict",
        Namespace => "Namespace",
        LoopState => "LoopContext",
        BoundMethod => "builtin_function_or_method",
        GlobalFunction or Macro => "function",
        _ => value.GetType().Name,
    };

    /// <summary>How Jinja names an object in "has no attribute" hints: "dict object", "None".</summary>
    public static string ObjectTypeRepr(object? value) => value is null ? "None" : $"{TypeName(value)} object";

    /// <summary>Python's str(): what <c>{{ value }}</c> prints.</summary>
    public static string Str(object? value) => value switch
    {
        string s => s,
        Undefined => "",
        _ => Repr(value),
    };

    /// <summary>Python's repr(), as str() of a container shows its items.</summary>
    public static string Repr(object? value)
    {
        var text = new StringBuilder();
        AppendRepr(text, value);
        return text.ToString();
    }

    private static void AppendRepr(StringBuilder text, object? value)
    {
        switch (value)
        {
            case null: text.Append("None"); break;
            case Undefined: break;
            case bool b: text.Append(b ? "True" : "False"); break;
            case long l: text.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d: text.Append(FormatFloat(d)); break;
            case string s: AppendStringRepr(text, s); break;
            case List<object?> list:
                bool tuple = list is PyTuple;
                text.Append(tuple ? '(' : '[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) text.Append(", ");
                    AppendRepr(text, list[i]);
                }
                text.Append(tuple ? list.Count == 1 ? ",)" : ")" : "]");
                break;
            case JinjaDict dict:
                text.Append('{');
                for (int i = 0; i < dict.Count; i++)
                {
                    if (i > 0) text.Append(", ");
                    AppendRepr(text, dict.Keys[i]);
                    text.Append(": ");
                    AppendRepr(text, dict[dict.Keys[i]]);
                }
                text.Append('}');
                break;
            case Namespace ns:
                text.Append("<Namespace {");
                bool first = true;
                foreach (var (key, item) in ns.Attributes)
                {
                    if (!first) text.Append(", ");
                    first = false;
                    AppendStringRepr(text, key);
                    text.Append(": ");
                    AppendRepr(text, item);
                }
                text.Append("}>");
                break;
            default: text.Append('<').Append(TypeName(value)).Append('>'); break;
        }
    }

    private static void AppendStringRepr(StringBuilder text, string s)
    {
        char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        text.Append(quote);
        foreach (char c in s)
        {
            switch (c)
            {
                case '\\': text.Append("\\\\"); break;
                case '\n': text.Append("\\n"); break;
                case '\r': text.Append("\\r"); break;
                case '\t': text.Append("\\t"); break;
                default:
                    if (c == quote) text.Append('\\').Append(c);
                    else if (c < 0x20 || c == 0x7f) text.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
                    else text.Append(c);
                    break;
            }
        }
        text.Append(quote);
    }

    /// <summary>
    /// Python's repr of a float: the shortest digits that read back the same, positional for exponents from -4 to 15
    /// (always with a fraction: "1.0"), otherwise scientific ("1e-05", "1.5e+16").
    /// </summary>
    public static string FormatFloat(double value)
    {
        if (double.IsNaN(value)) return "nan";
        if (double.IsInfinity(value)) return value > 0 ? "inf" : "-inf";
        if (value == 0) return double.IsNegative(value) ? "-0.0" : "0.0";

        // .NET's round-trip form has the shortest digits, as Python's repr does; only the layout differs.
        string shortest = Math.Abs(value).ToString("R", CultureInfo.InvariantCulture);
        int exponentAt = shortest.IndexOfAny(['E', 'e']);
        string mantissa = exponentAt < 0 ? shortest : shortest[..exponentAt];
        int exponent = exponentAt < 0 ? 0 : int.Parse(shortest[(exponentAt + 1)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
        int point = mantissa.IndexOf('.');
        string digits = point < 0 ? mantissa : mantissa.Remove(point, 1);
        int integerDigits = point < 0 ? mantissa.Length : point;
        int leadingZeros = 0;
        while (leadingZeros < digits.Length - 1 && digits[leadingZeros] == '0') leadingZeros++;
        digits = digits[leadingZeros..].TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        int scientific = integerDigits - leadingZeros - 1 + exponent;

        var text = new StringBuilder();
        if (value < 0) text.Append('-');
        if (scientific is >= -4 and < 16)
        {
            if (scientific >= 0)
            {
                string whole = digits.Length > scientific + 1 ? digits[..(scientific + 1)] : digits.PadRight(scientific + 1, '0');
                string fraction = digits.Length > scientific + 1 ? digits[(scientific + 1)..] : "0";
                text.Append(whole).Append('.').Append(fraction);
            }
            else
            {
                text.Append("0.").Append('0', -scientific - 1).Append(digits);
            }
        }
        else
        {
            text.Append(digits[0]);
            if (digits.Length > 1) text.Append('.').Append(digits, 1, digits.Length - 1);
            text.Append('e').Append(scientific < 0 ? '-' : '+').Append(Math.Abs(scientific).ToString("00", CultureInfo.InvariantCulture));
        }
        return text.ToString();
    }

    /// <summary>Python's ==: numbers by value across int, float and bool; strings, lists and dicts by content.</summary>
    public static bool AreEqual(object? left, object? right)
    {
        if (left is null || right is null) return left is null && right is null;
        if (left is Undefined || right is Undefined) return left is Undefined && right is Undefined;
        if (IsNumber(left) && IsNumber(right))
        {
            if (AsInteger(left) is long a && AsInteger(right) is long b) return a == b;
            return ToDouble(left) == ToDouble(right);
        }
        switch (left)
        {
            case string s: return right is string t && string.Equals(s, t, StringComparison.Ordinal);
            case List<object?> list:
                if (right is not List<object?> other || other.Count != list.Count || (list is PyTuple) != (other is PyTuple)) return false;
                for (int i = 0; i < list.Count; i++)
                {
                    if (!AreEqual(list[i], other[i])) return false;
                }
                return true;
            case JinjaDict dict:
                if (right is not JinjaDict otherDict || otherDict.Count != dict.Count) return false;
                foreach (object key in dict.Keys)
                {
                    if (!otherDict.TryGetValue(key, out object? value) || !AreEqual(dict[key], value)) return false;
                }
                return true;
            default: return Equals(left, right);
        }
    }

    /// <summary>Python's ordering (&lt;): numbers, strings by code unit, lists item by item; anything else is a TypeError.</summary>
    public static int Compare(object? left, object? right, string op)
    {
        if (IsNumber(left) && IsNumber(right))
        {
            if (AsInteger(left) is long a && AsInteger(right) is long b) return a.CompareTo(b);
            double x = ToDouble(left), y = ToDouble(right);
            return x < y ? -1 : x > y ? 1 : 0;
        }
        if (left is string s && right is string t) return Math.Sign(string.CompareOrdinal(s, t));
        if (left is List<object?> l && right is List<object?> r)
        {
            for (int i = 0; i < Math.Min(l.Count, r.Count); i++)
            {
                if (!AreEqual(l[i], r[i])) return Compare(l[i], r[i], op);
            }
            return l.Count.CompareTo(r.Count);
        }
        ThrowIfUndefined(left);
        ThrowIfUndefined(right);
        throw new TemplateRuntimeException($"'{op}' not supported between instances of '{TypeName(left)}' and '{TypeName(right)}'");
    }

    public static void ThrowIfUndefined(object? value)
    {
        if (value is Undefined undefined) throw new TemplateRuntimeException(undefined.Hint);
    }

    /// <summary>The items a for loop (or a filter) walks: a list's items, a dict's keys, a string's characters.</summary>
    public static IReadOnlyList<object?> Iterate(object? value) => value switch
    {
        List<object?> list => list,
        JinjaDict dict => [.. dict.Keys],
        string s => Characters(s),
        Undefined => [],
        Namespace ns => [.. ns.Attributes.Keys],
        _ => throw new TemplateRuntimeException($"'{TypeName(value)}' object is not iterable"),
    };

    private static List<object?> Characters(string s)
    {
        var characters = new List<object?>(s.Length);
        // Python iterates code points; a surrogate pair stays one character.
        for (int i = 0; i < s.Length; i += char.IsSurrogatePair(s, i) ? 2 : 1)
            characters.Add(s.Substring(i, char.IsSurrogatePair(s, i) ? 2 : 1));
        return characters;
    }

    /// <summary>Python's len().</summary>
    public static long Length(object? value) => value switch
    {
        string s => CodePointCount(s),
        List<object?> list => list.Count,
        JinjaDict dict => dict.Count,
        Undefined => 0,
        Namespace ns => ns.Attributes.Count,
        _ => throw new TemplateRuntimeException($"object of type '{TypeName(value)}' has no len()"),
    };

    public static int CodePointCount(string s)
    {
        int count = 0;
        for (int i = 0; i < s.Length; i += char.IsSurrogatePair(s, i) ? 2 : 1) count++;
        return count;
    }

    /// <summary>Python's whitespace, what str.strip() and str.split() remove.</summary>
    public static bool IsSpace(char c) => char.IsWhiteSpace(c) || c is '\x1c' or '\x1d' or '\x1e' or '\x1f';
}
