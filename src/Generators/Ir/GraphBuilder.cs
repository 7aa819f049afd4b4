using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Ir;

/// <summary>
/// Builds the SSA graph from the extracted forward body: every assignment makes a new value, the layer loop becomes a
/// region with phis for the locals it reassigns, each if/else a pair of guards with a merge for every local a branch
/// reassigns, and each op's shape rule runs as it is added (symbolic shape inference).
/// </summary>
internal sealed class GraphBuilder
{
    private readonly ModelInfo _model;
    private readonly CancellationToken _cancellationToken;
    private readonly List<Node> _nodes = new();
    private readonly List<RegionInfo> _regions = new();
    private readonly List<GuardInfo> _guards = new();
    private Dictionary<string, int> _locals = new();
    private readonly Dictionary<string, int> _weights = new();
    private readonly List<DiagnosticInfo> _diagnostics = new();
    private int _region;
    private int _guard = -1;
    private int _ifStatements;

    private GraphBuilder(ModelInfo model, CancellationToken cancellationToken)
    {
        _model = model;
        _cancellationToken = cancellationToken;
    }

    public static GraphResult Build(ExtractionResult extraction, CancellationToken cancellationToken)
    {
        if (extraction.Model is null) return new GraphResult(extraction.HintName, null, extraction.Diagnostics);
        try
        {
            var builder = new GraphBuilder(extraction.Model, cancellationToken);
            var graph = builder.Run();
            var diagnostics = extraction.Diagnostics.Concat(builder._diagnostics).ToEquatableArray();
            return new GraphResult(extraction.HintName, diagnostics.Count == 0 ? graph : null, diagnostics);
        }
        catch (OperationCanceledException)
        {
            throw;
        }
        catch (Exception e)
        {
            var diagnostic = DiagnosticInfo.Create(DiagnosticDescriptors.InternalError, extraction.Model.Location, extraction.Model.ClassName,
                e.GetType().Name + ": " + e.Message);
            return new GraphResult(extraction.HintName, null, extraction.Diagnostics.Concat(new[] { diagnostic }).ToEquatableArray());
        }
    }

    private Graph? Run()
    {
        _regions.Add(new RegionInfo(0, false, "", "", ""));
        int result = -1;
        foreach (var statement in _model.Forward)
        {
            _cancellationToken.ThrowIfCancellationRequested();
            if (statement.Kind == StmtKind.Return) result = ReturnValue(statement);
            else Statement(statement);
        }
        CheckQuantizedWeights();
        if (!_model.Encoder) CheckCacheLayers(); // an encoder's attentions write no cache
        if (result < 0) return null;
        return new Graph(_model, _nodes.ToEquatableArray(), _regions.ToEquatableArray(), _guards.ToEquatableArray(), result);
    }

    /// <summary>A [Quantize] or [Sparse] on a weight is a layout for Linear weights: the weight must be used, and only as one.</summary>
    private void CheckQuantizedWeights()
    {
        if (_model.DefaultSparse is { Pattern: not "None" } classSparse && _model.DefaultFormat is "F32" or "BF16" or "Q4_0")
            Report(DiagnosticDescriptors.InvalidSparse, classSparse.Location, _model.ClassName,
                $"the sparse layouts hold Q8_0 blocks, and [Quantize(WeightFormat.{_model.DefaultFormat})] asks for another format");
        foreach (var weight in _model.Weights.Where(w => w.Sparse is { Pattern: not "None" } && (w.Format.Length > 0 ? w.Format : _model.DefaultFormat) is "F32" or "BF16" or "Q4_0"))
            Report(DiagnosticDescriptors.InvalidSparse, weight.Sparse!.Location, weight.Member,
                $"the sparse layouts hold Q8_0 blocks, and [Quantize(WeightFormat.{(weight.Format.Length > 0 ? weight.Format : _model.DefaultFormat)})] asks for another format");
        foreach (var weight in _model.Weights.Where(w => w.Sparse is not null))
        {
            if (!_weights.TryGetValue(weight.Key, out int id))
            {
                Report(DiagnosticDescriptors.InvalidSparse, weight.Sparse!.Location, weight.Member, "the weight is not used in the [Forward] method");
                continue;
            }
            var other = _nodes.FirstOrDefault(n => n.Inputs.Contains(id) && !(n.Op == OpKind.Linear && n.Inputs[1] == id && n.Inputs[0] != id && (n.Inputs.Count < 3 || n.Inputs[2] != id)));
            if (other is not null)
                Report(DiagnosticDescriptors.InvalidSparse, weight.Sparse!.Location, weight.Member,
                    $"it is not only the weight of Ops.Linear (it is read by Ops.{other.Op}); [Sparse] chooses the layout of Linear weights");
        }
        foreach (var weight in _model.Weights.Where(w => w.Format.Length > 0))
        {
            if (!_weights.TryGetValue(weight.Key, out int id))
            {
                Report(DiagnosticDescriptors.InvalidQuantize, weight.FormatLocation, weight.Member, "the weight is not used in the [Forward] method");
                continue;
            }
            var other = _nodes.FirstOrDefault(n => n.Inputs.Contains(id) && !(n.Op == OpKind.Linear && n.Inputs[1] == id && n.Inputs[0] != id && (n.Inputs.Count < 3 || n.Inputs[2] != id)));
            if (other is not null)
                Report(DiagnosticDescriptors.InvalidQuantize, weight.FormatLocation, weight.Member,
                    $"it is not only the weight of Ops.Linear (it is read by Ops.{other.Op}); [Quantize] chooses the layout of Linear weights");
        }
    }

    /// <summary>Each attention writes its layer of the KV cache: two that can run in one step must not name the same layer.</summary>
    private void CheckCacheLayers()
    {
        var attentions = _nodes.Where(n => n.Op == OpKind.Attention).ToList();
        for (int i = 0; i < attentions.Count; i++)
            for (int j = 0; j < i; j++)
            {
                Node a = attentions[i], b = attentions[j];
                bool sameLayer = a.Region == b.Region && a.Scalars[0].Equals(b.Scalars[0]);
                if (sameLayer && !Graph.Exclusive(_guards, a.Guard, b.Guard))
                {
                    Report(DiagnosticDescriptors.SharedCacheLayer, a.Location, a.Scalars[0].ToString());
                    return;
                }
            }
    }

    private int ReturnValue(StmtInfo statement)
    {
        int value = Value(statement.Value!, ParamKind.Activation);
        if (value >= 0 && _nodes[value].Shape.Rank != 2 && _nodes[value].Shape.IsKnown)
            Report(DiagnosticDescriptors.ShapeMismatch, statement.Value!.Location, "return", $"the forward result must be [rows, vocab] logits, got {_nodes[value].Shape}");
        if (value >= 0 && _nodes[value].Op == OpKind.Weight)
        {
            Report(DiagnosticDescriptors.TypeMismatch, statement.Value!.Location, $"the forward result is the weight '{_nodes[value].Name}'; return a computed tensor");
            return -1;
        }
        return value;
    }

    private void Statement(StmtInfo statement)
    {
        switch (statement.Kind)
        {
            case StmtKind.Assign:
                int value = Value(statement.Value!, ParamKind.Activation);
                if (value >= 0)
                {
                    _locals[statement.Target] = value;
                    if (_nodes[value].Name.Length == 0) _nodes[value] = _nodes[value] with { Name = statement.Target };
                }
                else
                {
                    _locals.Remove(statement.Target);
                }
                break;
            case StmtKind.LayerLoop:
                Loop(statement);
                break;
            case StmtKind.If:
                If(statement);
                break;
        }
    }

    /// <summary>Locals a statement list assigns, in order, branches included.</summary>
    private static IEnumerable<string> Assigned(IEnumerable<StmtInfo> statements)
    {
        foreach (var statement in statements)
        {
            if (statement.Kind == StmtKind.Assign) yield return statement.Target;
            else if (statement.Kind == StmtKind.If)
                foreach (var target in Assigned(statement.Body).Concat(Assigned(statement.Else))) yield return target;
        }
    }

    private void Loop(StmtInfo loop)
    {
        _region = _regions.Count;
        _regions.Add(new RegionInfo(_region, true, loop.LayersMember, loop.CountMember, loop.LoopVariable));

        // Locals assigned in the body that exist before it are loop-carried: one phi each.
        var phis = new List<(string Local, int Phi)>();
        foreach (var target in Assigned(loop.Body).Distinct())
        {
            if (!_locals.TryGetValue(target, out int before)) continue;
            if (_nodes[before].Op == OpKind.Weight)
            {
                Report(DiagnosticDescriptors.UnsupportedConstruct, loop.Location, $"Reassigning '{target}', which holds a weight, in the layer loop",
                    "loop-carried locals must be activations");
                continue;
            }
            int phi = Add(OpKind.Phi, new[] { before, before }, Array.Empty<ScalarExpr>(), _nodes[before].Shape, target, loop.Location);
            _locals[target] = phi;
            phis.Add((target, phi));
        }

        foreach (var statement in loop.Body) Statement(statement);

        foreach (var (local, phi) in phis)
        {
            int back = _locals.TryGetValue(local, out int v) ? v : phi;
            var node = _nodes[phi];
            if (back >= 0 && _nodes[back].Shape.IsKnown && node.Shape.IsKnown && !_nodes[back].Shape.Equals(node.Shape))
                Report(DiagnosticDescriptors.ShapeMismatch, loop.Location, $"'{local}' across layers",
                    $"it enters the loop as {node.Shape} and leaves the body as {_nodes[back].Shape}");
            _nodes[phi] = node with { Inputs = EquatableArray.Create(node.Inputs[0], back) };
            _locals[local] = phi; // after the loop, the local is the loop-carried value's final state
        }

        _region = _regions.Count;
        _regions.Add(new RegionInfo(_region, false, "", "", ""));
    }

    /// <summary>
    /// if (c) { A } else { B }: A's nodes under a guard (c, true), B's under (c, false); each local either branch
    /// reassigns gets a merge of its two branch values. A condition C# knows when the generator runs picks its branch here.
    /// </summary>
    private void If(StmtInfo statement)
    {
        var condition = statement.Condition!;
        if (condition.Constant is "true" or "false")
        {
            foreach (var inner in condition.Constant == "true" ? statement.Body : statement.Else) Statement(inner);
            return;
        }
        Branches(condition, statement.Location,
            () => { foreach (var inner in statement.Body) Statement(inner); },
            () => { foreach (var inner in statement.Else) Statement(inner); });
    }

    /// <summary>Runs two branches under their guards and merges the locals they leave different.</summary>
    private void Branches(ScalarExpr condition, LocationInfo? location, Action then, Action otherwise)
    {
        int parent = _guard, statement = _ifStatements++;
        int thenGuard = AddGuard(parent, statement, condition, true), elseGuard = AddGuard(parent, statement, condition, false);
        var before = new Dictionary<string, int>(_locals);

        _guard = thenGuard;
        then();
        var afterThen = _locals;

        _locals = new Dictionary<string, int>(before);
        _guard = elseGuard;
        otherwise();
        var afterElse = _locals;

        _guard = parent;
        _locals = new Dictionary<string, int>(before);
        foreach (var local in afterThen.Keys.Union(afterElse.Keys))
        {
            // A local declared inside a branch ends with it; one assigned in either branch merges.
            if (!before.ContainsKey(local) && !(afterThen.ContainsKey(local) && afterElse.ContainsKey(local))) continue;
            int a = afterThen.TryGetValue(local, out int x) ? x : before[local];
            int b = afterElse.TryGetValue(local, out int y) ? y : before[local];
            if (a == b)
            {
                _locals[local] = a;
                continue;
            }
            if (_nodes[a].Shape.IsKnown && _nodes[b].Shape.IsKnown && !_nodes[a].Shape.Equals(_nodes[b].Shape))
            {
                Report(DiagnosticDescriptors.ShapeMismatch, location, $"'{local}' after the if", $"one branch leaves it {_nodes[a].Shape}, the other {_nodes[b].Shape}");
                continue;
            }
            if (_nodes[a].Op == OpKind.Weight || _nodes[b].Op == OpKind.Weight)
            {
                Report(DiagnosticDescriptors.UnsupportedConstruct, location, $"Assigning a weight to '{local}' in a branch", "branch-assigned locals must be activations");
                continue;
            }
            int merge = Add(OpKind.Merge, new[] { a, b }, new[] { condition }, _nodes[a].Shape, local, location);
            _nodes[merge] = _nodes[merge] with { Branch = thenGuard };
            _locals[local] = merge;
        }
    }

    private int AddGuard(int parent, int statement, ScalarExpr condition, bool polarity)
    {
        _guards.Add(new GuardInfo(_guards.Count, parent, statement, condition, polarity));
        return _guards.Count - 1;
    }

    /// <summary>Evaluates an expression to a value id (-1 after a reported error or an unknown local).</summary>
    private int Value(ExprInfo expression, ParamKind expected)
    {
        switch (expression.Kind)
        {
            case ExprKind.Local:
                return _locals.TryGetValue(expression.Name, out int local) ? local : -1;
            case ExprKind.Weight:
                return WeightValue(expression);
            case ExprKind.Op:
                return Op(expression);
            case ExprKind.Conditional:
                return Conditional(expression);
            default:
                Report(DiagnosticDescriptors.TypeMismatch, expression.Location,
                    $"'{expression.Name}' is {Describe(expression.Kind)} where {Describe(expected)} is expected");
                return -1;
        }
    }

    /// <summary>c ? a : b over tensors: each side under its guard, then their merge.</summary>
    private int Conditional(ExprInfo expression)
    {
        var condition = expression.Scalar!;
        if (condition.Constant is "true" or "false") return Value(expression.Args[condition.Constant == "true" ? 0 : 1], ParamKind.Activation);
        int a = -1, b = -1, thenGuard = _guards.Count;
        Branches(condition, expression.Location,
            () => a = Value(expression.Args[0], ParamKind.Activation),
            () => b = Value(expression.Args[1], ParamKind.Activation));
        if (a < 0 || b < 0) return -1;
        if (_nodes[a].Shape.IsKnown && _nodes[b].Shape.IsKnown && !_nodes[a].Shape.Equals(_nodes[b].Shape))
        {
            Report(DiagnosticDescriptors.ShapeMismatch, expression.Location, "c ? a : b", $"the two sides differ in shape, {_nodes[a].Shape} and {_nodes[b].Shape}");
            return -1;
        }
        if (_nodes[a].Op == OpKind.Weight || _nodes[b].Op == OpKind.Weight)
        {
            Report(DiagnosticDescriptors.TypeMismatch, expression.Location, "c ? a : b chooses between computed tensors, not weights");
            return -1;
        }
        int merge = Add(OpKind.Merge, new[] { a, b }, new[] { condition }, _nodes[a].Shape, "", expression.Location);
        _nodes[merge] = _nodes[merge] with { Branch = thenGuard };
        return merge;
    }

    private int WeightValue(ExprInfo expression)
    {
        if (_weights.TryGetValue(expression.Name, out int id)) return id;
        var weight = _model.Weights.FirstOrDefault(w => w.Key == expression.Name);
        if (weight is null) return -1;
        // Weights are storage outside any branch: bound once, read wherever they are used.
        int guard = _guard;
        _guard = -1;
        id = Add(OpKind.Weight, Array.Empty<int>(), Array.Empty<ScalarExpr>(), new Shape(weight.Dims), weight.Key, expression.Location);
        _guard = guard;
        _weights[expression.Name] = id;
        return id;
    }

    private int Op(ExprInfo call)
    {
        if (!OpTable.TryGet(call.Name, out var op))
        {
            Report(DiagnosticDescriptors.UnknownOp, call.Location, call.Name, OpTable.Names);
            return -1;
        }
        if (call.Args.Count != op.Parameters.Length)
        {
            Report(DiagnosticDescriptors.UnknownOp, call.Location, $"Ops.{op.Name} with {call.Args.Count} arguments", OpTable.Names);
            return -1;
        }

        var inputs = new List<int>();
        var scalars = new List<ScalarExpr>();
        bool ok = true;
        for (int i = 0; i < op.Parameters.Length; i++)
        {
            var parameter = op.Parameters[i];
            var arg = call.Args[i];
            switch (parameter.Kind)
            {
                case ParamKind.Activation:
                case ParamKind.Weight:
                case ParamKind.Tensor:
                {
                    if (arg.Kind is not (ExprKind.Local or ExprKind.Weight or ExprKind.Op or ExprKind.Conditional))
                    {
                        Report(DiagnosticDescriptors.TypeMismatch, arg.Location, $"'{arg.Name}' is {Describe(arg.Kind)} where {Describe(parameter.Kind)} is expected");
                        ok = false;
                        break;
                    }
                    int value = Value(arg, parameter.Kind);
                    if (value < 0)
                    {
                        ok = false;
                        break;
                    }
                    bool isWeight = _nodes[value].Op == OpKind.Weight;
                    string? problem = parameter.Kind switch
                    {
                        ParamKind.Activation when isWeight => $"Ops.{op.Name} argument '{parameter.Name}' is the weight '{_nodes[value].Name}' where an activation (a computed tensor) is expected",
                        ParamKind.Weight when !isWeight => $"Ops.{op.Name} argument '{parameter.Name}' is an activation where a [Weight] member is expected",
                        ParamKind.Tensor when isWeight && _nodes[value].Shape.Rank != 1 => $"Ops.{op.Name} argument '{parameter.Name}' is the weight matrix '{_nodes[value].Name}' {_nodes[value].Shape}; elementwise ops take activations and row vectors",
                        _ => null,
                    };
                    if (problem is not null)
                    {
                        Report(DiagnosticDescriptors.TypeMismatch, arg.Location, problem);
                        ok = false;
                        break;
                    }
                    inputs.Add(value);
                    break;
                }
                case ParamKind.Tokens:
                case ParamKind.Context:
                {
                    var kind = parameter.Kind == ParamKind.Tokens ? ExprKind.Tokens : ExprKind.Context;
                    if (arg.Kind != kind)
                    {
                        Report(DiagnosticDescriptors.TypeMismatch, arg.Location, $"Ops.{op.Name} argument '{parameter.Name}' must be the forward method's {Describe(parameter.Kind)}");
                        ok = false;
                    }
                    break;
                }
                default:
                {
                    string? problem = ScalarProblem(op, parameter, arg);
                    if (problem is not null)
                    {
                        Report(DiagnosticDescriptors.TypeMismatch, arg.Location, problem);
                        ok = false;
                        break;
                    }
                    scalars.Add(arg.Scalar!);
                    break;
                }
            }
        }
        if (!ok) return -1;
        if (op.Parameters.All(p => !p.IsTensor || p.Kind == ParamKind.Tensor) && inputs.Count > 0 && inputs.All(i => _nodes[i].Op == OpKind.Weight))
        {
            Report(DiagnosticDescriptors.TypeMismatch, call.Location, $"Ops.{op.Name} of weights alone; an elementwise op needs an activation");
            return -1;
        }
        if (op.Kind == OpKind.SelectRows && _model.Encoder)
        {
            Report(DiagnosticDescriptors.ModelKindMismatch, call.Location,
                "Ops.SelectRows in an encoder: an encoder's step has no wanted rows (they are a decoder's next-token logits); return every token's rows [T, ·] or pool them per sequence with Ops.Pool");
            return -1;
        }
        if (op.Kind == OpKind.Rope && scalars.Any(s => s.UsesLayer))
        {
            Report(DiagnosticDescriptors.TypeMismatch, call.Location, "Ops.Rope's head dimension, base and rotary dimensions must be the same in every layer (the plan computes its angles once per step)");
            return -1;
        }

        if (op.Kind == OpKind.Attention && (scalars[1].UsesLayer || scalars[2].UsesLayer))
        {
            Report(DiagnosticDescriptors.TypeMismatch, call.Location,
                "Ops.Attention's heads and kvHeads must be the same in every layer (the plan sizes its attention once); a per-layer value belongs in the branch that chooses which layers attend");
            return -1;
        }

        var shapes = inputs.Select(i => _nodes[i].Shape).ToArray();
        Shape shape;
        if (shapes.All(s => s.IsKnown))
        {
            var result = op.Shape(shapes, scalars);
            if (result.Error is not null)
            {
                var location = result.Operand >= 0 ? ArgLocation(call, op, result.Operand) : call.Location;
                Report(DiagnosticDescriptors.ShapeMismatch, location ?? call.Location, "Ops." + op.Name, result.Error);
                return -1;
            }
            shape = result.Result!;
        }
        else
        {
            shape = Shape.Of(Shape.Unknown);
        }
        return Add(op.Kind, inputs.ToArray(), scalars.ToArray(), shape, "", call.Location, op.ScalarFirst);
    }

    /// <summary>Why a scalar argument does not fit its parameter, or null when it does.</summary>
    private static string? ScalarProblem(OpDefinition op, OpParameter parameter, ExprInfo arg)
    {
        if (arg.Kind != ExprKind.Scalar || arg.Scalar is null)
            return $"Ops.{op.Name} argument '{parameter.Name}' is {Describe(arg.Kind)} where {Describe(parameter.Kind)} is expected";
        var scalar = arg.Scalar;
        bool fits = parameter.Kind switch
        {
            ParamKind.Int => scalar.IsInteger,
            ParamKind.Float => scalar.IsInteger || scalar.Type is "float" or "double",
            ParamKind.Bool => scalar.Type == "bool",
            ParamKind.Pooling => scalar.Type == "global::Kiln.Pooling",
            _ => scalar.Type == "global::Kiln.RopeStyle",
        };
        if (!fits) return $"Ops.{op.Name} argument '{parameter.Name}' is {scalar.Type} '{scalar}' where {Describe(parameter.Kind)} is expected";
        if (parameter.Kind == ParamKind.Style && scalar.Constant is null)
            return $"Ops.{op.Name} argument '{parameter.Name}' ('{scalar}') must be a RopeStyle constant: the style decides the kernel when the generator runs";
        if (parameter.Kind == ParamKind.Pooling && (scalar.Constant is not ("0" or "1" or "2")))
            return $"Ops.{op.Name} argument '{parameter.Name}' ('{scalar}') must be a Pooling member (Mean, Cls, LastToken): the pooling decides the kernel when the generator runs";
        return null;
    }

    /// <summary>The location of the n-th tensor argument of a call.</summary>
    private static LocationInfo? ArgLocation(ExprInfo call, OpDefinition op, int operand)
    {
        int seen = 0;
        for (int i = 0; i < op.Parameters.Length; i++)
        {
            if (!op.Parameters[i].IsTensor) continue;
            if (seen++ == operand) return call.Args[i].Location;
        }
        return call.Location;
    }

    private int Add(OpKind op, int[] inputs, ScalarExpr[] scalars, Shape shape, string name, LocationInfo? location, bool scalarFirst = false)
    {
        int id = _nodes.Count;
        _nodes.Add(new Node(id, op, inputs.ToEquatableArray(), scalars.ToEquatableArray(), shape, _region, name, location, _guard, scalarFirst));
        return id;
    }

    private void Report(Microsoft.CodeAnalysis.DiagnosticDescriptor descriptor, LocationInfo? location, params string[] args) =>
        _diagnostics.Add(DiagnosticInfo.Create(descriptor, location ?? _model.Location, args));

    private static string Describe(ExprKind kind) => kind switch
    {
        ExprKind.Tokens => "the token span",
        ExprKind.Context => "the attention context",
        ExprKind.Scalar => "a scalar",
        ExprKind.Weight => "a weight",
        _ => "a tensor",
    };

    private static string Describe(ParamKind kind) => kind switch
    {
        ParamKind.Activation => "an activation tensor",
        ParamKind.Weight => "a [Weight] member",
        ParamKind.Tensor => "a tensor (an activation or a row-vector weight)",
        ParamKind.Tokens => "token span",
        ParamKind.Context => "attention context",
        ParamKind.Int => "an int (a literal, an int member, the layer index, or arithmetic on them)",
        ParamKind.Float => "a number (a literal, a numeric member, or arithmetic on them)",
        ParamKind.Bool => "a bool",
        ParamKind.Pooling => "a Pooling constant",
        _ => "a RopeStyle constant",
    };
}
