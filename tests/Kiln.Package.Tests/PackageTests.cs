using System.IO.Compression;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Kiln.EndToEnd.Tests;

namespace Kiln.Package.Tests;

/// <summary>
/// The Kiln package as a user meets it: what it holds, a fresh console project that adds it, defines its own [Model]
/// class and runs the README's program on stories260K, and the kiln tool installed from the same feed.
/// </summary>
[Collection(ReleaseBuilds.Name)]
public sealed partial class PackageTests(PackedFeed feed, ITestOutputHelper log)
{
    private static readonly TimeSpan BuildLimit = TimeSpan.FromMinutes(4);

    [Fact]
    public void The_package_holds_the_runtime_the_models_and_the_generator_as_an_analyzer()
    {
        Assert.True(feed.Pack.ExitCode == 0, feed.Pack.ToString());
        log.WriteLine($"dotnet pack took {feed.Pack.Elapsed.TotalSeconds:F0} s");
        using var package = ZipFile.OpenRead(feed.PackagePath("Kiln"));
        var files = package.Entries.Select(entry => entry.FullName)
            .Where(name => !name.StartsWith("_rels/", StringComparison.Ordinal) && !name.StartsWith("package/", StringComparison.Ordinal) && name != "[Content_Types].xml")
            .Order(StringComparer.Ordinal).ToArray();
        foreach (string file in files) log.WriteLine($"{package.GetEntry(file)!.Length,9}  {file}");

        string[] expected =
        [
            "Kiln.nuspec", "LICENSE", "README.md",
            "analyzers/dotnet/cs/Kiln.Generators.dll",
            .. new[] { "Kiln.Attributes", "Kiln.Models", "Kiln.Runtime" }.SelectMany(assembly => new[] { ".dll", ".pdb", ".xml" }.Select(extension => $"lib/net10.0/{assembly}{extension}")),
        ];
        Assert.Equal(expected.Order(StringComparer.Ordinal), files);

        var nuspec = XDocument.Load(package.GetEntry("Kiln.nuspec")!.Open());
        XNamespace ns = nuspec.Root!.Name.Namespace;
        var metadata = nuspec.Root.Element(ns + "metadata")!;
        Assert.Equal("Kiln", metadata.Element(ns + "id")!.Value);
        Assert.Equal(feed.Version, metadata.Element(ns + "version")!.Value);
        Assert.Equal("MIT", metadata.Element(ns + "license")!.Value);
        Assert.Equal("README.md", metadata.Element(ns + "readme")!.Value);
        // Exactly the runtime's own packages: the generator's Roslyn is the consumer's compiler, never a dependency.
        var dependencies = metadata.Descendants(ns + "dependency").Select(d => $"{d.Attribute("id")!.Value} {d.Attribute("version")!.Value}").Order(StringComparer.Ordinal);
        var runtime = XDocument.Load(Path.Combine(Dotnet.RepositoryRoot, "src", "Runtime", "Kiln.Runtime.csproj"));
        var runtimePackages = runtime.Descendants("PackageReference").Select(p => $"{p.Attribute("Include")!.Value} {p.Attribute("Version")!.Value}").Order(StringComparer.Ordinal);
        Assert.Contains("Microsoft.ML.Tokenizers 3.0.0", runtimePackages);
        Assert.Equal(runtimePackages, dependencies);
        Assert.Equal("net10.0", Assert.Single(metadata.Descendants(ns + "group")).Attribute("targetFramework")!.Value);
    }

    [Fact]
    public void A_fresh_console_app_with_its_own_model_class_builds_and_runs_the_readme_program()
    {
        Assert.True(feed.Pack.ExitCode == 0, feed.Pack.ToString());
        using var work = new TempFolder("consumer");
        string app = work.Combine("StoryApp");
        Succeeds(Dotnet.Run(work.Path, BuildLimit, "new", "console", "-o", app));
        WriteNuGetConfig(app, work.Combine("packages"));
        Succeeds(Dotnet.Run(app, BuildLimit, "add", "package", "Kiln", "--version", feed.Version));

        // The user's definition: the shipped Llama, moved into the app's namespace as the README says.
        string llama = File.ReadAllText(Path.Combine(Dotnet.RepositoryRoot, "samples", "Models", "Llama.cs"));
        Assert.Contains("namespace Kiln.Models;", llama, StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(app, "Llama.cs"), "using Kiln;\n" + llama.Replace("namespace Kiln.Models;", "namespace StoryApp;", StringComparison.Ordinal));
        File.WriteAllText(Path.Combine(app, "Program.cs"), ReadmeProgram());

        var build = Succeeds(Dotnet.Run(app, BuildLimit, "build", "-c", "Release", "--disable-build-servers"));
        Assert.Contains(" 0 Warning(s)", build.Out, StringComparison.Ordinal); // e.g. no CS9057 or CS8784: the generator loaded and ran
        log.WriteLine($"consumer build took {build.Elapsed.TotalSeconds:F0} s");

        Directory.CreateDirectory(Path.Combine(app, "models"));
        File.Copy(StoriesReference.ModelPath("stories260K.gguf"), Path.Combine(app, "models", "stories260K.gguf"));
        var run = Succeeds(Dotnet.Run(app, BuildLimit, Path.Combine("bin", "Release", "net10.0", "StoryApp.dll")));

        var reference = StoriesReference.Load();
        Assert.StartsWith("Once upon a time", reference.Text, StringComparison.Ordinal);
        Assert.Equal(reference.Text["Once upon a time".Length..] + Environment.NewLine, run.Out);
    }

    [Fact]
    public void The_kiln_tool_installs_from_the_feed_and_runs()
    {
        Assert.True(feed.Pack.ExitCode == 0, feed.Pack.ToString());
        using var work = new TempFolder("tool");
        string tools = work.Combine("tools");
        Succeeds(Dotnet.Run(work.Path, BuildLimit, "tool", "install", "Kiln.Cli", "--version", feed.Version, "--tool-path", tools, "--add-source", feed.Folder));

        var run = Succeeds(Dotnet.Exec(Path.Combine(tools, "kiln"), work.Path, BuildLimit,
            "run", "--model", StoriesReference.ModelPath("stories260K.gguf"), "--prompt", "Once upon a time", "--max-tokens", "64", "--temperature", "0"));
        Assert.Equal(StoriesReference.Load().Text + Environment.NewLine, run.Out);
    }

    [Fact]
    public void The_readme_app_program_is_the_using_it_from_code_example_with_its_usings()
    {
        string fromCode = CodeBlock(Readme(), "## Using it from code");
        string program = ReadmeProgram();
        Assert.EndsWith("\n" + fromCode, program, StringComparison.Ordinal);
        Assert.Matches(@"^(using [\w.]+;\n)+\n", program[..^fromCode.Length]);
    }

    /// <summary>The local feed first, the machine's sources for everything else, and a packages folder of the test's own
    /// that falls back on the machine's, so dependencies are not downloaded again and no Kiln package but this one is seen.</summary>
    private void WriteNuGetConfig(string app, string packages) =>
        File.WriteAllText(Path.Combine(app, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <config>
                <add key="globalPackagesFolder" value="{packages}" />
              </config>
              <packageSources>
                <add key="kiln-test-feed" value="{feed.Folder}" />
              </packageSources>
              <fallbackPackageFolders>
                <add key="machine" value="{Dotnet.MachinePackagesFolder}" />
              </fallbackPackageFolders>
            </configuration>
            """);

    private Dotnet.Result Succeeds(Dotnet.Result result)
    {
        log.WriteLine($"{result.Command}: exit {result.ExitCode} in {result.Elapsed.TotalSeconds:F1} s");
        Assert.True(result.ExitCode == 0, result.ToString());
        return result;
    }

    private static string Readme() => Kiln.Tests.Repository.ReadReadme();

    /// <summary>Program.cs of "Use it in your app", as written.</summary>
    private static string ReadmeProgram() => CodeBlock(Readme(), "## Use it in your app");

    /// <summary>The first C# code block after <paramref name="heading"/>.</summary>
    private static string CodeBlock(string readme, string heading)
    {
        int section = readme.IndexOf("\n" + heading + "\n", StringComparison.Ordinal);
        Assert.True(section >= 0, $"README.md has no section '{heading}'");
        var block = CSharpBlock().Match(readme, section);
        Assert.True(block.Success, $"README.md's '{heading}' has no C# block");
        return block.Groups["code"].Value;
    }

    [GeneratedRegex(@"```csharp\n(?<code>.*?\n)```", RegexOptions.Singleline)]
    private static partial Regex CSharpBlock();
}
