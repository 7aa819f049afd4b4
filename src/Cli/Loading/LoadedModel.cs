using Kiln.Engine.Serving;
using Kiln.Loading;
using Kiln.Models;
using Kiln.Tokenization;

namespace Kiln.Cli.Loading;

/// <summary>
/// A model file bound to the shipped definition of its architecture (<see cref="ModelCatalog"/>), with its tokenizer:
/// what run, chat and serve start from. Binding shows progress by bytes of weights read.
/// </summary>
internal sealed class LoadedModel : IDisposable
{
    private LoadedModel(ModelFile file, string definition, IKilnModel model, KilnTokenizer tokenizer)
    {
        File = file;
        Definition = definition;
        Model = model;
        Tokenizer = tokenizer;
    }

    public ModelFile File { get; }

    /// <summary>The class the file was bound to, e.g. "Llama".</summary>
    public string Definition { get; }

    public IKilnModel Model { get; }

    public KilnTokenizer Tokenizer { get; }

    /// <summary>The longest sequence the file says the model was trained for ({arch}.context_length), when it says.</summary>
    public int? TrainedContext =>
        File.TryGetInt($"{File.Architecture}.context_length", out long length) && length is > 0 and <= int.MaxValue ? (int)length : null;

    public static LoadedModel Load(string path, Phases phases)
    {
        if (!System.IO.File.Exists(path)) throw new CliException($"model file not found: {path}");
        var file = ModelFile.Open(path);
        try
        {
            string definition = ModelCatalog.DefinitionFor(file);
            long weightBytes = 0;
            foreach (var tensor in file.Tensors.Values) weightBytes += tensor.ByteLength;
            var model = phases.Run($"binding {Path.GetFileName(path)} to {definition}", weightBytes,
                progress => ModelCatalog.Load(new ProgressModelFile(file, progress)),
                _ => $"{Format.Bytes(weightBytes)} of weights");
            return new LoadedModel(file, definition, model, KilnTokenizer.FromModelFile(file));
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>
    /// An engine over this model, its plan compiled for steps of <paramref name="options"/>' token budget (shown as
    /// a step of its own: packing the weights is most of the compile time).
    /// </summary>
    public KilnEngine CreateEngine(EngineOptions options, Phases phases) =>
        phases.Run("compiling the plan", 0,
            _ => new KilnEngine(Model, tokens => Model.Compile(tokens), Tokenizer, options),
            engine => $"{engine.TokenBudget} tokens per step, {engine.MaxContext} tokens of context");

    public void Dispose() => File.Dispose();
}
