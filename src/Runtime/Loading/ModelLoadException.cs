namespace Kiln.Loading;

/// <summary>
/// A model file that cannot be read or does not fit the model definition. The message names the file, the field
/// and, where it applies, the byte offset.
/// </summary>
public class ModelLoadException : Exception
{
    public ModelLoadException(string path, string field, long? offset, string problem, Exception? inner = null)
        : base(Format(path, field, offset, problem), inner)
    {
        FilePath = path;
        Field = field;
        Offset = offset;
    }

    public string FilePath { get; }

    public string Field { get; }

    /// <summary>Byte offset in the file where the problem was found, when it has one.</summary>
    public long? Offset { get; }

    private static string Format(string path, string field, long? offset, string problem) =>
        offset is long at ? $"{path}: {field} at byte {at}: {problem}" : $"{path}: {field}: {problem}";
}
