"""A Loop over a sequence's steps as a recurrence: the states and statements of a Scan.

TorchScript's exporter writes a scripted module's `for t in range(x.size(1))` as a
Loop whose trip count is the time length and whose body reads the step x[:, t]:

    n   = Gather(Shape(x), 1)                          the time length
    h_n = Loop(n, true, h0) { t, cond, h ->
        true, tanh(Gemm(Gather(x, t, axis=1)) + MatMul(h, U)) }

which is a Scan in other words, so it comes back as one (netdsl.onnx_import.scan's
parts): each carried value a state read as h[t-1], the body's nodes the loop's
statements, a value stacked over the steps (a scan output, or a Python list the steps
append to, which TorchScript writes as an ONNX sequence) a sequence. What a netdsl
recurrence is not is refused naming the Loop: a condition that can turn false (an
early exit), a trip count other than the time length, a body that reads another step
than its own or the iteration number as a value, and a loop inside a loop's body.
"""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from netdsl.onnx_import.fold import value_shapes
from netdsl.onnx_import.layers import Unsupported
from netdsl.onnx_import.scan import (bind_finals, bind_scanned, carried_reads, carry, initial,
                                     outermost, sequence, step_dims, translate_body)

__all__ = ["LOOP", "read_slice", "read_step", "shifted"]

_ANY = None


def _loop(t, node, attrs) -> None:
    outermost(t)
    body = attrs["body"]
    trip, condition = (list(node.input) + ["", ""])[:2]
    if not trip:
        raise Unsupported("a trip count, the sequence's length (a loop that runs until its "
                          "condition turns false has no netdsl form)")
    if condition and not _true(t, condition):
        raise Unsupported("a condition that starts true (this loop may run no step)")
    passed = _condition(body)
    if not _stays_true(t, body, passed[-1]):
        raise Unsupported("a condition that stays true (a loop that stops early has no "
                          "netdsl form: netdsl's recurrences run over every step)")
    length = _trip_count(t, trip)
    carried = len(node.input) - 2
    # TorchScript's list of each step's value (`outs.append(h)`): a carried sequence,
    # one value inserted per step, stacked after the loop by ConcatFromSequence
    lists = {k: _appended(t, node, body, k) for k in range(carried)
             if body.input[2 + k].type.HasField("sequence_type")}
    kept = [k for k in range(carried) if k not in lists]
    starts_from = [node.input[2 + k] for k in kept]
    infos = [body.input[2 + k] for k in kept]
    shapes = value_shapes(body)
    reads = carried_reads(t, infos, [_carried_dims(t, shapes, info.name, start)
                                     for info, start in zip(infos, starts_from)])
    starts = [initial(t, name, t.dims[read]) for name, read in zip(starts_from, reads)]
    t.iterations[body.input[0].name] = 0
    stepped = len(t.stepped)
    made = translate_body(t, node, body, skip=set(passed) |
                          {body.output[1 + k].name for k in lists})
    if made is None:
        return  # the body's nodes are reported
    if len(t.stepped) == stepped:
        raise Unsupported("a body that reads a sequence's step at the iteration (a Gather "
                          "of x at the iteration number along its time axis)")
    if length != "T":
        times = _input_lengths(t)
        if not times or any(time != length for time in times):
            steps = next((time for time in times if time is not None), "any number of")
            raise Unsupported("a trip count that is the sequence's length (Shape of its time "
                              f"axis); this one is {length}, the sequence has {steps} steps")
    carry(t, [info.name for info in infos], reads, [made[1 + k] for k in kept], starts)
    bind_finals(t, [node.output[k] for k in kept], reads)
    for k, appended in lists.items():
        t.lists[node.output[k]] = appended
    scanned = len(node.output) - carried
    bind_scanned(t, node.output[carried:], [info.name for info in body.output[1 + carried:]],
                 made[1 + carried:], [0] * scanned, [0] * scanned)  # stacked time-major


def _appended(t, node, body, k: int) -> str:
    """The body's value a carried list has appended each step: the list must start
    empty, and the body insert one value at its end and read nothing else of it."""
    need = ("a carried sequence that starts empty and that each step appends one value "
            "to (a list of the steps' values), and nothing else reads")
    within, passed = body.input[2 + k].name, body.output[1 + k].name
    readers = [node for node in body.node if within in node.input]
    inserts = [node for node in readers if node.op_type == "SequenceInsert" and
               node.output[0] == passed and list(node.input[:1]) == [within] and
               (len(node.input) < 3 or not node.input[2])]
    start = node.input[2 + k]
    if len(readers) != 1 or len(inserts) != 1 or not t.is_const(start) or \
            np.size(t.const(start)) != 0:
        raise Unsupported(need)
    return inserts[0].input[1]


def _stacked(t, node, attrs) -> None:
    """ConcatFromSequence of a Loop's list of the steps' values along a new axis: the
    sequence of that value, [batch, time, ...] along axis 1, time-major along 0."""
    source = node.input[0]
    if source not in t.lists or not attrs.get("new_axis", 0):
        raise Unsupported("the values a Loop's steps appended, stacked along a new axis "
                          "(new_axis=1)")
    name = t.lists[source]
    axis = attrs["axis"]
    if axis < 0:
        axis += len(t.layout[name]) + 2
    bind_scanned(t, [node.output[0]], [name], [t.values.get(name)], [axis], [0])


def read_step(t, output: str, source: str, axis: int, offset: int, unit: bool = False) -> None:
    """`output` is the step of the sequence `source` at the iteration (plus `offset`)
    along `axis`: the loop's own step, x[t], is the sequence itself, step by step; `unit`
    where the step keeps its time axis of one (a Slice)."""
    if offset != 0:
        raise Unsupported("a body that reads the sequence at its own step, x[t] (this one "
                          f"reads x[t{offset:+d}], another iteration's)")
    value = sequence(t, source, axis)
    labels = t.axes.get(source, ("B", "T"))
    if unit and labels[:2] != ("B", "T"):
        raise Unsupported("a step of a batch-major sequence [batch, time, ...]")
    t.values[output] = value
    t.layout[output] = ((1,) if unit else ()) + tuple(t.layout[source])
    t.stepwise.add(output)
    t.stepped.append(source)


def read_slice(t, node) -> None:
    """A Slice from the iteration to the next along the time axis: the loop's step, its
    time axis of one kept."""
    starts, ends = node.input[1:3]
    axes = np.asarray(t.const(node.input[3], "constant axes")).reshape(-1) \
        if len(node.input) > 3 and node.input[3] else np.zeros(1, np.int64)
    steps = np.asarray(t.const(node.input[4], "constant steps")).reshape(-1) \
        if len(node.input) > 4 and node.input[4] else np.ones(1, np.int64)
    if starts not in t.iterations or ends not in t.iterations or axes.size != 1 or \
            t.iterations[ends] != t.iterations[starts] + 1 or int(steps[0]) != 1:
        raise Unsupported("a slice of one step along the time axis, from the iteration to "
                          "the next (x[:, t:t+1])")
    read_step(t, node.output[0], node.input[0], int(axes[0]), t.iterations[starts], unit=True)


def shifted(t, node) -> int:
    """The iteration number plus a constant (Add, Sub): its offset from the iteration."""
    a, b = node.input
    if (a in t.iterations and t.is_const(b)) or \
            (b in t.iterations and t.is_const(a) and node.op_type == "Add"):  # not c - t
        index, constant = (a, b) if a in t.iterations else (b, a)
        number = np.asarray(t.const(constant)).reshape(-1)
        if number.size == 1 and np.issubdtype(number.dtype, np.integer):
            sign = -1 if node.op_type == "Sub" else 1
            return t.iterations[index] + sign * int(number[0])
    raise Unsupported("the iteration number as an index of the sequence's step alone "
                      "(netdsl's steps have no number to compute with)")


def _true(t, name: str) -> bool:
    return t.is_const(name) and bool(np.all(np.asarray(t.const(name))))


def _condition(body) -> list[str]:
    """The body's condition output and the values it passes on unchanged (Identity),
    back to the one it is: the names a condition that stays true leaves untranslated."""
    made = {out: node for node in body.node for out in node.output}
    names = [body.output[0].name]
    while names[-1] in made and made[names[-1]].op_type == "Identity":
        names.append(made[names[-1]].input[0])
    return names


def _stays_true(t, body, name: str) -> bool:
    """Whether the condition the body passes on (`name`) is the one it reads, or true."""
    made = {out: node for node in body.node for out in node.output}
    if name == body.input[1].name:
        return True
    if name in made:
        node = made[name]
        value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"),
                     None) if node.op_type == "Constant" else None
        return value is not None and bool(np.all(value))
    inits = {i.name: numpy_helper.to_array(i) for i in body.initializer}
    if name in inits:
        return bool(np.all(inits[name]))
    return _true(t, name)  # a constant of the graph around the loop


def _trip_count(t, name: str):
    """"T" where the trip count is the time length, else the fixed number it is."""
    if name in t.symbolic:
        entries = tuple(t.symbolic[name])
        if entries == ("T",):
            return "T"
        raise Unsupported("a trip count that is the sequence's length (Shape of its time "
                          "axis)")
    if not t.is_const(name):
        raise Unsupported("a trip count that is the sequence's length (Shape of its time "
                          "axis), not a value computed in the network")
    return int(np.asarray(t.const(name)).reshape(-1)[0])


def _input_lengths(t) -> list:
    """The time lengths the model's sequence inputs declare (None where symbolic)."""
    lengths = []
    for info in t.model.graph.input:
        value = t.values.get(info.name)
        shape = t.folded.shapes.get(info.name)
        if value is None or value not in t.seq or shape is None or len(shape) < 2:
            continue
        lengths.append(shape[0] if t.axes.get(info.name, ("B",))[0] == "T" else shape[1])
    return lengths


def _carried_dims(t, shapes: dict, name: str, start: str) -> tuple:
    """A carried value's per-example dims: the body's, or (where the exporter leaves them
    symbolic, as TorchScript's does) those of the value it starts from."""
    try:
        return step_dims(shapes, name)
    except Unsupported:
        pass
    if start in t.filled:
        shape = t.filled[start][2]
        if shape[:1] == ("B",) and all(isinstance(d, int) for d in shape[1:]):
            return tuple(shape[1:])
    elif start in t.values and t.values[start] not in t.seq and start not in t.axes:
        return t.dims[t.values[start]]
    elif t.is_const(start) and np.ndim(t.const(start)) >= 2:
        return tuple(np.shape(t.const(start))[1:])
    raise Unsupported("carried values of known shape [batch, dims...]")


LOOP = {"Loop": (_loop, {"body": _ANY}),
        "ConcatFromSequence": (_stacked, {"axis": _ANY, "new_axis": _ANY})}
