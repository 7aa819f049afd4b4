using Microsoft.CodeAnalysis;

namespace Kiln.Generators;

[Generator(LanguageNames.CSharp)]
public sealed partial class KilnGenerator : IIncrementalGenerator
{
    public void Initialize(IncrementalGeneratorInitializationContext context)
    {
    }
}
