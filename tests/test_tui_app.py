"""The builder driven through Textual's Pilot, as a user would: keys in, screen out."""
from __future__ import annotations

import contextlib
import json
import os
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
            await pilot.press("d")
            await settle(pilot)
            assert app.builder.editor.text == before and "branches" in status(app)
            view.select("relu1")
            await pilot.press("d")
            await settle(pilot)
            assert "-> batchnorm  # [16, 32, 32]" in app.builder.editor.text
            assert status(app).startswith("deleted relu1")

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
        async with opened(spec) as (app, pilot):
            await pilot.press("f2", "ctrl+u", *str(tmp_path / "missing" / "x.net"), "enter")
            await settle(pilot, 1)
            assert "not saved" in status(app) and app.builder.path == spec
            target = str(tmp_path / "copy.net")
            await pilot.press("f2", "ctrl+u", *target, "enter")
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
            said = " ".join(log)
            assert "cannot train: not enough memory: the training step at batch 128" in said
            assert "1.0 MiB available (the largest batch that fits is 4: set batch=4 in the " \
                "train clause)" in said and "--force" not in said
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
            await pilot.press("f6", "ctrl+u", *target, "enter")
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
