using System.Linq;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Ir;
using Kiln.Generators.Syntax;

namespace Kiln.Generators.Passes;

/// <summary>A fused kernel of the plan. Reads and Writes are SSA value ids (the arena planner's liveness input).</summary>
internal abstract record Kernel(int Region)
{
    public abstract EquatableArray<int> Reads { get; }

    public abstract EquatableArray<int> Writes { get; }

    /// <summary>True when this kernel reads <paramref name="value"/> only elementwise at the position it writes (a residual).</summary>
    public virtual bool ReadsOnlyAsResidual(int value) => false;
}

/// <summary>Embedding: rows of a weight table gathered per token.</summary>
internal sealed record GatherKernel(int Region, string Table, int Output) : Kernel(Region)
{
    public override EquatableArray<int> Reads => EquatableArray<int>.Empty;

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

internal enum SegmentKind
{
    /// <summary>output = acc</summary>
    Plain,
    /// <summary>adjacent output pairs rotated by the token's position</summary>
    Rope,
    /// <summary>output = residual + acc (in place when the planner coalesces them)</summary>
    Residual,
    /// <summary>two interleaved weights; output = silu(acc₀)·acc₁</summary>
    SwiGlu,
}

/// <summary>A row range of a packed matrix and its epilogue. OutDim counts outputs (a SwiGLU segment has 2·OutDim rows).</summary>
internal sealed record Segment(SegmentKind Kind, EquatableArray<string> Weights, string OutDim, int Output, int Residual, int RopeTable, string Description);

/// <summary>
/// A horizontal matmul: several Linears sharing one input and layout, their weights packed into one matrix (segments
/// stacked, each padded to 4-row groups; gate/up interleaved), an optional RMSNorm fused into the input preparation
/// (1/rms per token once, x·(1/rms)·g written or quantized in one pass) and one epilogue per segment.
/// <see cref="Format"/> is the WeightFormat member name the weights ask for ("AsStored": chosen per file).
/// </summary>
internal sealed record MatMulKernel(
    int Region,
    int Input,
    string InDim,
    string Packed,
    string LayersMember,
    string NormWeight,
    ScalarArg? NormEps,
    EquatableArray<Segment> Segments,
    string Format = "AsStored") : Kernel(Region)
{
    public override EquatableArray<int> Reads =>
        new[] { Input }.Concat(Segments.Where(s => s.Residual >= 0).Select(s => s.Residual)).ToEquatableArray();

    public override EquatableArray<int> Writes => Segments.Select(s => s.Output).ToEquatableArray();

    public override bool ReadsOnlyAsResidual(int value) => value != Input && Segments.Any(s => s.Residual == value);
}

/// <summary>KV-cache write of k and v, then causal GQA attention per token and head.</summary>
internal sealed record AttentionKernel(int Region, int Q, int K, int V, int Output, ScalarArg Layer, ScalarArg Heads, ScalarArg KvHeads) : Kernel(Region)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Q, K, V);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

internal sealed record SelectRowsKernel(int Region, int Input, int Output) : Kernel(Region)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Input);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

/// <summary>An RMSNorm that could not fold into a matmul (a consumer other than Linear).</summary>
internal sealed record RmsNormKernel(int Region, int Input, string Weight, ScalarArg Eps, int Output) : Kernel(Region)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Input);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

/// <summary>A rotary embedding that could not become a matmul epilogue.</summary>
internal sealed record RopeKernel(int Region, int Input, int RopeTable, int Output) : Kernel(Region)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Input);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

/// <summary>Silu, Mul or Add that no matmul epilogue absorbed.</summary>
internal sealed record ElementwiseKernel(int Region, OpKind Op, int A, int B, int Output) : Kernel(Region)
{
    public override EquatableArray<int> Reads => B < 0 ? EquatableArray.Create(A) : EquatableArray.Create(A, B);

    public override EquatableArray<int> Writes => EquatableArray.Create(Output);
}

/// <summary>A buffer-to-buffer copy the planner inserts where a loop-carried value cannot share its buffer.</summary>
internal sealed record CopyKernel(int Region, int Source, int Destination) : Kernel(Region)
{
    public override EquatableArray<int> Reads => EquatableArray.Create(Source);

    public override EquatableArray<int> Writes => EquatableArray.Create(Destination);
}

/// <summary>Per-step cos/sin table for one (headDim, base) pair, computed in double like the eager op.</summary>
internal sealed record RopeTable(int Index, ScalarArg HeadDim, ScalarArg Base);

/// <summary>An arena buffer (one storage class of values). Slot -1 is the caller's logits span.</summary>
internal sealed record Buffer(int Index, string Name, string Rows, string Cols, int Slot);

/// <summary>The fused, planned model: what the emitters turn into source.</summary>
internal sealed record Plan(
    ModelInfo Model,
    EquatableArray<RegionInfo> Regions,
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
    EquatableArray<string> Report);

internal sealed record PlanResult(string HintName, Plan? Plan, EquatableArray<DiagnosticInfo> Diagnostics);
