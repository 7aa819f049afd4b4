namespace Kiln.Chat.Jinja;

// The syntax tree the parser builds and the renderer walks. Every node knows where it starts in the template, so an
// error while rendering names the line and column of the expression or statement that failed.

internal abstract record Node(int Line, int Column);

// Statements.

internal sealed record OutputText(string Text, int Line, int Column) : Node(Line, Column);

internal sealed record Print(Expression Value, int Line, int Column) : Node(Line, Column);

internal sealed record IfStatement(IReadOnlyList<(Expression Condition, IReadOnlyList<Node> Body)> Branches, IReadOnlyList<Node> Otherwise, int Line, int Column)
    : Node(Line, Column);

/// <param name="Target">The loop variable, or names to unpack each item into.</param>
/// <param name="Iterable">What is iterated.</param>
/// <param name="Filter">The <c>if</c> after the iterable: items it rejects are not iterated (nor counted by loop.length).</param>
/// <param name="Body">Rendered once per item.</param>
/// <param name="Otherwise">The <c>else</c> body, rendered when nothing was iterated.</param>
/// <param name="Line">Where the <c>for</c> tag starts: line.</param>
/// <param name="Column">Where the <c>for</c> tag starts: column.</param>
internal sealed record ForStatement(AssignTarget Target, Expression Iterable, Expression? Filter, IReadOnlyList<Node> Body, IReadOnlyList<Node> Otherwise, int Line, int Column)
    : Node(Line, Column);

internal sealed record SetStatement(AssignTarget Target, Expression Value, int Line, int Column) : Node(Line, Column);

/// <summary><c>{% set name %}...{% endset %}</c>: the rendered body becomes the value.</summary>
internal sealed record SetBlock(AssignTarget Target, IReadOnlyList<Node> Body, int Line, int Column) : Node(Line, Column);

internal sealed record MacroDefinition(string Name, IReadOnlyList<(string Name, Expression? Default)> Parameters, IReadOnlyList<Node> Body, int Line, int Column)
    : Node(Line, Column);

internal sealed record LoopControl(bool IsBreak, int Line, int Column) : Node(Line, Column);

/// <summary>transformers' <c>{% generation %}</c> tag, which marks assistant text for training masks: renders its body.</summary>
internal sealed record GenerationBlock(IReadOnlyList<Node> Body, int Line, int Column) : Node(Line, Column);

/// <summary>Where a for loop or a set puts values: a name, several names unpacked, or a namespace's attribute.</summary>
internal abstract record AssignTarget(int Line, int Column);

internal sealed record NameTarget(string Name, int Line, int Column) : AssignTarget(Line, Column);

internal sealed record TupleTarget(IReadOnlyList<NameTarget> Names, int Line, int Column) : AssignTarget(Line, Column);

internal sealed record AttributeTarget(string Owner, string Attribute, int Line, int Column) : AssignTarget(Line, Column);

// Expressions.

internal abstract record Expression(int Line, int Column) : Node(Line, Column);

internal sealed record Constant(object? Value, int Line, int Column) : Expression(Line, Column);

internal sealed record Variable(string Name, int Line, int Column) : Expression(Line, Column);

/// <summary><c>[a, b]</c>, or a tuple: <c>(a, b)</c>, <c>a, b</c>.</summary>
internal sealed record ListLiteral(IReadOnlyList<Expression> Items, bool IsTuple, int Line, int Column) : Expression(Line, Column);

internal sealed record DictLiteral(IReadOnlyList<(Expression Key, Expression Value)> Entries, int Line, int Column) : Expression(Line, Column);

/// <summary><c>owner.name</c>: an attribute first, then an item (Jinja's getattr).</summary>
internal sealed record GetAttribute(Expression Owner, string Name, int Line, int Column) : Expression(Line, Column);

/// <summary><c>owner[key]</c>: an item first, then an attribute (Jinja's getitem).</summary>
internal sealed record GetItem(Expression Owner, Expression Key, int Line, int Column) : Expression(Line, Column);

internal sealed record Slice(Expression Owner, Expression? Start, Expression? Stop, Expression? Step, int Line, int Column) : Expression(Line, Column);

internal sealed record Call(Expression Callee, IReadOnlyList<Expression> Arguments, IReadOnlyList<(string Name, Expression Value)> Keywords, int Line, int Column)
    : Expression(Line, Column);

internal sealed record FilterCall(Expression Value, string Name, IReadOnlyList<Expression> Arguments, IReadOnlyList<(string Name, Expression Value)> Keywords, int Line, int Column)
    : Expression(Line, Column);

internal sealed record TestCall(Expression Value, string Name, bool Negated, IReadOnlyList<Expression> Arguments, int Line, int Column)
    : Expression(Line, Column);

internal sealed record Unary(string Operator, Expression Operand, int Line, int Column) : Expression(Line, Column);

internal sealed record Binary(string Operator, Expression Left, Expression Right, int Line, int Column) : Expression(Line, Column);

/// <summary><c>a &lt; b &lt;= c</c>: each comparison with the next operand, all of which must hold.</summary>
internal sealed record Comparison(Expression First, IReadOnlyList<(string Operator, Expression Operand)> Rest, int Line, int Column) : Expression(Line, Column);

/// <summary><c>a if condition else b</c>; without else, an undefined value.</summary>
internal sealed record Conditional(Expression Condition, Expression WhenTrue, Expression? WhenFalse, int Line, int Column) : Expression(Line, Column);

/// <summary>A macro, as a value: calling it renders its body with the arguments bound.</summary>
internal sealed record Macro(MacroDefinition Definition, Scope Closure);
