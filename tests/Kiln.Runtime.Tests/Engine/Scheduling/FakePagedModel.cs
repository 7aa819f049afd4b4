using Kiln.Engine.Paging;
using Kiln.Engine.Scheduling;

namespace Kiln.Runtime.Tests.Engine.Scheduling;

/// <summary>
/// A stand-in for the compiled plan that uses the paged cache for real: each step writes every scheduled token
/// (its id and position, in place of keys and values) into the slot its block table names, then, for each chunk
/// that needs logits, reads the whole sequence back through the step's CSR block tables and "samples" a
/// deterministic function of what it read. A wrong block, a block reused while still needed, or a stale prefix-cache
/// hit therefore changes the sampled tokens, and shows up as a difference from the request run alone.
/// </summary>
internal sealed class FakePagedModel
{
    public const int VocabSize = 8;

    private readonly BlockPool _pool;
    private readonly int[] _tokenAt;
    private readonly int[] _positionAt;
    private readonly int[] _readBack;
    private readonly int[] _sampled;

    public FakePagedModel(BlockPool pool, int maxContext)
    {
        _pool = pool;
        _tokenAt = new int[pool.TokenCapacity];
        _positionAt = new int[pool.TokenCapacity];
        _readBack = new int[maxContext];
        _sampled = new int[pool.TokenCapacity];
    }

    /// <summary>The next token of a sequence: what the fake model would sample from its logits.</summary>
    public static int NextToken(ReadOnlySpan<int> tokens)
    {
        uint hash = 2166136261;
        foreach (int token in tokens) hash = (hash ^ (uint)token) * 16777619;
        hash ^= hash >> 15;
        hash *= 0x2C1B3C6D;
        hash ^= hash >> 12;
        return (int)(hash % VocabSize);
    }

    /// <summary>What a request generates alone, straight from the model's definition.</summary>
    public static (int[] Generated, FinishReason Reason) Reference(ReadOnlySpan<int> prompt, int maxNewTokens, ReadOnlySpan<int> stopTokenIds, int maxContext)
    {
        var tokens = new List<int>(prompt.ToArray());
        while (true)
        {
            int next = NextToken(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(tokens));
            if (stopTokenIds.Contains(next)) return (tokens.Skip(prompt.Length).ToArray(), FinishReason.Stop);
            tokens.Add(next);
            if (tokens.Count - prompt.Length == maxNewTokens || tokens.Count == maxContext)
                return (tokens.Skip(prompt.Length).ToArray(), FinishReason.Length);
        }
    }

    /// <summary>Runs one step; the returned span (one token per chunk needing logits) is reused by the next step.</summary>
    public ReadOnlySpan<int> Step(ScheduledBatch batch)
    {
        var tables = batch.BlockTables;
        var chunks = batch.Chunks;
        if (tables.SequenceCount != chunks.Length) throw new InvalidOperationException("One block table per chunk expected.");
        int bs = _pool.BlockSize;

        // Copy-on-write first, as the engine does: the copies' sources may be rewritten by this very step.
        foreach (var copy in batch.Copies)
        {
            _tokenAt.AsSpan(copy.SourceBlockId * bs, bs).CopyTo(_tokenAt.AsSpan(copy.DestinationBlockId * bs));
            _positionAt.AsSpan(copy.SourceBlockId * bs, bs).CopyTo(_positionAt.AsSpan(copy.DestinationBlockId * bs));
        }

        for (int s = 0; s < chunks.Length; s++)
        {
            var chunk = chunks[s];
            if (tables.QueryIndptr[s + 1] - tables.QueryIndptr[s] != chunk.Count) throw new InvalidOperationException("Query rows disagree with the chunk.");
            if (tables.KvLength(s) != chunk.Start + chunk.Count) throw new InvalidOperationException("KV length disagrees with the chunk.");
            var blockIds = tables.BlockIds[tables.Indptr[s]..tables.Indptr[s + 1]];
            for (int position = chunk.Start; position < chunk.Start + chunk.Count; position++)
            {
                var block = _pool.GetBlock(blockIds[position / bs]);
                // Writes go only to a block this sequence alone holds and the prefix cache does not name.
                if (block.RefCount != 1 || block.Hash is not null)
                    throw new InvalidOperationException($"{chunk.Request} writes position {position} into shared or cached {block}.");
                int slot = block.Id * bs + position % bs;
                _tokenAt[slot] = chunk.Request.Tokens[position];
                _positionAt[slot] = position;
            }
        }

        int sampled = 0;
        for (int s = 0; s < chunks.Length; s++)
        {
            if (!chunks[s].NeedsLogits) continue;
            var blockIds = tables.BlockIds[tables.Indptr[s]..tables.Indptr[s + 1]];
            int length = tables.KvLength(s);
            for (int position = 0; position < length; position++)
            {
                int slot = blockIds[position / bs] * bs + position % bs;
                if (_positionAt[slot] != position)
                    throw new InvalidOperationException($"{chunks[s].Request} reads position {_positionAt[slot]} where it expects {position}.");
                _readBack[position] = _tokenAt[slot];
            }
            _sampled[sampled++] = NextToken(_readBack.AsSpan(0, length));
        }
        return _sampled.AsSpan(0, sampled);
    }
}
