"""netc fmt: exact layouts for hand-written specs, and three properties for every spec.

The properties: formatting is idempotent, the result parses to the same syntax tree
(spans aside), and every comment survives.
"""
from __future__ import annotations

import dataclasses
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netdsl import ast
from netdsl.driver import CheckFailed, check_text
from netdsl.errors import SpecError
from netdsl.fmt import WIDTH, format_module, format_text
from netdsl.parse import parse
from test_errors import netc
from test_fuzz import SNIPPETS, mutated_spec

ROOT = Path(__file__).resolve().parents[1]


def strip_spans(node):
    """A node as nested tuples without its spans; a number keeps its type (1 and 1.0 differ)."""
    if dataclasses.is_dataclass(node):
        fields = tuple(
            (f.name, strip_spans(getattr(node, f.name)))
            for f in dataclasses.fields(node)
            if not f.name.endswith(("span", "spans"))
        )
        kind = type(node.value).__name__ if isinstance(node, ast.Number) else ""
        return (type(node).__name__, kind, fields)
    if isinstance(node, tuple):
        return tuple(map(strip_spans, node))
    return node


def comment_texts(module: ast.Module) -> Counter:
    return Counter(c.text.rstrip() for c in module.comments)


def assert_canonical(text: str) -> str:
    """Format `text`, check the three properties, and return the formatted text."""
    module = parse(text)
    once = format_module(module)
    assert format_text(once) == once, "formatting is not idempotent"
    again = parse(once)
    assert strip_spans(again.items) == strip_spans(module.items)
    assert comment_texts(again) == comment_texts(module)
    assert "\n\n\n" not in once and not once.startswith("\n")
    assert all(line == line.rstrip() for line in once.splitlines())
    return once


def fmt(text: str) -> str:
    return assert_canonical(textwrap.dedent(text))


def expect(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


class TestLayout:
    def test_mlp_with_messy_spacing(self):
        messy = """\
            # specs/mlp.net: a multilayer perceptron for 8x8 digits


            network   mlp
            input x:[64]
            target  y :class( 10 )


            logits=x->dense(256)->relu->dropout(0.2)
                ->dense(256) -> relu->dense( 10 )
            loss cross_entropy( logits,y )
            train sgd(lr = 0.1,momentum=.9 ),batch = 128,epochs=20


        """
        assert fmt(messy) == expect("""
            # specs/mlp.net: a multilayer perceptron for 8x8 digits

            network mlp
            input  x : [64]
            target y : class(10)

            logits = x -> dense(256) -> relu -> dropout(0.2)
                       -> dense(256) -> relu -> dense(10)
            loss cross_entropy(logits, y)
            train sgd(lr=0.1, momentum=.9), batch=128, epochs=20
        """)

    def test_block_with_for_loop_and_comments(self):
        source = """\
            input x : [3, 32, 32]
            # grows x by k channels n times
            block dense_block(n,k=12) { # the header's comment
            in x
                # each layer sees all earlier ones
            for i in 1..n { x = concat(x, x->batchnorm->relu->conv(k,3,pad=1)) }   # n*k more
              # a comment closing the block
            out x }
            y = x -> dense_block(4) # used once
            # the end
        """
        assert fmt(source) == expect("""
            input  x : [3, 32, 32]

            # grows x by k channels n times
            block dense_block(n, k=12) {  # the header's comment
              in x
              # each layer sees all earlier ones
              for i in 1..n {
                x = concat(x, x -> batchnorm -> relu -> conv(k, 3, pad=1))
              }  # n*k more
              # a comment closing the block
              out x
            }

            y = x -> dense_block(4)  # used once
            # the end
        """)

    def test_blank_lines_collapse_and_separate_blocks(self):
        source = """\
            block a() {

              in x


              out x

            }
            block b() {
              in x
              out x
            }
            y = x


            z = y
        """
        assert fmt(source) == expect("""
            block a() {
              in x

              out x
            }

            block b() {
              in x
              out x
            }

            y = x

            z = y
        """)

    def test_header_broken_over_lines(self):
        source = """\
            block b(a,  # first parameter
                    c=2) {  # second parameter
              out a
            }
        """
        assert fmt(source) == expect("""
            block b(a, c=2) {  # first parameter
              # second parameter
              out a
            }
        """)

    def test_nested_for_closing_on_one_line(self):
        source = "for i in 1..2 { for j in 1..3 { x = f(x) } }  # both loops\n"
        assert fmt(source) == expect("""
            for i in 1..2 {
              for j in 1..3 {
                x = f(x)
              }
            }  # both loops
        """)


class TestPipelines:
    def test_long_pipeline_fills_rows_aligned_under_the_first_arrow(self):
        source = (
            "features = x -> conv(64, 7, stride=2, pad=3, bias=false) -> batchnorm -> relu"
            " -> maxpool(3, stride=2, pad=1) -> stage(64, 2) x 3\n"
        )
        assert fmt(source) == expect("""
            features = x -> conv(64, 7, stride=2, pad=3, bias=false) -> batchnorm -> relu
                         -> maxpool(3, stride=2, pad=1) -> stage(64, 2) x 3
        """)

    def test_too_deep_pipeline_indents_four(self):
        source = (
            "block b() {\n"
            "  some_rather_long_output_name = some_rather_long_input_name_too"
            " -> conv(64, 7, stride=2, pad=3, bias=false) -> relu\n"
            "}\n"
        )
        assert fmt(source) == expect("""
            block b() {
              some_rather_long_output_name = some_rather_long_input_name_too
                  -> conv(64, 7, stride=2, pad=3, bias=false)
                  -> relu
            }
        """)

    def test_a_break_the_author_chose_stays(self):
        assert fmt("y = x -> dense(10)\n  -> relu -> f\n") == "y = x -> dense(10)\n      -> relu -> f\n"
        assert fmt("y = x -> dense(10) ->\n relu\n") == "y = x -> dense(10)\n      -> relu\n"

    def test_comments_end_their_rows_and_align(self):
        source = """\
            y = x -> conv(8, 3) -> relu  # [8, 30, 30]
                  -> maxpool(2) -> dense(4)  # [8, 15, 15]
              -> relu -> dense(3)
        """
        assert fmt(source) == expect("""
            y = x -> conv(8, 3) -> relu      # [8, 30, 30]
                  -> maxpool(2) -> dense(4)  # [8, 15, 15]
                  -> relu -> dense(3)
        """)

    def test_consecutive_statements_align_their_comments(self):
        source = "a = x -> relu # one\nlonger_name = a -> relu  # two\n\nb = a # three\n"
        assert fmt(source) == expect("""
            a = x -> relu            # one
            longer_name = a -> relu  # two

            b = a  # three
        """)

    def test_a_pipeline_inside_a_call_breaks_under_its_own_arrow(self):
        source = ("    x = concat(x, x -> batchnorm -> relu -> conv(bn_size * k, 1, bias=false)\n"
                  "     -> batchnorm -> relu -> conv(k, 3, pad=1, bias=false))\n")
        assert fmt(f"block b(k, bn_size) {{\n  in x\n{source}  out x\n}}\n") == expect("""
            block b(k, bn_size) {
              in x
              x = concat(x, x -> batchnorm -> relu -> conv(bn_size * k, 1, bias=false)
                              -> batchnorm -> relu -> conv(k, 3, pad=1, bias=false))
              out x
            }
        """)

    def test_fits_at_exactly_the_width(self):
        head = "y = x -> "
        stage = "f" * (WIDTH - len(head))
        assert fmt(f"{head}{stage}\n") == f"{head}{stage}\n"
        assert fmt(f"{head}{stage}g\n") == f"y = x\n    -> {stage}g\n"

    def test_bare_names_and_repeats(self):
        assert fmt("y = x -> relu() -> basic(64)x 3 -> stage(c) x(n-1)\n") == (
            "y = x -> relu -> basic(64) x 3 -> stage(c) x (n - 1)\n"
        )

    def test_pipeline_as_whole_argument_needs_no_parentheses(self):
        source = "y = concat(x, (x -> relu), p=(x -> f))\nloss aux: 0.3 * (x -> g)\n"
        assert fmt(source) == "y = concat(x, x -> relu, p=x -> f)\nloss aux: 0.3 * (x -> g)\n"

    def test_comments_inside_a_call_move_above(self):
        source = """\
            y = f(a,  # first
                  b,  # second
                  c)  # third
        """
        assert fmt(source) == expect("""
            # first
            # second
            y = f(a, b, c)  # third
        """)


class TestExpressions:
    @pytest.mark.parametrize(
        "source, expected",
        [
            ("(a + b) * c", "(a + b) * c"),
            ("a + (b * c)", "a + b * c"),
            ("(a - b) - c", "a - b - c"),
            ("a - (b - c)", "a - (b - c)"),
            ("a / (b * c)", "a / (b * c)"),
            ("(a*b)/c", "a * b / c"),
            ("-(a + b)", "-(a + b)"),
            ("- -a", "--a"),
            ("a*-b", "a * -b"),
            ("((x -> f)) -> g", "(x -> f) -> g"),
            ("(x) -> f", "x -> f"),
            ("(-x) -> f", "-x -> f"),
            ("(a + b) -> f", "a + b -> f"),
            ("[ 1,2 ,3 ]", "[1, 2, 3]"),
            ("h[ t - 2 ]", "h[t-2]"),
        ],
    )
    def test_parentheses_only_where_precedence_needs_them(self, source, expected):
        assert fmt(f"y = {source}\n") == f"y = {expected}\n"

    @pytest.mark.parametrize(
        "source, expected",
        [
            ("0.001", "0.001"),
            ("1e-3", "1e-3"),
            ("1e-05", "1e-05"),
            ("1E3", "1E3"),
            ("2.50", "2.50"),
            (".25", ".25"),
            ("1e16", "1e16"),
            ("007", "007"),
        ],
    )
    def test_numbers(self, source, expected):
        assert fmt(f"y = f({source})\n") == f"y = f({expected})\n"

    def test_strings_in_single_quotes(self):
        source = "y = conv(x, 8, 3, pad=\"same\", name=\"it's\")\n"
        assert fmt(source) == "y = conv(x, 8, 3, pad='same', name=\"it's\")\n"


class TestStatements:
    def test_multiple_assignment_targets(self):
        assert fmt("i,f , g,o=split( z,4 )\n") == "i, f, g, o = split(z, 4)\n"

    def test_state_declarations_and_delayed_values(self):
        source = """\
            state h:[64]=learned,c:[ 64 ]
            state   s : [n] = 0.5
            z = dense(concat(x,h[ t - 1 ]),4*64)
        """
        assert fmt(source) == expect("""
            state  h : [64] = learned, c : [64]
            state  s : [n] = 0.5
            z = dense(concat(x, h[t-1]), 4 * 64)
        """)

    def test_input_and_target_types(self):
        source = """\
            input s:seq [16]
            input w : seq class( 5000 )
            target m:class(2)[388,388]
            target r : [ ]
        """
        assert fmt(source) == expect("""
            input  s : seq[16]
            input  w : seq class(5000)
            target m : class(2)[388, 388]
            target r : []
        """)

    def test_losses_with_name_and_weight(self):
        source = "loss cross_entropy(logits,y)\nloss aux1 : 0.3*cross_entropy(aux, y)\n"
        assert fmt(source) == (
            "loss cross_entropy(logits, y)\nloss aux1: 0.3 * cross_entropy(aux, y)\n"
        )

    def test_long_call_breaks_between_arguments_after_its_paren(self):
        source = ("y = some_block(x, first_setting=64, second_setting=128, third_setting=256, "
                  "fourth_setting=512, fifth=1)\n")
        assert fmt(source) == expect("""
            y = some_block(x, first_setting=64, second_setting=128, third_setting=256,
                           fourth_setting=512, fifth=1)
        """)

    def test_long_arithmetic_breaks_before_its_operators_inside_the_call(self):
        source = ("  h = sigmoid(dense(context, n, bias=false) + dense(x, n, bias=false) + "
                  "dense(h[t-1], n, bias=false))\n")
        assert fmt(f"block scrn(n) {{\n  in x\n{source}  out h\n}}\n") == expect("""
            block scrn(n) {
              in x
              h = sigmoid(dense(context, n, bias=false) + dense(x, n, bias=false)
                          + dense(h[t-1], n, bias=false))
              out h
            }
        """)

    def test_long_arithmetic_of_a_statement_gets_parentheses_to_break_in(self):
        source = ("loss d: sigmoid_cross_entropy(x -> D, label=1) + "
                  "sigmoid_cross_entropy(stop_gradient(fake) -> D, label=0)\n")
        assert fmt(source) == expect("""
            loss d: (sigmoid_cross_entropy(x -> D, label=1)
                     + sigmoid_cross_entropy(stop_gradient(fake) -> D, label=0))
        """)

    def test_long_arithmetic_keeps_its_parentheses_and_breaks_only_its_loosest_operators(self):
        source = ("y = first_long_value_name * second_long_value_name - (third_long_value_name "
                  "+ fourth_long_value_name) * 2 - fifth_long_value_name / sixth_long_value_name\n")
        assert fmt(source) == expect("""
            y = (first_long_value_name * second_long_value_name
                 - (third_long_value_name + fourth_long_value_name) * 2
                 - fifth_long_value_name / sixth_long_value_name)
        """)

    def test_a_long_sum_fills_each_row(self):
        source = "s = " + " + ".join(f"term_{i}" for i in range(40)) + "\n"
        rows = fmt(source).splitlines()
        assert len(rows) > 3 and all(len(row) <= WIDTH for row in rows)
        assert all(row.startswith("     + ") for row in rows[1:])
        assert all(len(row) + len(" + term_00") > WIDTH for row in rows[:-1])

    def test_pipelines_as_arguments_take_a_row_each(self):
        source = ("  out concat(x -> conv(c1, 1) -> relu, x -> conv(c3r, 1) -> relu -> conv(c3, 3, pad=1) "
                  "-> relu, x -> maxpool(3, stride=1, pad=1) -> conv(pp, 1) -> relu)\n")
        assert fmt(f"block b(c1, c3r, c3, pp) {{\n  in x\n{source}}}\n") == expect("""
            block b(c1, c3r, c3, pp) {
              in x
              out concat(x -> conv(c1, 1) -> relu,
                         x -> conv(c3r, 1) -> relu -> conv(c3, 3, pad=1) -> relu,
                         x -> maxpool(3, stride=1, pad=1) -> conv(pp, 1) -> relu)
            }
        """)

    def test_a_long_train_clause_breaks_inside_its_first_call_that_makes_it_fit(self):
        source = ("train sgd(lr=0.1, momentum=0.9, weight_decay=1e-4), batch=256, epochs=90, "
                  "schedule=step(every=30, gamma=0.1)\n")
        assert fmt(source) == expect("""
            train sgd(lr=0.1, momentum=0.9,
                      weight_decay=1e-4), batch=256, epochs=90, schedule=step(every=30, gamma=0.1)
        """)

    def test_train_clause(self):
        source = "train adam( lr=2e-4,beta1 = 0.5 ),bptt(truncate = 20), batch=64 ,epochs= 100\n"
        assert fmt(source) == (
            "train adam(lr=2e-4, beta1=0.5), bptt(truncate=20), batch=64, epochs=100\n"
        )

    def test_imports(self):
        source = "import   rnn\nimport \"blocks/mine.net\"\nimport 'other.net'\n"
        assert fmt(source) == "import rnn\nimport 'blocks/mine.net'\nimport 'other.net'\n"

    def test_share(self):
        source = "share D=discriminator( 128 )\nshare G = generator()\nfake = normal(100)->G->D\n"
        assert fmt(source) == (
            "share D = discriminator(128)\nshare G = generator\nfake = normal(100) -> G -> D\n"
        )

    def test_block_params_and_out_values(self):
        source = "block b( c, stride = 1 ) {\nin x , y\nout x,y\n}\n"
        assert fmt(source) == "block b(c, stride=1) {\n  in x, y\n  out x, y\n}\n"

    def test_empty_inputs(self):
        assert fmt("") == ""
        assert fmt("\n\n# only a comment   \n\n") == "# only a comment\n"
        assert fmt("block b() {}\n") == "block b() {\n}\n"


# ---- every spec in the repository


def _spec_files() -> list[Path]:
    specs = sorted((ROOT / "specs").glob("*.net"))
    return specs + sorted((ROOT / "netdsl" / "stdlib").glob("*.net"))


def graph_of(text: str) -> tuple:
    """What a checked spec computes, spans aside: nodes, their ops, types and inputs."""
    graph = check_text(text, "spec.net").graph
    nodes = tuple((n, d["kind"], repr(d["op"]), d["type"], d["inputs"], d["shares"])
                  for n, d in graph.nodes(data=True))
    return nodes, tuple(graph.edges(data=True)), tuple(sorted(graph.graph["losses"].items())), \
        repr(graph.graph["train"])


@pytest.mark.parametrize("path", _spec_files(), ids=lambda p: p.name)
def test_every_spec_is_canonical_and_keeps_its_graph(path: Path):
    text = path.read_text()
    assert format_text(text) == text, f"run `netc fmt -w {path.relative_to(ROOT)}`"
    assert_canonical(text)
    if path.parent.name == "specs":
        assert graph_of(format_text(text.replace("\n\n", "\n"))) == graph_of(text)


def test_fmt_check_passes_on_the_repository_specs():
    """What CI runs: `netc fmt --check specs/*.net netdsl/stdlib/*.net`."""
    result = netc("fmt", "--check", *map(str, _spec_files()))
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


class TestCommandLine:
    def test_check_names_a_file_not_canonical_shows_the_diff_and_exits_1(self, tmp_path):
        good, bad = tmp_path / "good.net", tmp_path / "bad.net"
        good.write_text("y = x -> relu\n")
        bad.write_text("y=x->relu\n")
        result = netc("fmt", "--check", str(good), str(bad))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"{bad}: not in canonical form" in result.stderr and str(good) not in result.stderr
        assert "-y=x->relu\n+y = x -> relu\n" in result.stdout
        assert bad.read_text() == "y=x->relu\n"  # --check never writes

    def test_diff_shows_the_change_and_exits_0(self, tmp_path):
        spec = tmp_path / "a.net"
        spec.write_text("train adam(lr=1e-4),epochs=3\n")
        result = netc("fmt", "--diff", str(spec))
        assert result.returncode == 0
        assert "+train adam(lr=1e-4), epochs=3\n" in result.stdout and "(formatted)" in result.stdout

    def test_write_rewrites_every_file(self, tmp_path):
        paths = [tmp_path / "a.net", tmp_path / "b.net"]
        for path in paths:
            path.write_text("y=x->relu\n")
        assert netc("fmt", "-w", *map(str, paths)).returncode == 0
        assert [p.read_text() for p in paths] == ["y = x -> relu\n"] * 2

    def test_a_file_that_does_not_parse_is_reported_and_the_rest_formatted(self, tmp_path):
        bad, good = tmp_path / "bad.net", tmp_path / "good.net"
        bad.write_text("y = x ->\n")
        good.write_text("y=x\n")
        result = netc("fmt", str(bad), str(good))
        assert result.returncode == 1 and f"{bad}:1:9: error:" in result.stderr
        assert result.stdout == "y = x\n"


# ---- the fuzz corpus: real specs mutated, and the snippets of tests/test_fuzz.py


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_spec())
def test_mutated_specs_format_idempotently_and_keep_their_graph(text: str):
    try:
        before = graph_of(text)
    except CheckFailed:
        before = None
    try:
        parse(text)
    except SpecError:
        return  # nothing to format
    formatted = assert_canonical(text)
    if before is not None:
        assert graph_of(formatted) == before


@pytest.mark.parametrize("text", SNIPPETS)
def test_fuzz_snippets_keep_their_graph(text: str):
    assert graph_of(assert_canonical(text)) == graph_of(text)


# ---- random specs

SPACE = st.sampled_from(["", " ", "  "])
NAMES = st.sampled_from(["x", "h", "z", "feat", "a1", "n"])
NUMBERS = st.sampled_from(["0", "3", "64", "0.5", "1e-3", ".25", "2.0", "3E2", "1e-05"])
LAYERS = st.sampled_from(
    [
        "relu", "tanh", "flatten", "batchnorm", "dense(64)", "dropout(0.2)", "f()",
        "conv(32, 3, pad=1)", "conv(256, 3, stride=2, pad=1, bias=false)",
        "maxpool(3, stride=2, ceil=true)", "upsample(mode='nearest')", "basic(c)",
    ]
)
REPEATS = st.sampled_from(["", " x 3", " x n", " x (n - 1)", " x(2*k)"])
COMMENTS = st.text(alphabet="abcxyz019 ,.:-#'\"[]()", max_size=20).map(lambda t: "#" + t)
# an expression's text, and whether it is an atom (safe anywhere without parentheses)
ATOMS = st.one_of(
    NAMES, NUMBERS, st.just("'same'"), st.just("h[t-1]"), st.builds("{}[t - 2]".format, NAMES),
    st.builds("{}.channels".format, NAMES), st.builds("shape({})[{}]".format, NAMES, NAMES)
).map(lambda text: (text, True))


@st.composite
def _operand(draw, expressions):
    text, atom = draw(expressions)
    return text if atom and draw(st.booleans()) else f"({text})"


@st.composite
def _compound(draw, expressions):
    kind = draw(st.sampled_from(["binop", "neg", "call", "list", "pipeline"]))
    if kind == "binop":
        op = draw(st.sampled_from("+-*/"))
        left, right = draw(_operand(expressions)), draw(_operand(expressions))
        return f"{left}{draw(SPACE)}{op}{draw(SPACE)}{right}", False
    if kind == "neg":
        return "-" + draw(_operand(expressions)), False
    args = [text for text, _ in draw(st.lists(expressions, max_size=3))]
    if kind == "call":
        return f"{draw(st.sampled_from(['f', 'concat', 'dense']))}({', '.join(args)})", True
    if kind == "list":
        return f"[{draw(SPACE)}{','.join(args)}]", True
    return draw(_pipeline(_operand(expressions))), False


@st.composite
def _pipeline(draw, sources):
    text = draw(sources)
    for _ in range(draw(st.integers(1, 10))):
        arrow = draw(st.sampled_from(["->", " -> ", "\n    -> ", " ->\n  "]))
        text += arrow + draw(LAYERS) + draw(REPEATS)
    return text


EXPRESSIONS = st.recursive(ATOMS, lambda inner: _compound(inner), max_leaves=8)


@st.composite
def _statement(draw):
    value = draw(st.one_of(EXPRESSIONS.map(lambda e: e[0]), _pipeline(NAMES)))
    if draw(st.booleans()):
        targets = draw(st.lists(NAMES, min_size=1, max_size=3))
        text = f"{(',' + draw(SPACE)).join(targets)}{draw(SPACE)}={draw(SPACE)}{value}"
    else:
        text = f"loss {draw(st.sampled_from(['', 'aux: ']))}{value}"
    if draw(st.booleans()):
        text += draw(SPACE) + "  " + draw(COMMENTS)
    lead = draw(st.lists(st.one_of(st.just(""), COMMENTS), max_size=2))
    return "".join(line + "\n" for line in lead) + text + "\n"


@st.composite
def _spec(draw):
    statements = draw(st.lists(_statement(), min_size=1, max_size=5))
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(statements)))
        header = draw(st.sampled_from(["for i in 1..n {", "block b(c, n=2) {"]))
        trailing = draw(st.sampled_from(["", "  " + "# closing"]))
        body = "".join(statements[cut:]) + draw(st.sampled_from(["", "# end of body\n"]))
        statements = statements[:cut] + [f"{header}\n{body}}}{trailing}\n"]
    return "".join(statements) + draw(st.sampled_from(["", "# end of file\n", "\n\n"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_spec())
def test_random_specs_are_canonical_after_one_pass(text: str):
    assert_canonical(text)


LONG_OPERANDS = st.sampled_from(["dense(context, n, bias=false)", "alpha * context[t-1]",
                                 "(1 - alpha)", "some_rather_long_name", "x.channels",
                                 "shape(h)[0]", "(a + b)", "tanh(g)", "-w", "f(a -> relu)"])


@st.composite
def _long_arithmetic(draw):
    terms = draw(st.lists(LONG_OPERANDS, min_size=4, max_size=14))
    ops = draw(st.lists(st.sampled_from(["+", "-", "*", "/"]), min_size=len(terms) - 1,
                        max_size=len(terms) - 1))
    value = terms[0] + "".join(f" {op} {term}" for op, term in zip(ops, terms[1:]))
    head = draw(st.sampled_from(["y = {}\n", "loss {}\n", "block b() {{\n  out sigmoid({})\n}}\n",
                                 "z = f({}, k=3)\n"]))
    return head.format(value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_long_arithmetic())
def test_long_arithmetic_is_canonical_and_fits(text: str):
    once = assert_canonical(text)
    assert all(len(row) <= WIDTH for row in once.splitlines()), once
