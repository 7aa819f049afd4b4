using System.Text.Json;
using System.Text.RegularExpressions;
using Kiln.Loading;

namespace Kiln.EndToEnd.Tests;

/// <summary>The ground truth shipped beside stories260K: prompt ids, 64 greedy ids, their text, and reference logits.</summary>
internal sealed partial class StoriesReference
{
    public static string ModelPath(string name) => Path.Combine(AppContext.BaseDirectory, "models", name);

    /// <summary>A temporary copy of stories260K.gguf with metadata <paramref name="key"/> set to <paramref name="value"/>; the caller deletes it.</summary>
    public static string WriteModelWith(string key, object value)
    {
        using var source = ModelFile.Open(ModelPath("stories260K.gguf"));
        var writer = new GgufWriter();
        foreach (var (name, entry) in source.Metadata)
            writer.AddMetadata(name, name == key ? value : entry.Value);
        foreach (var (name, info) in source.Tensors)
            writer.AddEncodedTensor(name, info.Type, source.GetTensorBytes(info), info.Dimensions);
        string path = Path.Combine(Path.GetTempPath(), $"kiln-{Guid.NewGuid():N}.gguf");
        writer.Write(path);
        return path;
    }

    public static StoriesReference Load()
    {
        string text = File.ReadAllText(ModelPath("stories260K.reference.txt"));
        int[] promptIds = Ids(text, "prompt_token_ids");
        int[] generatedIds = Ids(text, "generated_token_ids");
        const string textHeader = "text (decoded like run.c: leading space stripped after BOS, <0xNN> -> byte):\n";
        int start = text.IndexOf(textHeader, StringComparison.Ordinal) + textHeader.Length;
        int end = text.IndexOf("\n--- logits", start, StringComparison.Ordinal);
        using var json = JsonDocument.Parse(File.ReadAllText(ModelPath("stories260K.reference.logits.json")));
        return new StoriesReference(promptIds, generatedIds, text[start..end], Rows(json.RootElement.GetProperty("forward_logits_pos0_2")));
    }

    private StoriesReference(int[] promptIds, int[] generatedIds, string text, float[][] promptLogits)
    {
        PromptIds = promptIds;
        GeneratedIds = generatedIds;
        Text = text;
        PromptLogits = promptLogits;
    }

    public int[] PromptIds { get; }

    public int[] GeneratedIds { get; }

    /// <summary>The prompt followed by the decoded continuation.</summary>
    public string Text { get; }

    /// <summary>Float64-reference logits after the first three prompt tokens (positions 0, 1, 2).</summary>
    public float[][] PromptLogits { get; }

    private static int[] Ids(string text, string key)
    {
        var match = Regex.Match(text, "^" + key + @"[^\[]*\[([0-9, ]+)\]", RegexOptions.Multiline);
        Assert.True(match.Success, $"reference file lacks {key}");
        return Array.ConvertAll(match.Groups[1].Value.Split(',', StringSplitOptions.TrimEntries), int.Parse);
    }

    private static float[][] Rows(JsonElement rows)
    {
        var result = new float[rows.GetArrayLength()][];
        int i = 0;
        foreach (var row in rows.EnumerateArray())
        {
            result[i] = new float[row.GetArrayLength()];
            int j = 0;
            foreach (var value in row.EnumerateArray()) result[i][j++] = value.GetSingle();
            i++;
        }
        return result;
    }
}
