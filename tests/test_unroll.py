"""Tests for netdsl.unroll, `netc compile --emit unrolled` and `netc draw --unroll`."""
from __future__ import annotations

import math
import os
import time

import networkx as nx
import pytest

from conftest import ROOT, SPECS, assert_golden, cli_main
from netdsl.driver import check_file, check_text
from netdsl.emit import format_unrolled
from netdsl.errors import SpecError
from netdsl.unroll import INIT_KIND, unroll

GOLDEN = os.path.join(ROOT, "tests", "golden")

DELAY2 = """\
network delay2
input x : seq[4]
target y : seq class(4)
state h : [4] = 0.5
h = tanh(dense(x, 4) + h[t-2] + h[t-1])
loss cross_entropy(h, y)
"""

SHARED = """\
network shared
input x : seq[4]
target y : class(4)
block proj(n) {
  in x
  out x -> dense(n) -> tanh
}
share P = proj(4)
state h : [4]
h = P(x) + P(h[t-1])
logits = h -> first -> dense(4)
loss cross_entropy(logits, y)
"""


def spec(name: str) -> nx.DiGraph:
    return check_file(os.path.join(SPECS, f"{name}.net")).graph


def copies(dag: nx.DiGraph, origin: str) -> list[str]:
    return sorted(n for n, o in dag.nodes(data="origin") if o == origin)


def reads(dag: nx.DiGraph, node: str) -> list[str]:
    return sorted(dag.predecessors(node))


@pytest.fixture(scope="module")
def elman():
    return spec("elman")


class TestCounts:
    # per step: every node but the loss; once: the loss and one h@0 per declared state
    @pytest.mark.parametrize("name, nodes, edges", [
        ("elman", 8 * 3 + 1 + 1, 27),
        ("lstm", 20 * 3 + 1 + 2, 75),
        ("bidirectional_rnn", 69 * 3 + 1 + 4, 285),
    ])
    def test_nodes_and_edges_at_three_steps(self, name, nodes, edges):
        dag = unroll(spec(name), 3)
        assert (dag.number_of_nodes(), dag.number_of_edges()) == (nodes, edges)
        assert nx.is_directed_acyclic_graph(dag)

    @pytest.mark.parametrize("name", ["elman", "lstm", "lstm_classifier", "bidirectional_rnn"])
    def test_nodes_grow_by_one_step_graph_per_step(self, name):
        graph = spec(name)
        three, four = unroll(graph, 3), unroll(graph, 4)
        per_step = sum(1 for _, step in three.nodes(data="step") if step == 1)
        assert four.number_of_nodes() - three.number_of_nodes() == per_step
        assert per_step < graph.number_of_nodes()  # states and losses are not per step

    def test_long_unroll_is_linear_and_quick(self):
        graph = spec("lstm")
        started = time.perf_counter()
        dag = unroll(graph, 500)
        assert time.perf_counter() - started < 5  # the front end does not run per step
        assert dag.number_of_nodes() == 20 * 500 + 3


class TestNames:
    def test_every_step_has_its_copy(self, elman):
        dag = unroll(elman, 3)
        assert copies(dag, "h") == ["h@1", "h@2", "h@3"]
        assert copies(dag, "h[t-1]") == ["h@0", "h[t-1]@1", "h[t-1]@2", "h[t-1]@3"]
        assert [dag.nodes[n]["step"] for n in ("h@0", "h@2", "loss")] == [0, 2, None]

    def test_copies_have_one_steps_type(self, elman):
        dag = unroll(elman, 3)
        assert str(dag.nodes["h@2"]["type"]) == "[64]"
        assert str(dag.nodes["y@2"]["type"]) == "class(16)"
        assert str(dag.nodes["loss"]["type"]) == "[]"

    def test_state_reads_the_previous_step(self, elman):
        dag = unroll(elman, 3)
        assert reads(dag, "h[t-1]@1") == ["h@0"]
        assert reads(dag, "h[t-1]@3") == ["h@2"]
        assert dag.edges["h@2", "h[t-1]@3"]["delay"] == 1
        assert dag.edges["h@0", "h[t-1]@1"]["delay"] == 0
        assert reads(dag, "dense2@2") == ["h[t-1]@2"]

    def test_loss_reads_every_step(self, elman):
        assert reads(unroll(elman, 3), "loss") == [
            "logits@1", "logits@2", "logits@3", "y@1", "y@2", "y@3"]


class TestInitialValues:
    def test_delay_two_reads_the_initial_value_at_steps_one_and_two(self):
        dag = unroll(check_text(DELAY2, "delay2.net").graph, 4)
        assert [reads(dag, f"h[t-2]@{t}") for t in range(1, 5)] == [
            ["h@0"], ["h@0"], ["h@1"], ["h@2"]]
        assert dag.edges["h@1", "h[t-2]@3"]["delay"] == 2
        assert reads(dag, "h[t-1]@1") == ["h@0"] and reads(dag, "h[t-1]@2") == ["h@1"]

    def test_one_initial_node_per_declared_state(self):
        dag = unroll(check_text(DELAY2, "delay2.net").graph, 4)
        inits = [n for n, kind in dag.nodes(data="kind") if kind == INIT_KIND]
        assert inits == ["h@0"]
        assert dag.nodes["h@0"]["state"].init == 0.5 and dag.nodes["h@0"]["params"] is None

    def test_initial_values_as_declared(self):
        dag = unroll(spec("lstm"), 2)
        assert dag.nodes["h@0"]["state"].init == "learned"
        assert dag.nodes["c@0"]["state"].init == "zeros"
        assert dag.nodes["h@0"]["params"] == "h[t-1]" and dag.nodes["c@0"]["params"] is None

    def test_initial_values_inside_blocks_keep_the_block_prefix(self):
        dag = unroll(spec("bidirectional_rnn"), 2)
        assert "bigru2/gru1/h@0" in dag
        assert reads(dag, "bigru2/gru1/h[t-1]@1") == ["bigru2/gru1/h@0"]


class TestWholeSequenceOps:
    def test_reverse_reads_the_mirrored_step(self):
        dag = unroll(spec("bidirectional_rnn"), 3)
        assert [reads(dag, f"bigru1/reverse1@{t}") for t in (1, 2, 3)] == [
            ["x@3"], ["x@2"], ["x@1"]]

    def test_last_reads_the_final_step_once(self):
        dag = unroll(spec("lstm_classifier"), 3)
        last = [n for n, d in dag.nodes(data=True) if d["op"] and d["op"].name == "last"]
        assert len(last) == 1 and dag.nodes[last[0]]["step"] is None
        (source,) = reads(dag, last[0])
        assert source.endswith("@3")

    def test_first_reads_step_one(self):
        dag = unroll(check_text(SHARED, "shared.net").graph, 3)
        assert reads(dag, "first1") == ["h@1"]


class TestSharedWeights:
    def test_every_copy_uses_the_one_layers_weights(self, elman):
        dag = unroll(elman, 3)
        assert {dag.nodes[n]["params"] for n in copies(dag, "dense2")} == {"dense2"}
        assert dag.nodes["add1@2"]["params"] is None

    def test_weights_are_named_once_and_count_as_the_network(self, elman):
        dag = unroll(elman, 3)
        assert list(dag.graph["weights"]) == ["h[t-1]", "dense1", "dense2", "logits"]
        total = sum(math.prod(s) for p in dag.graph["weights"].values() for s in p.values())
        assert total == check_file(os.path.join(SPECS, "elman.net")).param_count()

    def test_shared_instance_uses_its_owners_weights(self):
        dag = unroll(check_text(SHARED, "shared.net").graph, 2)
        assert dag.nodes["P.2/dense1@2"]["params"] == "P/dense1"
        assert list(dag.graph["weights"]) == ["P/dense1", "logits"]
        text = format_unrolled(dag)
        assert text.count("weights P/dense1 ") == 1
        assert ("weights P/dense1 (weight [4,4], bias [4]): P/dense1@1, P.2/dense1@1, "
                "P/dense1@2, P.2/dense1@2") in text


class TestErrors:
    @pytest.mark.parametrize("steps", [0, -1, True, 2.5, "3"])
    def test_steps_must_be_a_whole_number_of_at_least_one(self, elman, steps):
        with pytest.raises(SpecError, match="at least 1") as info:
            unroll(elman, steps)
        assert "--unroll 3" in info.value.hint

    def test_network_without_state_is_refused(self):
        with pytest.raises(SpecError, match="mlp.net has no recurrent state") as info:
            unroll(spec("mlp"), 3)
        assert "state h : [n]" in info.value.hint


class TestEmit:
    def test_lines_read_like_emit_graph(self, elman):
        lines = format_unrolled(unroll(elman, 2)).splitlines()
        assert lines[0] == "unrolled elman over 2 steps: 18 nodes, 18 edges"
        assert "h@0 [init learned] [64] -> h[t-1]@1" in lines
        assert "h@1 [tanh] [64] -> logits@1, h[t-1]@2 (delay 1)" in lines
        assert lines.index("x@1 [input] [16] -> dense1@1") < lines.index(
            "x@2 [input] [16] -> dense1@2")
        assert "weights dense2 (weight [64,64]): dense2@1, dense2@2" in lines

    def test_golden_elman(self, elman, update_golden):
        text = format_unrolled(unroll(elman, 3)) + "\n"
        assert_golden(os.path.join(GOLDEN, "elman.unroll"), text, update_golden)


ELMAN = os.path.join("specs", "elman.net")
MLP = os.path.join("specs", "mlp.net")


def assert_one_clear_error(result, *words, code=1):
    """Exit `code` (1 for the spec, 2 for the command line) and one clear message."""
    assert result.returncode == code
    assert "Traceback" not in result.stderr
    assert all(word in result.stderr for word in words), result.stderr


class TestCompileCli:
    def test_emit_unrolled_defaults_to_three_steps(self):
        result = cli_main("compile", ELMAN, "--emit", "unrolled")
        assert result.returncode == 0, result.stderr
        with open(os.path.join(GOLDEN, "elman.unroll")) as handle:
            assert result.stdout == handle.read()

    def test_emit_unrolled_over_n_steps(self):
        result = cli_main("compile", ELMAN, "--emit", "unrolled", "--unroll", "5")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("unrolled elman over 5 steps:")
        assert "h@5 [tanh]" in result.stdout and "h@6" not in result.stdout

    @pytest.mark.parametrize("steps", ["0", "-2", "x", "1.5"])
    def test_bad_step_count(self, steps):
        result = cli_main("compile", ELMAN, "--emit", "unrolled", "--unroll", steps)
        assert_one_clear_error(result, "--unroll", "at least 1", "--unroll 3", code=2)

    def test_spec_without_state(self):
        result = cli_main("compile", MLP, "--emit", "unrolled")
        assert_one_clear_error(result, "nothing to unroll", "mlp.net", "state h")

    def test_unroll_without_emit_unrolled(self):
        result = cli_main("compile", ELMAN, "--unroll", "2")
        assert_one_clear_error(result, "--unroll goes with --emit unrolled", code=2)


class TestDrawCli:
    def test_draw_unrolled_dot(self, tmp_path):
        out = tmp_path / "elman.dot"
        result = cli_main("draw", ELMAN, "--unroll", "4", "-o", str(out))
        assert result.returncode == 0, result.stderr
        source = out.read_text()
        assert '"h@4"' in source and '"h@0"' in source and '"h@5"' not in source
        assert "the weights of dense2, the same at every step" in source

    def test_draw_unrolled_and_collapsed(self, tmp_path):
        out = tmp_path / "bi.dot"
        result = cli_main("draw", os.path.join("specs", "bidirectional_rnn.net"), "--unroll", "2",
                          "--collapse", "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert '"[bigru1]@2"' in out.read_text()

    @pytest.mark.parametrize("steps", ["0", "-1", "three"])
    def test_bad_step_count(self, tmp_path, steps):
        out = tmp_path / "elman.dot"
        result = cli_main("draw", ELMAN, "--unroll", steps, "-o", str(out))
        assert_one_clear_error(result, "--unroll", "at least 1", code=2)
        assert not out.exists()

    def test_spec_without_state(self, tmp_path):
        out = tmp_path / "mlp.dot"
        result = cli_main("draw", MLP, "--unroll", "3", "-o", str(out))
        assert_one_clear_error(result, "nothing to unroll", "leave out the unrolling")
        assert not out.exists()


def test_the_names_of_a_split_are_the_unrolled_nodes_at_every_step():
    """specs/lstm.net's `i, f, g, o = split(z, 4)`: nodes i@t, f@t, g@t, o@t, in that
    order, at each step."""
    lstm = check_file(os.path.join(SPECS, "lstm.net")).graph
    lines = format_unrolled(unroll(lstm, 3)).splitlines()
    for step in (1, 2, 3):
        gates = [line.split(" ")[0] for line in lines if f"@{step} [split]" in line]
        assert gates == [f"{gate}@{step}" for gate in "ifgo"]
