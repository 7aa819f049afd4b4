namespace Kiln.Chat;

/// <summary>
/// A chat template that cannot be parsed, or that failed while rendering: the message says what, prefixed with the
/// template's line and column ("3:14: unexpected '}'"). When the template itself refused the conversation through
/// <c>raise_exception('...')</c> (Gemma's "System role not supported"), the message is the template's own, word for
/// word, and <see cref="IsRaisedByTemplate"/> is set: it is meant for whoever wrote the conversation.
/// </summary>
public sealed class ChatTemplateException : Exception
{
    internal ChatTemplateException(string message, int line, int column, bool raisedByTemplate = false)
        : base(raisedByTemplate || line <= 0 ? message : $"{line}:{column}: {message}")
    {
        Line = line > 0 ? line : null;
        Column = line > 0 ? column : null;
        IsRaisedByTemplate = raisedByTemplate;
    }

    /// <summary>The 1-based line in the template where the problem is, when known.</summary>
    public int? Line { get; }

    /// <summary>The 1-based column in the template where the problem is, when known.</summary>
    public int? Column { get; }

    /// <summary>Whether the template's own <c>raise_exception</c> ended the rendering (the message is the template's).</summary>
    public bool IsRaisedByTemplate { get; }
}
