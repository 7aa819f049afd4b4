using System.Globalization;
using System.Text;

namespace Kiln.Chat.Jinja;

internal enum TokenKind
{
    /// <summary>Template text, already trimmed as the whitespace control around it asks.</summary>
    Data,
    VariableBegin,
    VariableEnd,
    BlockBegin,
    BlockEnd,
    Name,
    String,
    Integer,
    Float,
    Operator,
    EndOfTemplate,
}

/// <summary>One token, where it starts (1-based line and column), and its value (decoded string, long or double).</summary>
internal readonly record struct Token(TokenKind Kind, string Text, int Line, int Column, object? Value = null)
{
    public bool Is(TokenKind kind, string text) => Kind == kind && Text == text;

    public bool IsName(string name) => Is(TokenKind.Name, name);

    public bool IsOperator(string op) => Is(TokenKind.Operator, op);

    /// <summary>How an error message names it: "'endfor'", "end of print statement".</summary>
    public string Describe() => Kind switch
    {
        TokenKind.EndOfTemplate => "end of template",
        TokenKind.VariableEnd => "end of print statement",
        TokenKind.BlockEnd => "end of statement block",
        TokenKind.Data => "template data",
        TokenKind.VariableBegin => "begin of print statement",
        TokenKind.BlockBegin => "begin of statement block",
        _ => $"'{Text}'",
    };
}

/// <summary>
/// Splits a template into tokens, applying whitespace control the way transformers' Jinja environment does:
/// <c>trim_blocks</c> (the newline right after a block or comment tag goes) and <c>lstrip_blocks</c> (spaces and
/// tabs before a block or comment tag on its own line go), <c>-</c> inside a tag strips all whitespace on that side,
/// <c>+</c> keeps it, and one newline at the very end of the template is dropped (no <c>keep_trailing_newline</c>).
/// </summary>
internal sealed class Lexer
{
    private static readonly string[] Operators =
        ["//", "**", "==", "!=", ">=", "<=", "+", "-", "*", "/", "%", "~", "[", "]", "(", ")", "{", "}", "<", ">", "=", ".", ":", "|", ",", ";"];

    private readonly string _source;
    private readonly int[] _lineStarts;
    private readonly List<Token> _tokens = [];
    private int _position;

    // Whether the text matched last ended a line, so that a tag at the start of the next text is on its own line.
    private bool _lineStarting = true;

    private Lexer(string source)
    {
        _source = source;
        var lineStarts = new List<int> { 0 };
        for (int i = 0; i < source.Length; i++)
        {
            if (source[i] == '\n') lineStarts.Add(i + 1);
        }
        _lineStarts = [.. lineStarts];
    }

    public static List<Token> Tokenize(string source)
    {
        // Jinja reads newlines as \n whatever the file used, and drops one trailing newline.
        source = source.Replace("\r\n", "\n", StringComparison.Ordinal).Replace('\r', '\n');
        if (source.EndsWith('\n')) source = source[..^1];
        var lexer = new Lexer(source);
        lexer.Run();
        return lexer._tokens;
    }

    private void Run()
    {
        while (_position < _source.Length)
        {
            int tagStart = FindTagStart(_position);
            if (tagStart < 0)
            {
                _tokens.Add(MakeToken(TokenKind.Data, _source[_position..], _position));
                break;
            }
            char kind = _source[tagStart + 1];
            char modifier = tagStart + 2 < _source.Length && _source[tagStart + 2] is '-' or '+' ? _source[tagStart + 2] : '\0';
            string data = _source[_position..tagStart];
            if (modifier == '-')
            {
                data = data.TrimEnd();
            }
            else if (modifier != '+' && kind != '{')
            {
                data = StripLineBeforeTag(data);
            }
            if (data.Length > 0) _tokens.Add(MakeToken(TokenKind.Data, data, _position));
            _position = tagStart + 2 + (modifier == '\0' ? 0 : 1);

            switch (kind)
            {
                case '#': SkipComment(tagStart); break;
                case '%' when IsRawBlock(): ReadRawBlock(); break;
                case '%': ReadTag(tagStart, TokenKind.BlockBegin, TokenKind.BlockEnd, "%}"); break;
                default: ReadTag(tagStart, TokenKind.VariableBegin, TokenKind.VariableEnd, "}}"); break;
            }
        }
        _tokens.Add(MakeToken(TokenKind.EndOfTemplate, "", _source.Length));
    }

    private int FindTagStart(int from)
    {
        for (int i = _source.IndexOf('{', from); i >= 0 && i + 1 < _source.Length; i = _source.IndexOf('{', i + 1))
        {
            if (_source[i + 1] is '{' or '%' or '#') return i;
        }
        return -1;
    }

    /// <summary>lstrip_blocks: the spaces before a tag that starts its line are not output.</summary>
    private string StripLineBeforeTag(string data)
    {
        int lineStart = data.LastIndexOf('\n') + 1;
        if (lineStart == 0 && !_lineStarting) return data;
        if (lineStart == data.Length) return data;
        for (int i = lineStart; i < data.Length; i++)
        {
            if (!char.IsWhiteSpace(data[i])) return data;
        }
        return data[..lineStart];
    }

    /// <summary>After a tag's end: "-" eats all whitespace, a block's plain end eats one newline (trim_blocks).</summary>
    private void AfterTagEnd(char modifier, bool isBlock)
    {
        int start = _position;
        if (modifier == '-')
        {
            while (_position < _source.Length && char.IsWhiteSpace(_source[_position])) _position++;
        }
        else if (modifier == '\0' && isBlock && _position < _source.Length && _source[_position] == '\n')
        {
            _position++;
        }
        _lineStarting = _position > start && _source[_position - 1] == '\n';
    }

    private void SkipComment(int tagStart)
    {
        int end = _source.IndexOf("#}", _position, StringComparison.Ordinal);
        if (end < 0) throw Error(tagStart, "the comment is never closed: expected '#}'");
        char modifier = end > _position && _source[end - 1] is '-' or '+' ? _source[end - 1] : '\0';
        _position = end + 2;
        AfterTagEnd(modifier, isBlock: true);
    }

    private bool IsRawBlock()
    {
        int at = SkipSpaces(_position);
        return string.CompareOrdinal(_source, at, "raw", 0, 3) == 0 && TryTagEnd(SkipSpaces(at + 3), out _, out _);
    }

    private void ReadRawBlock()
    {
        int at = SkipSpaces(SkipSpaces(_position) + 3);
        TryTagEnd(at, out int afterEnd, out char endModifier);
        _position = afterEnd;
        // Jinja keeps the newline after "{% raw %}" even with trim_blocks; only "-" strips there.
        AfterTagEnd(endModifier == '-' ? '-' : '+', isBlock: true);

        int contentStart = _position;
        for (int tag = _source.IndexOf("{%", _position, StringComparison.Ordinal); tag >= 0; tag = _source.IndexOf("{%", tag + 2, StringComparison.Ordinal))
        {
            char modifier = tag + 2 < _source.Length && _source[tag + 2] is '-' or '+' ? _source[tag + 2] : '\0';
            int name = SkipSpaces(tag + 2 + (modifier == '\0' ? 0 : 1));
            if (string.CompareOrdinal(_source, name, "endraw", 0, 6) != 0) continue;
            if (!TryTagEnd(SkipSpaces(name + 6), out int closeEnd, out char closeModifier)) continue;
            string content = _source[contentStart..tag];
            content = modifier == '-' ? content.TrimEnd() : modifier == '+' ? content : StripLineBeforeTag(content);
            if (content.Length > 0) _tokens.Add(MakeToken(TokenKind.Data, content, contentStart));
            _position = closeEnd;
            AfterTagEnd(closeModifier, isBlock: true);
            return;
        }
        throw Error(contentStart, "the raw block is never closed: expected '{% endraw %}'");
    }

    /// <summary>A block tag's end at <paramref name="at"/>: "%}", "-%}" or "+%}".</summary>
    private bool TryTagEnd(int at, out int after, out char modifier)
    {
        modifier = '\0';
        after = at;
        if (at < _source.Length && _source[at] is '-' or '+')
        {
            modifier = _source[at];
            at++;
        }
        if (string.CompareOrdinal(_source, at, "%}", 0, 2) != 0) return false;
        after = at + 2;
        return true;
    }

    private int SkipSpaces(int at)
    {
        while (at < _source.Length && char.IsWhiteSpace(_source[at])) at++;
        return at;
    }

    private void ReadTag(int tagStart, TokenKind begin, TokenKind end, string closer)
    {
        _tokens.Add(MakeToken(begin, closer == "}}" ? "{{" : "{%", tagStart));
        var brackets = new Stack<(char Close, int At)>();
        while (true)
        {
            _position = SkipSpaces(_position);
            if (_position >= _source.Length)
                throw Error(tagStart, $"the tag is never closed: expected '{closer}'");
            if (brackets.Count == 0)
            {
                char modifier = _source[_position] is '-' or '+' ? _source[_position] : '\0';
                int closerAt = _position + (modifier == '\0' ? 0 : 1);
                if (string.CompareOrdinal(_source, closerAt, closer, 0, 2) == 0 && !(modifier == '+' && closer == "}}"))
                {
                    _tokens.Add(MakeToken(end, closer, _position));
                    _position = closerAt + 2;
                    AfterTagEnd(modifier, isBlock: end == TokenKind.BlockEnd);
                    return;
                }
            }

            char c = _source[_position];
            if (char.IsLetter(c) || c == '_') ReadName();
            else if (char.IsAsciiDigit(c)) ReadNumber();
            else if (c is '\'' or '"') ReadString();
            else ReadOperator(brackets);
        }
    }

    private void ReadName()
    {
        int start = _position;
        while (_position < _source.Length && (char.IsLetterOrDigit(_source[_position]) || _source[_position] == '_')) _position++;
        _tokens.Add(MakeToken(TokenKind.Name, _source[start.._position], start));
    }

    private void ReadNumber()
    {
        int start = _position;
        SkipDigits();
        bool isFloat = false;
        // A fraction needs digits after the point ("1." is the integer 1 and an attribute dot).
        if (_position + 1 < _source.Length && _source[_position] == '.' && char.IsAsciiDigit(_source[_position + 1]))
        {
            isFloat = true;
            _position++;
            SkipDigits();
        }
        if (_position < _source.Length && _source[_position] is 'e' or 'E')
        {
            int exponent = _position + 1;
            if (exponent < _source.Length && _source[exponent] is '+' or '-') exponent++;
            if (exponent < _source.Length && char.IsAsciiDigit(_source[exponent]))
            {
                isFloat = true;
                _position = exponent;
                SkipDigits();
            }
        }
        string text = _source[start.._position];
        string digits = text.Replace("_", "", StringComparison.Ordinal);
        if (isFloat)
        {
            _tokens.Add(MakeToken(TokenKind.Float, text, start, double.Parse(digits, NumberStyles.Float, CultureInfo.InvariantCulture)));
        }
        else
        {
            if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long value))
                throw Error(start, $"the integer {text} is too large");
            _tokens.Add(MakeToken(TokenKind.Integer, text, start, value));
        }
    }

    private void SkipDigits()
    {
        while (_position < _source.Length && (char.IsAsciiDigit(_source[_position])
            || _source[_position] == '_' && _position + 1 < _source.Length && char.IsAsciiDigit(_source[_position + 1])))
            _position++;
    }

    /// <summary>A quoted string, its backslash escapes decoded as Python's unicode_escape does.</summary>
    private void ReadString()
    {
        int start = _position;
        char quote = _source[_position++];
        var value = new StringBuilder();
        while (true)
        {
            if (_position >= _source.Length) throw Error(start, "the string is never closed");
            char c = _source[_position++];
            if (c == quote) break;
            if (c != '\\')
            {
                value.Append(c);
                continue;
            }
            if (_position >= _source.Length) throw Error(start, "the string is never closed");
            char escape = _source[_position++];
            switch (escape)
            {
                case 'n': value.Append('\n'); break;
                case 't': value.Append('\t'); break;
                case 'r': value.Append('\r'); break;
                case '\\': value.Append('\\'); break;
                case '\'': value.Append('\''); break;
                case '"': value.Append('"'); break;
                case 'a': value.Append('\a'); break;
                case 'b': value.Append('\b'); break;
                case 'f': value.Append('\f'); break;
                case 'v': value.Append('\v'); break;
                case '\n': break; // a backslash before a newline continues the line
                case 'x': value.Append(ReadHexEscape(2)); break;
                case 'u': value.Append(ReadHexEscape(4)); break;
                case 'U': value.Append(ReadHexEscape(8)); break;
                case >= '0' and <= '7':
                    int code = escape - '0';
                    for (int i = 0; i < 2 && _position < _source.Length && _source[_position] is >= '0' and <= '7'; i++)
                        code = code * 8 + (_source[_position++] - '0');
                    value.Append((char)code);
                    break;
                default: value.Append('\\').Append(escape); break; // unknown escapes stay as written
            }
        }
        _tokens.Add(MakeToken(TokenKind.String, _source[start.._position], start, value.ToString()));
    }

    private string ReadHexEscape(int digits)
    {
        if (_position + digits > _source.Length
            || !int.TryParse(_source.AsSpan(_position, digits), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int code)
            || code > 0x10FFFF)
            throw Error(_position - 2, $"a \\{_source[_position - 1]} escape needs {digits} hex digits");
        _position += digits;
        return char.ConvertFromUtf32(code);
    }

    private void ReadOperator(Stack<(char Close, int At)> brackets)
    {
        foreach (string op in Operators)
        {
            if (string.CompareOrdinal(_source, _position, op, 0, op.Length) != 0) continue;
            switch (op)
            {
                case "(": brackets.Push((')', _position)); break;
                case "[": brackets.Push((']', _position)); break;
                case "{": brackets.Push(('}', _position)); break;
                case ")" or "]" or "}":
                    if (brackets.Count == 0) throw Error(_position, $"unexpected '{op}'");
                    var (close, openAt) = brackets.Pop();
                    if (close != op[0]) throw Error(_position, $"unexpected '{op}', expected '{close}' to close the one at {Describe(openAt)}");
                    break;
            }
            _tokens.Add(MakeToken(TokenKind.Operator, op, _position));
            _position += op.Length;
            return;
        }
        throw Error(_position, $"unexpected character '{_source[_position]}'");
    }

    private Token MakeToken(TokenKind kind, string text, int offset, object? value = null)
    {
        var (line, column) = Locate(offset);
        return new Token(kind, text, line, column, value);
    }

    private (int Line, int Column) Locate(int offset)
    {
        int line = Array.BinarySearch(_lineStarts, offset);
        if (line < 0) line = ~line - 1;
        return (line + 1, offset - _lineStarts[line] + 1);
    }

    private string Describe(int offset)
    {
        var (line, column) = Locate(offset);
        return $"{line}:{column}";
    }

    private ChatTemplateException Error(int offset, string message)
    {
        var (line, column) = Locate(offset);
        return new ChatTemplateException(message, line, column);
    }
}
