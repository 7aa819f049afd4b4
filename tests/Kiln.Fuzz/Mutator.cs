using System.Buffers.Binary;

namespace Kiln.Fuzz;

/// <summary>
/// afl's havoc stage in miniature, for the in-process test: a few stacked edits of one corpus input — bit flips,
/// random bytes, "interesting" 8-, 32- and 64-bit values written over lengths and counts, block deletes, inserts and
/// duplicates, a splice with another input, a cut — from one seeded generator, so a run is reproducible from its seed.
/// </summary>
public sealed class Mutator(Random random)
{
    private static readonly long[] Interesting =
    [
        0, 1, -1, 2, 7, 8, 16, 32, 64, 127, 128, 255, 256, 1024, 4096, 65535, 65536,
        int.MaxValue, int.MinValue, uint.MaxValue, long.MaxValue, long.MinValue, 1L << 31, 1L << 32, 1L << 40, 1L << 62,
    ];

    public byte[] Mutate(byte[] input, IReadOnlyList<byte[]> corpus)
    {
        var bytes = new List<byte>(input);
        int edits = 1 << random.Next(4); // 1, 2, 4 or 8 stacked edits
        for (int e = 0; e < edits; e++) Edit(bytes, corpus);
        return [.. bytes];
    }

    private void Edit(List<byte> bytes, IReadOnlyList<byte[]> corpus)
    {
        if (bytes.Count == 0)
        {
            bytes.Add((byte)random.Next(256));
            return;
        }
        int at = random.Next(bytes.Count);
        switch (random.Next(10))
        {
            case 0:
                bytes[at] ^= (byte)(1 << random.Next(8));
                break;
            case 1:
                bytes[at] = (byte)random.Next(256);
                break;
            case 2:
                bytes[at] = (byte)(bytes[at] + random.Next(-16, 17));
                break;
            case 3:
            case 4:
                WriteInteresting(bytes, at, random.Next(3) switch { 0 => 1, 1 => 4, _ => 8 });
                break;
            case 5:
                bytes.RemoveRange(at, random.Next(1, Math.Min(bytes.Count - at, 64) + 1));
                break;
            case 6:
            {
                var inserted = new byte[random.Next(1, 33)];
                random.NextBytes(inserted);
                bytes.InsertRange(at, inserted);
                break;
            }
            case 7:
            {
                int from = random.Next(bytes.Count);
                int length = random.Next(1, Math.Min(bytes.Count - from, 128) + 1);
                bytes.InsertRange(at, bytes.GetRange(from, length));
                break;
            }
            case 8:
            {
                // Splice: this input's head, another's tail.
                byte[] other = corpus[random.Next(corpus.Count)];
                if (other.Length == 0) break;
                int from = random.Next(other.Length);
                bytes.RemoveRange(at, bytes.Count - at);
                bytes.AddRange(other.AsSpan(from).ToArray());
                break;
            }
            default:
                bytes.RemoveRange(at, bytes.Count - at);
                break;
        }
    }

    private void WriteInteresting(List<byte> bytes, int at, int width)
    {
        long value = Interesting[random.Next(Interesting.Length)];
        Span<byte> encoded = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(encoded, value);
        for (int i = 0; i < width && at + i < bytes.Count; i++) bytes[at + i] = encoded[i];
    }
}
