using System.Runtime.CompilerServices;

// The generator tests drive internal stages directly (e.g. to prove an unexpected exception becomes KLN0009).
[assembly: InternalsVisibleTo("Kiln.Generators.Tests")]
