"""Pass 1, parse: .net text -> `ast.Module`, every node with its source span.

The quick parser (netdsl.fast_parse) reads most specs; what it leaves, a mistake or a rare
construct, Lark's parser of the grammar reads (netdsl.lark_ast), imported only then: Lark
and its parser's modules took 0.05 s of every `netc check` of a spec without either."""
from __future__ import annotations

import re

from netdsl import ast
from netdsl.errors import Span
from netdsl.fast_parse import NotHandled, parse_quickly

__all__ = ["parse", "parse_with_lark", "source_lines"]


def parse(text: str, file: str = "<spec>") -> ast.Module:
    """Parse the text of a .net file.

    Raises
    ------
    SpecError
        At the first syntax error, located, with what was expected.
    """
    source = text if text.endswith("\n") else text + "\n"
    try:
        items = parse_quickly(source, file)
    except NotHandled:  # a mistake or a rare construct: Lark reads it and says what is wrong
        items = parse_with_lark(text, file)
    return ast.Module(file, items, tuple(_comments(text, file)))


def parse_with_lark(text: str, file: str = "<spec>") -> tuple:
    """The items of a module, read by Lark's parser of the grammar: the definition of the
    language and the source of every syntax error's message."""
    from netdsl import lark_ast  # Lark, for what the quick parser leaves (see above)

    return lark_ast.parse_with_lark(text, file)


def source_lines(text: str) -> list[str]:
    """The source lines as Lark counts them: split at newlines only."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return lines


_COMMENT_OR_STRING = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|#[^\n]*")


def _comments(text: str, file: str):
    if "#" not in text:  # most specs' quick answer: a line-by-line search finds nothing
        return
    for number, line in enumerate(source_lines(text), 1):
        for match in _COMMENT_OR_STRING.finditer(line):
            if match.group().startswith("#"):
                col = match.start() + 1
                yield ast.Comment(match.group(), Span(file, number, col, number, match.end()))
