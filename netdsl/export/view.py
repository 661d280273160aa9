"""What an export writes: the steps that compute the chosen outputs, and their inputs.

An export reads the plan `build_plan` makes (one step per graph node, recurrences as
loops with their states) and keeps the part that the outputs need. By default the
outputs are the values the losses score, as `netc predict` reports them (logits, a
reconstruction); `--output NAME` picks others by the names the spec gives them, by a
loss's name or by node id. A source op (`normal`) becomes an input: whoever runs the
exported model feeds the noise, so its outputs are reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from netdsl.errors import SpecError, suggest
from netdsl.lower.plan import Loop, Plan, State, Step, build_plan
from netdsl.shapes import whole_positions
from netdsl.types import TensorType

__all__ = ["View", "LoopParts", "Cell", "select", "default_outputs", "owner"]


def owner(step: Step) -> str:
    """The node whose parameters (and buffers) a step uses: a shared layer's first use."""
    for key in step.params.values():
        return key.rpartition(".")[0]
    return step.node


@dataclass(frozen=True)
class LoopParts:
    """A recurrence as an export runs it: a body run once per time step.

    `delays` gives each state's source and how many steps back it is read (the values a
    step carries to the next); `scanned` are the sequences computed before the loop that
    its steps read one step at a time; `stacked` the members (or states) read after it,
    as whole sequences.
    """

    loop: Loop
    delays: dict[str, int]
    states: dict[str, State]
    scanned: tuple[str, ...]
    stacked: tuple[str, ...]

    @property
    def members(self) -> set[str]:
        return {step.node for step in self.loop.steps}


@dataclass(frozen=True)
class Cell:
    """A standard library recurrent cell that a format writes as one native op.

    `kind` is the block (`lstm`, `gru_reset_after`, `elman`); `instance` its block
    path; `part` its recurrence and `outside` the instance's steps that run before it
    (the input projection of elman and the GRU's candidate); `x` the sequence it reads
    and `h` the state it gives at every step. `weights` maps each role of the cell's
    dense layers (`gates`, `input`, `recurrent`) to its step.
    """

    kind: str
    instance: str
    part: LoopParts
    outside: tuple[Step, ...]
    x: str
    h: str
    weights: dict[str, Step]


@dataclass
class View:
    """The part of a network an export writes.

    `outputs` and `inputs` map the exported names to nodes, in order (the spec's inputs
    and targets, then the sources fed as inputs); `schedule` holds the steps outside any
    loop and the loops (or the cells a format writes natively), in the order they run; `time` names the time axis of each
    sequence input.
    """

    graph: nx.DiGraph
    plan: Plan
    outputs: dict[str, str]
    inputs: dict[str, str]
    schedule: list[Step | LoopParts | Cell]
    time: dict[str, str]

    @property
    def name(self) -> str:
        return self.graph.graph["name"]

    def type(self, node: str) -> TensorType:
        return self.plan.types[node]

    def span(self, node: str):
        return self.graph.nodes[node]["span"]

    def label(self, node: str) -> str:
        """The name the spec gives a node's value at its top level, else its node id."""
        return _exported_name(self.graph, node, losses=False)

    def steps(self):
        """Every step, the loops' members (and a cell's) in their place."""
        for item in self.schedule:
            if isinstance(item, Cell):
                yield from item.outside
                item = item.part
            yield from item.loop.steps if isinstance(item, LoopParts) else (item,)

    def params(self) -> list[str]:
        """The parameter keys the steps read (a shared layer's once), in the plan's order."""
        used = {key for step in self.steps() for key in step.params.values()}
        used |= {part.states[s].param for part in self.loops() for s in part.states
                 if part.states[s].param}
        return [key for key in self.plan.params if key in used]

    def loops(self) -> list[LoopParts]:
        return [item.part if isinstance(item, Cell) else item for item in self.schedule
                if isinstance(item, (LoopParts, Cell))]


def select(graph: nx.DiGraph, outputs: list[str] | None = None) -> View:
    """The view of a checked graph that computes `outputs` (default: `default_outputs`).

    Raises
    ------
    SpecError
        For an output that names no value of the spec.
    """
    plan = build_plan(graph)
    chosen = dict(_resolve(graph, outputs)) if outputs else \
        {_exported_name(graph, node): node for node in default_outputs(plan)}
    steps = plan.steps_for(chosen.values())
    needed = set(chosen.values()) | {source for step in steps for source in step.inputs}
    sources = [s for s in steps if s.op.arity == 0]
    inputs = {node: node for node in plan.inputs if node in needed}
    inputs.update({_exported_name(graph, s.node): s.node for s in sources})
    schedule = _schedule(plan, steps, set(chosen.values()))
    seq_inputs = [name for name, node in inputs.items() if plan.types[node].seq]
    time = {inputs[name]: "time" if len(seq_inputs) == 1 else f"{name}_time"
            for name in seq_inputs}
    return View(graph, plan, chosen, inputs, schedule, time)


def default_outputs(plan: Plan) -> list[str]:
    """The values the losses score, as `netc predict` reports them: each loss's first
    input, looking through sums and scalings of losses (a GAN's `d`, googlenet's
    weighted auxiliary losses)."""
    found = []

    def visit(node: str) -> None:
        step = plan.step_of(node)
        if not step.op.is_loss:
            for source in step.inputs:
                if source in plan.by_node and plan.types[source].dims == () \
                        and not plan.types[source].seq:
                    visit(source)
        elif plan.graph.nodes[step.inputs[0]]["kind"] == "op" and step.inputs[0] not in found:
            found.append(step.inputs[0])

    for loss in plan.losses.values():
        visit(loss)
    return found


def _exported_name(graph: nx.DiGraph, node: str, losses: bool = True) -> str:
    """What an export calls a node's value: the spec's name for it, a loss's name, or the
    node id."""
    for name, named in graph.graph.get("names", {}).items():
        if named == node:
            return name
    for name, loss in graph.graph["losses"].items() if losses else ():
        if loss == node:
            return name
    return node


def _resolve(graph: nx.DiGraph, wanted: list[str]):
    names = {**graph.graph["losses"], **graph.graph.get("names", {})}
    for name in wanted:
        node = names.get(name, name if name in graph and graph.nodes[name]["kind"] == "op"
                         else None)
        if node is None:
            known = sorted(set(names) - {n for n in names if graph.nodes[names[n]]["kind"]
                                         in ("input", "target")})
            raise SpecError(f"--output {name}: the spec names no such value", None,
                            suggest(name, known) or f"its values: {', '.join(known)}")
        yield name, node


def _schedule(plan: Plan, steps: list[Step], outputs: set[str]) -> list[Step | LoopParts]:
    loop_of = {step.node: loop for loop in plan.loops for step in loop.steps}
    readers: dict[str, set[str]] = {}
    for step in steps:
        for source in step.inputs:
            readers.setdefault(source, set()).add(step.node)
    schedule, done = [], set()
    for step in steps:
        loop = loop_of.get(step.node)
        if loop is None:
            schedule.append(step)
        elif loop.name not in done:
            done.add(loop.name)
            schedule.append(_parts(plan, loop, readers, outputs))
    return schedule


def _parts(plan: Plan, loop: Loop, readers: dict[str, set[str]], outputs: set[str]) -> LoopParts:
    members = {step.node for step in loop.steps}
    states = {state.node: state for state in loop.states}
    delays: dict[str, int] = {}
    for state in loop.states:
        delays[state.source] = max(delays.get(state.source, 0), state.delay)
    scanned = []
    for step in loop.steps:
        whole = whole_positions(step.op)
        for position, source in enumerate(step.inputs):
            if (position not in whole and source not in members and source not in states
                    and plan.types[source].seq and source not in scanned):
                scanned.append(source)
    inside = members | set(states)
    stacked = tuple(node for node in [*members, *states]
                    if node in outputs or readers.get(node, set()) - inside)
    return LoopParts(loop, delays, states, tuple(scanned), stacked)
