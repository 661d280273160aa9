"""The parser: syntax to AST, spans, continuation lines, comments, syntax errors."""
import pytest

from netdsl import ast
from netdsl.errors import SpecError
from netdsl.parse import parse

MLP = """\
network mlp   # the example
input  x : [64]
target y : class(10)

logits = x -> dense(256) -> relu -> dropout(0.2)
           -> dense(256) -> relu -> dense(10)
loss cross_entropy(logits, y)
train sgd(lr=0.1, momentum=0.9), batch=128, epochs=20
"""


class TestStructure:
    def test_items_in_source_order(self):
        kinds = [type(i).__name__ for i in parse(MLP).items]
        assert kinds == ["NetworkDecl", "IODecl", "IODecl", "Assign", "Loss", "Train"]

    def test_pipeline_continues_on_next_line(self):
        assign = parse(MLP).items[3]
        assert isinstance(assign.value, ast.Pipeline)
        assert [s.call.name for s in assign.value.stages] == ["dense", "relu", "dropout", "dense", "relu", "dense"]

    def test_line_ending_in_arrow_continues(self):
        (assign,) = parse("y = x ->\n   relu\n").items
        assert assign.value.stages[0].call.name == "relu"

    def test_newlines_inside_parentheses(self):
        (assign,) = parse("y = concat(a,\n   b,\n   c)\n").items
        assert len(assign.value.args) == 3

    def test_types(self):
        items = parse("input s : seq[16]\ntarget m : class(2)[388, 388]\ntarget w : seq class(5)\n").items
        assert items[0].type.seq and items[0].type.classes is None
        assert items[1].type.classes.value == 2 and [d.value for d in items[1].type.dims] == [388, 388]
        assert items[2].type.seq and items[2].type.classes.value == 5

    def test_repeat_binds_to_one_stage(self):
        (assign,) = parse("y = x -> basic(16) x 3 -> gap\n").items
        first, second = assign.value.stages
        assert first.repeat.value == 3 and second.call.name == "gap" and second.repeat is None

    def test_precedence_pipeline_loosest(self):
        (assign,) = parse("y = a + b * c -> relu\n").items
        source = assign.value.source
        assert isinstance(source, ast.BinOp) and source.op == "+"
        assert isinstance(source.right, ast.BinOp) and source.right.op == "*"

    def test_delayed_state_and_multiple_targets(self):
        items = parse("state h : [n], c : [n] = learned\ni, f = split(z, 2)\nu = h[t-2]\n").items
        assert [s.name for s in items[0].items] == ["h", "c"]
        assert items[0].items[1].init.id == "learned"
        assert items[1].targets == ("i", "f")
        assert items[2].value == ast.Delayed("h", 2, items[2].value.span)

    def test_block_with_loop_and_defaults(self):
        (block,) = parse("block b(n, k=4*2) {\n  in x\n  for i in 1..n { x = x -> relu }\n  out x\n}\n").items
        assert [p.name for p in block.params] == ["n", "k"]
        assert isinstance(block.body[1], ast.For) and block.body[1].var == "i"

    def test_loss_name_and_weight(self):
        (loss,) = parse("loss aux1: 0.3 * cross_entropy(a, y)\n").items
        assert loss.name == "aux1" and isinstance(loss.value, ast.BinOp)

    def test_imports_and_share(self):
        items = parse('import rnn\nimport "lib/blocks.net"\nshare D = disc(128)\n').items
        assert items[0] == ast.Import("rnn", False, items[0].span)
        assert items[1].target == "lib/blocks.net" and items[1].is_path
        assert items[2].call.name == "disc"


class TestSpans:
    def test_every_node_has_a_span_inside_the_text(self):
        module = parse(MLP, "mlp.net")
        lines = MLP.splitlines()

        def walk(node):
            if hasattr(node, "span"):
                assert node.span.file == "mlp.net"
                assert 1 <= node.span.line <= node.span.end_line <= len(lines)
            for value in (getattr(node, f) for f in getattr(node, "__dataclass_fields__", ())):
                for child in value if isinstance(value, tuple) else (value,):
                    if hasattr(child, "__dataclass_fields__"):
                        walk(child)

        for item in module.items:
            walk(item)

    def test_call_name_span_points_at_the_name(self):
        (assign,) = parse("y = x -> rleu\n").items
        span = assign.value.stages[0].call.name_span
        assert (span.line, span.col, span.end_col) == (1, 10, 13)

    def test_comments_kept_with_positions(self):
        module = parse(MLP)
        assert [(c.text, c.span.line) for c in module.comments] == [("# the example", 1)]

    def test_hash_inside_string_is_not_a_comment(self):
        assert parse("y = x -> conv(3, 3, pad='#')\n").comments == ()


class TestSyntaxErrors:
    @pytest.mark.parametrize("text, line, col, words", [
        ("y = x -> dense(10\n", 1, 18, "expected ')' or ','"),
        ("input x\n", 1, 8, "needs a type"),
        ("y = x ->\n", 1, 9, "must be followed by a layer"),
        ("y = conv(stride=2, 64)\n", 1, 20, "positional argument follows a keyword"),
        ("u = h[s-1]\n", 1, 7, "indexed by time t"),
        ("y = x -> relu }\n", 1, 15, "unexpected '}'"),
    ])
    def test_located(self, text, line, col, words):
        with pytest.raises(SpecError) as info:
            parse(text, "bad.net")
        error = info.value
        assert (error.span.line, error.span.col) == (line, col)
        assert words in error.message
