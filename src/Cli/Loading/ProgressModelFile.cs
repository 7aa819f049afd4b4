using Kiln.Loading;

namespace Kiln.Cli.Loading;

/// <summary>
/// A model file that reports the bytes of each tensor a definition's binder reads, so loading shows real progress:
/// the generated <c>Load</c> reads every weight through <see cref="GetTensorBytes"/>.
/// </summary>
internal sealed class ProgressModelFile(ModelFile inner, Action<long> bytesRead) : ModelFile(inner.Path)
{
    public override string Architecture => inner.Architecture;

    public override IReadOnlyDictionary<string, TensorInfo> Tensors => inner.Tensors;

    public override IReadOnlyDictionary<string, MetadataValue> Metadata => inner.Metadata;

    public override ReadOnlySpan<byte> GetTensorBytes(TensorInfo tensor)
    {
        var bytes = inner.GetTensorBytes(tensor);
        bytesRead(bytes.Length);
        return bytes;
    }

    /// <summary>The wrapped file stays open: its owner disposes it.</summary>
    public override void Dispose() => GC.SuppressFinalize(this);
}
