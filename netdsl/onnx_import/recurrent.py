"""LSTM, GRU and RNN nodes as the standard library's cells (netdsl/stdlib/rnn.net).

ONNX's recurrent operators read a sequence time-major, [time, batch, features] (or
batch-major with layout=1), and give every step's state [time, directions, batch, n]
and the last one [directions, batch, n]. A forward cell with ONNX's default activations
and zero initial states is netdsl's `lstm(n)`, `gru(n)` (Cho et al.'s, ONNX's
linear_before_reset=0), `gru_reset_after(n)` (PyTorch's, linear_before_reset=1) or
`elman(n)`; its weights are regrouped for the cell's dense layers:

    lstm      z = dense(concat(x, h), 4n), gates i, f, g, o (ONNX's order: i, o, f, c)
    gru       gates = dense(concat(x, h), 2n) for z, r (netdsl's z is ONNX's 1 - z, so
              its rows are negated), then the candidate's input and recurrent parts
    elman     dense(x, n) + dense(h, n, bias=false)

A reversed cell is netdsl's `x -> reverse -> lstm(n) -> reverse` (its Y_h the last
state of the reversed run); a bidirectional one both cells side by side, `concat` of
the forward and the reversed run, which is ONNX's Y [time, 2, batch, n] with its
directions axis moved beside the features and merged (PyTorch's bidirectional=True).
"""
from __future__ import annotations

import numpy as np

from netdsl.onnx_import.layers import Unsupported

__all__ = ["RECURRENT", "is_recurrent", "node_layout"]

_ANY = None


def is_recurrent(node) -> bool:
    return node.op_type in RECURRENT and node.domain in ("", "ai.onnx")


def _operands(t, node, gates: int):
    """The input sequence's netdsl value and, per direction, the weights W, R, Wb, Rb."""
    if any(t.used(name) for name in node.output[2:]) and node.op_type == "LSTM":
        raise Unsupported("the outputs Y and Y_h alone (netdsl's lstm gives no cell state)")
    source = node.input[0]
    if source not in t.values:
        raise Unsupported("a sequence computed from the input")
    value = t.values[source]
    if value not in t.seq:
        raise Unsupported("a sequence input [batch, time, features]")
    layout = node_layout(node)
    want = ("T", "B", 0) if layout == 0 else ("B", "T", 0)
    have = t.axes.get(source, ("B", "T", 0))
    if have != want:
        raise Unsupported("the sequence in the order its layout attribute says")
    w = t.const(node.input[1], "constant weights")
    r = t.const(node.input[2], "constant weights")
    hidden = r.shape[-1]
    if len(node.input) > 3 and node.input[3]:
        b = t.const(node.input[3], "a constant bias")
    else:
        b = np.zeros((len(w), 2 * gates * hidden), np.float32)
    if len(node.input) > 4 and node.input[4]:
        raise Unsupported("no sequence_lens (netdsl's sequences carry their own lengths)")
    for i in range(5, len(node.input)):
        name = node.input[i]
        zeros = t.filled.get(name, ("fill", None))[:2] == ("fill", 0.0) or name in \
            t.folded.constants and not np.any(t.folded.constants[name])
        if name and not zeros:
            raise Unsupported("zero initial states and no peepholes (a stdlib cell)")
    weights = [(w[d], r[d], b[d][:gates * hidden], b[d][gates * hidden:])
               for d in range(len(w))]
    return value, weights, hidden, layout


def node_layout(node) -> int:
    return next((a.i for a in node.attribute if a.name == "layout"), 0)


def _finish(t, node, value, cell: str, hidden: int, params: list[dict], layout: int,
            direction: str) -> None:
    """The cells of each direction over `value`, bound to the node's Y and Y_h: a reversed
    cell reads the sequence through `reverse` and its steps are reversed back; the two
    of a bidirectional node are concatenated, [2, n] per step as ONNX's directions axis."""
    runs, finals = [], []
    for d, weights in enumerate(params):
        weights = {name: np.asarray(p, np.float32) for name, p in weights.items()}
        backwards = direction == "reverse" or d == 1
        source = t.reverse(value) if backwards else value
        steps = t.emit(cell, {"n": hidden}, [source], (hidden,), weights)
        if len(node.output) > 1 and t.used(node.output[1]):
            finals.append(t.emit("last", {}, [steps], (hidden,)))
        runs.append(t.reverse(steps) if backwards else steps)
    both = len(runs) == 2
    out = t.emit("concat", {"axis": 0}, runs, (2 * hidden,)) if both else runs[0]
    if both:  # Y's directions axis as the value's own first dim: [2, n] per step
        t.values[node.output[0]], t.layout[node.output[0]] = out, (2, hidden)
        t.axes[node.output[0]] = ("T", 0, "B", 1) if layout == 0 else ("B", "T", 0, 1)
    else:
        t.values[node.output[0]], t.layout[node.output[0]] = out, (hidden,)
        t.axes[node.output[0]] = ("T", "D", "B", 0) if layout == 0 else ("B", "T", "D", 0)
    if finals:
        last = t.emit("concat", {"axis": 0}, finals, (2 * hidden,)) if both else finals[0]
        t.values[node.output[1]] = last
        if both:
            t.layout[node.output[1]] = (2, hidden)
            t.axes[node.output[1]] = (0, "B", 1) if layout == 0 else ("B", 0, 1)
        else:
            t.layout[node.output[1]] = (hidden,)
            t.axes[node.output[1]] = ("D", "B", 0) if layout == 0 else ("B", "D", 0)


def _check(attrs, activations: tuple) -> str:
    """The node's direction, once its activations are those of a stdlib cell."""
    directions = 2 if attrs.get("direction", "forward") == "bidirectional" else 1
    given = tuple(a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", ()))
    if given and given != activations * directions:
        raise Unsupported(f"the activations {', '.join(activations)} (those of the stdlib cell)")
    return attrs.get("direction", "forward")


def _lstm(t, node, attrs) -> None:
    direction = _check(attrs, ("Sigmoid", "Tanh", "Tanh"))
    value, weights, n, layout = _operands(t, node, 4)
    order = [0, 2, 3, 1]  # ONNX's i, o, f, c as netdsl's i, f, g, o
    regroup = (lambda m: m.reshape(4, n, -1)[order].reshape(4 * n, -1))
    params = [{"z.weight": np.concatenate([regroup(w), regroup(r)], axis=1),
               "z.bias": regroup((wb + rb)[:, None])[:, 0]} for w, r, wb, rb in weights]
    _finish(t, node, value, "lstm", n, params, layout, direction)


def _gru(t, node, attrs) -> None:
    direction = _check(attrs, ("Sigmoid", "Tanh"))
    value, weights, n, layout = _operands(t, node, 3)
    flip = np.concatenate([-np.ones(n), np.ones(n)])[:, None]   # netdsl's z is 1 - ONNX's
    after = bool(attrs.get("linear_before_reset", 0))
    params = []
    for w, r, wb, rb in weights:
        gates = np.concatenate([w[:2 * n], r[:2 * n]], axis=1) * flip
        gate_bias = (wb[:2 * n] + rb[:2 * n]) * flip[:, 0]
        cell = {"dense1.weight": gates, "dense1.bias": gate_bias, "dense2.weight": w[2 * n:]}
        if after:
            cell.update({"dense2.bias": wb[2 * n:], "dense3.weight": r[2 * n:],
                         "dense3.bias": rb[2 * n:]})
        else:
            cell.update({"dense2.bias": wb[2 * n:] + rb[2 * n:], "dense3.weight": r[2 * n:]})
        params.append(cell)
    _finish(t, node, value, "gru_reset_after" if after else "gru", n, params, layout,
            direction)


def _rnn(t, node, attrs) -> None:
    direction = _check(attrs, ("Tanh",))
    value, weights, n, layout = _operands(t, node, 1)
    params = [{"dense1.weight": w, "dense1.bias": wb + rb, "dense2.weight": r}
              for w, r, wb, rb in weights]
    _finish(t, node, value, "elman", n, params, layout, direction)


_COMMON = {"hidden_size": _ANY, "direction": _ANY, "activations": _ANY, "layout": _ANY}
RECURRENT = {
    "LSTM": (_lstm, {**_COMMON, "input_forget": (0,)}),
    "GRU": (_gru, {**_COMMON, "linear_before_reset": _ANY}),
    "RNN": (_rnn, _COMMON),
}
