namespace Kiln.Kernels.Quantized;

/// <summary>The 32-element block every format here quantizes by, and the shape checks that go with it.</summary>
internal static class Blocks
{
    public const int Size = 32;

    /// <summary>Blocks in a row of <paramref name="k"/> elements; <paramref name="k"/> must be a positive multiple of 32.</summary>
    public static int Count(int k, string parameterName = "k")
    {
        if (k <= 0 || k % Size != 0)
            throw new ArgumentException($"A row of {k} elements is not a whole, non-empty number of {Size}-element blocks.", parameterName);
        return k / Size;
    }

    /// <summary>Throws when <paramref name="length"/> is not what the shape says it must be.</summary>
    public static void CheckLength(int length, int expected, string parameterName, string what)
    {
        if (length != expected)
            throw new ArgumentException($"{what} has {length} elements; the shape needs {expected}.", parameterName);
    }

    /// <summary>Throws when <paramref name="length"/> is shorter than the shape needs.</summary>
    public static void CheckAtLeast(int length, long needed, string parameterName, string what)
    {
        if (length < needed)
            throw new ArgumentException($"{what} has {length} elements; the shape needs at least {needed}.", parameterName);
    }
}
