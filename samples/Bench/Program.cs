using System.Diagnostics;
using System.Globalization;
using Kiln.Bench;

// Kiln's benchmark tool: synthetic model files with real shapes, and Kiln vs llama.cpp side by side on them.
//   make-model [--arch llama|gpt2|qwen2|qwen3|gemma2|phi3|bert|lstm|mamba] --shape {15m|110m|1b} --format {f32|f16|q8_0|q4_0|q4_k_m|q5_k_m|q6_k} --out FILE [--seed N] [--sparsity 2:4|block:Z]
//   sparse --model FILE [--threads N] [--runs 5] [--json OUT] | sparse --kernels [--threads N] [--runs 31]
//   compare --model FILE --threads N [--runs 5] [--json OUT] [--workloads a,b] [--quick] [--seed N]
//   agree --model FILE [--positions 64] [--threads N] [--json OUT]
//   profile --model FILE --workload prefill_128|decode_128|batched_decode_8|batched_decode_32|all [--threads N] [--runs 5] [--json OUT]
//   kernels --threads N [--formats q4_0,q8_0,f32,q4_k,q5_k,q6_k] [--tokens 1,32,128]
//   attention --threads N [--contexts 128,512,2048] [--blocks 16,whole] [--encoder 32x32,8x256]
//   memory --model FILE [--json OUT] [--tokens 128] [--threads N]
//   embed-compare --threads N [--runs 5] [--json OUT] [--seed N] [--profile]
//   gpu-agree --accelerator cpu|cuda --model FILE --json OUT [--positions 32]
//   gpu-compare --model FILE --json OUT [--torch torch_llama.json] [--runs 5]
//   rnn-serve [--json OUT]
//   soak --model FILE [--requests 10000] [--concurrency 64] [--cancel-fraction 0.2] [--url http://127.0.0.1:PORT] [--json OUT]
//   shared-prefix --model FILE [--prefix 1024] [--seqs 32] [--suffix 64] [--threads N] [--runs 5] [--json OUT] [--kv f16|f32|int8]
return BenchCli.Run(args);

internal static class BenchCli
{
    private const string Usage =
        "usage: bench make-model [--arch llama|gpt2|qwen2|qwen3|gemma2|phi3|bert|lstm|mamba] --shape {15m|110m|1b|tiny} --format {f32|f16|q8_0|q4_0|q4_k_m|q5_k_m|q6_k} --out FILE [--seed N] [--logit-scale X] [--sparsity 2:4|block:Z]\n" +
        "       bench sparse --model FILE [--threads N] [--runs 5] [--json OUT]\n" +
        "       bench sparse --kernels [--threads N] [--runs 31]\n" +
        "       bench compare --model FILE --threads N [--runs 5] [--json OUT] [--workloads " + "prefill_128,decode_128,batched_decode_8,batched_decode_32] [--quick] [--seed N] [--kv f16|f32]\n" +
        "       bench agree --model FILE [--positions 64] [--threads N] [--json OUT]\n" +
        "       bench profile --model FILE --workload prefill_128|decode_128|batched_decode_8|batched_decode_32|all [--threads N] [--runs 5] [--json OUT]\n" +
        "       bench kernels --threads N [--formats q4_0,q8_0,f32,q4_k,q5_k,q6_k] [--tokens 1,32,128]\n" +
        "       bench attention --threads N [--contexts 128,512,2048] [--blocks 16,whole] [--encoder 32x32,8x256]\n" +
        "       bench serve --model FILE --threads N [--json OUT] [--quick]\n" +
        "       bench memory --model FILE [--json OUT] [--tokens 128] [--threads N]\n" +
        "       bench embed-compare --threads N [--runs 5] [--json OUT] [--seed N] [--profile]\n" +
        "       bench gpu-agree --accelerator cpu|cuda --model FILE --json OUT [--positions 32]\n" +
        "       bench gpu-compare --model FILE --json OUT [--torch torch_llama.json] [--runs 5]\n" +
        "       bench rnn-serve [--json OUT]\n" +
        "       bench soak --model FILE [--requests 10000] [--concurrency 64] [--cancel-fraction 0.2] [--url http://127.0.0.1:PORT] [--json OUT]\n" +
        "       bench shared-prefix --model FILE [--prefix 1024] [--seqs 32] [--suffix 64] [--threads N] [--runs 5] [--json OUT] [--kv f16|f32|int8]";

    public static int Run(string[] args)
    {
        if (args.Length > 0 && args[0] == "serve") return ServeCommand.Run(args.AsSpan(1)); // the batching engine's benchmark (Serve*.cs)
        if (args.Length > 0 && args[0] is "gpu-agree" or "gpu-compare") return GpuCommands.Run(args); // the GPU plan (GpuCommands.cs)
        if (args.Length > 0 && args[0] == "rnn-serve") return RnnServeCommand.Run(args.AsSpan(1)); // continuous batching of an LSTM (E-BATCH)
        if (args.Length > 0 && args[0] == "soak") return SoakCommand.Run(args.AsSpan(1)); // load with faults, engine or HTTP (Soak*.cs)
        try
        {
            if (args.Length == 0) throw new UsageException("missing command: make-model, compare, agree, profile, kernels, attention, memory, embed-compare, serve, rnn-serve, soak, gpu-agree or gpu-compare (--help for usage)");
            if (args[0] is "-h" or "--help" or "help")
            {
                Console.WriteLine(Usage);
                return 0;
            }
            var options = ParseOptions(args.AsSpan(1), args[0] switch
            {
                "make-model" => ["arch", "shape", "format", "out", "seed", "logit-scale", "sparsity"],
                "sparse" => ["model", "threads", "runs", "json", "kernels"],
                "compare" => ["model", "threads", "runs", "json", "workloads", "quick", "seed", "kv"],
                "agree" => ["model", "positions", "threads", "json"],
                "profile" => ["model", "workload", "threads", "runs", "json"],
                "kernels" => ["threads", "formats", "tokens"],
                "attention" => ["threads", "contexts", "blocks", "encoder"],
                "memory" => ["model", "json", "tokens", "threads"],
                "embed-compare" => ["threads", "runs", "json", "seed", "profile"],
                "shared-prefix" => ["model", "prefix", "seqs", "suffix", "threads", "runs", "json", "kv"],
                _ => throw new UsageException($"unknown command '{args[0]}' (expected make-model, compare, agree, profile, kernels, attention, memory, embed-compare, shared-prefix or serve)"),
            });
            return args[0] switch
            {
                "make-model" => MakeModel(options),
                "sparse" => SparseCommand(options),
                "agree" => Agree(options),
                "profile" => Profile(options),
                "kernels" => Kernels(options),
                "attention" => Attention(options),
                "memory" => Memory(options),
                "embed-compare" => EmbedCompare.Run(Int(options, "threads", -1, min: 1, max: 64) is int threads and > 0 ? threads : throw new UsageException("--threads is required"),
                    Int(options, "runs", 5, min: 1, max: 100), options.GetValueOrDefault("json"), Int(options, "seed", 1234, min: int.MinValue), Console.Out, Console.Error,
                    options.ContainsKey("profile")),
                "shared-prefix" => SharedPrefixCommand.Run(Required(options, "model"), Int(options, "prefix", 1024, min: 16), Int(options, "seqs", 32, min: 2, max: 256),
                    Int(options, "suffix", 64, min: 0), Int(options, "threads", Environment.ProcessorCount, min: 1, max: 64), Int(options, "runs", 5, min: 1, max: 100),
                    options.GetValueOrDefault("json"), options.GetValueOrDefault("kv", "f16").ToLowerInvariant() switch
                    {
                        "f16" => Kiln.KvStorage.F16,
                        "f32" => Kiln.KvStorage.F32,
                        "int8" => Kiln.KvStorage.Int8,
                        string other => throw new UsageException($"--kv must be f16, f32 or int8, not '{other}'"),
                    }, Console.Out),
                _ => CompareCommand(options),
            };
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"bench: {e.Message}");
            return 2;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException or ArgumentException or Kiln.Loading.ModelLoadException)
        {
            Console.Error.WriteLine($"bench: error: {e.Message}");
            return 1;
        }
    }

    private static int MakeModel(Dictionary<string, string> options)
    {
        string archName = options.GetValueOrDefault("arch", "llama");
        var architecture = SyntheticModel.FindArchitecture(archName)
                           ?? throw new UsageException($"--arch must be one of {string.Join(", ", SyntheticModel.AllArchitectureNames)}, not '{archName}'");
        var shape = architecture.Shape(Required(options, "shape"))
                    ?? throw new UsageException($"--shape must be 15m, 110m, tiny{(architecture.OneB is null ? "" : " or 1b")} for {architecture.Name}, not '{options["shape"]}'");
        string formatText = Required(options, "format");
        var format = SyntheticFormat.TryParse(formatText)
                     ?? throw new UsageException($"--format must be one of {string.Join(", ", SyntheticFormat.Names)}, not '{formatText}'");
        string path = Required(options, "out");
        int seed = Int(options, "seed", 1, min: int.MinValue);
        string? directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (directory is not null && !Directory.Exists(directory)) throw new UsageException($"--out: directory '{directory}' does not exist");
        // The output's weight scale sets the logits' spread (3 by default; 1 gives unit-size logits, as peer checks of
        // quantized files want: activation-quantization noise grows with the logits).
        var scales = new SyntheticModel.Scales();
        if (options.TryGetValue("logit-scale", out string? scaleText))
        {
            if (!float.TryParse(scaleText, NumberStyles.Float, CultureInfo.InvariantCulture, out float logitScale) || !(logitScale > 0) || float.IsInfinity(logitScale))
                throw new UsageException($"--logit-scale must be a positive number, not '{scaleText}'");
            scales = scales with { LogitScale = logitScale };
        }

        SyntheticModel.Pruning? pruning = null;
        if (options.TryGetValue("sparsity", out string? sparsityText))
        {
            pruning = SyntheticModel.Pruning.Parse(sparsityText) ?? throw new UsageException($"--sparsity must be 2:4 or block:Z (Z the fraction of zero 8×32 tiles, in [0, 1)), not '{sparsityText}'");
            if (format.IsMix) throw new UsageException($"--sparsity needs a format whose blocks keep exact zeros (f32, f16, q8_0 or q4_0), not {format.Name}");
        }

        var clock = Stopwatch.StartNew();
        bool interactive = !Console.IsErrorRedirected;
        string label = $"{architecture.Name} {shape.Name} {formatText}{(pruning is null ? "" : " " + sparsityText)}";
        SyntheticModel.Write(path, architecture, shape, format, seed, scales, pruning: pruning, progress: line =>
        {
            if (interactive) Console.Error.Write($"\rmake-model {label}: {line,-60}");
            else Console.Error.WriteLine($"make-model {label}: {line}");
        });
        if (interactive) Console.Error.WriteLine();
        long bytes = new FileInfo(path).Length;
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"make-model: wrote {path}: {architecture.Name} {shape.Describe()}, {formatText}{(pruning is null ? "" : $", pruned {sparsityText}")}, seed {seed}, {bytes / 1e6:F1} MB in {clock.Elapsed.TotalSeconds:F1} s"));
        return 0;
    }

    private static int CompareCommand(Dictionary<string, string> options)
    {
        string model = Required(options, "model");
        if (!File.Exists(model)) throw new UsageException($"--model: file '{model}' not found");
        int threads = Int(options, "threads", -1, min: 1, max: 64);
        if (threads < 0) throw new UsageException("--threads is required");
        bool quick = options.ContainsKey("quick");
        int runs = Int(options, "runs", quick ? 2 : 5, min: 1, max: 1000);
        string[] workloads = options.TryGetValue("workloads", out string? list)
            ? list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            : ComparisonOptions.AllWorkloads;
        foreach (string w in workloads)
            if (!ComparisonOptions.AllWorkloads.Contains(w))
                throw new UsageException($"--workloads: unknown workload '{w}' (expected some of {string.Join(",", ComparisonOptions.AllWorkloads)})");
        if (workloads.Length == 0) throw new UsageException("--workloads: empty list");
        string? json = options.GetValueOrDefault("json");
        int seed = Int(options, "seed", 1234, min: int.MinValue);
        var kv = options.GetValueOrDefault("kv", "f16").ToLowerInvariant() switch
        {
            "f32" => Kiln.KvStorage.F32,
            "f16" => Kiln.KvStorage.F16,
            var other => throw new UsageException($"--kv must be f32 or f16, not '{other}'"),
        };
        return Compare.Run(new ComparisonOptions(model, threads, runs, json, workloads, quick, seed) { KvStorage = kv }, Console.Out, Console.Error);
    }

    private static int Profile(Dictionary<string, string> options)
    {
        string model = Required(options, "model");
        if (!File.Exists(model)) throw new UsageException($"--model: file '{model}' not found");
        string workload = Required(options, "workload");
        string[] workloads = workload == "all" ? ComparisonOptions.AllWorkloads
            : ComparisonOptions.AllWorkloads.Contains(workload) ? [workload]
            : throw new UsageException($"--workload must be one of {string.Join(", ", ComparisonOptions.AllWorkloads)} or all, not '{workload}'");
        return ProfileCommand.Run(model, workloads, Int(options, "threads", 2, min: 1, max: 64), Int(options, "runs", 5, min: 1, max: 1000),
            options.GetValueOrDefault("json"), Console.Out, Console.Error);
    }

    private static int Agree(Dictionary<string, string> options)
    {
        string model = Required(options, "model");
        if (!File.Exists(model)) throw new UsageException($"--model: file '{model}' not found");
        int positions = Int(options, "positions", 64, min: 1, max: 4096);
        int threads = Int(options, "threads", Math.Min(Environment.ProcessorCount, 4), min: 1, max: 64);
        string? json = options.GetValueOrDefault("json");
        bool encoder;
        using (var file = Kiln.Loading.ModelFile.Open(model)) encoder = Kiln.Models.ModelCatalog.KindOf(file) == Kiln.ModelKind.Encoder;
        string description, resultJson;
        if (encoder)
        {
            // An encoder has no logits: its pooled embeddings are compared instead.
            Console.Error.WriteLine($"agree: {Path.GetFileName(model)}: an encoder: pooled embeddings of 4 sequences (longest {positions} tokens) in one batch, {threads} threads...");
            var result = EmbeddingAgreement.Run(model, positions, threads);
            (description, resultJson) = (result.Describe(), result.ToJson());
        }
        else
        {
            Console.Error.WriteLine($"agree: {Path.GetFileName(model)}: {positions} positions teacher-forced in one batch, {threads} threads (llama.cpp: F32 KV cache, no flash attention)...");
            var result = Agreement.Run(model, positions, threads);
            (description, resultJson) = (result.Describe(), result.ToJson());
        }
        Console.WriteLine(description);
        if (json is not null)
        {
            File.WriteAllText(json, resultJson);
            Console.Error.WriteLine($"agree: wrote {json}");
        }
        return 0;
    }

    private static int SparseCommand(Dictionary<string, string> options)
    {
        if (options.ContainsKey("kernels"))
        {
            if (options.ContainsKey("model") || options.ContainsKey("json")) throw new UsageException("sparse --kernels packs its own random weights: no --model or --json");
            return SparseBench.RunKernels(Int(options, "threads", Environment.ProcessorCount, min: 1, max: 64), Int(options, "runs", 31, min: 1, max: 1000), Console.Out, Console.Error);
        }
        string model = Required(options, "model");
        if (!File.Exists(model)) throw new UsageException($"--model: file '{model}' not found");
        int threads = Int(options, "threads", Environment.ProcessorCount, min: 1, max: 64);
        int runs = Int(options, "runs", 5, min: 1, max: 100);
        return SparseBench.Run(model, threads, runs, options.GetValueOrDefault("json"), Console.Out, Console.Error);
    }

    private static int Memory(Dictionary<string, string> options)
    {
        string model = Required(options, "model");
        if (!File.Exists(model)) throw new UsageException($"--model: file '{model}' not found");
        int tokens = Int(options, "tokens", 128, min: 1, max: 4096);
        int threads = Int(options, "threads", Math.Min(Environment.ProcessorCount, 4), min: 1, max: 64);
        return MemoryCommand.Run(model, tokens, threads, options.GetValueOrDefault("json"), Console.Out, Console.Error);
    }

    private static int Kernels(Dictionary<string, string> options)
    {
        int threads = Int(options, "threads", -1, min: 1, max: 64);
        if (threads < 0) throw new UsageException("--threads is required");
        var formats = options.GetValueOrDefault("formats", "q4_0,q8_0,f32").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(f => f.ToLowerInvariant() switch
            {
                "q4_0" => Kiln.Kernels.MatMul.PackedFormat.Q4_0,
                "q8_0" => Kiln.Kernels.MatMul.PackedFormat.Q8_0,
                "f32" => Kiln.Kernels.MatMul.PackedFormat.F32,
                "q4_k" => Kiln.Kernels.MatMul.PackedFormat.Q4_K,
                "q5_k" => Kiln.Kernels.MatMul.PackedFormat.Q5_K,
                "q6_k" => Kiln.Kernels.MatMul.PackedFormat.Q6_K,
                _ => throw new UsageException($"--formats: unknown format '{f}' (expected some of q4_0,q8_0,f32,q4_k,q5_k,q6_k)"),
            }).ToArray();
        var tokens = options.GetValueOrDefault("tokens", "1,32,128").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(t => int.TryParse(t, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n is >= 1 and <= 4096
                ? n : throw new UsageException($"--tokens: '{t}' is not a token count from 1 to 4096")).ToArray();
        if (formats.Length == 0 || tokens.Length == 0) throw new UsageException("--formats and --tokens need at least one value");
        return KernelsCommand.Run(threads, formats, tokens, Console.Out, Console.Error);
    }

    private static int Attention(Dictionary<string, string> options)
    {
        int threads = Int(options, "threads", -1, min: 1, max: 64);
        if (threads < 0) throw new UsageException("--threads is required");
        var contexts = options.GetValueOrDefault("contexts", "128,512,2048").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(t => int.TryParse(t, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n is >= 1 and <= 32768
                ? n : throw new UsageException($"--contexts: '{t}' is not a context length from 1 to 32768")).ToArray();
        // 0 stands for "whole": one block per sequence.
        var blocks = options.GetValueOrDefault("blocks", "16,whole").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(b => b == "whole" ? 0 : int.TryParse(b, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n is >= 1 and <= 4096
                ? n : throw new UsageException($"--blocks: '{b}' is neither 'whole' nor a block size from 1 to 4096")).ToArray();
        if (contexts.Length == 0 || blocks.Length == 0) throw new UsageException("--contexts and --blocks need at least one value");
        if (options.TryGetValue("encoder", out string? encoder))
        {
            // SEQUENCESxLENGTH, comma-separated: the encoder's attention instead of the decoder's.
            var shapes = encoder.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(shape =>
            {
                var parts = shape.Split('x');
                return parts.Length == 2 && int.TryParse(parts[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out int sequences) && sequences is >= 1 and <= 1024
                    && int.TryParse(parts[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out int length) && length is >= 1 and <= 4096
                    ? (sequences, length) : throw new UsageException($"--encoder: '{shape}' is not SEQUENCESxLENGTH (1–1024 sequences of 1–4096 tokens)");
            }).ToArray();
            if (shapes.Length == 0) throw new UsageException("--encoder needs at least one SEQUENCESxLENGTH");
            return AttentionCommand.RunEncoder(threads, shapes, Console.Out);
        }
        return AttentionCommand.Run(threads, contexts, blocks, Console.Out);
    }

    private static Dictionary<string, string> ParseOptions(ReadOnlySpan<string> args, string[] known)
    {
        var options = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < args.Length; i++)
        {
            string arg = args[i];
            if (!arg.StartsWith("--", StringComparison.Ordinal)) throw new UsageException($"unexpected argument '{arg}'");
            string name = arg[2..], value;
            int equals = name.IndexOf('=');
            if (equals >= 0) { value = name[(equals + 1)..]; name = name[..equals]; }
            else if (name is "quick" or "profile" or "kernels") value = "true";
            else if (i + 1 < args.Length) value = args[++i];
            else throw new UsageException($"--{name} needs a value");
            if (!known.Contains(name)) throw new UsageException($"unknown option --{name}");
            if (!options.TryAdd(name, value)) throw new UsageException($"--{name} given twice");
        }
        return options;
    }

    private static string Required(Dictionary<string, string> options, string name) =>
        options.TryGetValue(name, out string? value) && value.Length > 0 ? value : throw new UsageException($"--{name} is required");

    private static int Int(Dictionary<string, string> options, string name, int fallback, int min, int max = int.MaxValue)
    {
        if (!options.TryGetValue(name, out string? text)) return fallback;
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) || value < min || value > max)
            throw new UsageException($"--{name} must be an integer{(min == int.MinValue ? "" : $" from {min}")}{(max == int.MaxValue ? "" : $" to {max}")}, not '{text}'");
        return value;
    }

    private sealed class UsageException(string message) : Exception(message);
}
