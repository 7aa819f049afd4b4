namespace Kiln.Chat.Jinja;

/// <summary>
/// Builds the syntax tree from tokens by recursive descent, with Jinja's grammar and operator precedence (loosest
/// first): <c>x if c else y</c>, <c>or</c>, <c>and</c>, <c>not</c>, comparisons and <c>in</c>, <c>+ -</c>,
/// <c>~</c>, <c>* / // %</c>, <c>**</c>, unary <c>- +</c>; filters (<c>|</c>) and tests (<c>is</c>) bind to the
/// primary before them, after its attributes, items and calls.
/// </summary>
internal sealed class Parser
{
    private static readonly HashSet<string> ComparisonOperators = ["==", "!=", "<", ">", "<=", ">="];

    private readonly List<Token> _tokens;
    private int _next;

    // The blocks open around the statement being parsed, innermost last, for "was looking for" errors.
    private readonly List<(string Tag, Token At)> _openBlocks = [];

    private Parser(List<Token> tokens) => _tokens = tokens;

    public static IReadOnlyList<Node> Parse(string source)
    {
        var parser = new Parser(Lexer.Tokenize(source));
        return parser.ParseStatements([]);
    }

    private Token Current => _tokens[_next];

    private Token Peek(int ahead = 1) => _tokens[Math.Min(_next + ahead, _tokens.Count - 1)];

    private Token Advance() => _tokens[_next++];

    /// <summary>Statements up to a block tag named in <paramref name="endTags"/> (left unread) or the end of the template.</summary>
    private List<Node> ParseStatements(string[] endTags)
    {
        var body = new List<Node>();
        while (true)
        {
            var token = Current;
            switch (token.Kind)
            {
                case TokenKind.EndOfTemplate:
                    if (endTags.Length > 0) throw UnclosedBlock(token, endTags);
                    return body;
                case TokenKind.Data:
                    Advance();
                    body.Add(new OutputText(token.Text, token.Line, token.Column));
                    break;
                case TokenKind.VariableBegin:
                    Advance();
                    var value = ParseTuple(withConditional: true);
                    Expect(TokenKind.VariableEnd);
                    body.Add(new Print(value, token.Line, token.Column));
                    break;
                case TokenKind.BlockBegin:
                    var tag = Peek();
                    if (tag.Kind == TokenKind.Name && Array.IndexOf(endTags, tag.Text) >= 0) return body;
                    Advance();
                    body.Add(ParseBlock(token));
                    break;
                default:
                    throw Error(token, $"unexpected {token.Describe()}");
            }
        }
    }

    private Node ParseBlock(Token begin)
    {
        var tag = Current;
        if (tag.Kind != TokenKind.Name) throw Error(tag, $"expected a tag name, got {tag.Describe()}");
        Advance();
        switch (tag.Text)
        {
            case "if": return ParseIf(begin);
            case "for": return ParseFor(begin);
            case "set": return ParseSet(begin);
            case "macro": return ParseMacro(begin);
            case "break" or "continue":
                if (!_openBlocks.Exists(block => block.Tag == "for"))
                    throw Error(tag, $"'{tag.Text}' is only allowed inside a for loop");
                Expect(TokenKind.BlockEnd);
                return new LoopControl(tag.Text == "break", begin.Line, begin.Column);
            case "generation":
                Expect(TokenKind.BlockEnd);
                var body = ParseBody(tag, "generation", ["endgeneration"]);
                ExpectEndTag("endgeneration");
                return new GenerationBlock(body, begin.Line, begin.Column);
            default:
                if (_openBlocks.Count > 0 && (tag.Text.StartsWith("end", StringComparison.Ordinal) || tag.Text is "else" or "elif"))
                    throw UnclosedBlock(tag, []);
                throw Error(tag, $"unknown tag '{tag.Text}'" + (tag.Text.StartsWith("end", StringComparison.Ordinal) ? " (no block is open here)" : ""));
        }
    }

    private List<Node> ParseBody(Token opener, string tag, string[] endTags)
    {
        _openBlocks.Add((tag, opener));
        var body = ParseStatements(endTags);
        _openBlocks.RemoveAt(_openBlocks.Count - 1);
        return body;
    }

    private IfStatement ParseIf(Token begin)
    {
        var branches = new List<(Expression, IReadOnlyList<Node>)>();
        var opener = _tokens[_next - 1];
        var condition = ParseTuple(withConditional: true);
        Expect(TokenKind.BlockEnd);
        IReadOnlyList<Node> otherwise = [];
        while (true)
        {
            var body = ParseBody(opener, "if", ["elif", "else", "endif"]);
            branches.Add((condition, body));
            Expect(TokenKind.BlockBegin);
            var tag = Advance();
            if (tag.Text == "elif")
            {
                condition = ParseTuple(withConditional: true);
                Expect(TokenKind.BlockEnd);
                continue;
            }
            Expect(TokenKind.BlockEnd);
            if (tag.Text == "else")
            {
                otherwise = ParseBody(opener, "if", ["endif"]);
                ExpectEndTag("endif");
            }
            return new IfStatement(branches, otherwise, begin.Line, begin.Column);
        }
    }

    private ForStatement ParseFor(Token begin)
    {
        var opener = _tokens[_next - 1];
        var target = ParseAssignTarget(allowAttribute: false);
        ExpectName("in");
        var iterable = ParseTuple(withConditional: false);
        Expression? filter = null;
        if (Current.IsName("if"))
        {
            Advance();
            filter = ParseExpression(withConditional: true);
        }
        if (Current.IsName("recursive")) throw Error(Current, "recursive loops are not supported");
        Expect(TokenKind.BlockEnd);
        var body = ParseBody(opener, "for", ["endfor", "else"]);
        IReadOnlyList<Node> otherwise = [];
        Expect(TokenKind.BlockBegin);
        if (Advance().Text == "else")
        {
            Expect(TokenKind.BlockEnd);
            otherwise = ParseBody(opener, "for", ["endfor"]);
            ExpectEndTag("endfor");
        }
        else
        {
            Expect(TokenKind.BlockEnd);
        }
        return new ForStatement(target, iterable, filter, body, otherwise, begin.Line, begin.Column);
    }

    private Node ParseSet(Token begin)
    {
        var opener = _tokens[_next - 1];
        var target = ParseAssignTarget(allowAttribute: true);
        if (Current.IsOperator("="))
        {
            Advance();
            var value = ParseTuple(withConditional: true);
            Expect(TokenKind.BlockEnd);
            return new SetStatement(target, value, begin.Line, begin.Column);
        }
        if (Current.Kind != TokenKind.BlockEnd) throw Error(Current, $"expected '=' or the end of the set tag, got {Current.Describe()}");
        Advance();
        var body = ParseBody(opener, "set", ["endset"]);
        ExpectEndTag("endset");
        return new SetBlock(target, body, begin.Line, begin.Column);
    }

    private MacroDefinition ParseMacro(Token begin)
    {
        var opener = _tokens[_next - 1];
        var name = Expect(TokenKind.Name);
        ExpectOperator("(");
        var parameters = new List<(string, Expression?)>();
        while (!Current.IsOperator(")"))
        {
            if (parameters.Count > 0) ExpectOperator(",");
            if (Current.IsOperator(")")) break;
            var parameter = Expect(TokenKind.Name);
            Expression? fallback = null;
            if (Current.IsOperator("="))
            {
                Advance();
                fallback = ParseExpression(withConditional: true);
            }
            else if (parameters.Exists(p => p.Item2 is not null))
            {
                throw Error(parameter, $"parameter '{parameter.Text}' without a default follows one with a default");
            }
            parameters.Add((parameter.Text, fallback));
        }
        Advance();
        Expect(TokenKind.BlockEnd);
        var body = ParseBody(opener, "macro", ["endmacro"]);
        ExpectEndTag("endmacro");
        return new MacroDefinition(name.Text, parameters, body, begin.Line, begin.Column);
    }

    private AssignTarget ParseAssignTarget(bool allowAttribute)
    {
        var first = Expect(TokenKind.Name);
        if (allowAttribute && Current.IsOperator("."))
        {
            Advance();
            var attribute = Expect(TokenKind.Name);
            return new AttributeTarget(first.Text, attribute.Text, first.Line, first.Column);
        }
        if (!Current.IsOperator(",")) return new NameTarget(first.Text, first.Line, first.Column);
        var names = new List<NameTarget> { new(first.Text, first.Line, first.Column) };
        while (Current.IsOperator(","))
        {
            Advance();
            var name = Expect(TokenKind.Name);
            names.Add(new NameTarget(name.Text, name.Line, name.Column));
        }
        return new TupleTarget(names, first.Line, first.Column);
    }

    private void ExpectEndTag(string name)
    {
        Expect(TokenKind.BlockBegin);
        ExpectName(name);
        Expect(TokenKind.BlockEnd);
    }

    // Expressions.

    /// <summary>An expression, or several separated by commas (a tuple, held as a list).</summary>
    private Expression ParseTuple(bool withConditional)
    {
        var first = Current;
        var items = new List<Expression> { ParseExpression(withConditional) };
        if (!Current.IsOperator(",")) return items[0];
        while (Current.IsOperator(","))
        {
            Advance();
            if (EndsTuple(Current)) break;
            items.Add(ParseExpression(withConditional));
        }
        return new ListLiteral(items, IsTuple: true, first.Line, first.Column);
    }

    private static bool EndsTuple(Token token) =>
        token.Kind is TokenKind.VariableEnd or TokenKind.BlockEnd or TokenKind.EndOfTemplate || token.IsOperator(")");

    private Expression ParseExpression(bool withConditional) => withConditional ? ParseConditional() : ParseOr();

    private Expression ParseConditional()
    {
        var value = ParseOr();
        while (Current.IsName("if"))
        {
            var at = Advance();
            var condition = ParseOr();
            Expression? otherwise = null;
            if (Current.IsName("else"))
            {
                Advance();
                otherwise = ParseConditional();
            }
            value = new Conditional(condition, value, otherwise, at.Line, at.Column);
        }
        return value;
    }

    private Expression ParseOr()
    {
        var left = ParseAnd();
        while (Current.IsName("or"))
        {
            var op = Advance();
            left = new Binary("or", left, ParseAnd(), op.Line, op.Column);
        }
        return left;
    }

    private Expression ParseAnd()
    {
        var left = ParseNot();
        while (Current.IsName("and"))
        {
            var op = Advance();
            left = new Binary("and", left, ParseNot(), op.Line, op.Column);
        }
        return left;
    }

    private Expression ParseNot()
    {
        if (!Current.IsName("not")) return ParseCompare();
        var op = Advance();
        return new Unary("not", ParseNot(), op.Line, op.Column);
    }

    private Expression ParseCompare()
    {
        var first = ParseAdditive();
        var rest = new List<(string, Expression)>();
        while (true)
        {
            if (Current.Kind == TokenKind.Operator && ComparisonOperators.Contains(Current.Text))
            {
                string op = Advance().Text;
                rest.Add((op, ParseAdditive()));
            }
            else if (Current.IsName("in"))
            {
                Advance();
                rest.Add(("in", ParseAdditive()));
            }
            else if (Current.IsName("not") && Peek().IsName("in"))
            {
                Advance();
                Advance();
                rest.Add(("not in", ParseAdditive()));
            }
            else
            {
                break;
            }
        }
        return rest.Count == 0 ? first : new Comparison(first, rest, first.Line, first.Column);
    }

    private Expression ParseAdditive()
    {
        var left = ParseConcat();
        while (Current.IsOperator("+") || Current.IsOperator("-"))
        {
            var op = Advance();
            left = new Binary(op.Text, left, ParseConcat(), op.Line, op.Column);
        }
        return left;
    }

    private Expression ParseConcat()
    {
        var left = ParseMultiplicative();
        while (Current.IsOperator("~"))
        {
            var op = Advance();
            left = new Binary("~", left, ParseMultiplicative(), op.Line, op.Column);
        }
        return left;
    }

    private Expression ParseMultiplicative()
    {
        var left = ParsePower();
        while (Current.Kind == TokenKind.Operator && Current.Text is "*" or "/" or "//" or "%")
        {
            var op = Advance();
            left = new Binary(op.Text, left, ParsePower(), op.Line, op.Column);
        }
        return left;
    }

    private Expression ParsePower()
    {
        var left = ParseUnary(withFilters: true);
        while (Current.IsOperator("**"))
        {
            var op = Advance();
            left = new Binary("**", left, ParseUnary(withFilters: true), op.Line, op.Column);
        }
        return left;
    }

    private Expression ParseUnary(bool withFilters)
    {
        Expression value;
        if (Current.IsOperator("-") || Current.IsOperator("+"))
        {
            var op = Advance();
            value = new Unary(op.Text, ParseUnary(withFilters: false), op.Line, op.Column);
        }
        else
        {
            value = ParsePrimary();
        }
        value = ParsePostfix(value);
        return withFilters ? ParseFiltersAndTests(value) : value;
    }

    private Expression ParsePrimary()
    {
        var token = Advance();
        switch (token.Kind)
        {
            case TokenKind.Name:
                return token.Text switch
                {
                    "true" or "True" => new Constant(true, token.Line, token.Column),
                    "false" or "False" => new Constant(false, token.Line, token.Column),
                    "none" or "None" => new Constant(null, token.Line, token.Column),
                    _ => new Variable(token.Text, token.Line, token.Column),
                };
            case TokenKind.String:
                // Adjacent string literals join, as in Python.
                string text = (string)token.Value!;
                while (Current.Kind == TokenKind.String) text += (string)Advance().Value!;
                return new Constant(text, token.Line, token.Column);
            case TokenKind.Integer or TokenKind.Float:
                return new Constant(token.Value, token.Line, token.Column);
            case TokenKind.Operator when token.Text == "(":
                if (Current.IsOperator(")"))
                {
                    Advance();
                    return new ListLiteral([], IsTuple: true, token.Line, token.Column);
                }
                var inner = ParseTuple(withConditional: true);
                ExpectOperator(")");
                return inner;
            case TokenKind.Operator when token.Text == "[":
                var items = new List<Expression>();
                while (!Current.IsOperator("]"))
                {
                    if (items.Count > 0) ExpectOperator(",");
                    if (Current.IsOperator("]")) break;
                    items.Add(ParseExpression(withConditional: true));
                }
                Advance();
                return new ListLiteral(items, IsTuple: false, token.Line, token.Column);
            case TokenKind.Operator when token.Text == "{":
                var entries = new List<(Expression, Expression)>();
                while (!Current.IsOperator("}"))
                {
                    if (entries.Count > 0) ExpectOperator(",");
                    if (Current.IsOperator("}")) break;
                    var key = ParseExpression(withConditional: true);
                    ExpectOperator(":");
                    entries.Add((key, ParseExpression(withConditional: true)));
                }
                Advance();
                return new DictLiteral(entries, token.Line, token.Column);
            default:
                throw Error(token, $"unexpected {token.Describe()}, expected an expression");
        }
    }

    private Expression ParsePostfix(Expression value)
    {
        while (true)
        {
            var token = Current;
            if (token.IsOperator("."))
            {
                Advance();
                var name = Advance();
                value = name.Kind switch
                {
                    TokenKind.Name => new GetAttribute(value, name.Text, token.Line, token.Column),
                    TokenKind.Integer => new GetItem(value, new Constant(name.Value, name.Line, name.Column), token.Line, token.Column),
                    _ => throw Error(name, $"expected an attribute name after '.', got {name.Describe()}"),
                };
            }
            else if (token.IsOperator("["))
            {
                Advance();
                value = ParseSubscript(value, token);
            }
            else if (token.IsOperator("("))
            {
                Advance();
                var (arguments, keywords) = ParseCallArguments();
                value = new Call(value, arguments, keywords, value.Line, value.Column);
            }
            else
            {
                return value;
            }
        }
    }

    private Expression ParseSubscript(Expression owner, Token open)
    {
        Expression? start = null;
        if (!Current.IsOperator(":")) start = ParseExpression(withConditional: true);
        if (Current.IsOperator("]"))
        {
            Advance();
            return new GetItem(owner, start!, open.Line, open.Column);
        }
        ExpectOperator(":");
        Expression? stop = null, step = null;
        if (!Current.IsOperator("]") && !Current.IsOperator(":")) stop = ParseExpression(withConditional: true);
        if (Current.IsOperator(":"))
        {
            Advance();
            if (!Current.IsOperator("]")) step = ParseExpression(withConditional: true);
        }
        ExpectOperator("]");
        return new Slice(owner, start, stop, step, open.Line, open.Column);
    }

    /// <summary>After "(": positional arguments, then name=value ones, up to the closing ")".</summary>
    private (List<Expression>, List<(string, Expression)>) ParseCallArguments()
    {
        var arguments = new List<Expression>();
        var keywords = new List<(string, Expression)>();
        while (!Current.IsOperator(")"))
        {
            if (arguments.Count + keywords.Count > 0) ExpectOperator(",");
            if (Current.IsOperator(")")) break;
            if (Current.Kind == TokenKind.Name && Peek().IsOperator("="))
            {
                string name = Advance().Text;
                Advance();
                keywords.Add((name, ParseExpression(withConditional: true)));
            }
            else
            {
                if (keywords.Count > 0) throw Error(Current, "a positional argument follows a keyword argument");
                arguments.Add(ParseExpression(withConditional: true));
            }
        }
        Advance();
        return (arguments, keywords);
    }

    private Expression ParseFiltersAndTests(Expression value)
    {
        while (true)
        {
            var token = Current;
            if (token.IsOperator("|"))
            {
                Advance();
                var name = Expect(TokenKind.Name);
                if (!Builtins.FilterNames.Contains(name.Text)) throw Error(name, $"no filter named '{name.Text}'");
                List<Expression> arguments = [];
                List<(string, Expression)> keywords = [];
                if (Current.IsOperator("("))
                {
                    Advance();
                    (arguments, keywords) = ParseCallArguments();
                }
                value = new FilterCall(value, name.Text, arguments, keywords, name.Line, name.Column);
            }
            else if (token.IsName("is"))
            {
                Advance();
                bool negated = false;
                if (Current.IsName("not"))
                {
                    Advance();
                    negated = true;
                }
                var name = Expect(TokenKind.Name);
                if (!Builtins.TestNames.Contains(name.Text)) throw Error(name, $"no test named '{name.Text}'");
                var arguments = new List<Expression>();
                if (Current.IsOperator("("))
                {
                    Advance();
                    var (positional, keywords) = ParseCallArguments();
                    if (keywords.Count > 0) throw Error(name, $"the test '{name.Text}' takes no keyword arguments");
                    arguments = positional;
                }
                else if (TakesBareTestArgument(Current))
                {
                    // "is divisibleby 3", "is sameas false": one argument without parentheses.
                    arguments.Add(ParsePostfix(ParsePrimary()));
                }
                value = new TestCall(value, name.Text, negated, arguments, name.Line, name.Column);
            }
            else if (token.IsOperator("("))
            {
                Advance();
                var (arguments, keywords) = ParseCallArguments();
                value = new Call(value, arguments, keywords, value.Line, value.Column);
            }
            else
            {
                return value;
            }
        }
    }

    private static bool TakesBareTestArgument(Token token) =>
        token.Kind is TokenKind.String or TokenKind.Integer or TokenKind.Float
        || token.Kind == TokenKind.Name && token.Text is not ("else" or "or" or "and" or "if" or "is" or "in" or "not")
        || token.IsOperator("[") || token.IsOperator("{");

    // Expectations and errors.

    private Token Expect(TokenKind kind)
    {
        var token = Current;
        if (token.Kind != kind)
        {
            if (token.Kind == TokenKind.EndOfTemplate && _openBlocks.Count > 0) throw UnclosedBlock(token, []);
            throw Error(token, $"expected {new Token(kind, "", 0, 0).Describe()}, got {token.Describe()}");
        }
        return Advance();
    }

    private void ExpectName(string name)
    {
        var token = Current;
        if (!token.IsName(name)) throw Error(token, $"expected '{name}', got {token.Describe()}");
        Advance();
    }

    private void ExpectOperator(string op)
    {
        var token = Current;
        if (!token.IsOperator(op)) throw Error(token, $"expected '{op}', got {token.Describe()}");
        Advance();
    }

    private ChatTemplateException UnclosedBlock(Token at, string[] expected)
    {
        if (_openBlocks.Count == 0)
            return Error(at, $"unexpected {at.Describe()}; expected {string.Join(" or ", expected.Select(tag => $"'{tag}'"))}");
        var (tag, opener) = _openBlocks[^1];
        string where = at.Kind == TokenKind.EndOfTemplate ? "the template ends" : $"'{at.Text}' comes";
        return Error(at, $"{where} inside the '{tag}' block opened at {opener.Line}:{opener.Column}, which needs 'end{tag}'");
    }

    private static ChatTemplateException Error(Token at, string message) => new(message, at.Line, at.Column);
}
