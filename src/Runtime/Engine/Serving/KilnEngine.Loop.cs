using System.Diagnostics;
using Kiln.Engine.Scheduling;

namespace Kiln.Engine.Serving;

// The engine loop: everything here runs on the loop's own thread, which alone touches the scheduler, the cache, the
// plan and each request's sampler and decoder.
public sealed partial class KilnEngine
{
    private readonly ContinuousBatchScheduler _scheduler;
    private readonly ICompiledPlan _plan;
    private readonly AttentionContext _context;
    private readonly int[] _stepTokens;
    private readonly float[] _logits;
    private readonly int[] _sampled;
    private readonly EngineRequest[] _stepRequests; // per chunk of the step in flight
    private readonly Dictionary<long, EngineRequest> _active; // samples by scheduler id: added and not yet removed
    private readonly PublishedValue<EngineStatistics> _statistics = new();
    private ulong _nextPrivateCacheKey;
    private long _steps;
    private long _computedTokens;
    private long _generatedTokens;
    private long _blockCopies;
    private int _peakUsedBlocks;
    private long _lastCompletionTimestamp; // 0 after an idle spell, so the pace is measured only while busy

    private void RunLoop()
    {
        try
        {
            while (TakeCommands())
            {
                if (_scheduler.UnfinishedCount > 0)
                {
                    RunStep();
                    continue;
                }
                // Idle: block until a command arrives; false once the inbox is closed and empty.
                _lastCompletionTimestamp = 0;
                if (!_inbox.Reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult()) break;
            }
            EndEverything(FinishReason.Cancelled, DisposedMessage);
        }
        catch (Exception e)
        {
            _fault = e;
            EndEverything(FinishReason.Error, $"The engine stopped after an unexpected error: {e.GetType().Name}: {e.Message}");
        }
        finally
        {
            _inbox.Writer.TryComplete();
            // On the loop's thread, so no step can still be running on the plan.
            if (_ownsPlan) _plan.Dispose();
            _loopEnded.TrySetResult();
        }
    }

    /// <summary>Applies the commands queued since the last step; false on shutdown.</summary>
    private bool TakeCommands()
    {
        while (_inbox.Reader.TryRead(out var command))
        {
            switch (command.Kind)
            {
                case CommandKind.Add:
                    Admit(command.Request!);
                    break;
                case CommandKind.Cancel:
                    // Applied by the next schedule, which frees the blocks and reports the samples finished; samples
                    // not admitted yet end when their turn comes.
                    foreach (var sample in command.Request!.Samples)
                    {
                        if (sample.Scheduled is { } scheduled) _scheduler.Cancel(scheduled.Id);
                    }
                    break;
                case CommandKind.Shutdown:
                    _inbox.Writer.TryComplete();
                    return false;
            }
        }
        return true;
    }

    /// <summary>Hands a request's first sample to the scheduler; the others are forked from it once its prompt is computed.</summary>
    private void Admit(RequestGroup request)
    {
        // Without prefix caching each request hashes its blocks under a key of its own, shared by its samples only.
        request.CacheKey = Options.PrefixCaching ? null : ++_nextPrivateCacheKey;
        request.SiblingsAdmitted = request.Samples.Length == 1;
        AdmitSample(request.Samples[0]);
    }

    private void AdmitSample(EngineRequest sample)
    {
        var request = sample.Group;
        var options = request.Options;
        GenerationRequest scheduled;
        try
        {
            scheduled = _scheduler.Add(request.Prompt, new RequestParameters(options.MaxTokens, options.Priority, request.StopTokenIds, request.CacheKey));
        }
        catch (ArgumentException e)
        {
            Complete(sample, FinishReason.Error, e.Message, completionTokens: 0);
            return;
        }
        sample.Scheduled = scheduled;
        _active.Add(scheduled.Id, sample);
        if (request.CancelRequested) _scheduler.Cancel(scheduled.Id);
    }

    /// <summary>
    /// Sample 0's prompt is being computed in the step in flight and <paramref name="logits"/> are its last row: every
    /// other sample draws its own first token from them and forks sample 0's KV blocks instead of computing the
    /// prompt again.
    /// </summary>
    private void ForkSiblings(EngineRequest first, GenerationRequest scheduled, ReadOnlySpan<float> logits)
    {
        var group = first.Group;
        group.SiblingsAdmitted = true;
        long now = Stopwatch.GetTimestamp();
        var parameters = new RequestParameters(group.Options.MaxTokens, group.Options.Priority, group.StopTokenIds, group.CacheKey);
        for (int i = 1; i < group.Samples.Length; i++)
        {
            var sample = group.Samples[i];
            int token = sample.Sampler.Sample(logits, scheduled.Tokens);
            sample.RecordLogprobs(logits, token);
            var fork = _scheduler.Fork(scheduled, token, parameters);
            sample.Scheduled = fork;
            // The step has computed the prompt: a running fork continues from the state it left in the parent's slot.
            if (fork.StateSlot >= 0) _state!.CopySlot(scheduled.StateSlot, fork.StateSlot);
            // A running fork shares the whole prompt; one left waiting at the running cap finds it at admission.
            sample.CachedPromptTokens = fork.Status == RequestStatus.Running ? fork.NumCachedTokens : -1;
            if (fork.Status != RequestStatus.Finished) _active.Add(fork.Id, sample);
            // A stop token is not appended, so only a grown sequence has a token to show.
            if (fork.NumGeneratedTokens > 0) StreamToken(sample, token, now);
            if (fork.Status == RequestStatus.Finished)
            {
                if (!sample.Completed) Complete(sample, fork.FinishReason, errorMessage: null, sample.EmittedTokens);
            }
            else if (sample.Completed)
            {
                // A stop string ended it at once: the scheduler frees its blocks at the next schedule.
                _scheduler.Cancel(fork.Id);
            }
        }
    }

    private void RunStep()
    {
        var batch = _scheduler.Schedule();
        foreach (var finished in batch.Finished)
        {
            // Cancelled or failed; a sample that already ended (a stop string) was cancelled by the engine itself.
            if (!_active.Remove(finished.Id, out var sample)) continue;
            if (!sample.Completed) Complete(sample, finished.FinishReason, finished.ErrorMessage, sample.EmittedTokens);
        }
        if (batch.IsEmpty)
        {
            PublishStatistics();
            return;
        }

        // A model without attention layers has no KV rows to copy; its blocks only count positions.
        if (_kv is not null)
        {
            foreach (var copy in batch.Copies) _kv.CopyBlock(copy.SourceBlockId, copy.DestinationBlockId);
        }
        _blockCopies += batch.Copies.Length;
        int tokenCount = FillStep(batch);
        _plan.Step(_stepTokens.AsSpan(0, tokenCount), _context, _logits.AsSpan(0, batch.LogitsCount * VocabSize));
        SampleStep(batch);
        _scheduler.OnStepCompleted(_sampled.AsSpan(0, batch.LogitsCount));
        StreamStep(batch);

        _steps++;
        _computedTokens += tokenCount;
        _metrics.ComputedTokens.Add(tokenCount);
        Array.Clear(_stepRequests, 0, batch.Chunks.Length);
        PublishStatistics();
    }

    /// <summary>Flattens the chunks into the step's tokens and their context (paged block tables, state slots); returns the token count.</summary>
    private int FillStep(ScheduledBatch batch)
    {
        _context.Clear();
        var tables = batch.BlockTables;
        int tokenCount = 0;
        var chunks = batch.Chunks;
        for (int s = 0; s < chunks.Length; s++)
        {
            var chunk = chunks[s];
            var request = _active[chunk.Request.Id];
            _stepRequests[s] = request;
            if (request.CachedPromptTokens < 0) request.CachedPromptTokens = chunk.Request.NumCachedTokens;
            chunk.Request.Tokens.Slice(chunk.Start, chunk.Count).CopyTo(_stepTokens.AsSpan(tokenCount));
            tokenCount += chunk.Count;
            if (_kv is null)
            {
                _context.AddRecurrentChunk(chunk.Request.StateSlot, chunk.Start, chunk.Count, chunk.NeedsLogits);
                continue;
            }
            var blockIds = tables.BlockIds[tables.Indptr[s]..tables.Indptr[s + 1]];
            _context.AddChunk(blockIds, chunk.Start, chunk.Count, chunk.NeedsLogits, chunk.Request.StateSlot);
        }
        // Empty unless EngineOptions.SharedPrefixAttention: the scheduler then found which sequences share prefix blocks.
        for (int g = 0; g < tables.SharedPrefixCount; g++)
            _context.AddSharedPrefix(tables.SharedPrefixSequences(g), tables.SharedPrefixBlocks(g));
        return tokenCount;
    }

    /// <summary>Each chunk that ends its request's known tokens gets its next token from the request's own sampler.</summary>
    private void SampleStep(ScheduledBatch batch)
    {
        var chunks = batch.Chunks;
        int row = 0;
        for (int s = 0; s < chunks.Length; s++)
        {
            if (!chunks[s].NeedsLogits) continue;
            var request = _stepRequests[s];
            var logits = _logits.AsSpan(row * VocabSize, VocabSize);
            int token = request.Sampler.Sample(logits, chunks[s].Request.Tokens);
            request.RecordLogprobs(logits, token);
            _sampled[row++] = token;
            if (!request.Group.SiblingsAdmitted) ForkSiblings(request, chunks[s].Request, logits);
        }
    }

    /// <summary>Streams every token the scheduler accepted, and ends the requests that finished.</summary>
    private void StreamStep(ScheduledBatch batch)
    {
        long now = Stopwatch.GetTimestamp();
        var chunks = batch.Chunks;
        for (int s = 0; s < chunks.Length; s++)
        {
            if (!chunks[s].NeedsLogits) continue;
            var request = _stepRequests[s];
            var scheduled = chunks[s].Request;
            // A stop token is not appended, so only a grown sequence has a token to show.
            if (scheduled.NumGeneratedTokens > request.EmittedTokens) StreamToken(request, scheduled.Tokens[^1], now);

            if (scheduled.Status == RequestStatus.Finished)
            {
                _active.Remove(scheduled.Id);
                if (!request.Completed) Complete(request, scheduled.FinishReason, scheduled.ErrorMessage, request.EmittedTokens);
            }
            else if (request.Completed)
            {
                // A stop string ended it: the scheduler frees its blocks at the next schedule.
                _scheduler.Cancel(scheduled.Id);
            }
        }
    }

    private void StreamToken(EngineRequest request, int token, long now)
    {
        if (request.EmittedTokens == 0) _metrics.TimeToFirstToken.Record(Stopwatch.GetElapsedTime(request.Group.ArrivalTimestamp, now).TotalMilliseconds);
        else _metrics.TimeBetweenTokens.Record(Stopwatch.GetElapsedTime(request.LastTokenTimestamp, now).TotalMilliseconds);
        request.LastTokenTimestamp = now;
        float? logprob = request.Options.Logprobs ? request.PendingLogprob : null;
        var topLogprobs = request.PendingTopLogprobs; // this token's slot, before the count moves on
        request.EmittedTokens++;
        _generatedTokens++;
        _metrics.GeneratedTokens.Add(1);

        string text = request.Decoder.Append(token);
        if (request.StopStrings is { } stops) text = stops.Push(text);
        request.Group.Updates.Write(new GenerationUpdate(token, text, logprob, Index: request.Index) { TopLogprobs = topLogprobs });
        if (request.StopStrings is { Stopped: true }) Complete(request, FinishReason.Stop, errorMessage: null, request.EmittedTokens);
    }

    /// <summary>Sends a sample's final update (with any text still held back); the last one closes the request's stream.</summary>
    private void Complete(EngineRequest request, FinishReason reason, string? errorMessage, int completionTokens)
    {
        string tail = request.Decoder.Flush();
        if (request.StopStrings is { } stops)
        {
            bool stoppedBefore = stops.Stopped;
            tail = stops.Push(tail) + stops.Flush();
            // The last bytes completed a stop string: that is why it ended, whatever else was due.
            if (!stoppedBefore && stops.Stopped && reason == FinishReason.Length) reason = FinishReason.Stop;
        }
        var group = request.Group;
        if (!group.SiblingsAdmitted)
        {
            // Sample 0 ended before its prompt was computed (cancelled, failed): the others, never forked, end alike.
            group.SiblingsAdmitted = true;
            for (int i = 1; i < group.Samples.Length; i++) Complete(group.Samples[i], reason, errorMessage, completionTokens: 0);
        }
        var usage = new GenerationUsage(group.Prompt.Length, Math.Max(request.CachedPromptTokens, 0), completionTokens);
        request.Completed = true;
        group.Updates.Write(new GenerationUpdate(-1, tail, null, reason, usage, errorMessage, request.Index));
        if (--group.OpenSamples == 0)
        {
            group.Completed = true;
            group.CallerCancellation.Unregister();
            group.Updates.Complete();
        }
        Interlocked.Decrement(ref _openSamples);
        MeasureCompletionPace();
        _metrics.FinishedRequests.Add(1, new KeyValuePair<string, object?>("reason", ReasonTag(reason)));
    }

    /// <summary>Smooths the interval between finished samples while busy: the pace at which room opens for waiting requests.</summary>
    private void MeasureCompletionPace()
    {
        long now = Stopwatch.GetTimestamp();
        if (_lastCompletionTimestamp != 0)
        {
            double interval = Stopwatch.GetElapsedTime(_lastCompletionTimestamp, now).TotalSeconds;
            double smoothed = Volatile.Read(ref _secondsBetweenCompletions);
            Volatile.Write(ref _secondsBetweenCompletions, smoothed == 0 ? interval : 0.8 * smoothed + 0.2 * interval);
        }
        _lastCompletionTimestamp = now;
    }

    /// <summary>Ends every open request, and every one still queued, when the loop stops.</summary>
    private void EndEverything(FinishReason reason, string message)
    {
        foreach (var sample in _active.Values) EndGroup(sample.Group, reason, message);
        _active.Clear();
        // Close the inbox first, so nothing can slip in behind the drain.
        _inbox.Writer.TryComplete();
        while (_inbox.Reader.TryRead(out var command))
        {
            if (command.Kind == CommandKind.Add) EndGroup(command.Request!, reason, message);
        }
        PublishStatistics();
    }

    /// <summary>Ends every sample of a request still open, admitted or not.</summary>
    private void EndGroup(RequestGroup request, FinishReason reason, string message)
    {
        request.SiblingsAdmitted = true;
        foreach (var sample in request.Samples)
        {
            if (!sample.Completed) Complete(sample, reason, message, sample.EmittedTokens);
        }
    }

    private void PublishStatistics()
    {
        var pool = _scheduler.Pool;
        _peakUsedBlocks = Math.Max(_peakUsedBlocks, pool.UsedBlockCount);
        int tokensHeld = 0;
        foreach (var running in _scheduler.Running) tokensHeld += running.NumComputedTokens;
        _statistics.Write(new EngineStatistics(
            RunningRequests: _scheduler.Running.Length,
            WaitingRequests: _scheduler.WaitingCount,
            KvBlocksTotal: pool.BlockCount,
            KvBlocksUsed: pool.UsedBlockCount,
            KvBlocksFree: pool.FreeBlockCount,
            KvBlocksCached: pool.CachedBlockCount,
            KvBlocksPeakUsed: _peakUsedBlocks,
            KvTokensHeld: tokensHeld,
            Steps: _steps,
            ComputedTokens: _computedTokens,
            GeneratedTokens: _generatedTokens,
            Preemptions: _scheduler.PreemptionCount,
            PrefixQueryTokens: pool.PrefixQueryTokens,
            PrefixHitTokens: pool.PrefixHitTokens)
        {
            BlockSize = pool.BlockSize,
            KvBlockCopies = _blockCopies,
            StateSlotsTotal = _scheduler.StateSlots?.SlotCount ?? 0,
            StateSlotsUsed = _scheduler.StateSlots?.UsedCount ?? 0,
        });
    }

    private static string ReasonTag(FinishReason reason) => reason switch
    {
        FinishReason.Length => "length",
        FinishReason.Stop => "stop",
        FinishReason.Cancelled => "cancelled",
        FinishReason.Error => "error",
        _ => "none",
    };
}
