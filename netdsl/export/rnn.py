"""A standard library cell as ONNX's own recurrent op: LSTM, GRU or RNN.

`--native-rnn` writes the cells netdsl.export.cells recognises as the op runtimes
optimise, with the cell's dense layers rearranged into the op's W (input weights), R
(recurrent weights) and B (their biases, W's then R's), one block of rows per gate in
ONNX's order:

    lstm              spec i, f, g, o  ->  ONNX i, o, f, c
    gru_reset_after   spec z, r, h     ->  ONNX z, r, h with linear_before_reset=1;
                      the spec keeps z of the candidate (h = (1-z) h' + z h~), ONNX
                      of the old state, so z's rows are negated: sigmoid(-a) = 1 - sigmoid(a)
    elman             one gate, tanh   ->  RNN

The op reads and gives (T, B, ...) sequences: the cell's input is transposed in and its
states at every step transposed out to the model's (B, T, ...). netdsl's sequences in a
batch all have the same length, so `sequence_lens` is left out.
"""
from __future__ import annotations

import numpy as np

from netdsl.export.naming import module_path
from netdsl.export.view import Cell
from netdsl.export.walk import SEQ

__all__ = ["emit_cell", "OPS"]

OPS = {"lstm": "LSTM", "gru_reset_after": "GRU", "elman": "RNN"}
_LSTM_ORDER = (0, 3, 1, 2)  # ONNX's i, o, f, c as rows blocks of the spec's i, f, g, o


def emit_cell(w, cell: Cell) -> None:
    """Emit `cell` through the OnnxWalker `w` as one LSTM, GRU or RNN node."""
    g = w.g
    x = w.get(cell.x, SEQ)
    n = w.view.type(cell.h).dims[0]
    weight, recurrent, bias = _weights(cell, w.params, w.view.type(cell.x).dims[0], n)
    prefix = ".".join(module_path(cell.instance))
    names = [g.tensor(f"{prefix}.{name}", array[None]) for name, array in
             (("W", weight), ("R", recurrent), ("B", bias))]
    g.begin(f"{cell.instance}/time_major")
    x = g.node("Transpose", [x], perm=[1, 0, 2])
    start = g.begin(cell.instance)
    attrs = {"linear_before_reset": 1} if cell.kind == "gru_reset_after" else {}
    steps = g.node(OPS[cell.kind], [x, *names], hidden_size=n, **attrs)
    h = g.node("Transpose", [g.node("Squeeze", [steps, g.ints([1])])], perm=[1, 0, 2])
    h = g.rename(start, h, w.canonical(cell.h, SEQ))
    w.forms[cell.h] = {SEQ: h}
    w.timeref[cell.h], w.time[cell.h] = h, w.time[cell.x]
    w.annotate(h, cell.h, SEQ)


def _weights(cell: Cell, params: dict, inputs: int, n: int):
    """The op's W (gates*n, inputs), R (gates*n, n) and B (2*gates*n,) from the cell's
    dense layers."""
    def dense(role: str):
        step = cell.weights[role]
        weight = np.asarray(params[step.params["weight"]])
        bias = params.get(step.params["bias"]) if "bias" in step.params else None
        return weight, np.zeros(len(weight), weight.dtype) if bias is None else np.asarray(bias)

    if cell.kind == "lstm":
        weight, bias = dense("gates")
        rows = _lstm_rows
        return (rows(weight[:, :inputs]), rows(weight[:, inputs:]),
                np.concatenate([rows(bias), np.zeros_like(bias)]))
    if cell.kind == "elman":
        (w_in, b_in), (w_rec, b_rec) = dense("input"), dense("recurrent")
        return w_in, w_rec, np.concatenate([b_in, b_rec])
    (gates, b_gates), (w_in, b_in), (w_rec, b_rec) = dense("gates"), dense("input"), \
        dense("recurrent")
    sign = np.concatenate([-np.ones(n), np.ones(n)]).astype(gates.dtype)[:, None]
    gates, b_gates = gates * sign, b_gates * sign[:, 0]
    return (np.concatenate([gates[:, :inputs], w_in]),
            np.concatenate([gates[:, inputs:], w_rec]),
            np.concatenate([b_gates, b_in, np.zeros(2 * n, b_in.dtype), b_rec]))


def _lstm_rows(a: np.ndarray) -> np.ndarray:
    """The LSTM's row blocks of `a` (the spec's i, f, g, o) in ONNX's order i, o, f, c."""
    blocks = np.split(a, 4)
    return np.concatenate([blocks[i] for i in _LSTM_ORDER])
