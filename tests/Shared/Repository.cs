namespace Kiln.Tests;

/// <summary>The checkout a test was built from: the folder above its output that holds Compiler.sln.</summary>
internal static class Repository
{
    public static string Root { get; } = Find();

    public static string ReadReadme() => File.ReadAllText(Path.Combine(Root, "README.md")).ReplaceLineEndings("\n");

    private static string Find()
    {
        for (var folder = new DirectoryInfo(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
            if (File.Exists(Path.Combine(folder.FullName, "Compiler.sln"))) return folder.FullName;
        throw new InvalidOperationException($"No Compiler.sln above {AppContext.BaseDirectory}.");
    }
}
