using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Loading;
using Kiln.Models;

namespace Kiln.Bench;

/// <summary>
/// What a model costs in memory and time to bring up: the process's resident set (RSS, from /proc/self/statm: file
/// pages of the mapped model count too) after binding the file (<c>Load</c>) and after compiling a plan
/// (<c>Compile</c>), against the file's size, and the seconds each took. Weights stay in the file's format: binding
/// maps the file and decodes only the vectors (norms, biases); compiling packs each matrix straight from the mapping
/// and lets the packed bytes' pages go, so RSS after compiling is about the packed weights (≈ the file) plus the
/// runtime, the plan's arena and scratch. No KV cache is made.
/// </summary>
internal static class MemoryCommand
{
    public static int Run(string modelPath, int maxTokensPerStep, int threads, string? json, TextWriter output, TextWriter log)
    {
        var c = CultureInfo.InvariantCulture;
        double fileMb = new FileInfo(modelPath).Length / 1048576.0;
        double baseline = ResidentMb();
        log.WriteLine(string.Create(c, $"memory: {Path.GetFileName(modelPath)} ({fileMb:F1} MB); RSS before loading {baseline:F1} MB"));

        var clock = Stopwatch.StartNew();
        using var file = ModelFile.Open(modelPath);
        var model = ModelCatalog.Load(file);
        double loadSeconds = clock.Elapsed.TotalSeconds;
        double afterLoad = ResidentMb();

        clock.Restart();
        var plan = model.Compile(new PlanOptions(maxTokensPerStep, threads));
        double compileSeconds = clock.Elapsed.TotalSeconds;
        GC.Collect(); // what the packing left behind (row buffers) goes; the plan's native memory stays
        double afterCompile = ResidentMb();

        output.WriteLine(string.Create(c, $"file {fileMb:F1} MB; RSS {baseline:F1} MB before loading, {afterLoad:F1} MB after Load ({loadSeconds:F2} s), {afterCompile:F1} MB after Compile ({compileSeconds:F2} s, {maxTokensPerStep} tokens per step)"));
        output.WriteLine(string.Create(c, $"RSS after Compile / file: {afterCompile / fileMb:F3}; less the runtime before loading: {(afterCompile - baseline) / fileMb:F3}"));
        if (json is not null)
        {
            var result = new Dictionary<string, object>
            {
                ["file_mb"] = Math.Round(fileMb, 1),
                ["rss_after_load_mb"] = Math.Round(afterLoad, 1),
                ["rss_after_compile_mb"] = Math.Round(afterCompile, 1),
                ["load_s"] = Math.Round(loadSeconds, 3),
                ["compile_s"] = Math.Round(compileSeconds, 3),
            };
            File.WriteAllText(json, JsonSerializer.Serialize(result, new JsonSerializerOptions { WriteIndented = true }) + "\n");
            log.WriteLine($"memory: wrote {json}");
        }
        GC.KeepAlive(model);
        (plan as IDisposable)?.Dispose();
        return 0;
    }

    /// <summary>The resident set in MB: /proc/self/statm's second field (pages), anonymous and file-backed alike.</summary>
    private static double ResidentMb()
    {
        if (File.Exists("/proc/self/statm"))
        {
            string[] fields = File.ReadAllText("/proc/self/statm").Split(' ');
            return long.Parse(fields[1], CultureInfo.InvariantCulture) * Environment.SystemPageSize / 1048576.0;
        }
        using var process = Process.GetCurrentProcess();
        return process.WorkingSet64 / 1048576.0;
    }
}
