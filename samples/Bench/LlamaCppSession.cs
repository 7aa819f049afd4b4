using LLama;
using LLama.Common;
using LLama.Native;

namespace Kiln.Bench;

/// <summary>
/// llama.cpp (through LLamaSharp) on one GGUF file: the peer Kiln is measured and checked against. Bench and tests
/// only; the product never references it.
/// </summary>
public static class LlamaCpp
{
    private static readonly object Gate = new();
    private static bool _configured;
    private static readonly List<string> RecentErrors = [];

    /// <summary>
    /// Routes llama.cpp's log through a callback (errors kept for messages, the rest dropped) before the native
    /// library loads. Idempotent; must run before anything touches LLamaSharp's native API.
    /// </summary>
    public static void Configure()
    {
        lock (Gate)
        {
            if (_configured) return;
            if (!NativeLibraryConfig.LLama.LibraryHasLoaded)
            {
                NativeLibraryConfig.All.WithLogCallback((level, message) =>
                {
                    if (level != LLamaLogLevel.Error) return;
                    lock (RecentErrors)
                    {
                        if (RecentErrors.Count == 32) RecentErrors.RemoveAt(0);
                        RecentErrors.Add(message.TrimEnd());
                    }
                });
            }
            _configured = true;
        }
    }

    /// <summary>The last few errors llama.cpp logged, for an exception message.</summary>
    public static string LastErrors()
    {
        lock (RecentErrors) return RecentErrors.Count == 0 ? "(none logged)" : string.Join(" | ", RecentErrors);
    }

    /// <summary>
    /// llama.cpp's own quantizer (llama_model_quantize): <paramref name="source"/> (F32 or F16) into
    /// <paramref name="destination"/> as <paramref name="fileType"/> ("Q4_K_M", "Q5_K_M", "Q6_K", …), the output matrix
    /// included, with llama.cpp's per-tensor rules and fallbacks.
    /// </summary>
    public static void Quantize(string source, string destination, string fileType, int threads)
    {
        Configure();
        NativeApi.llama_empty_call(); // loads the native library before the quantizer's first call
        if (!LLamaQuantizer.Quantize(source, destination, fileType, threads, allowRequantize: true, quantizeOutputTensor: true))
            throw new InvalidOperationException($"llama.cpp could not quantize '{source}' to {fileType}: {LastErrors()}");
    }

    /// <summary>
    /// Loads the weights; a native library that cannot load becomes one clear <see cref="InvalidOperationException"/>.
    /// </summary>
    public static LLamaWeights LoadWeights(string path, int threads)
    {
        Configure();
        if (!File.Exists(path)) throw new FileNotFoundException($"model file '{path}' not found", path);
        try
        {
            // ModelParams' constructor already calls into the native library.
            var parameters = new ModelParams(path) { GpuLayerCount = 0, Threads = threads, BatchThreads = threads };
            return LLamaWeights.LoadFromFile(parameters);
        }
        catch (Exception e) when (e is TypeInitializationException or DllNotFoundException or EntryPointNotFoundException or BadImageFormatException
                                      || e.GetType().Name == "RuntimeError" && e.Message.Contains("native library", StringComparison.OrdinalIgnoreCase))
        {
            throw new InvalidOperationException(
                $"llama.cpp (LLamaSharp.Backend.Cpu 0.30.0) native library could not be loaded on {System.Runtime.InteropServices.RuntimeInformation.RuntimeIdentifier}: {e.GetBaseException().Message}", e);
        }
        catch (Exception e) when (e is not InvalidOperationException)
        {
            throw new InvalidOperationException($"llama.cpp could not load '{path}': {e.Message}; llama.cpp said: {LastErrors()}", e);
        }
    }
}

/// <summary>One llama.cpp context over loaded weights: a KV cache for <c>sequences</c> sequences and a reusable batch.</summary>
public sealed class LlamaCppSession : IDisposable
{
    private readonly LLamaContext _context;
    private readonly LLamaBatch _batch = new();

    /// <param name="exactAttention">F32 KV cache and no flash attention (for logit comparisons); otherwise llama.cpp's defaults.</param>
    public LlamaCppSession(LLamaWeights weights, int threads, int contextSize, int sequences, int batchSize, bool exactAttention = false)
    {
        var parameters = new ModelParams(string.Empty)
        {
            ContextSize = (uint)contextSize,
            SeqMax = (uint)sequences,
            KVUnified = true,
            Threads = threads,
            BatchThreads = threads,
            BatchSize = (uint)batchSize,
            UBatchSize = (uint)batchSize,
            GpuLayerCount = 0,
        };
        if (exactAttention)
        {
            parameters.FlashAttention = false;
            parameters.TypeK = GGMLType.GGML_TYPE_F32;
            parameters.TypeV = GGMLType.GGML_TYPE_F32;
        }
        try
        {
            _context = weights.CreateContext(parameters);
        }
        catch (Exception e)
        {
            throw new InvalidOperationException($"llama.cpp could not create a context ({contextSize} cells, {sequences} sequences): {e.Message}; llama.cpp said: {LlamaCpp.LastErrors()}", e);
        }
        VocabSize = weights.Vocab.Count;
    }

    public int VocabSize { get; }

    /// <summary>Empties the KV cache of every sequence.</summary>
    public void Clear() => _context.NativeHandle.MemoryClear(true);

    public void BeginBatch() => _batch.Clear();

    /// <summary>Adds one token; returns its index in the batch (for <see cref="Logits"/> when <paramref name="wantLogits"/>).</summary>
    public int Add(int token, int position, int sequence, bool wantLogits) =>
        _batch.Add(token, position, (LLamaSeqId)sequence, wantLogits);

    /// <summary>Adds a sequence's consecutive tokens from <paramref name="start"/>; only the last one's logits are wanted. Returns the last index.</summary>
    public int AddSequence(ReadOnlySpan<int> tokens, int start, int sequence)
    {
        int index = -1;
        for (int i = 0; i < tokens.Length; i++) index = Add(tokens[i], start + i, sequence, i == tokens.Length - 1);
        return index;
    }

    /// <summary>Runs the batch built since <see cref="BeginBatch"/> and waits for it.</summary>
    public void Decode()
    {
        var result = _context.NativeHandle.Decode(_batch);
        if (result != DecodeResult.Ok)
            throw new InvalidOperationException($"llama_decode returned {result} for a batch of {_batch.TokenCount} tokens; llama.cpp said: {LlamaCpp.LastErrors()}");
        _context.NativeHandle.Synchronize();
    }

    /// <summary>The logits of the batch token at <paramref name="batchIndex"/> (valid until the next decode).</summary>
    public ReadOnlySpan<float> Logits(int batchIndex) => _context.NativeHandle.GetLogitsIth(batchIndex);

    public void Dispose() => _context.Dispose();
}
