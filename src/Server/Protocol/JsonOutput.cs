using System.Text.Encodings.Web;
using System.Text.Json;

namespace Kiln.Server.Protocol;

/// <summary>How every response body is written.</summary>
internal static class JsonOutput
{
    /// <summary>
    /// Text as it is: the default encoder escapes quotes, '+', '&lt;' and every non-ASCII character for safety inside
    /// HTML, which an API body never is (a reply's "'" would read \u0027, a Chinese one all \uXXXX).
    /// </summary>
    public static JsonWriterOptions Options { get; } = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
}
