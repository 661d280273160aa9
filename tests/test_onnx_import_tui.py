"""The issue's end to end: an imported model, edited in the TUI (a layer inserted after
its first convolution), saved, checked and exported again, runs in onnxruntime and
computes what the original model computes."""
from __future__ import annotations

import os

import pytest

from export_cases import ROOT, Case
from netdsl.cli import main
from netdsl.driver import check_file
from netdsl.export.onnx import to_onnx
from netdsl.export.weights import decode
from netdsl.tui.app import NetApp
from onnx_import_cases import onnxruntime_outputs, reexport
from test_tui_app import SIZE, settle

pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("NETDSL_STATE", str(tmp_path / "state"))


async def test_import_edit_in_the_tui_check_and_export(tmp_path):
    case = Case(os.path.join(ROOT, "specs", "lenet5.net"))
    original = to_onnx(case.view, case.params, case.buffers)
    model = tmp_path / "lenet.onnx"
    model.write_bytes(original.SerializeToString())
    spec = str(tmp_path / "lenet.net")
    assert main(["import", str(model), "-o", spec]) == 0
    conv = next(n for n, d in check_file(spec).graph.nodes(data=True)
                if d["kind"] == "op" and d["op"].name == "conv")
    app = NetApp(spec)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.builder.graph_view.focus()
        app.builder.graph_view.select(conv)
        await pilot.press("i", *"dropout", "enter")
        await settle(pilot, 1)
        await pilot.press(*"0.25", "enter")  # the form's first field: p
        await settle(pilot)
        await pilot.press("ctrl+s")
        await settle(pilot)
    text = open(spec).read()
    assert "conv(6, 5, pad=2) -> dropout(p=0.25)" in text
    check_file(spec)
    with open(spec[:-4] + ".safetensors", "rb") as handle:
        tensors = decode(handle.read(), spec)
    edited = reexport(text, tensors)  # the inserted layer has no weights: the rest fit
    feed = case.inputs(batch=2)
    (want,) = onnxruntime_outputs(original.SerializeToString(), feed)
    (got,) = onnxruntime_outputs(edited.SerializeToString(), feed)
    assert got.shape == want.shape
    assert abs(got - want).max() <= 1e-5 + 1e-4 * abs(want).max()
