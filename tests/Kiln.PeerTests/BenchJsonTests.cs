using System.Text.Json;
using Kiln.Bench;

namespace Kiln.PeerTests;

/// <summary>
/// The JSON the bench writes for issue reports keeps the keys its readers (closing notes, scripts) look up:
/// <c>compare --json</c> per workload, <c>memory --json</c> for one model file.
/// </summary>
public sealed class BenchJsonTests : IDisposable
{
    private readonly string _json = Path.Combine(Path.GetTempPath(), $"kiln-bench-{Guid.NewGuid():N}.json");

    public void Dispose() => File.Delete(_json);

    [Fact]
    public void CompareWritesEachWorkloadsSpeedsRoofBoundAndPercentages()
    {
        Compare.WriteJson(_json,
        [
            new("prefill_128", Kiln: 900, LlamaCpp: 600, Roof: 1000, Bound: "INT8"),
            new("decode_128", 80, 50, 100, "BW"),
            new("batched_decode_8", 300, 200, 400, "BW"),
            new("batched_decode_32", 700, 350, 1400, "FLOP"),
        ]);
        using var document = JsonDocument.Parse(File.ReadAllText(_json));
        Assert.Equal(["prefill_128", "decode_128", "batched_decode_8", "batched_decode_32"], document.RootElement.EnumerateObject().Select(p => p.Name));
        foreach (var workload in document.RootElement.EnumerateObject())
            Assert.Equal(["kiln", "llamacpp", "ratio", "roof", "bound", "kiln_pct_roof", "llamacpp_pct_roof"], workload.Value.EnumerateObject().Select(p => p.Name));
        var decode = document.RootElement.GetProperty("decode_128");
        Assert.Equal(1.6, decode.GetProperty("ratio").GetDouble());
        Assert.Equal("BW", decode.GetProperty("bound").GetString());
        Assert.Equal(80, decode.GetProperty("kiln_pct_roof").GetDouble());
        Assert.Equal(50, decode.GetProperty("llamacpp_pct_roof").GetDouble());
    }

    [Fact]
    public void MemoryWritesTheFileSizeResidentSetsAndTimes()
    {
        string model = SideBySide.ModelPath("stories260K.gguf");
        Assert.Equal(0, MemoryCommand.Run(model, maxTokensPerStep: 8, threads: 1, _json, TextWriter.Null, TextWriter.Null));
        using var document = JsonDocument.Parse(File.ReadAllText(_json));
        var root = document.RootElement;
        Assert.Equal(["file_mb", "rss_after_load_mb", "rss_after_compile_mb", "load_s", "compile_s"], root.EnumerateObject().Select(p => p.Name));
        Assert.Equal(Math.Round(new FileInfo(model).Length / 1048576.0, 1), root.GetProperty("file_mb").GetDouble());
        Assert.True(root.GetProperty("rss_after_load_mb").GetDouble() > 0);
        Assert.True(root.GetProperty("rss_after_compile_mb").GetDouble() > 0);
        Assert.True(root.GetProperty("load_s").GetDouble() >= 0);
        Assert.True(root.GetProperty("compile_s").GetDouble() >= 0);
    }
}
