using Xunit.Abstractions;

namespace Kiln.Fuzz;

/// <summary>
/// The fuzz campaign's in-process slice, run with every test: each target's saved corpus (Corpus/TARGET: inputs that
/// afl++ found reach new code, minimized) and generated seeds, each run as it is, then seeded mutations of them
/// through the same verdict as under afl++ (see <see cref="FuzzHarness"/>). The seed is printed, and named in any
/// failure; <c>KILN_SEED</c> replaces it to explore other mutations.
/// </summary>
public sealed class CorpusMutationTests(ITestOutputHelper output)
{
    /// <summary>Mutations per target: about four seconds each on two busy cores.</summary>
    private const int Mutations = 1500;

    public static TheoryData<string> Targets() => [.. FuzzTargets.All.Select(t => t.Name)];

    [Theory]
    [MemberData(nameof(Targets))]
    public void Mutations_of_the_corpus_are_accepted_or_rejected_with_file_field_and_offset(string name)
    {
        var target = FuzzTargets.Find(name);
        int seed = ulong.TryParse(Environment.GetEnvironmentVariable("KILN_SEED"), out ulong chosen)
            ? (int)chosen
            : 1_204_2025 + name.Length * 7919 + name[0];
        output.WriteLine($"{name}: seed {seed} (KILN_SEED replaces it)");

        var inputs = new List<byte[]>(target.Seeds().Values);
        string saved = Path.Combine(AppContext.BaseDirectory, "Corpus", name);
        if (Directory.Exists(saved)) inputs.AddRange(Directory.GetFiles(saved).Order(StringComparer.Ordinal).Select(File.ReadAllBytes));
        output.WriteLine($"{name}: {inputs.Count} corpus inputs");

        using var harness = new FuzzHarness(target);
        int accepted = 0;
        for (int i = 0; i < inputs.Count; i++)
        {
            try
            {
                if (harness.Run(inputs[i])) accepted++;
            }
            catch (FuzzFinding finding)
            {
                Assert.Fail($"corpus input {i} of {name}: {finding.Message}\n{finding.InnerException}");
            }
        }
        Assert.True(accepted > 0, $"{name}: no corpus input loads, so mutations start from nothing valid.");

        var random = new Random(seed);
        var mutator = new Mutator(random);
        int mutantsAccepted = 0;
        for (int i = 0; i < Mutations; i++)
        {
            byte[] input = mutator.Mutate(inputs[random.Next(inputs.Count)], inputs);
            try
            {
                if (harness.Run(input)) mutantsAccepted++;
            }
            catch (FuzzFinding finding)
            {
                Assert.Fail($"{name}, seed {seed}, mutation {i} ({input.Length} bytes, base64 {Convert.ToBase64String(input)}): {finding.Message}\n{finding.InnerException}");
            }
        }
        output.WriteLine($"{name}: {Mutations} mutations, {mutantsAccepted} accepted, {Mutations - mutantsAccepted} rejected properly");
    }
}
