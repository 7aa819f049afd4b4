namespace Kiln.Cli;

/// <summary>A problem the user can fix (a missing file, a prompt too long for the model): shown as one error line.</summary>
internal sealed class CliException(string message) : Exception(message);
