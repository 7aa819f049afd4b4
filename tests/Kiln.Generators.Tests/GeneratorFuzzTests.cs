using System.Diagnostics;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Xunit.Abstractions;

namespace Kiln.Generators.Tests;

/// <summary>
/// Generator fuzzing: definitions mutated from samples/Models — tokens deleted, swapped and duplicated, numbers,
/// shape strings, op names and attributes changed — run through the generator. Whatever the input, the generator
/// throws nothing, never reports KLN0009 (an internal error is a bug to fix), locates every KLN diagnostic inside the
/// user's file, and emits code that compiles whenever the user's own code does and it reports nothing.
/// Seeded: a failure names the seed and the case, and <c>KILN_FUZZ_MUTATIONS</c> / <c>KILN_SEED</c> run a longer or
/// another campaign (<c>KILN_FUZZ_MUTATIONS=10000 dotnet test --filter GeneratorFuzz</c>).
/// </summary>
public sealed class GeneratorFuzzTests(ITestOutputHelper output)
{
    private const int DefaultMutations = 500;
    private const int DefaultSeed = 20261204;

    private static readonly string[] Models = ["Llama", "Gpt2", "Qwen2", "Qwen3", "Gemma2", "Phi3"];

    private static readonly string[] OpNames =
        ["Embedding", "RmsNorm", "LayerNorm", "HeadRmsNorm", "Linear", "Rope", "Attention", "Silu", "Gelu", "Slice", "Concat", "SoftCap", "Add", "Mul", "SelectRows", "PositionEmbedding"];

    private static readonly string[] ShapeStrings = ["Dim", "Hidden", "3*Dim", "Dim+Dim", "Vocab", "QDim", "KvDim", "HeadDim", "0", "-1", "Dim*", "+", "Unknown", ""];

    [Fact]
    public void MutatedDefinitionsNeverCrashTheGeneratorOrEscapeTheUsersFile()
    {
        int mutations = int.TryParse(Environment.GetEnvironmentVariable("KILN_FUZZ_MUTATIONS"), out int n) && n > 0 ? n : DefaultMutations;
        int seed = int.TryParse(Environment.GetEnvironmentVariable("KILN_SEED"), out int s) ? s : DefaultSeed;
        var sources = Models.ToDictionary(m => m, m => File.ReadAllText(Path.Combine(CSharpGeneratorTest<KilnGenerator>.RepoRoot, "samples", "Models", m + ".cs")));
        var random = new Random(seed);
        var clock = Stopwatch.StartNew();
        int withKiln = 0, withUserErrors = 0, clean = 0;
        var ids = new SortedDictionary<string, int>();

        for (int i = 0; i < mutations; i++)
        {
            string model = Models[random.Next(Models.Length)];
            var (text, what) = Mutate(sources[model], random);
            string path = model + ".cs";
            string failure = $"seed {seed}, case {i} ({model}: {what})";

            var compilation = CSharpGeneratorTest<KilnGenerator>.CreateCompilation((path, text));
            var driver = CSharpGeneratorTest<KilnGenerator>.CreateDriver().RunGeneratorsAndUpdateCompilation(compilation, out var updated, out var diagnostics);
            var result = driver.GetRunResult();
            foreach (var generator in result.Results)
                Assert.True(generator.Exception is null, $"{failure}: the generator threw {generator.Exception}");

            var kiln = diagnostics.Where(d => d.Id.StartsWith("KLN", StringComparison.Ordinal)).ToList();
            foreach (var diagnostic in kiln)
            {
                ids[diagnostic.Id] = ids.GetValueOrDefault(diagnostic.Id) + 1;
                Assert.True(diagnostic.Id != "KLN0009", $"{failure}: internal error {diagnostic}\n{text}");
                // Kiln's locations are plain data (no syntax tree, so the pipeline caches): a path and a span in it.
                var span = diagnostic.Location.SourceSpan;
                Assert.True(diagnostic.Location.GetLineSpan().Path == path && span.End <= text.Length,
                    $"{failure}: {diagnostic.Id} is not located in the user's file: {diagnostic}");
            }
            if (kiln.Count > 0)
            {
                withKiln++;
                continue;
            }
            // Nothing reported: if the user's code compiles, the generated code must too.
            bool userErrors = compilation.GetDiagnostics().Any(d => d.Severity == DiagnosticSeverity.Error);
            if (userErrors)
            {
                withUserErrors++;
                continue;
            }
            clean++;
            var errors = updated.GetDiagnostics().Where(d => d.Severity == DiagnosticSeverity.Error).ToList();
            Assert.True(errors.Count == 0, $"{failure}: the generated code does not compile: {string.Join("; ", errors.Take(3))}");
        }
        output.WriteLine($"seed {seed}: {mutations} mutated definitions in {clock.Elapsed.TotalSeconds:F1} s; {withKiln} reported KLN diagnostics " +
            $"({string.Join(", ", ids.Select(p => $"{p.Key} ×{p.Value}"))}), {withUserErrors} had C# errors only, {clean} compiled cleanly; 0 exceptions, 0 KLN0009");
    }

    /// <summary>One to three token-level edits of <paramref name="source"/>'s class body, described for the failure message.</summary>
    private static (string Text, string What) Mutate(string source, Random random)
    {
        var root = CSharpSyntaxTree.ParseText(source).GetRoot();
        var tokens = root.DescendantTokens().Where(t => t.SpanStart > source.IndexOf("[Model", StringComparison.Ordinal)).ToList();
        var edits = new List<(int Start, int Length, string Replacement, string What)>();
        int count = 1 + random.Next(3);
        for (int e = 0; e < count; e++)
        {
            var token = tokens[random.Next(tokens.Count)];
            if (edits.Any(x => x.Start < token.Span.End + 1 && token.SpanStart < x.Start + x.Length + 1)) continue;
            string text = token.Text;
            switch (random.Next(8))
            {
                case 0:
                    edits.Add((token.SpanStart, token.Span.Length, "", $"deleted '{text}'"));
                    break;
                case 1:
                    edits.Add((token.SpanStart, token.Span.Length, text + " " + text, $"duplicated '{text}'"));
                    break;
                case 2:
                {
                    var next = token.GetNextToken();
                    if (next.RawKind == 0) break;
                    edits.Add((token.SpanStart, next.Span.End - token.SpanStart, next.Text + " " + text, $"swapped '{text}' and '{next.Text}'"));
                    break;
                }
                case 3 when token.IsKind(SyntaxKind.NumericLiteralToken):
                {
                    string number = random.Next(4) switch { 0 => "0", 1 => "-1", 2 => "1e30f", _ => random.Next(1, 100).ToString() };
                    edits.Add((token.SpanStart, token.Span.Length, number, $"number '{text}' → {number}"));
                    break;
                }
                case 4 when token.IsKind(SyntaxKind.StringLiteralToken):
                {
                    string shape = ShapeStrings[random.Next(ShapeStrings.Length)];
                    edits.Add((token.SpanStart, token.Span.Length, "\"" + shape + "\"", $"string {text} → \"{shape}\""));
                    break;
                }
                case 5 when token.IsKind(SyntaxKind.IdentifierToken) && OpNames.Contains(text):
                {
                    string op = OpNames[random.Next(OpNames.Length)];
                    edits.Add((token.SpanStart, token.Span.Length, op, $"op {text} → {op}"));
                    break;
                }
                case 6 when token.IsKind(SyntaxKind.IdentifierToken):
                {
                    var other = tokens[random.Next(tokens.Count)];
                    if (!other.IsKind(SyntaxKind.IdentifierToken)) break;
                    edits.Add((token.SpanStart, token.Span.Length, other.Text, $"identifier {text} → {other.Text}"));
                    break;
                }
                case 7 when token.IsKind(SyntaxKind.OpenBracketToken) && token.Parent is Microsoft.CodeAnalysis.CSharp.Syntax.AttributeListSyntax attribute:
                    edits.Add((attribute.SpanStart, attribute.Span.Length, "", $"removed attribute {attribute}"));
                    break;
                default:
                    edits.Add((token.SpanStart, token.Span.Length, text == ";" ? "" : ";", $"'{text}' → ';'"));
                    break;
            }
        }
        var mutated = new System.Text.StringBuilder(source);
        foreach (var edit in edits.OrderByDescending(x => x.Start))
            mutated.Remove(edit.Start, edit.Length).Insert(edit.Start, edit.Replacement);
        return (mutated.ToString(), edits.Count == 0 ? "no edit" : string.Join("; ", edits.Select(x => x.What)));
    }
}
