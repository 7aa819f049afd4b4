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
/// region with phis for the locals it reassigns, and each op's shape rule runs as it is added (symbolic shape inference).
/// </summary>
internal sealed class GraphBuilder
{
    private readonly ModelInfo _model;
    private readonly CancellationToken _cancellationToken;
    private readonly List<Node> _nodes = new();
    private readonly List<RegionInfo> _regions = new();
    private readonly Dictionary<string, int> _locals = new();
    private readonly Dictionary<string, int> _weights = new();
    private readonly List<DiagnosticInfo> _diagnostics = new();
    private int _region;

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
        if (result < 0) return null;
        return new Graph(_model, _nodes.ToEquatableArray(), _regions.ToEquatableArray(), result);
    }

    /// <summary>A [Quantize] on a weight is a layout for Linear weights: the weight must be used, and only as one.</summary>
    private void CheckQuantizedWeights()
    {
        foreach (var weight in _model.Weights.Where(w => w.Format.Length > 0))
        {
            if (!_weights.TryGetValue(weight.Key, out int id))
            {
                Report(DiagnosticDescriptors.InvalidQuantize, weight.FormatLocation, weight.Member, "the weight is not used in the [Forward] method");
                continue;
            }
            var other = _nodes.FirstOrDefault(n => n.Inputs.Contains(id) && !(n.Op == OpKind.Linear && n.Inputs[1] == id && n.Inputs[0] != id));
            if (other is not null)
                Report(DiagnosticDescriptors.InvalidQuantize, weight.FormatLocation, weight.Member,
                    $"it is not only the weight of Ops.Linear (it is read by Ops.{other.Op}); [Quantize] chooses the layout of Linear weights");
        }
    }

    private int ReturnValue(StmtInfo statement)
    {
        int value = Value(statement.Value!, ParamKind.Activation);
        if (value >= 0 && _nodes[value].Shape.Rank != 2 && _nodes[value].Shape.IsKnown)
            Report(DiagnosticDescriptors.ShapeMismatch, statement.Value!.Location, "return", $"the forward result must be [rows, vocab] logits, got {_nodes[value].Shape}");
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
        }
    }

    private void Loop(StmtInfo loop)
    {
        _region = _regions.Count;
        _regions.Add(new RegionInfo(_region, true, loop.LayersMember, loop.CountMember, loop.LoopVariable));

        // Locals assigned in the body that exist before it are loop-carried: one phi each.
        var phis = new List<(string Local, int Phi)>();
        foreach (var target in loop.Body.Where(s => s.Kind == StmtKind.Assign).Select(s => s.Target).Distinct())
        {
            if (!_locals.TryGetValue(target, out int before)) continue;
            if (_nodes[before].Op == OpKind.Weight)
            {
                Report(DiagnosticDescriptors.UnsupportedConstruct, loop.Location, $"Reassigning '{target}', which holds a weight, in the layer loop",
                    "loop-carried locals must be activations");
                continue;
            }
            int phi = Add(OpKind.Phi, new[] { before, before }, Array.Empty<ScalarArg>(), _nodes[before].Shape, target, loop.Location);
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
            default:
                Report(DiagnosticDescriptors.TypeMismatch, expression.Location,
                    $"'{expression.Name}' is {Describe(expression.Kind)} where {Describe(expected)} is expected");
                return -1;
        }
    }

    private int WeightValue(ExprInfo expression)
    {
        if (_weights.TryGetValue(expression.Name, out int id)) return id;
        var weight = _model.Weights.FirstOrDefault(w => w.Key == expression.Name);
        if (weight is null) return -1;
        id = Add(OpKind.Weight, Array.Empty<int>(), Array.Empty<ScalarArg>(), new Shape(weight.Dims), weight.Key, expression.Location);
        _weights[expression.Name] = id;
        return id;
    }

    private int Op(ExprInfo call)
    {
        if (!OpTable.TryGet(call.Name, out var op))
        {
            Report(DiagnosticDescriptors.UnknownOp, call.Location, "Ops." + call.Name, OpTable.Names);
            return -1;
        }
        if (call.Args.Count != op.Parameters.Length)
        {
            Report(DiagnosticDescriptors.UnknownOp, call.Location, $"Ops.{call.Name} with {call.Args.Count} arguments", OpTable.Names);
            return -1;
        }

        var inputs = new List<int>();
        var scalars = new List<ScalarArg>();
        bool ok = true;
        for (int i = 0; i < op.Parameters.Length; i++)
        {
            var parameter = op.Parameters[i];
            var arg = call.Args[i];
            switch (parameter)
            {
                case ParamKind.Activation:
                case ParamKind.Weight:
                {
                    if (arg.Kind is not (ExprKind.Local or ExprKind.Weight or ExprKind.Op))
                    {
                        Report(DiagnosticDescriptors.TypeMismatch, arg.Location, $"'{arg.Name}' is {Describe(arg.Kind)} where {Describe(parameter)} is expected");
                        ok = false;
                        break;
                    }
                    int value = Value(arg, parameter);
                    if (value < 0)
                    {
                        ok = false;
                        break;
                    }
                    bool isWeight = _nodes[value].Op == OpKind.Weight;
                    if (isWeight != (parameter == ParamKind.Weight))
                    {
                        Report(DiagnosticDescriptors.TypeMismatch, arg.Location,
                            isWeight
                                ? $"Ops.{op.Name} argument {i + 1} is the weight '{_nodes[value].Name}' where an activation (a computed tensor) is expected"
                                : $"Ops.{op.Name} argument {i + 1} is an activation where a [Weight] member is expected");
                        ok = false;
                        break;
                    }
                    inputs.Add(value);
                    break;
                }
                case ParamKind.Tokens:
                case ParamKind.Context:
                {
                    var kind = parameter == ParamKind.Tokens ? ExprKind.Tokens : ExprKind.Context;
                    if (arg.Kind != kind)
                    {
                        Report(DiagnosticDescriptors.TypeMismatch, arg.Location, $"Ops.{op.Name} argument {i + 1} must be the forward method's {Describe(parameter)}");
                        ok = false;
                    }
                    break;
                }
                default:
                {
                    if (arg.Kind is not (ExprKind.ScalarMember or ExprKind.ScalarLiteral or ExprKind.LayerIndex)
                        || (parameter == ParamKind.Int && arg.Kind == ExprKind.ScalarMember && !_model.IntMembers.Contains(arg.Name)))
                    {
                        Report(DiagnosticDescriptors.TypeMismatch, arg.Location,
                            $"Ops.{op.Name} argument {i + 1} is {Describe(arg.Kind)} where {Describe(parameter)} is expected");
                        ok = false;
                        break;
                    }
                    scalars.Add(new ScalarArg(arg.Kind, arg.Name));
                    break;
                }
            }
        }
        if (!ok) return -1;

        var shapes = inputs.Select(i => _nodes[i].Shape).ToArray();
        Shape shape;
        if (shapes.All(s => s.IsKnown))
        {
            var result = op.Shape(shapes);
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
        return Add(op.Kind, inputs.ToArray(), scalars.ToArray(), shape, "", call.Location);
    }

    /// <summary>The location of the n-th tensor argument of a call.</summary>
    private static LocationInfo? ArgLocation(ExprInfo call, OpDefinition op, int operand)
    {
        int seen = 0;
        for (int i = 0; i < op.Parameters.Length; i++)
        {
            if (op.Parameters[i] is not (ParamKind.Activation or ParamKind.Weight)) continue;
            if (seen++ == operand) return call.Args[i].Location;
        }
        return call.Location;
    }

    private int Add(OpKind op, int[] inputs, ScalarArg[] scalars, Shape shape, string name, LocationInfo? location)
    {
        int id = _nodes.Count;
        _nodes.Add(new Node(id, op, inputs.ToEquatableArray(), scalars.ToEquatableArray(), shape, _region, name, location));
        return id;
    }

    private void Report(Microsoft.CodeAnalysis.DiagnosticDescriptor descriptor, LocationInfo? location, params string[] args) =>
        _diagnostics.Add(DiagnosticInfo.Create(descriptor, location ?? _model.Location, args));

    private static string Describe(ExprKind kind) => kind switch
    {
        ExprKind.Tokens => "the token span",
        ExprKind.Context => "the attention context",
        ExprKind.ScalarMember or ExprKind.ScalarLiteral => "a scalar",
        ExprKind.LayerIndex => "the layer index (a scalar)",
        ExprKind.Weight => "a weight tensor",
        _ => "a tensor",
    };

    private static string Describe(ParamKind kind) => kind switch
    {
        ParamKind.Activation => "a tensor",
        ParamKind.Weight => "a [Weight] tensor",
        ParamKind.Tokens => "token span",
        ParamKind.Context => "attention context",
        ParamKind.Int => "an int scalar",
        _ => "a float scalar",
    };
}
