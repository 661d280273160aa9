"""A recurrence as an ONNX Scan: the loop's steps are the body, its states carried values.

Any recurrence a spec writes exports this way, the standard library's cells and
hand-written ones alike. The body runs once per time step on (B, *dims) values:

    body inputs    each state's source at t-1 .. t-k (k: the longest delay it is read at),
                   then one step of each sequence the loop scans
    body outputs   the sources at t .. t-k+1 (carried to the next step), then one step of
                   each value read after the loop

Scan stacks the latter along the time axis (axis 1, as the model's sequences are laid
out); everything else the body reads (parameters, values without a time axis, the
sequences attention reads whole) it reads from the enclosing graph by name.
"""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from netdsl.export.view import LoopParts
from netdsl.export.walk import STEP

__all__ = ["emit_scan"]


def emit_scan(w, part: LoopParts) -> None:
    """Emit `part` through the OnnxWalker `w` as one Scan node."""
    g = w.g
    members = part.members
    local = {node: None for node in (*members, *part.states, *part.scanned)}
    for step in part.loop.steps:  # what the body reads outside, made before the body
        w.body_args(step, local)
    scanned = [w.get(node, "seq") for node in part.scanned]
    first = part.scanned[0]
    initial = _initial_states(w, part, scanned[0])

    (outer_nodes, g.nodes), (outer_info, g.value_info) = (g.nodes, []), (g.value_info, {})
    carried = {}  # (source, k) -> the body input holding the source's value k steps back
    body_inputs = []
    for source, depth in part.delays.items():
        for k in range(1, depth + 1):
            name = carried[source, k] = g.fresh(f"{source}[t-{k}]")
            body_inputs.append(_step_info(w, name, source))
    local = {state: carried[s.source, s.delay] for state, s in part.states.items()}
    for node in part.scanned:
        local[node] = g.fresh(f"{node}[t]")
        body_inputs.append(_step_info(w, local[node], node))
    for step in part.loop.steps:
        local[step.node] = w.emit(step, w.body_args(step, local), STEP, None)

    outputs = [(local[source] if k == 0 else carried[source, k], source)
               for source, depth in part.delays.items() for k in range(depth)]
    outputs += [(local[node], _value_node(part, node)) for node in part.stacked]
    body_outputs = _body_outputs(w, outputs)
    ends = {v.name for v in body_inputs + body_outputs}
    body = helper.make_graph(g.nodes, f"{part.loop.name}/body", body_inputs, body_outputs,
                             value_info=[v for n, v in g.value_info.items() if n not in ends])
    g.nodes, g.value_info = outer_nodes, outer_info

    g.begin(f"{part.loop.name}/scan")
    finals = [g.fresh(f"{source}[t-{k}]/last") for source, depth in part.delays.items()
              for k in range(1, depth + 1)]
    results = [w.canonical(node, "seq") for node in part.stacked]
    g.nodes.append(helper.make_node(
        "Scan", initial + scanned, finals + results, name=g.node_name("Scan"), body=body,
        num_scan_inputs=len(scanned), scan_input_axes=[1] * len(scanned),
        scan_output_axes=[1] * len(results)))
    w.stacked(part, dict(zip(part.stacked, results)))
    for node, result in zip(part.stacked, results):
        w.time[_value_node(part, node)] = w.time[first]
        w.annotate(result, _value_node(part, node), "seq")


def _value_node(part: LoopParts, node: str) -> str:
    """The node whose type a value has: a state node's is its source's."""
    return part.states[node].source if node in part.states else node


def _step_info(w, name: str, node: str):
    return w.value_info(name, node, STEP)


def _body_outputs(w, outputs: list[tuple[str, str]]) -> list:
    """The body's outputs, (value, node of its type) each: a value that is a body input,
    or is output a second time, goes out through an Identity (a body output is made in
    the body, once)."""
    g = w.g
    made = {name for node in g.nodes for name in node.output}
    infos, seen = [], set()
    for value, node in outputs:
        if value not in made or value in seen:
            g.begin(f"{value}/out")
            value = g.node("Identity", [value])
        seen.add(value)
        infos.append(_step_info(w, value, node))
    return infos


def _initial_states(w, part: LoopParts, sequence: str) -> list[str]:
    """The values the carried states start from, (B, *dims) each: zeros, a number, the
    learned initial value repeated over the batch, or a value computed before the loop."""
    g = w.g
    values = []
    for source, depth in part.delays.items():
        state = next(s for s in part.states.values() if s.source == source)
        dims = w.view.type(source).dims
        g.begin(f"{state.node}/initial")
        shape = g.node("Concat", [g.rows(sequence), g.ints(dims)], axis=0)
        if state.start is not None:
            value = w.get(state.start, STEP)
        elif state.init == "learned":
            value = g.node("Expand", [g.param(state.param, w.params[state.param]), shape])
        else:
            fill = 0.0 if state.init == "zeros" else float(state.init)
            value = g.node("ConstantOfShape", [shape],
                           value=numpy_helper.from_array(np.full(1, fill, g.dtype)))
        values += [value] * depth
    return values
