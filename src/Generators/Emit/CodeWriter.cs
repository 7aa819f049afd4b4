using System;
using System.Text;

namespace Kiln.Generators.Emit;

/// <summary>An indenting source writer (4 spaces, \n line endings, no trailing whitespace).</summary>
internal sealed class CodeWriter
{
    private readonly StringBuilder _builder = new();
    private int _indent;

    public CodeWriter Line(string text = "")
    {
        if (text.Length == 0)
        {
            _builder.Append('\n');
            return this;
        }
        _builder.Append(' ', _indent * 4).Append(text).Append('\n');
        return this;
    }

    public CodeWriter Open(string text)
    {
        if (text.Length > 0) Line(text);
        Line("{");
        _indent++;
        return this;
    }

    public CodeWriter Close(string suffix = "")
    {
        _indent--;
        Line("}" + suffix);
        return this;
    }

    public IDisposable Block(string text)
    {
        Open(text);
        return new Closer(this);
    }

    public override string ToString() => _builder.ToString();

    private sealed class Closer : IDisposable
    {
        private readonly CodeWriter _writer;

        public Closer(CodeWriter writer) => _writer = writer;

        public void Dispose() => _writer.Close();
    }
}
