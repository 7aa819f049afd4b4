using System.Text;

namespace Kiln.Chat.Jinja;

/// <summary>
/// Variables by name, with the scope they were made in as parent: the environment's globals, the render's variables,
/// then one scope per iteration of a for loop and per macro call. A loop's <c>set</c> lasts for its iteration only,
/// as in Jinja (which is why templates carry state across iterations and out of loops in a namespace).
/// </summary>
internal sealed class Scope
{
    private readonly Dictionary<string, object?> _values = new(StringComparer.Ordinal);

    public Scope(Scope? parent) => Parent = parent;

    public Scope? Parent { get; }

    public bool TryGet(string name, out object? value)
    {
        for (var scope = this; scope is not null; scope = scope.Parent)
        {
            if (scope._values.TryGetValue(name, out value)) return true;
        }
        value = null;
        return false;
    }

    public void Set(string name, object? value) => _values[name] = value;
}

/// <summary>Renders a parsed template: walks the statements, evaluating expressions with Python's meaning.</summary>
internal sealed class Renderer
{
    private readonly int _maxMacroDepth;
    private StringBuilder _output = new();
    private int _macroDepth;

    private Renderer(Func<DateTime> now, int maxMacroDepth)
    {
        Now = now;
        _maxMacroDepth = maxMacroDepth;
    }

    /// <summary>The clock strftime_now reads.</summary>
    public Func<DateTime> Now { get; }

    public static string Render(IReadOnlyList<Node> template, Scope variables, Func<DateTime> now, int maxMacroDepth)
    {
        var renderer = new Renderer(now, maxMacroDepth);
        renderer.Execute(template, variables);
        return renderer._output.ToString();
    }

    private enum Flow
    {
        Normal,
        Break,
        Continue,
    }

    private Flow Execute(IReadOnlyList<Node> body, Scope scope)
    {
        foreach (var node in body)
        {
            var flow = Execute(node, scope);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    private Flow Execute(Node node, Scope scope)
    {
        try
        {
            switch (node)
            {
                case OutputText text:
                    _output.Append(text.Text);
                    return Flow.Normal;
                case Print print:
                    _output.Append(Py.Str(Evaluate(print.Value, scope)));
                    return Flow.Normal;
                case IfStatement conditional:
                    foreach (var (condition, body) in conditional.Branches)
                    {
                        if (Py.IsTrue(Evaluate(condition, scope))) return Execute(body, scope);
                    }
                    return Execute(conditional.Otherwise, scope);
                case ForStatement loop:
                    RunLoop(loop, scope);
                    return Flow.Normal;
                case SetStatement set:
                    Assign(set.Target, Evaluate(set.Value, scope), scope);
                    return Flow.Normal;
                case SetBlock setBlock:
                    Assign(setBlock.Target, RenderToString(setBlock.Body, scope), scope);
                    return Flow.Normal;
                case MacroDefinition macro:
                    scope.Set(macro.Name, new Macro(macro, scope));
                    return Flow.Normal;
                case LoopControl control:
                    return control.IsBreak ? Flow.Break : Flow.Continue;
                case GenerationBlock generation:
                    return Execute(generation.Body, scope);
                default:
                    throw new InvalidOperationException($"Unknown statement {node.GetType().Name}.");
            }
        }
        catch (TemplateRuntimeException error)
        {
            Locate(error, node);
            throw;
        }
    }

    private static void Locate(TemplateRuntimeException error, Node node)
    {
        if (error.Line != 0) return;
        error.Line = node.Line;
        error.Column = node.Column;
    }

    private string RenderToString(IReadOnlyList<Node> body, Scope scope)
    {
        var outer = _output;
        _output = new StringBuilder();
        try
        {
            Execute(body, scope);
            return _output.ToString();
        }
        finally
        {
            _output = outer;
        }
    }

    private void RunLoop(ForStatement loop, Scope scope)
    {
        var source = Iterate(loop.Iterable, scope);
        IReadOnlyList<object?> items = source;
        if (loop.Filter is not null)
        {
            var kept = new List<object?>();
            foreach (object? item in source)
            {
                var filterScope = new Scope(scope);
                Assign(loop.Target, item, filterScope);
                if (Py.IsTrue(Evaluate(loop.Filter, filterScope))) kept.Add(item);
            }
            items = kept;
        }
        if (items.Count == 0)
        {
            Execute(loop.Otherwise, scope);
            return;
        }

        var state = new LoopState(items);
        for (int i = 0; i < items.Count; i++)
        {
            // Each iteration starts afresh from the enclosing scope: what one set, the next does not see.
            var iterationScope = new Scope(scope);
            iterationScope.Set("loop", state);
            state.Index0 = i;
            Assign(loop.Target, items[i], iterationScope);
            if (Execute(loop.Body, iterationScope) == Flow.Break) break;
        }
    }

    private IReadOnlyList<object?> Iterate(Expression iterable, Scope scope)
    {
        object? value = Evaluate(iterable, scope);
        try
        {
            return Py.Iterate(value);
        }
        catch (TemplateRuntimeException error)
        {
            Locate(error, iterable);
            throw;
        }
    }

    private void Assign(AssignTarget target, object? value, Scope scope)
    {
        try
        {
            AssignCore(target, value, scope);
        }
        catch (TemplateRuntimeException error)
        {
            if (error.Line == 0)
            {
                error.Line = target.Line;
                error.Column = target.Column;
            }
            throw;
        }
    }

    private static void AssignCore(AssignTarget target, object? value, Scope scope)
    {
        switch (target)
        {
            case NameTarget name:
                scope.Set(name.Name, value);
                break;
            case TupleTarget tuple:
                var items = Py.Iterate(value);
                if (items.Count != tuple.Names.Count)
                {
                    throw new TemplateRuntimeException(items.Count > tuple.Names.Count
                        ? $"too many values to unpack (expected {tuple.Names.Count})"
                        : $"not enough values to unpack (expected {tuple.Names.Count}, got {items.Count})");
                }
                for (int i = 0; i < items.Count; i++) scope.Set(tuple.Names[i].Name, items[i]);
                break;
            case AttributeTarget attribute:
                if (!scope.TryGet(attribute.Owner, out object? owner) || owner is not Namespace ns)
                    throw new TemplateRuntimeException($"cannot assign attribute '{attribute.Attribute}' on '{attribute.Owner}': it is not a namespace()");
                ns.Attributes[attribute.Attribute] = value;
                break;
        }
    }

    public object? Evaluate(Expression expression, Scope scope)
    {
        try
        {
            return EvaluateCore(expression, scope);
        }
        catch (TemplateRuntimeException error)
        {
            Locate(error, expression);
            throw;
        }
    }

    private object? EvaluateCore(Expression expression, Scope scope)
    {
        switch (expression)
        {
            case Constant constant:
                return constant.Value;
            case Variable variable:
                return scope.TryGet(variable.Name, out object? value) ? value : Undefined.Variable(variable.Name);
            case ListLiteral list:
                var items = list.IsTuple ? new PyTuple() : new List<object?>(list.Items.Count);
                foreach (var item in list.Items) items.Add(Evaluate(item, scope));
                return items;
            case DictLiteral literal:
                var dict = new JinjaDict();
                foreach (var (key, entry) in literal.Entries) dict.Set(Evaluate(key, scope), Evaluate(entry, scope));
                return dict;
            case GetAttribute attribute:
                return Builtins.GetAttribute(Evaluate(attribute.Owner, scope), attribute.Name);
            case GetItem item:
                return Builtins.GetItem(Evaluate(item.Owner, scope), Evaluate(item.Key, scope));
            case Slice slice:
                return Builtins.Slice(Evaluate(slice.Owner, scope),
                    slice.Start is null ? null : Evaluate(slice.Start, scope),
                    slice.Stop is null ? null : Evaluate(slice.Stop, scope),
                    slice.Step is null ? null : Evaluate(slice.Step, scope));
            case Call call:
                return Invoke(Evaluate(call.Callee, scope), EvaluateArguments(call.Arguments, call.Keywords, scope));
            case FilterCall filter:
                return Builtins.ApplyFilter(this, filter.Name, Evaluate(filter.Value, scope), EvaluateArguments(filter.Arguments, filter.Keywords, scope));
            case TestCall test:
                bool passed = Builtins.ApplyTest(test.Name, Evaluate(test.Value, scope), EvaluateArguments(test.Arguments, [], scope));
                return passed != test.Negated;
            case Unary unary:
                return EvaluateUnary(unary, scope);
            case Binary binary:
                return EvaluateBinary(binary, scope);
            case Comparison comparison:
                object? left = Evaluate(comparison.First, scope);
                foreach (var (op, operand) in comparison.Rest)
                {
                    object? right = Evaluate(operand, scope);
                    if (!Builtins.Compare(op, left, right)) return false;
                    left = right;
                }
                return true;
            case Conditional conditional:
                if (Py.IsTrue(Evaluate(conditional.Condition, scope))) return Evaluate(conditional.WhenTrue, scope);
                return conditional.WhenFalse is null
                    ? new Undefined("the inline if-expression evaluated to false and no else section was defined")
                    : Evaluate(conditional.WhenFalse, scope);
            default:
                throw new InvalidOperationException($"Unknown expression {expression.GetType().Name}.");
        }
    }

    private CallArguments EvaluateArguments(IReadOnlyList<Expression> positional, IReadOnlyList<(string Name, Expression Value)> keywords, Scope scope)
    {
        var values = new List<object?>(positional.Count);
        foreach (var argument in positional) values.Add(Evaluate(argument, scope));
        var named = new List<KeyValuePair<string, object?>>(keywords.Count);
        foreach (var (name, argument) in keywords) named.Add(new(name, Evaluate(argument, scope)));
        return new CallArguments(values, named);
    }

    private object? EvaluateUnary(Unary unary, Scope scope)
    {
        object? operand = Evaluate(unary.Operand, scope);
        switch (unary.Operator)
        {
            case "not":
                return !Py.IsTrue(operand);
            case "-":
                Py.ThrowIfUndefined(operand);
                return operand switch
                {
                    long l => (object)checked(-l),
                    double d => -d,
                    bool b => b ? -1L : 0L,
                    _ => throw new TemplateRuntimeException($"bad operand type for unary -: '{Py.TypeName(operand)}'"),
                };
            default:
                Py.ThrowIfUndefined(operand);
                return operand switch
                {
                    long or double => operand,
                    bool b => b ? 1L : 0L,
                    _ => throw new TemplateRuntimeException($"bad operand type for unary +: '{Py.TypeName(operand)}'"),
                };
        }
    }

    private object? EvaluateBinary(Binary binary, Scope scope)
    {
        object? left = Evaluate(binary.Left, scope);
        // "and" and "or" give back an operand, not a bool, and skip the right one when the left decides.
        switch (binary.Operator)
        {
            case "and": return Py.IsTrue(left) ? Evaluate(binary.Right, scope) : left;
            case "or": return Py.IsTrue(left) ? left : Evaluate(binary.Right, scope);
        }
        return Builtins.Arithmetic(binary.Operator, left, Evaluate(binary.Right, scope));
    }

    /// <summary>Calls a function value: a global, a method, a macro.</summary>
    public object? Invoke(object? callee, CallArguments arguments) => callee switch
    {
        GlobalFunction function => Builtins.CallGlobal(this, function.Name, arguments),
        BoundMethod method => Builtins.CallMethod(method, arguments),
        Macro macro => CallMacro(macro, arguments),
        Undefined undefined => throw new TemplateRuntimeException(undefined.Hint),
        _ => throw new TemplateRuntimeException($"'{Py.TypeName(callee)}' object is not callable"),
    };

    private string CallMacro(Macro macro, CallArguments arguments)
    {
        var definition = macro.Definition;
        if (arguments.Count > definition.Parameters.Count)
            throw new TemplateRuntimeException($"macro '{definition.Name}' takes not more than {definition.Parameters.Count} argument(s)");
        var scope = new Scope(macro.Closure);
        for (int i = 0; i < definition.Parameters.Count; i++)
        {
            var (name, fallback) = definition.Parameters[i];
            object? value = arguments.Get(i, name, Undefined.Variable(name));
            if (value is Undefined && fallback is not null) value = Evaluate(fallback, scope);
            scope.Set(name, value);
        }
        foreach (var keyword in arguments.Keywords)
        {
            if (!definition.Parameters.Any(p => p.Name == keyword.Key))
                throw new TemplateRuntimeException($"macro '{definition.Name}' takes no keyword argument '{keyword.Key}'");
        }
        if (_macroDepth == _maxMacroDepth)
            throw new TemplateRuntimeException($"macro '{definition.Name}' nests deeper than {_maxMacroDepth} calls");
        _macroDepth++;
        try
        {
            return RenderToString(definition.Body, scope);
        }
        finally
        {
            _macroDepth--;
        }
    }
}
