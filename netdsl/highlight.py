"""Syntax highlighting for .net text, from the Lark lexer's own terminals: the TUI's
editor and the Pygments lexer (netdsl.pygments_lexer) both colour with it.

Each line is lexed on its own, so a broken line never spoils the colours of the
others and a keystroke re-lexes one line (results are cached by line text). A
character the lexer rejects is marked and lexing resumes after it.
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

from lark.exceptions import UnexpectedCharacters

from netdsl.lark_parser import parser
from netdsl.ops import OPS
from netdsl.vocabulary import CONSTANTS, keyword_terminals

__all__ = ["Token", "highlight_line", "highlight_text", "block_names", "STYLE_NAMES"]

# highlight name of each terminal; keywords are found from the grammar itself
_TERMINAL_STYLES = {
    "COMMENT": "comment", "STRING": "string", "NUMBER": "number", "INT": "number",
    "_ARROW": "operator", "ADD_OP": "operator", "MUL_OP": "operator", "MINUS": "operator",
    "EQUAL": "operator", "COLON": "punctuation", "COMMA": "punctuation",
    "LPAR": "punctuation.bracket", "RPAR": "punctuation.bracket",
    "LSQB": "punctuation.bracket", "RSQB": "punctuation.bracket",
    "LBRACE": "punctuation.bracket", "RBRACE": "punctuation.bracket",
}
STYLE_NAMES = ("comment", "string", "number", "operator", "punctuation", "punctuation.bracket",
               "keyword", "function", "type", "constant", "variable", "error")


class Token(NamedTuple):
    """A highlighted piece of one line: columns count from 0, `end` is exclusive."""

    start: int
    end: int
    style: str


def _raw_tokens(line: str) -> list[tuple[str, int, int]]:
    """(terminal, start, end) of each token of one line; a rejected character is 'ERROR'."""
    # lexed with its newline, so that a `\\` continuing the line is the lexer's, not an error
    text, tokens, offset = line + "\n", [], 0
    while offset < len(line):
        try:
            for tok in parser().lex(text[offset:], dont_ignore=True):
                start = offset + tok.column - 1
                if start < len(line):
                    tokens.append((tok.type, start, min(len(line), start + len(tok.value))))
            break
        except UnexpectedCharacters as exc:  # tokens before it were already kept
            bad = offset + exc.pos_in_stream
            tokens.append(("ERROR", bad, bad + 1))
            offset = bad + 1
    return tokens


def block_names(text: str) -> frozenset[str]:
    """Names a spec calls as blocks, found without parsing it (the text may be broken):
    its own blocks and shared instances, and the blocks of the standard library modules
    it imports."""
    names = set(_DEFINED.findall(text))
    for module in _STDLIB_IMPORT.findall(text):
        source = resources.files("netdsl.stdlib").joinpath(f"{module}.net")
        if source.is_file():
            names.update(_DEFINED.findall(source.read_text()))
    return frozenset(names)


_DEFINED = re.compile(r"^[ \t]*(?:block|share)[ \t]+([A-Za-z_][A-Za-z_0-9]*)", re.M)
_STDLIB_IMPORT = re.compile(r"^[ \t]*import[ \t]+([A-Za-z_][A-Za-z_0-9]*)", re.M)


@lru_cache(maxsize=8192)
def highlight_line(line: str, blocks: frozenset[str] = frozenset()) -> tuple[Token, ...]:
    """The highlighted tokens of one line of a spec; `blocks` are the names of its blocks."""
    raw = [t for t in _raw_tokens(line) if not t[0].startswith("__IGNORE")]
    out = []
    for i, (kind, start, end) in enumerate(raw):
        word = line[start:end]
        start += len(word) - len(word.lstrip())  # an arrow's token holds the spaces after it
        end -= len(word) - len(word.rstrip())
        word = word.strip()
        before = raw[i - 1][0] if i else None
        after = raw[i + 1][0] if i + 1 < len(raw) else None
        style = _style(kind, word, before, after, blocks)
        if style:
            out.append(Token(start, end, style))
    return tuple(out)


def _style(kind: str, word: str, before, after, blocks) -> str | None:
    if kind in _TERMINAL_STYLES:
        return _TERMINAL_STYLES[kind]
    if kind == "ERROR":
        return "error"
    if kind in keyword_terminals():
        return "keyword"
    if kind == "REPEAT":
        # `x` repeats a stage only right after one (`-> basic(64) x 3`); elsewhere it is a name
        return "keyword" if before in ("RPAR", "NAME") and after in ("NUMBER", "NAME", "LPAR") \
            else "variable"
    if kind == "NAME":
        if word in CONSTANTS:
            return "constant"
        if word in blocks:
            return "type"
        if word in OPS and (after == "LPAR" or before == "_ARROW"):
            return "function"
        return "variable"
    return None


def highlight_text(text: str, blocks: frozenset[str] = frozenset()) -> list[tuple[Token, ...]]:
    """Tokens of every line of `text`."""
    return [highlight_line(line, blocks) for line in text.split("\n")]
