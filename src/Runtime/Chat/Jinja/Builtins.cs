using System.Globalization;
using System.Text;

namespace Kiln.Chat.Jinja;

/// <summary>
/// What templates call and apply: attribute and item lookup, the operators, the filters and tests of Jinja that chat
/// templates use, transformers' globals (<c>raise_exception</c>, <c>strftime_now</c>) beside Jinja's
/// (<c>range</c>, <c>namespace</c>, <c>dict</c>), and the Python methods templates call on strings and dicts.
/// </summary>
internal static class Builtins
{
    /// <summary>The sandbox's largest range(), as in Jinja.</summary>
    private const int MaxRange = 100_000;

    public static readonly HashSet<string> FilterNames =
    [
        "abs", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "indent", "int",
        "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace",
        "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique",
        "upper",
    ];

    public static readonly HashSet<string> TestNames =
    [
        "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "float", "ge",
        "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan", "lower", "lt", "mapping", "ne", "none",
        "number", "odd", "sameas", "sequence", "string", "true", "undefined", "upper", "==", "!=", "<", "<=", ">", ">=",
    ];

    public static readonly string[] GlobalNames = ["raise_exception", "strftime_now", "range", "namespace", "dict"];

    private static readonly HashSet<string> StringMethods =
    [
        "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith", "lower", "upper", "title",
        "capitalize", "replace", "join", "find", "rfind", "count", "removeprefix", "removesuffix", "isdigit", "isalpha",
        "isalnum", "isspace", "islower", "isupper",
    ];

    private static readonly HashSet<string> DictMethods = ["items", "keys", "values", "get"];

    // Lookup.

    /// <summary><c>owner.name</c>: a method or attribute first, then an item, else undefined.</summary>
    public static object? GetAttribute(object? owner, string name)
    {
        switch (owner)
        {
            case Undefined undefined:
                throw new TemplateRuntimeException(undefined.Hint);
            case JinjaDict dict:
                if (DictMethods.Contains(name)) return new BoundMethod(dict, name);
                return dict.TryGetValue(name, out object? value) ? value : Undefined.Attribute(owner, name);
            case string s when StringMethods.Contains(name):
                return new BoundMethod(s, name);
            case Namespace ns:
                return ns.Attributes.TryGetValue(name, out object? attribute) ? attribute : Undefined.Attribute(owner, name);
            case LoopState loop:
                return loop.TryGet(name, out object? loopValue) ? loopValue : Undefined.Attribute(owner, name);
            default:
                return Undefined.Attribute(owner, name);
        }
    }

    /// <summary><c>owner[key]</c>: an item first, then (for a string key) an attribute, else undefined.</summary>
    public static object? GetItem(object? owner, object? key)
    {
        switch (owner)
        {
            case Undefined undefined:
                throw new TemplateRuntimeException(undefined.Hint);
            case JinjaDict dict:
                if (dict.TryGetValue(key, out object? value)) return value;
                break;
            case List<object?> list when Py.AsInteger(key) is long index:
                if (index < 0) index += list.Count;
                return index >= 0 && index < list.Count ? list[(int)index] : Undefined.Item(owner, key);
            case string s when Py.AsInteger(key) is long index:
                var characters = Py.Iterate(s);
                if (index < 0) index += characters.Count;
                return index >= 0 && index < characters.Count ? characters[(int)index] : Undefined.Item(owner, key);
        }
        return key is string name ? GetAttribute(owner, name) : Undefined.Item(owner, key);
    }

    /// <summary><c>owner[start:stop:step]</c> of a list or string, with Python's rules for negative and missing bounds.</summary>
    public static object? Slice(object? owner, object? start, object? stop, object? step)
    {
        Py.ThrowIfUndefined(owner);
        var items = owner switch
        {
            List<object?> list => list,
            string s => Py.Iterate(s),
            _ => throw new TemplateRuntimeException($"'{Py.TypeName(owner)}' object is not subscriptable"),
        };
        long by = SliceBound(step) ?? 1;
        if (by == 0) throw new TemplateRuntimeException("slice step cannot be zero");
        int count = items.Count;
        long first, last;
        if (by > 0)
        {
            first = Clamp(SliceBound(start) ?? 0, count, 0, count);
            last = Clamp(SliceBound(stop) ?? count, count, 0, count);
        }
        else
        {
            first = Clamp(SliceBound(start) ?? count - 1, count, -1, count - 1);
            last = SliceBound(stop) is long end ? Clamp(end, count, -1, count - 1) : -1;
        }
        var result = new List<object?>();
        for (long i = first; by > 0 ? i < last : i > last; i += by) result.Add(items[(int)i]);
        return owner switch
        {
            string => string.Concat(result.Select(c => (string)c!)),
            PyTuple => new PyTuple(result),
            _ => result,
        };

        static long Clamp(long index, int count, long low, long high)
        {
            if (index < 0) index += count;
            return Math.Clamp(index, low, high);
        }
    }

    private static long? SliceBound(object? value) => value switch
    {
        null => null,
        _ when Py.AsInteger(value) is long index => index,
        _ => throw new TemplateRuntimeException($"slice indices must be integers or None, not {Py.TypeName(value)}"),
    };

    // Operators.

    public static object? Arithmetic(string op, object? left, object? right)
    {
        if (op == "~") return Py.Str(left) + Py.Str(right);
        Py.ThrowIfUndefined(left);
        Py.ThrowIfUndefined(right);
        if (Py.IsNumber(left) && Py.IsNumber(right)) return NumberArithmetic(op, left, right);
        switch (op)
        {
            case "+" when left is string a && right is string b:
                return a + b;
            case "+" when left is List<object?> a && right is List<object?> b && (a is PyTuple) == (b is PyTuple):
                return a is PyTuple ? new PyTuple([.. a, .. b]) : new List<object?>([.. a, .. b]);
            case "*" when left is string s && Py.AsInteger(right) is long times:
                return Repeat(s, times);
            case "*" when right is string s && Py.AsInteger(left) is long times:
                return Repeat(s, times);
            case "*" when left is List<object?> list && Py.AsInteger(right) is long times:
                var repeated = new List<object?>();
                for (long i = 0; i < times; i++) repeated.AddRange(list);
                return repeated;
        }
        if (op == "+" && left is string) throw new TemplateRuntimeException($"can only concatenate str (not \"{Py.TypeName(right)}\") to str");
        throw new TemplateRuntimeException($"unsupported operand type(s) for {op}: '{Py.TypeName(left)}' and '{Py.TypeName(right)}'");
    }

    private static string Repeat(string s, long times) => times <= 0 ? "" : new StringBuilder().Insert(0, s, (int)times).ToString();

    private static object NumberArithmetic(string op, object? left, object? right)
    {
        if (Py.AsInteger(left) is long a && Py.AsInteger(right) is long b)
        {
            try
            {
                switch (op)
                {
                    case "+": return checked(a + b);
                    case "-": return checked(a - b);
                    case "*": return checked(a * b);
                    case "/":
                        if (b == 0) throw new TemplateRuntimeException("division by zero");
                        return (double)a / b;
                    case "//":
                        if (b == 0) throw new TemplateRuntimeException("integer division or modulo by zero");
                        return FloorDivide(a, b);
                    case "%":
                        if (b == 0) throw new TemplateRuntimeException("integer division or modulo by zero");
                        return a - b * FloorDivide(a, b);
                    case "**":
                        if (b < 0) return Math.Pow(a, b);
                        long power = 1;
                        for (long i = 0; i < b; i++) power = checked(power * a);
                        return power;
                }
            }
            catch (OverflowException)
            {
                throw new TemplateRuntimeException($"integer overflow in {a} {op} {b}");
            }
        }
        double x = Py.ToDouble(left), y = Py.ToDouble(right);
        switch (op)
        {
            case "+": return x + y;
            case "-": return x - y;
            case "*": return x * y;
            case "**": return Math.Pow(x, y);
        }
        if (y == 0) throw new TemplateRuntimeException(op == "/" ? "float division by zero" : "float modulo");
        return op switch
        {
            "/" => x / y,
            "//" => Math.Floor(x / y),
            _ => x - y * Math.Floor(x / y),
        };
    }

    private static long FloorDivide(long a, long b)
    {
        long quotient = a / b;
        return (a % b != 0 && (a < 0) != (b < 0)) ? quotient - 1 : quotient;
    }

    public static bool Compare(string op, object? left, object? right) => op switch
    {
        "==" => Py.AreEqual(left, right),
        "!=" => !Py.AreEqual(left, right),
        "<" => Py.Compare(left, right, op) < 0,
        "<=" => Py.Compare(left, right, op) <= 0,
        ">" => Py.Compare(left, right, op) > 0,
        ">=" => Py.Compare(left, right, op) >= 0,
        "in" => Contains(right, left),
        "not in" => !Contains(right, left),
        _ => throw new InvalidOperationException(op),
    };

    /// <summary>Python's <c>item in container</c>.</summary>
    public static bool Contains(object? container, object? item)
    {
        switch (container)
        {
            case string s:
                Py.ThrowIfUndefined(item);
                if (item is not string part) throw new TemplateRuntimeException($"'in <string>' requires string as left operand, not {Py.TypeName(item)}");
                return s.Contains(part, StringComparison.Ordinal);
            case List<object?> list:
                foreach (object? element in list)
                {
                    if (Py.AreEqual(element, item)) return true;
                }
                return false;
            case JinjaDict dict:
                return dict.ContainsKey(item);
            case Undefined:
                return false;
            case Namespace ns:
                return item is string name && ns.Attributes.ContainsKey(name);
            default:
                throw new TemplateRuntimeException($"argument of type '{Py.TypeName(container)}' is not iterable");
        }
    }

    // Globals.

    public static object? CallGlobal(Renderer renderer, string name, CallArguments arguments)
    {
        switch (name)
        {
            case "raise_exception":
                throw new TemplateRuntimeException(Py.Str(arguments.Get(0, "message", "")), raisedByTemplate: true);
            case "strftime_now":
                arguments.ExpectAtMost(1, name);
                if (arguments.Get(0, "format", null) is not string format) throw new TemplateRuntimeException("strftime_now() needs a format string");
                return Strftime(renderer.Now(), format);
            case "range":
                return Range(arguments);
            case "namespace":
            case "dict":
                var entries = new List<KeyValuePair<string, object?>>();
                foreach (object? positional in arguments.Positional)
                {
                    if (positional is not JinjaDict initial) throw new TemplateRuntimeException($"{name}() takes a dict or keyword arguments, not {Py.TypeName(positional)}");
                    foreach (object key in initial.Keys) entries.Add(new(Py.Str(key), initial[key]));
                }
                entries.AddRange(arguments.Keywords);
                if (name == "dict")
                {
                    var dict = new JinjaDict();
                    foreach (var (key, value) in entries) dict.Set(key, value);
                    return dict;
                }
                var ns = new Namespace();
                foreach (var (key, value) in entries) ns.Attributes[key] = value;
                return ns;
            default:
                throw new InvalidOperationException(name);
        }
    }

    private static List<object?> Range(CallArguments arguments)
    {
        var bounds = new List<long>();
        foreach (object? argument in arguments.Positional)
        {
            bounds.Add(Py.AsInteger(argument) ?? throw new TemplateRuntimeException($"range() takes integers, not {Py.TypeName(argument)}"));
        }
        var (start, stop, step) = bounds.Count switch
        {
            1 => (0L, bounds[0], 1L),
            2 => (bounds[0], bounds[1], 1L),
            3 => (bounds[0], bounds[1], bounds[2]),
            _ => throw new TemplateRuntimeException($"range() takes 1 to 3 arguments ({bounds.Count} given)"),
        };
        if (step == 0) throw new TemplateRuntimeException("range() arg 3 must not be zero");
        long count = step > 0 ? Math.Max(0, (stop - start + step - 1) / step) : Math.Max(0, (start - stop - step - 1) / -step);
        if (count > MaxRange) throw new TemplateRuntimeException($"range too big: the sandbox blocks ranges larger than {MaxRange}");
        var values = new List<object?>((int)count);
        for (long i = 0; i < count; i++) values.Add(start + i * step);
        return values;
    }

    /// <summary>Python's strftime, for the directives templates print dates with.</summary>
    private static string Strftime(DateTime now, string format)
    {
        var culture = CultureInfo.InvariantCulture;
        var text = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 == format.Length)
            {
                text.Append(format[i]);
                continue;
            }
            char directive = format[++i];
            text.Append(directive switch
            {
                'a' => now.ToString("ddd", culture),
                'A' => now.ToString("dddd", culture),
                'b' or 'h' => now.ToString("MMM", culture),
                'B' => now.ToString("MMMM", culture),
                'd' => now.ToString("dd", culture),
                'e' => now.Day.ToString(culture).PadLeft(2),
                'm' => now.ToString("MM", culture),
                'y' => now.ToString("yy", culture),
                'Y' => now.Year.ToString(culture),
                'H' => now.ToString("HH", culture),
                'I' => now.ToString("hh", culture),
                'M' => now.ToString("mm", culture),
                'S' => now.ToString("ss", culture),
                'p' => now.Hour < 12 ? "AM" : "PM",
                'j' => now.DayOfYear.ToString("000", culture),
                'f' => (now.Ticks % TimeSpan.TicksPerSecond / 10).ToString("000000", culture),
                'F' => now.ToString("yyyy-MM-dd", culture),
                'T' => now.ToString("HH:mm:ss", culture),
                'D' => now.ToString("MM/dd/yy", culture),
                '%' => "%",
                _ => throw new TemplateRuntimeException($"strftime_now: the directive '%{directive}' is not supported"),
            });
        }
        return text.ToString();
    }

    // Methods.

    public static object? CallMethod(BoundMethod method, CallArguments arguments) => method.Target switch
    {
        string s => CallStringMethod(s, method.Name, arguments),
        JinjaDict dict => CallDictMethod(dict, method.Name, arguments),
        LoopState loop => arguments.Count == 0
            ? throw new TemplateRuntimeException("loop.cycle() needs at least one value")
            : arguments.Positional[loop.Index0 % arguments.Count],
        _ => throw new InvalidOperationException(method.Name),
    };

    private static object? CallDictMethod(JinjaDict dict, string name, CallArguments arguments)
    {
        switch (name)
        {
            case "items": return Items(dict);
            case "keys": return new List<object?>(dict.Keys);
            case "values": return dict.Keys.Select(key => dict[key]).ToList();
            default:
                arguments.ExpectAtMost(2, "get");
                object? key = arguments.Get(0, "key", null);
                return dict.TryGetValue(key, out object? value) ? value : arguments.Get(1, "default", null);
        }
    }

    private static List<object?> Items(JinjaDict dict) => dict.Keys.Select(key => (object?)new PyTuple { key, dict[key] }).ToList();

    private static object? CallStringMethod(string s, string name, CallArguments arguments)
    {
        switch (name)
        {
            case "strip": return Strip(s, OptionalString(arguments, 0, "chars"), start: true, end: true);
            case "lstrip": return Strip(s, OptionalString(arguments, 0, "chars"), start: true, end: false);
            case "rstrip": return Strip(s, OptionalString(arguments, 0, "chars"), start: false, end: true);
            case "split": return Split(s, OptionalString(arguments, 0, "sep"), MaxSplit(arguments), fromRight: false);
            case "rsplit": return Split(s, OptionalString(arguments, 0, "sep"), MaxSplit(arguments), fromRight: true);
            case "splitlines": return s.Split('\n').Select(line => (object?)line.TrimEnd('\r')).SkipLast(s.EndsWith('\n') ? 1 : 0).ToList();
            case "startswith": return MatchesAffix(s, arguments, atStart: true);
            case "endswith": return MatchesAffix(s, arguments, atStart: false);
            case "lower": return s.ToLowerInvariant();
            case "upper": return s.ToUpperInvariant();
            case "title": return Title(s);
            case "capitalize": return Capitalize(s);
            case "replace":
                string old = RequiredString(arguments, 0, "old"), replacement = RequiredString(arguments, 1, "new");
                long limit = Py.AsInteger(arguments.Get(2, "count", -1L)) ?? -1;
                return Replace(s, old, replacement, limit);
            case "join":
                var parts = Py.Iterate(arguments.Get(0, "iterable", null));
                var joined = new StringBuilder();
                for (int i = 0; i < parts.Count; i++)
                {
                    if (parts[i] is not string part) throw new TemplateRuntimeException($"sequence item {i}: expected str instance, {Py.TypeName(parts[i])} found");
                    if (i > 0) joined.Append(s);
                    joined.Append(part);
                }
                return joined.ToString();
            case "find": return (long)s.IndexOf(RequiredString(arguments, 0, "sub"), StringComparison.Ordinal);
            case "rfind": return (long)s.LastIndexOf(RequiredString(arguments, 0, "sub"), StringComparison.Ordinal);
            case "count":
                string sub = RequiredString(arguments, 0, "sub");
                if (sub.Length == 0) return (long)Py.CodePointCount(s) + 1;
                long count = 0;
                for (int at = s.IndexOf(sub, StringComparison.Ordinal); at >= 0; at = s.IndexOf(sub, at + sub.Length, StringComparison.Ordinal)) count++;
                return count;
            case "removeprefix":
                string prefix = RequiredString(arguments, 0, "prefix");
                return s.StartsWith(prefix, StringComparison.Ordinal) ? s[prefix.Length..] : s;
            case "removesuffix":
                string suffix = RequiredString(arguments, 0, "suffix");
                return suffix.Length > 0 && s.EndsWith(suffix, StringComparison.Ordinal) ? s[..^suffix.Length] : s;
            case "isdigit": return s.Length > 0 && s.All(char.IsDigit);
            case "isalpha": return s.Length > 0 && s.All(char.IsLetter);
            case "isalnum": return s.Length > 0 && s.All(char.IsLetterOrDigit);
            case "isspace": return s.Length > 0 && s.All(Py.IsSpace);
            case "islower": return s.Any(char.IsLetter) && !s.Any(char.IsUpper);
            default: return s.Any(char.IsLetter) && !s.Any(char.IsLower); // isupper
        }
    }

    private static string? OptionalString(CallArguments arguments, int position, string name)
    {
        object? value = arguments.Get(position, name, null);
        return value switch
        {
            null => null,
            string s => s,
            _ => throw new TemplateRuntimeException($"{name} must be a str or None, not {Py.TypeName(value)}"),
        };
    }

    private static string RequiredString(CallArguments arguments, int position, string name) =>
        arguments.Get(position, name, null) as string ?? throw new TemplateRuntimeException($"the argument '{name}' must be a string");

    private static int MaxSplit(CallArguments arguments)
    {
        long limit = Py.AsInteger(arguments.Get(1, "maxsplit", -1L)) ?? -1;
        return limit < 0 ? int.MaxValue : (int)Math.Min(limit, int.MaxValue);
    }

    /// <summary>str.strip: Python whitespace, or any of <paramref name="chars"/>, off either end.</summary>
    public static string Strip(string s, string? chars, bool start, bool end)
    {
        int first = 0, last = s.Length;
        bool Strippable(char c) => chars is null ? Py.IsSpace(c) : chars.Contains(c);
        if (start) while (first < last && Strippable(s[first])) first++;
        if (end) while (last > first && Strippable(s[last - 1])) last--;
        return s[first..last];
    }

    /// <summary>str.split: by a separator, or by runs of whitespace (dropping empty pieces) when none is given.</summary>
    private static List<object?> Split(string s, string? separator, int maxSplit, bool fromRight)
    {
        var pieces = new List<object?>();
        if (separator is null)
        {
            var words = new List<(int Start, int End)>();
            for (int i = 0; i < s.Length;)
            {
                while (i < s.Length && Py.IsSpace(s[i])) i++;
                if (i == s.Length) break;
                int wordStart = i;
                while (i < s.Length && !Py.IsSpace(s[i])) i++;
                words.Add((wordStart, i));
            }
            if (words.Count == 0) return pieces;
            if (words.Count - 1 <= maxSplit)
            {
                foreach (var (wordStart, wordEnd) in words) pieces.Add(s[wordStart..wordEnd]);
                return pieces;
            }
            if (fromRight)
            {
                int keep = words.Count - maxSplit;
                pieces.Add(Strip(s[..words[keep - 1].End], null, start: true, end: false));
                for (int i = keep; i < words.Count; i++) pieces.Add(s[words[i].Start..words[i].End]);
            }
            else
            {
                for (int i = 0; i < maxSplit; i++) pieces.Add(s[words[i].Start..words[i].End]);
                pieces.Add(Strip(s[words[maxSplit].Start..], null, start: false, end: true));
            }
            return pieces;
        }
        if (separator.Length == 0) throw new TemplateRuntimeException("empty separator");
        var all = s.Split(separator);
        if (all.Length - 1 <= maxSplit) return all.Select(piece => (object?)piece).ToList();
        if (fromRight)
        {
            int keep = all.Length - maxSplit;
            pieces.Add(string.Join(separator, all, 0, keep));
            for (int i = keep; i < all.Length; i++) pieces.Add(all[i]);
        }
        else
        {
            for (int i = 0; i < maxSplit; i++) pieces.Add(all[i]);
            pieces.Add(string.Join(separator, all, maxSplit, all.Length - maxSplit));
        }
        return pieces;
    }

    private static bool MatchesAffix(string s, CallArguments arguments, bool atStart)
    {
        object? affix = arguments.Get(0, atStart ? "prefix" : "suffix", null);
        IEnumerable<object?> candidates = affix is List<object?> options ? options : [affix];
        foreach (object? candidate in candidates)
        {
            if (candidate is not string text) throw new TemplateRuntimeException($"{(atStart ? "startswith" : "endswith")} first arg must be str or a tuple of str, not {Py.TypeName(candidate)}");
            if (atStart ? s.StartsWith(text, StringComparison.Ordinal) : s.EndsWith(text, StringComparison.Ordinal)) return true;
        }
        return false;
    }

    private static string Replace(string s, string old, string replacement, long limit)
    {
        if (limit < 0) return old.Length == 0 ? InsertBetweenCharacters(s, replacement) : s.Replace(old, replacement, StringComparison.Ordinal);
        var text = new StringBuilder();
        int position = 0;
        for (long done = 0; done < limit; done++)
        {
            int at = s.IndexOf(old, position, StringComparison.Ordinal);
            if (at < 0 || old.Length == 0) break;
            text.Append(s, position, at - position).Append(replacement);
            position = at + old.Length;
        }
        return text.Append(s, position, s.Length - position).ToString();
    }

    private static string InsertBetweenCharacters(string s, string insert)
    {
        var text = new StringBuilder(insert);
        foreach (object? character in Py.Iterate(s)) text.Append((string)character!).Append(insert);
        return text.ToString();
    }

    /// <summary>str.capitalize: the first character upper case, the rest lower.</summary>
    public static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    /// <summary>str.title: each run of letters starts upper case and goes on lower case.</summary>
    public static string Title(string s)
    {
        var text = new StringBuilder(s.Length);
        bool previousIsLetter = false;
        foreach (char c in s)
        {
            text.Append(previousIsLetter ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            previousIsLetter = char.IsLetter(c);
        }
        return text.ToString();
    }

    // Filters.

    public static object? ApplyFilter(Renderer renderer, string name, object? value, CallArguments arguments)
    {
        switch (name)
        {
            case "default" or "d":
                object? fallback = arguments.Get(0, "default_value", "");
                bool boolean = Py.IsTrue(arguments.Get(1, "boolean", false));
                return value is Undefined || boolean && !Py.IsTrue(value) ? fallback : value;
            case "length" or "count": return Py.Length(value);
            case "safe": return value;
            case "string": return Py.Str(value);
            case "tojson": return Json.Serialize(value, arguments);
            case "list": return new List<object?>(Py.Iterate(value));
            case "items":
                if (value is Undefined) return new List<object?>();
                if (value is not JinjaDict mapping) throw new TemplateRuntimeException($"items filter: can only get items from a mapping, not {Py.TypeName(value)}");
                return Items(mapping);
            case "first":
                var firstOf = Py.Iterate(value);
                return firstOf.Count > 0 ? firstOf[0] : new Undefined("No first item, sequence was empty.");
            case "last":
                var lastOf = Py.Iterate(value);
                return lastOf.Count > 0 ? lastOf[^1] : new Undefined("No last item, sequence was empty.");
            case "reverse":
                if (value is string forward) return string.Concat(Py.Iterate(forward).Reverse().Select(c => (string)c!));
                return Py.Iterate(value).Reverse().ToList();
            case "join":
                string separator = Py.Str(arguments.Get(0, "d", ""));
                object? joinAttribute = arguments.Get(1, "attribute", null);
                return string.Join(separator, Py.Iterate(value).Select(item => Py.Str(joinAttribute is null ? item : GetItem(item, joinAttribute))));
            case "map": return Map(renderer, value, arguments);
            case "select" or "reject": return SelectByTest(value, arguments, name == "select", byAttribute: false);
            case "selectattr" or "rejectattr": return SelectByTest(value, arguments, name == "selectattr", byAttribute: true);
            case "sort": return Sort(value, arguments);
            case "dictsort":
                if (value is not JinjaDict sortable) throw new TemplateRuntimeException($"dictsort filter: a mapping is needed, not {Py.TypeName(value)}");
                bool byValue = Py.Str(arguments.Get(1, "by", "key")) == "value";
                return Items(sortable).OrderBy(pair => SortKey(GetItem(pair, byValue ? 1L : 0L), caseSensitive: Py.IsTrue(arguments.Get(0, "case_sensitive", false))), PyOrder.Instance).ToList();
            case "unique": return Unique(value, arguments);
            case "min" or "max": return Extreme(value, arguments, name == "max");
            case "sum":
                object? total = arguments.Get(1, "start", 0L);
                object? sumAttribute = arguments.Get(0, "attribute", null);
                foreach (object? item in Py.Iterate(value)) total = Arithmetic("+", total, sumAttribute is null ? item : GetItem(item, sumAttribute));
                return total;
            case "abs":
                Py.ThrowIfUndefined(value);
                return value switch
                {
                    long l => (object)Math.Abs(l),
                    double d => Math.Abs(d),
                    bool b => b ? 1L : 0L,
                    _ => throw new TemplateRuntimeException($"bad operand type for abs(): '{Py.TypeName(value)}'"),
                };
            case "int": return ToInteger(value, arguments.Get(0, "default", 0L));
            case "float": return ToFloat(value, arguments.Get(0, "default", 0.0));
            case "round": return Round(value, arguments);
            case "escape" or "e": return Escape(Py.Str(value));
        }

        // The rest work on the value as text.
        string text = Py.Str(value);
        switch (name)
        {
            case "trim": return Strip(text, OptionalString(arguments, 0, "chars"), start: true, end: true);
            case "upper": return text.ToUpperInvariant();
            case "lower": return text.ToLowerInvariant();
            case "capitalize": return Capitalize(text);
            case "title": return Title(text);
            case "replace":
                long limit = arguments.Get(2, "count", null) is { } count ? Py.AsInteger(count) ?? -1 : -1;
                return Replace(text, Py.Str(arguments.Get(0, "old", "")), Py.Str(arguments.Get(1, "new", "")), limit);
            case "indent": return Indent(text, arguments);
            default: throw new InvalidOperationException(name);
        }
    }

    private static List<object?> Map(Renderer renderer, object? value, CallArguments arguments)
    {
        var items = Py.Iterate(value);
        var mapped = new List<object?>(items.Count);
        if (arguments.Get(int.MaxValue, "attribute", null) is { } attribute)
        {
            object? fallback = arguments.Get(int.MaxValue, "default", null);
            foreach (object? item in items)
            {
                object? found = GetItem(item, attribute);
                mapped.Add(found is Undefined && fallback is not null ? fallback : found);
            }
            return mapped;
        }
        if (arguments.Count == 0 || arguments.Positional[0] is not string filter || !FilterNames.Contains(filter))
            throw new TemplateRuntimeException("map filter: give attribute='name' or the name of a filter");
        var rest = new CallArguments(arguments.Positional.Skip(1).ToList(), arguments.Keywords);
        foreach (object? item in items) mapped.Add(ApplyFilter(renderer, filter, item, rest));
        return mapped;
    }

    private static List<object?> SelectByTest(object? value, CallArguments arguments, bool keep, bool byAttribute)
    {
        int testAt = byAttribute ? 1 : 0;
        object? attribute = byAttribute ? arguments.Get(0, "attribute", null) : null;
        string? test = arguments.Count > testAt ? arguments.Positional[testAt] as string : null;
        if (arguments.Count > testAt && test is null) throw new TemplateRuntimeException("the test to select by must be named by a string");
        if (test is not null && !TestNames.Contains(test)) throw new TemplateRuntimeException($"no test named '{test}'");
        var testArguments = new CallArguments(arguments.Positional.Skip(testAt + 1).ToList(), []);
        var selected = new List<object?>();
        foreach (object? item in Py.Iterate(value))
        {
            object? subject = byAttribute ? GetItem(item, attribute) : item;
            bool passes = test is null ? Py.IsTrue(subject) : ApplyTest(test, subject, testArguments);
            if (passes == keep) selected.Add(item);
        }
        return selected;
    }

    private static List<object?> Sort(object? value, CallArguments arguments)
    {
        bool reverse = Py.IsTrue(arguments.Get(0, "reverse", false));
        bool caseSensitive = Py.IsTrue(arguments.Get(1, "case_sensitive", false));
        object? attribute = arguments.Get(2, "attribute", null);
        var sorted = Py.Iterate(value)
            .OrderBy(item => SortKey(attribute is null ? item : GetItem(item, attribute), caseSensitive), PyOrder.Instance)
            .ToList();
        if (reverse) sorted.Reverse();
        return sorted;
    }

    private static List<object?> Unique(object? value, CallArguments arguments)
    {
        bool caseSensitive = Py.IsTrue(arguments.Get(0, "case_sensitive", false));
        object? attribute = arguments.Get(1, "attribute", null);
        var seen = new List<object?>();
        var unique = new List<object?>();
        foreach (object? item in Py.Iterate(value))
        {
            object? key = SortKey(attribute is null ? item : GetItem(item, attribute), caseSensitive);
            if (seen.Exists(other => Py.AreEqual(other, key))) continue;
            seen.Add(key);
            unique.Add(item);
        }
        return unique;
    }

    private static object? Extreme(object? value, CallArguments arguments, bool largest)
    {
        bool caseSensitive = Py.IsTrue(arguments.Get(0, "case_sensitive", false));
        object? attribute = arguments.Get(1, "attribute", null);
        object? best = null, bestKey = null;
        bool any = false;
        foreach (object? item in Py.Iterate(value))
        {
            object? key = SortKey(attribute is null ? item : GetItem(item, attribute), caseSensitive);
            if (!any || Py.Compare(key, bestKey, largest ? ">" : "<") * (largest ? 1 : -1) > 0)
            {
                best = item;
                bestKey = key;
                any = true;
            }
        }
        return any ? best : new Undefined($"No {(largest ? "largest" : "smallest")} item, sequence was empty.");
    }

    private static object? SortKey(object? value, bool caseSensitive) => !caseSensitive && value is string s ? s.ToLowerInvariant() : value;

    private sealed class PyOrder : IComparer<object?>
    {
        public static readonly PyOrder Instance = new();

        public int Compare(object? x, object? y) => Py.Compare(x, y, "<");
    }

    private static object? ToInteger(object? value, object? fallback)
    {
        switch (value)
        {
            case long or bool: return Py.AsInteger(value);
            case double d when !double.IsNaN(d) && !double.IsInfinity(d): return (long)Math.Truncate(d);
            case string s:
                string trimmed = s.Trim().Replace("_", "", StringComparison.Ordinal);
                if (long.TryParse(trimmed, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long parsed)) return parsed;
                if (double.TryParse(trimmed, NumberStyles.Float, CultureInfo.InvariantCulture, out double real) && !double.IsInfinity(real) && !double.IsNaN(real))
                    return (long)Math.Truncate(real);
                return fallback;
            default: return fallback;
        }
    }

    private static object? ToFloat(object? value, object? fallback) => value switch
    {
        long or bool => Py.ToDouble(value),
        double => value,
        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double parsed) => parsed,
        _ => fallback,
    };

    private static double Round(object? value, CallArguments arguments)
    {
        Py.ThrowIfUndefined(value);
        if (!Py.IsNumber(value)) throw new TemplateRuntimeException($"round filter: a number is needed, not {Py.TypeName(value)}");
        int precision = (int)(Py.AsInteger(arguments.Get(0, "precision", 0L)) ?? 0);
        string method = Py.Str(arguments.Get(1, "method", "common"));
        double number = Py.ToDouble(value), scale = Math.Pow(10, precision);
        return method switch
        {
            // Jinja's "common" is Python's round(): halves go to the even neighbour.
            "common" => Math.Round(number, Math.Clamp(precision, 0, 15), MidpointRounding.ToEven),
            "ceil" => Math.Ceiling(number * scale) / scale,
            "floor" => Math.Floor(number * scale) / scale,
            _ => throw new TemplateRuntimeException("round filter: method must be 'common', 'ceil' or 'floor'"),
        };
    }

    private static string Escape(string text) => text
        .Replace("&", "&amp;", StringComparison.Ordinal).Replace("<", "&lt;", StringComparison.Ordinal)
        .Replace(">", "&gt;", StringComparison.Ordinal).Replace("\"", "&#34;", StringComparison.Ordinal)
        .Replace("'", "&#39;", StringComparison.Ordinal);

    private static string Indent(string text, CallArguments arguments)
    {
        object? width = arguments.Get(0, "width", 4L);
        string pad = width is string s ? s : new string(' ', (int)(Py.AsInteger(width) ?? 4));
        bool first = Py.IsTrue(arguments.Get(1, "first", false));
        bool blank = Py.IsTrue(arguments.Get(2, "blank", false));
        var lines = text.Split('\n');
        var result = new StringBuilder();
        for (int i = 0; i < lines.Length; i++)
        {
            if (i > 0) result.Append('\n');
            bool indent = (i > 0 || first) && (blank || lines[i].Length > 0);
            if (indent) result.Append(pad);
            result.Append(lines[i]);
        }
        return result.ToString();
    }

    // Tests.

    public static bool ApplyTest(string name, object? value, CallArguments arguments)
    {
        object? Other() => arguments.Count > 0 ? arguments.Positional[0] : throw new TemplateRuntimeException($"the test '{name}' needs an argument");
        switch (name)
        {
            case "defined": return value is not Undefined;
            case "undefined": return value is Undefined;
            case "none": return value is null;
            case "boolean": return value is bool;
            case "true": return value is true;
            case "false": return value is false;
            case "integer": return value is long;
            case "float": return value is double;
            case "number": return value is long or double or bool;
            case "string": return value is string;
            case "mapping": return value is JinjaDict;
            case "iterable": return value is string or List<object?> or JinjaDict or Undefined or Namespace;
            case "sequence": return value is string or List<object?> or JinjaDict;
            case "callable": return value is GlobalFunction or BoundMethod or Macro;
            case "escaped": return false;
            case "lower": return value is string lower && !lower.Any(char.IsUpper);
            case "upper": return value is string upper && !upper.Any(char.IsLower);
            case "odd" or "even":
                long number = Py.AsInteger(value) ?? throw new TemplateRuntimeException($"the test '{name}' needs an integer, not {Py.TypeName(value)}");
                return (Math.Abs(number) % 2 == 1) == (name == "odd");
            case "divisibleby":
                long dividend = Py.AsInteger(value) ?? throw new TemplateRuntimeException($"divisibleby needs an integer, not {Py.TypeName(value)}");
                long divisor = Py.AsInteger(Other()) ?? throw new TemplateRuntimeException("divisibleby needs an integer divisor");
                if (divisor == 0) throw new TemplateRuntimeException("integer division or modulo by zero");
                return dividend % divisor == 0;
            case "sameas":
                object? other = Other();
                return value is null || other is null || value is bool || other is bool ? Equals(value, other) : ReferenceEquals(value, other);
            case "in": return Contains(Other(), value);
            case "eq" or "equalto" or "==": return Compare("==", value, Other());
            case "ne" or "!=": return Compare("!=", value, Other());
            case "lt" or "lessthan" or "<": return Compare("<", value, Other());
            case "le" or "<=": return Compare("<=", value, Other());
            case "gt" or "greaterthan" or ">": return Compare(">", value, Other());
            case "ge" or ">=": return Compare(">=", value, Other());
            default: throw new TemplateRuntimeException($"no test named '{name}'");
        }
    }
}
