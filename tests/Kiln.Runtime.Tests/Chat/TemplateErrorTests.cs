using Kiln.Chat;

namespace Kiln.Runtime.Tests.Chat;

/// <summary>Bad templates and failed renders say what went wrong and where (line:column of the template).</summary>
public class TemplateErrorTests
{
    [Theory]
    [InlineData("Hello {{ name", 1, 7, "the tag is never closed: expected '}}'")]
    [InlineData("{% if x %}a", 1, 12, "the template ends inside the 'if' block opened at 1:4, which needs 'endif'")]
    [InlineData("{% for x in y %}{% endif %}", 1, 20, "'endif' comes inside the 'for' block opened at 1:4, which needs 'endfor'")]
    [InlineData("{% endfor %}", 1, 4, "unknown tag 'endfor' (no block is open here)")]
    [InlineData("{% frobnicate %}", 1, 4, "unknown tag 'frobnicate'")]
    [InlineData("{{ x | nosuch }}", 1, 8, "no filter named 'nosuch'")]
    [InlineData("{{ x is nosuch }}", 1, 9, "no test named 'nosuch'")]
    [InlineData("line one\n{{ 1 +* 2 }}", 2, 7, "unexpected '*', expected an expression")]
    [InlineData("{{ 'abc }}", 1, 4, "the string is never closed")]
    [InlineData("{{ (1 + 2 }}", 1, 11, "unexpected '}', expected ')' to close the one at 1:4")]
    [InlineData("{{ 1 ) }}", 1, 6, "unexpected ')'")]
    [InlineData("{# note", 1, 1, "the comment is never closed: expected '#}'")]
    [InlineData("{% set x %}a", 1, 13, "the template ends inside the 'set' block opened at 1:4, which needs 'endset'")]
    [InlineData("{{ a b }}", 1, 6, "expected end of print statement, got 'b'")]
    [InlineData("{% break %}", 1, 4, "'break' is only allowed inside a for loop")]
    [InlineData("{% for x in y recursive %}{% endfor %}", 1, 15, "recursive loops are not supported")]
    public void ParseErrorsNameTheirPlace(string source, int line, int column, string message)
    {
        var error = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(source));

        Assert.Equal($"{line}:{column}: {message}", error.Message);
        Assert.Equal((line, column), (error.Line, error.Column));
        Assert.False(error.IsRaisedByTemplate);
    }

    [Theory]
    [InlineData("a\n{{ messages[0].nope.x }}", 2, 20, "'dict object' has no attribute 'nope'")]
    [InlineData("{{ missing.x }}", 1, 11, "'missing' is undefined")]
    [InlineData("{{ missing + 1 }}", 1, 12, "'missing' is undefined")]
    [InlineData("{{ 'a' + 1 }}", 1, 8, "can only concatenate str (not \"int\") to str")]
    [InlineData("{{ 1 < 'a' }}", 1, 4, "'<' not supported between instances of 'int' and 'str'")]
    [InlineData("{{ 1 / 0 }}", 1, 6, "division by zero")]
    [InlineData("{% for x in 5 %}{% endfor %}", 1, 13, "'int' object is not iterable")]
    [InlineData("{% set x = 1 %}{% set x.y = 2 %}", 1, 23, "cannot assign attribute 'y' on 'x': it is not a namespace()")]
    [InlineData("{% for a, b in [[1, 2, 3]] %}{% endfor %}", 1, 8, "too many values to unpack (expected 2)")]
    [InlineData("{{ 'x'() }}", 1, 4, "'str' object is not callable")]
    [InlineData("{{ 'x'.format(1) }}", 1, 7, "'str object' has no attribute 'format'")]
    [InlineData("{{ range(200000) }}", 1, 4, "range too big: the sandbox blocks ranges larger than 100000")]
    [InlineData("{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}", 1, 20, "macro 'm' nests deeper than 64 calls")]
    [InlineData("{{ {} | tojson }}{{ missing | tojson }}", 1, 31, "Object of type Undefined is not JSON serializable")]
    public void RenderErrorsNameTheExpressionThatFailed(string source, int line, int column, string message)
    {
        var template = ChatTemplate.Parse(source);

        var error = Assert.Throws<ChatTemplateException>(() => template.Render([new("user", "Hi")]));

        Assert.Equal($"{line}:{column}: {message}", error.Message);
        Assert.Equal((line, column), (error.Line, error.Column));
    }

    [Fact]
    public void RaiseExceptionGivesTheTemplatesOwnMessage()
    {
        var template = ChatTemplate.Parse("{% if messages | length > 1 %}\n  {{ raise_exception('Only one message, please: ' ~ messages | length) }}\n{% endif %}ok");

        Assert.Equal("ok", template.Render([new("user", "Hi")]));
        var error = Assert.Throws<ChatTemplateException>(() => template.Render([new("user", "a"), new("assistant", "b")]));
        Assert.Equal("Only one message, please: 2", error.Message);
        Assert.True(error.IsRaisedByTemplate);
        Assert.Equal((2, 6), (error.Line, error.Column));
    }
}
