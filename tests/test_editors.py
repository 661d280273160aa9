"""Editor support outside the TUI: the Pygments lexer."""
import glob
import importlib
import importlib.metadata
import os
import tomllib

import pytest
from pygments.token import Comment, Error, Keyword, Name, Number

from netdsl.highlight import STYLE_NAMES, highlight_line
from netdsl.pygments_lexer import TOKEN_OF_STYLE, NetdslLexer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_FILES = sorted(glob.glob(os.path.join(ROOT, "specs", "*.net"))
                    + glob.glob(os.path.join(ROOT, "netdsl", "stdlib", "*.net")))


def read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def pygments_tokens(text: str) -> list[tuple]:
    return [(kind, value) for _, kind, value in NetdslLexer().get_tokens_unprocessed(text)]


# ---- the Pygments lexer


@pytest.mark.parametrize("path", SPEC_FILES, ids=os.path.basename)
def test_lexer_covers_every_bundled_spec_without_errors(path):
    text = read(path)
    tokens = pygments_tokens(text)
    assert "".join(value for _, value in tokens) == text  # every character, in order
    assert [value for kind, value in tokens if kind in Error] == []


def test_lexer_tells_the_parts_of_a_spec_apart():
    text = ("import rnn\n"
            "block basic(c, stride=1) {\n"
            "  in x\n"
            "  out x -> conv(c, 3, pad='same', bias=false) -> relu  # a comment\n"
            "}\n"
            "h = x -> basic(64) x 3 -> lstm(8)\n")
    tokens = [(kind, value) for kind, value in pygments_tokens(text) if value.strip()]
    assert (Keyword, "import") in tokens and (Keyword, "block") in tokens
    assert (Name.Builtin, "conv") in tokens and (Name.Builtin, "relu") in tokens
    assert (Name.Class, "basic") in tokens
    assert (Name.Class, "lstm") in tokens  # a block of the imported standard library module
    assert (Keyword.Constant, "false") in tokens
    assert (Keyword, "x") in tokens  # the repeat, while the input x stays a name
    assert (Name, "x") in tokens
    assert (Number, "3") in tokens and (Comment.Single, "# a comment") in tokens


def test_lexer_marks_a_character_the_language_rejects():
    tokens = pygments_tokens("y = x $ -> relu\n")
    assert (Error, "$") in tokens
    assert (Name.Builtin, "relu") in tokens  # lexing resumes after it


def test_every_highlight_style_has_a_pygments_token():
    assert set(TOKEN_OF_STYLE) == set(STYLE_NAMES)


def test_lexer_is_registered_as_a_pygments_entry_point():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)["project"]
    target = project["entry-points"]["pygments.lexers"]["netdsl"]
    module, _, attribute = target.partition(":")
    assert getattr(importlib.import_module(module), attribute) is NetdslLexer
    assert NetdslLexer.aliases[0] == "netdsl" and "*.net" in NetdslLexer.filenames
    installed = [e for e in importlib.metadata.entry_points(group="pygments.lexers")
                 if e.name == "netdsl"]
    if installed:  # an install that predates the entry point has none to look up
        from pygments.lexers import get_lexer_by_name  # only meaningful once installed

        assert type(get_lexer_by_name("netdsl")).__name__ == "NetdslLexer"
