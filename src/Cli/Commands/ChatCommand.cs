using System.CommandLine;
using System.Diagnostics;
using Kiln.Chat;
using Kiln.Cli.Loading;
using Kiln.Engine.Serving;
using Microsoft.Extensions.AI;
using AIChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace Kiln.Cli.Commands;

/// <summary>
/// kiln chat: a conversation at the terminal. Each line read from stdin is a user turn; the reply streams to stdout.
/// The conversation goes through <see cref="KilnChatClient"/> with the file's own chat template (or Kiln's plain
/// fallback format when the file has none), so it is what an <see cref="IChatClient"/> user of the library gets.
/// "/reset" starts over, "/exit" or the end of input ends the chat.
/// </summary>
internal static class ChatCommand
{
    /// <summary>The most tokens a conversation holds when the file declares a longer (or no) trained context: the KV cache is sized for it.</summary>
    private const int MaxConversationTokens = 2048;

    public static Command Create(CliConsole console)
    {
        var model = CommonOptions.Model();
        var maxTokens = new Option<int?>("--max-tokens", "-n")
        {
            Description = "Tokens per reply at most (default: until the reply ends or the context is full).",
            CustomParser = result => CommonOptions.Parse<int?>(result, "a whole number, 1 or more", (string text, out int? value) =>
            {
                bool ok = int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int parsed) && parsed >= 1;
                value = parsed;
                return ok;
            }),
        };
        var temperature = CommonOptions.Temperature();
        var seed = CommonOptions.Seed();
        var system = new Option<string?>("--system") { Description = "A system message that opens the conversation." };
        var command = new Command("chat", "Chat with a model at the terminal, in its own chat template.") { model, maxTokens, temperature, seed, system };
        command.SetAction((result, cancellation) => ChatAsync(console, result.GetValue(model)!, new ChatOptions
        {
            MaxOutputTokens = result.GetValue(maxTokens),
            Temperature = result.GetValue(temperature),
            Seed = result.GetValue(seed) is ulong value ? unchecked((long)value) : null,
        }, result.GetValue(system), cancellation));
        return command;
    }

    private static async Task<int> ChatAsync(CliConsole console, string path, ChatOptions options, string? system, CancellationToken cancellation)
    {
        var phases = new Phases(console);
        using var loaded = LoadedModel.Load(path, phases);
        int context = Math.Min(loaded.TrainedContext ?? MaxConversationTokens, MaxConversationTokens);
        await using var engine = loaded.CreateEngine(EngineSizing.ForContext(loaded.Model, context, tokenBudget: 256, maxRunningRequests: 1), phases);
        var template = ChatTemplate.FromModelFile(loaded.File, loaded.Tokenizer);
        using var client = new KilnChatClient(engine, template, Path.GetFileNameWithoutExtension(path));
        console.Error.WriteLine(template.IsFallback
            ? "kiln: the file has no chat template; using Kiln's plain format (User: / Assistant:)."
            : "kiln: chatting in the file's chat template.");
        console.Error.WriteLine("kiln: type a message and Enter; /reset starts over, /exit (or Ctrl+D) ends.");

        var conversation = new List<AIChatMessage>();
        if (system is not null) conversation.Add(new AIChatMessage(ChatRole.System, system));
        int opening = conversation.Count;
        while (true)
        {
            if (console.ErrorIsTerminal) console.Error.Write("> ");
            string? line = await console.In.ReadLineAsync(cancellation);
            if (line is null || line.Trim() == "/exit") break;
            if (line.Trim() == "/reset")
            {
                conversation.RemoveRange(opening, conversation.Count - opening);
                console.Error.WriteLine("kiln: a new conversation.");
                continue;
            }
            if (line.Length == 0) continue;

            conversation.Add(new AIChatMessage(ChatRole.User, line));
            var reply = new System.Text.StringBuilder();
            var clock = Stopwatch.StartNew();
            int tokens = 0;
            try
            {
                await foreach (var update in client.GetStreamingResponseAsync(conversation, options, cancellation))
                {
                    console.Out.Write(update.Text);
                    console.Out.Flush();
                    reply.Append(update.Text);
                    foreach (var content in update.Contents)
                        if (content is UsageContent usage) tokens = (int)(usage.Details.OutputTokenCount ?? 0);
                }
            }
            catch (ArgumentException e) when (!cancellation.IsCancellationRequested)
            {
                // The conversation outgrew the context: say so and let the user start over, without ending the chat.
                conversation.RemoveAt(conversation.Count - 1);
                console.Error.WriteLine($"kiln: error: {e.Message.Split(" (Parameter", 2)[0]} Type /reset to start over.");
                continue;
            }
            console.Out.WriteLine();
            conversation.Add(new AIChatMessage(ChatRole.Assistant, reply.ToString()));
            console.Error.WriteLine($"kiln: {tokens} tokens in {clock.Elapsed.TotalSeconds:F2} s");
        }
        return ExitCodes.Ok;
    }
}
