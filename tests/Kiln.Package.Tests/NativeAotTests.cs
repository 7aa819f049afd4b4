using Kiln.Cli;
using Kiln.Cli.Tests;
using Kiln.EndToEnd.Tests;

namespace Kiln.Package.Tests;

/// <summary>
/// kiln published with NativeAOT for x86-64-v3 (the CLI's default instruction set: any AVX2 machine): the publish
/// raises no trimming or AOT warning, and the native binary writes the text the managed CLI writes, and its errors.
/// </summary>
[Collection(ReleaseBuilds.Name)]
public sealed class NativeAotTests(PackedFeed feed, ITestOutputHelper log)
{
    private static readonly TimeSpan PublishLimit = TimeSpan.FromMinutes(8), RunLimit = TimeSpan.FromMinutes(1);

    [Fact]
    public async Task The_native_kiln_runs_as_the_managed_one_does()
    {
        using var work = new TempFolder("aot");
        string output = work.Combine("native");
        var publish = Dotnet.Run(Dotnet.RepositoryRoot, PublishLimit,
            "publish", Path.Combine("src", "Cli", "Kiln.Cli.csproj"), "-c", "Release", "-r", "linux-x64",
            "-p:PublishAot=true", "-p:IlcInstructionSet=x86-64-v3", "-o", output,
            "--artifacts-path", feed.Artifacts, $"-p:Version={feed.Version}", "--disable-build-servers");
        Assert.True(publish.ExitCode == 0, publish.ToString());
        Assert.DoesNotMatch(@"warning (IL\d{4}|CS\d{4}|NETSDK\d{4})", publish.Out);
        string binary = Path.Combine(output, "kiln");
        log.WriteLine($"NativeAOT publish took {publish.Elapsed.TotalSeconds:F0} s; {binary} is {new FileInfo(binary).Length / (1024.0 * 1024):F1} MiB");

        string[] run = ["run", "--model", StoriesReference.ModelPath("stories260K.gguf"), "--prompt", "Once upon a time", "--max-tokens", "16", "--temperature", "0"];
        var native = Dotnet.Exec(binary, work.Path, RunLimit, run);
        var managed = await CliRun.Of(run);
        log.WriteLine($"native: {native.Out}{native.Error}");
        Assert.True(native.ExitCode == 0, native.ToString());
        Assert.True(managed.ExitCode == 0, managed.ToString());
        Assert.Equal(managed.Out, native.Out);
        Assert.StartsWith("Once upon a time, there was a little girl", native.Out, StringComparison.Ordinal);

        string unknown = StoriesReference.WriteModelWith("general.architecture", "rwkv6");
        try
        {
            var error = Dotnet.Exec(binary, work.Path, RunLimit, "inspect", unknown);
            Assert.Equal(ExitCodes.Failed, error.ExitCode);
            Assert.Equal($"kiln: error: {unknown}: general.architecture: \"rwkv6\" has no Kiln model definition; supported: {string.Join(", ", Kiln.Models.ModelCatalog.Architectures)}.{Environment.NewLine}", error.Error);
        }
        finally
        {
            File.Delete(unknown);
        }
    }
}
