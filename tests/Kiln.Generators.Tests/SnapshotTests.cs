using Microsoft.CodeAnalysis;

namespace Kiln.Generators.Tests;

/// <summary>
/// The generated source for each model definition of samples/Models, compared with the stored Snapshots/&lt;HintName&gt;.verified.cs.
/// A mismatch writes &lt;HintName&gt;.received.cs beside it and fails; a missing snapshot fails too (and outside CI is created
/// for review).
/// </summary>
public sealed class SnapshotTests
{
    private static string SnapshotDirectory => Path.Combine(CSharpGeneratorTest<KilnGenerator>.RepoRoot, "tests", "Kiln.Generators.Tests", "Snapshots");

    /// <summary>Every model definition the samples ship (each file one [Model] class).</summary>
    public static TheoryData<string> Models => new() { "Llama", "Gpt2", "Qwen2", "Qwen3", "Gemma2", "Phi3", "Bert" };

    internal static CSharpGeneratorTest<KilnGenerator>.Run Generate(string model)
    {
        string path = Path.Combine(CSharpGeneratorTest<KilnGenerator>.RepoRoot, "samples", "Models", model + ".cs");
        var compilation = CSharpGeneratorTest<KilnGenerator>.CreateCompilation((path, File.ReadAllText(path)));
        return CSharpGeneratorTest<KilnGenerator>.RunGenerator(compilation);
    }

    internal static CSharpGeneratorTest<KilnGenerator>.Run GenerateLlama() => Generate("Llama");

    [Theory]
    [MemberData(nameof(Models))]
    public void ModelGeneratesCompilableCodeThatStartsWithTheFusionReport(string model)
    {
        var run = Generate(model);
        Assert.Empty(run.GeneratorDiagnostics);
        var source = Assert.Single(run.Sources);
        Assert.Equal($"Kiln.Models.{model}.g.cs", source.HintName);
        Assert.StartsWith($"// Kiln fusion report for {model}", source.SourceText.ToString());
        Assert.Empty(run.CompilationErrors);
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void ModelMatchesTheVerifiedSnapshots(string model)
    {
        var run = Generate(model);
        Assert.NotEmpty(run.Sources);
        var problems = new List<string>();
        foreach (var source in run.Sources)
        {
            string text = source.SourceText.ToString().Replace("\r\n", "\n");
            string verified = Path.Combine(SnapshotDirectory, source.HintName + ".verified.cs");
            string received = Path.Combine(SnapshotDirectory, source.HintName + ".received.cs");
            if (!File.Exists(verified))
            {
                if (string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase))
                {
                    problems.Add($"{source.HintName}: no snapshot {verified} (CI=true: snapshots are never created in CI).");
                    continue;
                }
                Directory.CreateDirectory(SnapshotDirectory);
                File.WriteAllText(verified, text);
                problems.Add($"{source.HintName}: snapshot created at {verified}; review it and re-run.");
                continue;
            }
            string expected = File.ReadAllText(verified).Replace("\r\n", "\n");
            if (expected == text)
            {
                if (File.Exists(received)) File.Delete(received);
                continue;
            }
            File.WriteAllText(received, text);
            problems.Add($"{source.HintName}: differs from the snapshot at line {FirstDifference(expected, text)}; " +
                $"compare with: diff {verified} {received} (accept by copying the .received.cs over the .verified.cs).");
        }
        Assert.True(problems.Count == 0, string.Join(Environment.NewLine, problems));
    }

    private static int FirstDifference(string a, string b)
    {
        var left = a.Split('\n');
        var right = b.Split('\n');
        for (int i = 0; i < Math.Min(left.Length, right.Length); i++)
            if (left[i] != right[i]) return i + 1;
        return Math.Min(left.Length, right.Length) + 1;
    }
}
