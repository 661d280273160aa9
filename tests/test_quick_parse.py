"""The quick parser (netdsl/fast_parse.py) against Lark's: whatever text the quick one
reads, it builds the very AST Lark's path builds, spans and number texts included; what
it leaves to Lark is only slower, never different."""
import glob
import os
import sys
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netdsl import fast_parse, whole_statements
from netdsl.errors import SpecError
from netdsl.fast_parse import NotHandled, parse_quickly
from netdsl.parse import parse, parse_with_lark
from test_fuzz import FUZZ, SOURCES, mutated_spec, token_soup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import check_speed  # noqa: E402  the generators of the big specs, at small sizes here

FILE = "same.net"


@contextmanager
def reading(runs: bool = True, compile_after: int = whole_statements.COMPILE_AFTER):
    """The quick parser reading whole statements as runs, each form's statements made by
    a function compiled for it after `compile_after` of them (0: all), or with `runs`
    off, one statement at a time as before."""
    saved = fast_parse.RUNS_OF_STATEMENTS, whole_statements.COMPILE_AFTER
    fast_parse.RUNS_OF_STATEMENTS, whole_statements.COMPILE_AFTER = runs, compile_after
    try:
        yield
    finally:
        fast_parse.RUNS_OF_STATEMENTS, whole_statements.COMPILE_AFTER = saved


# the ways of reading whole statements besides the default (whose small texts' forms are
# made without compiling), which every comparison with Lark's path also takes: they must
# agree with the default to the last span
OTHER_WAYS = ({"compile_after": 0}, {"runs": False})


def quick(text: str):
    """The quick parser's items, or None where it leaves the text to Lark; the same in
    every way of reading whole statements."""
    mine = _quick(text)
    for way in OTHER_WAYS:
        with reading(**way):
            assert repr(_quick(text)) == repr(mine), way
    return mine


def _quick(text: str):
    try:
        return parse_quickly(text if text.endswith("\n") else text + "\n", FILE)
    except NotHandled:
        return None


def lark(text: str):
    """Lark's items, or the message of its SpecError."""
    try:
        return parse_with_lark(text, FILE)
    except SpecError as exc:
        return f"error: {exc}"


def assert_same(text: str) -> bool:
    """The quick parser agrees with Lark's wherever it answers; True when it answered."""
    mine = quick(text)
    if mine is not None:
        assert repr(mine) == repr(lark(text))
    return mine is not None


def project_specs():
    patterns = ("specs/*.net", "netdsl/stdlib/*.net", "tests/**/*.net", "docs/**/*.net")
    return sorted({path for pattern in patterns
                   for path in glob.glob(os.path.join(ROOT, pattern), recursive=True)})


@pytest.mark.parametrize("path", project_specs(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_spec_of_the_project_reads_the_same(path):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    answered = assert_same(text)
    if isinstance(lark(text), tuple) and "/errors/" not in path:
        assert answered, "a valid spec of the project should take the quick path"


@pytest.mark.parametrize("text", [
    check_speed.valid_100k(300), check_speed.errors_10k(200), check_speed.delays_4000(40),
    check_speed.sum_10000(500), check_speed.nested_for(), check_speed.nested_blocks()],
    ids=["valid", "errors", "delays", "sum", "nested_for", "nested_blocks"])
def test_the_benchmark_specs_take_the_quick_path(text):
    assert assert_same(text)


@pytest.mark.parametrize("text", [
    "target target : class(2)\ninput input : [4]\nblock b(out, in) {\n  in seq\n  out seq\n}\n",
    "y = x -> dense(4) x 2 -> relu x n -> x\n",
    "s = a + b - c + d\nt = -a * (b + c) / -2\n",
    "s = " + " + ".join(f"v{i}" for i in range(40)) + "\n",
    "y = concat(a,\n   b, [1,\n 2])\n  -> relu\nz = y ->\n   relu\n",
    "a = b \\\n  -> relu   # comment\r\nb = 'same' # x\r\n",
    "state h : [n], c : seq class(3)[2] = learned\nloss aux: 0.3 * f(h[t-12], k=-1e-3, j=.5)\n",
    "train sgd(lr=0.1), batch=1, epochs=2\nshare D = dense(1)\nshare E = relu\nimport rnn\n"
    'import "a/b.net"\nnetwork n\nfor i in 1..n { x = x -> relu }\nfor j in 2 .. 3 {\n}\n',
    "y = " + "(" * 150 + "x" + ")" * 150 + "\n",
    "y = x -> conv(x.channels * 2, 3) -> dense(shape(x)[-1] + y . classes)\nn = shape(x)[\n0]\n",
], ids=["keywords as names", "repeats", "operators", "long sum", "newlines in brackets",
        "continuation and CRLF", "states and delays", "statements", "deep brackets",
        "dimensions and indices"])
def test_constructs_take_the_quick_path(text):
    assert assert_same(text)


@pytest.mark.parametrize("text", [
    "s = (" + " + ".join(["a"] * 10) + ") + " + " + ".join(["b"] * 10) + "\n",  # one balanced sum
    "s = " + " + ".join(["a"] * 20) + " - b\n",
    "s = " + " + ".join(["(a)"] * 20) + "\n",
    "y = " + "f(" * 120 + "x" + ")" * 120 + "\n",
    "y = " + " * ".join(["x"] * 120) + "\n",
    "out = x\n", "y = x -> f(a=1, 2)\n", "u = h[s-1]\n", "u = h[t-0]\n", "n = 99999999999999999999\n",
    "y = 3x\n", "y = x ->\n", "y = ï\n", "n = x.5\n", "n = x.\n",
], ids=["sum through brackets", "long sum and minus", "bracketed terms", "deep calls",
        "long product", "keyword at the top", "positional after keyword", "index not t",
        "delay 0", "huge number", "glued number", "dangling arrow", "odd character",
        "dimension by number", "dimension without name"])
def test_rare_or_wrong_text_is_left_to_lark(text):
    assert quick(text) is None
    try:  # and parse gives Lark's answer: the module, or its located error
        assert repr(parse(text, FILE).items) == repr(lark(text))
    except SpecError as exc:
        assert f"error: {exc}" == lark(text)


@FUZZ
@given(mutated_spec())
def test_mutated_specs_read_the_same(text):
    assert_same(text)


@FUZZ
@given(token_soup())
def test_token_soups_read_the_same(text):
    assert_same(text)


@FUZZ
@given(st.sampled_from(SOURCES), st.data())
def test_truncated_specs_read_the_same(text, data):
    assert_same(text[:data.draw(st.integers(0, len(text)))])


@pytest.mark.parametrize("text", [
    "network n\na = b\nc = b -> relu -> dense(16)\n",
    "network n\na = b -> dense( 016 )\t-> relu\t\n\nc = a\n",
    "network n\na = b -> relu\n  -> tanh\nc = a -> relu\n\n   -> tanh\n",
    "network n\na = b -> relu # the chain ends before a comment\nc = a -> relu\n# x\n-> tanh\n",
    "network n\na = b -> x -> dense(3) x 2\nc = b -> f(1, 2) -> g(n) -> h(1.5) -> k(-1)\n",
    "network n\na = b -> relu\r\nc = a -> dense(2)\r\n",
    "network n\na\f=\fb\f->\frelu\nblock f() {\n  in a\n  b = a -> relu\n  out b\n}\n",
    "network n\nc = b -> dense(" + "9" * 18 + ")\nd = b -> dense(" + "9" * 19 + ")\n",
    "network n\nin = b -> relu\n", "network n\nx = b\nloss = x\n",
    "network n\nv = pair(u, 16)\nw = f() -> g( a ,b,3 ) -> h()\nz = k(1) -> m(n, 2)\n",
    "network n\nv = pair(u, 16)[0]\nw = f(a, b=2)\nz = k(1.5, x)\nq = r(s.t)\n",
], ids=["names and chains", "blanks and zeros", "chains that go on", "comments",
        "repeats and other arguments", "CRLF", "form feeds and bodies", "long numbers",
        "keyword as target", "keyword as target 2", "calls", "calls left to tokens"])
def test_whole_statements_read_the_same(text):
    """The lexer reads `name = name -> layer(n) -> ...` statements whole: what it reads so
    is Lark's AST, and what it does not is read token by token."""
    assert_same(text)


@pytest.mark.parametrize("text", [
    "network n\n  a = b -> relu\n\n\t  c = a -> relu\n \n\fd = c\r\ne = pair(d, 3)\r\n\r\n",
    "network n\na = b -> relu\nin = a -> relu\nc = a -> relu\nloss = c\nd = c\n",
    "network n\na = b -> relu\nc = a -> relu\n-> tanh\nd = c -> relu # note\ne = d\n",
    "network n\nfor i in 1..2 {\n  a = a -> relu\n  b = a\n}\nblock f(k) {\n  in a\n"
    "  b = a -> dense(k) -> relu\n  out b\n}\nc = b -> f(4)\n",
    "network n\n" + "".join(f"v{i} = v{i - 1} -> dense({i % 7}) -> f{i % 5}(v{i}, 2)\n"
                            for i in range(1, 80)),
    "network n\na = b -> " + " -> ".join(["relu"] * 16) + "\nc = b -> " + " -> ".join(["relu"] * 17)
    + "\nd = c -> dense( 3 ,x ) ->relu->  g ( )\n",
    "network n\na = b\nc = a",
    "network n\n" + "".join(f"v{i} = f{i % 3}(v{i - 1}, {i % 11:03}, {'x' * (i % 4 + 1)})"
                            f"{' -> relu' * (i % 2)}\n" for i in range(1, 60)),
    "network n\na = f()\nb = f( )\nc = f ( a ,12 )\t\nd = g(\fa_1,\tb) -> h(c)\ne = f(\u0663)\n",
], ids=["blank lines, indents, CRLF", "keyword targets in a run", "a run cut short",
        "bodies", "many distinct chains", "long chains and odd blanks", "no newline at the end",
        "calls as sources", "odd calls as sources"])
def test_runs_of_whole_statements_read_the_same(text):
    """Runs of whole statements: their lines and columns after blank lines, indents and
    CRLF; a run ended by a keyword, a continued chain or a comment; a chain's maker
    compiled or made from its layout (`quick` compares every way)."""
    assert assert_same(text) or "in = " in text  # a keyword there is Lark's to refuse


def test_whole_statements_are_read_whole():
    text = ("network n\na = b -> relu\nc = a -> dense(4)\nd = f(c, 1) -> g(1, 2)\n"
            "e = c -> f(1.5)\n")
    kinds, values = fast_parse._tokens(text)[:2]
    assert kinds.count("STMTS") == 1 and len(values[kinds.index("STMTS")]) == 3
    with reading(runs=False):
        assert fast_parse._tokens(text)[0].count("STMT") == 3


def test_a_form_is_compiled_after_so_many_statements(monkeypatch):
    compiled = []
    compile_chain = whole_statements._compiled
    monkeypatch.setattr(whole_statements, "_compiled",
                        lambda *layout: compiled.append(layout) or compile_chain(*layout))
    text = "network n\n" + "".join(f"v{i} = u -> dense({i % 30 if i < 70 else i})\n"
                                   for i in range(1, 90))
    with reading(compile_after=2):
        items = parse_quickly(text, FILE)
    assert len(compiled) == 9  # of the 50 forms, those met a third time
    assert repr(items) == repr(lark(text))
