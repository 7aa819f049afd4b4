using System.Numerics;

namespace Kiln.Engine.Paging;

/// <summary>
/// The prefix-cache identity of a full KV block: a 128-bit hash of the parent block's hash, the block's token ids
/// and an optional extra key (adapter id, per-tenant cache salt). Chaining makes a hash stand for the whole prefix
/// up to its block, so two equal hashes mean two equal prefixes, not merely two equal blocks.
/// </summary>
/// <remarks>
/// Stable across processes and machines (fixed seeds, arithmetic on values rather than memory), so a cache can be
/// keyed on it beyond one run. Not cryptographic: where one tenant must not probe another's cache, give each tenant
/// its own extra key.
/// </remarks>
public readonly struct BlockHash : IEquatable<BlockHash>
{
    // Two independent 64-bit lanes (different seeds, multipliers and rotations), each a multiply-rotate
    // accumulator finished by a 64-bit avalanche; 128 bits make an accidental collision (wrong KV reused)
    // negligible at any realistic cache size.
    private const ulong SeedA = 0x243F6A8885A308D3;
    private const ulong SeedB = 0x13198A2E03707344;
    private const ulong MultiplyA1 = 0x9E3779B185EBCA87;
    private const ulong MultiplyA2 = 0xC2B2AE3D27D4EB4F;
    private const ulong MultiplyB1 = 0x165667B19E3779F9;
    private const ulong MultiplyB2 = 0x85EBCA77C2B2AE63;

    public BlockHash(ulong low, ulong high)
    {
        Low = low;
        High = high;
    }

    public ulong Low { get; }

    public ulong High { get; }

    /// <summary>Hashes one block: <paramref name="parent"/> is the previous block's hash (null for the first block).</summary>
    public static BlockHash Chain(BlockHash? parent, ReadOnlySpan<int> tokenIds, ulong? extraKey = null)
    {
        ulong a = SeedA, b = SeedB;
        // Presence flags keep "no parent" apart from a parent hashing to zero, and "no key" apart from key 0.
        Absorb(ref a, ref b, parent.HasValue ? 1UL : 0UL);
        if (parent is { } p)
        {
            Absorb(ref a, ref b, p.Low);
            Absorb(ref a, ref b, p.High);
        }
        Absorb(ref a, ref b, extraKey.HasValue ? 1UL : 0UL);
        if (extraKey is { } key) Absorb(ref a, ref b, key);
        Absorb(ref a, ref b, (ulong)tokenIds.Length);

        int i = 0;
        for (; i + 1 < tokenIds.Length; i += 2)
            Absorb(ref a, ref b, (uint)tokenIds[i] | ((ulong)(uint)tokenIds[i + 1] << 32));
        if (i < tokenIds.Length) Absorb(ref a, ref b, (uint)tokenIds[i]);

        return new BlockHash(Avalanche(a), Avalanche(b ^ 0x5555555555555555));
    }

    private static void Absorb(ref ulong a, ref ulong b, ulong value)
    {
        a = BitOperations.RotateLeft(a ^ (value * MultiplyA2), 31) * MultiplyA1;
        b = BitOperations.RotateLeft(b ^ (value * MultiplyB2), 27) * MultiplyB1;
    }

    private static ulong Avalanche(ulong h)
    {
        h ^= h >> 33;
        h *= 0xFF51AFD7ED558CCD;
        h ^= h >> 33;
        h *= 0xC4CEB9FE1A85EC53;
        h ^= h >> 33;
        return h;
    }

    public bool Equals(BlockHash other) => Low == other.Low && High == other.High;

    public override bool Equals(object? obj) => obj is BlockHash other && Equals(other);

    public override int GetHashCode() => (int)Low ^ (int)(Low >> 32);

    public static bool operator ==(BlockHash left, BlockHash right) => left.Equals(right);

    public static bool operator !=(BlockHash left, BlockHash right) => !left.Equals(right);

    public override string ToString() => $"{High:x16}{Low:x16}";
}
