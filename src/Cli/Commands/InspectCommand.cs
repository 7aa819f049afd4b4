using System.CommandLine;
using System.Globalization;
using Kiln.Loading;
using Kiln.Models;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace Kiln.Cli.Commands;

/// <summary>
/// kiln inspect: what a model file holds (metadata, tensors with their types, shapes and sizes, totals by type) and
/// which shipped definition Kiln would compile it with. A file no definition fits is shown, then fails with the
/// one-line error that names its architecture, so a script can ask "can Kiln run this?".
/// </summary>
internal static class InspectCommand
{
    /// <summary>Metadata strings and arrays are cut to this many characters: a vocabulary is thousands of tokens.</summary>
    private const int MaxValueLength = 72;

    /// <summary>Elements of an array value shown before the ellipsis.</summary>
    private const int ArrayPreview = 4;

    public static Command Create(CliConsole console)
    {
        var file = new Argument<string>("FILE") { Description = "A model file: GGUF, or a llama2.c .bin with its tokenizer beside it." };
        var command = new Command("inspect", "Show a model file's metadata, tensors, types and sizes, and the definition Kiln would compile it with.") { file };
        command.SetAction(result => Inspect(console, result.GetValue(file)!));
        return command;
    }

    private static int Inspect(CliConsole console, string path)
    {
        if (!File.Exists(path)) throw new CliException($"model file not found: {path}");
        using var file = ModelFile.Open(path);
        var output = console.OutConsole;
        string format = file is GgufFile ? "GGUF" : "llama2.c checkpoint";
        output.Write(new Text($"{path}: {format}, {Format.Bytes(new FileInfo(path).Length)}, architecture \"{file.Architecture}\"\n\n"));

        var metadata = new Table().Title($"Metadata ({file.Metadata.Count} keys)").AddColumn("key").AddColumn("value");
        foreach (var (key, value) in file.Metadata.OrderBy(entry => entry.Key, StringComparer.Ordinal))
            metadata.AddRow(new Text(key), new Text(Describe(value.Value)));
        output.Write(metadata);
        output.WriteLine();

        var tensors = new Table().Title($"Tensors ({file.Tensors.Count})")
            .AddColumn("name").AddColumn("type").AddColumn("shape (outer first)").AddColumn(new TableColumn("bytes").RightAligned());
        var byType = new SortedDictionary<GgmlType, (int Count, long Elements, long Bytes)>();
        long totalElements = 0, totalBytes = 0;
        foreach (var tensor in file.Tensors.Values.OrderBy(tensor => tensor.Offset))
        {
            tensors.AddRow(new Text(tensor.Name), new Text(tensor.Type.ToString()), new Text(Shape(tensor.Dimensions)), new Text(Format.Bytes(tensor.ByteLength)));
            var sum = byType.GetValueOrDefault(tensor.Type);
            byType[tensor.Type] = (sum.Count + 1, sum.Elements + tensor.ElementCount, sum.Bytes + tensor.ByteLength);
            totalElements += tensor.ElementCount;
            totalBytes += tensor.ByteLength;
        }
        output.Write(tensors);
        output.WriteLine();

        var totals = new Table().Title("Totals by type").AddColumn("type").AddColumn(new TableColumn("tensors").RightAligned())
            .AddColumn(new TableColumn("parameters").RightAligned()).AddColumn(new TableColumn("bytes").RightAligned());
        foreach (var (type, sum) in byType)
            totals.AddRow(Cells(type.ToString(), sum.Count.ToString(CultureInfo.InvariantCulture), Count(sum.Elements), Format.Bytes(sum.Bytes)));
        totals.AddRow(Cells("all", file.Tensors.Count.ToString(CultureInfo.InvariantCulture), Count(totalElements), Format.Bytes(totalBytes)));
        output.Write(totals);
        output.WriteLine();

        string definition = ModelCatalog.DefinitionFor(file); // throws, naming the architecture, when none fits
        output.Write(new Text($"Kiln would compile it as {definition} (the shipped definition for \"{file.Architecture}\").\n"));
        return ExitCodes.Ok;
    }

    private static IRenderable[] Cells(params string[] texts) => Array.ConvertAll(texts, text => (IRenderable)new Text(text));

    /// <summary>GGUF lists dimensions innermost first; Kiln's [Weight] shapes, like the tensors in memory, are outer first.</summary>
    private static string Shape(long[] dimensions)
    {
        var outerFirst = new string[dimensions.Length];
        for (int i = 0; i < dimensions.Length; i++) outerFirst[i] = dimensions[dimensions.Length - 1 - i].ToString(CultureInfo.InvariantCulture);
        return $"[{string.Join(", ", outerFirst)}]";
    }

    private static string Count(long value) => value.ToString("N0", CultureInfo.InvariantCulture);

    private static string Describe(object value) => Shorten(value switch
    {
        string text => Quote(text),
        Array array => DescribeArray(array),
        float number => number.ToString("R", CultureInfo.InvariantCulture),
        double number => number.ToString("R", CultureInfo.InvariantCulture),
        bool flag => flag ? "true" : "false",
        IFormattable number => number.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    });

    private static string DescribeArray(Array array)
    {
        var preview = new List<string>(ArrayPreview);
        foreach (object? element in array)
        {
            if (preview.Count == ArrayPreview) break;
            preview.Add(element is null ? "null" : Describe(element));
        }
        string more = array.Length > ArrayPreview ? ", …" : "";
        return $"{array.Length} × {ElementName(array)}: [{string.Join(", ", preview)}{more}]";
    }

    private static string ElementName(Array array) => array switch
    {
        string[] => "string",
        float[] => "float32",
        double[] => "float64",
        int[] => "int32",
        uint[] => "uint32",
        long[] => "int64",
        ulong[] => "uint64",
        short[] => "int16",
        ushort[] => "uint16",
        sbyte[] => "int8",
        byte[] => "uint8",
        bool[] => "bool",
        _ => "values",
    };

    /// <summary>A string as one visible line: control characters escaped, quoted.</summary>
    private static string Quote(string text)
    {
        var builder = new System.Text.StringBuilder(Math.Min(text.Length, MaxValueLength) + 2).Append('"');
        foreach (char c in text)
        {
            if (builder.Length > MaxValueLength) break;
            builder.Append(c switch
            {
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                _ when char.IsControl(c) => $"\\u{(int)c:x4}",
                _ => c.ToString(),
            });
        }
        return builder.Append('"').ToString();
    }

    private static string Shorten(string text) => text.Length <= MaxValueLength ? text : string.Concat(text.AsSpan(0, MaxValueLength - 1), "…");
}
