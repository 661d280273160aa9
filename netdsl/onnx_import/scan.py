"""A Scan as a recurrence: its carried values become states, its body the loop's statements.

netc export writes each recurrence of a spec as a Scan (netdsl.export.scan): the body
runs once per step on [batch, dims] values; its first inputs are the carried values
(a state's source k steps back), its outputs the next ones, then one step of each value
read after the loop. That is netdsl's own form of a recurrence, so a Scan comes back as

    state h : [64] = learned
    h = dense1 + dense2 -> tanh          # dense2 reads h[t-1]

with the body's nodes translated by the same rules as the graph's, each scanned
sequence read step by step, and a body output that passes a carried value on (h[t-1]
carried as the next step's h[t-2]) a read further back. A carried value starts from
zeros, a number or a learned row (ConstantOfShape or Expand to [batch, n]), or a value
the network computes before the loop (`state s : [n] = enc`); a scanned input or
output in reverse order is netdsl's `reverse` of the sequence.
"""
from __future__ import annotations

import re

import numpy as np

from netdsl.onnx_import.fold import fold_graph, value_shapes
from netdsl.onnx_import.layers import State, Unsupported

__all__ = ["SCAN", "bind_finals", "bind_scanned", "carried_reads", "carry", "initial",
           "outermost", "sequence", "step_dims", "translate_body"]

_ANY = None


def _scan(t, node, attrs) -> None:
    outermost(t)
    body = attrs["body"]
    scanned = int(attrs["num_scan_inputs"])
    carried = len(node.input) - scanned
    in_axes = list(attrs.get("scan_input_axes", [0] * scanned))
    out_axes = list(attrs.get("scan_output_axes", [0] * (len(node.output) - carried)))
    in_dirs = list(attrs.get("scan_input_directions", [0] * scanned))
    out_dirs = list(attrs.get("scan_output_directions", [0] * len(out_axes)))
    shapes = value_shapes(body)
    reads = carried_reads(t, body.input[:carried],
                          [step_dims(shapes, info.name) for info in body.input[:carried]])
    for outer, info, axis, reverse in zip(node.input[carried:], body.input[carried:],
                                          in_axes, in_dirs):
        value = sequence(t, outer, axis)
        if reverse:
            value = t.reverse(value)
        t.values[info.name], t.layout[info.name] = value, t.layout[outer]
        t.stepwise.add(info.name)
    starts = [initial(t, name, t.dims[read]) for name, read in zip(node.input[:carried], reads)]
    made = translate_body(t, node, body)
    if made is None:
        return  # the body's nodes are reported
    carry(t, [info.name for info in body.input[:carried]], reads, made[:carried], starts)
    bind_finals(t, node.output[:carried], reads)
    bind_scanned(t, node.output[carried:], [info.name for info in body.output[carried:]],
                 made[carried:], out_axes, out_dirs)


def outermost(t) -> None:
    """A loop (Scan, Loop) is not in another loop's body: netdsl's recurrences do not
    nest."""
    if t.within:
        raise Unsupported("a loop outside any other loop's body (netdsl's recurrences do "
                          "not nest)")


def carried_reads(t, infos, dims: list[tuple]) -> list[str]:
    """A netdsl value for each carried value the body reads (a state, once `carry`
    says what it reads back), per step."""
    reads = []
    for info, step in zip(infos, dims):
        read = t._fresh()
        t.dims[read] = t.onnx_dims[read] = step
        t.seq.add(read)
        t.values[info.name], t.layout[info.name] = read, step
        t.stepwise.add(info.name)
        reads.append(read)
    return reads


def translate_body(t, node, body, skip: set = frozenset()) -> list[str | None] | None:
    """The body's nodes translated in the loop `node`, folded with the graph's
    constants (those that compute nothing but `skip`, a Loop's condition, left out): the
    netdsl values of the body's outputs, or None when some node of it is reported
    (naming the loop it is in)."""
    folded = fold_graph(body, t.folded.constants, t.folded.shapes,
                        {o.domain: o.version for o in t.model.opset_import})
    t.folded.constants.update(folded.constants)
    t.folded.shapes.update(folded.shapes)
    nodes = [inner for inner in folded.nodes if not set(inner.output) <= skip]
    for inner in nodes:
        for name in inner.input:
            t.readers[name] = t.readers.get(name, 0) + 1
    for info in body.output:
        t.readers[info.name] = t.readers.get(info.name, 0) + 1
    problems, outer = _count(t), t.node
    t.within = f"{node.op_type} '{node.name or '(unnamed)'}'"
    try:
        for inner in nodes:
            t.translate_node(inner)
    finally:
        t.node, t.within = outer, ""
    if _count(t) > problems:
        return None
    return [t.values.get(info.name) for info in body.output]


def bind_finals(t, outputs, reads: list[str]) -> None:
    """A loop's final carried values, where the graph reads them: the last step of
    the value each state reads back."""
    for k, final in enumerate(outputs):
        if t.used(final):
            state = t.states[reads[k]]
            if state.delay != 1:
                raise Unsupported("the final value of a state carried one step, alone")
            t.bind(final, t.emit("last", {}, [state.source], state.dims), stepwise=False)


def bind_scanned(t, outputs, names: list[str], made: list[str | None], axes,
                 directions) -> None:
    """A loop's outputs stacked over its steps: the sequence of the value each step
    computes (the body's value `names`), time-major where `axes` says 0."""
    for output, name, value, axis, reverse in zip(outputs, names, made, axes, directions):
        if value is None:
            raise Unsupported("a body whose outputs are computed from the step's inputs")
        if value in t.states:
            raise Unsupported("scan outputs computed in the step (a carried value passed "
                              "straight through is a state netdsl reads only in the loop)")
        if axis not in (0, 1):
            raise Unsupported("scan_output_axes of 0 or 1 (a sequence's time axis)")
        if reverse:
            value = t.reverse(value)
        t.bind(output, value, t.layout[name], stepwise=False)
        if axis == 0:
            t.axes[output] = ("T", "B") + tuple(range(len(t.layout[name])))


def _count(t) -> int:
    """How many nodes the translation has reported so far."""
    return sum(len(nodes) for nodes in t.problems.values())


def step_dims(shapes: dict, name: str) -> tuple:
    shape = shapes.get(name)
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
        raise Unsupported("carried values of known shape [batch, dims...]")
    return tuple(shape[1:])


def sequence(t, outer: str, axis: int) -> str:
    """The netdsl sequence a scanned input steps through along `axis`."""
    if outer not in t.values or t.values[outer] not in t.seq or outer in t.stepwise:
        raise Unsupported("scanned inputs that are sequences [batch, time, ...]")
    labels = t.axes.get(outer, ("B", "T") + tuple(range(len(t.layout[outer]))))
    if axis < 0:
        axis += len(labels)
    if not 0 <= axis < len(labels) or labels[axis] != "T":
        raise Unsupported("a scan along the time axis of a sequence")
    if any(isinstance(a, str) and a not in ("B", "T") for a in labels):
        raise Unsupported("a scanned sequence without an RNN's directions axis")
    return t.values[outer]


def initial(t, name: str, dims: tuple) -> tuple:
    """(init, learned row) of a carried value that starts from `name`."""
    if name in t.filled:
        kind, value, shape = t.filled[name]
        if shape != ("B",) + dims:
            raise Unsupported(f"an initial value of [batch, {', '.join(map(str, dims))}]")
    elif name in t.folded.constants:
        value = np.asarray(t.folded.constants[name], np.float32)
        if value.shape[-len(dims):] != dims:
            raise Unsupported(f"an initial value of [batch, {', '.join(map(str, dims))}]")
        value = value.reshape(-1, *dims)
        if not np.all(value == value[:1]):
            raise Unsupported("an initial value alike for every example")
        value = value[0]
        kind = "fill" if np.all(value == value.reshape(-1)[0]) else "learned"
        if kind == "fill":
            value = float(value.reshape(-1)[0])
    elif name in t.values and t.values[name] not in t.seq and name not in t.axes and \
            t.dims[t.values[name]] == dims:
        return ("start", t.values[name])  # a value computed before the loop
    else:
        raise Unsupported("initial values of zeros, a number, a learned row, or a value "
                          f"of the state's dims [batch, {', '.join(map(str, dims))}]")
    if kind == "fill":
        return (0.0 if value == 0 else float(value), None)
    row = np.broadcast_to(np.asarray(value, np.float32), dims).copy()
    return ("learned", row)


def carry(t, names: list[str], reads: list[str], sources: list[str | None],
          starts: list[tuple]) -> None:
    """Each carried value as a state: the value the body passes on, read one step back;
    a carried value passed on from another read is read one step further back."""
    if any(source is None for source in sources):
        raise Unsupported("a body whose outputs are computed from the step's inputs")
    pending = dict(enumerate(sources))
    while pending:
        progress = False
        for k, source in list(pending.items()):
            if source in reads and reads.index(source) in pending:
                continue
            delay = 1
            if source in t.states:
                earlier = t.states[source]
                source, delay = earlier.source, earlier.delay + 1
            if t.dims[source] != t.dims[reads[k]]:
                raise Unsupported("a body that passes on values of the carried values' dims")
            init, learned = starts[k]
            start = learned if init == "start" else None
            t.states[reads[k]] = State(source, delay, t.dims[reads[k]],
                                       "zeros" if init == 0.0 else init,
                                       None if start else learned,
                                       _hint(names[k]), start)
            del pending[k]
            progress = True
        if not progress:
            raise Unsupported("a body that computes each carried value (these pass one "
                              "another on in a circle)")


def _hint(name: str) -> str:
    """A state's module path from its carried value's: `lstm1/c[t-1]` -> lstm1/c, and
    TorchScript's numbered `h.11` -> h."""
    return re.sub(r"\[.*$|\.\d+$", "", name) or "h"


SCAN = {"Scan": (_scan, {"body": _ANY, "num_scan_inputs": _ANY, "scan_input_axes": _ANY,
                         "scan_output_axes": _ANY, "scan_input_directions": _ANY,
                         "scan_output_directions": _ANY})}
