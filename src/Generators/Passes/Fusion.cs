using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using Kiln.Generators.Helpers;
using Kiln.Generators.Ir;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Passes;

/// <summary>
/// The fusion pass. It does not look for patterns: it decides, for every value, whether it is stored or computed
/// inside the loop of the kernel that reads it, and then writes those loops as programs (<see cref="Program"/>).
/// <list type="number">
/// <item>Linears become matmul outputs; a Linear read only through Slices becomes one output per slice (rows of its
/// weight: a fused QKV or gate/up projection splits at packing, not at run time).</item>
/// <item>An elementwise op, gather, slice, norm or rope whose value has one reader in the same branch is inlined into
/// that reader; every other value is a root and gets a program of what it inlines.</item>
/// <item>Linears that share an input, region, branch and layout are one horizontal matmul. A norm read only by
/// Linears folds into their input preparation, and so does a chain read only by them.</item>
/// <item>A root's program that reads a matmul output nobody else reads becomes that output's tile epilogue (bias,
/// residual, activation, scale, adjacent-pair rope…); one that reads two outputs of the same matmul becomes a pair
/// epilogue over interleaved rows (GLU). Anything else is its own parallel vector loop.</item>
/// </list>
/// Kernels are ordered by anchor: every kernel's inputs come from kernels with lower anchors.
/// </summary>
internal sealed class Fusion
{
    private readonly Graph _graph;
    private readonly List<int>[] _uses;
    private readonly bool[] _inlined;
    private readonly bool[] _covered;
    private readonly List<Kernel> _kernels = new();
    private readonly List<RopeTable> _ropeTables = new();
    private readonly HashSet<string> _packedNames = new();
    private readonly Dictionary<int, LinearOutput> _outputs = new();
    private readonly HashSet<int> _foldedNorms = new();

    /// <summary>A matmul output: value <see cref="Value"/> (the Linear, or a Slice of it), rows of a weight, its bias.</summary>
    private sealed record LinearOutput(int Value, Node Linear, WeightSlice Weight, string Bias, string OutDim, string Format, string Sparsity);

    public Fusion(Graph graph)
    {
        _graph = graph;
        _uses = graph.Nodes.Select(_ => new List<int>()).ToArray();
        foreach (var node in graph.Nodes)
            foreach (int input in node.Inputs.Distinct()) _uses[input].Add(node.Id);
        _uses[graph.Result].Add(-1);
        _inlined = new bool[graph.Nodes.Count];
        _covered = new bool[graph.Nodes.Count];
    }

    public IReadOnlyList<RopeTable> RopeTables => _ropeTables;

    public List<Kernel> Run()
    {
        FindLinearOutputs();
        FoldNorms();
        MarkInlined();

        // Programs of roots: each becomes an epilogue, an input preparation or a loop of its own.
        var programs = new Dictionary<int, Program>();
        foreach (var node in _graph.Nodes)
        {
            if (_covered[node.Id] || _inlined[node.Id] || !IsComputed(node.Op) || _outputs.ContainsKey(node.Id)) continue;
            if (_uses[node.Id].Count == 0) continue; // nothing reads it: not computed
            programs[node.Id] = new ProgramBuilder(this, node).Build();
        }

        var epilogues = new Dictionary<int, (Program Program, List<LinearOutput> Reads)>();
        foreach (int root in programs.Keys.OrderBy(k => k))
        {
            if (Absorbable(root, programs[root]) is { } reads) epilogues[root] = (programs[root], reads);
        }
        MatMuls(programs, epilogues);

        foreach (int root in programs.Keys.OrderBy(k => k))
        {
            if (epilogues.ContainsKey(root) || _covered[root]) continue;
            var node = _graph[root];
            _kernels.Add(new ElementwiseKernel(node.Region, node.Guard, root, root, programs[root]));
        }
        foreach (var node in _graph.Nodes)
        {
            if (node.Op == OpKind.Attention)
                _kernels.Add(new AttentionKernel(node.Region, node.Guard, node.Id, node.Inputs[0], node.Inputs[1], node.Inputs[2], node.Id,
                    node.Scalars[0], node.Scalars[1], node.Scalars[2], node.Scalars[3], node.Scalars[4], node.Scalars[5], node.Scalars[6]));
            else if (node.Op == OpKind.Lstm)
                _kernels.Add(new LstmKernel(node.Region, node.Guard, node.Id, node.Inputs[0], node.Id, _graph[node.Inputs[1]].Name, node.Shape.Cols, node.Scalars[0]));
            else if (node.Op == OpKind.Gru)
                _kernels.Add(new GruKernel(node.Region, node.Guard, node.Id, node.Inputs[0], node.Id, _graph[node.Inputs[1]].Name, _graph[node.Inputs[2]].Name, node.Shape.Cols, node.Scalars[0]));
            else if (node.Op == OpKind.CausalConv1d)
            {
                var weight = _graph[node.Inputs[1]];
                _kernels.Add(new CausalConvKernel(node.Region, node.Guard, node.Id, node.Inputs[0], node.Id, weight.Name, weight.Shape.Dims[0], weight.Shape.Cols, node.Scalars[0]));
            }
            else if (node.Op == OpKind.SelectiveScan)
            {
                var a = _graph[node.Inputs[2]];
                _kernels.Add(new SelectiveScanKernel(node.Region, node.Guard, node.Id, node.Inputs[0], node.Inputs[1], node.Inputs[3], node.Inputs[4], node.Inputs[6], node.Id,
                    a.Name, _graph[node.Inputs[5]].Name, a.Shape.Dims[0], a.Shape.Cols, node.Scalars[0]));
            }
            else if (node.Op == OpKind.Concat)
                _kernels.Add(new ConcatKernel(node.Region, node.Guard, node.Id, node.Inputs[0], node.Inputs[1], node.Id));
            else if (node.Op == OpKind.Pool && _uses[node.Id].Count > 0)
                _kernels.Add(new PoolKernel(node.Region, node.Guard, node.Id, node.Inputs[0], node.Id, node.Scalars[0].Constant ?? "0"));
        }
        return _kernels.OrderBy(k => _graph.Regions[k.Region].Index).ThenBy(k => k.Anchor).ToList();
    }

    /// <summary>Ops whose values a kernel computes (weights, phis and merges are storage; Linear, Attention, the recurrences, Concat and Pool kernels of their own).</summary>
    private static bool IsComputed(OpKind op) => op is not (OpKind.Weight or OpKind.Phi or OpKind.Merge or OpKind.Linear or OpKind.Attention or OpKind.Lstm
        or OpKind.Gru or OpKind.CausalConv1d or OpKind.SelectiveScan or OpKind.Concat or OpKind.Pool);

    private static bool IsNorm(OpKind op) => op is OpKind.RmsNorm or OpKind.LayerNorm or OpKind.HeadRmsNorm or OpKind.L2Normalize;

    private void FindLinearOutputs()
    {
        foreach (var linear in _graph.Nodes.Where(n => n.Op == OpKind.Linear))
        {
            string weight = _graph[linear.Inputs[1]].Name;
            string bias = linear.Inputs.Count > 2 ? _graph[linear.Inputs[2]].Name : "";
            string format = FormatOf(weight), sparsity = SparsityOf(weight);
            var uses = _uses[linear.Id];
            bool sliced = uses.Count > 0 && uses.All(u => u >= 0 && _graph[u].Op == OpKind.Slice && _graph[u].Region == linear.Region && _graph[u].Guard == linear.Guard);
            if (!sliced)
            {
                _outputs[linear.Id] = new LinearOutput(linear.Id, linear, new WeightSlice(weight, ""), bias, linear.Shape.Cols, format, sparsity);
                continue;
            }
            _covered[linear.Id] = true;
            foreach (int use in uses)
            {
                var slice = _graph[use];
                string start = slice.Scalars[0].AsDim()!, rows = slice.Shape.Cols;
                _outputs[use] = new LinearOutput(use, linear, new WeightSlice(weight, start == "0" ? "" : start), bias, rows, format, sparsity);
            }
        }
    }

    /// <summary>The layout a Linear's weight asks for: its own [Quantize], else the model's, else AsStored.</summary>
    private string FormatOf(string weightKey)
    {
        var weight = _graph.Model.Weights.FirstOrDefault(w => w.Key == weightKey);
        if (weight is not null && weight.Format.Length > 0) return weight.Format;
        return _graph.Model.DefaultFormat.Length > 0 ? _graph.Model.DefaultFormat : "AsStored";
    }

    /// <summary>The sparse pattern a Linear's weight asks for: its own [Sparse], else the model's, else None (dense).</summary>
    private string SparsityOf(string weightKey)
    {
        var weight = _graph.Model.Weights.FirstOrDefault(w => w.Key == weightKey);
        return weight?.Sparse?.Pattern ?? _graph.Model.DefaultSparse?.Pattern ?? "None";
    }

    /// <summary>Norms (RMS or layer, not per head) read only by matmul outputs of their branch: applied by the matmul's input preparation.</summary>
    private void FoldNorms()
    {
        foreach (var norm in _graph.Nodes.Where(n => n.Op is OpKind.RmsNorm or OpKind.LayerNorm))
        {
            var uses = _uses[norm.Id];
            if (uses.Count > 0 && uses.All(u => u >= 0 && ReadsAsMatMulInput(u, norm)))
            {
                _foldedNorms.Add(norm.Id);
                _covered[norm.Id] = true;
            }
        }
    }

    /// <summary>True when node <paramref name="use"/> is a Linear (kept, or read through slices) of <paramref name="value"/>'s region and branch, with it as its input.</summary>
    private bool ReadsAsMatMulInput(int use, Node value)
    {
        var node = _graph[use];
        return node.Op == OpKind.Linear && node.Inputs[0] == value.Id && node.Inputs[1] != value.Id && node.Region == value.Region && node.Guard == value.Guard;
    }

    /// <summary>
    /// Which computed values live only inside their reader's loop. A value is inlined when it has one reader, in its
    /// region and branch, that computes it element by element: an elementwise op, a gather, a slice, a rope — or
    /// a folded norm (its chain joins the matmul's input preparation). Norm statistics need their input stored, and a
    /// rope is always stored (its partner column is read from the same row).
    /// </summary>
    private void MarkInlined()
    {
        for (int id = _graph.Nodes.Count - 1; id >= 0; id--)
        {
            var node = _graph[id];
            if (!IsComputed(node.Op) || _covered[id] || _outputs.ContainsKey(id) || node.Op == OpKind.Rope) continue;
            var uses = _uses[id];
            if (uses.Count != 1 || uses[0] < 0) continue;
            var reader = _graph[uses[0]];
            if (reader.Region != node.Region || reader.Guard != node.Guard) continue;
            bool inline = reader.Op switch
            {
                OpKind.RmsNorm or OpKind.LayerNorm => _foldedNorms.Contains(reader.Id) && reader.Inputs[0] == id && Elementwise(node),
                OpKind.HeadRmsNorm or OpKind.SelectRows or OpKind.L2Normalize => false,
                _ => IsComputed(reader.Op) && !_outputs.ContainsKey(reader.Id),
            };
            // Inside a folded norm's input preparation only element-by-element work fits (the norm's statistics come after it).
            if (inline && _foldedNorms.Any(n => Reaches(id, n)) && !Elementwise(node)) inline = false;
            _inlined[id] = inline;
        }
    }

    /// <summary>True when a program of <paramref name="node"/> (and what it inlines) has no statistics or rope.</summary>
    private bool Elementwise(Node node) =>
        !IsNorm(node.Op) && node.Op != OpKind.Rope && node.Inputs.All(i => !_inlined[i] || Elementwise(_graph[i]));

    /// <summary>True when value <paramref name="from"/> is read, through inlined values only, by node <paramref name="to"/>.</summary>
    private bool Reaches(int from, int to)
    {
        for (int id = from; ; )
        {
            var uses = _uses[id];
            if (uses.Count != 1 || uses[0] < 0) return false;
            if (uses[0] == to) return true;
            if (!_inlined[uses[0]]) return false;
            id = uses[0];
        }
    }

    /// <summary>
    /// When <paramref name="program"/> can be a tile epilogue: the matmul outputs it reads (one, or two of the same
    /// matmul for a pair), each read by nobody else; every other value it reads is computed before that matmul; no
    /// statistics; a rope only of adjacent pairs over whole heads. Null when it cannot.
    /// </summary>
    private List<LinearOutput>? Absorbable(int root, Program program)
    {
        var node = _graph[root];
        var reads = program.Elems.Where(e => e.Kind == ElemKind.Load && _outputs.ContainsKey(e.Value)).Select(e => _outputs[e.Value]).Distinct().ToList();
        if (reads.Count is 0 or > 2 || program.HasStats) return null;
        if (program.Elems.Any(e => e.Kind == ElemKind.Load && _outputs.ContainsKey(e.Value) && (e.Offset.Length > 0 || e.Map != RowMap.Same))) return null;
        // A rope ends a tile only over one output; for NeoX halves the rows are packed pair by pair, so the tile may read
        // nothing at a column of its own but the sums and vectors (which are read through the same order).
        if (program.Rope >= 0 && (reads.Count != 1
            || _ropeTables[program.Rope].NeoX && program.Elems.Any(e => e.Kind is ElemKind.Load or ElemKind.Gather && !_outputs.ContainsKey(e.Value))))
            return null;
        var first = reads[0];
        foreach (var read in reads)
        {
            if (!GroupKey(read).Equals(GroupKey(first)) || read.OutDim != first.OutDim) return null;
            if (read.Linear.Region != node.Region || read.Linear.Guard != node.Guard) return null;
            // Nobody else reads it: every reader of the output is inside this program.
            if (!_uses[read.Value].All(u => u >= 0 && InProgram(u, root))) return null;
        }
        int groupStart = GroupStart(first);
        foreach (int value in program.Loads)
        {
            if (reads.Any(r => r.Value == value)) continue;
            if (value >= groupStart || _outputs.ContainsKey(value) && GroupKey(_outputs[value]).Equals(GroupKey(first))) return null;
        }
        return reads.OrderBy(r => r.Value).ToList();
    }

    /// <summary>True when node <paramref name="id"/> is <paramref name="root"/> or inlined into it.</summary>
    private bool InProgram(int id, int root)
    {
        while (id != root)
        {
            if (!_inlined[id]) return false;
            id = _uses[id][0];
        }
        return true;
    }

    // Weights fuse only when they ask for one layout: one packed matrix has one format and one sparse pattern.
    private (int Input, int Region, int Guard, string Format, string Sparsity) GroupKey(LinearOutput output) =>
        (output.Linear.Inputs[0], output.Linear.Region, output.Linear.Guard, output.Format, output.Sparsity);

    /// <summary>The first Linear node of the matmul an output belongs to (outputs of later kernels come after it).</summary>
    private int GroupStart(LinearOutput output) =>
        _outputs.Values.Where(o => GroupKey(o).Equals(GroupKey(output))).Min(o => o.Linear.Id);

    private void MatMuls(Dictionary<int, Program> programs, Dictionary<int, (Program Program, List<LinearOutput> Reads)> epilogues)
    {
        var claimedBy = new Dictionary<int, int>(); // matmul output → the epilogue root that absorbs it
        foreach (int root in epilogues.Keys)
            foreach (var read in epilogues[root].Reads) claimedBy[read.Value] = root;

        foreach (var group in _outputs.Values.GroupBy(GroupKey).OrderBy(g => g.Min(o => o.Linear.Id)))
        {
            var outputs = group.OrderBy(o => o.Value).ToList();
            var key = group.Key;
            int anchor = outputs.Min(o => o.Linear.Id);
            var inputNode = _graph[key.Input];

            // The input: a value's rows, or a program computing them; then a folded norm.
            NormSpec? norm = null;
            int input = key.Input;
            Program? inputProgram = null;
            if (_foldedNorms.Contains(key.Input))
            {
                norm = new NormSpec(inputNode.Op == OpKind.RmsNorm ? "Rms" : "Layer", _graph[inputNode.Inputs[1]].Name,
                    inputNode.Inputs.Count > 2 ? _graph[inputNode.Inputs[2]].Name : "", inputNode.Scalars[0]);
                input = inputNode.Inputs[0];
            }
            if (_inlined[input])
                inputProgram = new ProgramBuilder(this, _graph[input]).Build();
            else if (programs.TryGetValue(input, out var chain) && !epilogues.ContainsKey(input) && _uses[input].All(u => u >= 0 && (ReadsAsMatMulInput(u, _graph[input]) || _foldedNorms.Contains(u)))
                     && !chain.HasStats && chain.Rope < 0)
            {
                // A chain read only by matmuls is computed by their input preparation, never stored.
                inputProgram = chain;
                _covered[input] = true;
            }
            if (inputProgram is { Elems.Count: 1 } only && only.Elems[0] is { Kind: ElemKind.Load, Offset: "", Map: RowMap.Same } load)
            {
                input = load.Value; // a plain read: the preparation reads the buffer as it is
                inputProgram = null;
            }

            var segments = new List<Segment>();
            var done = new HashSet<int>();
            foreach (var output in outputs)
            {
                if (done.Contains(output.Value)) continue;
                if (claimedBy.TryGetValue(output.Value, out int root))
                {
                    var (program, reads) = epilogues[root];
                    foreach (var read in reads) done.Add(read.Value);
                    _covered[root] = true;
                    var weights = reads.Select(r => r.Weight).ToEquatableArray();
                    segments.Add(new Segment(weights, output.OutDim, root, AsEpilogue(program, reads), program.Rope));
                }
                else
                {
                    done.Add(output.Value);
                    var elems = new List<Elem> { new(ElemKind.Accumulator, A: 0) };
                    if (output.Bias.Length > 0)
                    {
                        elems.Add(new Elem(ElemKind.Vector, Weight: output.Bias, Offset: output.Weight.RowStart));
                        elems.Add(new Elem(ElemKind.Binary, "Add", 0, 1));
                    }
                    var plain = new Program(elems.ToEquatableArray(), elems.Count - 1, EquatableArray<RowStat>.Empty, -1, output.Linear.Shape.Rows,
                        output.OutDim, "", output.Bias.Length > 0 ? $"[{Short(output.Weight.Key)}] + {Short(output.Bias)}" : "");
                    segments.Add(new Segment(EquatableArray.Create(output.Weight), output.OutDim, output.Value, plain, -1));
                }
            }

            string packed = string.Join("", segments.SelectMany(s => s.Weights).Select(w => Short(w.Key)).Distinct());
            string layers = segments.SelectMany(s => s.Weights).Select(w => w.Key).Where(w => w.Contains('.')).Select(w => w.Substring(0, w.IndexOf('.'))).FirstOrDefault() ?? "";
            string field = "_" + char.ToLowerInvariant(packed[0]) + packed.Substring(1);
            string name = field;
            for (int i = 2; !_packedNames.Add(name); i++) name = field + i;
            _kernels.Add(new MatMulKernel(key.Region, key.Guard, anchor, input, inputProgram, norm, _graph[outputs[0].Linear.Inputs[1]].Shape.Cols,
                outputs[0].Linear.Shape.Rows, name, layers, segments.ToEquatableArray(), key.Format, key.Sparsity));
        }
    }

    /// <summary>An epilogue: the program with each absorbed output's load replaced by its accumulator (plus its bias).</summary>
    private static Program AsEpilogue(Program program, List<LinearOutput> reads)
    {
        var elems = new List<Elem>();
        var remap = new int[program.Elems.Count];
        for (int i = 0; i < program.Elems.Count; i++)
        {
            var elem = program.Elems[i];
            int pair = reads.FindIndex(r => elem.Kind == ElemKind.Load && r.Value == elem.Value);
            if (pair >= 0)
            {
                elems.Add(new Elem(ElemKind.Accumulator, A: pair));
                if (reads[pair].Bias.Length > 0)
                {
                    elems.Add(new Elem(ElemKind.Vector, Weight: reads[pair].Bias, Offset: reads[pair].Weight.RowStart));
                    elems.Add(new Elem(ElemKind.Binary, "Add", elems.Count - 2, elems.Count - 1));
                }
            }
            else
            {
                elems.Add(elem with { A = elem.A >= 0 && elem.Kind is ElemKind.Unary or ElemKind.Binary ? remap[elem.A] : elem.A, B = elem.B >= 0 ? remap[elem.B] : elem.B });
            }
            remap[i] = elems.Count - 1;
        }
        string description = program.Description;
        foreach (var read in reads) description = description.Replace($"⟨{read.Value}⟩", $"[{Short(read.Weight.Key)}]");
        return program with { Elems = elems.ToEquatableArray(), Root = remap[program.Root], Description = description };
    }

    private static string Short(string weight) => weight.Substring(weight.LastIndexOf('.') + 1);

    private int RopeTableFor(Node rope)
    {
        var headDim = rope.Scalars[0];
        var freqBase = rope.Scalars[1];
        bool neoX = rope.Scalars.Count > 2 && rope.Scalars[2].Constant == "2";
        var rotary = rope.Scalars.Count > 3 && rope.Scalars[3].Constant != "0" ? rope.Scalars[3] : null;
        var existing = _ropeTables.FirstOrDefault(t => t.HeadDim.Equals(headDim) && t.Base.Equals(freqBase) && t.NeoX == neoX && Equals(t.RotaryDims, rotary));
        if (existing is not null) return existing.Index;
        _ropeTables.Add(new RopeTable(_ropeTables.Count, headDim, freqBase, rotary, neoX));
        return _ropeTables.Count - 1;
    }

    /// <summary>Writes one root's program: its inlined nodes as elements, what it reads as loads, vectors, gathers and scalars.</summary>
    private sealed class ProgramBuilder
    {
        private readonly Fusion _fusion;
        private readonly Node _root;
        private readonly List<Elem> _elems = new();
        private readonly List<RowStat> _stats = new();
        private readonly Dictionary<(int Node, string Offset), int> _built = new();
        private readonly List<string> _described = new();
        private string _group = "";
        private int _rope = -1;

        public ProgramBuilder(Fusion fusion, Node root)
        {
            _fusion = fusion;
            _root = root;
        }

        private Graph Graph => _fusion._graph;

        public Program Build()
        {
            int root;
            if (_root.Op == OpKind.Rope)
            {
                _rope = _fusion.RopeTableFor(_root);
                _group = _root.Scalars[0].AsDim() ?? "";
                root = Value(_root.Inputs[0], "");
            }
            else
            {
                root = Node(_root, "");
            }
            return new Program(_elems.ToEquatableArray(), root, _stats.ToEquatableArray(), _rope, _root.Shape.Rows, _root.Shape.Cols, _group,
                Describe(_root, 0));
        }

        /// <summary>The element for value <paramref name="id"/> at column offset <paramref name="offset"/>: inlined, or read.</summary>
        private int Value(int id, string offset)
        {
            var node = Graph[id];
            if (node.Op == OpKind.Weight)
                return Add(new Elem(ElemKind.Vector, Weight: node.Name, Offset: offset));
            if (_fusion._inlined[id] && !_fusion._outputs.ContainsKey(id)) return Node(node, offset);
            return Load(id, offset, RowMap.Same);
        }

        private int Load(int id, string offset, RowMap map) => Add(new Elem(ElemKind.Load, Value: id, Offset: offset, Map: map));

        private int Node(Node node, string offset)
        {
            if (_built.TryGetValue((node.Id, offset), out int known)) return known;
            int result = node.Op switch
            {
                OpKind.Embedding => Add(new Elem(ElemKind.Gather, Weight: Graph[node.Inputs[0]].Name, Offset: offset, Map: RowMap.Tokens)),
                OpKind.PositionEmbedding => Add(new Elem(ElemKind.Gather, Weight: Graph[node.Inputs[0]].Name, Offset: offset, Map: RowMap.Positions)),
                OpKind.TokenTypeEmbedding => Add(new Elem(ElemKind.Gather, Weight: Graph[node.Inputs[0]].Name, Offset: offset, Map: RowMap.TokenTypes)),
                OpKind.SelectRows => Load(node.Inputs[0], offset, RowMap.Selected),
                OpKind.Slice => Value(node.Inputs[0], Sum(offset, node.Scalars[0].AsDim()!)),
                OpKind.RmsNorm or OpKind.HeadRmsNorm => Norm(node, offset, layer: false),
                OpKind.LayerNorm => Norm(node, offset, layer: true),
                OpKind.L2Normalize => L2(node, offset),
                OpKind.Silu => Silu(Value(node.Inputs[0], offset)),
                OpKind.Sigmoid => Sigmoid(Value(node.Inputs[0], offset)),
                OpKind.Gelu => Gelu(Value(node.Inputs[0], offset)),
                OpKind.GeluErf => GeluErf(Value(node.Inputs[0], offset)),
                OpKind.Relu => Binary("Max", Value(node.Inputs[0], offset), Constant(0)),
                OpKind.Tanh => Unary("Tanh", Value(node.Inputs[0], offset)),
                OpKind.Exp => Unary("Exp", Value(node.Inputs[0], offset)),
                OpKind.Neg => Unary("Neg", Value(node.Inputs[0], offset)),
                OpKind.Softplus => Softplus(Value(node.Inputs[0], offset)),
                OpKind.SoftCap => SoftCap(Value(node.Inputs[0], offset), node.Scalars[0]),
                OpKind.Add or OpKind.Sub or OpKind.Mul or OpKind.Div => Arithmetic(node, offset),
                _ => Load(node.Id, offset, RowMap.Same),
            };
            _built[(node.Id, offset)] = result;
            return result;
        }

        private int Arithmetic(Node node, string offset)
        {
            int a, b;
            if (node.Inputs.Count == 2)
            {
                a = Value(node.Inputs[0], offset);
                b = Value(node.Inputs[1], offset);
            }
            else
            {
                int tensor = Value(node.Inputs[0], offset), scalar = Add(new Elem(ElemKind.Scalar, Scalar: node.Scalars[0]));
                (a, b) = node.ScalarFirst ? (scalar, tensor) : (tensor, scalar);
            }
            return Binary(node.Op.ToString(), a, b);
        }

        /// <summary>A norm: its statistics over the stored input row (or head), then (x − mean)·scale·w (+ b) element by element.</summary>
        private int Norm(Node node, string offset, bool layer)
        {
            int input = node.Inputs[0];
            string group = node.Op == OpKind.HeadRmsNorm ? Graph[node.Inputs[1]].Shape.Cols : "";
            if (group.Length > 0) _group = group;
            int stat = _stats.Count;
            _stats.Add(new RowStat(layer ? "Moments" : "Rms", input, RowMap.Same, offset, group, node.Scalars[0]));
            int x = Load(input, offset, RowMap.Same);
            if (layer) x = Binary("Sub", x, Add(new Elem(ElemKind.Stat, "Mean", A: stat)));
            int scaled = Binary("Mul", x, Add(new Elem(ElemKind.Stat, "Scale", A: stat)));
            int weighted = Binary("Mul", scaled, Add(new Elem(ElemKind.Vector, Weight: Graph[node.Inputs[1]].Name, Offset: group.Length > 0 ? "" : offset, PerHead: group.Length > 0)));
            return node.Inputs.Count > 2
                ? Binary("Add", weighted, Add(new Elem(ElemKind.Vector, Weight: Graph[node.Inputs[2]].Name, Offset: offset)))
                : weighted;
        }

        /// <summary>x · 1/max(‖x‖₂, eps): the row's Σx² first (a statistic, in double), then a scale per element.</summary>
        private int L2(Node node, string offset)
        {
            int input = node.Inputs[0];
            int stat = _stats.Count;
            _stats.Add(new RowStat("L2", input, RowMap.Same, offset, "", node.Scalars[0]));
            return Binary("Mul", Load(input, offset, RowMap.Same), Add(new Elem(ElemKind.Stat, "Scale", A: stat)));
        }

        // Activations, composed from primitives: the one place each is defined for the compiled kernels.
        private int Silu(int x) => Binary("Div", x, Binary("Add", Constant(1), Unary("Exp", Unary("Neg", x))));

        private int Sigmoid(int x) => Binary("Div", Constant(1), Binary("Add", Constant(1), Unary("Exp", Unary("Neg", x))));

        private int Gelu(int x)
        {
            int cube = Binary("Mul", Binary("Mul", x, x), x);
            int inner = Binary("Mul", Constant(0.7978845608028654), Binary("Add", x, Binary("Mul", Constant(0.044715), cube)));
            return Binary("Mul", Binary("Mul", Constant(0.5), x), Binary("Add", Constant(1), Unary("Tanh", inner)));
        }

        private int GeluErf(int x) =>
            Binary("Mul", Binary("Mul", Constant(0.5), x), Binary("Add", Constant(1), Unary("Erf", Binary("Mul", x, Constant(0.7071067811865476)))));

        private int Softplus(int x) =>
            Binary("Add", Binary("Max", x, Constant(0)), Unary("Log", Binary("Add", Constant(1), Unary("Exp", Unary("Neg", Unary("Abs", x))))));

        private int SoftCap(int x, ScalarExpr cap)
        {
            int c = Add(new Elem(ElemKind.Scalar, Scalar: cap));
            return Binary("Mul", c, Unary("Tanh", Binary("Div", x, c)));
        }

        private int Constant(double value) =>
            Add(new Elem(ElemKind.Scalar, Scalar: ScalarExpr.Literal(value.ToString("R", CultureInfo.InvariantCulture) + "f", "float")));

        private int Unary(string op, int a) => Add(new Elem(ElemKind.Unary, op, a));

        private int Binary(string op, int a, int b) => Add(new Elem(ElemKind.Binary, op, a, b));

        private int Add(Elem elem)
        {
            // Equal elements are one element: a DAG, so x in x·sigmoid(x) is read once.
            int existing = _elems.IndexOf(elem);
            if (existing >= 0) return existing;
            _elems.Add(elem);
            return _elems.Count - 1;
        }

        private static string Sum(string offset, string add) =>
            offset.Length == 0 ? (add == "0" ? "" : add) : add == "0" ? offset : offset + "+" + add;

        /// <summary>The computation in the forward method's terms, for the fusion report: "silu(gate)·up", "x + rmsnorm(o)".</summary>
        private string Describe(Node node, int depth)
        {
            // An inlined operand that is itself arithmetic is parenthesized, so "a − (b − c)" reads as it computes.
            string Arg(int i) => Graph[node.Inputs[i]] is var input && (input.Op == OpKind.Weight || !_fusion._inlined[input.Id] || _fusion._outputs.ContainsKey(input.Id) || depth > 6)
                ? Name(input)
                : input.Op is OpKind.Add or OpKind.Sub or OpKind.Mul or OpKind.Div ? $"({Describe(input, depth + 1)})" : Describe(input, depth + 1);
            // A scalar operand keeps its parentheses: it sits inside a larger expression.
            string scalar = node.Scalars.Count > 0 ? node.Scalars[0].Render("", "layer").Replace("global::System.", "") : "";
            return node.Op switch
            {
                OpKind.Embedding => $"{Short(Graph[node.Inputs[0]].Name)}[tokens]",
                OpKind.PositionEmbedding => $"{Short(Graph[node.Inputs[0]].Name)}[positions]",
                OpKind.TokenTypeEmbedding => $"{Short(Graph[node.Inputs[0]].Name)}[token types]",
                OpKind.L2Normalize => $"l2normalize({Arg(0)})",
                OpKind.SelectRows => $"rows({Arg(0)})",
                OpKind.Slice => $"{Arg(0)}[:, {node.Scalars[0]}..+{node.Scalars[1]}]",
                OpKind.RmsNorm => $"rmsnorm({Arg(0)}, {Short(Graph[node.Inputs[1]].Name)})",
                OpKind.HeadRmsNorm => $"head_rmsnorm({Arg(0)}, {Short(Graph[node.Inputs[1]].Name)})",
                OpKind.LayerNorm => $"layernorm({Arg(0)}, {Short(Graph[node.Inputs[1]].Name)})",
                OpKind.Rope => $"rope{(_fusion._ropeTables.Count > 0 && node.Scalars.Count > 2 && node.Scalars[2].Constant == "2" ? "_neox" : "")}({Arg(0)})",
                OpKind.Add when node.Inputs.Count == 2 => $"{Arg(0)} + {Arg(1)}",
                OpKind.Sub when node.Inputs.Count == 2 => $"{Arg(0)} − {Arg(1)}",
                OpKind.Mul when node.Inputs.Count == 2 => $"{Arg(0)}·{Arg(1)}",
                OpKind.Div when node.Inputs.Count == 2 => $"{Arg(0)} / {Arg(1)}",
                OpKind.Add => $"{Arg(0)} + {scalar}",
                OpKind.Sub => node.ScalarFirst ? $"{scalar} − {Arg(0)}" : $"{Arg(0)} − {scalar}",
                OpKind.Mul => $"{Arg(0)}·{scalar}",
                OpKind.Div => node.ScalarFirst ? $"{scalar} / {Arg(0)}" : $"{Arg(0)} / {scalar}",
                OpKind.SoftCap => $"softcap({Arg(0)}, {scalar})",
                _ => $"{node.Op.ToString().ToLowerInvariant()}({Arg(0)})",
            };
        }

        /// <summary>A leaf: a weight by its name; a stored value as a placeholder the report resolves to its buffer (<see cref="FusionReport.Resolve"/>).</summary>
        private static string Name(Node node) => node.Op == OpKind.Weight ? Short(node.Name) : $"⟨{node.Id}⟩";
    }
}
