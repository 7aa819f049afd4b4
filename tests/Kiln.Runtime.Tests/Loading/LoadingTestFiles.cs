using Kiln.Loading;

namespace Kiln.Runtime.Tests.Loading;

/// <summary>The shipped model files, and scratch files for tests that write their own.</summary>
internal static class LoadingTestFiles
{
    public static string Model(string name) => Path.Combine(AppContext.BaseDirectory, "models", name);

    public static string StoriesGguf => Model("stories260K.gguf");

    public static string StoriesBin => Model("stories260K.bin");

    public static string StoriesTokenizer => Model("tok512.bin");

    public static string TinyRandomGguf => Model("llama-2-tiny-random.gguf");

    /// <summary>Asserts that opening <paramref name="path"/> fails with a ModelLoadException whose message names the file and a byte offset.</summary>
    public static ModelLoadException AssertLoadFails(string path, Func<string, ModelFile>? open = null)
    {
        open ??= p => new GgufFile(p);
        var error = Assert.Throws<ModelLoadException>(() => open(path).Dispose());
        Assert.Contains(Path.GetFileName(path), error.Message);
        Assert.Contains("byte", error.Message);
        Assert.NotNull(error.Offset);
        return error;
    }
}

/// <summary>A fresh directory under the system temp folder, deleted with everything in it on dispose.</summary>
public sealed class ScratchDirectory : IDisposable
{
    public string Root { get; } = Directory.CreateTempSubdirectory("kiln-loading-").FullName;

    public string PathOf(string fileName) => Path.Combine(Root, fileName);

    public string Write(string fileName, byte[] bytes)
    {
        string path = PathOf(fileName);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
            // A test failing mid-way may still hold a mapping; the temp folder is cleaned by the OS eventually.
        }
    }
}
