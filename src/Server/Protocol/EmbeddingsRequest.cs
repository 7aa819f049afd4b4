using System.Text.Json;

namespace Kiln.Server.Protocol;

/// <summary>
/// A POST /v1/embeddings body, read and checked field by field as OpenAI reads it: <c>input</c> is a string, an array
/// of strings, an array of token ids, or an array of such arrays (at most <see cref="MaxInputs"/> inputs, none empty);
/// <c>encoding_format</c> is "float" (the default) or "base64"; <c>dimensions</c>, when given, must be the model's
/// own (this server does not shorten embeddings).
/// </summary>
internal sealed class EmbeddingsRequest
{
    /// <summary>Inputs one request may hold, as OpenAI limits them.</summary>
    public const int MaxInputs = 2048;

    /// <summary>The model the client named; null when it named none (the server hosts one).</summary>
    public string? Model { get; init; }

    /// <summary>The inputs as text, encoded by the server ...</summary>
    public IReadOnlyList<string>? Texts { get; init; }

    /// <summary>... or as token ids of the model's vocabulary, embedded as given.</summary>
    public IReadOnlyList<int[]>? TokenIds { get; init; }

    /// <summary>Each embedding as base64 of its little-endian float32 values, rather than a JSON array of numbers.</summary>
    public bool Base64 { get; init; }

    /// <summary>The values per embedding the client asked for; null when it did not say.</summary>
    public long? Dimensions { get; init; }

    /// <summary>The end user's id, which OpenAI keeps for abuse monitoring; read and checked, it changes no output.</summary>
    public string? User { get; init; }

    public static EmbeddingsRequest Parse(JsonElement body)
    {
        var fields = new JsonFields(body);
        string format = fields.String("encoding_format") ?? "float";
        if (format is not ("float" or "base64"))
            throw OpenAiException.BadRequest($"'encoding_format' must be \"float\" or \"base64\"; got {JsonFields.Describe(body.GetProperty("encoding_format"))}.", "encoding_format");
        ReadInput(fields, out var texts, out var tokenIds);
        return new EmbeddingsRequest
        {
            Model = fields.String("model"),
            Texts = texts,
            TokenIds = tokenIds,
            Base64 = format == "base64",
            Dimensions = fields.Integer("dimensions", min: 1),
            User = fields.String("user"),
        };
    }

    private const string InputKinds = "a string, an array of strings, an array of token ids, or an array of arrays of token ids";

    private static void ReadInput(JsonFields fields, out IReadOnlyList<string>? texts, out IReadOnlyList<int[]>? tokenIds)
    {
        texts = null;
        tokenIds = null;
        if (!fields.TryGet("input", out var input)) throw OpenAiException.BadRequest("'input' is required.", "input");
        if (input.ValueKind == JsonValueKind.String)
        {
            texts = [input.GetString()!];
            return;
        }
        if (input.ValueKind != JsonValueKind.Array) throw fields.Wrong("input", InputKinds, input);
        int count = input.GetArrayLength();
        if (count == 0) throw OpenAiException.BadRequest("'input' is an empty array: there is nothing to embed.", "input");

        switch (input[0].ValueKind)
        {
            case JsonValueKind.Number: // one input, as token ids
                tokenIds = [ReadIds(input, "input")];
                return;
            case JsonValueKind.String:
            {
                if (count > MaxInputs) throw TooMany(count);
                var list = new string[count];
                int i = 0;
                foreach (var item in input.EnumerateArray())
                {
                    list[i] = item.ValueKind == JsonValueKind.String
                        ? item.GetString()!
                        : throw OpenAiException.BadRequest($"'input[{i}]' must be a string, as 'input[0]' is; got {JsonFields.Describe(item)}.", $"input[{i}]");
                    i++;
                }
                texts = list;
                return;
            }
            case JsonValueKind.Array:
            {
                if (count > MaxInputs) throw TooMany(count);
                var list = new int[count][];
                int i = 0;
                foreach (var item in input.EnumerateArray())
                {
                    list[i] = item.ValueKind == JsonValueKind.Array
                        ? ReadIds(item, $"input[{i}]")
                        : throw OpenAiException.BadRequest($"'input[{i}]' must be an array of token ids, as 'input[0]' is; got {JsonFields.Describe(item)}.", $"input[{i}]");
                    i++;
                }
                tokenIds = list;
                return;
            }
            default:
                throw OpenAiException.BadRequest($"'input' must be {InputKinds}; 'input[0]' is {JsonFields.Describe(input[0])}.", "input");
        }
    }

    /// <summary>A non-empty array of token ids (integers of 0 or more; the model checks them against its vocabulary).</summary>
    private static int[] ReadIds(JsonElement array, string param)
    {
        int count = array.GetArrayLength();
        if (count == 0) throw OpenAiException.BadRequest($"'{param}' is an empty array of token ids: there is nothing to embed.", param);
        var ids = new int[count];
        int i = 0;
        foreach (var item in array.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out ids[i]) || ids[i] < 0)
                throw OpenAiException.BadRequest($"'{param}[{i}]' must be a token id (an integer of 0 or more); got {JsonFields.Describe(item)}.", param);
            i++;
        }
        return ids;
    }

    private static OpenAiException TooMany(int count) =>
        OpenAiException.BadRequest($"'input' holds {count} inputs; a request embeds at most {MaxInputs}.", "input");
}
