using Kiln.Chat;

namespace Kiln.Runtime.Tests.Chat;

/// <summary>
/// Each family's real template (<see cref="FamilyTemplates"/>) renders a system + user + assistant + user
/// conversation to exactly the text transformers' apply_chat_template(..., tokenize=False) gives, with and without
/// the generation prompt. The expected strings follow each template step by step with transformers' Jinja settings
/// (trim_blocks, lstrip_blocks).
/// </summary>
public class FamilyTemplateTests
{
    private static readonly ChatMessage[] Conversation =
    [
        new("system", "You are a helpful assistant"),
        new("user", "Hello"),
        new("assistant", "Hi there"),
        new("user", "Who are you"),
    ];

    private static readonly ChatMessage[] WithoutSystem = Conversation[1..];

    [Fact]
    public void Llama2ChatPutsTheSystemPromptInsideTheFirstInstruction()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Llama2Chat, "<s>", "</s>");
        const string expected =
            "<s>[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST] Hi there </s><s>[INST] Who are you [/INST]";

        Assert.Equal(expected, template.Render(Conversation, addGenerationPrompt: true));
        Assert.Equal(expected, template.Render(Conversation, addGenerationPrompt: false)); // the template has no generation prompt
        Assert.Equal("<s>[INST] Hello [/INST] Hi there </s><s>[INST] Who are you [/INST]", template.Render(WithoutSystem));
    }

    [Fact]
    public void Llama2ChatStripsContentAndRefusesRolesOutOfTurn()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Llama2Chat, "<s>", "</s>");

        Assert.Equal("<s>[INST] Hi [/INST] Hello </s>", template.Render([new("user", "  Hi\n"), new("assistant", "\tHello  ")]));
        var error = Assert.Throws<ChatTemplateException>(() => template.Render([new("user", "a"), new("user", "b")]));
        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", error.Message);
        Assert.True(error.IsRaisedByTemplate);
    }

    [Fact]
    public void Llama3InstructWrapsEachMessageInHeaderAndEndOfTurn()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Llama3Instruct, "<|begin_of_text|>", "<|eot_id|>");
        const string turns =
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            + "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>";

        Assert.Equal(turns + "<|start_header_id|>assistant<|end_header_id|>\n\n", template.Render(Conversation, addGenerationPrompt: true));
        Assert.Equal(turns, template.Render(Conversation, addGenerationPrompt: false));
    }

    [Fact]
    public void Llama3InstructTrimsOnlyTheContent()
    {
        // '...\n\n'+ message['content'] | trim + '<|eot_id|>': the filter binds to the content before the additions.
        var template = ChatTemplate.Parse(FamilyTemplates.Llama3Instruct, "<|begin_of_text|>", "<|eot_id|>");

        Assert.Equal("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nI am here<|eot_id|>",
            template.Render([new("user", "   I am here \n ")], addGenerationPrompt: false));
    }

    [Fact]
    public void Qwen25RendersChatMLWithTheSystemPromptFirst()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Qwen25Instruct, "", "<|im_end|>");
        const string turns =
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
            + "<|im_start|>user\nHello<|im_end|>\n"
            + "<|im_start|>assistant\nHi there<|im_end|>\n"
            + "<|im_start|>user\nWho are you<|im_end|>\n";

        Assert.Equal(turns + "<|im_start|>assistant\n", template.Render(Conversation, addGenerationPrompt: true));
        Assert.Equal(turns, template.Render(Conversation, addGenerationPrompt: false));
    }

    [Fact]
    public void Qwen25AddsItsDefaultSystemPromptWhenThereIsNone()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Qwen25Instruct, "", "<|im_end|>");

        Assert.Equal(
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            + "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
            + "<|im_start|>assistant\n",
            template.Render(WithoutSystem));
    }

    [Fact]
    public void Qwen3RendersThePlainChatPath()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Qwen3, "", "<|im_end|>");
        const string turns =
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
            + "<|im_start|>user\nHello<|im_end|>\n"
            + "<|im_start|>assistant\nHi there<|im_end|>\n"
            + "<|im_start|>user\nWho are you<|im_end|>\n";

        Assert.Equal(turns + "<|im_start|>assistant\n", template.Render(Conversation, addGenerationPrompt: true));
        Assert.Equal(turns, template.Render(Conversation, addGenerationPrompt: false));
    }

    [Fact]
    public void Qwen3KeepsTheThinkingOfTheLatestReplyOnly()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Qwen3, "", "<|im_end|>");
        ChatMessage[] answered = [new("user", "2+2?"), new("assistant", "<think>\nadd them\n</think>\n\n4")];

        // After the last user query the reply keeps its reasoning, in a normalized think block.
        Assert.Equal("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nadd them\n</think>\n\n4<|im_end|>\n",
            template.Render(answered, addGenerationPrompt: false));
        // Once another query follows, only the answer stays.
        Assert.Equal("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n",
            template.Render([.. answered, new("user", "And 3+3?")]));
        // A final reply without reasoning still gets an empty think block.
        Assert.Equal("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHi there<|im_end|>\n",
            template.Render([new("user", "Hello"), new("assistant", "Hi there")], addGenerationPrompt: false));
    }

    [Fact]
    public void Gemma2RefusesASystemMessage()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Gemma2, "<bos>", "<eos>");

        foreach (bool addGenerationPrompt in new[] { true, false })
        {
            var error = Assert.Throws<ChatTemplateException>(() => template.Render(Conversation, addGenerationPrompt));
            Assert.Equal("System role not supported", error.Message);
            Assert.True(error.IsRaisedByTemplate);
            Assert.Equal((1, 59), (error.Line, error.Column)); // the raise_exception call
        }
    }

    [Fact]
    public void Gemma2NamesTheAssistantModelAndTrimsContent()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Gemma2, "<bos>", "<eos>");
        const string turns =
            "<bos><start_of_turn>user\nHello<end_of_turn>\n"
            + "<start_of_turn>model\nHi there<end_of_turn>\n"
            + "<start_of_turn>user\nWho are you<end_of_turn>\n";

        Assert.Equal(turns + "<start_of_turn>model\n", template.Render(WithoutSystem, addGenerationPrompt: true));
        Assert.Equal(turns, template.Render(WithoutSystem, addGenerationPrompt: false));
        Assert.Equal("<bos><start_of_turn>user\nHi<end_of_turn>\n", template.Render([new("user", "  Hi  ")], addGenerationPrompt: false));
    }

    [Fact]
    public void Phi3MiniMarksRolesAndEndsWithEosWithoutAGenerationPrompt()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Phi3Mini4k, "<s>", "<|endoftext|>");
        const string turns =
            "<|system|>\nYou are a helpful assistant<|end|>\n"
            + "<|user|>\nHello<|end|>\n"
            + "<|assistant|>\nHi there<|end|>\n"
            + "<|user|>\nWho are you<|end|>\n";

        Assert.Equal(turns + "<|assistant|>\n", template.Render(Conversation, addGenerationPrompt: true));
        Assert.Equal(turns + "<|endoftext|>", template.Render(Conversation, addGenerationPrompt: false));
    }

    [Fact]
    public void Phi3MiniFirstReleaseDropsTheSystemMessage()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Phi3Mini4kFirstRelease, "<s>", "<|endoftext|>");

        Assert.Equal("<s><|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n",
            template.Render(Conversation));
    }
}
