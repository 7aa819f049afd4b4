namespace Kiln.Chat;

/// <summary>
/// One message of a conversation, as a chat template reads it (<c>message['role']</c>, <c>message.content</c>).
/// Templates know the roles "system", "user" and "assistant"; any other role is passed to the template as written.
/// </summary>
public sealed record ChatMessage(string Role, string Content);
