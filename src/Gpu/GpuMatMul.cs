using ILGPU;
using ILGPU.Runtime;
using Kiln.Gpu.Kernels;

namespace Kiln.Gpu;

/// <summary>
/// One generated matmul's kernels, loaded once per layout its weights took in this model file: the float layouts
/// run <see cref="MatVec.FloatRows"/> with the input chain and the norm fused; the quantized ones first quantize the
/// (normalized) input to Q8 activations (<see cref="MatVec.Prepare"/>), then run their integer kernel. Every one ends
/// in the generated epilogue.
/// </summary>
public sealed class GpuMatMul<TInput, TEpilogue>
    where TInput : struct, IGpuInput
    where TEpilogue : struct, IGpuEpilogue
{
    private readonly GpuPlan _plan;
    private Action<KernelConfig, MatVecShape, F32Rows, TInput, GpuNorm, TEpilogue>? _f32;
    private Action<KernelConfig, MatVecShape, F16Rows, TInput, GpuNorm, TEpilogue>? _f16;
    private Action<KernelConfig, MatVecShape, BF16Rows, TInput, GpuNorm, TEpilogue>? _bf16;
    private Action<KernelConfig, MatVecShape, ArrayView<int>, ArrayView<float>, Q8Activations, TEpilogue>? _q8, _q4;
    private Action<KernelConfig, MatVecShape, TInput, GpuNorm, Q8Activations>? _prepare;

    /// <summary>Loads (compiles, on CUDA) the kernels the layouts of <paramref name="matrices"/> need.</summary>
    public GpuMatMul(GpuPlan plan, IEnumerable<GpuMatrix> matrices)
    {
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(matrices);
        _plan = plan;
        foreach (var format in matrices.Select(m => m.Format).Distinct())
        {
            switch (format)
            {
                case GpuFormat.F32:
                    _f32 = plan.Load<MatVecShape, F32Rows, TInput, GpuNorm, TEpilogue>(MatVec.FloatRows);
                    break;
                case GpuFormat.F16:
                    _f16 = plan.Load<MatVecShape, F16Rows, TInput, GpuNorm, TEpilogue>(MatVec.FloatRows);
                    break;
                case GpuFormat.BF16:
                    _bf16 = plan.Load<MatVecShape, BF16Rows, TInput, GpuNorm, TEpilogue>(MatVec.FloatRows);
                    break;
                case GpuFormat.Q8_0:
                    _q8 = plan.Load<MatVecShape, ArrayView<int>, ArrayView<float>, Q8Activations, TEpilogue>(MatVec.Q8Rows);
                    break;
                default:
                    _q4 = plan.Load<MatVecShape, ArrayView<int>, ArrayView<float>, Q8Activations, TEpilogue>(MatVec.Q4Rows);
                    break;
            }
            if (format is GpuFormat.Q8_0 or GpuFormat.Q4_0)
                _prepare ??= plan.Load<MatVecShape, TInput, GpuNorm, Q8Activations>(MatVec.Prepare);
        }
    }

    /// <summary>
    /// out = norm(input)·Wᵀ for <paramref name="tokens"/> rows, through <paramref name="epilogue"/>.
    /// <paramref name="normKind"/>: 0 none, 1 RMS, 2 layer norm (with <paramref name="normWeight"/>, <paramref name="normBias"/>).
    /// </summary>
    public void Run(GpuMatrix weights, int tokens, TInput input, int normKind, ArrayView<float> normWeight, ArrayView<float> normBias, float eps, TEpilogue epilogue)
    {
        ArgumentNullException.ThrowIfNull(weights);
        if (tokens == 0) return;
        var shape = new MatVecShape { Rows = weights.Rows, K = weights.K, Tokens = tokens, Lanes = _plan.Lanes };
        var norm = new GpuNorm { Kind = normKind, Weight = normWeight, Bias = normBias, RowSums = weights.NormSums, Eps = eps };
        if (normKind == 2 && weights.Format is not (GpuFormat.Q8_0 or GpuFormat.Q4_0) && weights.NormSums.Length == 0)
            throw new InvalidOperationException("A layer norm fused into a float matmul needs the matrix's norm sums (GpuMatrix.SetNormSums).");
        var config = _plan.Config(weights.Rows / 4);
        switch (weights.Format)
        {
            case GpuFormat.F32:
                _f32!(config, shape, new F32Rows { Data = weights.Floats }, input, norm, epilogue);
                break;
            case GpuFormat.F16:
                _f16!(config, shape, new F16Rows { Data = weights.Halves }, input, norm, epilogue);
                break;
            case GpuFormat.BF16:
                _bf16!(config, shape, new BF16Rows { Data = weights.Halves }, input, norm, epilogue);
                break;
            default:
                var activations = _plan.Q8Scratch;
                _prepare!(_plan.Config(tokens), shape, input, norm, activations);
                var kernel = weights.Format == GpuFormat.Q8_0 ? _q8 : _q4;
                kernel!(config, shape, weights.Quants, weights.Scales, activations, epilogue);
                break;
        }
    }
}
