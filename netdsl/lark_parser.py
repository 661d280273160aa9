"""The Lark parser of grammar/netdsl.lark, built once: what parsing and the catalogue of
syntax mistakes (netdsl.syntax_errors) both run."""
from __future__ import annotations

from functools import lru_cache

from lark import Lark

__all__ = ["parser"]

_OPENING = {"LPAR", "LSQB"}
_CLOSING = {"RPAR", "RSQB"}


class _BracketNewlines:
    """Post-lexer: newlines inside ( ) and [ ] do not end a statement."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for token in stream:
            if token.type in _OPENING:
                depth += 1
            elif token.type in _CLOSING:
                depth = max(0, depth - 1)
            elif token.type == "_NL" and depth:
                continue
            yield token


@lru_cache(maxsize=None)
def parser() -> Lark:
    """The LALR parser, built once from the packaged grammar."""
    return Lark.open_from_package(
        "netdsl.grammar",
        "netdsl.lark",
        parser="lalr",
        lexer="contextual",
        postlex=_BracketNewlines(),
        propagate_positions=True,
        maybe_placeholders=False,
        cache=True,  # the grammar analysis is stored in the temp folder after the first run
    )
