"""A Pygments lexer for .net specs: `pygmentize -l netdsl`, rich and mkdocs colour specs.

It colours as the TUI's editor does, by the same line highlighter (netdsl.highlight, the
grammar's own lexer and the op registry), mapping its style names to Pygments tokens. It
is registered under the `pygments.lexers` entry point in pyproject.toml.
"""
from __future__ import annotations

from pygments.lexer import Lexer
from pygments.token import (
    Comment,
    Error,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Text,
    Whitespace,
)

from netdsl.highlight import STYLE_NAMES, block_names, highlight_line

__all__ = ["NetdslLexer", "TOKEN_OF_STYLE"]

TOKEN_OF_STYLE = {
    "comment": Comment.Single,
    "string": String,
    "number": Number,
    "operator": Operator,
    "punctuation": Punctuation,
    "punctuation.bracket": Punctuation,
    "keyword": Keyword,
    "function": Name.Builtin,   # a layer: conv, relu, dense
    "type": Name.Class,         # a block or shared instance the spec calls
    "constant": Keyword.Constant,
    "variable": Name,
    "error": Error,
}


class NetdslLexer(Lexer):
    """Lexer for netdsl's `.net` network specs."""

    name = "netdsl"
    aliases = ["netdsl", "net"]
    filenames = ["*.net"]
    mimetypes = ["text/x-netdsl"]

    def get_tokens_unprocessed(self, text):
        blocks = block_names(text)
        offset = 0
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            column = 0
            for token in highlight_line(body, blocks):
                if token.start > column:
                    yield from _gap(offset + column, body[column:token.start])
                yield offset + token.start, TOKEN_OF_STYLE[token.style], body[token.start:token.end]
                column = token.end
            if column < len(body):
                yield from _gap(offset + column, body[column:])
            if len(line) > len(body):
                yield offset + len(body), Whitespace, line[len(body):]
            offset += len(line)


def _gap(index: int, text: str):
    """What lies between highlighted tokens: spaces, or a `\\` that continues the line."""
    yield index, Whitespace if text.isspace() else Text, text
