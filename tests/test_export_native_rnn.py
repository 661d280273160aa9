"""`--native-rnn`: the standard library's lstm, gru_reset_after and elman cells as ONNX's
own LSTM, GRU and RNN ops, giving netdsl's outputs; any other recurrence stays a Scan."""
import os
import re

import numpy as np
import onnx
import pytest

from export_cases import SPECS, Case
from netdsl.export.cells import native_cells
from netdsl.export.onnx import to_onnx
from test_export_onnx import session

CELLS = re.compile(r"^import rnn$|\b(lstm|gru_reset_after|elman)\(", re.M)


def _code(path: str) -> str:
    """A spec's text without its comments."""
    return "\n".join(line.split("#")[0].strip() for line in open(path))


# the specs that import the library and call one of the cells
USING = [p for p in SPECS if len({m.group(1) for m in CELLS.finditer(_code(p))}) >= 2]

GRU_THEN_ELMAN = """\
network gru_then_elman
import rnn
input  x : seq[3]
target y : seq class(4)
logits = x -> gru_reset_after(5) -> elman(6) -> dense(4)
loss cross_entropy(logits, y)
"""

BIDIRECTIONAL = """\
network bidirectional
import rnn
input  x : seq[3]
target y : class(2)
logits = x -> bi_lstm(4) -> lstm(3) -> last -> dense(2)
loss cross_entropy(logits, y)
"""

# a spec's own block called lstm is not the library's: it stays a Scan
OWN_LSTM = """\
network own
input  x : seq[3]
target y : class(2)
block lstm(n) {
  in x
  state h : [n]
  h = tanh(dense(concat(x, h[t-1]), n))
  out h
}
logits = x -> lstm(4) -> last -> dense(2)
loss cross_entropy(logits, y)
"""


def native(case: Case, steps: int = 5):
    """The --native-rnn model of a case, checked, and its outputs against netdsl's."""
    view, kept = native_cells(case.view)
    model = to_onnx(view, case.params, case.buffers)
    onnx.checker.check_model(model, full_check=True)
    feed = case.inputs(batch=3, steps=steps, seed=1)
    got = session(model).run(None, feed)
    for (name, want), value in zip(case.forward(feed).items(), got):
        assert value.shape == want.shape, name
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-5, err_msg=name)
    return model, kept


def op_types(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def spec(tmp_path, text: str) -> str:
    path = tmp_path / "spec.net"
    path.write_text(text)
    return str(path)


def test_the_specs_use_the_cells():
    assert {os.path.basename(p) for p in USING} >= {"adding.net", "char_lm.net",
                                                     "lstm_classifier.net"}


@pytest.mark.parametrize("path", USING, ids=lambda p: os.path.basename(p)[:-4])
def test_every_spec_with_a_library_cell_exports_native_ops(path):
    model, kept = native(Case(path))
    assert "LSTM" in op_types(model) and "Scan" not in op_types(model)
    assert kept == []


def test_the_gru_and_the_elman_cell(tmp_path):
    model, kept = native(Case(spec(tmp_path, GRU_THEN_ELMAN)), steps=7)
    types = op_types(model)
    assert types.count("GRU") == 1 and types.count("RNN") == 1 and "Scan" not in types
    gru = next(n for n in model.graph.node if n.op_type == "GRU")
    assert any(a.name == "linear_before_reset" and a.i == 1 for a in gru.attribute)
    assert gru.name == "gru_reset_after1"
    # no dense layer of the cells is left over: their weights are the ops' W, R and B
    assert not any(t.name.startswith(("gru_reset_after1.", "elman1.")) and
                   t.name.rsplit(".", 1)[1] not in "WRB" for t in model.graph.initializer)


def test_cells_inside_blocks_and_stacked(tmp_path):
    model, kept = native(Case(spec(tmp_path, BIDIRECTIONAL)))
    assert op_types(model).count("LSTM") == 3 and "Scan" not in op_types(model)


def test_a_hand_written_recurrence_stays_a_scan(tmp_path):
    for text in (OWN_LSTM, open(next(p for p in SPECS if p.endswith("/lstm.net"))).read()):
        model, kept = native(Case(spec(tmp_path, text)))
        assert op_types(model).count("Scan") == 1 and "LSTM" not in op_types(model)
        assert len(kept) == 1


def test_a_mixed_network_keeps_the_others_as_scans():
    case = Case(next(p for p in SPECS if p.endswith("seq2seq.net")))
    model, kept = native(case)
    assert op_types(model).count("Scan") == 3 and len(kept) == 3  # two stdlib grus, the decoder
