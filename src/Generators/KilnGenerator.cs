using System.Linq;
using Kiln.Generators.Ir;
using Kiln.Generators.Passes;
using Kiln.Generators.Syntax;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace Kiln.Generators;

/// <summary>
/// Compiles each [Model] class's [Forward] method into fused CPU kernels. Pipeline (each stage equatable, so an
/// unrelated edit leaves it cached): extract a ModelInfo → build the SSA graph with symbolic shapes → fusion and
/// arena planning → emit Model.g.cs. Diagnostics and source are separate outputs.
/// </summary>
[Generator(LanguageNames.CSharp)]
public sealed partial class KilnGenerator : IIncrementalGenerator
{
    /// <summary>Tracking names of the pipeline steps (tests assert they stay cached).</summary>
    public static class Steps
    {
        public const string Model = "Kiln.Model";
        public const string Graph = "Kiln.Graph";
        public const string Plan = "Kiln.Plan";
        public const string Diagnostics = "Kiln.Diagnostics";
        public const string Source = "Kiln.Source";
        public const string Gpu = "Kiln.Gpu";
        public const string GpuSource = "Kiln.GpuSource";
    }

    public void Initialize(IncrementalGeneratorInitializationContext context)
    {
        var models = context.SyntaxProvider
            .ForAttributeWithMetadataName(
                ModelExtractor.ModelAttribute,
                static (node, _) => node is ClassDeclarationSyntax,
                static (syntax, cancellationToken) => ModelExtractor.Extract(syntax, cancellationToken))
            .WithTrackingName(Steps.Model);

        var graphs = models
            .Select(static (model, cancellationToken) => GraphBuilder.Build(model, cancellationToken))
            .WithTrackingName(Steps.Graph);

        var plans = graphs
            .Select(static (graph, cancellationToken) => Planner.Build(graph, cancellationToken))
            .WithTrackingName(Steps.Plan);

        var diagnostics = plans
            .Select(static (plan, _) => plan.Diagnostics)
            .WithTrackingName(Steps.Diagnostics);

        var sources = plans
            .Select(static (plan, cancellationToken) => EmitSource(plan, cancellationToken))
            .WithTrackingName(Steps.Source);

        // The GPU plan only where the compilation references Kiln.Gpu (and so ILGPU): the CPU path never sees either.
        var gpu = context.CompilationProvider
            .Select(static (compilation, _) => compilation.GetTypeByMetadataName(Emit.GpuPlanEmitter.MarkerType) is not null)
            .WithTrackingName(Steps.Gpu);

        var gpuSources = plans
            .Combine(gpu)
            .Select(static (input, cancellationToken) => input.Right ? EmitGpuSource(input.Left, cancellationToken) : null)
            .WithTrackingName(Steps.GpuSource);

        context.RegisterSourceOutput(diagnostics, static (output, items) =>
        {
            foreach (var diagnostic in items) output.ReportDiagnostic(diagnostic.ToDiagnostic());
        });

        context.RegisterSourceOutput(sources, static (output, source) =>
        {
            if (source.Text.Length > 0) output.AddSource(source.HintName, source.Text);
            foreach (var diagnostic in source.Diagnostics) output.ReportDiagnostic(diagnostic.ToDiagnostic());
        });

        context.RegisterSourceOutput(gpuSources, static (output, source) =>
        {
            if (source is null) return;
            if (source.Text.Length > 0) output.AddSource(source.HintName, source.Text);
            foreach (var diagnostic in source.Diagnostics) output.ReportDiagnostic(diagnostic.ToDiagnostic());
        });
    }
}
