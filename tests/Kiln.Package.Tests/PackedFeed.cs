namespace Kiln.Package.Tests;

/// <summary>
/// <c>dotnet pack -c Release -o FEED</c> at the repository root, done once for the package tests. The build goes to a
/// folder of its own (--artifacts-path), so it neither reads nor disturbs the checkout's bin and obj folders, and the
/// packages get a version no earlier run used, so no packages folder can hold a stale copy of them.
/// </summary>
public sealed class PackedFeed : IDisposable
{
    private static readonly TimeSpan PackLimit = TimeSpan.FromMinutes(6);

    private readonly TempFolder _folder = new("feed");

    public PackedFeed()
    {
        Version = $"0.1.0-test-{Guid.NewGuid():N}";
        Folder = _folder.Combine("feed");
        Pack = Dotnet.Run(Dotnet.RepositoryRoot, PackLimit,
            "pack", "-c", "Release", "-o", Folder, "--artifacts-path", _folder.Combine("artifacts"), $"-p:Version={Version}", "--disable-build-servers");
    }

    public string Version { get; }

    /// <summary>The folder the packages were written to: a local package source.</summary>
    public string Folder { get; }

    /// <summary>The pack command's result; the tests check it first, so a failed pack shows its output.</summary>
    public Dotnet.Result Pack { get; }

    public string PackagePath(string id) => Path.Combine(Folder, $"{id}.{Version}.nupkg");

    public void Dispose() => _folder.Dispose();
}
