using System.Collections.Immutable;
using System.Reflection;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace Kiln.Generators.Tests;

/// <summary>
/// Runs an incremental generator over in-memory sources with the references a Kiln model needs (the platform,
/// Kiln.Attributes, Kiln.Runtime) and returns what it produced, like ComputeSharp's CSharpGeneratorTest.
/// </summary>
public static class CSharpGeneratorTest<TGenerator>
    where TGenerator : IIncrementalGenerator, new()
{
    /// <summary>The same global usings as the SDK's ImplicitUsings, so model sources compile as in a project.</summary>
    public const string GlobalUsings = """
        global using System;
        global using System.Collections.Generic;
        global using System.IO;
        global using System.Linq;
        global using System.Threading;
        global using System.Threading.Tasks;
        """;

    private static readonly CSharpParseOptions ParseOptions = new(LanguageVersion.Latest);

    public static readonly ImmutableArray<MetadataReference> References = LoadReferences();

    public static CSharpCompilation CreateCompilation(params (string Path, string Text)[] sources) =>
        CSharpCompilation.Create(
            "Kiln.GeneratorTests.Models",
            sources.Select(s => CSharpSyntaxTree.ParseText(s.Text, ParseOptions, s.Path))
                .Append(CSharpSyntaxTree.ParseText(GlobalUsings, ParseOptions, "GlobalUsings.g.cs")),
            References,
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, nullableContextOptions: NullableContextOptions.Enable, allowUnsafe: true));

    public static GeneratorDriver CreateDriver(bool trackSteps = false) =>
        CSharpGeneratorDriver.Create(
            new[] { new TGenerator().AsSourceGenerator() },
            parseOptions: ParseOptions,
            driverOptions: new GeneratorDriverOptions(IncrementalGeneratorOutputKind.None, trackIncrementalGeneratorSteps: trackSteps));

    /// <summary>Runs the generator once: its result (no exception may escape), the output compilation and its diagnostics.</summary>
    public static Run RunGenerator(CSharpCompilation compilation)
    {
        var driver = CreateDriver().RunGeneratorsAndUpdateCompilation(compilation, out var output, out var generatorDiagnostics);
        var result = driver.GetRunResult();
        Assert.All(result.Results, r => Assert.Null(r.Exception));
        return new Run(result, output, generatorDiagnostics);
    }

    public sealed record Run(GeneratorDriverRunResult Result, Compilation Output, ImmutableArray<Diagnostic> GeneratorDiagnostics)
    {
        public ImmutableArray<GeneratedSourceResult> Sources => Result.Results.SelectMany(r => r.GeneratedSources).ToImmutableArray();

        /// <summary>Errors of the compilation with the generated sources added.</summary>
        public ImmutableArray<Diagnostic> CompilationErrors =>
            Output.GetDiagnostics().Where(d => d.Severity == DiagnosticSeverity.Error).ToImmutableArray();
    }

    /// <summary>The directory holding Compiler.sln, found by walking up from the test binaries.</summary>
    public static string RepoRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Compiler.sln"))) return dir.FullName;
            // Built with --artifacts-path outside the repo: walk up from where this source file was compiled.
            for (var dir = new FileInfo(SourceFile()).Directory; dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Compiler.sln"))) return dir.FullName;
            throw new InvalidOperationException($"Compiler.sln not found above {AppContext.BaseDirectory} or {SourceFile()}.");
        }
    }

    private static string SourceFile([System.Runtime.CompilerServices.CallerFilePath] string path = "") => path;

    private static ImmutableArray<MetadataReference> LoadReferences()
    {
        var paths = ((string?)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") ?? "")
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .ToList();
        paths.Add(typeof(Kiln.Tensor).Assembly.Location);
        paths.Add(typeof(Kiln.ModelAttribute).Assembly.Location);
        return paths
            .GroupBy(p => Path.GetFileName(p), StringComparer.OrdinalIgnoreCase)
            .Select(g => g.First())
            .Where(p => !Path.GetFileName(p).StartsWith("Kiln.Generators", StringComparison.OrdinalIgnoreCase))
            .Select(p => (MetadataReference)MetadataReference.CreateFromFile(p))
            .ToImmutableArray();
    }

    /// <summary>Emits the output compilation to memory and loads it into the default context (Kiln.Runtime is shared with the test).</summary>
    public static Assembly Load(Compilation compilation)
    {
        using var stream = new MemoryStream();
        var emit = compilation.Emit(stream);
        Assert.True(emit.Success, string.Join(Environment.NewLine, emit.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error)));
        return Assembly.Load(stream.ToArray());
    }
}
