"""Tests for netdsl.draw: clusters, collapsed blocks, shapes on edges, recurrence, files."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from netdsl.draw import FORMATS, render, to_dot
from netdsl.driver import check_text
from netdsl.errors import SpecError

RES = """\
network res
input x : [3, 32, 32]
target y : class(10)
block basic(c, stride=1) {
  in x
  y = x -> conv(c, 3, stride=stride, pad=1, bias=false) -> batchnorm -> relu -> conv(c, 3, pad=1, bias=false) -> batchnorm
  out relu(y + project(x, c, stride))
}
logits = x -> conv(16, 3, pad=1) -> basic(16) x 3 -> basic(32, stride=2) -> gap -> dense(10)
loss cross_entropy(logits, y)
"""

ELMAN = """\
network elman
input x : seq[16]
target y : seq class(16)
state h : [64] = learned
h = tanh(dense(x, 64) + dense(h[t-1], 64, bias=false))
loss cross_entropy(h -> dense(16), y)
"""

NESTED = """\
network nested
input x : [3, 16, 16]
target y : class(4)
block inner(c) {
  in x
  out x -> conv(c, 3, pad=1) -> relu
}
block outer(c) {
  in x
  out concat(x, x -> inner(c) -> inner(c))
}
logits = x -> outer(8) -> gap -> dense(4)
loss cross_entropy(logits, y)
"""

SKIP = """\
network skip
input x : [3, 16, 16]
target y : class(4)
a = x -> conv(8, 3, pad=1)
b = a -> relu -> conv(8, 3, pad=1) -> relu
logits = concat(a, b) -> gap -> dense(4)
loss cross_entropy(logits, y)
"""

CELLS = """\
network cells
input x : seq[4]
target y : class(4)
block cell(n) {
  in x
  state h : [n] = learned, c : [n]
  c = tanh(dense(x, n) + c[t-1])
  h = tanh(dense(c, n) + dense(h[t-1], n))
  out h
}
logits = x -> cell(8) -> last -> dense(4)
loss cross_entropy(logits, y)
"""

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot program is not installed")


@pytest.fixture(scope="module")
def res():
    return check_text(RES, "res.net").graph


@pytest.fixture(scope="module")
def elman():
    return check_text(ELMAN, "elman.net").graph


@pytest.fixture(scope="module")
def nested():
    return check_text(NESTED, "nested.net").graph


def clusters(dot) -> list[str]:
    return re.findall(r'subgraph "?cluster_([^"\s]+)"? \{', dot.source)


def edges(dot) -> dict[tuple[str, str], str]:
    """(tail, head) -> attribute text, with `dir=back` edges turned the way data flows."""
    found = {}
    for tail, head, attrs in re.findall(r'^\s*("[^"]+"|\S+) -> ("[^"]+"|\S+) \[(.*)\]$',
                                        dot.source, re.M):
        tail, head = tail.strip('"'), head.strip('"')
        found[(head, tail) if "dir=back" in attrs else (tail, head)] = attrs
    return found


def node_attrs(dot, node: str) -> str:
    match = re.search(rf'^\s*"?{re.escape(node)}"? \[(.*)\]$', dot.source, re.M)
    assert match, f"no node {node}"
    return match.group(1)


class TestClusters:
    def test_one_cluster_per_block_instance(self, res):
        assert sorted(clusters(to_dot(res))) == ["basic1", "basic2", "basic3", "basic4"]

    def test_cluster_labelled_with_instance_and_block(self, res):
        assert 'label="basic4 : basic"' in to_dot(res).source

    def test_nested_instances_nest_clusters(self, nested):
        source = to_dot(nested).source
        assert set(clusters(to_dot(nested))) == {"outer1", "outer1/inner1", "outer1/inner2"}
        outer = re.search(r'^(\s*)subgraph "?cluster_outer1"? \{', source, re.M)
        inner = re.search(r'^(\s*)subgraph "?cluster_outer1/inner1"? \{', source, re.M)
        assert outer.start() < inner.start() and len(inner.group(1)) > len(outer.group(1))

    def test_layers_sit_inside_their_cluster(self, res):
        source = to_dot(res).source
        block = source[source.index("cluster_basic2"):source.index("cluster_basic3")]
        assert '"basic2/conv1"' in block and '"basic1/conv1"' not in block


class TestCollapse:
    def test_collapsed_has_no_clusters_or_inner_layers(self, res):
        dot = to_dot(res, collapse=True)
        assert clusters(dot) == []
        assert "basic1/conv1" not in dot.source

    def test_repeated_stage_is_one_box(self, res):
        dot = to_dot(res, collapse=True)
        boxes = re.findall(r'label="(basic[^"]*)"', dot.source)
        assert boxes == ["basic x 3\\nbasic1 .. basic3\\n[16,32,32]", "basic4 : basic\\n[32,16,16]"]

    def test_collapsed_boxes_keep_the_data_flow(self, res):
        flow = edges(to_dot(res, collapse=True))
        assert ("conv1", "[basic1]") in flow and ("[basic1]", "[basic4]") in flow
        assert 'label="[16,32,32]"' in flow[("[basic1]", "[basic4]")]

    def test_collapse_depth_keeps_outer_clusters(self, nested):
        dot = to_dot(nested, collapse=2)
        assert clusters(dot) == ["outer1"]
        assert "inner1 : inner\\n[8,16,16]" in dot.source

    def test_negative_depth_is_an_error(self, res):
        with pytest.raises(SpecError, match="collapse depth"):
            to_dot(res, collapse=-1)


class TestEdgesAndNodes:
    def test_every_edge_is_labelled_with_its_shape(self, res):
        flow = edges(to_dot(res))
        assert len(flow) == res.number_of_edges()
        for (u, _), attrs in flow.items():
            assert f'label="{res.nodes[u]["type"]}"' in attrs
        assert 'label="[3,32,32]"' in flow[("x", "conv1")]
        assert 'label="[32]"' in flow[("global_avgpool1", "logits")]

    def test_inputs_targets_and_losses_look_different(self, res):
        dot = to_dot(res)
        looks = {n: node_attrs(dot, n) for n in ("x", "y", "loss", "logits")}
        assert len(set(looks.values())) == 4
        assert "invhouse" in looks["x"] and "invhouse" in looks["y"]
        assert "doubleoctagon" in looks["loss"]

    def test_joins_are_small(self, res):
        assert "shape=circle" in node_attrs(to_dot(res), "basic1/add1")

    def test_layer_labels_read_like_the_spec(self, res):
        dot = to_dot(res)
        assert 'label="conv(16, 3, pad=1, bias=false)"' in node_attrs(dot, "basic1/conv1")
        assert 'label="logits = dense(10)"' in node_attrs(dot, "logits")

    def test_long_skip_edge_does_not_pull_the_main_path(self):
        flow = edges(to_dot(check_text(SKIP, "skip.net").graph))
        assert "weight=0" in flow[("a", "concat1")]
        assert "weight" not in flow[("a", "relu1")]


class TestRecurrence:
    def test_recurrent_edge_is_drawn_back_dashed(self, elman):
        attrs = edges(to_dot(elman))[("h", "h[t-1]")]
        assert "style=dashed" in attrs and "constraint=false" in attrs and 'label="t-1"' in attrs

    def test_state_shows_its_initial_value(self, elman):
        assert "state = learned" in node_attrs(to_dot(elman), "h[t-1]")

    def test_unroll_draws_one_copy_per_step(self, elman):
        dot = to_dot(elman, unroll=3)
        assert dot.source.count('label="dense(64, bias=false)"') == 3
        assert {f"h@{t}" for t in range(1, 4)} <= set(re.findall(r'"(h@\d+)"', dot.source))
        assert "h@4" not in dot.source and '"h[t-1]@2"' in dot.source
        assert sorted(c for c in clusters(dot)) == ["t1", "t2", "t3"]

    def test_unrolled_recurrence_links_consecutive_steps(self, elman):
        flow = edges(to_dot(elman, unroll=3))
        assert ("h@1", "h[t-1]@2") in flow and ("h@2", "h[t-1]@3") in flow
        assert ("h[t-1]@2", "dense2@2") in flow
        assert not any(u == "h@3" and v.startswith("h[t-1]") for u, v in flow)
        assert 'label="[64]"' in flow[("h@1", "h[t-1]@2")]  # one step's shape, not seq[64]
        assert "#7a3db8" in flow[("h@1", "h[t-1]@2")]

    def test_initial_state_feeds_the_first_step(self, elman):
        dot = to_dot(elman, unroll=3)
        assert 'label="h@0 = learned"' in node_attrs(dot, "h@0")
        assert ("h@0", "h[t-1]@1") in edges(dot)
        assert not any(u == "h@0" and v != "h[t-1]@1" for u, v in edges(dot))

    def test_copies_of_a_layer_share_a_fill_and_say_whose_weights(self, elman):
        dot = to_dot(elman, unroll=3)
        fill = {n: re.search(r'fillcolor="([^"]+)"', node_attrs(dot, n)).group(1)
                for n in ("dense1@1", "dense1@3", "dense2@1", "dense2@2", "dense2@3")}
        assert fill["dense2@1"] == fill["dense2@2"] == fill["dense2@3"]
        assert fill["dense1@1"] == fill["dense1@3"] != fill["dense2@1"]
        assert "the weights of dense2, the same at every step" in node_attrs(dot, "dense2@3")

    def test_loss_over_the_sequence_is_drawn_once(self, elman):
        flow = edges(to_dot(elman, unroll=3))
        assert sorted(u for u, v in flow if v == "loss" and u.startswith("dense3")) == [
            "dense3@1", "dense3@2", "dense3@3"]

    def test_collapsed_cell_unrolls_with_every_initial_state(self):
        dot = to_dot(check_text(CELLS, "cells.net").graph, collapse=True, unroll=3)
        flow = edges(dot)
        assert ("[cell1]@1", "[cell1]@2") in flow and ("[cell1]@2", "[cell1]@3") in flow
        assert 'label="cell1/h@0 = learned"' in node_attrs(dot, "cell1/h@0")
        assert 'label="cell1/c@0 = zeros"' in node_attrs(dot, "cell1/c@0")
        assert {("cell1/h@0", "[cell1]@1"), ("cell1/c@0", "[cell1]@1")} <= set(flow)
        assert 'label="cell1 : cell\\n[8]"' in node_attrs(dot, "[cell1]@1")
        assert "the same weights at every step" in node_attrs(dot, "[cell1]@2")

    def test_last_reads_only_the_last_step(self):
        flow = edges(to_dot(check_text(CELLS, "cells.net").graph, collapse=True, unroll=3))
        assert [u for u, v in flow if v == "last1"] == ["[cell1]@3"]
        assert ("last1", "logits") in flow

    def test_collapsed_cell_loops_back_once(self):
        dot = to_dot(check_text(CELLS, "cells.net").graph, collapse=True)
        assert 'label="t-1"' in edges(dot)[("[cell1]", "[cell1]")]
        assert dot.source.count('"[cell1]" -> "[cell1]"') == 1  # two states, one loop

    @needs_dot
    def test_steps_are_laid_out_left_to_right(self, elman):
        plain = subprocess.run(["dot", "-Tplain"], input=to_dot(elman, unroll=4).source,
                               capture_output=True, text=True, timeout=60).stdout
        x = {m[0]: float(m[1]) for m in re.findall(r'^node "?(h@[1-9])"? (\S+)', plain, re.M)}
        assert sorted(x, key=x.get) == ["h@1", "h@2", "h@3", "h@4"]

    def test_unroll_needs_a_state(self, res, elman):
        with pytest.raises(SpecError, match="no recurrent state") as info:
            to_dot(res, unroll=2)
        assert "state h" in info.value.hint
        with pytest.raises(SpecError, match="at least 1"):
            to_dot(elman, unroll=0)


class TestDotSource:
    @needs_dot
    @pytest.mark.parametrize("options", [{}, {"collapse": True}, {"collapse": 2}, {"unroll": 3}])
    def test_graphviz_accepts_the_source(self, res, elman, options):
        graph = elman if "unroll" in options else res
        run = subprocess.run(["dot", "-Tsvg"], input=to_dot(graph, **options).source,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert "<svg" in run.stdout

    def test_dot_file_needs_no_graphviz(self, res, tmp_path, monkeypatch):
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        path = render(res, str(tmp_path / "res.dot"), collapse=True)
        assert open(path).read() == to_dot(res, collapse=True).source


class TestRender:
    def test_missing_dot_says_how_to_install_it(self, res, tmp_path, monkeypatch):
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        with pytest.raises(SpecError) as info:
            render(res, str(tmp_path / "res.svg"))
        assert "not installed" in info.value.message
        for words in ("apt-get install graphviz", "brew install graphviz", "-o file.dot"):
            assert words in info.value.hint
        assert os.listdir(tmp_path) == []

    def test_unknown_extension_lists_the_formats(self, res, tmp_path):
        with pytest.raises(SpecError, match="unknown format 'jpg'") as info:
            render(res, str(tmp_path / "res.jpg"))
        assert all(f".{fmt}" in info.value.hint for fmt in FORMATS)

    @needs_dot
    @pytest.mark.parametrize("fmt, magic",
                             [("svg", b"<svg"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
    def test_writes_the_format_and_no_temporary_file(self, res, tmp_path, fmt, magic):
        path = tmp_path / f"res.{fmt}"
        path.write_bytes(b"old")
        render(res, str(path), collapse=True)
        assert magic in path.read_bytes()[:1000]
        assert os.listdir(tmp_path) == [path.name]

    def test_written_file_gets_the_usual_mode(self, res, tmp_path):
        umask = os.umask(0o022)
        try:
            path = render(res, str(tmp_path / "res.dot"))
        finally:
            os.umask(umask)
        assert os.stat(path).st_mode & 0o777 == 0o644

    def test_failed_write_keeps_the_old_file(self, res, tmp_path, monkeypatch):
        path = tmp_path / "res.dot"
        path.write_text("old")

        def fail(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", fail)
        with pytest.raises(SpecError, match="cannot write"):
            render(res, str(path))
        assert path.read_text() == "old"
        assert os.listdir(tmp_path) == ["res.dot"]

    def test_missing_folder_is_a_spec_error(self, res, tmp_path):
        with pytest.raises(SpecError, match="cannot write"):
            render(res, str(tmp_path / "nowhere" / "res.dot"))
