using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Ir;
using Kiln.Generators.Passes;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Emit;

/// <summary>
/// Writes one <see cref="Program"/> as C#: the fields a work struct needs to run it (buffers it reads, weight vectors,
/// tables, scalars, dims), their values at the call site, the per-row and per-head setup (bases, statistics) and the
/// body at any width — Vector512, Vector256, Vector128 or scalar — from the same elements, so every width computes
/// the same thing. This is where fusion becomes code: no loop body here is written by hand.
/// </summary>
internal sealed class ProgramCode
{
    private const string Lanes = "global::Kiln.Kernels.Elementwise.Lanes";
    private const string Statistics = "global::Kiln.Kernels.Elementwise.RowStatistics";

    private readonly Plan _plan;
    private readonly List<(int Value, RowMap Map)> _loads = new();
    private readonly List<string> _vectors = new();
    private readonly List<string> _tables = new();
    private readonly List<ScalarExpr> _scalars = new();
    private readonly List<string> _dims = new();
    private readonly string? _scalarMath;

    /// <summary>
    /// <paramref name="scalarMath"/> names the class whose static methods compute the scalar (width 1) primitives
    /// (Exp, Log, Tanh, Erf, Abs, Max): null for the CPU plan's Lanes and MathF; the GPU plan's kernels pass theirs.
    /// </summary>
    public ProgramCode(Plan plan, Program program, string? scalarMath = null)
    {
        _plan = plan;
        _scalarMath = scalarMath;
        Program = program;
        foreach (var elem in program.Elems)
        {
            switch (elem.Kind)
            {
                case ElemKind.Load when !_loads.Contains((elem.Value, elem.Map)):
                    _loads.Add((elem.Value, elem.Map));
                    break;
                case ElemKind.Vector when !_vectors.Contains(elem.Weight):
                    _vectors.Add(elem.Weight);
                    break;
                case ElemKind.Gather when !_tables.Contains(elem.Weight):
                    _tables.Add(elem.Weight);
                    break;
                case ElemKind.Scalar when !elem.Scalar!.IsFixed && !_scalars.Contains(elem.Scalar!):
                    _scalars.Add(elem.Scalar!);
                    break;
            }
            Dim(elem.Offset);
        }
        foreach (var stat in program.Stats)
        {
            if (!_loads.Contains((stat.Value, stat.Map))) _loads.Add((stat.Value, stat.Map));
            Dim(stat.Group);
        }
        Dim(program.Cols);
        Dim(program.Group);
    }

    public Program Program { get; }

    /// <summary>Values read (with their row maps), in field order: In0, In1, ….</summary>
    public IReadOnlyList<(int Value, RowMap Map)> Loads => _loads;

    /// <summary>Row-vector weights read, in field order: W0, W1, ….</summary>
    public IReadOnlyList<string> Vectors => _vectors;

    /// <summary>Tables gathered from, in field order: G0, G1, ….</summary>
    public IReadOnlyList<string> Tables => _tables;

    /// <summary>Scalars the model supplies, in field order: S0, S1, ….</summary>
    public IReadOnlyList<ScalarExpr> Scalars => _scalars;

    /// <summary>Symbolic dims the body reads, each as a field <see cref="DimRef"/>.</summary>
    public IReadOnlyList<string> Dims => _dims;

    public bool UsesTokens => Program.Elems.Any(e => e.Kind == ElemKind.Gather && e.Map == RowMap.Tokens);

    public bool UsesContext => Program.Elems.Any(e => e.Map is RowMap.Selected or RowMap.Positions or RowMap.TokenTypes) || Program.Stats.Any(s => s.Map == RowMap.Selected);

    private void Dim(string dim)
    {
        if (dim.Length > 0 && !dim.All(char.IsDigit) && !_dims.Contains(dim)) _dims.Add(dim);
    }

    /// <summary>A dim inside the struct: a literal, or the struct's copy of the plan's field.</summary>
    public static string DimRef(string dim) => dim.All(char.IsDigit) ? dim : "Dim" + Names.DimField(dim);

    private string LoadField(int value, RowMap map) => "In" + _loads.IndexOf((value, map));

    private string LoadBase(int value, RowMap map) => "in" + _loads.IndexOf((value, map));

    private Buffer BufferOf(int value) => _plan.Buffers[_plan.ValueBuffers[value]];

    // ---- The struct's fields and their values ------------------------------------------------------------------

    public void Fields(CodeWriter w)
    {
        for (int i = 0; i < _loads.Count; i++)
            w.Line($"public global::Kiln.Kernels.MatMul.FloatBuffer In{i}; public int In{i}Cols; // {BufferOf(_loads[i].Value).Name}{(_loads[i].Map == RowMap.Selected ? " at the wanted rows" : "")}");
        for (int i = 0; i < _vectors.Count; i++) w.Line($"public float[] W{i}; // {Short(_vectors[i])}");
        for (int i = 0; i < _tables.Count; i++) w.Line($"public global::Kiln.Kernels.Elementwise.GatherTable G{i}; // {Short(_tables[i])}, rows read from the stored format");
        for (int i = 0; i < _scalars.Count; i++) w.Line($"public float S{i}; // {_scalars[i]}");
        for (int i = 0; i < Program.Stats.Count; i++) w.Line($"public float E{i}; // eps of {Program.Stats[i].Kind} statistic {i}");
        foreach (var dim in _dims) w.Line($"public int {DimRef(dim)};");
        if (UsesTokens) w.Line("public int[] Tokens;");
        if (UsesContext) w.Line("public global::Kiln.AttentionContext Context;");
    }

    /// <summary>"Field = value" for each field, as the plan's Step fills them (<paramref name="layer"/>: the layer expression).</summary>
    public IEnumerable<string> Initializers(string layer, System.Func<int, string> view)
    {
        for (int i = 0; i < _loads.Count; i++)
        {
            yield return $"In{i} = {view(_loads[i].Value)}";
            yield return $"In{i}Cols = {Names.DimField(BufferOf(_loads[i].Value).Cols)}";
        }
        for (int i = 0; i < _vectors.Count; i++) yield return $"W{i} = {Names.Weight(_vectors[i], "_model", layer)}.Data";
        var gathered = GatheredTables(_plan);
        for (int i = 0; i < _tables.Count; i++)
            yield return $"G{i} = {TableField(gathered.IndexOf(_tables[i]))}{(_tables[i].Contains('.') ? $"[{layer}]" : "")}";
        for (int i = 0; i < _scalars.Count; i++) yield return $"S{i} = (float)({Names.Scalar(_scalars[i], "_model")})";
        for (int i = 0; i < Program.Stats.Count; i++) yield return $"E{i} = (float)({Names.Scalar(Program.Stats[i].Eps, "_model")})";
        foreach (var dim in _dims) yield return $"{DimRef(dim)} = {Names.DimField(dim)}";
        if (UsesTokens) yield return "Tokens = _tokens";
        if (UsesContext) yield return "Context = context";
    }

    /// <summary>Every table the plan's programs gather rows of, in kernel order: the plan holds one GatherTable per entry (per layer for a layer's weight).</summary>
    public static List<string> GatheredTables(Plan plan) =>
        plan.Kernels.SelectMany(k => k switch
        {
            MatMulKernel m => m.Segments.Select(s => s.Epilogue).Concat(m.InputProgram is null ? Enumerable.Empty<Program>() : new[] { m.InputProgram }),
            ElementwiseKernel e => new[] { e.Program },
            _ => Enumerable.Empty<Program>(),
        }).SelectMany(p => p.Elems).Where(e => e.Kind == ElemKind.Gather).Select(e => e.Weight).Distinct().ToList();

    /// <summary>The plan's field holding gathered table <paramref name="index"/> (of <see cref="GatheredTables"/>).</summary>
    public static string TableField(int index) => "_table" + index;

    // ---- Per row and per head ----------------------------------------------------------------------------------

    /// <summary>Bases of the row <paramref name="row"/> in every buffer read, and whole-row statistics.</summary>
    public void RowSetup(CodeWriter w, string row)
    {
        for (int i = 0; i < _loads.Count; i++)
        {
            string source = _loads[i].Map == RowMap.Selected ? $"Context.OutputRows[{row}]" : row;
            w.Line($"int in{i} = {source} * In{i}Cols;");
        }
        for (int i = 0; i < _tables.Count; i++)
        {
            var map = Program.Elems.First(e => e.Kind == ElemKind.Gather && e.Weight == _tables[i]).Map;
            string index = map switch
            {
                RowMap.Tokens => $"Tokens[{row}]",
                RowMap.TokenTypes => $"Context.TokenTypes[{row}]",
                _ => $"Context.Positions[{row}]",
            };
            w.Line($"var g{i} = G{i}.Row({index}, {row}); // the row, decoded into this token's slot");
        }
        for (int i = 0; i < Program.Stats.Count; i++)
            if (Program.Stats[i].Group.Length == 0) Statistic(w, i, $"{LoadBase(Program.Stats[i].Value, Program.Stats[i].Map)}", $"In{_loads.IndexOf((Program.Stats[i].Value, Program.Stats[i].Map))}Cols");
    }

    /// <summary>
    /// A matmul epilogue's prefetch of the inputs it reads row by row (a residual), at column
    /// <paramref name="column"/> of the row the F32 kernel's next tile will hand it (Gemm.F32TileTokens on): a
    /// line that would otherwise miss L2 in the epilogue arrives during that tile's K loop. A short K loop made
    /// those misses 8–11 % of MiniLM's output projection (K = 384); rows picked through OutputRows are left alone.
    /// </summary>
    public void PrefetchNextTile(CodeWriter w, string row, string column)
    {
        for (int i = 0; i < _loads.Count; i++)
            if (_loads[i].Map == RowMap.Same)
                w.Line($"In{i}.Prefetch(({row} + global::Kiln.Kernels.MatMul.Gemm.F32TileTokens) * In{i}Cols + {column});");
    }

    /// <summary>Per-head statistics for the head starting at column <paramref name="head"/>.</summary>
    public void GroupSetup(CodeWriter w, string head)
    {
        for (int i = 0; i < Program.Stats.Count; i++)
            if (Program.Stats[i].Group.Length > 0) Statistic(w, i, $"{LoadBase(Program.Stats[i].Value, Program.Stats[i].Map)} + {head}", DimRef(Program.Stats[i].Group));
    }

    private void Statistic(CodeWriter w, int i, string start, string count)
    {
        var stat = Program.Stats[i];
        string buffer = LoadField(stat.Value, stat.Map);
        if (stat.Kind == "L2")
        {
            w.Line($"float scale{i} = (float)(1.0 / global::System.Math.Max(global::System.Math.Sqrt({Statistics}.SumOfSquares({buffer}, {start}, {count})), E{i}));");
        }
        else if (stat.Kind == "Rms")
        {
            w.Line($"float scale{i} = (float)(1.0 / global::System.Math.Sqrt({Statistics}.SumOfSquares({buffer}, {start}, {count}) / {count} + E{i}));");
        }
        else
        {
            w.Line($"{Statistics}.Moments({buffer}, {start}, {count}, out double mean{i}d, out double variance{i}d);");
            w.Line($"float mean{i} = (float)mean{i}d, scale{i} = (float)(1.0 / global::System.Math.Sqrt(variance{i}d + E{i}));");
        }
    }

    // ---- The body ----------------------------------------------------------------------------------------------

    /// <summary>
    /// Writes the elements as locals <paramref name="prefix"/>0.. at <paramref name="width"/> lanes for columns from
    /// <paramref name="column"/> (<paramref name="inHead"/>: the same column within its head, for per-head weights);
    /// returns the root's local. <paramref name="accumulators"/> names the epilogue's sums.
    /// </summary>
    public string Body(CodeWriter w, int width, string column, string inHead, string prefix, string[]? accumulators = null, bool pairLanes = false,
        System.Func<string, string>? vectorColumn = null)
    {
        var names = new string[Program.Elems.Count];
        for (int i = 0; i < Program.Elems.Count; i++)
        {
            var elem = Program.Elems[i];
            string name = prefix + i;
            names[i] = name;
            string value = elem.Kind switch
            {
                ElemKind.Load => LoadExpression(width, LoadField(elem.Value, elem.Map), $"{LoadBase(elem.Value, elem.Map)} + {Index(column, elem.Offset)}", pairLanes),
                ElemKind.Accumulator => accumulators![elem.A],
                ElemKind.Vector when vectorColumn is not null => MappedLoad(width, "W" + _vectors.IndexOf(elem.Weight), column, elem.Offset, vectorColumn),
                ElemKind.Vector => ArrayLoad(width, "W" + _vectors.IndexOf(elem.Weight), Index(elem.PerHead ? inHead : column, elem.Offset), pairLanes),
                ElemKind.Gather => GatherExpression(width, _tables.IndexOf(elem.Weight), Index(column, elem.Offset), pairLanes),
                ElemKind.Scalar => Broadcast(width, elem.Scalar!.IsFixed ? Fixed(elem.Scalar) : "S" + _scalars.IndexOf(elem.Scalar!)),
                ElemKind.Stat => Broadcast(width, (elem.Op == "Mean" ? "mean" : "scale") + elem.A),
                ElemKind.Unary when width == 1 && _scalarMath is not null && elem.Op != "Neg" => $"{_scalarMath}.{elem.Op}({names[elem.A]})",
                ElemKind.Unary => Unary(width, elem.Op, names[elem.A]),
                ElemKind.Binary when width == 1 && _scalarMath is not null && elem.Op == "Max" => $"{_scalarMath}.Max({names[elem.A]}, {names[elem.B]})",
                _ => Binary(width, elem.Op, names[elem.A], names[elem.B]),
            };
            w.Line($"var {name} = {value};");
        }
        return names[Program.Root];
    }

    /// <summary>A scalar the generator knows, written in place: "0.5f", "(float)(1.0 / 3)".</summary>
    private static string Fixed(ScalarExpr scalar)
    {
        string text = scalar.Render("", Names.LayerIndex);
        return scalar.Kind == ScalarKind.Literal && scalar.Type == "float" ? text : $"(float)({text})";
    }

    private static string Index(string column, string offset) => offset.Length == 0 ? column : $"{column} + {DimRef(offset)}";

    public static string Vector(int width) => width switch
    {
        16 => "global::System.Runtime.Intrinsics.Vector512",
        8 => "global::System.Runtime.Intrinsics.Vector256",
        _ => "global::System.Runtime.Intrinsics.Vector128",
    };

    /// <summary>Reads <paramref name="width"/> floats of a FloatBuffer (two valid lanes of four for a pair epilogue).</summary>
    /// <summary>
    /// An element of gathered table <paramref name="table"/>: the CPU plan's g<i>i</i> is the token's row (decoded from the
    /// stored format into a slot); a GPU kernel's g<i>i</i> is the row's offset into the device table G<i>i</i>.
    /// </summary>
    private string GatherExpression(int width, int table, string index, bool pairLanes) => _scalarMath is null
        ? LoadExpression(width, "g" + table, index, pairLanes)
        : LoadExpression(width, "G" + table, $"g{table} + {index}", pairLanes);

    public static string LoadExpression(int width, string buffer, string index, bool pairLanes = false) => width switch
    {
        _ when pairLanes => $"{Vector(4)}.Create({buffer}[{index}], {buffer}[{index} + 1], 0f, 0f)",
        16 => $"{buffer}.Load16({index})",
        8 => $"{buffer}.Load8({index})",
        4 => $"{buffer}.Load4({index})",
        _ => $"{buffer}[{index}]",
    };

    /// <summary>A vector read lane by lane through a column map (rows packed in another order than the columns they fill).</summary>
    private static string MappedLoad(int width, string array, string column, string offset, System.Func<string, string> map)
    {
        string Lane(int i) => $"{array}[{Index(map(i == 0 ? column : $"{column} + {i}"), offset)}]";
        return width == 1 ? Lane(0) : $"{Vector(width)}.Create({string.Join(", ", Enumerable.Range(0, width).Select(Lane))})";
    }

    private static string ArrayLoad(int width, string array, string index, bool pairLanes) =>
        pairLanes ? $"{Vector(4)}.Create({array}[{index}], {array}[{index} + 1], 0f, 0f)"
        : width == 1 ? $"{array}[{index}]"
        : $"{Vector(width)}.LoadUnsafe(ref {array}[{index}])";

    public static string Store(int width, string buffer, string index, string value) => width switch
    {
        16 => $"{buffer}.Store16({index}, {value});",
        8 => $"{buffer}.Store8({index}, {value});",
        4 => $"{buffer}.Store4({index}, {value});",
        _ => $"{buffer}[{index}] = {value};",
    };

    public static string Broadcast(int width, string scalar) => width == 1 ? scalar : $"{Vector(width)}.Create({scalar})";

    private static string Unary(int width, string op, string a) => op switch
    {
        "Neg" => $"-{a}",
        "Abs" => width == 1 ? $"global::System.MathF.Abs({a})" : $"{Vector(width)}.Abs({a})",
        _ => $"{Lanes}.{op}({a})",
    };

    private static string Binary(int width, string op, string a, string b) => op switch
    {
        "Add" => $"{a} + {b}",
        "Sub" => $"{a} - {b}",
        "Mul" => $"{a} * {b}",
        "Div" => $"{a} / {b}",
        _ => width == 1 ? $"global::System.MathF.Max({a}, {b})" : $"{Vector(width)}.Max({a}, {b})",
    };

    private static string Short(string weight) => weight.Substring(weight.LastIndexOf('.') + 1);
}
