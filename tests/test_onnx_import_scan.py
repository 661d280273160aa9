"""netc import of a Scan: netdsl's own recurrences (netc export writes each as a Scan)
come back as states and the loop's statements; a Scan built by hand, with a scanned
input and output in reverse order and a state started from a number, matches
onnxruntime; a body netdsl cannot express is reported with the Scan it is in.
(The export -> import -> export round trips of the recurrent specs are in
test_onnx_import_roundtrip.py.)"""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export_cases import ROOT, Case
from netdsl.cli import main
from netdsl.export.onnx import to_onnx
from netdsl.onnx_import.pipeline import import_proto
from onnx_import_cases import netdsl_outputs, onnxruntime_outputs


def _imported(name: str) -> str:
    case = Case(os.path.join(ROOT, "specs", f"{name}.net"))
    return import_proto(to_onnx(case.view, case.params, case.buffers), f"{name}.onnx",
                        name).text


def test_an_elman_network_reads_as_its_recurrence():
    text = _imported("elman")
    assert "state  h : [64] = learned" in text
    assert "dense2 = h[t-1] -> dense(64, bias=false)" in text
    assert "h = dense1 + dense2 -> tanh" in text
    assert "logits = h -> dense(16)" in text


@pytest.mark.parametrize("name", ["elman", "lstm"])
def test_a_learned_initial_state_keeps_its_value(name):
    """The learned start (zeros when initialised) set to random values: the imported
    spec's `h.init` is the exported one, so the first steps agree."""
    case = Case(os.path.join(ROOT, "specs", f"{name}.net"))
    start = np.random.default_rng(6).standard_normal(64).astype(np.float32)
    case.params["h[t-1].init"] = start
    model = to_onnx(case.view, case.params, case.buffers)
    imported = import_proto(model, f"{name}.onnx", name)
    np.testing.assert_array_equal(imported.tensors["h.init"], start)
    feed = case.inputs(batch=2, steps=3)
    (want,) = onnxruntime_outputs(model.SerializeToString(), feed)
    (got,) = netdsl_outputs(imported.text, imported.tensors, list(feed.values()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_an_lstm_written_out_keeps_its_two_states_and_gates():
    text = _imported("lstm")
    assert "state  c : [64]\n" in text and "state  h : [64] = learned" in text
    assert "z = concat(x, h[t-1]) -> dense(256)" in text
    assert "split(4, index=3)" in text and "c[t-1]" in text


def test_stacked_cells_name_their_states_by_module():
    text = _imported("bidirectional_rnn")
    assert "state  bigru1_gru2_h : [64]" in text
    assert "x -> reverse" in text


def _scan_model(body_nodes: list, directions: int = 0, fill: float = 0.5,
                scan_name: str = "loop") -> onnx.ModelProto:
    """h_t = tanh(x_t W + h_{t-1} U) over x [batch, time, 3], as a Scan by hand, the
    initial state `fill` for every example, the input scanned and the states stacked in
    the order `directions` says."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.uniform(-0.7, 0.7, shape).astype(np.float32), name)
             for name, shape in (("W", (3, 4)), ("U", (4, 4)))]
    inits += [numpy_helper.from_array(np.array(v, np.int64), name)
              for name, v in (("units", [4]),)]
    body = helper.make_graph(
        body_nodes, "step",
        [helper.make_tensor_value_info("h_prev", TensorProto.FLOAT, ["b", 4]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, ["b", 3])],
        [helper.make_tensor_value_info("h_next", TensorProto.FLOAT, ["b", 4]),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["b", 4])])
    nodes = [
        helper.make_node("Shape", ["x"], ["rows"], start=0, end=1, name="rows"),
        helper.make_node("Concat", ["rows", "units"], ["start_shape"], axis=0, name="shape"),
        helper.make_node("ConstantOfShape", ["start_shape"], ["h0"], name="h0",
                         value=numpy_helper.from_array(np.array([fill], np.float32))),
        helper.make_node("Scan", ["h0", "x"], ["h_last", "hs"], name=scan_name, body=body,
                         num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1],
                         scan_input_directions=[directions],
                         scan_output_directions=[directions]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 3])],
        [helper.make_tensor_value_info("hs", TensorProto.FLOAT, ["b", "t", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


_STEP = [helper.make_node("MatMul", ["x_t", "W"], ["xw"], name="input"),
         helper.make_node("MatMul", ["h_prev", "U"], ["hu"], name="recurrent"),
         helper.make_node("Add", ["xw", "hu"], ["sum"], name="sum"),
         helper.make_node("Tanh", ["sum"], ["h_next"], name="h"),
         helper.make_node("Identity", ["h_next"], ["h_out"], name="out")]


@pytest.mark.parametrize("directions", [0, 1])
def test_a_scan_built_by_hand_matches_onnxruntime(directions):
    model = _scan_model(_STEP, directions)
    imported = import_proto(model, "scan.onnx", "scan")
    assert "state  h_prev : [4] = 0.5" in imported.text
    assert ("reverse" in imported.text) == bool(directions)
    x = np.random.default_rng(5).standard_normal((3, 6, 3)).astype(np.float32)
    (want,) = onnxruntime_outputs(model.SerializeToString(), {"x": x})
    (got,) = netdsl_outputs(imported.text, imported.tensors, [x])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_body_netdsl_cannot_express_is_reported_with_its_scan(tmp_path, capsys):
    body = [helper.make_node("Cos", ["sum"], ["h_next"], name="wave") if node.name == "h"
            else node for node in _STEP]
    path = tmp_path / "scan.onnx"
    onnx.save(_scan_model(body, scan_name="recurrence"), path)
    assert main(["import", str(path), "-o", str(tmp_path / "scan.net")]) == 1
    err = capsys.readouterr().err
    assert "Cos node 'wave' (in the body of Scan 'recurrence')" in err
    assert "a netdsl layer for this operator" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == ["scan.onnx"]


def test_a_state_started_from_a_computed_value_matches_onnxruntime():
    model = _scan_model(_STEP)
    nodes = list(model.graph.node)
    # the initial state computed from the input: its first step, projected
    nodes.insert(0, helper.make_node("Gather", ["x", "first"], ["x0"], axis=1, name="x0"))
    nodes.insert(1, helper.make_node("MatMul", ["x0", "W"], ["h0_in"], name="project"))
    nodes[-1].input[0] = "h0_in"
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "first"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    imported = import_proto(model, "scan.onnx", "scan")
    assert "state  h_prev : [4] = project_out" in imported.text  # `project` is an op
    assert imported.text.index("project_out = x -> first -> dense(4, bias=false)") < \
        imported.text.index("state  h_prev")
    x = np.random.default_rng(7).standard_normal((3, 5, 3)).astype(np.float32)
    (want,) = onnxruntime_outputs(model.SerializeToString(), {"x": x})
    (got,) = netdsl_outputs(imported.text, imported.tensors, [x])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


STARTED = """network started
import rnn
input  source : seq[3]
input  target_in : seq[2]
target target : seq class(4)
encoded = source -> gru(16)
state s : [16] = last(encoded)
s = tanh(dense(target_in, 16) + dense(s[t-1], 16))
logits = s -> dense(4)
loss cross_entropy(logits, target)
"""


def test_a_decoder_started_from_its_encoder_round_trips(tmp_path):
    """docs/language.md's decoder whose state starts from the encoder's last step: the
    state is declared after the statement of the value it starts from."""
    path = tmp_path / "started.net"
    path.write_text(STARTED)
    case = Case(str(path))
    model = to_onnx(case.view, case.params, case.buffers)
    imported = import_proto(model, "started.onnx", "started")
    lines = imported.text.splitlines()
    declaration = next(i for i, line in enumerate(lines) if line.startswith("state  s : [16] = "))
    start = lines[declaration].split(" = ")[1]
    assert any(line.startswith(f"{start} = h -> last") for line in lines[:declaration])
    feed = case.inputs(batch=2, steps=4)
    (want,) = onnxruntime_outputs(model.SerializeToString(), feed)
    (got,) = netdsl_outputs(imported.text, imported.tensors, list(feed.values()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
