using System.Runtime.CompilerServices;

// The serving internals with tricky contracts of their own (the lock-free update stream, the stop-string filter)
// are tested directly, not only through the engine.
[assembly: InternalsVisibleTo("Kiln.Runtime.Tests")]
