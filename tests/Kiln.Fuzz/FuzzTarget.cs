using System.Diagnostics;
using Kiln.Loading;

namespace Kiln.Fuzz;

/// <summary>
/// One parser under fuzzing: the file name the input is written to, companion files written beside it once (a
/// checkpoint's config for its weights, say), how the target opens and uses the file, and the seeds a campaign
/// starts from. Adding a target is one entry in <see cref="FuzzTargets.All"/>.
/// </summary>
/// <param name="Name">What scripts/fuzz.sh and the corpus folder call it.</param>
/// <param name="FileName">The name the input is written under (some loaders go by name or extension).</param>
/// <param name="Exercise">Opens the file at the given path and uses everything it read.</param>
/// <param name="Seeds">Small valid inputs, by name, that a campaign starts from.</param>
/// <param name="Companions">Files written beside the input, by name, before the first run.</param>
public sealed record FuzzTarget(
    string Name,
    string FileName,
    Action<string> Exercise,
    Func<IReadOnlyDictionary<string, byte[]>> Seeds,
    IReadOnlyDictionary<string, byte[]>? Companions = null)
{
    public override string ToString() => Name;
}

/// <summary>
/// What counts as a bug: an input may be accepted, or rejected with a <see cref="ModelLoadException"/> that names the
/// file it is about (the input or a companion), a field, and a byte offset inside that file, in a message that says
/// so. Anything else — another exception, a rejection without a field or offset, an offset outside the file, a run
/// that allocates far more than the input could justify or takes seconds — throws a <see cref="FuzzFinding"/>.
/// Under afl++ that is a crash; in the test suite, a failure.
/// </summary>
public sealed class FuzzHarness : IDisposable
{
    /// <summary>
    /// Bytes a run may allocate per input byte, beyond <see cref="AllocationAllowance"/>: dequantizing a packed tensor
    /// to float32 multiplies it by up to ~20, a vocabulary's strings and dictionaries by a few tens; a parser that
    /// trusts a count it has not checked shows up as far more.
    /// </summary>
    public const long AllocationPerInputByte = 256;

    public const long AllocationAllowance = 32L << 20;

    /// <summary>A single run that takes longer is a hang in the making (inputs are kilobytes).</summary>
    public static readonly TimeSpan SlowRun = TimeSpan.FromSeconds(10);

    private readonly string _directory;

    public FuzzHarness(FuzzTarget target)
    {
        Target = target;
        // tmpfs where there is one: every run rewrites the input file.
        string root = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        _directory = Directory.CreateDirectory(Path.Combine(root, $"kiln-fuzz-{target.Name}-{Environment.ProcessId}-{Guid.NewGuid():N}")).FullName;
        InputPath = Path.Combine(_directory, target.FileName);
        foreach (var (name, bytes) in target.Companions ?? new Dictionary<string, byte[]>())
            File.WriteAllBytes(Path.Combine(_directory, name), bytes);
    }

    public FuzzTarget Target { get; }

    /// <summary>Where each input is written before the target opens it.</summary>
    public string InputPath { get; }

    /// <summary>The rejection of the latest run, null when it was accepted.</summary>
    public ModelLoadException? LastRejection { get; private set; }

    /// <summary>Runs the target on <paramref name="input"/>; true when it was accepted, false when properly rejected.</summary>
    /// <exception cref="FuzzFinding">Anything else.</exception>
    public bool Run(ReadOnlySpan<byte> input)
    {
        using (var stream = new FileStream(InputPath, FileMode.Create, FileAccess.Write, FileShare.Read))
            stream.Write(input);

        long allocatedBefore = GC.GetAllocatedBytesForCurrentThread();
        var clock = Stopwatch.StartNew();
        bool accepted;
        LastRejection = null;
        try
        {
            Target.Exercise(InputPath);
            accepted = true;
        }
        catch (ModelLoadException rejection)
        {
            CheckRejection(rejection);
            LastRejection = rejection;
            accepted = false;
        }
        catch (Exception e) when (e is not FuzzFinding)
        {
            throw new FuzzFinding($"{Target.Name}: {e.GetType().Name} escaped instead of a ModelLoadException: {e.Message}", e);
        }

        long allocated = GC.GetAllocatedBytesForCurrentThread() - allocatedBefore;
        long allowed = AllocationAllowance + AllocationPerInputByte * (input.Length + CompanionBytes());
        if (allocated > allowed)
            throw new FuzzFinding($"{Target.Name}: the run allocated {allocated} bytes for a {input.Length}-byte input (at most {allowed} allowed).");
        if (clock.Elapsed > SlowRun)
            throw new FuzzFinding($"{Target.Name}: the run took {clock.Elapsed.TotalSeconds:F1} s for a {input.Length}-byte input.");
        return accepted;
    }

    private long CompanionBytes()
    {
        long total = 0;
        foreach (var bytes in (Target.Companions ?? new Dictionary<string, byte[]>()).Values) total += bytes.Length;
        return total;
    }

    private void CheckRejection(ModelLoadException rejection)
    {
        string Problem(string what) => $"{Target.Name}: a rejection {what}: {rejection.Message}";

        string named = Path.GetFullPath(rejection.FilePath);
        bool inScratch = Path.GetDirectoryName(named) == _directory || named == _directory;
        if (!inScratch || !File.Exists(named) && named != _directory)
            throw new FuzzFinding(Problem($"names '{rejection.FilePath}', not the input or a file beside it"), rejection);
        if (string.IsNullOrWhiteSpace(rejection.Field))
            throw new FuzzFinding(Problem("names no field"), rejection);
        if (rejection.Offset is not long offset)
            throw new FuzzFinding(Problem($"on '{rejection.Field}' gives no byte offset"), rejection);
        long length = File.Exists(named) ? new FileInfo(named).Length : 0;
        if (offset < 0 || offset > length)
            throw new FuzzFinding(Problem($"gives byte {offset}, outside the {length}-byte file"), rejection);
        if (!rejection.Message.Contains(Path.GetFileName(named), StringComparison.Ordinal) || !rejection.Message.Contains("byte", StringComparison.Ordinal))
            throw new FuzzFinding(Problem("has a message that does not say the file and byte"), rejection);
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
            // A mapping still open after a finding; the folder is in tmpfs or the temp folder.
        }
    }
}

/// <summary>An input the harness counts as a bug (see <see cref="FuzzHarness"/>).</summary>
public sealed class FuzzFinding(string message, Exception? inner = null) : Exception(message, inner);
