using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Kiln.Kernels.Attention;

/// <summary>
/// The register tile attention's small GEMMs are made of on the AVX-512 path: an encoder's per-sequence attention
/// (<see cref="StepAttention"/>) and shared-prefix attention's queries × prefix-keys tiles (<see cref="PagedAttention"/>)
/// both compute scores and weighted values with it.
/// </summary>
internal static class AttentionTiles
{
    /// <summary>
    /// For each of <paramref name="count"/> (1–8) rows r of <paramref name="left"/>, Σ_i left[r·<paramref name="leftStride"/>
    /// + i·<paramref name="leftStep"/>] · right[i], over <paramref name="depth"/> rows of <paramref name="right"/>
    /// (<paramref name="rightStride"/> apart) 16 or 32 (<paramref name="two"/>) wide, times <paramref name="scale"/>, into
    /// rows of <paramref name="output"/> (<paramref name="outputStride"/> apart). With <paramref name="rescale"/>, each
    /// output row is kept, times rescale[r] (an online softmax's correction when its running max grew), and the sums
    /// added to it. Per element of the depth, 2 loads and 8 broadcasts feed 16 multiply-adds, with no horizontal sums.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void OuterProduct(float* left, int leftStride, int leftStep, int count, float* right, int rightStride, int depth, bool two,
        Vector512<float> scale, float* output, int outputStride, float* rescale = null)
    {
        // The loop is compiled for each width, so that one row of right is not a branch per element, and for each
        // kind of left rows: 8 adjacent ones (transposed scores weighing values) are one pointer, which leaves the
        // loop its registers; other strides take a pointer per row.
        if (leftStride == 1 && count == 8)
        {
            var rows = new AdjacentRows(left, leftStep);
            if (two) Products<TwoVectors, AdjacentRows>(rows, count, right, rightStride, depth, scale, output, outputStride, rescale);
            else Products<OneVector, AdjacentRows>(rows, count, right, rightStride, depth, scale, output, outputStride, rescale);
        }
        else
        {
            var rows = new StridedRows(left, leftStride, leftStep, count);
            if (two) Products<TwoVectors, StridedRows>(rows, count, right, rightStride, depth, scale, output, outputStride, rescale);
            else Products<OneVector, StridedRows>(rows, count, right, rightStride, depth, scale, output, outputStride, rescale);
        }
    }

    private interface IWidth
    {
        /// <summary>Whether rows of right are 32 wide (two vectors), not 16.</summary>
        static abstract bool Two { get; }
    }

    private readonly struct OneVector : IWidth
    {
        public static bool Two => false;
    }

    private readonly struct TwoVectors : IWidth
    {
        public static bool Two => true;
    }

    /// <summary>The 8 left rows' elements at the current depth, and a step to the next depth.</summary>
    private interface ILeftRows
    {
        float this[int row] { get; }

        void Next();
    }

    /// <summary>Left rows that are adjacent elements (leftStride 1): one pointer.</summary>
    private unsafe struct AdjacentRows(float* left, int step) : ILeftRows
    {
        private float* _at = left;

        public readonly float this[int row]
        {
            [MethodImpl(MethodImplOptions.AggressiveInlining)]
            get => _at[row];
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Next() => _at += step;
    }

    /// <summary>Left rows any stride apart, a pointer each; rows past count repeat the last one: computed, never stored.</summary>
    private unsafe struct StridedRows : ILeftRows
    {
        private readonly float* _l0, _l1, _l2, _l3, _l4, _l5, _l6, _l7;
        private readonly int _step;
        private int _at;

        public StridedRows(float* left, int stride, int step, int count)
        {
            _l0 = left;
            _l1 = count > 1 ? _l0 + stride : _l0;
            _l2 = count > 2 ? _l1 + stride : _l1;
            _l3 = count > 3 ? _l2 + stride : _l2;
            _l4 = count > 4 ? _l3 + stride : _l3;
            _l5 = count > 5 ? _l4 + stride : _l4;
            _l6 = count > 6 ? _l5 + stride : _l5;
            _l7 = count > 7 ? _l6 + stride : _l6;
            _step = step;
        }

        public readonly float this[int row]
        {
            [MethodImpl(MethodImplOptions.AggressiveInlining)]
            get => row switch { 0 => _l0[_at], 1 => _l1[_at], 2 => _l2[_at], 3 => _l3[_at], 4 => _l4[_at], 5 => _l5[_at], 6 => _l6[_at], _ => _l7[_at] };
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Next() => _at += _step;
    }

    /// <summary><see cref="OuterProduct"/>'s loop for one width and kind of left rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Products<TWidth, TLeft>(TLeft left, int count, float* right, int rightStride, int depth,
        Vector512<float> scale, float* output, int outputStride, float* rescale) where TWidth : struct, IWidth where TLeft : struct, ILeftRows
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default, b4 = default, b5 = default, b6 = default, b7 = default;
        for (int i = 0; i < depth; i++, left.Next(), right += rightStride)
        {
            var x = Vector512.Load(right);
            var y = TWidth.Two ? Vector512.Load(right + 16) : default;
            var v = Vector512.Create(left[0]);
            a0 = Vector512.FusedMultiplyAdd(x, v, a0);
            if (TWidth.Two) b0 = Vector512.FusedMultiplyAdd(y, v, b0);
            v = Vector512.Create(left[1]);
            a1 = Vector512.FusedMultiplyAdd(x, v, a1);
            if (TWidth.Two) b1 = Vector512.FusedMultiplyAdd(y, v, b1);
            v = Vector512.Create(left[2]);
            a2 = Vector512.FusedMultiplyAdd(x, v, a2);
            if (TWidth.Two) b2 = Vector512.FusedMultiplyAdd(y, v, b2);
            v = Vector512.Create(left[3]);
            a3 = Vector512.FusedMultiplyAdd(x, v, a3);
            if (TWidth.Two) b3 = Vector512.FusedMultiplyAdd(y, v, b3);
            v = Vector512.Create(left[4]);
            a4 = Vector512.FusedMultiplyAdd(x, v, a4);
            if (TWidth.Two) b4 = Vector512.FusedMultiplyAdd(y, v, b4);
            v = Vector512.Create(left[5]);
            a5 = Vector512.FusedMultiplyAdd(x, v, a5);
            if (TWidth.Two) b5 = Vector512.FusedMultiplyAdd(y, v, b5);
            v = Vector512.Create(left[6]);
            a6 = Vector512.FusedMultiplyAdd(x, v, a6);
            if (TWidth.Two) b6 = Vector512.FusedMultiplyAdd(y, v, b6);
            v = Vector512.Create(left[7]);
            a7 = Vector512.FusedMultiplyAdd(x, v, a7);
            if (TWidth.Two) b7 = Vector512.FusedMultiplyAdd(y, v, b7);
        }
        StoreRow(a0, b0, TWidth.Two, scale, output, rescale, 0);
        if (count > 1) StoreRow(a1, b1, TWidth.Two, scale, output + outputStride, rescale, 1);
        if (count > 2) StoreRow(a2, b2, TWidth.Two, scale, output + 2 * outputStride, rescale, 2);
        if (count > 3) StoreRow(a3, b3, TWidth.Two, scale, output + 3 * outputStride, rescale, 3);
        if (count > 4) StoreRow(a4, b4, TWidth.Two, scale, output + 4 * outputStride, rescale, 4);
        if (count > 5) StoreRow(a5, b5, TWidth.Two, scale, output + 5 * outputStride, rescale, 5);
        if (count > 6) StoreRow(a6, b6, TWidth.Two, scale, output + 6 * outputStride, rescale, 6);
        if (count > 7) StoreRow(a7, b7, TWidth.Two, scale, output + 7 * outputStride, rescale, 7);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void StoreRow(Vector512<float> first, Vector512<float> second, bool two, Vector512<float> scale, float* output, float* rescale, int r)
    {
        if (rescale == null)
        {
            (first * scale).Store(output);
            if (two) (second * scale).Store(output + 16);
            return;
        }
        var kept = Vector512.Create(rescale[r]);
        Vector512.FusedMultiplyAdd(Vector512.Load(output), kept, first * scale).Store(output);
        if (two) Vector512.FusedMultiplyAdd(Vector512.Load(output + 16), kept, second * scale).Store(output + 16);
    }
}
