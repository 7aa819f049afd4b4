using System.Diagnostics;
using System.Text;

namespace Kiln.Package.Tests;

/// <summary>
/// Runs the dotnet CLI (or a program it built) as a child process, as a person would from a shell: no build servers
/// left behind, none of the test host's MSBuild settings inherited, every line of output kept for the failure message,
/// and a time limit after which the process tree is killed.
/// </summary>
public static class Dotnet
{
    public sealed record Result(string Command, int ExitCode, string Out, string Error, TimeSpan Elapsed)
    {
        public override string ToString() => $"{Command}\nexit {ExitCode} after {Elapsed.TotalSeconds:F0} s\n--- stdout:\n{Out}\n--- stderr:\n{Error}";
    }

    /// <summary>The repository this test was built from.</summary>
    public static string RepositoryRoot => Kiln.Tests.Repository.Root;

    /// <summary>The packages folder restores on this machine use (dependencies come from it, not the network).</summary>
    public static string MachinePackagesFolder =>
        Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } folder
            ? folder
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");

    /// <summary>Runs <c>dotnet</c> with <paramref name="arguments"/>.</summary>
    public static Result Run(string workingDirectory, TimeSpan limit, params string[] arguments) =>
        Start("dotnet", arguments, workingDirectory, limit, environment: null);

    public static Result Run(string workingDirectory, TimeSpan limit, IReadOnlyDictionary<string, string> environment, params string[] arguments) =>
        Start("dotnet", arguments, workingDirectory, limit, environment);

    /// <summary>Runs a program (a native binary, an installed tool) with <paramref name="arguments"/>.</summary>
    public static Result Exec(string program, string workingDirectory, TimeSpan limit, params string[] arguments) =>
        Start(program, arguments, workingDirectory, limit, environment: null);

    private static Result Start(string program, string[] arguments, string workingDirectory, TimeSpan limit, IReadOnlyDictionary<string, string>? environment)
    {
        var start = new ProcessStartInfo(program)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        // The test host runs under dotnet test, whose MSBuild and test-platform variables would steer a nested build.
        foreach (string name in start.Environment.Keys.ToArray())
        {
            if (name.StartsWith("MSBUILD", StringComparison.OrdinalIgnoreCase) || name.StartsWith("VSTEST", StringComparison.OrdinalIgnoreCase)
                || name.StartsWith("TESTINGPLATFORM", StringComparison.OrdinalIgnoreCase) || name == "DOTNET_HOST_PATH")
                start.Environment.Remove(name);
        }
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        start.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] = "0";
        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        start.Environment["UseSharedCompilation"] = "false";
        if (environment is not null)
            foreach (var (name, value) in environment) start.Environment[name] = value;

        string command = $"{program} {string.Join(' ', arguments)} (in {workingDirectory})";
        var output = new StringBuilder();
        var error = new StringBuilder();
        var clock = Stopwatch.StartNew();
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (error) error.AppendLine(e.Data); };
        process.Start();
        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(limit))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            Assert.Fail($"{command} did not finish within {limit.TotalMinutes:F0} min.\n--- stdout:\n{output}\n--- stderr:\n{error}");
        }
        process.WaitForExit(); // drains the output readers
        return new Result(command, process.ExitCode, output.ToString(), error.ToString(), clock.Elapsed);
    }
}
