namespace Kiln.Server.Tests;

/// <summary>
/// Test classes that run with no other test beside them. Every server's OpenTelemetry listener sees every engine's
/// "Kiln.Engine" meter in the process (meters are matched by name), so a scrape taken while other tests' servers start
/// and stop reports their counters too, and when one engine's meter is disposed as another's is made, OpenTelemetry can
/// export the same series twice in one scrape.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class AloneCollection
{
    public const string Name = "Alone";
}
