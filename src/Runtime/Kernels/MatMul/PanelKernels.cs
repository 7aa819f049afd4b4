using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.MatMul;

/// <summary>
/// The F32 layout's kernels: outer products over panels of 16 rows stored k-major (<see cref="PackedMatrix"/>), so
/// one vector load holds element k of 16 rows and one broadcast holds element k of a token. A tile of up to 6 tokens ×
/// 4 panels (64 rows) keeps its 24 sums in registers over the whole of K: per element of K, 4 loads and 6 broadcasts
/// feed 24 multiply-adds, and no sum needs a horizontal reduction, so prefill and encoder matmuls run near the FMA
/// roof. A one-token tile reads 64 rows per broadcast, which is what decoding needs (it is bound by the weights'
/// bandwidth). Each sum is one multiply-add chain over k in order, whatever the tile, so results do not depend on
/// how tokens and groups were split. AVX-512 (16 lanes, one panel per vector) and AVX2 (8 lanes, two vectors per
/// panel, tiles of up to 4 tokens × 1 panel) forms; <see cref="Reference"/> is the scalar one.
/// </summary>
internal static unsafe class PanelKernels
{
    /// <summary>Rows per panel: one 512-bit vector of sums per token.</summary>
    public const int PanelRows = 16;

    /// <summary>Tokens per AVX-512 tile: 6 tokens × 4 panels of sums fill 24 of the 32 vector registers.</summary>
    public const int TileTokens = 6;

    private const int GroupsPerPanel = PanelRows / 4;

    // Compiled optimized from the first call: a tier-0 tile runs many times slower, and its rarer shapes (a tail of
    // tokens, a range's last panels) would otherwise stay there for many calls.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run512<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, int firstToken, int endToken, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        var range = new Range(weights, input, firstGroup, endGroup, firstToken, endToken);
        for (int p = firstGroup / GroupsPerPanel; p < range.EndPanel; p += 4)
        {
            switch (Math.Min(4, range.EndPanel - p))
            {
                case 4: Tokens512<Four, TEpilogue>(range, p, ref epilogue); break;
                case 3: Tokens512<Three, TEpilogue>(range, p, ref epilogue); break;
                case 2: Tokens512<Two, TEpilogue>(range, p, ref epilogue); break;
                default: Tokens512<One, TEpilogue>(range, p, ref epilogue); break;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run256<TEpilogue>(PackedMatrix weights, in GemmInput input, int firstGroup, int endGroup, int firstToken, int endToken, ref TEpilogue epilogue)
        where TEpilogue : struct, ITileEpilogue
    {
        var range = new Range(weights, input, firstGroup, endGroup, firstToken, endToken);
        for (int p = firstGroup / GroupsPerPanel; p < range.EndPanel; p++)
        {
            for (int t0 = range.FirstToken; t0 < range.EndToken; t0 += 4)
            {
                switch (Math.Min(4, range.EndToken - t0))
                {
                    case 4: Tile256<Four, TEpilogue>(range, p, t0, ref epilogue); break;
                    case 3: Tile256<Three, TEpilogue>(range, p, t0, ref epilogue); break;
                    case 2: Tile256<Two, TEpilogue>(range, p, t0, ref epilogue); break;
                    default: Tile256<One, TEpilogue>(range, p, t0, ref epilogue); break;
                }
            }
        }
    }

    /// <summary>What every tile of one call shares: the weights, the input, and the rows and tokens the call owns.</summary>
    private readonly struct Range(PackedMatrix weights, GemmInput input, int firstGroup, int endGroup, int firstToken, int endToken)
    {
        public readonly float* Panels = (float*)weights.Data;
        public readonly long PanelFloats = weights.StripBytes / sizeof(float);
        public readonly int K = weights.K, EndPanel = (endGroup + GroupsPerPanel - 1) / GroupsPerPanel;
        public readonly float* X = input.Floats;
        public readonly int Stride = input.FloatStride, FirstToken = firstToken, EndToken = endToken;
        // A panel at the range's edge is computed whole; only its groups inside the range reach the epilogue.
        public readonly int FirstRow = firstGroup * 4, EndRow = endGroup * 4;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tokens512<TPanels, TEpilogue>(in Range range, int panel, ref TEpilogue epilogue)
        where TPanels : ICount where TEpilogue : struct, ITileEpilogue
    {
        for (int t0 = range.FirstToken; t0 < range.EndToken; t0 += TileTokens)
        {
            switch (Math.Min(TileTokens, range.EndToken - t0))
            {
                case 6: Tile512<TPanels, Six, TEpilogue>(range, panel, t0, ref epilogue); break;
                case 5: Tile512<TPanels, Five, TEpilogue>(range, panel, t0, ref epilogue); break;
                case 4: Tile512<TPanels, Four, TEpilogue>(range, panel, t0, ref epilogue); break;
                case 3: Tile512<TPanels, Three, TEpilogue>(range, panel, t0, ref epilogue); break;
                case 2: Tile512<TPanels, Two, TEpilogue>(range, panel, t0, ref epilogue); break;
                default: Tile512<TPanels, One, TEpilogue>(range, panel, t0, ref epilogue); break;
            }
        }
    }

    // TTokens (1-6) tokens × TPanels (1-4) panels: the sums into scratch, then each through the epilogue.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile512<TPanels, TTokens, TEpilogue>(in Range range, int panel, int t0, ref TEpilogue epilogue)
        where TPanels : ICount where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        float* sums = stackalloc float[TileTokens * 4 * PanelRows];
        if (t0 + TileTokens < range.EndToken) PrefetchRowStarts(range.X + (long)(t0 + TileTokens) * range.Stride, range.Stride);
        Sums512<TPanels, TTokens>(range.Panels + panel * range.PanelFloats, range.PanelFloats, range.X + (long)t0 * range.Stride, range.Stride, range.K, sums);
        int row = panel * PanelRows;
        for (int t = 0; t < TTokens.Value; t++)
            for (int p = 0; p < TPanels.Value; p++)
                Store(ref epilogue, range, row + p * PanelRows, t0 + t, Vector512.Load(sums + (4 * t + p) * PanelRows));
    }

    /// <summary>
    /// The first 4 cache lines of each of the next tile's input rows, asked for before this tile's K loop: in a step
    /// those rows were just written by another kernel, often on the other thread, and the hardware prefetcher only
    /// picks a row up after its first misses, a real share of a short row (K = 384 is 24 lines). MiniLM's profiled step
    /// went from 74.3 to 70.4 ms with it (medians of 5 alternating runs).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchRowStarts(float* row, int stride)
    {
        if (!Sse.IsSupported) return;
        for (int t = 0; t < TileTokens; t++, row += stride)
        {
            Sse.Prefetch0(row);
            Sse.Prefetch0(row + 16);
            Sse.Prefetch0(row + 32);
            Sse.Prefetch0(row + 48);
        }
    }

    /// <summary>
    /// The tile's sums, token t's of panel p to <paramref name="sums"/> + (4t + p)·16. A method of its own, with no
    /// call inside: sums held across the epilogue's calls would be spilled to the stack on every step of the loop.
    /// Sum sTP holds token T's rows of panel P, written out in full so that all 24 stay in registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Sums512<TPanels, TTokens>(float* w0, long next, float* x, int stride, int k, float* sums)
        where TPanels : ICount where TTokens : ICount
    {
        Vector512<float> s00 = default, s01 = default, s02 = default, s03 = default;
        Vector512<float> s10 = default, s11 = default, s12 = default, s13 = default;
        Vector512<float> s20 = default, s21 = default, s22 = default, s23 = default;
        Vector512<float> s30 = default, s31 = default, s32 = default, s33 = default;
        Vector512<float> s40 = default, s41 = default, s42 = default, s43 = default;
        Vector512<float> s50 = default, s51 = default, s52 = default, s53 = default;
        for (int i = 0; i < k; i++, w0 += PanelRows, x++)
        {
            Vector512<float> r0 = Vector512.Load(w0);
            Vector512<float> r1 = TPanels.Value > 1 ? Vector512.Load(w0 + next) : default;
            Vector512<float> r2 = TPanels.Value > 2 ? Vector512.Load(w0 + 2 * next) : default;
            Vector512<float> r3 = TPanels.Value > 3 ? Vector512.Load(w0 + 3 * next) : default;
            Vector512<float> v = Vector512.Create(*x);
            s00 = Vector512.FusedMultiplyAdd(r0, v, s00);
            if (TPanels.Value > 1) s01 = Vector512.FusedMultiplyAdd(r1, v, s01);
            if (TPanels.Value > 2) s02 = Vector512.FusedMultiplyAdd(r2, v, s02);
            if (TPanels.Value > 3) s03 = Vector512.FusedMultiplyAdd(r3, v, s03);
            if (TTokens.Value > 1)
            {
                v = Vector512.Create(x[stride]);
                s10 = Vector512.FusedMultiplyAdd(r0, v, s10);
                if (TPanels.Value > 1) s11 = Vector512.FusedMultiplyAdd(r1, v, s11);
                if (TPanels.Value > 2) s12 = Vector512.FusedMultiplyAdd(r2, v, s12);
                if (TPanels.Value > 3) s13 = Vector512.FusedMultiplyAdd(r3, v, s13);
            }
            if (TTokens.Value > 2)
            {
                v = Vector512.Create(x[2 * stride]);
                s20 = Vector512.FusedMultiplyAdd(r0, v, s20);
                if (TPanels.Value > 1) s21 = Vector512.FusedMultiplyAdd(r1, v, s21);
                if (TPanels.Value > 2) s22 = Vector512.FusedMultiplyAdd(r2, v, s22);
                if (TPanels.Value > 3) s23 = Vector512.FusedMultiplyAdd(r3, v, s23);
            }
            if (TTokens.Value > 3)
            {
                v = Vector512.Create(x[3 * stride]);
                s30 = Vector512.FusedMultiplyAdd(r0, v, s30);
                if (TPanels.Value > 1) s31 = Vector512.FusedMultiplyAdd(r1, v, s31);
                if (TPanels.Value > 2) s32 = Vector512.FusedMultiplyAdd(r2, v, s32);
                if (TPanels.Value > 3) s33 = Vector512.FusedMultiplyAdd(r3, v, s33);
            }
            if (TTokens.Value > 4)
            {
                v = Vector512.Create(x[4 * stride]);
                s40 = Vector512.FusedMultiplyAdd(r0, v, s40);
                if (TPanels.Value > 1) s41 = Vector512.FusedMultiplyAdd(r1, v, s41);
                if (TPanels.Value > 2) s42 = Vector512.FusedMultiplyAdd(r2, v, s42);
                if (TPanels.Value > 3) s43 = Vector512.FusedMultiplyAdd(r3, v, s43);
            }
            if (TTokens.Value > 5)
            {
                v = Vector512.Create(x[5 * stride]);
                s50 = Vector512.FusedMultiplyAdd(r0, v, s50);
                if (TPanels.Value > 1) s51 = Vector512.FusedMultiplyAdd(r1, v, s51);
                if (TPanels.Value > 2) s52 = Vector512.FusedMultiplyAdd(r2, v, s52);
                if (TPanels.Value > 3) s53 = Vector512.FusedMultiplyAdd(r3, v, s53);
            }
        }
        Keep<TPanels>(sums, s00, s01, s02, s03);
        if (TTokens.Value > 1) Keep<TPanels>(sums + 4 * PanelRows, s10, s11, s12, s13);
        if (TTokens.Value > 2) Keep<TPanels>(sums + 8 * PanelRows, s20, s21, s22, s23);
        if (TTokens.Value > 3) Keep<TPanels>(sums + 12 * PanelRows, s30, s31, s32, s33);
        if (TTokens.Value > 4) Keep<TPanels>(sums + 16 * PanelRows, s40, s41, s42, s43);
        if (TTokens.Value > 5) Keep<TPanels>(sums + 20 * PanelRows, s50, s51, s52, s53);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Keep<TPanels>(float* at, Vector512<float> s0, Vector512<float> s1, Vector512<float> s2, Vector512<float> s3)
        where TPanels : ICount
    {
        s0.Store(at);
        if (TPanels.Value > 1) s1.Store(at + PanelRows);
        if (TPanels.Value > 2) s2.Store(at + 2 * PanelRows);
        if (TPanels.Value > 3) s3.Store(at + 3 * PanelRows);
    }

    /// <summary>One panel's 16 sums for one token, group by group, those of the range only.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<TEpilogue>(ref TEpilogue epilogue, in Range range, int row, int token, Vector512<float> sums)
        where TEpilogue : struct, ITileEpilogue
    {
        if (row >= range.FirstRow && row + PanelRows <= range.EndRow)
        {
            epilogue.Store16(row, token, sums);
            return;
        }
        Store(ref epilogue, range, row, token, sums.GetLower());
        Store(ref epilogue, range, row + 8, token, sums.GetUpper());
    }

    /// <summary>8 sums (two groups) for one token, those of the range only.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<TEpilogue>(ref TEpilogue epilogue, in Range range, int row, int token, Vector256<float> sums)
        where TEpilogue : struct, ITileEpilogue
    {
        if (row >= range.FirstRow && row < range.EndRow) epilogue.Store(row, token, sums.GetLower());
        if (row + 4 >= range.FirstRow && row + 4 < range.EndRow) epilogue.Store(row + 4, token, sums.GetUpper());
    }

    // TTokens (1-4) tokens × one panel: the sums into scratch (token t's halves at 16t, 16t + 8), then the epilogue.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile256<TTokens, TEpilogue>(in Range range, int panel, int t0, ref TEpilogue epilogue)
        where TTokens : ICount where TEpilogue : struct, ITileEpilogue
    {
        float* sums = stackalloc float[4 * PanelRows];
        Sums256<TTokens>(range.Panels + panel * range.PanelFloats, range.X + (long)t0 * range.Stride, range.Stride, range.K, sums);
        int row = panel * PanelRows;
        for (int t = 0; t < TTokens.Value; t++)
        {
            Store(ref epilogue, range, row, t0 + t, Vector256.Load(sums + t * PanelRows));
            Store(ref epilogue, range, row + 8, t0 + t, Vector256.Load(sums + t * PanelRows + 8));
        }
    }

    /// <summary>As <see cref="Sums512"/>, 8 lanes: sum sTH holds token T's rows 8H..8H+7 of the panel.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Sums256<TTokens>(float* w, float* x, int stride, int k, float* sums)
        where TTokens : ICount
    {
        Vector256<float> s00 = default, s01 = default, s10 = default, s11 = default;
        Vector256<float> s20 = default, s21 = default, s30 = default, s31 = default;
        for (int i = 0; i < k; i++, w += PanelRows, x++)
        {
            Vector256<float> low = Vector256.Load(w), high = Vector256.Load(w + 8);
            var v = Vector256.Create(*x);
            s00 = Vector256.FusedMultiplyAdd(low, v, s00);
            s01 = Vector256.FusedMultiplyAdd(high, v, s01);
            if (TTokens.Value > 1)
            {
                v = Vector256.Create(x[stride]);
                s10 = Vector256.FusedMultiplyAdd(low, v, s10);
                s11 = Vector256.FusedMultiplyAdd(high, v, s11);
            }
            if (TTokens.Value > 2)
            {
                v = Vector256.Create(x[2 * stride]);
                s20 = Vector256.FusedMultiplyAdd(low, v, s20);
                s21 = Vector256.FusedMultiplyAdd(high, v, s21);
            }
            if (TTokens.Value > 3)
            {
                v = Vector256.Create(x[3 * stride]);
                s30 = Vector256.FusedMultiplyAdd(low, v, s30);
                s31 = Vector256.FusedMultiplyAdd(high, v, s31);
            }
        }
        s00.Store(sums);
        s01.Store(sums + 8);
        if (TTokens.Value > 1)
        {
            s10.Store(sums + PanelRows);
            s11.Store(sums + PanelRows + 8);
        }
        if (TTokens.Value > 2)
        {
            s20.Store(sums + 2 * PanelRows);
            s21.Store(sums + 2 * PanelRows + 8);
        }
        if (TTokens.Value > 3)
        {
            s30.Store(sums + 3 * PanelRows);
            s31.Store(sums + 3 * PanelRows + 8);
        }
    }
}
