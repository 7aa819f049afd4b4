using Kiln.Chat;

namespace Kiln.Runtime.Tests.Chat;

/// <summary>
/// The interpreter feature by feature, each expected string being what Jinja 3 renders with transformers' settings
/// (trim_blocks, lstrip_blocks, Python's str() of values, transformers' tojson).
/// </summary>
public class JinjaInterpreterTests
{
    private static string Render(string source, Dictionary<string, object?>? variables = null, DateTime? now = null) =>
        ChatTemplate.Parse(source, "<s>", "</s>").RenderWith(variables ?? [], now is { } at ? () => at : null);

    private static readonly Dictionary<string, object?> Values = new()
    {
        ["d"] = new Dictionary<string, object?> { ["a"] = "x" },
        ["l"] = new List<object?> { 1, 2, 3 },
        ["nothing"] = null,
        ["messages"] = new List<object?>
        {
            new ChatMessage("system", "S"),
            new ChatMessage("user", "U1"),
            new ChatMessage("assistant", "A"),
            new ChatMessage("user", "U2"),
        },
    };

    [Theory]
    [InlineData("a\n{% if true %}\nb\n{% endif %}\nc", "a\nb\nc")]                     // trim_blocks: the newline after a block tag goes
    [InlineData("a\n    {% if true %}\n    b\n    {% endif %}\nc", "a\n    b\nc")]     // lstrip_blocks: indentation before a block tag goes
    [InlineData("a {% if true %}b{% endif %}", "a b")]                                 // ...only when the tag starts its line
    [InlineData("a\n  {{ 'x' }}\nb", "a\n  x\nb")]                                     // print tags are neither stripped nor trimmed
    [InlineData("a  \n {{- 'x' -}} \n b", "axb")]                                      // "-" eats all whitespace on its side
    [InlineData("a\n\n{%- if true %}b{% endif %}", "ab")]
    [InlineData("a\n  {%+ if true %}b{% endif %}", "a\n  b")]                          // "+" keeps the indentation
    [InlineData("{% if true +%}\nb{% endif %}", "\nb")]                                // ...and the newline
    [InlineData("a {# a note #} b", "a  b")]
    [InlineData("a\n  {# a note #}\nb", "a\nb")]                                       // comments strip and trim like blocks
    [InlineData("x\n", "x")]                                                            // one trailing newline is dropped
    [InlineData("x\n\n", "x\n")]
    [InlineData("x\r\ny", "x\ny")]
    [InlineData("{% raw %}{{ not parsed }}{% endraw %}", "{{ not parsed }}")]
    public void WhitespaceIsControlledAsInTransformers(string source, string expected) => Assert.Equal(expected, Render(source));

    [Theory]
    [InlineData("{% for x in [1, 2, 3] %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.length }}{{ '!' if loop.first }}{{ '.' if loop.last }} {% endfor %}", "1/0/3! 2/1/3 3/2/3. ")]
    [InlineData("{% for x in 'abc' %}{{ x }}{{ loop.revindex }}{{ loop.revindex0 }}{% endfor %}", "a32b21c10")]
    [InlineData("{% for x in [1, 2, 3] %}{{ loop.previtem is defined }}{{ loop.nextitem | default('-') }}{% endfor %}", "False2True3True-")]
    [InlineData("{% for x in [] %}x{% else %}empty{% endfor %}", "empty")]
    [InlineData("{% for x in range(10) if x is odd %}{{ x }}{{ ',' if not loop.last }}{% endfor %}", "1,3,5,7,9")]
    [InlineData("{% for x in range(10) %}{% if x == 5 %}{% break %}{% endif %}{% if x is even %}{% continue %}{% endif %}{{ x }}{% endfor %}", "13")]
    [InlineData("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}", "a=1;b=2;")]
    [InlineData("{% for k, v in {'a': 1} | items %}{{ k }}{{ v }}{% endfor %}", "a1")]
    [InlineData("{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %}", "ba")]
    [InlineData("{% for x in range(3) %}{{ loop.cycle('a', 'b') }}{% endfor %}", "aba")]
    [InlineData("{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }} {% endfor %}{{ loop.index }}|{% endfor %}", "1x1 1y2 1|2x1 2y2 2|")]
    [InlineData("{% for m in messages[1:] %}{{ m.role[0] }}{% endfor %}", "uau")]
    [InlineData("{% for m in messages[::-1] %}{{ m['content'] }}{% endfor %}", "U2AU1S")]
    public void LoopsIterateAsJinjaDoes(string source, string expected) => Assert.Equal(expected, Render(source, Values));

    [Theory]
    [InlineData("{% set x = 1 %}{% for i in range(2) %}{% set x = 5 %}{% endfor %}{{ x }}", "1")]             // a loop's set stays in the loop
    [InlineData("{% set x = 1 %}{% for i in range(3) %}{% set x = x + 10 %}{{ x }},{% endfor %}{{ x }}", "11,11,11,1")] // ...and in its iteration
    [InlineData("{% for i in range(3) %}{% if i == 0 %}{% set y = 5 %}{% endif %}{{ y }},{% endfor %}", "5,,,")]
    [InlineData("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}", "6")]
    [InlineData("{% if true %}{% set y = 2 %}{% endif %}{{ y }}", "2")]                                         // an if's does not
    [InlineData("{% set a, b = [1, 2] %}{{ b }}{{ a }}", "21")]
    [InlineData("{% set greeting %}Hello {{ d.a }}{% endset %}{{ greeting | upper }}", "HELLO X")]
    [InlineData("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bo', punct='?') }}", "Hi Ann! Hi Bo?")]
    [InlineData("{% generation %}kept{% endgeneration %}", "kept")]
    public void SetAndMacrosFollowJinjasScoping(string source, string expected) => Assert.Equal(expected, Render(source, Values));

    [Theory]
    [InlineData("{{ 1 }}|{{ 1.5 }}|{{ 2.0 }}|{{ 1e20 }}|{{ 1e-5 }}|{{ 0.1 + 0.2 }}|{{ 1_000 }}", "1|1.5|2.0|1e+20|1e-05|0.30000000000000004|1000")]
    [InlineData("{{ true }}|{{ False }}|{{ none }}|{{ nothing }}|{{ [1, 'a', none] }}|{{ {'k': 'v'} }}|{{ (1, 2)[1] }}", "True|False|None|None|[1, 'a', None]|{'k': 'v'}|2")]
    [InlineData("{{ (1, 2) }}|{{ (1,) }}|{{ () }}|{{ {'a': 1}.items() | list }}|{{ (1, 2) == [1, 2] }}|{{ (1, 2) + (3,) }}|{{ (1, 2, 3)[1:] }}", "(1, 2)|(1,)|()|[('a', 1)]|False|(1, 2, 3)|(2, 3)")]
    [InlineData("{{ 'it\\'s' }}|{{ [\"it's\"] }}|{{ 'a\\tb\\u00e9\\x41' }}|{{ \"x\" 'y' }}", "it's|[\"it's\"]|a\tbéA|xy")]
    [InlineData("{{ 7 / 2 }}|{{ 4 / 2 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 7.5 % 2 }}|{{ 2 ** 10 }}|{{ -2 ** 2 }}", "3.5|2.0|3|-4|2|1.5|1024|4")]
    [InlineData("{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ (1 + 2) ~ 'a' }}|{{ 'ab' * 2 }}|{{ [1] + [2] }}|{{ -3 + 1 }}", "7|9|3a|abab|[1, 2]|-2")]
    [InlineData("{{ not true or true }}|{{ not (true or true) }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}|{{ 2 >= 2 }}", "True|False|True|False|True")]
    [InlineData("{{ 'b' in 'abc' }}|{{ 2 in [1, 2] }}|{{ 'k' in {'k': 1} }}|{{ 'x' not in 'abc' }}|{{ not 'x' in 'abc' }}", "True|True|True|True|True")]
    [InlineData("{{ 1 == 1.0 }}|{{ true == 1 }}|{{ '1' == 1 }}|{{ [1, 2] == [1, 2] }}|{{ none == none }}|{{ 'a' != 'b' }}", "True|True|False|True|True|True")]
    [InlineData("{{ 'yes' if 1 > 0 else 'no' }}|{{ 'yes' if 0 else 'no' }}|{{ 'x' if false }}|", "yes|no||")]
    [InlineData("{{ '' or 'fallback' }}|{{ 'a' and 'b' }}|{{ 0 and 'x' }}|{{ none or [] }}", "fallback|b|0|[]")]
    public void ExpressionsHavePythonsMeaning(string source, string expected) => Assert.Equal(expected, Render(source, Values));

    [Theory]
    [InlineData("{{ d.a }}|{{ d['a'] }}|{{ d.missing }}|{{ l[0] }}|{{ l[-1] }}|{{ l[5] }}|{{ l.0 }}", "x|x||1|3||1")]
    [InlineData("{{ l[1:] }}|{{ l[:-1] }}|{{ l[::-1] }}|{{ l[::2] }}|{{ l[-2:] }}|{{ l[5:] }}", "[2, 3]|[1, 2]|[3, 2, 1]|[1, 3]|[2, 3]|[]")]
    [InlineData("{{ 'hello'[1:3] }}|{{ 'hello'[::-1] }}|{{ 'hello'[0] }}|{{ 'hello'[-1] }}", "el|olleh|h|o")]
    [InlineData("{{ d.get('a') }}|{{ d.get('z', 'dflt') }}|{{ d.get('z') }}|{{ d.keys() | list }}|{{ d.values() | list }}", "x|dflt|None|['a']|['x']")]
    [InlineData("{{ messages[0].role }}|{{ messages[-1]['content'] }}|{{ messages | length }}|{{ messages[0].tool_calls is defined }}", "system|U2|4|False")]
    [InlineData("{{ nothing.attribute }}|{{ nothing is none }}|{{ missing is none }}|{{ nothing is not none }}", "|True|False|False")]
    public void LookupsFallBackToUndefined(string source, string expected) => Assert.Equal(expected, Render(source, Values));

    [Theory]
    [InlineData("{{ missing }}|{% if missing %}a{% else %}b{% endif %}|{{ missing is defined }}|{{ missing is undefined }}", "|b|False|True")]
    [InlineData("{% for x in missing %}x{% endfor %}|{{ missing | length }}|{{ missing | default('d') }}|{{ missing ~ 'x' }}|{{ 'a' in missing }}", "|0|d|x|False")]
    [InlineData("{{ tools is none }}|{{ documents is none }}|{{ tools is defined }}|{{ bos_token }}{{ eos_token }}", "True|True|True|<s></s>")]
    public void UndefinedIsEmptyAndFalse(string source, string expected) => Assert.Equal(expected, Render(source, Values));

    [Theory]
    [InlineData("{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|{{ '\\n\\na\\n'.strip('\\n') }}", "a b|a|a|a|a")]
    [InlineData("{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ 'x</think>y'.split('</think>')[-1] }}", "['a', 'b', '', 'c']|['a', 'b']|['a', 'b c']|['a,b', 'c']|y")]
    [InlineData("{{ 'Hello'.startswith('He') }}|{{ 'Hello'.endswith(('x', 'lo')) }}|{{ 'Hello'.startswith('he') }}", "True|True|False")]
    [InlineData("{{ 'Hello'.lower() }}|{{ 'Hello'.upper() }}|{{ 'hello world'.title() }}|{{ 'hELLO wORLD'.capitalize() }}", "hello|HELLO|Hello World|Hello world")]
    [InlineData("{{ 'aaa'.replace('a', 'b', 2) }}|{{ '-'.join(['a', 'b']) }}|{{ 'abcb'.find('b') }}|{{ 'abcb'.count('b') }}|{{ '42'.isdigit() }}", "bba|a-b|1|2|True")]
    public void StringMethodsAreCalledAsInPython(string source, string expected) => Assert.Equal(expected, Render(source, Values));

    [Theory]
    [InlineData("{{ '  x  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ 'abc' | upper }}|{{ 'ABC' | lower }}|{{ 'hELLO' | capitalize }}|{{ 'a b' | title }}", "x|a|ABC|abc|Hello|A B")]
    [InlineData("{{ [1, 2, 3] | length }}|{{ 'abc' | count }}|{{ [3, 1, 2] | first }}|{{ [3, 1, 2] | last }}|{{ [] | first is defined }}", "3|3|3|2|False")]
    [InlineData("{{ [1, 2] | join(', ') }}|{{ 'aXbX' | replace('X', '-') }}|{{ 'ab' | list }}|{{ 'abc' | reverse }}|{{ [1, 2] | reverse | list }}|{{ 42 | string ~ '!' }}", "1, 2|a-b-|['a', 'b']|cba|[2, 1]|42!")]
    [InlineData("{{ [3, 1, 2] | sort }}|{{ ['b', 'A', 'c'] | sort }}|{{ [3, 1, 2] | sort(reverse=true) }}|{{ [1, 2, 2, 1] | unique | list }}", "[1, 2, 3]|['A', 'b', 'c']|[3, 2, 1]|[1, 2]")]
    [InlineData("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(' ') }}|{{ messages | rejectattr('role', 'in', ['user', 'system']) | map(attribute='role') | list }}", "U1 U2|['assistant']")]
    [InlineData("{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3, 4] | reject('odd') | list }}|{{ ['a', ''] | select | list }}|{{ ['a', 'b'] | map('upper') | join }}", "[1, 3]|[2, 4]|['a']|AB")]
    [InlineData("{{ [1, 2, 3] | sum }}|{{ [1, 3, 2] | max }}|{{ [2, 1, 3] | min }}|{{ -3 | abs }}|{{ 2.567 | round(2) }}|{{ 2.5 | round }}|{{ 3.5 | round }}", "6|3|1|3|2.57|2.0|4.0")]
    [InlineData("{{ '5' | int + 1 }}|{{ 'x' | int }}|{{ '2.5' | float }}|{{ 3 | float }}|{{ '4.7' | int }}", "6|0|2.5|3.0|4")]
    [InlineData("{{ '' | default('d', true) }}|{{ '' | default('d') }}|{{ none | d('d') }}|{{ missing | d }}", "d||None|")]
    [InlineData("{{ 'a\\nb' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ '<a href=\"x\">' | e }}|{{ 'x' | safe }}", "a\n  b|  a\n  b|&lt;a href=&#34;x&#34;&gt;|x")]
    public void FiltersBehaveAsJinjas(string source, string expected) => Assert.Equal(expected, Render(source, Values));

    [Fact]
    public void ToJsonIsTransformersJsonDumps()
    {
        Assert.Equal("""{"name": "f", "args": [1, 2.5, true, null], "text": "é \"q\"\n\\"}""",
            Render("""{{ {'name': 'f', 'args': [1, 2.5, true, none], 'text': 'é "q"\n\\'} | tojson }}"""));
        Assert.Equal("\"<tag>&'\"", Render("{{ \"<tag>&'\" | tojson }}")); // no HTML escaping, unlike Jinja's own tojson
        Assert.Equal("{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {},\n  \"c\": []\n}", Render("{{ {'a': [1, 2], 'b': {}, 'c': []} | tojson(indent=2) }}"));
        Assert.Equal("{\"a\": 1, \"b\": 2}", Render("{{ {'b': 2, 'a': 1} | tojson(sort_keys=true) }}"));
        Assert.Equal("\"\\u00e9\"", Render("{{ 'é' | tojson(ensure_ascii=true) }}"));
    }

    [Theory]
    [InlineData("{{ 1 is number }}|{{ 1.0 is float }}|{{ 1 is integer }}|{{ true is integer }}|{{ true is boolean }}|{{ 'a' is string }}", "True|True|True|False|True|True")]
    [InlineData("{{ {} is mapping }}|{{ [] is iterable }}|{{ 'a' is sequence }}|{{ 3 is divisibleby 3 }}|{{ 3 is odd }}|{{ 4 is even }}|{{ range is callable }}", "True|True|True|True|True|True|True")]
    [InlineData("{{ false is sameas false }}|{{ 0 is sameas false }}|{{ 'a' is in 'abc' }}|{{ 1 is eq 1 }}|{{ 2 is gt(1) }}|{{ 'a' is not string }}", "True|False|True|True|True|False")]
    [InlineData("{{ 'abc' is lower }}|{{ 'ABC' is upper }}|{{ none is none }}|{{ true is true }}|{{ 1 is true }}", "True|True|True|True|False")]
    public void TestsBehaveAsJinjas(string source, string expected) => Assert.Equal(expected, Render(source, Values));

    [Theory]
    [InlineData("{{ range(3) | list }}|{{ range(1, 6, 2) | list }}|{{ range(5, 0, -2) | list }}|{{ range(0) | list }}", "[0, 1, 2]|[1, 3, 5]|[5, 3, 1]|[]")]
    [InlineData("{{ dict(a=1, b='x') }}|{{ namespace(a=1).a }}|{% set ns = namespace({'k': 2}) %}{{ ns.k }}", "{'a': 1, 'b': 'x'}|1|2")]
    public void GlobalsAreJinjasAndTransformers(string source, string expected) => Assert.Equal(expected, Render(source));

    [Fact]
    public void StrftimeNowFormatsTheRenderTime()
    {
        var now = new DateTime(2024, 7, 26, 9, 5, 3);

        Assert.Equal("26 Jul 2024", Render("{{ strftime_now('%d %b %Y') }}", now: now));
        Assert.Equal("2024-07-26 09:05:03 AM Friday July", Render("{{ strftime_now('%Y-%m-%d %H:%M:%S %p %A %B') }}", now: now));
    }

    [Fact]
    public void QwenToolCallsRenderThroughTheToolBranches()
    {
        // Qwen2.5's tool path: tools listed as JSON in the system prompt, a call as JSON in the assistant turn, the
        // result as a user turn of <tool_response>.
        var template = ChatTemplate.Parse(FamilyTemplates.Qwen25Instruct, "", "<|im_end|>");
        var weather = new Dictionary<string, object?>
        {
            ["type"] = "function",
            ["function"] = new Dictionary<string, object?>
            {
                ["name"] = "get_weather",
                ["description"] = "Weather of a city",
                ["parameters"] = new Dictionary<string, object?>
                {
                    ["type"] = "object",
                    ["properties"] = new Dictionary<string, object?> { ["city"] = new Dictionary<string, object?> { ["type"] = "string" } },
                    ["required"] = new List<object?> { "city" },
                },
            },
        };
        var call = new Dictionary<string, object?>
        {
            ["type"] = "function",
            ["function"] = new Dictionary<string, object?> { ["name"] = "get_weather", ["arguments"] = new Dictionary<string, object?> { ["city"] = "Paris" } },
        };
        var messages = new List<object?>
        {
            new Dictionary<string, object?> { ["role"] = "user", ["content"] = "Weather in Paris?" },
            new Dictionary<string, object?> { ["role"] = "assistant", ["content"] = "", ["tool_calls"] = new List<object?> { call } },
            new Dictionary<string, object?> { ["role"] = "tool", ["content"] = "{\"temp\": 21}" },
        };

        string rendered = template.RenderWith(new Dictionary<string, object?>
        {
            ["messages"] = messages,
            ["tools"] = new List<object?> { weather },
            ["add_generation_prompt"] = true,
        });

        Assert.Equal(
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            + "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            + """{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"""
            + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            + """{"name": <function-name>, "arguments": <args-json-object>}"""
            + "\n</tool_call><|im_end|>\n"
            + "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            + "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"
            + "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n"
            + "<|im_start|>assistant\n",
            rendered);
    }

    [Fact]
    public void Qwen3HonoursEnableThinkingFalse()
    {
        var template = ChatTemplate.Parse(FamilyTemplates.Qwen3, "", "<|im_end|>");
        string rendered = template.RenderWith(new Dictionary<string, object?>
        {
            ["messages"] = new List<object?> { new ChatMessage("user", "Hi") },
            ["add_generation_prompt"] = true,
            ["enable_thinking"] = false,
        });

        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", rendered);
    }
}
