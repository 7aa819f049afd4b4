using System;

namespace Kiln
{
    /// <summary>Which zeros a sparse Linear weight holds, and so which layout the compiled plan packs it in (see <see cref="SparseAttribute"/>).</summary>
    public enum SparsePattern
    {
        /// <summary>Dense: every weight is stored and multiplied.</summary>
        None = 0,

        /// <summary>
        /// 2:4 semi-structured: at most 2 nonzero values in every 4 consecutive values of a row (what N:M pruning tools
        /// produce). Packed as Q8_0 values, the 2 kept of every 4 with a 2-bit position each: 65% of the dense bytes.
        /// Checked on the file's weights at load: a weight that breaks it is rejected, unless pruned.
        /// </summary>
        TwoFour = 1,

        /// <summary>
        /// Block-sparse: the plan stores only the weight's nonzero Q8_0 tiles of 8 rows × 32 values (the quantized
        /// kernels' own tile), indexed per strip of 8 rows (CSR over blocks). Exact for any weight; fast when whole
        /// blocks are zero.
        /// </summary>
        Blocks = 2,
    }

    /// <summary>
    /// Packs Linear weights in a sparse layout (of Q8_0 blocks, whatever [Quantize] asks: the sparse kernels dot int8
    /// quants). On the [Model] class it is the default for every weight used as the weight of <c>Ops.Linear</c>; on a
    /// [Weight] member it overrides that default. <c>PlanOptions.Sparsity</c> can pack every Linear weight of one plan
    /// in another pattern, or dense: the twin to compare against.
    /// </summary>
    [AttributeUsage(AttributeTargets.Class | AttributeTargets.Field | AttributeTargets.Property, Inherited = false)]
    public sealed class SparseAttribute : Attribute
    {
        public SparseAttribute(SparsePattern pattern) => Pattern = pattern;

        public SparsePattern Pattern { get; }

        /// <summary>
        /// Prune at load instead of rejecting: the 2 smallest-magnitude values of each group of 4 are zeroed (2:4), or
        /// the 8 × 32 tiles of smallest norm (blocks, keeping <see cref="KeepFraction"/> of them). The eager forward
        /// and the compiled plan both compute with the pruned weights.
        /// </summary>
        public bool Prune { get; set; }

        /// <summary>For <see cref="SparsePattern.Blocks"/> with <see cref="Prune"/>: the fraction of blocks kept, in (0, 1].</summary>
        public double KeepFraction { get; set; }
    }
}
