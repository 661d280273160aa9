"""The builder coloured by a run's diagnostics (`m`), through Textual's Pilot."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from rich.style import Style

from netdsl.app.diagnostics import DIAGNOSTICS
from netdsl.tui.app import NetApp
from netdsl.tui.tint import FRACTIONS, MAGNITUDES, tint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(folder, steps):
    """A diagnostics.jsonl of `steps`: (step, {node: numbers}) each, as netc run writes."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, DIAGNOSTICS), "w") as handle:
        handle.write(json.dumps({"kind": "nodes", "every": 1, "nodes": {}}) + "\n")
        for step, nodes in steps:
            handle.write(json.dumps({"kind": "step", "step": step, "epoch": 1,
                                     "nodes": nodes}) + "\n")


def test_fractions_run_green_to_red_at_half_and_magnitudes_on_a_log_scale():
    styles, legend = tint({"a": 0.0, "b": 0.25, "c": 0.9}, "dead")
    assert [styles[n].color.name for n in "abc"] == [FRACTIONS[0], FRACTIONS[2], FRACTIONS[-1]]
    assert legend == "colour by dead units: green 0% … red 50% or more"
    styles, legend = tint({"a": 1e-6, "b": 1e-3, "c": 1.0, "d": 0.0}, "grad_norm")
    assert [styles[n].color.name for n in "abcd"] == [MAGNITUDES[0], MAGNITUDES[2],
                                                      MAGNITUDES[-1], MAGNITUDES[0]]
    assert legend == "colour by gradient norm: blue 1e-06 (or 0) … red 1"


@pytest.mark.asyncio
async def test_m_colours_the_graph_by_each_recorded_number_then_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("NETDSL_STATE", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    shutil.copy(os.path.join(ROOT, "specs", "mlp.net"), tmp_path / "mlp.net")
    # relu1's last value is 0.8, from the later step; relu2 has only the first
    record(tmp_path / "runs" / "mlp", [
        (1, {"relu1": {"dead": 0.1, "grad_norm": 0.5}, "relu2": {"dead": 0.0},
             "dense1": {"grad_norm": 0.001}}),
        (2, {"relu1": {"dead": 0.8, "grad_norm": 0.5}, "dense1": {"grad_norm": 0.001}}),
    ])
    app = NetApp(str(tmp_path / "mlp.net"))
    async with app.run_test(size=(140, 42)) as pilot:
        for _ in range(3):
            await pilot.pause(0.35)
            await app.workers.wait_for_complete()
        builder = app.builder
        builder.graph_view.focus()
        await pilot.press("m")
        status = str(builder.query_one("#status").render())
        assert status.startswith("colour by dead units: green 0% … red 50% or more")
        view = builder.graph_view
        assert view.tint == {"relu1": Style(color=FRACTIONS[-1], bold=True),
                             "relu2": Style(color=FRACTIONS[0], bold=True)}
        view.scroll_to_box("relu1")
        await pilot.pause()
        row = view.picture.rects["relu1"].y + 1  # the box's label
        drawn = view.render_line(row - int(view.scroll_offset.y))
        assert "relu" in "".join(s.text for s in drawn)
        assert any(s.style.color and s.style.color.name == FRACTIONS[-1] for s in drawn)
        await pilot.press("m")  # nothing saturates in mlp: the gradient norm comes next
        assert set(view.tint) == {"relu1", "dense1"}
        assert "colour by gradient norm" in str(builder.query_one("#status").render())
        await pilot.press("m")
        assert view.tint == {}
        assert str(builder.query_one("#status").render()) == "colours: by kind of node"


@pytest.mark.asyncio
async def test_without_diagnostics_m_says_how_to_record_them(tmp_path, monkeypatch):
    monkeypatch.setenv("NETDSL_STATE", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    shutil.copy(os.path.join(ROOT, "specs", "mlp.net"), tmp_path / "mlp.net")
    app = NetApp(str(tmp_path / "mlp.net"))
    async with app.run_test(size=(140, 42)) as pilot:
        for _ in range(3):
            await pilot.pause(0.35)
            await app.workers.wait_for_complete()
        app.builder.graph_view.focus()
        await pilot.press("m")
        assert str(app.builder.query_one("#status").render()) == (
            "no diagnostics in runs/mlp/: train with netc run SPEC --diagnose")
        assert app.builder.graph_view.tint == {}
