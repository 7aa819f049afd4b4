using System.Linq;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Ir;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Passes;

// ---- Elementwise programs: the loop bodies the generator writes ------------------------------------------------------

internal enum ElemKind
{
    /// <summary>Value <see cref="Elem.Value"/> at the program's row (through <see cref="Elem.Map"/>) and column + <see cref="Elem.Offset"/>.</summary>
    Load,
    /// <summary>A matmul's sum for this column: accumulator <see cref="Elem.A"/> (1: a pair's second weight). Epilogues only.</summary>
    Accumulator,
    /// <summary>Row-vector weight <see cref="Elem.Weight"/> at the column + Offset (per head: at the column within the head).</summary>
    Vector,
    /// <summary>Row tokens[t] or positions[t] (<see cref="Elem.Map"/>) of table <see cref="Elem.Weight"/>, at the column.</summary>
    Gather,
    /// <summary>Scalar <see cref="Elem.Scalar"/>, the same in every lane.</summary>
    Scalar,
    /// <summary>Statistic <see cref="Elem.A"/> of the row (or head): Op "Scale" (1/rms or 1/σ) or "Mean".</summary>
    Stat,
    /// <summary>A primitive of one argument: Op "Neg", "Exp", "Log", "Tanh", "Erf", "Abs".</summary>
    Unary,
    /// <summary>A primitive of two: Op "Add", "Sub", "Mul", "Div", "Max".</summary>
    Binary,
}

/// <summary>Which row of a loaded value a program's row t reads.</summary>
internal enum RowMap
{
    /// <summary>Row t itself.</summary>
    Same,
    /// <summary>Row outputRows[t] (a SelectRows that fused).</summary>
    Selected,
    /// <summary>Gathers: table row tokens[t].</summary>
    Tokens,
    /// <summary>Gathers: table row positions[t].</summary>
    Positions,
    /// <summary>Gathers: table row tokenTypes[t].</summary>
    TokenTypes,
}

/// <summary>One node of an elementwise program; arguments are indices of earlier elements.</summary>
internal sealed record Elem(ElemKind Kind, string Op = "", int A = -1, int B = -1, int Value = -1, string Weight = "", string Offset = "",
    RowMap Map = RowMap.Same, ScalarExpr? Scalar = null, bool PerHead = false);

/// <summary>
/// A reduction a norm needs before its elementwise part: Σx² ("Rms", and "L2" for an L2 normalization) or mean and variance ("Moments") of value
/// <see cref="Value"/>'s row (through <see cref="Map"/>, columns from <see cref="Offset"/>), over the whole row
/// (<see cref="Group"/> "") or per head of Group columns.
/// </summary>
internal sealed record RowStat(string Kind, int Value, RowMap Map, string Offset, string Group, ScalarExpr Eps);

/// <summary>Per-step cos/sin tables for one rotary embedding: its rotary dims, base, and pair layout (computed in double, like the eager op).</summary>
internal sealed record RopeTable(int Index, ScalarExpr HeadDim, ScalarExpr Base, ScalarExpr? RotaryDims, bool NeoX)
{
    /// <summary>The rotated dimensions per head: rotaryDims, or the whole head when it is 0 or absent.</summary>
    public string Rotary(string instance) => RotaryDims is null || RotaryDims.Constant == "0"
        ? HeadDim.Render(instance, "0")
        : $"({RotaryDims.Render(instance, "0")} == 0 ? {HeadDim.Render(instance, "0")} : {RotaryDims.Render(instance, "0")})";
}

/// <summary>
/// The loop body of a fused kernel: elementwise work composed from primitives (the generator expands SiLU, GELU, …
/// into them), computing one value per (row, column) of <see cref="Rows"/> × <see cref="Cols"/>. A program may read
/// row statistics (norms) and end in a rotary embedding (<see cref="Rope"/>, which reads each pair's partner column).
/// <see cref="Group"/> is the head size when statistics or rope work per head ("" otherwise). <see cref="Description"/>
/// is what it computes, in the forward method's terms.
/// </summary>
internal sealed record Program(
    EquatableArray<Elem> Elems,
    int Root,
    EquatableArray<RowStat> Stats,
    int Rope,
    string Rows,
    string Cols,
    string Group,
    string Description)
{
    public bool HasStats => Stats.Count > 0;

    /// <summary>Values read at the program's rows (for liveness).</summary>
    public EquatableArray<int> Loads => Elems.Where(e => e.Kind == ElemKind.Load).Select(e => e.Value)
        .Concat(Stats.Select(s => s.Value)).Distinct().ToEquatableArray();

    /// <summary>
    /// True when the program reads <paramref name="value"/> only at the row and column it writes (so it may write in
    /// place): no offset, no row map, no rope partner, no statistics over it.
    /// </summary>
    public bool ReadsOnlyInPlace(int value) =>
        Rope < 0 && !Stats.Any(s => s.Value == value)
        && Elems.Where(e => e.Kind == ElemKind.Load && e.Value == value).All(e => e.Offset.Length == 0 && e.Map == RowMap.Same);
}

// ---- Kernels ---------------------------------------------------------------------------------------------------------

/// <summary>
/// A fused kernel of the plan. Reads and Writes are SSA value ids (the arena planner's liveness input).
/// <see cref="Guard"/> is the if-branch it runs under (-1: always); <see cref="Anchor"/> orders kernels in a region.
/// </summary>
internal abstract record Kernel(int Region, int Guard, int Anchor)
{
    public abstract EquatableArray<int> Reads { get; }

    public abstract EquatableArray<int> Writes { get; }

    /// <summary>True when this kernel may write <paramref name="output"/> over <paramref name="value"/> (it reads it only where it writes).</summary>
    public virtual bool CanWriteInPlace(int value, int output) => false;
}

/// <summary>A weight's rows [RowStart, RowStart + rows) — the whole weight, or one part of a fused QKV or gate/up matrix.</summary>
internal sealed record WeightSlice(string Key, string RowStart);

/// <summary>
/// A row range of a packed matrix and its epilogue. <see cref="Weights"/> is one weight, or two whose rows are
/// interleaved (a pair: each adjacent row pair yields one output from both sums, e.g. silu(gate)·up). OutDim counts
/// outputs. The epilogue program reads the accumulator(s) and writes <see cref="Output"/>; a rotary embedding of
/// adjacent pairs may end it (<see cref="Rope"/> ≥ 0: the rope table).
/// </summary>
internal sealed record Segment(EquatableArray<WeightSlice> Weights, string OutDim, int Output, Program Epilogue, int Rope)
{
    public bool IsPair => Weights.Count == 2;
}

/// <summary>How a matmul's input preparation normalizes each row (folded from an RmsNorm or LayerNorm whose only readers are this matmul's Linears).</summary>
internal sealed record NormSpec(string Kind, string Weight, string Bias, ScalarExpr Eps);

/// <summary>
/// A horizontal matmul: several Linears sharing one input and layout, their weights packed into one matrix
/// (segments stacked, each padded to 4-row groups; pairs interleaved). The input is value <see cref="Input"/>'s rows,
/// or computed per row by <see cref="InputProgram"/> (a fused elementwise chain, gathered rows); then normalized by
/// <see cref="Norm"/> once for every weight; then each segment's epilogue runs on its tiles.
/// <see cref="Format"/> is the WeightFormat member name the weights ask for ("AsStored": chosen per file);
/// <see cref="Sparsity"/> the SparsePattern member name ("None": dense), which PlanOptions.Sparsity can override.
/// </summary>
internal sealed record MatMulKernel(
    int Region,
    int Guard,
    int Anchor,
    int Input,
    Program? InputProgram,
    NormSpec? Norm,
    string InDim,
    string Rows,
    string Packed,
    string LayersMember,
    EquatableArray<Segment> Segments,
    string Format = "AsStored",
    string Sparsity = "None") : Kernel(Region, Guard, Anchor)
{
    public override EquatableArray<int> Reads =>
        (InputProgram is null ? new[] { Input } : InputProgram.Loads.ToArray())
            .Concat(Segments.SelectMany(s => s.Epilogue.Loads)).Distinct().ToEquatableArray();

    public override EquatableArray<int> Writes => Segments.Select(s => s.Output).ToEquatableArray();

    // A plain input may be read by the tiles themselves (float layouts read it in place), so it is never written over;
    // an input program's rows are computed into the preparation's scratch before any tile runs.
    public override bool CanWriteInPlace(int value, int output) =>
        (InputProgram is not null || value != Input)
        && Segments.Where(s => s.Output == output).All(s => s.Rope < 0 && s.Epilogue.ReadsOnlyInPlace(value))
        && Segments.Where(s => s.Output != output).All(s => !s.Epilogue.Loads.Contains(value));
}

/// <summary>A standalone fused loop: <see cref="Program"/> over every (row, column), on the worker pool, writing <see cref="Output"/>.</summary>
internal sealed record ElementwiseKernel(int Region, int Guard, int Anchor, int Output, Program Program) : Kernel(Region, Guard, Anchor)
{
    public override EquatableArray<int> Reads => Program.Loads;

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);

    public override bool CanWriteInPlace(int value, int output) => output == Output && Program.ReadsOnlyInPlace(value);
}

/// <summary>
/// KV-cache write of k and v, then GQA attention per token and head. Options are the forward's scalars (null: the
/// op's default): Scale (0 → 1/√HeadDim), Window, SoftCap, Causal.
/// </summary>
internal sealed record AttentionKernel(int Region, int Guard, int Anchor, int Q, int K, int V, int Output, ScalarExpr Layer, ScalarExpr Heads, ScalarExpr KvHeads,
    ScalarExpr Scale, ScalarExpr Window, ScalarExpr SoftCap, ScalarExpr Causal) : Kernel(Region, Guard, Anchor)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Q, K, V);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

/// <summary>
/// An LSTM layer's recurrence (Ops.Lstm): per sequence of the step, its tokens in order from its state slot, the
/// recurrent weight <see cref="Recurrent"/> (a weight key) read as float32, <see cref="Hidden"/> the hidden size.
/// </summary>
internal sealed record LstmKernel(int Region, int Guard, int Anchor, int Gates, int Output, string Recurrent, string Hidden, ScalarExpr Layer) : Kernel(Region, Guard, Anchor)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Gates);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

/// <summary>
/// A GRU layer's recurrence (Ops.Gru): per sequence of the step, its tokens in order from its state slot; the
/// recurrent weight and bias (weight keys) read as float32, <see cref="Hidden"/> the hidden size.
/// </summary>
internal sealed record GruKernel(int Region, int Guard, int Anchor, int Gates, int Output, string Recurrent, string RecurrentBias, string Hidden, ScalarExpr Layer) : Kernel(Region, Guard, Anchor)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Gates);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

/// <summary>
/// A causal depthwise convolution (Ops.CausalConv1d): per (sequence, block of channels), its tokens in order from the
/// carried inputs in its state slot; <see cref="Weight"/> (a weight key) read as float32, [Channels, Width].
/// </summary>
internal sealed record CausalConvKernel(int Region, int Guard, int Anchor, int Input, int Output, string Weight, string Channels, string Width, ScalarExpr Layer) : Kernel(Region, Guard, Anchor)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Input);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

/// <summary>
/// Mamba-1's selective scan (Ops.SelectiveScan): per (sequence, block of channels), its tokens in order from its
/// state slot; <see cref="A"/> and <see cref="D"/> are weight keys read as float32.
/// </summary>
internal sealed record SelectiveScanKernel(int Region, int Guard, int Anchor, int X, int Dt, int B, int C, int Z, int Output, string A, string D,
    string Channels, string StateSize, ScalarExpr Layer) : Kernel(Region, Guard, Anchor)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(X, Dt, B, C, Z);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

/// <summary>One row per sequence of the step from its tokens' rows (Ops.Pool): <see cref="Pooling"/> is the Kiln.Pooling member's value.</summary>
internal sealed record PoolKernel(int Region, int Guard, int Anchor, int Input, int Output, string Pooling) : Kernel(Region, Guard, Anchor)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Input);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);

    /// <summary>The Kiln.Pooling member the kernel computes.</summary>
    public string Mode => Pooling switch { "1" => "Cls", "2" => "LastToken", _ => "Mean" };
}

/// <summary>Columns of a and b side by side (Ops.Concat): two row copies.</summary>
internal sealed record ConcatKernel(int Region, int Guard, int Anchor, int A, int B, int Output) : Kernel(Region, Guard, Anchor)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(A, B);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

/// <summary>A buffer-to-buffer copy the planner inserts where a loop-carried or merged value cannot share its buffer.</summary>
internal sealed record CopyKernel(int Region, int Guard, int Anchor, int Source, int Destination) : Kernel(Region, Guard, Anchor)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Source);

    public override EquatableArray<int> Writes => EquatableArray.Create(Destination);
}

/// <summary>An arena buffer (one storage class of values). Slot -1 is the caller's logits span.</summary>
internal sealed record Buffer(int Index, string Name, string Rows, string Cols, int Slot);

/// <summary>
/// An optional layer weight ([Weight(Optional = true)]) and the branches that read it: <see cref="Guards"/> holds the
/// guard of every reader (-1: read unconditionally), so load can say which layer takes a branch without it.
/// </summary>
internal sealed record OptionalWeightUse(string Key, EquatableArray<int> Guards);

/// <summary>
/// The fused, planned model: what the emitters turn into source. <see cref="KvLayers"/> is the count member of the
/// attention's layer loop, "1" outside one, or <see cref="Plan.CountedKvLayers"/> when attention runs only in some
/// layers' branch or names its cache layer by an expression: then load counts the cache layers from the file.
/// </summary>
internal sealed record Plan(
    ModelInfo Model,
    EquatableArray<RegionInfo> Regions,
    EquatableArray<GuardInfo> Guards,
    EquatableArray<Kernel> Kernels,
    EquatableArray<Buffer> Buffers,
    EquatableArray<int> ValueBuffers,
    int SlotCount,
    EquatableArray<RopeTable> RopeTables,
    EquatableArray<string> Dims,
    string ResultRows,
    string VocabDim,
    string KvDim,
    string KvLayers,
    EquatableArray<string> Report,
    EquatableArray<OptionalWeightUse> OptionalWeights = default)
{
    /// <summary>The generated model field load fills with the number of KV cache layers the file's layers attend with.</summary>
    public const string CountedKvLayers = "KilnKvLayers";
}

internal static class PlanFacts
{
    /// <summary>Whether the plan has recurrent layers (LSTM, GRU, Mamba's convolution or scan): they read and write each sequence's state slot.</summary>
    public static bool HasRecurrentLayers(this Plan plan) => plan.Kernels.Any(k => k is LstmKernel or GruKernel or CausalConvKernel or SelectiveScanKernel);
}

internal sealed record PlanResult(string HintName, Plan? Plan, EquatableArray<DiagnosticInfo> Diagnostics);
