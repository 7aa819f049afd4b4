namespace Kiln.Package.Tests;

/// <summary>
/// <c>dotnet pack -c Release -o FEED</c> at the repository root, done once for the tests of the "Release builds"
/// collection. The build goes to a folder of its own (--artifacts-path), so it neither reads nor disturbs the
/// checkout's bin and obj folders, and the packages get a version no earlier run used, so no packages folder can hold a
/// stale copy of them. The NativeAOT publish builds in the same folder with the same version, so it finds the
/// libraries already built.
/// </summary>
public sealed class PackedFeed : IDisposable
{
    private static readonly TimeSpan PackLimit = TimeSpan.FromMinutes(6);

    private readonly TempFolder _folder = new("feed");

    public PackedFeed()
    {
        Version = $"0.1.0-test-{Guid.NewGuid():N}";
        Folder = _folder.Combine("feed");
        Artifacts = _folder.Combine("artifacts");
        Pack = Dotnet.Run(Dotnet.RepositoryRoot, PackLimit,
            "pack", "-c", "Release", "-o", Folder, "--artifacts-path", Artifacts, $"-p:Version={Version}", "--disable-build-servers");
    }

    /// <summary>The build's own bin and obj folders (dotnet --artifacts-path).</summary>
    public string Artifacts { get; }

    public string Version { get; }

    /// <summary>The folder the packages were written to: a local package source.</summary>
    public string Folder { get; }

    /// <summary>The pack command's result; the tests check it first, so a failed pack shows its output.</summary>
    public Dotnet.Result Pack { get; }

    public string PackagePath(string id) => Path.Combine(Folder, $"{id}.{Version}.nupkg");

    public void Dispose() => _folder.Dispose();
}

/// <summary>The tests that build the product in Release, one after another, sharing one build folder.</summary>
[CollectionDefinition(Name)]
public sealed class ReleaseBuilds : ICollectionFixture<PackedFeed>
{
    public const string Name = "Release builds";
}
