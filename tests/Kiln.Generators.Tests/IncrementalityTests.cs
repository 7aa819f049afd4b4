using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace Kiln.Generators.Tests;

/// <summary>An edit that does not touch the model leaves every tracked step of the pipeline cached.</summary>
public sealed class IncrementalityTests
{
    public static TheoryData<string> Edits => new()
    {
        "// an unrelated comment\n",
        "namespace Other { public sealed class Unrelated { public int Value => 42; } }\n",
    };

    [Theory]
    [MemberData(nameof(Edits))]
    public void UnrelatedEditKeepsEveryStepCached(string edit)
    {
        string path = Path.Combine(CSharpGeneratorTest<KilnGenerator>.RepoRoot, "samples", "Models", "Llama.cs");
        var compilation = CSharpGeneratorTest<KilnGenerator>.CreateCompilation((path, File.ReadAllText(path)), ("Other.cs", "namespace Other { }\n"));
        var driver = CSharpGeneratorTest<KilnGenerator>.CreateDriver(trackSteps: true).RunGenerators(compilation);
        Assert.Single(driver.GetRunResult().GeneratedTrees);

        var other = compilation.SyntaxTrees.Single(t => t.FilePath == "Other.cs");
        var edited = compilation.ReplaceSyntaxTree(other, CSharpSyntaxTree.ParseText(edit + "namespace Other { }\n", (CSharpParseOptions)other.Options, other.FilePath));
        driver = driver.RunGenerators(edited);
        var result = driver.GetRunResult().Results.Single();
        Assert.Null(result.Exception);

        string[] steps = { KilnGenerator.Steps.Model, KilnGenerator.Steps.Graph, KilnGenerator.Steps.Plan, KilnGenerator.Steps.Diagnostics, KilnGenerator.Steps.Source };
        foreach (var name in steps)
        {
            Assert.True(result.TrackedSteps.TryGetValue(name, out var runs), $"step {name} was not tracked");
            var reasons = runs.SelectMany(r => r.Outputs).Select(o => o.Reason).ToList();
            Assert.NotEmpty(reasons);
            Assert.All(reasons, reason => Assert.True(reason is IncrementalStepRunReason.Cached or IncrementalStepRunReason.Unchanged,
                $"step {name} output was {reason} after an unrelated edit"));
        }
        Assert.All(result.TrackedOutputSteps.SelectMany(s => s.Value).SelectMany(r => r.Outputs),
            o => Assert.True(o.Reason is IncrementalStepRunReason.Cached or IncrementalStepRunReason.Unchanged, $"an output step was {o.Reason}"));
    }
}
