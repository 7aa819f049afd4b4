using System;

namespace Kiln
{
    /// <summary>The layout a Linear weight gets in the compiled plan (see <see cref="QuantizeAttribute"/>).</summary>
    public enum WeightFormat
    {
        /// <summary>
        /// The model file's own format where a kernel exists for it (F32, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K); F16
        /// becomes F32 (exactly), and every other stored format (Q5_0, Q2_K, ...) is dequantized and requantized to
        /// Q8_0. Chosen per weight when the plan is compiled, from the stored type.
        /// </summary>
        AsStored,

        /// <summary>float32 rows.</summary>
        F32,

        /// <summary>bfloat16 rows (float32 activations, widened exactly in the kernel).</summary>
        BF16,

        /// <summary>GGML Q8_0 blocks (int8 quants, one scale per 32), dotted against Q8 activations.</summary>
        Q8_0,

        /// <summary>GGML Q4_0 blocks (4-bit quants, one scale per 32), dotted against Q8 activations.</summary>
        Q4_0,
    }

    /// <summary>
    /// Chooses the layout of Linear weights in the compiled plan. On the [Model] class it is the default for every
    /// weight used as the weight of <c>Ops.Linear</c>; on a [Weight] member it overrides that default. Without it the
    /// plan keeps each weight <see cref="WeightFormat.AsStored"/>. A weight stored in the chosen format is packed from
    /// the file's own blocks (no requantization); any other is converted once, when the plan is compiled.
    /// </summary>
    [AttributeUsage(AttributeTargets.Class | AttributeTargets.Field | AttributeTargets.Property, Inherited = false)]
    public sealed class QuantizeAttribute : Attribute
    {
        public QuantizeAttribute(WeightFormat format) => Format = format;

        public WeightFormat Format { get; }
    }
}
