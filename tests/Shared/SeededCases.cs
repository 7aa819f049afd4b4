using CsCheck;

namespace Kiln.Tests;

/// <summary>
/// Property tests over CsCheck's generators, drawn from a fixed seed so every run checks the same cases (CsCheck's
/// own Sample seeds each run from the clock). A failure names the run's seed, the case and that case's CsCheck seed;
/// the environment variable <c>KILN_SEED</c> replaces every test's seed, to explore other cases.
/// </summary>
internal static class SeededCases
{
    private const uint Stream = 7;

    /// <summary>Runs <paramref name="check"/> on <paramref name="count"/> cases of <paramref name="gen"/> drawn from <paramref name="seed"/>, in parallel.</summary>
    public static void Check<T>(Gen<T> gen, ulong seed, int count, Action<T> check)
    {
        var cases = Draw(gen, seed, count);
        var failures = new Exception?[count];
        Parallel.For(0, count, i =>
        {
            try
            {
                check(cases[i].Value);
            }
            catch (Exception e)
            {
                failures[i] = e;
            }
        });
        ThrowFirst(cases, failures, seed);
    }

    /// <summary>The asynchronous <see cref="Check{T}"/>: at most <paramref name="parallel"/> cases at once.</summary>
    public static async Task CheckAsync<T>(Gen<T> gen, ulong seed, int count, Func<T, Task> check, int parallel = 2)
    {
        var cases = Draw(gen, seed, count);
        var failures = new Exception?[count];
        await Parallel.ForAsync(0, count, new ParallelOptions { MaxDegreeOfParallelism = parallel }, async (i, _) =>
        {
            try
            {
                await check(cases[i].Value);
            }
            catch (Exception e)
            {
                failures[i] = e;
            }
        });
        ThrowFirst(cases, failures, seed);
    }

    /// <summary>The seed tests run with: theirs, or <c>KILN_SEED</c> when set.</summary>
    public static ulong Resolve(ulong seed) =>
        ulong.TryParse(Environment.GetEnvironmentVariable("KILN_SEED"), out ulong chosen) ? chosen : seed;

    private static (T Value, string CaseSeed)[] Draw<T>(Gen<T> gen, ulong seed, int count)
    {
        var random = new PCG(Stream, Resolve(seed));
        var cases = new (T, string)[count];
        for (int i = 0; i < count; i++)
        {
            string caseSeed = random.ToString(); // PCG.Parse of it regenerates this case
            cases[i] = (gen.Generate(random, null, out _), caseSeed);
        }
        return cases;
    }

    private static void ThrowFirst<T>((T Value, string CaseSeed)[] cases, Exception?[] failures, ulong seed)
    {
        int first = Array.FindIndex(failures, f => f is not null);
        if (first < 0) return;
        var (value, caseSeed) = cases[first];
        string shown = CsCheck.Check.Print(value);
        if (shown.Length > 4000) shown = shown[..4000] + " …";
        throw new SeededCaseException(
            $"Case {first} of {cases.Length} drawn from seed {Resolve(seed)} failed ({failures.Count(f => f is not null)} failed in all); " +
            $"rerun with KILN_SEED={Resolve(seed)}, or replay and shrink it alone with gen.Sample(check, seed: \"{caseSeed}\").\n{shown}",
            failures[first]!);
    }
}

/// <summary>A seeded property case failed; the message says which and how to rerun it, the inner exception why.</summary>
internal sealed class SeededCaseException(string message, Exception inner) : Exception(message, inner);
