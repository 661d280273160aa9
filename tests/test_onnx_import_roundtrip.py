"""Round trips: a spec exported to ONNX, imported and exported again gives the same
outputs; an imported model edited as the TUI edits (a layer inserted), checked and
exported again runs in onnxruntime."""
import os

import numpy as np
import onnx
import pytest

from export_cases import ROOT, Case
from netdsl import edits
from netdsl.driver import check_text
from netdsl.export import select
from netdsl.export.onnx import to_onnx
from netdsl.export.weights import tensor_sources
from netdsl.fmt import format_text
from netdsl.lower.plan import build_plan
from netdsl.onnx_import.pipeline import import_proto
from onnx_import_cases import netdsl_outputs, onnxruntime_outputs


def reexport(text: str, tensors: dict) -> onnx.ModelProto:
    """netc export of a spec with these weights (by PyTorch-style name)."""
    net = check_text(text, "imported.net")
    params, buffers = {}, {}
    for name, source in tensor_sources(build_plan(net.graph)).items():
        if source[0] == "param":
            params[source[1]] = tensors[name]
        else:
            buffers.setdefault(source[1], {})[source[2]] = tensors[name]
    return to_onnx(select(net.graph), params, buffers)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet20", "nin", "autoencoder",
                                  "logistic_regression", "googlenet"])
def test_export_import_export_gives_the_same_outputs(name):
    case = Case(os.path.join(ROOT, "specs", f"{name}.net"))
    first = to_onnx(case.view, case.params, case.buffers)
    imported = import_proto(first, f"{name}.onnx", name)
    assert format_text(imported.text) == imported.text
    second = reexport(imported.text, imported.tensors)
    onnx.checker.check_model(second, full_check=True)
    feed = case.inputs(batch=2)
    want = onnxruntime_outputs(first.SerializeToString(), feed)
    again = onnxruntime_outputs(second.SerializeToString(), dict(zip(
        [i.name for i in second.graph.input], feed.values())))
    ours = netdsl_outputs(imported.text, imported.tensors, list(feed.values()))
    for w, a, o in zip(want, again, ours):
        np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(o, w, rtol=1e-4, atol=1e-5)


def test_an_imported_model_edited_checked_and_exported_runs_in_onnxruntime():
    case = Case(os.path.join(ROOT, "specs", "lenet5.net"))
    first = to_onnx(case.view, case.params, case.buffers)
    imported = import_proto(first, "lenet5.onnx", "lenet5")
    net = check_text(imported.text, "lenet5.net")
    conv = next(n for n, d in net.graph.nodes(data=True)
                if d["kind"] == "op" and d["op"].name == "conv")
    # the edit the TUI's "insert after" makes: a dropout after the first convolution
    edit = edits.insert_after(imported.text, net.graph, conv, "dropout(0.25)")
    text = imported.text[:edit.start] + edit.text + imported.text[edit.end:]
    assert "dropout(0.25)" in text and text != imported.text
    second = reexport(text, imported.tensors)  # every tensor keeps its name
    feed = case.inputs(batch=3)
    (want,) = onnxruntime_outputs(first.SerializeToString(), feed)
    (got,) = onnxruntime_outputs(second.SerializeToString(), feed)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # dropout: off in inference
