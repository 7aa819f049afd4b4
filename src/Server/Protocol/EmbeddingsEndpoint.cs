using System.Buffers;
using System.Runtime.InteropServices;
using System.Text.Json;
using Kiln.Embeddings;
using Microsoft.AspNetCore.Http;

namespace Kiln.Server.Protocol;

/// <summary>
/// POST /v1/embeddings: reads and checks the request, embeds its inputs in one call of the model's
/// <see cref="KilnEmbeddingGenerator"/> (texts cut at the model's sequence limit as sentence-transformers cuts them;
/// token ids embedded as given) with the connection's abort token, and answers OpenAI's list of embeddings. A decoder
/// has none: it answers 400.
/// </summary>
internal sealed class EmbeddingsEndpoint(KilnServerModel model)
{
    public async Task HandleAsync(HttpContext context)
    {
        EmbeddingsRequest request;
        float[][] vectors;
        long tokens = 0;
        try
        {
            using var body = await JsonDocument.ParseAsync(context.Request.Body, cancellationToken: context.RequestAborted).ConfigureAwait(false);
            request = EmbeddingsRequest.Parse(body.RootElement);
            if (request.Model is { } name && name != model.Id) throw CompletionEndpoint.ModelNotFound(name);
            if (!model.IsEncoder) throw NotAnEncoder(model.Id);
            var generator = model.Embeddings;
            if (request.Dimensions is long wanted && wanted != generator.Dimensions)
                throw OpenAiException.BadRequest($"This model's embeddings have {generator.Dimensions} values; 'dimensions' asks for {wanted}, and this server does not shorten them.", "dimensions");
            var sequences = request.TokenIds ?? Encode(generator, request.Texts!);
            CheckTokenIds(generator, sequences, given: request.TokenIds is not null);
            foreach (int[] sequence in sequences) tokens += sequence.Length;
            vectors = await generator.EmbedAsync(sequences, context.RequestAborted).ConfigureAwait(false);
        }
        catch (Exception e) when (Translate(e, context) is { } error)
        {
            if (!context.RequestAborted.IsCancellationRequested) await error.WriteAsync(context.Response).ConfigureAwait(false);
            return;
        }

        try
        {
            await RespondAsync(context.Response, request, vectors, tokens, context.RequestAborted).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException && context.RequestAborted.IsCancellationRequested)
        {
            // The client left while its answer was written.
        }
    }

    /// <summary>The error a decoder answers: it generates text and has no embeddings.</summary>
    public static OpenAiException NotAnEncoder(string id) => OpenAiException.BadRequest(
        $"The model '{id}' is a decoder: it generates text (POST /v1/completions, /v1/chat/completions) and has no embeddings. Serve an encoder (a BERT model) for /v1/embeddings.",
        "model", "model_not_supported");

    private static int[][] Encode(KilnEmbeddingGenerator generator, IReadOnlyList<string> texts)
    {
        var sequences = new int[texts.Count][];
        for (int i = 0; i < texts.Count; i++) sequences[i] = generator.Tokenizer.Encode(texts[i], generator.MaxSequenceTokens);
        return sequences;
    }

    /// <summary>Token ids a client gave: each sequence within the model's limit, each id in its vocabulary (the request's fault, said as its field).</summary>
    private static void CheckTokenIds(KilnEmbeddingGenerator generator, IReadOnlyList<int[]> sequences, bool given)
    {
        if (!given) return;
        for (int s = 0; s < sequences.Count; s++)
        {
            string param = sequences.Count == 1 ? "input" : $"input[{s}]";
            if (sequences[s].Length > generator.MaxSequenceTokens)
            {
                throw OpenAiException.BadRequest($"'{param}' holds {sequences[s].Length} tokens; this model embeds at most {generator.MaxSequenceTokens} ([CLS] and [SEP] included).",
                    param, "context_length_exceeded");
            }
            foreach (int id in sequences[s])
            {
                if (id >= generator.VocabularySize)
                    throw OpenAiException.BadRequest($"'{param}' holds the token id {id}; this model's vocabulary has ids 0 to {generator.VocabularySize - 1}.", param);
            }
        }
    }

    private async Task RespondAsync(HttpResponse response, EmbeddingsRequest request, float[][] vectors, long tokens, CancellationToken cancellationToken)
    {
        var buffer = new ArrayBufferWriter<byte>(256 + vectors.Length * (vectors.Length > 0 ? vectors[0].Length : 0) * (request.Base64 ? 6 : 14));
        using (var json = new Utf8JsonWriter(buffer, JsonOutput.Options))
        {
            json.WriteStartObject();
            json.WriteString("object", "list");
            json.WriteStartArray("data");
            for (int i = 0; i < vectors.Length; i++)
            {
                json.WriteStartObject();
                json.WriteString("object", "embedding");
                json.WriteNumber("index", i);
                if (request.Base64)
                {
                    // OpenAI's base64 is the float32 values' little-endian bytes; .NET runs little-endian everywhere it runs Kiln.
                    json.WriteBase64String("embedding", MemoryMarshal.AsBytes(vectors[i].AsSpan()));
                }
                else
                {
                    json.WriteStartArray("embedding");
                    foreach (float value in vectors[i]) json.WriteNumberValue(value);
                    json.WriteEndArray();
                }
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteString("model", model.Id);
            json.WriteStartObject("usage");
            json.WriteNumber("prompt_tokens", tokens);
            json.WriteNumber("total_tokens", tokens);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        response.ContentType = "application/json";
        await response.Body.WriteAsync(buffer.WrittenMemory, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The OpenAI error for what went wrong before the answer; null for a bug, left to the host.</summary>
    private static OpenAiException? Translate(Exception e, HttpContext context) => e switch
    {
        OpenAiException error => error,
        JsonException json => OpenAiException.BadRequest($"The request body is not valid JSON: {json.Message}"),
        ObjectDisposedException => new OpenAiException(StatusCodes.Status503ServiceUnavailable, "The server is shutting down and takes no more requests.", type: "server_error"),
        // What the generator itself refuses (checked above already: a backstop that still names the field).
        ArgumentException argument => OpenAiException.BadRequest(argument.Message, "input"),
        OperationCanceledException when context.RequestAborted.IsCancellationRequested => new OpenAiException(499, "The client closed the request.", type: "client_closed_request"),
        _ => null,
    };
}
