using System.Collections.Generic;
using System.Collections.Immutable;
using System.Globalization;
using System.Linq;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Ir;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using Microsoft.CodeAnalysis.Operations;

namespace Kiln.Generators.Syntax;

internal static partial class ModelExtractor
{
    private const string RopeStyleType = "Kiln.RopeStyle";
    private const string PoolingType = "Kiln.Pooling";

    /// <summary>Tensor operators → the op they are (Kiln.Tensor's operators call these Ops methods).</summary>
    private static readonly Dictionary<string, string> TensorOperators = new()
    {
        ["op_Addition"] = "Add",
        ["op_Subtraction"] = "Sub",
        ["op_Multiply"] = "Mul",
        ["op_Division"] = "Div",
        ["op_UnaryNegation"] = "Neg",
    };

    private sealed partial class Extraction
    {
        private SemanticModel _forwardModel = null!;
        private IParameterSymbol? _tokens;
        private IParameterSymbol? _context;
        private ILocalSymbol? _loopVariable;
        private readonly Dictionary<ILocalSymbol, string> _blockAliases = new(SymbolEqualityComparer.Default);
        private readonly Dictionary<ILocalSymbol, ScalarExpr> _scalarLocals = new(SymbolEqualityComparer.Default);

        private static readonly EquatableArray<ExprInfo> NoArgs = EquatableArray<ExprInfo>.Empty;
        private static readonly EquatableArray<StmtInfo> NoBody = EquatableArray<StmtInfo>.Empty;

        private IMethodSymbol? FindForward()
        {
            var forwards = _type.GetMembers().OfType<IMethodSymbol>().Where(m => FindAttribute(m, ForwardAttribute) is not null).ToArray();
            if (forwards.Length == 0)
            {
                Report(DiagnosticDescriptors.MalformedModel, LocationInfo.From(_declaration.Identifier), _type.Name, "it has no [Forward] method");
                return null;
            }
            if (forwards.Length > 1)
            {
                Report(DiagnosticDescriptors.MalformedModel, MethodLocation(forwards[1]), _type.Name, "it has more than one [Forward] method");
                return null;
            }
            var forward = forwards[0];
            bool ok = !forward.IsStatic && !forward.IsGenericMethod && IsTensor(forward.ReturnType) && forward.Parameters.Length == 2
                && forward.Parameters[0].Type is INamedTypeSymbol { Name: "ReadOnlySpan", TypeArguments.Length: 1 } span
                && span.TypeArguments[0].SpecialType == SpecialType.System_Int32 && span.ContainingNamespace.ToDisplayString() == "System"
                && forward.Parameters[0].RefKind == RefKind.None
                && FullName(forward.Parameters[1].Type) == ContextType && forward.Parameters[1].RefKind == RefKind.None;
            if (!ok)
            {
                Report(DiagnosticDescriptors.MalformedModel, MethodLocation(forward), _type.Name,
                    "the [Forward] method must be an instance method 'Tensor Name(ReadOnlySpan<int> tokens, AttentionContext context)'");
                return null;
            }
            var syntax = forward.DeclaringSyntaxReferences.FirstOrDefault()?.GetSyntax(_cancellationToken) as MethodDeclarationSyntax;
            if (syntax is null || (syntax.Body is null && syntax.ExpressionBody is null))
            {
                Report(DiagnosticDescriptors.MalformedModel, MethodLocation(forward), _type.Name, "the [Forward] method needs a body");
                return null;
            }
            return forward;
        }

        private LocationInfo? MethodLocation(IMethodSymbol method) =>
            method.DeclaringSyntaxReferences.FirstOrDefault()?.GetSyntax(_cancellationToken) is MethodDeclarationSyntax m
                ? LocationInfo.From(m.Identifier)
                : LocationInfo.From(method.Locations.FirstOrDefault());

        private ImmutableArray<StmtInfo> ExtractForward(IMethodSymbol forward)
        {
            var syntax = (MethodDeclarationSyntax)forward.DeclaringSyntaxReferences[0].GetSyntax(_cancellationToken);
            _forwardModel = syntax.SyntaxTree == _semanticModel.SyntaxTree
                ? _semanticModel
                : _semanticModel.Compilation.GetSemanticModel(syntax.SyntaxTree);
            _tokens = forward.Parameters[0];
            _context = forward.Parameters[1];

            if (syntax.ExpressionBody is { } arrow)
            {
                var value = Expression(arrow.Expression);
                return value is null
                    ? ImmutableArray<StmtInfo>.Empty
                    : ImmutableArray.Create(new StmtInfo(StmtKind.Return, "", value, NoBody, "", "", "", LocationInfo.From(arrow.Expression)));
            }

            var statements = Statements(syntax.Body!.Statements, topLevel: true);
            if (statements.Count == 0 || statements[statements.Count - 1].Kind != StmtKind.Return)
            {
                if (!Diagnostics.Any())
                    Report(DiagnosticDescriptors.UnsupportedConstruct, LocationInfo.From(syntax.Identifier), "A [Forward] method without a final return",
                        "end it with 'return <tensor>;'");
            }
            return statements.ToImmutableArray();
        }

        private List<StmtInfo> Statements(IEnumerable<StatementSyntax> statements, bool topLevel)
        {
            var result = new List<StmtInfo>();
            var list = statements.ToList();
            for (int i = 0; i < list.Count; i++)
            {
                _cancellationToken.ThrowIfCancellationRequested();
                var statement = list[i];
                bool last = i == list.Count - 1;
                switch (statement)
                {
                    case EmptyStatementSyntax:
                        break;
                    case LocalDeclarationStatementSyntax local:
                        if (LocalDeclaration(local) is { } declared) result.Add(declared);
                        break;
                    case ExpressionStatementSyntax expression:
                        if (Assignment(expression) is { } assigned) result.Add(assigned);
                        break;
                    case ForStatementSyntax loop when topLevel:
                        if (LayerLoop(loop) is { } region) result.Add(region);
                        break;
                    case ForStatementSyntax loop:
                        Unsupported(loop, "A nested 'for' loop", "only one level of layer loop is compiled, and not inside an 'if'");
                        break;
                    case IfStatementSyntax branch:
                        if (If(branch) is { } conditional) result.Add(conditional);
                        break;
                    case ReturnStatementSyntax { Expression: { } value } ret when topLevel && last:
                        if (Expression(value) is { } returned)
                            result.Add(new StmtInfo(StmtKind.Return, "", returned, NoBody, "", "", "", LocationInfo.From(ret)));
                        break;
                    case ReturnStatementSyntax ret:
                        Unsupported(ret, "This 'return'", "the forward method returns once, as its last statement");
                        break;
                    default:
                        Unsupported(statement, ConstructName(statement), "a forward method is straight-line tensor code with one layer loop and 'if' branches on scalars");
                        break;
                }
            }
            return result;
        }

        private static string ConstructName(SyntaxNode node) => node.Kind() switch
        {
            SyntaxKind.WhileStatement => "A 'while' loop",
            SyntaxKind.DoStatement => "A 'do' loop",
            SyntaxKind.ForEachStatement => "A 'foreach' loop",
            SyntaxKind.SwitchStatement => "A 'switch' statement",
            SyntaxKind.SwitchExpression => "A 'switch' expression",
            SyntaxKind.TryStatement => "A 'try' statement",
            SyntaxKind.ThrowStatement => "A 'throw' statement",
            SyntaxKind.GotoStatement => "A 'goto' statement",
            SyntaxKind.LabeledStatement => "A labeled statement",
            SyntaxKind.UnsafeStatement => "An 'unsafe' block",
            SyntaxKind.FixedStatement => "A 'fixed' statement",
            SyntaxKind.LockStatement => "A 'lock' statement",
            SyntaxKind.UsingStatement => "A 'using' statement",
            SyntaxKind.LocalFunctionStatement => "A local function",
            SyntaxKind.Block => "A nested block",
            SyntaxKind.YieldReturnStatement => "'yield return'",
            SyntaxKind.SimpleLambdaExpression or SyntaxKind.ParenthesizedLambdaExpression or SyntaxKind.AnonymousMethodExpression => "A lambda",
            SyntaxKind.AwaitExpression => "'await'",
            SyntaxKind.ObjectCreationExpression or SyntaxKind.ImplicitObjectCreationExpression => "Object creation",
            SyntaxKind.ElementAccessExpression => "Indexing",
            _ => "'" + node.Kind() + "'",
        };

        private void Unsupported(SyntaxNode node, string construct, string why) =>
            Report(DiagnosticDescriptors.UnsupportedConstruct, LocationInfo.From(node), construct, why);

        private StmtInfo? LocalDeclaration(LocalDeclarationStatementSyntax local)
        {
            if (local.UsingKeyword != default || local.Declaration.Variables.Count != 1)
            {
                Unsupported(local, "This declaration", "declare one local at a time: 'var x = ...;'");
                return null;
            }
            var variable = local.Declaration.Variables[0];
            var symbol = _forwardModel.GetDeclaredSymbol(variable, _cancellationToken) as ILocalSymbol;
            if (variable.Initializer is null)
            {
                // 'Tensor x;' names a tensor the branches of an if assign (C# checks it is assigned before it is read).
                if (symbol is null || !IsTensor(symbol.Type) || local.IsConst)
                    Unsupported(local, "This declaration", "a local without an initializer is a tensor that an if/else assigns: 'Tensor x;'");
                return null;
            }
            var initializer = variable.Initializer!.Value;

            // var block = Layers[layer]; binds the layer's weights under another name.
            if (_loopVariable is not null && initializer is ElementAccessExpressionSyntax access && LayerAccess(access) is { } layersMember)
            {
                if (symbol is not null) _blockAliases[symbol] = layersMember;
                return null;
            }
            // A scalar local (float scale = 1f / MathF.Sqrt(HeadDim);) names an expression: every use reads it.
            if (symbol is not null && ScalarTypeName(symbol.Type) is not null)
            {
                if (Scalar(initializer) is { } value) _scalarLocals[symbol] = value;
                return null;
            }
            if (symbol is null || !IsTensor(symbol.Type) || local.IsConst)
            {
                Unsupported(local, $"A local of type {symbol?.Type.ToDisplayString() ?? "?"}", "forward locals hold tensors, or scalars (numbers and bools) fixed once declared");
                return null;
            }
            var tensor = Expression(initializer);
            return tensor is null ? null : new StmtInfo(StmtKind.Assign, variable.Identifier.ValueText, tensor, NoBody, "", "", "", LocationInfo.From(local));
        }

        private StmtInfo? Assignment(ExpressionStatementSyntax statement)
        {
            if (statement.Expression is not AssignmentExpressionSyntax assignment || assignment.Left is not IdentifierNameSyntax target
                || _forwardModel.GetSymbolInfo(target, _cancellationToken).Symbol is not ILocalSymbol local || !IsTensor(local.Type))
            {
                if (statement.Expression is InvocationExpressionSyntax invocation && !IsKilnOp(invocation))
                {
                    UnknownOp(invocation);
                    return null;
                }
                if (statement.Expression is AssignmentExpressionSyntax { Left: IdentifierNameSyntax scalarName }
                    && _forwardModel.GetSymbolInfo(scalarName, _cancellationToken).Symbol is ILocalSymbol scalar && _scalarLocals.ContainsKey(scalar))
                {
                    Unsupported(statement, $"Assigning the scalar local '{scalar.Name}'", "a scalar local is fixed by its declaration; declare another");
                    return null;
                }
                Unsupported(statement, "This statement", "only tensor local assignments ('x = ...;', 'x += ...;') are compiled");
                return null;
            }
            var location = LocationInfo.From(statement);
            string name = target.Identifier.ValueText;
            if (assignment.IsKind(SyntaxKind.SimpleAssignmentExpression))
            {
                var value = Expression(assignment.Right);
                return value is null ? null : new StmtInfo(StmtKind.Assign, name, value, NoBody, "", "", "", location);
            }
            // x op= e is x = x op e, through the operator the compound assignment bound to.
            if (_forwardModel.GetSymbolInfo(assignment, _cancellationToken).Symbol is IMethodSymbol method
                && TensorOperators.TryGetValue(method.Name, out string? op))
            {
                var current = new ExprInfo(ExprKind.Local, name, NoArgs, LocationInfo.From(target));
                var combined = Operator(op, method, current, assignment.Right, LocationInfo.From(assignment));
                return combined is null ? null : new StmtInfo(StmtKind.Assign, name, combined, NoBody, "", "", "", location);
            }
            Unsupported(assignment, $"'{assignment.OperatorToken.ValueText}'", "tensors support =, +=, -=, *= and /=");
            return null;
        }

        /// <summary>for (int layer = 0; layer &lt; Count; layer++) { ... } where Count is a [Layers] count hyperparameter.</summary>
        private StmtInfo? LayerLoop(ForStatementSyntax loop)
        {
            var declaration = loop.Declaration;
            ILocalSymbol? variable = declaration is { Variables.Count: 1 } && loop.Initializers.Count == 0
                ? _forwardModel.GetDeclaredSymbol(declaration.Variables[0], _cancellationToken) as ILocalSymbol
                : null;
            bool startsAtZero = declaration?.Variables.FirstOrDefault()?.Initializer?.Value is LiteralExpressionSyntax { Token.ValueText: "0" };
            string? count = loop.Condition is BinaryExpressionSyntax { RawKind: (int)SyntaxKind.LessThanExpression } condition
                && condition.Left is IdentifierNameSyntax left && variable is not null && left.Identifier.ValueText == variable.Name
                ? CountMember(condition.Right)
                : null;
            bool increments = loop.Incrementors.Count == 1 && loop.Incrementors[0] switch
            {
                PostfixUnaryExpressionSyntax { RawKind: (int)SyntaxKind.PostIncrementExpression } post => IsName(post.Operand, variable),
                PrefixUnaryExpressionSyntax { RawKind: (int)SyntaxKind.PreIncrementExpression } pre => IsName(pre.Operand, variable),
                _ => false,
            };
            var layers = count is null ? null : _layers.FirstOrDefault(l => l.CountMember == count);
            if (variable is null || variable.Type.SpecialType != SpecialType.System_Int32 || !startsAtZero || !increments || layers is null)
            {
                Unsupported(loop, "This 'for' loop", "the only loop compiled is 'for (int layer = 0; layer < Count; layer++)' over the count of a [Layers] member");
                return null;
            }

            _loopVariable = variable;
            var body = Statements(Body(loop.Statement), topLevel: false);
            _loopVariable = null;
            return new StmtInfo(StmtKind.LayerLoop, "", null, body.ToEquatableArray(), variable.Name, layers.Member, layers.CountMember, LocationInfo.From(loop.ForKeyword));
        }

        /// <summary>if (condition) { ... } else { ... } on a scalar condition: both branches compiled, one run per step (or per layer).</summary>
        private StmtInfo? If(IfStatementSyntax branch)
        {
            var condition = Scalar(branch.Condition);
            if (condition is null) return null;
            if (condition.Type != "bool")
            {
                Unsupported(branch.Condition, "This condition", "an 'if' condition is a bool");
                return null;
            }
            var then = Statements(Body(branch.Statement), topLevel: false);
            var otherwise = branch.Else is null ? new List<StmtInfo>() : Statements(Body(branch.Else.Statement), topLevel: false);
            return new StmtInfo(StmtKind.If, "", null, then.ToEquatableArray(), "", "", "", LocationInfo.From(branch.IfKeyword),
                condition, otherwise.ToEquatableArray());
        }

        private static IEnumerable<StatementSyntax> Body(StatementSyntax statement) =>
            statement is BlockSyntax block ? block.Statements : new[] { statement };

        private static bool IsName(ExpressionSyntax expression, ILocalSymbol? variable) =>
            variable is not null && expression is IdentifierNameSyntax name && name.Identifier.ValueText == variable.Name;

        private string? CountMember(ExpressionSyntax expression)
        {
            var symbol = _forwardModel.GetSymbolInfo(expression, _cancellationToken).Symbol;
            return symbol is IFieldSymbol or IPropertySymbol && SymbolEqualityComparer.Default.Equals(symbol.ContainingType, _type) ? symbol.Name : null;
        }

        /// <summary>Layers[layer] with the loop variable: the [Layers] member's name, else null.</summary>
        private string? LayerAccess(ElementAccessExpressionSyntax access)
        {
            if (access.ArgumentList.Arguments.Count != 1 || !IsName(access.ArgumentList.Arguments[0].Expression, _loopVariable)) return null;
            var symbol = _forwardModel.GetSymbolInfo(access.Expression, _cancellationToken).Symbol;
            if (symbol is null || !SymbolEqualityComparer.Default.Equals(symbol.ContainingType, _type)) return null;
            return _layers.Any(l => l.Member == symbol.Name) ? symbol.Name : null;
        }

        private bool IsKilnOp(InvocationExpressionSyntax invocation)
        {
            var method = _forwardModel.GetSymbolInfo(invocation, _cancellationToken).Symbol as IMethodSymbol;
            return method is not null && FullName(method.ContainingType) == "Kiln.Ops" && OpTable.TryGet(SignatureOf(method.Name, method), out _);
        }

        private static string SignatureOf(string name, IMethodSymbol method) =>
            OpTable.Signature(name, method.Parameters.Select(p => TypeKey(p.Type)));

        /// <summary>A parameter type as an op signature names it ("Tensor", "int", "tokens", …).</summary>
        private static string TypeKey(ITypeSymbol type)
        {
            if (IsTensor(type)) return "Tensor";
            if (FullName(type) == ContextType) return "context";
            if (FullName(type) == RopeStyleType) return "RopeStyle";
            if (FullName(type) == PoolingType) return "Pooling";
            if (type is INamedTypeSymbol { Name: "ReadOnlySpan", TypeArguments.Length: 1 } span && span.TypeArguments[0].SpecialType == SpecialType.System_Int32) return "tokens";
            return type.SpecialType switch
            {
                SpecialType.System_Int32 => "int",
                SpecialType.System_Single => "float",
                SpecialType.System_Boolean => "bool",
                _ => type.ToDisplayString(),
            };
        }

        private void UnknownOp(InvocationExpressionSyntax invocation)
        {
            var info = _forwardModel.GetSymbolInfo(invocation, _cancellationToken);
            var method = (info.Symbol ?? info.CandidateSymbols.FirstOrDefault()) as IMethodSymbol;
            if (info.Symbol is null && method is not null && FullName(method.ContainingType) == "Kiln.Ops" && OpTable.HasName(method.Name))
            {
                // A known op whose arguments do not bind (the C# compiler reports which).
                Report(DiagnosticDescriptors.TypeMismatch, LocationInfo.From(invocation),
                    $"the arguments of Ops.{method.Name} do not match its parameters ({string.Join(", ", method.Parameters.Select(p => p.Type.ToDisplayString() + " " + p.Name))})");
                return;
            }
            string name = method is null ? invocation.Expression.ToString() : method.ContainingType.Name + "." + method.Name;
            Report(DiagnosticDescriptors.UnknownOp, LocationInfo.From(invocation), name, OpTable.Names);
        }

        /// <summary>A tensor-valued expression: an op call, an operator, a local, a weight, or a tensor 'c ? a : b'.</summary>
        private ExprInfo? Expression(ExpressionSyntax expression)
        {
            _cancellationToken.ThrowIfCancellationRequested();
            var location = LocationInfo.From(expression);
            switch (expression)
            {
                case ParenthesizedExpressionSyntax parenthesized:
                    return Expression(parenthesized.Expression);

                case InvocationExpressionSyntax invocation:
                    return Invocation(invocation);

                case BinaryExpressionSyntax binary when _forwardModel.GetSymbolInfo(binary, _cancellationToken).Symbol is IMethodSymbol method
                                                         && IsTensor(method.ContainingType) && TensorOperators.TryGetValue(method.Name, out string? op):
                {
                    var left = Argument(binary.Left);
                    return left is null ? null : Operator(op, method, left, binary.Right, location);
                }

                case PrefixUnaryExpressionSyntax { RawKind: (int)SyntaxKind.UnaryMinusExpression } negation
                    when _forwardModel.GetSymbolInfo(negation, _cancellationToken).Symbol is IMethodSymbol { Name: "op_UnaryNegation" } method && IsTensor(method.ContainingType):
                {
                    var operand = Expression(negation.Operand);
                    return operand is null ? null : new ExprInfo(ExprKind.Op, OpTable.Signature("Neg", new[] { "Tensor" }), EquatableArray.Create(operand), location);
                }

                case ConditionalExpressionSyntax conditional when IsTensor(_forwardModel.GetTypeInfo(conditional, _cancellationToken).Type):
                {
                    var condition = Scalar(conditional.Condition);
                    var whenTrue = Expression(conditional.WhenTrue);
                    var whenFalse = Expression(conditional.WhenFalse);
                    if (condition is null || whenTrue is null || whenFalse is null) return null;
                    return new ExprInfo(ExprKind.Conditional, "", EquatableArray.Create(whenTrue, whenFalse), location, condition);
                }

                case IdentifierNameSyntax identifier:
                    return Name(identifier, location);

                case MemberAccessExpressionSyntax member when member.IsKind(SyntaxKind.SimpleMemberAccessExpression):
                    return MemberAccess(member, location);

                case BinaryExpressionSyntax or PrefixUnaryExpressionSyntax or LiteralExpressionSyntax or CastExpressionSyntax
                    when !IsTensor(_forwardModel.GetTypeInfo(expression, _cancellationToken).Type):
                    Unsupported(expression, "A scalar", "a tensor is expected here (an op call, a tensor local or a weight)");
                    return null;

                default:
                    Unsupported(expression, ConstructName(expression), "a forward method is made of Kiln.Ops calls, tensor arithmetic, locals, weights and scalar members");
                    return null;
            }
        }

        /// <summary>An operand that may be a tensor or a scalar (a tensor operator's other side).</summary>
        private ExprInfo? Argument(ExpressionSyntax expression)
        {
            if (IsTensor(_forwardModel.GetTypeInfo(expression, _cancellationToken).Type)) return Expression(expression);
            var scalar = Scalar(expression);
            return scalar is null ? null : new ExprInfo(ExprKind.Scalar, scalar.ToString(), NoArgs, LocationInfo.From(expression), scalar);
        }

        /// <summary>
        /// A tensor operator as its op: a + s and s + a both become Add(Tensor, float) (so do *), while s − a and s / a
        /// keep their order as Sub(float, Tensor) and Div(float, Tensor).
        /// </summary>
        private ExprInfo? Operator(string op, IMethodSymbol method, ExprInfo left, ExpressionSyntax rightSyntax, LocationInfo? location)
        {
            var right = Argument(rightSyntax);
            if (right is null) return null;
            var types = method.Parameters.Select(p => TypeKey(p.Type)).ToArray();
            if (types.Length == 2 && types[0] != "Tensor" && types[1] == "Tensor" && op is "Add" or "Mul")
            {
                (left, right) = (right, left);
                types = new[] { types[1], types[0] };
            }
            string key = OpTable.Signature(op, types);
            if (!OpTable.TryGet(key, out _))
            {
                Report(DiagnosticDescriptors.UnknownOp, location, $"the tensor operator {op}({string.Join(", ", types)})", OpTable.Names);
                return null;
            }
            return new ExprInfo(ExprKind.Op, key, EquatableArray.Create(left, right), location);
        }

        /// <summary>An Ops call: each parameter's argument in order, named ones placed and omitted ones at their defaults.</summary>
        private ExprInfo? Invocation(InvocationExpressionSyntax invocation)
        {
            if (!IsKilnOp(invocation) || _forwardModel.GetOperation(invocation, _cancellationToken) is not IInvocationOperation operation)
            {
                UnknownOp(invocation);
                return null;
            }
            var method = operation.TargetMethod;
            OpTable.TryGet(SignatureOf(method.Name, method), out var op);
            var args = new List<ExprInfo>();
            bool ok = true;
            for (int i = 0; i < method.Parameters.Length; i++)
            {
                var parameter = method.Parameters[i];
                var argument = operation.Arguments.FirstOrDefault(a => SymbolEqualityComparer.Default.Equals(a.Parameter, parameter));
                if (argument is null || argument.ArgumentKind == ArgumentKind.DefaultValue)
                {
                    // An encoder's attention has no cache to tell its causality by: it must say which it is.
                    if (_encoder && op.Kind == OpKind.Attention && parameter.Name == "causal")
                    {
                        Report(DiagnosticDescriptors.EncoderAttentionCausality, LocationInfo.From(invocation));
                        ok = false;
                        continue;
                    }
                    if (!parameter.HasExplicitDefaultValue)
                    {
                        Unsupported(invocation, $"The argument '{parameter.Name}'", "give every op argument");
                        ok = false;
                        continue;
                    }
                    var fallback = DefaultValue(parameter);
                    args.Add(new ExprInfo(ExprKind.Scalar, fallback.ToString(), NoArgs, LocationInfo.From(invocation), fallback));
                    continue;
                }
                if (argument.Syntax is ArgumentSyntax { RefKindKeyword.RawKind: not (int)SyntaxKind.None } reference)
                {
                    Unsupported(reference, "A ref argument", "pass op arguments by value");
                    ok = false;
                    continue;
                }
                var syntax = argument.Syntax is ArgumentSyntax explicitArgument ? explicitArgument.Expression : (ExpressionSyntax)argument.Value.Syntax;
                var value = op.Parameters[i].IsScalar ? ScalarArgument(syntax) : Expression(syntax);
                if (value is null) ok = false;
                else args.Add(value);
            }
            return ok ? new ExprInfo(ExprKind.Op, op.Key, args.ToEquatableArray(), LocationInfo.From(invocation)) : null;
        }

        private ExprInfo? ScalarArgument(ExpressionSyntax syntax)
        {
            var scalar = Scalar(syntax);
            return scalar is null ? null : new ExprInfo(ExprKind.Scalar, scalar.ToString(), NoArgs, LocationInfo.From(syntax), scalar);
        }

        /// <summary>An omitted optional parameter's default, as a literal of its type.</summary>
        private static ScalarExpr DefaultValue(IParameterSymbol parameter)
        {
            string type = ScalarTypeName(parameter.Type) ?? parameter.Type.ToDisplayString();
            return Constant(parameter.ExplicitDefaultValue, parameter.Type, type);
        }

        private ExprInfo? Name(IdentifierNameSyntax identifier, LocationInfo? location)
        {
            var symbol = _forwardModel.GetSymbolInfo(identifier, _cancellationToken).Symbol;
            switch (symbol)
            {
                case ILocalSymbol local when _blockAliases.ContainsKey(local):
                    Unsupported(identifier, $"Using the layer '{local.Name}' as a value", "read its weights: '" + local.Name + ".Weight'");
                    return null;
                case ILocalSymbol local when IsTensor(local.Type):
                    return new ExprInfo(ExprKind.Local, local.Name, NoArgs, location);
                case IParameterSymbol parameter when SymbolEqualityComparer.Default.Equals(parameter, _tokens):
                    return new ExprInfo(ExprKind.Tokens, parameter.Name, NoArgs, location);
                case IParameterSymbol parameter when SymbolEqualityComparer.Default.Equals(parameter, _context):
                    return new ExprInfo(ExprKind.Context, parameter.Name, NoArgs, location);
                case IFieldSymbol or IPropertySymbol when SymbolEqualityComparer.Default.Equals(symbol.ContainingType, _type):
                    return Member(symbol, identifier, location);
                default:
                    Unsupported(identifier, $"'{identifier.Identifier.ValueText}'", "only tensor locals, the forward parameters, weights and numeric members of the model can be used");
                    return null;
            }
        }

        private ExprInfo? MemberAccess(MemberAccessExpressionSyntax access, LocationInfo? location)
        {
            if (access.Expression is ThisExpressionSyntax)
            {
                var symbol = _forwardModel.GetSymbolInfo(access, _cancellationToken).Symbol;
                if (symbol is IFieldSymbol or IPropertySymbol && SymbolEqualityComparer.Default.Equals(symbol.ContainingType, _type))
                    return Member(symbol, access, location);
            }
            bool layerOwner =
                (access.Expression is IdentifierNameSyntax alias
                    && _forwardModel.GetSymbolInfo(alias, _cancellationToken).Symbol is ILocalSymbol local && _blockAliases.ContainsKey(local))
                || (access.Expression is ElementAccessExpressionSyntax element && _loopVariable is not null && LayerAccess(element) is not null);
            if (layerOwner)
            {
                var symbol = _forwardModel.GetSymbolInfo(access, _cancellationToken).Symbol;
                if (symbol is IFieldSymbol or IPropertySymbol) return Member(symbol, access, location);
            }
            Unsupported(access, $"'{access}'", "only weights of the model or of the current layer ('block.Weight') and numeric model members can be used");
            return null;
        }

        private ExprInfo? Member(ISymbol member, SyntaxNode node, LocationInfo? location)
        {
            if (_weightKeys.TryGetValue(member, out var key))
                return new ExprInfo(ExprKind.Weight, key, NoArgs, location);
            var type = MemberType(member);
            if (IsTensor(type))
            {
                Report(DiagnosticDescriptors.UndeclaredWeight, location, member.Name);
                return null;
            }
            if (type is not null && ScalarTypeName(type) is { } scalarType && SymbolEqualityComparer.Default.Equals(member.ContainingType, _type))
                return new ExprInfo(ExprKind.Scalar, member.Name, NoArgs, location, ScalarExpr.Member(member.Name, scalarType));
            Unsupported(node, $"The member '{member.Name}' of type {type?.ToDisplayString() ?? "?"}", "a forward method reads weights and numeric hyperparameters");
            return null;
        }

        // ---- Scalars ------------------------------------------------------------------------------------------------

        /// <summary>"int", "long", "float", "double", "bool", or an enum's full name; null for anything else.</summary>
        private static string? ScalarTypeName(ITypeSymbol? type)
        {
            if (type is null) return null;
            if (type.TypeKind == TypeKind.Enum) return "global::" + FullName(type);
            return type.SpecialType switch
            {
                SpecialType.System_Int32 => "int",
                SpecialType.System_Int64 => "long",
                SpecialType.System_Single => "float",
                SpecialType.System_Double => "double",
                SpecialType.System_Boolean => "bool",
                _ => null,
            };
        }

        /// <summary>
        /// A scalar expression over literals, the model's numeric members, the layer index, scalar locals, arithmetic,
        /// comparisons, ?:, casts and System.Math/MathF calls; anything else is reported and gives null.
        /// </summary>
        private ScalarExpr? Scalar(ExpressionSyntax expression)
        {
            _cancellationToken.ThrowIfCancellationRequested();
            var type = _forwardModel.GetTypeInfo(expression, _cancellationToken).Type;
            string? typeName = ScalarTypeName(type);
            if (typeName is null)
            {
                Unsupported(expression, $"'{expression}' of type {type?.ToDisplayString() ?? "?"}", "a scalar here is a number or a bool");
                return null;
            }
            var constant = _forwardModel.GetConstantValue(expression, _cancellationToken);
            switch (expression)
            {
                case ParenthesizedExpressionSyntax parenthesized:
                    return Scalar(parenthesized.Expression);

                case LiteralExpressionSyntax literal:
                    return ScalarExpr.Literal(literal.Token.Text, typeName, constant.HasValue ? Format(constant.Value) : null);

                case IdentifierNameSyntax identifier:
                {
                    var symbol = _forwardModel.GetSymbolInfo(identifier, _cancellationToken).Symbol;
                    if (symbol is ILocalSymbol local && SymbolEqualityComparer.Default.Equals(local, _loopVariable)) return ScalarExpr.Layer;
                    if (symbol is ILocalSymbol scalarLocal && _scalarLocals.TryGetValue(scalarLocal, out var named)) return named;
                    if (symbol is IFieldSymbol or IPropertySymbol && SymbolEqualityComparer.Default.Equals(symbol.ContainingType, _type) && !symbol.IsStatic)
                        return ScalarExpr.Member(symbol.Name, typeName);
                    if (constant.HasValue) return Constant(constant.Value, type!, typeName);
                    Unsupported(identifier, $"'{identifier.Identifier.ValueText}'", "a scalar reads literals, the model's numeric members, the layer index and scalar locals");
                    return null;
                }

                case MemberAccessExpressionSyntax access:
                {
                    var symbol = _forwardModel.GetSymbolInfo(access, _cancellationToken).Symbol;
                    if (access.Expression is ThisExpressionSyntax && symbol is IFieldSymbol or IPropertySymbol && !symbol.IsStatic)
                        return ScalarExpr.Member(symbol.Name, typeName);
                    if (constant.HasValue) return Constant(constant.Value, type!, typeName);
                    if (symbol is { IsStatic: true } && symbol.ContainingType is { } owner && IsMath(owner))
                        return ScalarExpr.Literal("global::" + FullName(owner) + "." + symbol.Name, typeName);
                    Unsupported(access, $"'{access}'", "a scalar reads literals, the model's numeric members, the layer index and scalar locals");
                    return null;
                }

                case PrefixUnaryExpressionSyntax unary when unary.Kind() is SyntaxKind.UnaryMinusExpression or SyntaxKind.UnaryPlusExpression or SyntaxKind.LogicalNotExpression:
                {
                    var operand = Scalar(unary.Operand);
                    return operand is null ? null : new ScalarExpr(ScalarKind.Unary, unary.OperatorToken.Text, EquatableArray.Create(operand), typeName, constant.HasValue ? Format(constant.Value) : null);
                }

                case BinaryExpressionSyntax binary:
                {
                    var left = Scalar(binary.Left);
                    var right = Scalar(binary.Right);
                    if (left is null || right is null) return null;
                    return new ScalarExpr(ScalarKind.Binary, binary.OperatorToken.Text, EquatableArray.Create(left, right), typeName, constant.HasValue ? Format(constant.Value) : null);
                }

                case ConditionalExpressionSyntax conditional:
                {
                    var condition = Scalar(conditional.Condition);
                    var whenTrue = Scalar(conditional.WhenTrue);
                    var whenFalse = Scalar(conditional.WhenFalse);
                    if (condition is null || whenTrue is null || whenFalse is null) return null;
                    return new ScalarExpr(ScalarKind.Conditional, "?:", EquatableArray.Create(condition, whenTrue, whenFalse), typeName, constant.HasValue ? Format(constant.Value) : null);
                }

                case ElementAccessExpressionSyntax access when access.ArgumentList.Arguments.Count == 1:
                {
                    // A per-layer value: an element of the model's int[] or float[] member, indexed by a scalar (the layer).
                    var symbol = _forwardModel.GetSymbolInfo(access.Expression, _cancellationToken).Symbol;
                    bool member = symbol is IFieldSymbol or IPropertySymbol && !symbol.IsStatic && SymbolEqualityComparer.Default.Equals(symbol.ContainingType, _type)
                        && access.Expression is IdentifierNameSyntax or MemberAccessExpressionSyntax { Expression: ThisExpressionSyntax };
                    if (!member || MemberType(symbol!) is not IArrayTypeSymbol { Rank: 1 })
                    {
                        Unsupported(access, $"'{access}'", "an indexed scalar is an element of the model's own int[] or float[] member, such as a per-layer [Hyper] indexed by the layer");
                        return null;
                    }
                    var index = Scalar(access.ArgumentList.Arguments[0].Expression);
                    if (index is null) return null;
                    if (!index.IsInteger)
                    {
                        Unsupported(access, $"'{access}'", "the index must be an int (the layer, or arithmetic on it)");
                        return null;
                    }
                    return ScalarExpr.Element(symbol!.Name, index, typeName);
                }

                case CastExpressionSyntax cast:
                {
                    var operand = Scalar(cast.Expression);
                    return operand is null ? null : new ScalarExpr(ScalarKind.Cast, typeName, EquatableArray.Create(operand), typeName, constant.HasValue ? Format(constant.Value) : null);
                }

                case InvocationExpressionSyntax call when _forwardModel.GetSymbolInfo(call, _cancellationToken).Symbol is IMethodSymbol { IsStatic: true } method
                                                          && IsMath(method.ContainingType):
                {
                    var args = new List<ScalarExpr>();
                    foreach (var argument in call.ArgumentList.Arguments)
                    {
                        var value = Scalar(argument.Expression);
                        if (value is null) return null;
                        args.Add(value);
                    }
                    return new ScalarExpr(ScalarKind.Call, "global::" + FullName(method.ContainingType) + "." + method.Name, args.ToEquatableArray(), typeName);
                }

                default:
                    Unsupported(expression, ConstructName(expression), "a scalar is made of literals, numeric members, the layer index, arithmetic, comparisons, ?:, casts and Math/MathF calls");
                    return null;
            }
        }

        private static bool IsMath(ITypeSymbol type) => FullName(type) is "System.Math" or "System.MathF";

        /// <summary>A compile-time constant as a C# literal of its type (an enum member by its qualified name).</summary>
        private static ScalarExpr Constant(object? value, ITypeSymbol type, string typeName)
        {
            if (type.TypeKind == TypeKind.Enum && type is INamedTypeSymbol enumType)
            {
                var member = enumType.GetMembers().OfType<IFieldSymbol>().FirstOrDefault(f => f.HasConstantValue && Equals(f.ConstantValue, value));
                string text = member is null ? $"(({typeName}){Format(value)})" : typeName + "." + member.Name;
                return ScalarExpr.Literal(text, typeName, Format(value));
            }
            string literal = value switch
            {
                float f => float.IsNaN(f) ? "float.NaN" : float.IsInfinity(f) ? (f > 0 ? "float.PositiveInfinity" : "float.NegativeInfinity") : f.ToString("R", CultureInfo.InvariantCulture) + "f",
                double d => double.IsNaN(d) ? "double.NaN" : double.IsInfinity(d) ? (d > 0 ? "double.PositiveInfinity" : "double.NegativeInfinity") : d.ToString("R", CultureInfo.InvariantCulture) + "d",
                bool b => b ? "true" : "false",
                long l => l.ToString(CultureInfo.InvariantCulture) + "L",
                null => "default",
                _ => System.Convert.ToString(value, CultureInfo.InvariantCulture) ?? "default",
            };
            return ScalarExpr.Literal(literal, typeName, Format(value));
        }

        private static string? Format(object? value) => value switch
        {
            null => null,
            bool b => b ? "true" : "false",
            float f => f.ToString("R", CultureInfo.InvariantCulture),
            double d => d.ToString("R", CultureInfo.InvariantCulture),
            _ => System.Convert.ToString(value, CultureInfo.InvariantCulture),
        };
    }
}
