"""netc import of a Loop over a sequence's steps: a Loop built by hand (an Elman
recurrence reading x[t] by Gather or by Slice, its steps stacked as the output) and a
scripted PyTorch loop exported by TorchScript's exporter read as states with h[t-1],
check, and match onnxruntime; a Loop netdsl's recurrences cannot be (a condition that
can turn false, a trip count other than the time length, a body that reads another
step, a loop in a loop) is refused naming it, exit 1, nothing written."""
import io
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from netdsl.cli import main
from netdsl.fmt import format_text
from netdsl.onnx_import.pipeline import import_proto
from onnx_import_cases import netdsl_outputs, onnxruntime_outputs, reexport

# the step read by Gather at the iteration: x[:, t]
_GATHER = [helper.make_node("Gather", ["x", "t"], ["x_t"], axis=1, name="step")]
# the step read by Slice from the iteration to the next, then squeezed: x[:, t:t+1]
_SLICE = [helper.make_node("Unsqueeze", ["t", "zero"], ["t1"], name="at"),
          helper.make_node("Add", ["t1", "one"], ["t2"], name="next"),
          helper.make_node("Slice", ["x", "t1", "t2", "one"], ["x_t1"], name="window"),
          helper.make_node("Squeeze", ["x_t1", "one"], ["x_t"], name="step")]
_CELL = [helper.make_node("MatMul", ["x_t", "W"], ["xw"], name="input"),
         helper.make_node("MatMul", ["h_prev", "U"], ["hu"], name="recurrent"),
         helper.make_node("Add", ["xw", "hu"], ["sum"], name="sum"),
         helper.make_node("Tanh", ["sum"], ["h_next"], name="h"),
         helper.make_node("Identity", ["h_next"], ["h_out"], name="out")]
_KEEP_GOING = [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="going")]


def _loop_model(step=_GATHER, condition=_KEEP_GOING, trip=None, time="t",
                extra_body=(), name="recurrence") -> onnx.ModelProto:
    """h_t = tanh(x_t W + h_{t-1} U) over x [batch, time, 3] as a Loop by hand: the trip
    count the time length (Shape, Gather), or the number `trip`; the state starts from
    0.5; the steps stacked time-major by the Loop and transposed to [batch, time, 4]."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.uniform(-0.7, 0.7, shape).astype(np.float32), n)
             for n, shape in (("W", (3, 4)), ("U", (4, 4)))]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n)
              for n, v in (("units", [4]), ("time_axis", 1), ("zero", [0]), ("one", [1]),
                           ("limit", 2))]
    inits += [numpy_helper.from_array(np.array(True), "true")]
    body = helper.make_graph(
        [*extra_body, *step, *_CELL, *condition], "step",
        [helper.make_tensor_value_info("t", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_prev", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_next", TensorProto.FLOAT, ["b", 4]),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["b", 4])])
    nodes = [
        helper.make_node("Shape", ["x"], ["rows"], start=0, end=1, name="rows"),
        helper.make_node("Concat", ["rows", "units"], ["start_shape"], axis=0, name="shape"),
        helper.make_node("ConstantOfShape", ["start_shape"], ["h0"], name="h0",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Shape", ["x"], ["dims"], name="dims"),
        helper.make_node("Gather", ["dims", "time_axis"], ["steps"], axis=0, name="steps"),
        helper.make_node("Loop", ["steps" if trip is None else "trip", "true", "h0"],
                         ["h_last", "hs_time_major"], name=name, body=body),
        helper.make_node("Transpose", ["hs_time_major"], ["hs"], perm=[1, 0, 2],
                         name="batch_major"),
    ]
    if trip is not None:
        inits.append(numpy_helper.from_array(np.array(trip, np.int64), "trip"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", time, 3])],
        [helper.make_tensor_value_info("hs", TensorProto.FLOAT, ["b", time, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _matches(model: onnx.ModelProto, text: str, tensors: dict, x: np.ndarray) -> None:
    (want,) = onnxruntime_outputs(model.SerializeToString(), {"x": x})
    (got,) = netdsl_outputs(text, tensors, [x])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("step", [_GATHER, _SLICE], ids=["gather", "slice"])
def test_a_loop_built_by_hand_reads_as_its_recurrence(tmp_path, step):
    model = _loop_model(step)
    path = tmp_path / "loop.onnx"
    onnx.save(model, path)
    assert main(["import", str(path), "-o", str(tmp_path / "loop.net")]) == 0
    assert main(["check", str(tmp_path / "loop.net")]) == 0
    imported = import_proto(model, "loop.onnx", "loop")
    text = imported.text
    assert "state  h_prev : [4] = 0.5" in text
    assert "recurrent = h_prev[t-1] -> dense(4, bias=false)" in text
    assert "h_prev = input_out + recurrent -> tanh" in text   # `input` is a keyword
    assert format_text(text) == text
    x = np.random.default_rng(5).standard_normal((3, 6, 3)).astype(np.float32)
    _matches(model, text, imported.tensors, x)


def test_a_loop_over_a_sequence_of_fixed_length_matches_onnxruntime():
    """The time length fixed in the model: the trip count folds to the number it is."""
    model = _loop_model(time=5)
    imported = import_proto(model, "loop.onnx", "loop")
    assert "h_prev[t-1]" in imported.text
    x = np.random.default_rng(6).standard_normal((2, 5, 3)).astype(np.float32)
    _matches(model, imported.text, imported.tensors, x)


class _Elman(torch.nn.Module):
    """An Elman classifier with its loop over time written out in Python."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(3, 4)
        self.rec = torch.nn.Linear(4, 4, bias=False)
        self.out = torch.nn.Linear(4, 2)

    def forward(self, x):
        h = torch.zeros(x.size(0), 4)
        for t in range(x.size(1)):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
        return self.out(h)


class _ElmanTagger(_Elman):
    """The same recurrence scoring every step: the steps' states kept in a list."""

    def forward(self, x):
        h = torch.zeros(x.size(0), 4)
        states = []
        for t in range(x.size(1)):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            states.append(h)
        return self.out(torch.stack(states, 1))


class _TimeMajor(_Elman):
    """The steps' states stacked time-major, [time, batch, 4]."""

    def forward(self, x):
        h = torch.zeros(x.size(0), 4)
        states = []
        for t in range(x.size(1)):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            states.append(h)
        return torch.stack(states, 0)


@pytest.mark.parametrize("module, scored", [(_Elman, "logits = h -> last -> dense(2)"),
                                            (_ElmanTagger, "logits = h -> dense(2)"),
                                            (_TimeMajor, "loss cross_entropy(h, y)")],
                         ids=["classifier", "tagger", "time-major"])
def test_a_scripted_pytorch_loop_reads_as_its_recurrence(tmp_path, module, scored):
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(torch.jit.script(module()), (torch.randn(2, 5, 3),), buffer,
                      dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch", 1: "time"}})
    model = onnx.load_model_from_string(buffer.getvalue())
    assert "Loop" in {node.op_type for node in model.graph.node}
    imported = import_proto(model, "elman.onnx", "elman")
    text = imported.text
    assert "state  h : [4]\n" in text
    assert "rec = h[t-1] -> dense(4, bias=false)" in text
    assert "h = inp + rec -> tanh" in text
    assert scored in text, text
    assert format_text(text) == text
    (tmp_path / "elman.net").write_text(text)
    assert main(["check", str(tmp_path / "elman.net")]) == 0
    x = np.random.default_rng(7).standard_normal((3, 6, 3)).astype(np.float32)
    (want,) = onnxruntime_outputs(buffer.getvalue(), {"x": x})
    (got,) = netdsl_outputs(text, imported.tensors, [x])
    if module is _TimeMajor:  # netdsl's sequences are batch-major
        want = want.transpose(1, 0, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # exported again (the loop a Scan now), it gives the same outputs
    (again,) = onnxruntime_outputs(reexport(text, imported.tensors).SerializeToString(),
                                   {"x": x})
    np.testing.assert_allclose(again, want, rtol=1e-4, atol=1e-6)


# a loop in the step: x[t] through relu, `limit` times
_INNER = helper.make_graph(
    [helper.make_node("Identity", ["inner_cond"], ["inner_out"], name="inner_going"),
     helper.make_node("Relu", ["v"], ["v_next"], name="inner_relu")],
    "inner", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
              helper.make_tensor_value_info("inner_cond", TensorProto.BOOL, []),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, ["b", 3])],
    [helper.make_tensor_value_info("inner_out", TensorProto.BOOL, []),
     helper.make_tensor_value_info("v_next", TensorProto.FLOAT, ["b", 3])])
# a scan in the step: relu of each row of x[t]
_ROWS = helper.make_graph(
    [helper.make_node("Relu", ["row"], ["row_out"], name="row_relu")], "rows",
    [helper.make_tensor_value_info("row", TensorProto.FLOAT, [3])],
    [helper.make_tensor_value_info("row_out", TensorProto.FLOAT, [3])])

REFUSED = {
    "a condition that can turn false": (
        dict(condition=[helper.make_node("Less", ["t", "limit"], ["cond_out"], name="early")]),
        "Loop node 'recurrence': netdsl would need a condition that stays true"),
    "a trip count other than the time length": (
        dict(trip=3),
        "Loop node 'recurrence': netdsl would need a trip count that is the sequence's "
        "length (Shape of its time axis); this one is 3"),
    "a trip count other than the fixed time length": (
        dict(trip=3, time=5),
        "Loop node 'recurrence': netdsl would need a trip count that is the sequence's "
        "length (Shape of its time axis); this one is 3, the sequence has 5 steps"),
    "a body that reads the next step": (
        dict(step=[helper.make_node("Add", ["t", "one_step"], ["t_next"], name="ahead"),
                   helper.make_node("Gather", ["x", "t_next"], ["x_t"], axis=1,
                                    name="step")],
             extra_body=[helper.make_node("Constant", [], ["one_step"], name="c",
                                          value=numpy_helper.from_array(np.array(1, np.int64)))]),
        "Gather node 'step' (in the body of Loop 'recurrence'): netdsl would need a body "
        "that reads the sequence at its own step, x[t] (this one reads x[t+1]"),
    "a loop inside the body": (
        dict(step=[helper.make_node("Gather", ["x", "t"], ["x_raw"], axis=1, name="step"),
                   helper.make_node("Loop", ["limit", "true", "x_raw"], ["x_t"],
                                    name="inner", body=_INNER)]),
        "Loop node 'inner' (in the body of Loop 'recurrence'): netdsl would need a loop "
        "outside any other loop's body"),
    "a scan inside the body": (
        dict(step=[helper.make_node("Gather", ["x", "t"], ["x_raw"], axis=1, name="step"),
                   helper.make_node("Scan", ["x_raw"], ["x_t"], name="rows", body=_ROWS,
                                    num_scan_inputs=1)]),
        "Scan node 'rows' (in the body of Loop 'recurrence'): netdsl would need a loop "
        "outside any other loop's body"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_loop_netdsl_cannot_express_is_refused(tmp_path, capsys, case):
    kwargs, message = REFUSED[case]
    path = tmp_path / "loop.onnx"
    onnx.save(_loop_model(**kwargs), path)
    assert main(["import", str(path), "-o", str(tmp_path / "loop.net")]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and err.count("error:") == 1
    assert os.listdir(tmp_path) == ["loop.onnx"]
