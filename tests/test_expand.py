"""Expansion: blocks, repeats, loops and sharing inlined into named nodes."""
import pytest

from netdsl.driver import CheckFailed
from netdsl.expand import expand
from netdsl.parse import parse

RESNET = """\
input x : [3, 32, 32]
target y : class(10)
block basic(c, stride=1) {
  in x
  y = x -> conv(c, 3, stride=stride, pad=1, bias=false) -> batchnorm -> relu
        -> conv(c, 3, pad=1, bias=false) -> batchnorm
  out relu(y + project(x, c, stride))
}
block stage(c, n, stride) {
  in x
  out x -> basic(c, stride) -> basic(c) x (n - 1)
}
logits = x -> conv(16, 3, pad=1) -> stage(16, 3, 1) -> stage(32, 3, 2) -> gap -> dense(10)
loss cross_entropy(logits, y)
"""


def program(text):
    return expand(parse(text, "t.net"))


class TestBlocks:
    def test_block_paths_name_instances(self):
        nodes = program(RESNET).nodes
        assert "stage2/basic3/conv2" in nodes
        assert nodes["stage2/basic3/conv2"].scope[0].name == "stage2"
        assert [f.block for f in nodes["stage2/basic3/conv2"].scope] == ["stage", "basic"]

    def test_parameters_and_defaults_reach_ops(self):
        nodes = program(RESNET).nodes
        assert nodes["stage2/basic1/conv1"].op.stride == (2,)
        assert nodes["stage2/basic2/conv1"].op.stride in (1, (1,))

    def test_repeat_instances_share_a_group(self):
        nodes = program(RESNET).nodes
        groups = {nodes[f"stage1/basic{i}/conv1"].scope[-1].repeat for i in (2, 3)}
        assert len(groups) == 1 and None not in groups
        assert nodes["stage1/basic1/conv1"].scope[-1].repeat is None

    def test_repeat_zero_skips_the_stage(self):
        nodes = program(RESNET.replace("stage(16, 3, 1)", "stage(16, 1, 1)")).nodes
        assert "stage1/basic1/conv1" in nodes and "stage1/basic2/conv1" not in nodes

    def test_assigned_names_become_node_ids(self):
        nodes = program(RESNET).nodes
        assert nodes["logits"].op.name == "dense" and nodes["stage1/basic1/y"].op.name == "batchnorm"

    def test_multiple_outputs(self):
        text = ("input x : [8]\ntarget t : [4]\nblock two() {\n  in x\n  out x -> dense(4), x -> dense(4)\n}\n"
                "a, b = x -> two\nloss mse(a + b, t)\n")
        nodes = program(text).nodes
        assert nodes["add1"].inputs == [("two1/dense1", 0), ("two1/dense2", 0)]


class TestLoops:
    def test_dense_block_rebinds(self):
        text = ("input x : [8, 4, 4]\ntarget y : class(3)\nblock db(n, k) {\n  in x\n"
                "  for i in 1..n { x = concat(x, x -> conv(k, 3, pad=1)) }\n  out x\n}\n"
                "loss cross_entropy(x -> db(3, 2) -> gap -> dense(3), y)\n")
        nodes = program(text).nodes
        assert [nodes[n].op.name for n in ("db1/x", "db1/x_2", "db1/x_3")] == ["concat"] * 3
        assert nodes["db1/x_3"].inputs[0] == ("db1/x_2", 0)

    def test_loop_variable_in_arguments(self):
        text = ("input x : [4]\ntarget t : [4]\nh = x\nfor i in 1..3 { h = h -> dense(4 * i) }\n"
                "loss mse(h -> dense(4), t)\n")
        units = [n.op.units for n in program(text).nodes.values() if n.op is not None and n.op.name == "dense"]
        assert units == [4, 8, 12, 4]


class TestArithmetic:
    @pytest.mark.parametrize("expr, attrs", [
        ("0.5 * x", {"factor": 0.5}), ("x / 4", {"factor": 0.25}), ("1 - x", {"factor": -1.0, "shift": 1.0}),
        ("x + 2", {"shift": 2.0}), ("-x", {"factor": -1.0}),
    ])
    def test_number_with_tensor_is_scale(self, expr, attrs):
        nodes = program(f"input x : [4]\ntarget t : [4]\nloss mse({expr}, t)\n").nodes
        (scale,) = [n for n in nodes.values() if n.op is not None and n.op.name == "scale"]
        for key, value in attrs.items():
            assert getattr(scale.op, key) == value

    def test_scalar_expressions_fold(self):
        nodes = program("input x : [4]\ntarget t : [6]\nloss mse(x -> dense(3 * 4 / 2), t)\n").nodes
        assert next(n for n in nodes.values() if n.op and n.op.name == "dense").op.units == 6


class TestSharing:
    GAN = """\
input x : [16]
block disc() {
  in x
  out x -> dense(8) -> relu -> dense(1)
}
share D = disc()
share E = dense(16)
fake = normal(4) -> dense(16) -> E
loss d: sigmoid_cross_entropy(x -> D, label=1) + sigmoid_cross_entropy(fake -> D, label=0)
"""

    def test_second_use_shares_first(self):
        nodes = program(self.GAN).nodes
        assert nodes["D.2/dense1"].shares == "D/dense1" and nodes["D/dense1"].shares is None

    def test_param_count_counts_shared_once(self, check):
        count = check(self.GAN).param_count()
        assert count == (16 * 8 + 8) + (8 + 1) + (4 * 16 + 16) + (16 * 16 + 16)


class TestRecurrence:
    def test_state_node_reads_the_final_value(self):
        text = ("input x : seq[4]\ntarget y : seq class(3)\nstate h : [8] = learned\n"
                "h = tanh(dense(x, 8) + dense(h[t-1], 8, bias=false))\n"
                "loss cross_entropy(h -> dense(3), y)\n")
        nodes = program(text).nodes
        assert nodes["h[t-1]"].kind == "state" and nodes["h[t-1]"].inputs == [("h", 1)]

    def test_use_without_delay_is_a_cycle_error(self, check):
        text = "input x : seq[4]\ntarget t : seq[4]\nstate h : [4]\nh = tanh(x + h)\nloss mse(h, t)\n"
        with pytest.raises(CheckFailed) as info:
            check(text)
        assert "cycle without a delay" in info.value.errors[0].message
        assert "h[t-1]" in info.value.errors[0].hint


class TestImports:
    def test_path_import_relative_to_the_file(self, tmp_path):
        from netdsl.driver import check_file

        (tmp_path / "lib").mkdir()
        (tmp_path / "lib" / "blocks.net").write_text("block twice(n) {\n  in x\n  out x -> dense(n) -> dense(n)\n}\n")
        spec = tmp_path / "net.net"
        spec.write_text('import "lib/blocks.net"\ninput x : [4]\ntarget t : [2]\nloss mse(x -> twice(2), t)\n')
        assert check_file(str(spec)).param_count() == (4 * 2 + 2) + (2 * 2 + 2)

    def test_errors_in_imported_files_carry_their_file(self, tmp_path):
        from netdsl.driver import check_file

        (tmp_path / "b.net").write_text("block bad() {\n  in x\n  out x -> rleu\n}\n")
        spec = tmp_path / "n.net"
        spec.write_text('import "b.net"\ninput x : [4]\ntarget t : [4]\nloss mse(x -> bad, t)\n')
        with pytest.raises(CheckFailed) as info:
            check_file(str(spec))
        (error,) = info.value.errors
        assert error.span.file.endswith("b.net") and error.span.line == 3
        assert error.span.file in info.value.sources


class TestDiscard:
    """`_` throws a value away: a split's or a block's output nobody needs."""

    SPLIT = ("input x : [4]\ntarget y : class(2)\na, _ = split(x, 2)\n"
             "b, _ = split(x, 2)\nloss cross_entropy(a + b -> dense(2), y)\n")

    def test_discarded_outputs_are_not_reported_unused(self):
        from netdsl.driver import check_text

        net = check_text(self.SPLIT, "d.net")
        assert "_" not in net.graph

    def test_a_block_output_can_be_discarded(self):
        from netdsl.driver import check_text

        text = ("input x : [4]\ntarget y : class(2)\n"
                "block halves() {\n  in x\n  a, b = split(x, 2)\n  out a, b\n}\n"
                "first, _ = halves(x)\nloss cross_entropy(first -> dense(2), y)\n")
        check_text(text, "b.net")

    def test_reading_the_discard_is_an_error_at_it(self):
        text = self.SPLIT.replace("a + b", "a + _")
        with pytest.raises(CheckFailed) as caught:
            from netdsl.driver import check_text
            check_text(text, "d.net")
        [error] = [e for e in caught.value.errors if "discards" in e.message]
        assert (error.span.line, error.span.col) == (5, 24)


class TestNamesBecomeIds:
    """The names a statement gives become its nodes' ids, in compile, draw and the TUI."""

    def test_each_output_of_a_split_takes_its_name(self):
        text = ("import rnn\ninput x : seq[4]\ntarget y : class(3)\n"
                "h = x -> lstm(8) -> last -> dense(9)\na, _, c = split(h, 3)\n"
                "logits = concat(c, a) -> dense(3)\nloss cross_entropy(logits, y)\n")
        from netdsl.driver import check_text
        nodes = check_text(text, "t.net").program.nodes
        splits = [i for i, node in nodes.items() if node.op is not None and node.op.name == "split"]
        # lstm's `i, f, g, o = split(z, 4)`, then the top level's: the discarded output
        # keeps a made-up id, the others are named, in the split's order
        assert splits == ["lstm1/i", "lstm1/f", "lstm1/g", "lstm1/o", "a", "split2", "c"]
        assert [nodes[i].op.index for i in splits[4:]] == [0, 1, 2]

    def test_ids_stay_unique_and_instances_keep_their_prefix(self):
        text = ("input x : [4]\ntarget y : class(2)\n"
                "block halves() {\n  in x\n  a, b = split(x, 2)\n  out a + b\n}\n"
                "a, b = split(x -> halves -> dense(4) -> halves -> dense(4), 2)\n"
                "loss cross_entropy(concat(a, b) -> dense(2), y)\n")
        ids = list(program(text).nodes)
        assert {"halves1/a", "halves1/b", "halves2/a", "halves2/b", "a", "b"} <= set(ids)
        assert len(ids) == len(set(ids))

    def test_a_node_given_twice_keeps_its_id(self):
        text = ("input x : [4]\ntarget y : class(2)\n"
                "block twice() {\n  in x\n  out x, x\n}\n"
                "p, q = x -> dense(4) -> twice\nloss cross_entropy(p + q -> dense(2), y)\n")
        nodes = program(text).nodes
        assert "dense1" in nodes and "p" not in nodes and "q" not in nodes
        assert nodes["add1"].inputs == [("dense1", 0), ("dense1", 0)]


def _layers(text):
    """Each node's op and attributes, by id: what two spellings of a network must share."""
    return {node_id: (node.kind, node.op and (node.op.name, node.op.attrs), node.inputs)
            for node_id, node in program(text).nodes.items()}


class TestDimensions:
    """`x.channels`, `x.features`, ..., and `shape(x)[i]` read a tensor's dimensions."""

    def test_a_block_reads_its_input_channels(self):
        by_hand = RESNET
        read = RESNET.replace("project(x, c, stride)", "project(x, shape(y)[0], stride)") \
                     .replace("conv(c, 3, pad=1, bias=false)", "conv(x.channels * stride, 3, pad=1, bias=false)")
        # stage 1 keeps 16 channels (stride 1); stage 2 doubles them to 32 at stride 2
        assert _layers(read) == _layers(by_hand)

    def test_each_named_dimension(self):
        text = """\
input v : [5]
input s : [3, 7]
input i : [2, 9, 11]
input w : seq class(40)
target y : class(4)
a = concat(v -> dense(v.features), s -> flatten -> dense(s.channels + s.length),
           i -> flatten -> dense(i.channels * i.height * i.width))
b = w -> embedding(w.classes) -> last
logits = concat(a, b) -> dense(y.classes)
loss cross_entropy(logits, y)
"""
        nodes = program(text).nodes
        units = sorted(n.op.units for n in nodes.values() if n.op is not None and n.op.name == "dense")
        assert units == [4, 5, 10, 198]
        assert next(n for n in nodes.values() if n.op is not None and n.op.name == "embedding").op.dim == 40

    def test_shape_indices_and_repeat_counts(self):
        text = """\
input x : [3, 8, 8]
target y : class(10)
h = x -> conv(4, 3, pad=1) -> relu x shape(x)[-1] -> global_avgpool
logits = h -> dense(shape(h)[0] + y.classes) -> dense(10)
loss cross_entropy(logits, y)
"""
        nodes = program(text).nodes
        assert sum(n.op is not None and n.op.name == "relu" for n in nodes.values()) == 8
        assert nodes["dense1"].op.units == 14

    def test_a_rebound_name_reads_its_latest_value(self):
        text = """\
input x : [3, 8, 8]
target y : class(10)
block grow(n, k) {
  in x
  for i in 1..n { x = concat(x, x -> conv(k, 3, pad=1)) }
  out x -> conv(x.channels / 2, 1)
}
logits = x -> grow(3, 5) -> global_avgpool -> dense(10)
loss cross_entropy(logits, y)
"""
        convs = [n.op.channels for n in program(text).nodes.values()
                 if n.op is not None and n.op.name == "conv"]
        assert convs == [5, 5, 5, (3 + 3 * 5) // 2]

    def test_a_sequence_is_read_per_step(self):
        text = """\
import rnn
input x : seq[6]
target y : class(3)
h = x -> gru(2 * x.features) -> last
logits = h -> dense(y.classes)
loss cross_entropy(logits, y)
"""
        from netdsl.driver import check_text
        net = check_text(text, "t.net")
        assert net.graph.nodes["h"]["type"].dims == (12,)

    def test_formatting_keeps_the_spelling(self):
        from netdsl.fmt import format_text
        line = "h = x -> conv(x.channels / 2, shape(x)[-1]) x shape(y)[0]\n"
        assert format_text(line) == line

    def test_shape_is_not_a_block_name(self):
        from netdsl.errors import SpecErrors
        with pytest.raises(SpecErrors) as info:
            program("input x : [4]\nblock shape() {\n  in x\n  out x\n}\n")
        assert "block 'shape' has the name of a built-in function" in [e.message for e in info.value.errors]


def test_the_documented_dimensions_example():
    """docs/language.md's example checks, and its comments say what the network computes."""
    import os
    import re
    from netdsl.driver import check_text
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "language.md")).read()
    section = doc.split("### Reading a tensor's dimensions")[1]
    example = re.search(r"```net\n(network widths\n.*?)```", section, re.S).group(1)
    graph = check_text(example, "widths.net").graph
    assert graph.nodes[graph.graph["names"]["h"]]["type"].dims == (16, 8, 8)
    assert [graph.nodes[n]["op"].units for n in graph if graph.nodes[n]["kind"] == "op"
            and graph.nodes[n]["op"].name == "dense"] == [1024, 10]


def test_bound_arguments_are_kept_by_value_and_type():
    """bind keeps converted arguments by op and arguments: a kept dense(1) must not answer
    for dense(true), a kept 0.0 not for -0.0, and each call makes its own op."""
    from netdsl.ops import OPS
    from netdsl.ops.base import ArgError, bind
    dense = OPS["dense"]
    first, second = bind(dense, [1], {}), bind(dense, [1], {})
    assert first is not second and first.attrs == second.attrs and first.attrs is not second.attrs
    assert (first.units, second.units) == (1, 1)
    with pytest.raises(ArgError, match="whole number"):
        bind(dense, [True], {})
    scale = OPS["scale"]
    assert str(bind(scale, [], {"factor": 0.0}).factor) == "0.0"
    assert str(bind(scale, [], {"factor": -0.0}).factor) == "-0.0"
    assert bind(scale, [], {"factor": 2}).factor == 2.0
    assert type(bind(scale, [], {"factor": 2}).factor) is float
