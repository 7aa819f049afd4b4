using System.Collections.Generic;
using System.Collections.Immutable;
using System.Linq;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Ir;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace Kiln.Generators.Syntax;

internal static partial class ModelExtractor
{
    private sealed partial class Extraction
    {
        private SemanticModel _forwardModel = null!;
        private IParameterSymbol? _tokens;
        private IParameterSymbol? _context;
        private ILocalSymbol? _loopVariable;
        private readonly Dictionary<ILocalSymbol, string> _blockAliases = new(SymbolEqualityComparer.Default);

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

        private List<StmtInfo> Statements(SyntaxList<StatementSyntax> statements, bool topLevel)
        {
            var result = new List<StmtInfo>();
            for (int i = 0; i < statements.Count; i++)
            {
                _cancellationToken.ThrowIfCancellationRequested();
                var statement = statements[i];
                bool last = i == statements.Count - 1;
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
                        Unsupported(loop, "A nested 'for' loop", "only one level of layer loop is compiled");
                        break;
                    case ReturnStatementSyntax { Expression: { } value } ret when topLevel && last:
                        if (Expression(value) is { } returned)
                            result.Add(new StmtInfo(StmtKind.Return, "", returned, NoBody, "", "", "", LocationInfo.From(ret)));
                        break;
                    case ReturnStatementSyntax ret:
                        Unsupported(ret, "This 'return'", "the forward method returns once, as its last statement");
                        break;
                    default:
                        Unsupported(statement, ConstructName(statement), "a forward method is straight-line tensor code with one layer loop");
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
            SyntaxKind.IfStatement => "An 'if' statement",
            SyntaxKind.SwitchStatement => "A 'switch' statement",
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
            SyntaxKind.ConditionalExpression => "A conditional expression",
            SyntaxKind.ObjectCreationExpression or SyntaxKind.ImplicitObjectCreationExpression => "Object creation",
            SyntaxKind.CastExpression => "A cast",
            _ => "'" + node.Kind() + "'",
        };

        private void Unsupported(SyntaxNode node, string construct, string why) =>
            Report(DiagnosticDescriptors.UnsupportedConstruct, LocationInfo.From(node), construct, why);

        private StmtInfo? LocalDeclaration(LocalDeclarationStatementSyntax local)
        {
            if (local.IsConst || local.UsingKeyword != default || local.Declaration.Variables.Count != 1
                || local.Declaration.Variables[0].Initializer is null)
            {
                Unsupported(local, "This declaration", "declare one tensor local with an initializer: 'var x = ...;'");
                return null;
            }
            var variable = local.Declaration.Variables[0];
            var symbol = _forwardModel.GetDeclaredSymbol(variable, _cancellationToken) as ILocalSymbol;
            var initializer = variable.Initializer!.Value;

            // var block = Layers[layer]; binds the layer's weights under another name.
            if (_loopVariable is not null && initializer is ElementAccessExpressionSyntax access && LayerAccess(access) is { } layersMember)
            {
                if (symbol is not null) _blockAliases[symbol] = layersMember;
                return null;
            }
            if (symbol is null || !IsTensor(symbol.Type))
            {
                Unsupported(local, $"A local of type {symbol?.Type.ToDisplayString() ?? "?"}", "forward locals hold tensors (scalars come from hyperparameters and members)");
                return null;
            }
            var value = Expression(initializer);
            return value is null ? null : new StmtInfo(StmtKind.Assign, variable.Identifier.ValueText, value, NoBody, "", "", "", LocationInfo.From(local));
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
                Unsupported(statement, "This statement", "only tensor local assignments ('x = ...;', 'x += ...;') are compiled");
                return null;
            }
            var value = Expression(assignment.Right);
            if (value is null) return null;
            var location = LocationInfo.From(statement);
            string name = target.Identifier.ValueText;
            var current = new ExprInfo(ExprKind.Local, name, NoArgs, LocationInfo.From(target));
            switch (assignment.Kind())
            {
                case SyntaxKind.SimpleAssignmentExpression:
                    return new StmtInfo(StmtKind.Assign, name, value, NoBody, "", "", "", location);
                case SyntaxKind.AddAssignmentExpression:
                    return new StmtInfo(StmtKind.Assign, name, new ExprInfo(ExprKind.Op, "Add", EquatableArray.Create(current, value), LocationInfo.From(assignment)), NoBody, "", "", "", location);
                case SyntaxKind.MultiplyAssignmentExpression:
                    return new StmtInfo(StmtKind.Assign, name, new ExprInfo(ExprKind.Op, "Mul", EquatableArray.Create(current, value), LocationInfo.From(assignment)), NoBody, "", "", "", location);
                default:
                    Unsupported(assignment, $"'{assignment.OperatorToken.ValueText}'", "tensors support =, += and *=");
                    return null;
            }
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
            var body = loop.Statement is BlockSyntax block ? Statements(block.Statements, topLevel: false) : Statements(SyntaxFactory.SingletonList(loop.Statement), topLevel: false);
            _loopVariable = null;
            return new StmtInfo(StmtKind.LayerLoop, "", null, body.ToEquatableArray(), variable.Name, layers.Member, layers.CountMember, LocationInfo.From(loop.ForKeyword));
        }

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
            return method is not null && FullName(method.ContainingType) == "Kiln.Ops" && OpTable.TryGet(method.Name, out _);
        }

        private void UnknownOp(InvocationExpressionSyntax invocation)
        {
            var info = _forwardModel.GetSymbolInfo(invocation, _cancellationToken);
            var method = (info.Symbol ?? info.CandidateSymbols.FirstOrDefault()) as IMethodSymbol;
            if (info.Symbol is null && method is not null && FullName(method.ContainingType) == "Kiln.Ops" && OpTable.TryGet(method.Name, out _))
            {
                // A known op whose arguments do not bind (the C# compiler reports which).
                Report(DiagnosticDescriptors.TypeMismatch, LocationInfo.From(invocation),
                    $"the arguments of Ops.{method.Name} do not match its parameters ({string.Join(", ", method.Parameters.Select(p => p.Type.ToDisplayString() + " " + p.Name))})");
                return;
            }
            string name = method is null ? invocation.Expression.ToString() : method.ContainingType.Name + "." + method.Name;
            Report(DiagnosticDescriptors.UnknownOp, LocationInfo.From(invocation), name, OpTable.Names);
        }

        private ExprInfo? Expression(ExpressionSyntax expression)
        {
            _cancellationToken.ThrowIfCancellationRequested();
            var location = LocationInfo.From(expression);
            switch (expression)
            {
                case ParenthesizedExpressionSyntax parenthesized:
                    return Expression(parenthesized.Expression);

                case InvocationExpressionSyntax invocation:
                {
                    if (!IsKilnOp(invocation))
                    {
                        UnknownOp(invocation);
                        return null;
                    }
                    var method = (IMethodSymbol)_forwardModel.GetSymbolInfo(invocation, _cancellationToken).Symbol!;
                    var args = new List<ExprInfo>();
                    bool ok = true;
                    foreach (var argument in invocation.ArgumentList.Arguments)
                    {
                        if (argument.NameColon is not null || !argument.RefKindKeyword.IsKind(SyntaxKind.None))
                        {
                            Unsupported(argument, "A named or ref argument", "pass op arguments by position");
                            ok = false;
                            continue;
                        }
                        var value = Expression(argument.Expression);
                        if (value is null) ok = false;
                        else args.Add(value);
                    }
                    return ok ? new ExprInfo(ExprKind.Op, method.Name, args.ToEquatableArray(), location) : null;
                }

                case BinaryExpressionSyntax binary when binary.IsKind(SyntaxKind.AddExpression) || binary.IsKind(SyntaxKind.MultiplyExpression):
                {
                    var method = _forwardModel.GetSymbolInfo(binary, _cancellationToken).Symbol as IMethodSymbol;
                    if (method is null || !IsTensor(method.ContainingType))
                    {
                        Unsupported(binary, "Scalar arithmetic", "compute it in a derived member (e.g. 'public int QDim => Heads * HeadDim;') and pass the member");
                        return null;
                    }
                    var left = Expression(binary.Left);
                    var right = Expression(binary.Right);
                    if (left is null || right is null) return null;
                    return new ExprInfo(ExprKind.Op, binary.IsKind(SyntaxKind.AddExpression) ? "Add" : "Mul", EquatableArray.Create(left, right), location);
                }

                case LiteralExpressionSyntax literal when literal.IsKind(SyntaxKind.NumericLiteralExpression):
                    return new ExprInfo(ExprKind.ScalarLiteral, literal.Token.Text, NoArgs, location);

                case PrefixUnaryExpressionSyntax { RawKind: (int)SyntaxKind.UnaryMinusExpression, Operand: LiteralExpressionSyntax negated }
                    when negated.IsKind(SyntaxKind.NumericLiteralExpression):
                    return new ExprInfo(ExprKind.ScalarLiteral, "-" + negated.Token.Text, NoArgs, location);

                case IdentifierNameSyntax identifier:
                    return Name(identifier, location);

                case MemberAccessExpressionSyntax member when member.IsKind(SyntaxKind.SimpleMemberAccessExpression):
                    return MemberAccess(member, location);

                default:
                    Unsupported(expression, ConstructName(expression), "a forward method is made of Kiln.Ops calls, tensor + and *, locals, weights and scalar members");
                    return null;
            }
        }

        private ExprInfo? Name(IdentifierNameSyntax identifier, LocationInfo? location)
        {
            var symbol = _forwardModel.GetSymbolInfo(identifier, _cancellationToken).Symbol;
            switch (symbol)
            {
                case ILocalSymbol local when SymbolEqualityComparer.Default.Equals(local, _loopVariable):
                    return new ExprInfo(ExprKind.LayerIndex, local.Name, NoArgs, location);
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
            if (type is not null && NumericKeyword(type) is not null && SymbolEqualityComparer.Default.Equals(member.ContainingType, _type))
                return new ExprInfo(ExprKind.ScalarMember, member.Name, NoArgs, location);
            Unsupported(node, $"The member '{member.Name}' of type {type?.ToDisplayString() ?? "?"}", "a forward method reads weights and numeric hyperparameters");
            return null;
        }
    }
}
