"""The standard library's recurrent cells in a view, for a format's native ops.

ONNX has LSTM, GRU and RNN ops: with `--native-rnn` the stdlib `lstm`,
`gru_reset_after` and `elman` cells export as those instead of a Scan
(netdsl.export.rnn). A cell is recognised from the graph, not from the names a spec
gives: its recurrence lies in one block instance whose block is defined in the standard
library (`Frame.origin`), and its dense layers read what that block's do. A spec's own
block named `lstm`, or any other recurrence, stays a Scan.
"""
from __future__ import annotations

from dataclasses import replace

from netdsl.export.view import Cell, LoopParts, View
from netdsl.lower.plan import Step

__all__ = ["LIBRARY", "KINDS", "native_cells"]

LIBRARY = "<stdlib>/rnn.net"  # the file netdsl.driver reads `import rnn` from
# each cell's dense layers, by what they read: the input alone, the state alone, or
# both concatenated
KINDS = {"lstm": {"gates"}, "gru_reset_after": {"gates", "input", "recurrent"},
         "elman": {"input", "recurrent"}}


def native_cells(view: View) -> tuple[View, list[str]]:
    """The view with each standard library cell's recurrence as a Cell, and the
    recurrences that stay loops (a hand-written one, another cell), each named by the
    states it carries (`h, c`)."""
    cells, kept = {}, []
    for item in view.schedule:
        if isinstance(item, LoopParts):
            cell = _recognise(view, item)
            if cell is None:
                kept.append(", ".join(item.delays))
            else:
                cells[item.loop.name] = cell
    before = {step.node for cell in cells.values() for step in cell.outside}
    schedule = [cells.get(item.loop.name, item) if isinstance(item, LoopParts) else item
                for item in view.schedule
                if isinstance(item, LoopParts) or item.node not in before]
    return replace(view, schedule=schedule), kept


def _recognise(view: View, part: LoopParts) -> Cell | None:
    graph = view.graph
    scopes = {graph.nodes[step.node]["scope"] for step in part.loop.steps}
    scopes |= {graph.nodes[node]["scope"] for node in part.states}
    if len(scopes) != 1:
        return None
    scope = scopes.pop()
    if not scope or scope[-1].origin != LIBRARY or scope[-1].block not in KINDS:
        return None
    kind = scope[-1].block
    if any(s.delay != 1 or s.init != "zeros" for s in part.states.values()):
        return None
    members = part.members
    outside = tuple(item for item in view.schedule if isinstance(item, Step)
                    and graph.nodes[item.node]["scope"] == scope)
    inner = members | set(part.states) | {step.node for step in outside}
    read = {source for step in (*part.loop.steps, *outside) for source in step.inputs}
    sources = read - inner
    if len(sources) != 1:
        return None
    (x,) = sources
    if view.type(x).rank != 1 or not view.type(x).seq or view.type(x).classes is not None:
        return None
    if not _used_inside(view, outside, members, inner):
        return None
    weights = _roles(view, part, (*part.loop.steps, *outside), x)
    if weights is None or set(weights) != KINDS[kind]:
        return None
    h_state = _hidden_state(view, part, weights)
    if h_state is None or part.stacked != (part.states[h_state].source,):
        return None
    instance = "/".join(frame.name for frame in scope)
    return Cell(kind, instance, part, outside, x, part.states[h_state].source, weights)


def _used_inside(view: View, outside: tuple[Step, ...], members: set, inner: set) -> bool:
    """Whether the steps before the loop are read by the cell's steps alone."""
    mine = {step.node for step in outside}
    if mine & set(view.outputs.values()):
        return False
    return all(source not in mine or step.node in inner
               for step in view.steps() for source in step.inputs)


def _roles(view: View, part: LoopParts, steps, x: str) -> dict[str, Step] | None:
    """The cell's layers with parameters by what they read: `input` the sequence,
    `recurrent` a state, `gates` the two concatenated inside the loop."""
    roles = {}
    for step in steps:
        if not step.params:
            continue
        if set(step.params) - {"weight", "bias"} or len(step.inputs) != 1:
            return None
        (source,) = step.inputs
        role = "input" if source == x else "recurrent" if source in part.states else "gates"
        if role in roles:
            return None
        roles[role] = step
    gates = roles.get("gates")
    if gates is not None:
        concat = next((s for s in part.loop.steps if s.node == gates.inputs[0]), None)
        if concat is None or concat.inputs[0] != x or len(concat.inputs) != 2 \
                or concat.inputs[1] not in part.states:
            return None
        recurrent = roles.get("recurrent")
        if recurrent is not None and recurrent.inputs[0] != concat.inputs[1]:
            return None
    return roles


def _hidden_state(view: View, part: LoopParts, weights: dict[str, Step]) -> str | None:
    """The state node the cell's layers read: h[t-1]."""
    if "recurrent" in weights:
        return weights["recurrent"].inputs[0]
    concat = next(s for s in part.loop.steps if s.node == weights["gates"].inputs[0])
    return concat.inputs[1]
