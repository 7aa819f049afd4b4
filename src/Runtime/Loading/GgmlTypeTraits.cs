namespace Kiln.Loading;

/// <summary>
/// How a GGML type stores its elements: in blocks of <see cref="BlockElements"/> values taking
/// <see cref="BlockBytes"/> bytes each (1 element per block for the plain scalar types). This table is the one place
/// that knows block sizes; the reader, the writer, quantize and dequantize all ask it.
/// </summary>
public readonly record struct GgmlTypeTraits(GgmlType Type, int BlockElements, int BlockBytes)
{
    private const int SuperBlock = 256; // QK_K: the k-quants' and i-quants' super-block

    // Indexed by type id; an entry with BlockElements == 0 is an id GGML does not (or no longer) define.
    private static readonly GgmlTypeTraits[] Table = BuildTable();

    /// <summary>The layout of <paramref name="type"/>, or false for an id that is not a known GGML type.</summary>
    public static bool TryGet(GgmlType type, out GgmlTypeTraits traits)
    {
        uint id = (uint)type;
        if (id < (uint)Table.Length && Table[id].BlockElements != 0)
        {
            traits = Table[id];
            return true;
        }
        traits = default;
        return false;
    }

    /// <summary>The layout of <paramref name="type"/>; throws <see cref="ArgumentOutOfRangeException"/> for an unknown id.</summary>
    public static GgmlTypeTraits Of(GgmlType type) =>
        TryGet(type, out var traits) ? traits : throw new ArgumentOutOfRangeException(nameof(type), type, "Not a known GGML type id.");

    /// <summary>True for the block-quantized types (more than one element per block).</summary>
    public bool IsQuantized => BlockElements > 1;

    /// <summary>Bytes taken by <paramref name="elements"/> values, which must be a whole number of blocks.</summary>
    public long ByteCount(long elements)
    {
        if (elements < 0 || elements % BlockElements != 0)
            throw new ArgumentException($"{elements} elements is not a whole number of {Type} blocks of {BlockElements}.", nameof(elements));
        return checked(elements / BlockElements * BlockBytes);
    }

    private static GgmlTypeTraits[] BuildTable()
    {
        var table = new GgmlTypeTraits[(int)GgmlType.MXFP4 + 1];
        void Add(GgmlType type, int elements, int bytes) => table[(int)type] = new GgmlTypeTraits(type, elements, bytes);

        Add(GgmlType.F32, 1, 4);
        Add(GgmlType.F16, 1, 2);
        Add(GgmlType.BF16, 1, 2);
        Add(GgmlType.F64, 1, 8);
        Add(GgmlType.I8, 1, 1);
        Add(GgmlType.I16, 1, 2);
        Add(GgmlType.I32, 1, 4);
        Add(GgmlType.I64, 1, 8);

        // 32-element blocks: an fp16 scale (and min) ahead of the packed quants.
        Add(GgmlType.Q4_0, 32, 2 + 16);
        Add(GgmlType.Q4_1, 32, 2 + 2 + 16);
        Add(GgmlType.Q5_0, 32, 2 + 4 + 16);
        Add(GgmlType.Q5_1, 32, 2 + 2 + 4 + 16);
        Add(GgmlType.Q8_0, 32, 2 + 32);
        Add(GgmlType.Q8_1, 32, 2 + 2 + 32);
        Add(GgmlType.IQ4_NL, 32, 2 + 16);
        Add(GgmlType.MXFP4, 32, 1 + 16);

        // 256-element super-blocks.
        Add(GgmlType.Q2_K, SuperBlock, 16 + 64 + 2 + 2);
        Add(GgmlType.Q3_K, SuperBlock, 32 + 64 + 12 + 2);
        Add(GgmlType.Q4_K, SuperBlock, 2 + 2 + 12 + 128);
        Add(GgmlType.Q5_K, SuperBlock, 2 + 2 + 12 + 32 + 128);
        Add(GgmlType.Q6_K, SuperBlock, 128 + 64 + 16 + 2);
        Add(GgmlType.Q8_K, SuperBlock, 4 + 256 + 32);
        Add(GgmlType.IQ2_XXS, SuperBlock, 2 + 64);
        Add(GgmlType.IQ2_XS, SuperBlock, 2 + 64 + 8);
        Add(GgmlType.IQ2_S, SuperBlock, 2 + 64 + 8 + 8);
        Add(GgmlType.IQ3_XXS, SuperBlock, 2 + 96);
        Add(GgmlType.IQ3_S, SuperBlock, 2 + 64 + 8 + 32 + 4);
        Add(GgmlType.IQ1_S, SuperBlock, 2 + 32 + 16);
        Add(GgmlType.IQ1_M, SuperBlock, 32 + 16 + 8);
        Add(GgmlType.IQ4_XS, SuperBlock, 2 + 2 + 4 + 128);
        Add(GgmlType.TQ1_0, SuperBlock, 48 + 4 + 2);
        Add(GgmlType.TQ2_0, SuperBlock, 64 + 2);
        return table;
    }
}
