"""The builder driven through Textual's Pilot, as a user would: keys in, screen out."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from tui_screen import screen_text  # noqa: E402

from netdsl.driver import check_file  # noqa: E402
from netdsl.tui.app import NetApp  # noqa: E402
from netdsl.tui.files import Recovery  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (140, 42)
pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    """Recovery files go to a fresh folder for each test."""
    monkeypatch.setenv("NETDSL_STATE", str(tmp_path / "state"))


@pytest.fixture
def spec(tmp_path):
    """A copy of specs/mlp.net to edit."""
    path = tmp_path / "mlp.net"
    shutil.copy(os.path.join(ROOT, "specs", "mlp.net"), path)
    return str(path)


SHARED = """network twice
input x : [8]
target y : class(4)

block mlp(n) {
  in x
  out x -> dense(n) -> relu
}

h = x -> mlp(16) -> mlp(16)
logits = h -> dense(4)
loss cross_entropy(logits, y)
"""


@pytest.fixture
def shared(tmp_path):
    """A spec that calls one block twice."""
    path = tmp_path / "twice.net"
    path.write_text(SHARED)
    return str(path)


async def settle(pilot, rounds: int = 3) -> None:
    """Let debounced checks start and every worker finish."""
    for _ in range(rounds):
        await pilot.pause(0.35)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


@contextlib.asynccontextmanager
async def opened(path: str, **options):
    """The builder open on `path` in a headless terminal, settled: (app, pilot)."""
    app = NetApp(path, **options)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        yield app, pilot


def status(app) -> str:
    return str(app.builder.query_one("#status").render())


class TestEditor:
    async def test_typed_error_is_marked_with_its_message(self, spec):
        async with opened(spec) as (app, pilot):
            editor = app.builder.editor
            editor.move_cursor((6, 32))  # after `relu` in `-> relu -> dense(10)`
            await pilot.press("backspace", "backspace", "backspace", "backspace", *"rleu")
            await settle(pilot)
            assert [d.row for d in editor.diagnostics] == [6]
            assert "unknown layer 'rleu'" in status(app) and "did you mean 'relu'" in status(app)
            assert "●" in screen_text(app)  # the gutter marks the line
            await pilot.press("backspace", "backspace", "backspace", "backspace", *"relu")
            await settle(pilot)
            assert editor.diagnostics == () and status(app).startswith("ok: mlp")

    async def test_highlighting_comes_from_the_lexer(self, spec):
        async with opened(spec) as (app, pilot):
            styles = {name for _, _, name in app.builder.editor._highlights[5]}
            assert {"function", "operator", "number", "variable"} <= styles

    async def test_cursor_in_text_selects_its_node(self, spec):
        async with opened(spec) as (app, pilot):
            app.builder.editor.move_cursor((5, 30))  # inside `relu` of line 6
            await settle(pilot, 1)
            assert app.builder.graph_view.selected == "relu1"
            assert "op      relu" in screen_text(app)


class TestGraph:
    async def test_selecting_a_node_selects_its_source(self, spec):
        async with opened(spec) as (app, pilot):
            await pilot.press("tab", "down")
            await settle(pilot, 1)
            assert app.builder.graph_view.selected == "dense1"
            editor = app.builder.editor
            assert editor.selected_text == "dense(256)"

    async def test_collapse_and_expand_a_block(self):
        async with opened(os.path.join(ROOT, "specs", "resnet20.net")) as (app, pilot):
            view = app.builder.graph_view
            view.focus()
            view.select("stage1/basic1/conv1")
            await pilot.press("c")
            await settle(pilot)
            assert "[stage1/basic1]" in view.picture.rects
            view.select("[stage1/basic1]")
            await pilot.press("enter")
            await settle(pilot)
            assert "[stage1/basic1]" not in view.picture.rects
            await pilot.press("C")
            await settle(pilot)
            assert {"[stage1]", "[stage2]", "[stage3]"} <= set(view.picture.rects)

    async def test_expanded_blocks_are_framed(self):
        async with opened(os.path.join(ROOT, "specs", "resnet20.net")) as (app, pilot):
            view = app.builder.graph_view
            view.focus()
            view.select("stage1/basic1/conv1")
            await settle(pilot, 1)
            assert "╮ ╮ stage1 : s" in screen_text(app)  # two brackets, the outer's label
            view.select("stage1/basic1/conv1")
            await pilot.press("C")  # collapsed blocks have no frame, their box says it
            await settle(pilot)
            assert "stage1 : stage(16, 3)" not in view.picture.text()
            assert "▸ stage1 : stage" in screen_text(app)

    async def test_lstm_gates_are_drawn_apart(self):
        async with opened(os.path.join(ROOT, "specs", "lstm.net")) as (app, pilot):
            view = app.builder.graph_view
            view.focus()
            view.select("mul1")
            await settle(pilot, 1)
            text = screen_text(app)
            assert text.count("▼▼") >= 2 and "┼" not in text  # the two ×, each fed twice

    async def test_selection_survives_collapse_and_expand(self):
        async with opened(os.path.join(ROOT, "specs", "resnet20.net")) as (app, pilot):
            view = app.builder.graph_view
            view.focus()
            view.select("stage1/basic2/conv2")
            await pilot.press("c")
            await settle(pilot)
            assert view.selected == "[stage1/basic2]"  # the block's box
            assert "basic(c)" in app.builder.editor.selected_text  # and its call in the text
            await pilot.press("enter")
            await settle(pilot)
            assert view.selected == "stage1/basic2/conv2"  # back on the node inside
            await pilot.press("C")
            await settle(pilot)
            assert view.selected == "[stage1]"
            await pilot.press("E")
            await settle(pilot)
            assert view.selected == "stage1/basic2/conv2"
            view.select("x")  # collapsed with the selection outside: expanding selects
            await pilot.press("C")  # the block's first node
            await settle(pilot)
            assert view.selected == "x"
            view.select("[stage3]")
            await pilot.press("enter")
            await settle(pilot)
            assert view.selected == "stage3/basic1/conv1"

    async def test_zoom_while_typing_leaves_the_text_cursor(self, spec):
        async with opened(spec) as (app, pilot):
            editor = app.builder.editor
            editor.move_cursor((5, 30))  # in `relu`: the graph selects relu1
            await settle(pilot, 1)
            await pilot.press("f7")
            await settle(pilot)
            assert app.builder.graph_view.selected == "relu1"
            assert editor.selection.start == editor.selection.end == (5, 30)  # nothing to type over

    async def test_slash_search_is_fuzzy(self):
        async with opened(os.path.join(ROOT, "specs", "resnet20.net")) as (app, pilot):
            app.builder.graph_view.focus()
            await pilot.press("slash", *"s3b2bn1")
            await pilot.pause()
            options = app.screen.query_one("#matches")
            assert str(options.get_option_at_index(0).prompt) == "stage3/basic2/batchnorm1"
            await pilot.press("enter")
            await settle(pilot, 1)
            assert app.builder.graph_view.selected == "stage3/basic2/batchnorm1"

    async def test_large_network_scrolls_and_jumps(self):
        async with opened(os.path.join(ROOT, "specs", "densenet121.net")) as (app, pilot):
            view = app.builder.graph_view
            assert view.picture.height > 1000
            await pilot.press("ctrl+g", *"dense_block4/conv16", "enter")
            await settle(pilot, 1)
            assert view.selected == "dense_block4/conv16"
            rect = view.picture.rects[view.selected]
            assert view.scroll_offset.y <= rect.y < view.scroll_offset.y + view.size.height
            await pilot.press("f7")  # the overview
            await settle(pilot)
            assert view.picture.height < 1000

    async def test_vi_keys_move_as_the_arrows_do(self, spec):
        async with opened(spec) as (app, pilot):
            view = app.builder.graph_view
            view.focus()
            view.select("dense1")
            await pilot.press("j")
            assert view.selected == "relu1"
            await pilot.press("j", "j", "j", "j")
            assert view.selected == "logits"
            await pilot.press("l")  # the target beside it
            assert view.selected == "y"
            await pilot.press("h", "k")
            assert view.selected == "relu2"

    async def test_question_mark_lists_every_key(self, spec):
        from textual.binding import Binding

        from netdsl.tui.screens.builder import BuilderScreen
        from netdsl.tui.widgets.graph_view import GraphView

        async with opened(spec) as (app, pilot):
            app.builder.graph_view.focus()
            await pilot.press("question_mark")
            await pilot.pause()
            assert type(app.screen).__name__ == "HelpScreen"
            listed = {(key.description, key.action) for key in app.screen.keys}
            for cls in (BuilderScreen, GraphView):  # a new binding is listed without a change here
                for binding in Binding.make_bindings(cls.BINDINGS):
                    assert (binding.description, binding.action) in listed, binding
            text = screen_text(app)
            assert "↓ / j" in text and "Insert after" in text and "^p" in text
            await pilot.press("escape")
            assert type(app.screen).__name__ == "BuilderScreen"
            app.builder.editor.focus()
            app.builder.editor.move_cursor((0, 0))
            await pilot.press("question_mark")  # in the text, ? is typed (a comment may hold one)
            assert app.builder.editor.text.startswith("?#") and type(app.screen).__name__ \
                == "BuilderScreen"
            await pilot.press("f1")  # the keys from the text
            await pilot.pause()
            assert type(app.screen).__name__ == "HelpScreen"

    async def palette(self, pilot, query: str) -> list[str]:
        """Open the command palette, type `query`; the titles it offers, best first."""
        from textual.command import CommandList

        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*query)
        for _ in range(20):  # the palette searches in the background
            await pilot.pause(0.1)
            options = pilot.app.screen.query_one(CommandList).options
            if options:
                break
        return [str(o.prompt).split("\n")[0] for o in options]

    async def test_palette_finds_nodes_fuzzily_and_selects_them(self):
        async with opened(os.path.join(ROOT, "specs", "resnet20.net")) as (app, pilot):
            found = await self.palette(pilot, "s2b3conv2")  # stage2/basic3/conv2, not a substring
            assert found[0].startswith("stage2/basic3/conv2  conv"), found[:3]
            await pilot.press("enter")
            await settle(pilot, 1)
            assert app.builder.graph_view.selected == "stage2/basic3/conv2"
            assert app.builder.graph_view.has_focus
            found = await self.palette(pilot, "batchnorm")  # by op
            assert any(t.startswith("stage1/basic1/batchnorm1  batchnorm") for t in found)

    async def test_palette_runs_every_action(self, spec):
        from netdsl.tui.commands import action_commands

        async with opened(spec) as (app, pilot):
            titles = [title for title, _, _ in action_commands(app.builder.keys())]
            for wanted in ("Save", "Save as", "Open", "Train", "Export", "Insert after", "Delete",
                           "Edit", "Skip from/to", "Collapse", "Collapse all", "Expand all",
                           "Go to node", "Keys", "Undo", "Redo", "Zoom", "Quit"):
                assert wanted in titles
            app.builder.graph_view.focus()
            app.builder.graph_view.select("relu1")
            found = await self.palette(pilot, "insrt")
            assert found[0] == "Insert after"
            await pilot.press("enter")
            await settle(pilot, 1)
            assert type(app.screen).__name__ == "PickLayer"
            await pilot.press("escape")
            app.builder.editor.focus()
            await pilot.press(*"# x", "enter")  # unsaved: Quit from the palette asks first
            found = await self.palette(pilot, "quit")
            assert found[0] == "Quit"
            await pilot.press("enter")
            await pilot.pause()
            assert type(app.screen).__name__ == "Choice"

    async def test_inspector_shows_costs(self, spec):
        async with opened(spec) as (app, pilot):
            app.builder.graph_view.focus()
            app.builder.graph_view.select("dense1")
            await settle(pilot, 1)
            text = screen_text(app)
            assert "params  16,640" in text and "units=256" in text and "output  [256]" in text
            assert "9 nodes, 85,002 params" in text  # the network's totals


class TestVisualEdits:
    async def test_insert_then_undo_and_redo(self, spec):
        async with opened(spec) as (app, pilot):
            original = app.builder.editor.text
            app.builder.graph_view.focus()
            app.builder.graph_view.select("relu1")
            await pilot.press("i", *"dense", "enter")
            await settle(pilot, 1)
            await pilot.press(*"32", "enter")  # the form's first field: units
            await settle(pilot)
            text = app.builder.editor.text
            assert "-> relu -> dense(32) -> dropout(0.2)" in text
            assert text.replace(" -> dense(32)", "", 1) == original
            await pilot.press("ctrl+z")
            assert app.builder.editor.text == original
            await pilot.press("ctrl+y")
            assert app.builder.editor.text == text

    async def test_form_rejects_a_bad_value_and_stays_open(self, spec):
        async with opened(spec) as (app, pilot):
            app.builder.graph_view.focus()
            app.builder.graph_view.select("relu1")
            await pilot.press("i", *"dense", "enter")
            await settle(pilot, 1)
            await pilot.press(*"0", "enter")  # zero units does not check
            await settle(pilot)
            assert type(app.screen).__name__ == "LayerForm"
            assert "would not check" in str(app.screen.query_one("#form-error").render())
            await pilot.press("escape")
            assert "dense(0)" not in app.builder.editor.text

    async def test_delete_rewires_or_explains(self, spec):
        async with opened(os.path.join(ROOT, "specs", "resnet20.net")) as (app, pilot):
            before = app.builder.editor.text
            view = app.builder.graph_view
            view.focus()
            view.select("stage1/basic1/add1")
            await pilot.press("d")  # in a shared block, but refused before any question
            await settle(pilot)
            assert app.builder.editor.text == before and "branches" in status(app)
            view.select("relu1")
            await pilot.press("d")
            await settle(pilot)
            assert "-> batchnorm  # [16, 32, 32]" in app.builder.editor.text
            assert status(app).startswith("deleted relu1")

    async def test_edit_in_a_shared_block_changes_the_block(self, shared):
        async with opened(shared) as (app, pilot):
            before = app.builder.editor.text
            view = app.builder.graph_view
            view.focus()
            view.select("mlp1/relu1")
            await pilot.press("d")
            await pilot.pause()
            assert type(app.screen).__name__ == "Choice"
            question = str(app.screen.query_one(".question").render())
            assert "block mlp, which the network uses 2 times" in question and "mlp_2" in question
            await pilot.click("#block")
            await settle(pilot)
            text = app.builder.editor.text
            assert text == before.replace("out x -> dense(n) -> relu", "out x -> dense(n)")
            assert status(app).startswith("deleted mlp1/relu1 — ok")
            assert "relu" not in " ".join(app.builder.good.network.graph.nodes)  # both instances

    async def test_edit_in_a_shared_block_only_for_this_call(self, shared):
        async with opened(shared) as (app, pilot):
            before = app.builder.editor.text
            view = app.builder.graph_view
            view.focus()
            view.select("mlp2/dense1")
            await pilot.press("e")
            await pilot.pause()
            await pilot.click("#call")
            await settle(pilot, 1)
            assert type(app.screen).__name__ == "LayerForm"
            await pilot.press("ctrl+u", *"32", "enter")  # units: n -> 32
            await settle(pilot)
            text = app.builder.editor.text
            assert "block mlp_2(n) {\n  in x\n  out x -> dense(32) -> relu\n}" in text
            assert "h = x -> mlp(16) -> mlp_2(16)" in text
            assert text.count("out x -> dense(n) -> relu") == 1  # the block itself unchanged
            assert "a copy of mlp for this call only" in status(app) and "— ok" in status(app)
            nodes = app.builder.good.network.graph.nodes
            assert str(nodes["mlp1/dense1"]["type"]) == "[16]"  # the first call keeps mlp
            assert [str(nodes[n]["type"]) for n in nodes if n.endswith("dense1") and
                    n.startswith("mlp_2")] == ["[32]"]
            await pilot.press("ctrl+z")  # one undo takes back the copy and the call together
            assert app.builder.editor.text == before

    async def test_delete_that_breaks_shapes_is_refused(self, spec):
        async with opened(spec) as (app, pilot):
            before = app.builder.editor.text
            app.builder.graph_view.focus()
            app.builder.graph_view.select("logits")
            await pilot.press("d")  # cross_entropy needs 10 classes, not 256 values
            await settle(pilot)
            assert app.builder.editor.text == before and "would not check" in status(app)

    async def test_edit_arguments(self, spec):
        async with opened(spec) as (app, pilot):
            app.builder.graph_view.focus()
            app.builder.graph_view.select("dropout1")
            await pilot.press("e")
            await settle(pilot, 1)
            await pilot.press("end", "ctrl+u", *"0.3", "enter")  # clear the field, type 0.3
            await settle(pilot)
            assert "-> dropout(p=0.3)\n" in app.builder.editor.text
            assert type(app.screen).__name__ == "BuilderScreen"  # the form closed

    async def test_add_skip_connection(self, spec):
        async with opened(spec) as (app, pilot):
            view = app.builder.graph_view
            view.focus()
            view.select("dense1")
            await pilot.press("s")  # dense1 has no name: explained
            await settle(pilot, 1)
            view.select("relu1")
            await pilot.press("s")
            await settle(pilot)
            assert "name it first" in status(app)


class TestFiles:
    async def test_save_writes_atomically_and_clears_dirty(self, spec):
        async with opened(spec) as (app, pilot):
            app.builder.editor.move_cursor((0, 0))
            await pilot.press(*"# edited", "enter")
            assert app.builder.dirty and app.title.endswith("*")
            await pilot.press("ctrl+s")
            assert not app.builder.dirty
            assert open(spec).read().startswith("# edited\n")
            check_file(spec)

    async def test_save_as_and_bad_folder(self, spec, tmp_path):
        # the dialog starts at the spec's path, TMP/mlp.net: its name is replaced
        rename = ("end", *("backspace",) * len("mlp.net"))
        async with opened(spec) as (app, pilot):
            await pilot.press("f2", *rename, *"missing/x.net", "enter")
            await settle(pilot, 1)
            assert "not saved" in status(app) and app.builder.path == spec
            assert str(tmp_path / "missing" / "x.net") in status(app)
            target = str(tmp_path / "copy.net")
            await pilot.press("f2", *rename, *"copy.net", "enter")
            await settle(pilot, 1)
            assert app.builder.path == target and os.path.exists(target)

    async def test_quit_with_unsaved_changes_asks(self, spec):
        async with opened(spec) as (app, pilot):
            await pilot.press(*"# x", "enter")
            await pilot.press("ctrl+q")
            await pilot.pause()
            assert type(app.screen).__name__ == "Choice"
            await pilot.press("escape")
            assert app.is_running and app.builder.dirty
            await pilot.press("ctrl+q")
            await pilot.click("#discard")
            await pilot.pause()
        assert open(spec).read() == open(os.path.join(ROOT, "specs", "mlp.net")).read()

    async def test_autosave_is_offered_after_a_crash(self, spec, monkeypatch):
        monkeypatch.setattr("netdsl.tui.screens.file_flow.AUTOSAVE_DELAY", 0.1)
        async with opened(spec) as (app, pilot):
            await pilot.press(*"# unsaved", "enter")
            await settle(pilot)
            assert Recovery(spec).read()[0].startswith("# unsaved")
        # the app ended without saving or quitting: as after a crash
        async with opened(spec) as (app, pilot):
            assert type(app.screen).__name__ == "Choice"
            await pilot.click("#recover")
            await settle(pilot)
            assert app.builder.editor.text.startswith("# unsaved") and app.builder.dirty

    async def test_typing_without_a_pause_is_kept_every_second(self, spec):
        """A kill loses at most the last second of typing: the copy was written only once
        typing had paused for 3 s, so steady typing was never kept."""
        async with opened(spec) as (app, pilot):
            for key in "# kept while typing":
                await pilot.press(key if key != " " else "space")
                await pilot.pause(0.15)
            kept = Recovery(spec).read()
            assert kept is not None, "nothing kept while typing"
            typed = len(os.path.commonprefix([kept[0], "# kept while typing"]))
            assert typed >= 8 and kept[0][typed:] == open(spec).read(), kept[0][:40]

    async def test_the_recovery_question_wraps_at_200_columns(self, spec, monkeypatch):
        Recovery(spec).write("# unsaved\n" + open(spec).read())
        app = NetApp(spec)
        async with app.run_test(size=(200, 50)) as pilot:
            await settle(pilot)
            assert type(app.screen).__name__ == "Choice"
            inside = [line.split("█")[1].strip() for line in screen_text(app).splitlines()
                      if line.count("█") >= 2]  # the dialog's lines, within its border
            assert "(the editor did not close cleanly). Recover them?" in " ".join(inside)

    async def test_open_reports_a_bad_file(self, spec, tmp_path):
        async with opened(spec) as (app, pilot):
            app.builder.open_file(str(tmp_path / "nothing.net"))
            assert "cannot open" in status(app) and "no such file" in status(app)
            app.builder.open_file(os.path.join(ROOT, "specs", "elman.net"))
            await settle(pilot)
            assert status(app).startswith("ok: elman")


class TestRunPanel:
    async def test_train_shows_progress_and_stops(self, spec, tmp_path, monkeypatch):
        # runs until stopped, and leaves its record and checkpoint in runs/NAME as netc run does
        monkeypatch.chdir(tmp_path)
        async with opened(spec, train_examples=600, train_epochs=10_000) as (app, pilot):
            await pilot.press("f5")
            screen = app.screen
            for _ in range(100):
                await pilot.pause(0.1)
                if screen.query_one("#loss-plot").values:
                    break
            assert screen.query_one("#loss-plot").values
            await pilot.click("#stop")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert not screen.running and "stopped" in str(screen.query_one("#status").render())
            record = tmp_path / "runs" / "mlp"
            assert (record / "checkpoint.npz").is_file()
            assert (record / "spec.net").read_text() == open(spec).read()
            assert json.loads((record / "run.json").read_text())["spec"] == spec
            assert (record / "metrics.jsonl").is_file()
            await pilot.press("escape")
            assert type(app.screen).__name__ == "BuilderScreen"

    async def test_validation_curves_cli_units_and_whole_log_lines(self, spec, tmp_path,
                                                                   monkeypatch):

        monkeypatch.chdir(tmp_path)
        async with opened(spec, train_examples=400, train_epochs=3) as (app, pilot):
            await pilot.press("f5")
            screen = app.screen
            for _ in range(300):
                await pilot.pause(0.1)
                if not screen.running:
                    break
            await app.workers.wait_for_complete()
            await pilot.pause()
            loss, accuracy = screen.query_one("#loss-plot"), screen.query_one("#accuracy-plot")
            assert len(loss.validation) == len(accuracy.validation) == 3  # one per epoch
            assert [step for step, _ in loss.validation] == sorted(s for s, _ in loss.validation)
            assert loss.validation[-1][0] == loss.steps[-1]  # at the end of the last epoch
            record = json.loads((tmp_path / "runs" / "mlp" / "metrics.jsonl").read_text()
                                .splitlines()[-1])
            assert accuracy.validation[-1][1] == pytest.approx(record["val_accuracy"])
            text = screen_text(app)
            # the plots' title, as netc run prints it: 52.63%, not 0.5263
            assert f"validation {100 * record['val_accuracy']:.2f}%" in text
            assert not re.search(r"accuracy 0\.\d", text)
            # the epoch line, longer than the panel, is wrapped, not cut: its end is there
            assert re.search(r"val_accuracy \d+\.\d\d%", text) and "lr 0.1" in text

    async def test_a_run_that_would_not_fit_is_refused_in_the_panel(self, spec, tmp_path,
                                                                   monkeypatch):
        # the check of `netc run`, before a parameter is made; told in the panel's log
        from netdsl.app import memory_check

        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(memory_check, "available_bytes", lambda: 1 << 20)
        async with opened(spec) as (app, pilot):
            await pilot.press("f5")
            screen = app.screen
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert not screen.running
            log = [" ".join(s.text for s in line) for line in screen.query_one("#log").lines]
            said = " ".join(" ".join(log).split())  # the log wraps long lines
            assert "cannot train: not enough memory: the training step at batch 128" in said
            # the batch itself is the estimate's (tests/test_memory_check.py)
            fits = re.search(r"1\.0 MiB available \(the largest batch that fits is (\d+): set "
                             r"batch=(\d+) in the train clause\)", said)
            assert fits and fits[1] == fits[2] and 1 <= int(fits[1]) < 128
            assert "--force" not in said
            assert not (tmp_path / "runs").exists()  # refused before its folder was made

    async def test_a_checkpoint_that_cannot_be_written_is_told_in_the_log(self, spec, tmp_path,
                                                                         monkeypatch):
        from netdsl.runtime import checkpoint

        def full(path, data):
            raise OSError(28, "No space left on device")

        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(checkpoint, "write_bytes", full)
        async with opened(spec, train_examples=64, train_epochs=1) as (app, pilot):
            await pilot.press("f5")
            screen = app.screen
            await app.workers.wait_for_complete()
            await pilot.pause()
            log = [" ".join(s.text for s in line) for line in screen.query_one("#log").lines]
            assert any(line.startswith("warning: could not write the checkpoint at step 1 "
                                       "(No space left on device)") for line in log), log

    async def test_export_dot(self, spec, tmp_path):
        async with opened(spec) as (app, pilot):
            target = str(tmp_path / "mlp.dot")
            # the dialog offers TMP/mlp.svg: its extension is replaced
            await pilot.press("f6", "end", *("backspace",) * len("svg"), *"dot", "enter")
            await settle(pilot)
            assert open(target).read().startswith("digraph")
            assert f"wrote {target}" in status(app)


class TestSnapshots:
    async def test_main_screen(self, spec, update_golden, monkeypatch):
        from test_tui_units import compare_snapshot

        monkeypatch.chdir(os.path.dirname(spec))  # a relative path: the same picture anywhere
        async with opened("mlp.net") as (app, pilot):
            app.builder.graph_view.focus()
            app.builder.graph_view.select("dense1")
            await settle(pilot, 1)
            text = screen_text(app)
            compare_snapshot("main_screen.txt", text, update_golden)

    async def test_error_screen(self, spec, update_golden, monkeypatch):
        from test_tui_units import compare_snapshot

        monkeypatch.chdir(os.path.dirname(spec))
        async with opened("mlp.net") as (app, pilot):
            app.builder.editor.move_cursor((6, 32))
            await pilot.press("backspace", "backspace", "backspace", "backspace", *"rleu")
            await settle(pilot)
            text = screen_text(app)
            compare_snapshot("error_screen.txt", text, update_golden)
