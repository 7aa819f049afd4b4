using System.Buffers.Binary;
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Kernels.MatMul;
using Kiln.Loading;

namespace Kiln.Gpu;

/// <summary>The layouts a GPU plan's matmul weights take in device memory: each row-major, packed rows in groups of 4.</summary>
public enum GpuFormat
{
    /// <summary>float32 rows.</summary>
    F32,

    /// <summary>IEEE half rows (two to a word), widened exactly in the kernel: half the bytes of F32.</summary>
    F16,

    /// <summary>bfloat16 rows (two to a word), widened exactly in the kernel.</summary>
    BF16,

    /// <summary>GGML Q8_0: int8 quants (four to a word) and a float scale per 32 (the stored fp16 values).</summary>
    Q8_0,

    /// <summary>GGML Q4_0: nibbles as the file stores a block's 16 bytes (value + 8), and a float scale per 32.</summary>
    Q4_0,
}

/// <summary>
/// The weights of one (fused) matmul in device memory: segments stacked, each padded to 4-row groups (zero rows), a
/// gate/up pair's rows interleaved and a NeoX-roped output's rows packed pair by pair, exactly as the CPU plan packs
/// them (so one generated epilogue reads both alike). A weight stored in the layout's own format is copied from its
/// stored bytes (bit-identical); any other is converted: F16 by rounding, BF16 and the quantized layouts by the
/// runtime's reference quantizers. F16 stays F16 here (the CPU plan widens it to F32): the GPU reads half the bytes.
/// </summary>
public sealed class GpuMatrix : IDisposable
{
    private readonly Accelerator _accelerator;
    private readonly List<string> _sources = new();
    private float[]? _floats;
    private ushort[]? _halves;
    private byte[]? _quants;
    private float[]? _scales;
    private MemoryBuffer1D<float, Stride1D.Dense>? _floatBuffer;
    private MemoryBuffer1D<uint, Stride1D.Dense>? _halfBuffer;
    private MemoryBuffer1D<int, Stride1D.Dense>? _quantBuffer;
    private MemoryBuffer1D<float, Stride1D.Dense>? _scaleBuffer;
    private MemoryBuffer1D<float, Stride1D.Dense>? _rowSums;

    /// <summary>An all-zero matrix of <paramref name="rows"/> (a multiple of 4) rows of <paramref name="k"/> elements, filled on the host until <see cref="Upload"/>.</summary>
    public GpuMatrix(Accelerator accelerator, GpuFormat format, int rows, int k)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        if (rows <= 0 || rows % 4 != 0) throw new ArgumentOutOfRangeException(nameof(rows), rows, "A GPU matrix holds a positive whole number of 4-row groups.");
        if (k <= 0 || k % 2 != 0) throw new ArgumentOutOfRangeException(nameof(k), k, "GPU matmul rows hold an even number of elements (the kernels read them two at a time).");
        if (format is GpuFormat.Q8_0 or GpuFormat.Q4_0 && k % 32 != 0)
            throw new InvalidOperationException($"A {format} layout needs rows whose length is a multiple of 32; these rows hold {k} elements.");
        _accelerator = accelerator;
        Format = format;
        Rows = rows;
        K = k;
        long elements = (long)rows * k;
        switch (format)
        {
            case GpuFormat.F32: _floats = new float[elements]; break;
            case GpuFormat.F16 or GpuFormat.BF16: _halves = new ushort[elements]; break;
            default:
                _quants = new byte[format == GpuFormat.Q8_0 ? elements : elements / 2];
                _scales = new float[elements / 32];
                break;
        }
    }

    public GpuFormat Format { get; }

    /// <summary>Rows, padding included (a multiple of 4).</summary>
    public int Rows { get; }

    public int K { get; }

    /// <summary>Bytes of weights in device memory (what a decode step reads).</summary>
    public long ByteCount => Format switch
    {
        GpuFormat.F32 => (long)Rows * K * 4,
        GpuFormat.F16 or GpuFormat.BF16 => (long)Rows * K * 2,
        GpuFormat.Q8_0 => (long)Rows * K + (long)Rows * K / 32 * 4,
        _ => (long)Rows * K / 2 + (long)Rows * K / 32 * 4,
    };

    /// <summary>The layout rule: an explicit format wins; as stored, each weight's own type where a kernel reads it (others → Q8_0), the most precise when they disagree.</summary>
    public static GpuFormat Resolve(WeightFormat requested, params Tensor[] weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        switch (requested)
        {
            case WeightFormat.F32: return GpuFormat.F32;
            case WeightFormat.BF16: return GpuFormat.BF16;
            case WeightFormat.Q8_0: return GpuFormat.Q8_0;
            case WeightFormat.Q4_0: return GpuFormat.Q4_0;
            case WeightFormat.AsStored: break;
            default: throw new ArgumentOutOfRangeException(nameof(requested), requested, "Not a weight format.");
        }
        if (weights.Length == 0) throw new ArgumentException("A matmul has at least one weight.", nameof(weights));
        var chosen = AsStored(weights[0]);
        foreach (var weight in weights)
        {
            var format = AsStored(weight);
            // F16 and BF16 hold different values: together, only F32 holds both exactly.
            if (format != chosen && format is GpuFormat.F16 or GpuFormat.BF16 && chosen is GpuFormat.F16 or GpuFormat.BF16) chosen = GpuFormat.F32;
            else if (format < chosen) chosen = format;
        }
        return chosen;
    }

    private static GpuFormat AsStored(Tensor weight) => weight.Stored?.Type switch
    {
        null or GgmlType.F32 => GpuFormat.F32,
        GgmlType.F16 => GpuFormat.F16,
        GgmlType.BF16 => GpuFormat.BF16,
        GgmlType.Q8_0 => GpuFormat.Q8_0,
        GgmlType.Q4_0 => GpuFormat.Q4_0,
        _ => GpuFormat.Q8_0,
    };

    /// <summary>Rows rounded up to whole 4-row groups: a segment's size.</summary>
    public static int PadRows(int rows) => WeightLayouts.PadRows(rows);

    /// <summary>Packs rows [<paramref name="firstRow"/>, +<paramref name="rows"/>) of <paramref name="weight"/> from <paramref name="rowOffset"/>, packed row i taking weight row firstRow + order[i] when an order is given.</summary>
    public void Pack(int rowOffset, Tensor weight, int firstRow, int rows, int[]? order, string name)
    {
        Check(rowOffset, weight, firstRow, rows, rows);
        if (order is not null && order.Length != rows) throw new ArgumentException($"An order of {order.Length} rows for a part of {rows}.", nameof(order));
        for (int o = 0; o < rows; o++) PackRow(rowOffset + o, weight, firstRow + (order is null ? o : order[o]));
        Note(name, weight);
    }

    /// <summary>Interleaves rows of <paramref name="first"/> and <paramref name="second"/> (first₀, second₀, first₁, …) from <paramref name="rowOffset"/>.</summary>
    public void PackInterleaved(int rowOffset, Tensor first, int firstStart, Tensor second, int secondStart, int rows, string firstName, string secondName)
    {
        Check(rowOffset, first, firstStart, rows, 2 * rows);
        Check(rowOffset, second, secondStart, rows, 2 * rows);
        for (int o = 0; o < rows; o++)
        {
            PackRow(rowOffset + 2 * o, first, firstStart + o);
            PackRow(rowOffset + 2 * o + 1, second, secondStart + o);
        }
        Note(firstName, first);
        Note(secondName, second);
    }

    /// <summary>
    /// For a layer norm fused into this matmul: per packed row, Σ W[r]·g and Σ W[r]·b (in double, over the weights as
    /// packed), which the kernel needs to apply the mean and the bias after its sums.
    /// </summary>
    public void SetNormSums(Tensor weight, Tensor? bias)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Data.Length != K || bias is not null && bias.Data.Length != K)
            throw new ArgumentException($"A norm over rows of {K} needs weights of {K}.");
        var sums = new float[2L * Rows];
        var row = new float[K];
        for (int r = 0; r < Rows; r++)
        {
            ReadRow(r, row);
            double g = 0, b = 0;
            for (int c = 0; c < K; c++)
            {
                g += (double)row[c] * weight.Data[c];
                if (bias is not null) b += (double)row[c] * bias.Data[c];
            }
            sums[2 * r] = (float)g;
            sums[2 * r + 1] = (float)b;
        }
        _rowSums?.Dispose();
        _rowSums = _accelerator.Allocate1D(sums);
    }

    /// <summary>Copies the packed rows to device memory and lets the host copy go.</summary>
    public void Upload()
    {
        if (_floats is not null) _floatBuffer = _accelerator.Allocate1D(_floats);
        if (_halves is not null) _halfBuffer = _accelerator.Allocate1D(MemoryMarshal.Cast<ushort, uint>(_halves).ToArray());
        if (_quants is not null) _quantBuffer = _accelerator.Allocate1D(MemoryMarshal.Cast<byte, int>(_quants).ToArray());
        if (_scales is not null) _scaleBuffer = _accelerator.Allocate1D(_scales);
        _floats = null;
        _halves = null;
        _quants = null;
        _scales = null;
    }

    /// <summary>F32 rows in device memory.</summary>
    public ArrayView<float> Floats => _floatBuffer?.View.AsContiguous() ?? throw NotUploaded();

    /// <summary>F16 or BF16 rows, two to a word.</summary>
    public ArrayView<uint> Halves => _halfBuffer?.View.AsContiguous() ?? throw NotUploaded();

    /// <summary>Q8_0 or Q4_0 quants, as words.</summary>
    public ArrayView<int> Quants => _quantBuffer?.View.AsContiguous() ?? throw NotUploaded();

    public ArrayView<float> Scales => _scaleBuffer?.View.AsContiguous() ?? throw NotUploaded();

    /// <summary>Σ W·g and Σ W·b per packed row (<see cref="SetNormSums"/>), or an empty view.</summary>
    public ArrayView<float> NormSums => _rowSums?.View.AsContiguous() ?? default;

    /// <summary>One line for reports: the layout and where its weights came from.</summary>
    public string Describe() => $"{Format} rows [{Rows}, {K}] ({string.Join("; ", _sources)})";

    public void Dispose()
    {
        _floatBuffer?.Dispose();
        _halfBuffer?.Dispose();
        _quantBuffer?.Dispose();
        _scaleBuffer?.Dispose();
        _rowSums?.Dispose();
    }

    private static InvalidOperationException NotUploaded() => new("The matrix is not in device memory in this layout (or not uploaded yet).");

    private void Check(int rowOffset, Tensor weight, int firstRow, int rows, int packedRows)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Rank != 2 || weight.Cols != K) throw new ArgumentException($"A weight of shape {weight} does not have rows of {K} elements.", nameof(weight));
        if (firstRow < 0 || rows < 0 || rows > weight.Rows - firstRow)
            throw new ArgumentOutOfRangeException(nameof(rows), $"Rows [{firstRow}, {firstRow}+{rows}) are not within the {weight.Rows} rows of {weight}.");
        if (rowOffset < 0 || rowOffset % 4 != 0 || rowOffset + packedRows > Rows)
            throw new ArgumentOutOfRangeException(nameof(rowOffset), $"{packedRows} rows at {rowOffset} do not fit {Rows} packed rows on a 4-row boundary.");
        if (_floats is null && _halves is null && _quants is null) throw new InvalidOperationException("The matrix was uploaded already.");
    }

    private void Note(string name, Tensor weight)
    {
        var stored = weight.Stored?.Type;
        string source = stored is null
            ? Format == GpuFormat.F32 ? "F32 copied" : "F32 converted"
            : Matches(stored.Value) ? $"stored {stored} copied" : $"{stored} converted";
        string line = name.Length > 0 ? $"{name}: {source}" : source;
        if (!_sources.Contains(line)) _sources.Add(line);
    }

    private bool Matches(GgmlType stored) => (Format, stored) switch
    {
        (GpuFormat.F16, GgmlType.F16) or (GpuFormat.BF16, GgmlType.BF16) or (GpuFormat.Q8_0, GgmlType.Q8_0) or (GpuFormat.Q4_0, GgmlType.Q4_0) => true,
        _ => false,
    };

    private void PackRow(int packed, Tensor weight, int row)
    {
        long at = (long)packed * K;
        var values = weight.Row(row);
        // The file's own bytes of this row when the device format is the stored one (read from the mapping, no copy).
        bool asStored = weight.Stored is { } s && Matches(s.Type);
        var stored = asStored ? weight.Stored!.RowBytes(row, 1, K) : default;
        switch (Format)
        {
            case GpuFormat.F32:
                values.CopyTo(_floats.AsSpan((int)at, K));
                break;
            case GpuFormat.F16:
                if (asStored) MemoryMarshal.Cast<byte, ushort>(stored).CopyTo(_halves.AsSpan((int)at, K));
                else for (int i = 0; i < K; i++) _halves![at + i] = BitConverter.HalfToUInt16Bits((System.Half)values[i]);
                break;
            case GpuFormat.BF16:
                if (asStored) MemoryMarshal.Cast<byte, ushort>(stored).CopyTo(_halves.AsSpan((int)at, K));
                else Kiln.Kernels.Quantized.BF16.QuantizeRow(values, MemoryMarshal.AsBytes(_halves.AsSpan((int)at, K)));
                break;
            case GpuFormat.Q8_0:
            {
                int rowBytes = Kiln.Kernels.Quantized.Q8_0.RowBytes(K);
                var blocks = asStored ? stored : Encode(values, rowBytes, quantize: true);
                for (int b = 0; b < K / 32; b++)
                {
                    var block = blocks.Slice(b * 34, 34);
                    _scales![at / 32 + b] = (float)BitConverter.UInt16BitsToHalf(BinaryPrimitives.ReadUInt16LittleEndian(block));
                    block.Slice(2, 32).CopyTo(_quants.AsSpan((int)(at + 32 * b), 32));
                }
                break;
            }
            default:
            {
                int rowBytes = Kiln.Kernels.Quantized.Q4_0.RowBytes(K);
                var blocks = asStored ? stored : Encode(values, rowBytes, quantize: false);
                for (int b = 0; b < K / 32; b++)
                {
                    var block = blocks.Slice(b * 18, 18);
                    _scales![at / 32 + b] = (float)BitConverter.UInt16BitsToHalf(BinaryPrimitives.ReadUInt16LittleEndian(block));
                    block.Slice(2, 16).CopyTo(_quants.AsSpan((int)(at / 2 + 16 * b), 16));
                }
                break;
            }
        }
    }

    private static Span<byte> Encode(ReadOnlySpan<float> values, int rowBytes, bool quantize)
    {
        var bytes = new byte[rowBytes];
        if (quantize) Kiln.Kernels.Quantized.Q8_0.QuantizeRow(values, bytes);
        else Kiln.Kernels.Quantized.Q4_0.QuantizeRow(values, bytes);
        return bytes;
    }

    /// <summary>Packed row <paramref name="row"/> as floats (host side, before upload).</summary>
    private void ReadRow(int row, Span<float> destination)
    {
        long at = (long)row * K;
        switch (Format)
        {
            case GpuFormat.F32: _floats.AsSpan((int)at, K).CopyTo(destination); break;
            case GpuFormat.F16: for (int i = 0; i < K; i++) destination[i] = (float)BitConverter.UInt16BitsToHalf(_halves![at + i]); break;
            case GpuFormat.BF16: for (int i = 0; i < K; i++) destination[i] = BitConverter.UInt32BitsToSingle((uint)_halves![at + i] << 16); break;
            case GpuFormat.Q8_0:
                for (int i = 0; i < K; i++) destination[i] = (sbyte)_quants![at + i] * _scales![(at + i) / 32];
                break;
            default:
                for (int i = 0; i < K; i++)
                {
                    int b = i / 32, e = i % 32;
                    byte packed = _quants![at / 2 + 16 * b + e % 16];
                    destination[i] = ((e < 16 ? packed & 0xF : packed >> 4) - 8) * _scales![at / 32 + b];
                }
                break;
        }
    }
}
