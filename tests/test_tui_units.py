"""The builder's pure parts: highlighting, graph layout and drawing, text edits, files."""
from __future__ import annotations

import os

import pytest

from conftest import ROOT, assert_golden
from netdsl import edits
from netdsl.driver import check_text
from netdsl.errors import SpecError
from netdsl.tui.files import Recovery, load_spec, save_spec
from netdsl.tui.graph_canvas import draw_graph
from netdsl.highlight import highlight_line

MLP = open(os.path.join(ROOT, "specs", "mlp.net")).read()
RESNET20 = open(os.path.join(ROOT, "specs", "resnet20.net")).read()
SNAPSHOTS = os.path.join(ROOT, "tests", "tui_snapshots")


def graph_of(text: str, file: str = "t.net"):
    return check_text(text, file).graph


def styles(line: str, blocks=frozenset()) -> dict[str, str]:
    return {line[t.start:t.end]: t.style for t in highlight_line(line, blocks)}


def compare_snapshot(name: str, text: str, update: bool) -> None:
    assert_golden(os.path.join(SNAPSHOTS, name), text, update)


class TestHighlight:
    def test_terminals_get_their_styles(self):
        found = styles("logits = x -> dense(256) x 3 -> relu  # scores")
        assert found["dense"] == "function" and found["relu"] == "function"
        assert found["256"] == "number" and found["->"] == "operator"
        assert found["# scores"] == "comment"
        assert highlight_line("logits = x -> relu")[2].style == "variable"  # the input x

    def test_repeat_x_is_a_keyword_only_after_a_stage(self):
        tokens = highlight_line("h = x -> basic(64) x 3")
        repeat = [t for t in tokens if t.start == 19][0]
        assert repeat.style == "keyword"

    def test_keywords_and_blocks(self):
        found = styles("block basic(c, stride=1) {", frozenset({"basic"}))
        assert found["block"] == "keyword" and found["basic"] == "type"

    def test_broken_input_marks_the_bad_character_and_goes_on(self):
        tokens = highlight_line("h = x $ -> relu")
        assert ("$", "error") in [("h = x $ -> relu"[t.start:t.end], t.style) for t in tokens]
        assert tokens[-1].style == "function"  # lexing resumed after the bad character

    def test_unclosed_string_does_not_raise(self):
        assert highlight_line("pad='same")[-1].style == "variable"


class TestLayout:
    def test_chain_is_one_straight_column(self):
        picture = draw_graph(graph_of(MLP))
        centres = {r.x + r.width // 2 for n, r in picture.rects.items() if n not in ("y", "loss")}
        assert len(centres) == 1

    def test_shapes_are_written_on_edges(self):
        text = draw_graph(graph_of(MLP)).text()
        assert "│ [64]" in text and "│ [256]" in text and "class(10)" in text

    def test_residual_fork_and_join_read_as_branches(self):
        text = draw_graph(graph_of(RESNET20, "r.net")).text()
        assert "├──" in text and "╯" in text  # a fork to the shortcut and the join back

    def test_collapsed_block_is_one_box(self):
        graph = graph_of(RESNET20, "r.net")
        picture = draw_graph(graph, frozenset({"stage1"}))
        assert "[stage1]" in picture.rects
        assert "▸ stage1 : stage" in picture.text()
        assert not any(n.startswith("stage1/") for n in picture.rects)
        assert len(picture.boxes["[stage1]"].members) == 24  # three basic blocks of eight nodes

    def test_expanded_blocks_are_framed_with_their_calls(self):
        picture = draw_graph(graph_of(RESNET20, "r.net"), frozenset({"stage2/basic2"}))
        text = picture.text()
        for label in ("stage1 : stage(16, 3)", "stage1/basic1 : basic(16, 1)",
                      "stage2 : stage(32, 3, stride=2)", "stage3/basic3 : basic(64)"):
            assert text.count(label) == 1, label
        assert "stage2/basic2 :" not in text  # collapsed: its box says what it is
        lines = text.splitlines()
        for path in ("stage1/basic2", "stage2"):
            boxes = [picture.rects[b] for b in picture.boxes if b in picture.rects and (
                b.startswith(path + "/") or b == f"[{path}]")]
            top, bottom = min(r.y for r in boxes), max(r.y + r.height - 1 for r in boxes)
            right = max(r.x + r.width for r in boxes)
            x = lines[top].index("╮", right)  # right of everything drawn on the frame's rows
            assert lines[bottom][x] == "╯"
            assert all(lines[y][x] == "│" for y in range(top + 1, bottom))
            assert f"{path} :" in lines[top] + lines[top + 1]  # the outer frame's label first
        first = picture.rects["stage1/basic1/conv1"]
        row = lines[first.y][first.x + first.width:]
        assert row.count("╮") == 3 and "stage1 : stage" in row  # the project box's, two frames'
        assert "[stage2/basic2]" in picture.rects

    def test_one_row_frames_in_the_overview_keep_every_label(self):
        text = ("input x : [8]\ntarget y : class(4)\nblock one(n) {\n  in x\n  out dense(x, n)\n}\n"
                "block two(n) {\n  in x\n  out x -> one(n)\n}\n"
                "h = x -> two(8) -> one(8) -> one(8)\nloss cross_entropy(h -> dense(4), y)\n")
        drawn = draw_graph(graph_of(text), compact=True).text()
        for label in ("two1 : two(8)", "two1/one1 : one(8)", "one1 : one(8)", "one2 : one(8)"):
            assert label in drawn
        assert "[dense] ] ] two1" in drawn  # one row, two nested frames: a bracket each

    def arrows_into(self, picture, box: str) -> int:
        r = picture.rects[box]
        above = picture.row_text(r.y - 1, r.x, r.x + r.width)
        return above.count("▼") + above.count("↓")

    def test_a_value_read_twice_is_two_lines(self):
        text = ("input x : [4]\ntarget y : class(4)\nh = x -> dense(4)\nk = h -> relu -> relu\n"
                "z = concat(h, k, h) -> dense(4)\nw = z * z\nloss cross_entropy(w, y)\n")
        picture = draw_graph(graph_of(text))
        assert self.arrows_into(picture, "w") == 2  # z * z: two arrows, not one
        assert self.arrows_into(picture, "concat1") == 3
        # h's two edges into concat pass the relus on lines (dummy boxes) of their own
        for layer in picture.layers:
            lanes = {picture.boxes[b].x for b in layer if b.startswith("h→")}
            assert len(lanes) in (0, 2)

    def test_lstm_gate_edges_stay_apart(self):
        graph = graph_of(open(os.path.join(ROOT, "specs", "lstm.net")).read())
        picture = draw_graph(graph)
        joins = [b for b in picture.boxes.values() if b.kind == "join"]
        assert len(joins) == 4
        for box in joins:  # every input of × and + arrives on its own line
            assert self.arrows_into(picture, box.id) == len(graph.nodes[box.id]["inputs"]) == 2
        text = picture.text()
        assert "┼" not in text  # the cell's line crossing the gates' passes under, not a joint
        crossing = next(line for line in text.splitlines() if "╯" in line and "│╭" in line)
        assert crossing.count("│") >= 4  # c[t-1]'s edge to the first × crosses three gates
        overview = draw_graph(graph, compact=True)
        for box in joins:  # the overview's `[×]` too
            assert self.arrows_into(overview, box.id) == 2
        for split in "ifgo":  # the gates, split's outputs: a bend turns up into its box
            r = overview.rects[split]
            assert overview.row_text(r.y + 1)[r.x + r.width // 2] in "│╰╯├┤┴"

    def test_recurrent_edge_is_marked(self):
        text = draw_graph(graph_of(open(os.path.join(ROOT, "specs", "elman.net")).read())).text()
        assert "h[t-1] ⟲ h" in text and "t-1" in text and "┆" in text

    def test_compact_zoom_is_smaller(self):
        graph = graph_of(RESNET20, "r.net")
        detail, compact = draw_graph(graph), draw_graph(graph, compact=True)
        assert compact.height < detail.height / 2

    def test_box_at_finds_a_box(self):
        picture = draw_graph(graph_of(MLP))
        rect = picture.rects["dense1"]
        assert picture.box_at(rect.x + 1, rect.y + 1) == "dense1"

    def test_snapshot_mlp(self, update_golden):
        compare_snapshot("mlp_graph.txt", draw_graph(graph_of(MLP)).text() + "\n", update_golden)


class TestEdits:
    def test_insert_after_a_stage_touches_only_that_place(self):
        graph = graph_of(MLP)
        edit = edits.insert_after(MLP, graph, "relu1", "dense(64)")
        after = edit.apply(MLP)
        assert "-> relu -> dense(64) -> dropout(0.2)" in after
        assert after.replace(" -> dense(64)", "", 1) == MLP  # comments and layout untouched
        check_text(after)

    def test_insert_after_a_nested_call_wraps_it(self):
        graph = graph_of(RESNET20, "r.net")
        edit = edits.insert_after(RESNET20, graph, "stage1/basic1/project1", "relu")
        assert "relu(y + (project(x, c, stride) -> relu))" in edit.apply(RESNET20)

    def test_delete_a_stage_rewires(self):
        graph = graph_of(MLP)
        after = edits.delete_node(MLP, graph, "dense2").apply(MLP)
        assert "           -> relu -> dense(10)" in after
        check_text(after)

    def test_delete_last_stage_of_a_line(self):
        after = edits.delete_node(MLP, graph_of(MLP), "logits").apply(MLP)
        assert "-> dense(256) -> relu\n" in after

    def test_delete_a_whole_continuation_line_keeps_the_rest(self):
        text = "input x : [4]\ntarget y : class(2)\nh = x -> dense(8)\n  -> relu   # act\n" \
               "  -> dense(2)\nloss cross_entropy(h, y)\n"
        after = edits.delete_node(text, graph_of(text), "relu1").apply(text)
        assert after == text.replace("  -> relu   # act\n", "")

    def test_delete_a_join_is_refused_with_a_reason(self):
        with pytest.raises(edits.EditRefused, match="branches"):
            edits.delete_node(RESNET20, graph_of(RESNET20, "r.net"), "stage1/basic1/add1")

    def test_delete_an_input_is_refused(self):
        with pytest.raises(edits.EditRefused, match="input"):
            edits.delete_node(MLP, graph_of(MLP), "x")

    def test_arguments_are_read_and_rewritten(self):
        graph = graph_of(MLP)
        name, fields = edits.argument_fields(MLP, graph, "dropout1")
        assert name == "dropout" and fields[0].value == "0.2" and fields[0].default == "0.5"
        after = edits.set_arguments(MLP, graph, "dense1", {"units": "128", "bias": "false"}).apply(MLP)
        assert "x -> dense(128, bias=false) -> relu" in after

    def test_arguments_of_a_call_keep_its_tensor_inputs(self):
        graph = graph_of(RESNET20, "r.net")
        edit = edits.set_arguments(RESNET20, graph, "stage1/basic1/project1", {"stride": "2"})
        assert "project(x, c, stride=2)" in edit.apply(RESNET20)

    def test_skip_connection_adds_a_named_value(self):
        after = edits.add_skip(MLP, graph_of(MLP), "x", "relu1").apply(MLP)
        assert "logits = (x -> dense(256) -> relu) + x -> dropout(0.2)" in after

    def test_skip_from_an_output_of_a_split_uses_its_name(self):
        text = ("input x : [8]\ntarget y : class(2)\nh = x -> dense(8)\na, b = split(h, 2)\n"
                "z = concat(a, a) -> dense(4) -> relu\nlogits = concat(z, b) -> dense(2)\n"
                "loss cross_entropy(logits, y)\n")
        graph = graph_of(text)
        assert {"a", "b"} <= set(graph)  # the names are the nodes' ids
        after = edits.add_skip(text, graph, "b", "z").apply(text)
        assert "z = (concat(a, a) -> dense(4) -> relu) + b\n" in after
        check_text(after, "t.net")

    def test_skip_from_an_unnamed_value_explains(self):
        with pytest.raises(edits.EditRefused, match="name it first"):
            edits.add_skip(MLP, graph_of(MLP), "relu1", "relu2")

    def test_block_use_counts_instances_of_the_block_and_of_the_call(self):
        graph = graph_of(RESNET20, "r.net")
        use = edits.block_use(RESNET20, graph, "stage2/basic3/relu1")
        assert (use.block, use.instances, use.call_instances, use.copy) == \
            ("basic", 9, 6, "basic_2")
        assert use.call.line == 28  # `out y -> basic(c) x (n - 1)` in stage
        assert edits.block_use(RESNET20, graph, "relu1") is None  # not in a block
        assert edits.block_use(MLP, graph_of(MLP), "relu1") is None

    def test_only_this_call_edits_a_copy_and_still_checks(self):
        graph = graph_of(RESNET20, "r.net")
        node = "stage1/basic1/relu1"  # made by `basic(c, stride)`, the first of each stage
        edit = edits.only_this_call(RESNET20, graph, node,
                                    edits.insert_after(RESNET20, graph, node, "dropout(0.1)"))
        after = edit.apply(RESNET20)
        assert after.count("block basic(c, stride=1) {") == 1
        assert "block basic_2(c, stride=1) {\n  in x\n  y = x -> conv(c, 3, stride=stride, " \
               "pad=1, bias=false) -> batchnorm -> relu -> dropout(0.1)\n" in after
        assert "  y = x -> basic_2(c, stride)\n  out y -> basic(c) x (n - 1)" in after
        checked = check_text(after, "r.net").graph
        dropouts = [n for n in checked if n.endswith("/dropout1")]
        assert len(dropouts) == 3  # one per stage: the instances that call makes

    def test_only_this_call_refuses_a_node_outside_blocks(self):
        graph = graph_of(MLP)
        with pytest.raises(edits.EditRefused, match="not written in a block"):
            edits.only_this_call(MLP, graph, "relu1", edits.delete_node(MLP, graph, "relu1"))

    def test_layer_call_text(self):
        assert edits.layer_call("conv", {"channels": "64", "kernel": "3", "pad": "1"},
                                ["channels", "kernel", "stride", "pad"], {"channels", "kernel"}) \
            == "conv(64, 3, pad=1)"
        with pytest.raises(edits.EditRefused, match="needs a value"):
            edits.layer_call("dense", {}, ["units"], {"units"})

    def test_check_syntax_of_an_argument(self):
        assert edits.check_syntax("3") is None and edits.check_syntax("3 +") is not None


class TestFuzzy:
    def test_letters_in_order_match_and_an_exact_name_comes_first(self):
        from netdsl.tui.screens.dialogs import fuzzy_matches

        names = ["stage1/basic1/conv1", "stage1/basic1/conv2", "conv", "stage2/basic1/conv1"]
        assert fuzzy_matches("s2b1c1", names) == ["stage2/basic1/conv1"]
        assert fuzzy_matches("conv", names)[0] == "conv"
        assert fuzzy_matches("zz", names) == [] and fuzzy_matches(" ", names) == names


class TestFiles:
    def test_save_is_atomic_and_readable(self, tmp_path):
        path = tmp_path / "a.net"
        save_spec(str(path), MLP)
        assert load_spec(str(path)) == MLP
        assert [p.name for p in tmp_path.iterdir()] == ["a.net"]  # no temporary left behind

    def test_missing_and_bad_files_say_what_is_wrong(self, tmp_path):
        with pytest.raises(SpecError, match="no such file"):
            load_spec(str(tmp_path / "none.net"))
        (tmp_path / "bin.net").write_bytes(b"\0\1")
        with pytest.raises(SpecError, match="binary"):
            load_spec(str(tmp_path / "bin.net"))
        with pytest.raises(SpecError, match="does not exist"):
            save_spec(str(tmp_path / "no" / "dir.net"), MLP)

    def test_recovery_round_trip(self, tmp_path, monkeypatch):
        monkeypatch.setenv("NETDSL_STATE", str(tmp_path / "state"))
        recovery = Recovery(str(tmp_path / "a.net"))
        assert recovery.read() is None
        recovery.write("edited")
        assert recovery.read()[0] == "edited"
        assert Recovery(str(tmp_path / "b.net")).read() is None  # one file per spec
        recovery.clear()
        assert recovery.read() is None
