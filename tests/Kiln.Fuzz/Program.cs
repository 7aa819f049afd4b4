using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Kiln.Fuzz;

// The fuzz harness's command line (scripts/fuzz.sh drives it):
//   afl TARGET                  SharpFuzz's persistent loop under afl-fuzz: every input through the target's verdict
//   seeds TARGET DIR            writes the target's generated seeds into DIR
//   replay TARGET PATH...       runs files (or every file of folders) once each; prints each verdict, exit 1 on a finding
//   mutate TARGET DIR N SEED    N in-process mutations of DIR's inputs (no afl, no coverage), as the CI test does
//   targets                     lists the targets
return FuzzCli.Run(args);

internal static class FuzzCli
{
    private const string Usage = "usage: Kiln.Fuzz afl TARGET | seeds TARGET DIR | replay TARGET PATH... | mutate TARGET DIR COUNT SEED | targets";

    public static unsafe int Run(string[] args)
    {
        // An instrumented Kiln.Runtime (scripts/fuzz.sh builds one) records every branch into afl's map, which
        // SharpFuzz's loop sets up; until then (seeds, companions) and in every other command, into one nobody reads.
        SharpFuzz.Common.Trace.SharedMem = (byte*)NativeMemory.AllocZeroed(1 << 16);
        if (args.Length == 1 && args[0] == "targets")
        {
            foreach (var target in FuzzTargets.All) Console.WriteLine(target.Name);
            return 0;
        }
        if (args.Length < 2)
        {
            Console.Error.WriteLine(Usage);
            return 2;
        }
        var chosen = FuzzTargets.Find(args[1]);
        switch (args[0])
        {
            case "afl":
                return Afl(chosen);
            case "seeds" when args.Length == 3:
                Directory.CreateDirectory(args[2]);
                foreach (var (name, bytes) in chosen.Seeds()) File.WriteAllBytes(Path.Combine(args[2], name), bytes);
                return 0;
            case "replay" when args.Length >= 3:
                return Replay(chosen, args[2..]);
            case "mutate" when args.Length == 5:
                return Mutate(chosen, args[2], int.Parse(args[3], CultureInfo.InvariantCulture), int.Parse(args[4], CultureInfo.InvariantCulture));
            default:
                Console.Error.WriteLine(Usage);
                return 2;
        }
    }

    private static int Afl(Kiln.Fuzz.FuzzTarget target)
    {
        using var harness = new FuzzHarness(target);
        var buffer = new MemoryStream();
        // A finding escapes as an exception, which SharpFuzz reports to afl-fuzz as a crash.
        SharpFuzz.Fuzzer.Run(stream =>
        {
            buffer.SetLength(0);
            stream.CopyTo(buffer);
            harness.Run(buffer.GetBuffer().AsSpan(0, (int)buffer.Length));
        });
        return 0;
    }

    private static int Replay(Kiln.Fuzz.FuzzTarget target, string[] paths)
    {
        using var harness = new FuzzHarness(target);
        int findings = 0;
        foreach (string path in paths.SelectMany(p => Directory.Exists(p) ? Directory.GetFiles(p).Order(StringComparer.Ordinal) : (IEnumerable<string>)[p]))
        {
            try
            {
                bool accepted = harness.Run(File.ReadAllBytes(path));
                Console.WriteLine($"{path}: {(accepted ? "accepted" : $"rejected: {harness.LastRejection!.Message}")}");
            }
            catch (FuzzFinding finding)
            {
                findings++;
                Console.WriteLine($"{path}: FINDING: {finding.Message}\n{finding.InnerException}");
            }
        }
        return findings == 0 ? 0 : 1;
    }

    private static int Mutate(Kiln.Fuzz.FuzzTarget target, string directory, int count, int seed)
    {
        var corpus = Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(File.ReadAllBytes).ToArray();
        using var harness = new FuzzHarness(target);
        var random = new Random(seed);
        var mutator = new Mutator(random);
        var clock = Stopwatch.StartNew();
        int accepted = 0;
        for (int i = 0; i < count; i++)
        {
            byte[] input = mutator.Mutate(corpus[random.Next(corpus.Length)], corpus);
            try
            {
                if (harness.Run(input)) accepted++;
            }
            catch (FuzzFinding finding)
            {
                string saved = Path.Combine(Path.GetTempPath(), $"kiln-fuzz-{target.Name}-finding-{seed}-{i}");
                File.WriteAllBytes(saved, input);
                Console.WriteLine($"mutation {i} (seed {seed}): FINDING, input saved to {saved}: {finding.Message}\n{finding.InnerException}");
                return 1;
            }
        }
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{target.Name}: {count} mutations (seed {seed}), {accepted} accepted, {count - accepted} rejected, 0 findings, {count / clock.Elapsed.TotalSeconds:F0} runs/s"));
        return 0;
    }
}
