using System.Net;
using System.Text.Json;
using Kiln.Embeddings;
using Kiln.Models;
using OpenAI.Embeddings;

namespace Kiln.Server.Tests;

/// <summary>
/// all-MiniLM-L6-v2 (extracted from its NuGet package) served as <c>kiln serve --model .../model.onnx</c> serves it,
/// loaded once for the tests of <see cref="EmbeddingsTests"/>, beside the generator <see cref="MiniLm"/> makes.
/// </summary>
public sealed class MiniLmServer : IAsyncLifetime
{
    /// <summary>Steps of this many tokens, on two threads, for the server and the reference alike.</summary>
    public const int StepTokens = 2048;

    internal LoopbackServer Server { get; private set; } = null!;

    /// <summary>The generator the embeddings sample makes, to compare the served vectors with.</summary>
    public KilnEmbeddingGenerator Reference { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var (model, _) = MiniLm.Files();
        var options = new KilnServerOptions();
        Server = await LoopbackServer.StartAsync(KilnServerModel.Load(model, id: MiniLm.ModelId, embeddingPlan: new PlanOptions(StepTokens, Threads: 2)), options);
        Reference = MiniLm.CreateEmbeddingGenerator(threads: 2, maxTokensPerStep: StepTokens);
    }

    public async Task DisposeAsync()
    {
        Reference.Dispose();
        await Server.DisposeAsync();
    }
}

/// <summary>POST /v1/embeddings: the served vectors are <see cref="KilnEmbeddingGenerator"/>'s; wrong requests and wrong models are OpenAI errors.</summary>
public sealed class EmbeddingsTests(MiniLmServer miniLm) : IClassFixture<MiniLmServer>
{
    // Short, accented, CJK, emoji, punctuation, empty, and one past the model's 256-token cut.
    private static readonly string[] Sentences =
    [
        "A man is eating food.",
        "Café NAÏVE résumé, déjà vu!",
        "日本語のテキストと中文",
        "emoji 😀 here, and a 🚀.",
        "",
        string.Join(' ', Enumerable.Repeat("the quick brown fox jumps over the lazy dog", 40)),
    ];

    private LoopbackServer Server => miniLm.Server;

    [Fact]
    public async Task FloatVectorsAreTheGeneratorsForTheSameTexts()
    {
        var expected = await miniLm.Reference.GenerateAsync(Sentences);
        var root = await Embed(JsonSerializer.Serialize(new { model = MiniLm.ModelId, input = Sentences, encoding_format = "float" }));

        Assert.Equal("list", root.GetProperty("object").GetString());
        Assert.Equal(MiniLm.ModelId, root.GetProperty("model").GetString());
        var data = root.GetProperty("data").EnumerateArray().ToList();
        Assert.Equal(Sentences.Length, data.Count);
        for (int i = 0; i < data.Count; i++)
        {
            Assert.Equal("embedding", data[i].GetProperty("object").GetString());
            Assert.Equal(i, data[i].GetProperty("index").GetInt32());
            float[] vector = [.. data[i].GetProperty("embedding").EnumerateArray().Select(v => v.GetSingle())];
            Assert.Equal(384, vector.Length);
            // The same texts in one call pack into the same step: the same arithmetic, so the same bits.
            Assert.Equal(expected[i].Vector.ToArray(), vector);
        }
        long tokens = Sentences.Sum(s => (long)miniLm.Reference.Tokenizer.Encode(s, MiniLm.MaxSequenceTokens).Length);
        Assert.Equal(expected.Usage!.InputTokenCount, tokens);
        Assert.Equal(tokens, root.GetProperty("usage").GetProperty("prompt_tokens").GetInt64());
        Assert.Equal(tokens, root.GetProperty("usage").GetProperty("total_tokens").GetInt64());
        Assert.Contains(Sentences, s => miniLm.Reference.Tokenizer.Encode(s, int.MaxValue).Length > MiniLm.MaxSequenceTokens); // one was cut
    }

    [Fact]
    public async Task TheOfficialClientsBase64VectorsAndOneStringAreTheGenerators()
    {
        // OpenAI's .NET client asks for base64 and decodes it itself.
        var client = Server.OpenAI().GetEmbeddingClient(MiniLm.ModelId);
        OpenAIEmbeddingCollection served = await client.GenerateEmbeddingsAsync(Sentences);
        var expected = await miniLm.Reference.GenerateAsync(Sentences);
        Assert.Equal(Sentences.Length, served.Count);
        for (int i = 0; i < served.Count; i++)
        {
            Assert.Equal(i, served[i].Index);
            Assert.Equal(expected[i].Vector.ToArray(), served[i].ToFloats().ToArray());
        }
        Assert.Equal(expected.Usage!.InputTokenCount, served.Usage.InputTokenCount);

        OpenAIEmbedding one = await client.GenerateEmbeddingAsync(Sentences[1]);
        var alone = await miniLm.Reference.GenerateAsync([Sentences[1]]);
        Assert.Equal(alone[0].Vector.ToArray(), one.ToFloats().ToArray());
    }

    [Fact]
    public async Task TokenIdsAreEmbeddedAsTheirTextIs()
    {
        var tokenizer = miniLm.Reference.Tokenizer;
        int[][] ids = [.. Sentences[..4].Select(s => tokenizer.Encode(s, MiniLm.MaxSequenceTokens))];
        var expected = await miniLm.Reference.GenerateAsync(Sentences[..4]);

        var many = await Embed(JsonSerializer.Serialize(new { input = ids }));
        var data = many.GetProperty("data").EnumerateArray().ToList();
        for (int i = 0; i < ids.Length; i++)
            Assert.Equal(expected[i].Vector.ToArray(), data[i].GetProperty("embedding").EnumerateArray().Select(v => v.GetSingle()).ToArray());
        Assert.Equal(ids.Sum(i => i.Length), many.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());

        var one = await Embed(JsonSerializer.Serialize(new { input = ids[0] }));
        var alone = await miniLm.Reference.GenerateAsync([Sentences[0]]);
        Assert.Equal(alone[0].Vector.ToArray(), one.GetProperty("data")[0].GetProperty("embedding").EnumerateArray().Select(v => v.GetSingle()).ToArray());
    }

    [Fact]
    public async Task ConcurrentRequestsEachGetTheirOwnVectors()
    {
        // Requests that overlap share the generator's steps; each still gets its own inputs' vectors, in order.
        var expected = await miniLm.Reference.GenerateAsync(Sentences);
        var requests = Enumerable.Range(0, 12).Select(async r =>
        {
            string[] inputs = [Sentences[r % Sentences.Length], Sentences[(r + 1) % Sentences.Length]];
            var root = await Embed(JsonSerializer.Serialize(new { input = inputs }));
            return (r, root);
        }).ToList();
        foreach (var (r, root) in await Task.WhenAll(requests))
        {
            var data = root.GetProperty("data").EnumerateArray().ToList();
            Assert.Equal(2, data.Count);
            for (int i = 0; i < 2; i++)
            {
                float[] vector = [.. data[i].GetProperty("embedding").EnumerateArray().Select(v => v.GetSingle())];
                float[] reference = expected[(r + i) % Sentences.Length].Vector.ToArray();
                // Packed with other requests' sequences: the same model, perhaps summed in another order.
                Assert.True(Cosine(reference, vector) >= 0.99999, $"request {r}, input {i}: cosine {Cosine(reference, vector)}");
            }
        }
    }

    [Fact]
    public async Task TheModelListShowsTheEncodersLongestText()
    {
        using var response = await Server.Http.GetAsync("v1/models");
        var model = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("data")[0];
        Assert.Equal(MiniLm.ModelId, model.GetProperty("id").GetString());
        Assert.Equal(MiniLm.MaxSequenceTokens, model.GetProperty("max_model_len").GetInt32());
    }

    [Theory]
    [InlineData("""{"model": "all-MiniLM-L6-v2"}""", "input", "'input' is required")]
    [InlineData("""{"input": 5}""", "input", "'input' must be a string, an array of strings")]
    [InlineData("""{"input": []}""", "input", "nothing to embed")]
    [InlineData("""{"input": [[]]}""", "input[0]", "nothing to embed")]
    [InlineData("""{"input": ["a", 3]}""", "input[1]", "must be a string")]
    [InlineData("""{"input": [[101, 102], "b"]}""", "input[1]", "must be an array of token ids")]
    [InlineData("""{"input": [101, -1, 102]}""", "input", "'input[1]' must be a token id")]
    [InlineData("""{"input": [101, 2.5]}""", "input", "must be a token id")]
    [InlineData("""{"input": [true]}""", "input", "'input[0]' is true")]
    [InlineData("""{"input": [[101, 30522, 102]]}""", "input", "ids 0 to 30521")]
    [InlineData("""{"input": "a", "encoding_format": "int8"}""", "encoding_format", "\"float\" or \"base64\"")]
    [InlineData("""{"input": "a", "dimensions": 128}""", "dimensions", "384 values")]
    [InlineData("""{"input": "a", "dimensions": 0}""", "dimensions", "at least 1")]
    [InlineData("""{"input": "a", "user": 7}""", "user", "must be a string")]
    [InlineData("""["a"]""", null, "must be a JSON object")]
    [InlineData("""{"input": "a" """, null, "not valid JSON")]
    public async Task ABadRequestIsA400NamingItsField(string body, string? param, string message)
    {
        using var response = await Server.Http.PostJsonAsync("v1/embeddings", body);
        var error = await Error(response, HttpStatusCode.BadRequest);
        Assert.Equal(param, error.GetProperty("param").GetString());
        Assert.Contains(message, error.GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task TooManyOrTooLongInputsAre400()
    {
        using (var response = await Server.Http.PostJsonAsync("v1/embeddings", JsonSerializer.Serialize(new { input = Enumerable.Repeat("a", 2049) })))
            Assert.Contains("at most 2048", (await Error(response, HttpStatusCode.BadRequest)).GetProperty("message").GetString());

        int[] tooLong = [101, .. Enumerable.Repeat(1037, MiniLm.MaxSequenceTokens - 1), 102];
        using (var response = await Server.Http.PostJsonAsync("v1/embeddings", JsonSerializer.Serialize(new { input = new[] { new[] { 101, 102 }, tooLong } })))
        {
            var error = await Error(response, HttpStatusCode.BadRequest);
            Assert.Equal("input[1]", error.GetProperty("param").GetString());
            Assert.Equal("context_length_exceeded", error.GetProperty("code").GetString());
            Assert.Contains($"{MiniLm.MaxSequenceTokens + 1} tokens", error.GetProperty("message").GetString());
        }
    }

    [Fact]
    public async Task AnotherModelsNameIs404()
    {
        using var response = await Server.Http.PostJsonAsync("v1/embeddings", """{"model": "text-embedding-3-small", "input": "a"}""");
        Assert.Equal("model_not_found", (await Error(response, HttpStatusCode.NotFound)).GetProperty("code").GetString());
    }

    [Fact]
    public async Task AnEncoderRefusesToGenerate()
    {
        foreach (var (path, body) in new[]
        {
            ("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 4}"""),
            ("v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}]}"""),
        })
        {
            using var response = await Server.Http.PostJsonAsync(path, body);
            var error = await Error(response, HttpStatusCode.BadRequest);
            Assert.Equal("model_not_supported", error.GetProperty("code").GetString());
            Assert.Contains("is an encoder", error.GetProperty("message").GetString());
        }
    }

    [Fact]
    public async Task ADecoderAnswersEmbeddingsWithAClear400()
    {
        await using var stories = await LoopbackServer.StartAsync();
        using var response = await stories.Http.PostJsonAsync("v1/embeddings", """{"model": "stories260K", "input": "Once upon a time"}""");
        var error = await Error(response, HttpStatusCode.BadRequest);
        Assert.Equal("model", error.GetProperty("param").GetString());
        Assert.Equal("model_not_supported", error.GetProperty("code").GetString());
        Assert.Contains("'stories260K' is a decoder", error.GetProperty("message").GetString());
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
    }

    private async Task<JsonElement> Embed(string body)
    {
        using var response = await Server.Http.PostJsonAsync("v1/embeddings", body);
        string text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, text);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        return JsonDocument.Parse(text).RootElement;
    }

    private static async Task<JsonElement> Error(HttpResponseMessage response, HttpStatusCode status)
    {
        string text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == status, $"{response.StatusCode}: {text}");
        return JsonDocument.Parse(text).RootElement.GetProperty("error");
    }

    private static double Cosine(float[] a, float[] b)
    {
        double dot = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++) (dot, aa, bb) = (dot + (double)a[i] * b[i], aa + (double)a[i] * a[i], bb + (double)b[i] * b[i]);
        return dot / Math.Sqrt(aa * bb);
    }
}
