using System.Linq;
using Kiln.Generators.Helpers;
using Microsoft.CodeAnalysis;

namespace Kiln.Generators.Diagnostics;

/// <summary>A diagnostic as equatable data: the descriptor's id, the message arguments and where it points.</summary>
internal sealed record DiagnosticInfo(string Id, EquatableArray<string> Arguments, LocationInfo? Location)
{
    public static DiagnosticInfo Create(DiagnosticDescriptor descriptor, LocationInfo? location, params string[] arguments) =>
        new(descriptor.Id, arguments.ToEquatableArray(), location);

    public Diagnostic ToDiagnostic() => Diagnostic.Create(
        DiagnosticDescriptors.ById(Id),
        Location?.ToLocation() ?? Microsoft.CodeAnalysis.Location.None,
        Arguments.Cast<object>().ToArray());
}
