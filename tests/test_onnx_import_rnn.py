"""netc import of recurrent models: ONNX's LSTM, GRU and RNN nodes become the standard
library's cells, checked against onnxruntime with random weights (ONNX's node cases
use constant ones), and PyTorch's LSTM and GRU import and match."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from netdsl.errors import SpecError
from netdsl.onnx_import.pipeline import import_proto
from onnx_import_cases import export, netdsl_outputs, onnxruntime_outputs


class Classifier(torch.nn.Module):
    """Many-to-one: the last layer's final state, classified."""

    def __init__(self, cell, layers=1):
        super().__init__()
        self.rnn = cell(6, 12, num_layers=layers, batch_first=True)
        self.fc = torch.nn.Linear(12, 4)

    def forward(self, x):
        _, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state
        return self.fc(h[-1])


class Tagger(torch.nn.Module):
    """Many-to-many: a score per step."""

    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(6, 10, batch_first=True)
        self.fc = torch.nn.Linear(10, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y)


def _roundtrip(data: bytes, x: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    imported = import_proto(onnx.load_model_from_string(data), "model.onnx", "model")
    (want,) = onnxruntime_outputs(data, {"x": x})
    (got,) = netdsl_outputs(imported.text, imported.tensors, [x])
    return imported.text, got, want


@pytest.mark.parametrize("cell, layers, writes", [
    (torch.nn.LSTM, 2, "x -> lstm(12) x 2 -> last -> dense(4)"),
    (torch.nn.GRU, 1, "x -> gru_reset_after(12) -> last -> dense(4)"),
])
def test_pytorch_classifiers_import_as_stdlib_cells(cell, layers, writes):
    torch.manual_seed(0)
    data = export(Classifier(cell, layers), 1, 7, 6,
                  dynamic={"x": {0: "batch", 1: "time"}})
    x = np.random.default_rng(0).standard_normal((3, 7, 6)).astype(np.float32)
    text, got, want = _roundtrip(data, x)
    assert "import rnn" in text and "input  x : seq[6]" in text and writes in text
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell", [torch.nn.LSTM, torch.nn.GRU])
def test_a_pytorch_tagger_scores_every_step(cell):
    torch.manual_seed(1)
    data = export(Tagger(cell), 1, 5, 6,
                  dynamic={"x": {0: "batch", 1: "time"}})
    x = np.random.default_rng(1).standard_normal((2, 5, 6)).astype(np.float32)
    text, got, want = _roundtrip(data, x)
    assert "target y : seq class(3)" in text
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _cell_model(op: str, gates: int, rng, directions: int = 1, **attrs) -> onnx.ModelProto:
    """One ONNX recurrent node with random weights and biases, between the transposes
    that make a batch-major sequence time-major and back (onnxruntime runs layout=0
    alone); a bidirectional node's two directions side by side, as PyTorch merges them."""
    n, features = 5, 3
    weights = {"W": (directions, gates * n, features), "R": (directions, gates * n, n),
               "B": (directions, 2 * gates * n)}
    inits = [numpy_helper.from_array(rng.uniform(-0.8, 0.8, shape).astype(np.float32), name)
             for name, shape in weights.items()]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], name="time_major", perm=[1, 0, 2]),
             helper.make_node(op, ["xt", "W", "R", "B"], ["Y"], hidden_size=n, name="cell",
                              **attrs)]
    if directions == 1:
        nodes.append(helper.make_node("Squeeze", ["Y", "axis"], ["yt"], name="steps"))
    else:
        nodes += [helper.make_node("Transpose", ["Y"], ["yd"], name="beside", perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["yd", "merged"], ["yt"], name="steps")]
    nodes.append(helper.make_node("Transpose", ["yt"], ["y"], name="batch_major", perm=[1, 0, 2]))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis"))
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "merged"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", directions * n])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op, gates, attrs, cell", [
    ("LSTM", 4, {}, "lstm(5)"),
    ("GRU", 3, {"linear_before_reset": 0}, "gru(5)"),
    ("GRU", 3, {"linear_before_reset": 1}, "gru_reset_after(5)"),
    ("RNN", 1, {}, "elman(5)"),
])
def test_random_weights_match_onnxruntime(op, gates, attrs, cell):
    rng = np.random.default_rng(2)
    model = _cell_model(op, gates, rng, **attrs)
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    text, got, want = _roundtrip(model.SerializeToString(), x)
    assert f"x -> {cell}" in text
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("op, gates, attrs, cell", [
    ("LSTM", 4, {}, "lstm(5)"),
    ("GRU", 3, {"linear_before_reset": 1}, "gru_reset_after(5)"),
    ("RNN", 1, {}, "elman(5)"),
])
@pytest.mark.parametrize("direction", ["reverse", "bidirectional"])
def test_reversed_and_bidirectional_cells_match_onnxruntime(op, gates, attrs, cell, direction):
    rng = np.random.default_rng(3)
    model = _cell_model(op, gates, rng, 2 if direction == "bidirectional" else 1,
                        direction=direction, **attrs)
    x = rng.standard_normal((3, 6, 3)).astype(np.float32)
    text, got, want = _roundtrip(model.SerializeToString(), x)
    assert f"x -> reverse -> {cell} -> reverse" in text
    assert (f"x -> {cell}" in text) == (direction == "bidirectional")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


class BiTagger(torch.nn.Module):
    def __init__(self, cell, layers):
        super().__init__()
        self.rnn = cell(6, 8, num_layers=layers, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y)


@pytest.mark.parametrize("cell, layers", [(torch.nn.LSTM, 2), (torch.nn.GRU, 1)])
def test_a_pytorch_bidirectional_tagger_imports_as_two_cells_a_layer(cell, layers):
    torch.manual_seed(2)
    data = export(BiTagger(cell, layers), 1, 5, 6)
    x = np.random.default_rng(2).standard_normal((2, 5, 6)).astype(np.float32)
    text, got, want = _roundtrip(data, x)
    assert "x -> reverse -> " in text and "concat(" in text
    assert ("-> bidirectional x 2 ->" in text) == (layers == 2)  # a block per layer
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_cell_with_sequence_lengths_is_reported():
    inits = [numpy_helper.from_array(np.zeros(shape, np.float32), name)
             for name, shape in (("W", (1, 15, 3)), ("R", (1, 15, 5)))]
    inits.append(numpy_helper.from_array(np.array([4, 3], np.int32), "lengths"))
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], name="time_major", perm=[1, 0, 2]),
             helper.make_node("GRU", ["xt", "W", "R", "", "lengths"], ["y"], hidden_size=5,
                              name="ragged")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1, "b", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(SpecError) as info:
        import_proto(model, "ragged.onnx", "ragged")
    assert "GRU node 'ragged'" in str(info.value) and "sequence_lens" in str(info.value)
