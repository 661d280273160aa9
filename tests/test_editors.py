"""Editor support outside the TUI: the Pygments lexer and the generated TextMate grammar."""
import glob
import importlib
import importlib.metadata
import json
import os
import re
import tomllib

import pytest
from pygments.token import Comment, Error, Keyword, Name, Number

from netdsl.highlight import STYLE_NAMES, highlight_line
from netdsl.ops import OPS
from netdsl.pygments_lexer import TOKEN_OF_STYLE, NetdslLexer
from netdsl.textmate import GRAMMAR_PATH, grammar_text
from netdsl.vocabulary import keywords

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


# ---- the TextMate grammar


def committed_grammar() -> dict:
    return json.loads(read(GRAMMAR_PATH))


def test_textmate_grammar_is_regenerated():
    """Registering an op (or adding a keyword) without `python -m netdsl.textmate` fails."""
    assert read(GRAMMAR_PATH) == grammar_text(), "run: python -m netdsl.textmate"


def test_the_staleness_check_can_fail(monkeypatch):
    monkeypatch.setitem(OPS, "frobnicate", OPS["relu"])
    assert "frobnicate" in grammar_text() and read(GRAMMAR_PATH) != grammar_text()


def alternation(pattern: str) -> set[str]:
    """The words of the first `(?:a|b|c)` or `(a|b|c)` group of a pattern."""
    group = re.search(r"\((?:\?:)?([\w|]+)\)", pattern).group(1)
    return set(group.split("|"))


def test_textmate_alternations_cover_the_registry_and_the_keywords():
    repo = committed_grammar()["repository"]
    for rule in repo["layer"]["patterns"]:
        assert alternation(rule["match"].replace(r"(->)", "")) == set(OPS)
    assert alternation(repo["keyword"]["match"]) == set(keywords())


def flatten(rules: dict, names: list[dict]) -> list[dict]:
    out = []
    for entry in names:
        rule = rules[entry["include"][1:]] if "include" in entry else entry
        out.extend(flatten(rules, rule["patterns"]) if "patterns" in rule else [rule])
    return out


def textmate_scopes(line: str, grammar: dict) -> dict[int, str]:
    """The scope TextMate gives each character of a line, for a grammar of match rules:
    at each place the rule matching earliest wins, the first listed on a tie."""
    rules = [(re.compile(r["match"]), r) for r in flatten(grammar["repository"], grammar["patterns"])]
    scopes, pos = {}, 0
    while pos < len(line):
        found = [(m.start(), i, m, r) for i, (rx, r) in enumerate(rules)
                 if (m := rx.search(line, pos)) and m.end() > m.start()]
        if not found:
            break
        _, _, match, rule = min(found, key=lambda f: (f[0], f[1]))
        if "name" in rule:
            scopes.update((c, rule["name"]) for c in range(match.start(), match.end()))
        for group, capture in rule.get("captures", {}).items():
            start, end = match.span(int(group))
            scopes.update((c, capture["name"]) for c in range(start, end))
        pos = match.end()
    return scopes


# what the TUI's highlighter (the grammar's own lexer) says -> what TextMate must say
SCOPE_OF_STYLE = {"keyword": "keyword", "function": "support.function.layer",
                  "constant": "constant.language", "number": "constant.numeric",
                  "string": "string.quoted", "comment": "comment.line"}


@pytest.mark.parametrize("path", SPEC_FILES, ids=os.path.basename)
def test_textmate_grammar_agrees_with_the_language_lexer(path):
    grammar = committed_grammar()
    for number, line in enumerate(read(path).split("\n"), 1):
        scopes = textmate_scopes(line, grammar)
        for token in highlight_line(line):
            wanted = SCOPE_OF_STYLE.get(token.style)
            if wanted is None:
                continue
            got = scopes.get(token.start, "")
            if token.style == "keyword" and line[token.start:token.end] == "x":
                wanted = "keyword.operator.repeat"
            assert got.startswith(wanted), \
                f"{path}:{number}:{token.start + 1}: {line[token.start:token.end]!r} is {got!r}, not {wanted}"


def test_textmate_scopes_definitions_calls_and_repeats():
    grammar = committed_grammar()
    line = "y = x -> basic(64, stride=2) x 3 -> relu"
    scopes = textmate_scopes(line, grammar)
    assert scopes[line.index("basic")] == "entity.name.function.call.netdsl"
    assert scopes[line.rindex(" x ") + 1] == "keyword.operator.repeat.netdsl"
    assert scopes[line.index("relu")] == "support.function.layer.netdsl"
    assert scopes.get(line.index("x")) is None  # the input x is a plain name
    assert textmate_scopes("block basic(c) {", grammar)[6] == "entity.name.function.block.netdsl"
    assert textmate_scopes("for x in 1..3 {", grammar).get(4) is None  # not a repeat


def test_vscode_manifest_points_at_the_grammar():
    folder = os.path.join(ROOT, "editors", "vscode")
    manifest = json.loads(read(os.path.join(folder, "package.json")))
    (language,) = manifest["contributes"]["languages"]
    (contributed,) = manifest["contributes"]["grammars"]
    assert language["extensions"] == [".net"] and contributed["language"] == language["id"]
    assert os.path.samefile(os.path.join(folder, contributed["path"]), GRAMMAR_PATH)
    assert contributed["scopeName"] == committed_grammar()["scopeName"]
    assert os.path.isfile(os.path.join(folder, language["configuration"]))
