"""Lowering pass 1, build_plan: a checked graph as a list of steps over named values.

A checked graph becomes a list of forward steps (one per node a loss needs, in
topological order, each recurrence's steps together), its recurrences as loops with
their states, and the learned parameters in a fixed order: the flat layout that
executors and checkpoints share. Each step carries what its op derives from the input
types alone (`Step.geometry`), computed here once. The later passes rewrite this plan
(netdsl.lower.pipeline); every executor runs their result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx

from netdsl.cost import first_state_node, node_params
from netdsl.errors import SpecError, SpecErrors
from netdsl.graph import forward_view
from netdsl.recurrences import recurrence_errors
from netdsl.ops.base import Op, input_names
from netdsl.shapes import input_types
from netdsl.types import TensorType

__all__ = ["Param", "Step", "State", "Loop", "Plan", "build_plan"]


@dataclass(frozen=True)
class Param:
    """A learned array: `key` is 'node.name' (the owning node, PyTorch's parameter name)."""

    key: str
    node: str
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Step:
    """One forward step: run `op` on the values `inputs` with the parameters `params`.

    `params` maps the op's parameter names to Param keys (a shared layer names its
    first use's keys); `slices` maps a parameter name to the part of its key's array
    the op reads, where it reads only a part (runtime.hoist's column blocks). `borrows`
    maps a forward keyword to the node whose saved array it receives (maxunpool reads
    its maxpool's argmax indices). `geometry` is the op's `Op.geometry` of the input
    types; `in_place` marks a follower of a host chain (netdsl.lower.fuse), whose
    forward writes its result over its first input. `origin` names the graph node a
    step computes a part of, when it is not its own (hoisting splits a dense in parts).
    `buffers_of` names the node whose persistent buffers (running statistics) the step
    holds, when it is not its own: a batchnorm fused with the chain after it keeps its
    statistics under its own name, so a checkpoint reads the same on every target.
    """

    node: str
    op: Op
    inputs: tuple[str, ...]
    input_types: tuple[TensorType, ...]
    params: dict[str, str]
    borrows: dict[str, tuple[str, str]] = field(default_factory=dict)
    slices: dict[str, tuple] = field(default_factory=dict)
    geometry: object = None
    in_place: bool = False
    origin: str | None = None
    buffers_of: str | None = None


@dataclass(frozen=True)
class State:
    """A state node `h[t-k]`: the value of `source` k steps back, or `init` before the start.

    `init` is "zeros", "learned" (the parameter `param`), a number, or a StartFrom: the
    value `start` (B, *dims), computed before the loop, which its gradient reaches.
    """

    node: str
    source: str
    delay: int
    init: object
    param: str | None
    start: str | None = None


@dataclass(frozen=True)
class Loop:
    """A recurrence: the ops that run once per time step, in step order, and their states.

    Everything else of a sequence network runs once over all steps at a time; a loop's
    members are exactly the ops on a cycle through a delay (or between two such cycles).
    """

    name: str
    steps: tuple[Step, ...]
    states: tuple[State, ...]


@dataclass
class Plan:
    """A network as steps: forward steps in order, their loops and states, the parameters."""

    graph: nx.DiGraph
    inputs: dict[str, TensorType]       # input and target nodes the step reads
    steps: list[Step]
    params: dict[str, Param]            # in a fixed order: the flat parameter layout
    losses: dict[str, str]              # loss name -> node
    types: dict[str, TensorType]
    states: dict[str, State] = field(default_factory=dict)
    loops: list[Loop] = field(default_factory=list)

    @property
    def sequential(self) -> bool:
        """Whether any value has a time axis (executors hold such values time-major)."""
        return any(t.seq for t in self.types.values())

    def step_of(self, node: str) -> Step:
        return self.by_node[node]

    @cached_property
    def by_buffers(self) -> dict[str, Step]:
        """The step that keeps each node's buffers (running statistics): its own, or the
        fused step that runs it (`Step.buffers_of`)."""
        return {s.buffers_of or s.node: s for s in self.steps}

    @cached_property
    def by_node(self) -> dict[str, Step]:
        """Each step by the node it computes (the steps never change once a plan is made)."""
        return {s.node: s for s in self.steps}

    def steps_for(self, nodes) -> list[Step]:
        """The forward steps that the values `nodes` depend on, in order."""
        needed = set(nodes)
        while True:  # a state needs its source, which comes later: repeat until stable
            before = len(needed)
            for step in reversed(self.steps):
                if step.node in needed:
                    needed.update(step.inputs)
            needed |= {state.source for node, state in self.states.items() if node in needed}
            needed |= {state.start for node, state in self.states.items()
                       if node in needed and state.start is not None}
            if len(needed) == before:
                return [s for s in self.steps if s.node in needed]


def build_plan(graph: nx.DiGraph) -> Plan:
    """Schedule a checked graph.

    Raises
    ------
    SpecError
        For a spec with no loss, or a recurrence that cannot run as a loop over time.
    """
    losses = dict(graph.graph["losses"])
    if not losses:
        raise SpecError("the spec has no loss, so there is nothing to train", None,
                        "add one, e.g. `loss cross_entropy(logits, y)`")
    needed = set(losses.values())
    for node in losses.values():
        needed |= nx.ancestors(graph, node)
    # `netc check` reports these first (netdsl.recurrences); a graph built otherwise meets them here
    SpecErrors.collect(recurrence_errors(graph.subgraph(needed)))
    order = _schedule(graph.subgraph(needed))
    inputs = {n: graph.nodes[n]["type"] for n in order
              if graph.nodes[n]["kind"] in ("input", "target")}
    params: dict[str, Param] = {}
    steps, states = [], {}
    for node in order:
        data = graph.nodes[node]
        for name, shape in node_params(graph, node).items():
            params[f"{node}.{name}"] = Param(f"{node}.{name}", node, name, tuple(shape))
        if data["kind"] == "state":
            states[node] = _state(graph, node)
        if data["kind"] != "op":
            continue
        owner = data.get("shares") or node
        op = data["op"]
        sources = tuple(source for source, _ in data["inputs"])
        names = input_names(type(op))
        borrows = {kw: (sources[names.index(arg)], saved)
                   for kw, (arg, saved) in getattr(op, "borrows", {}).items()}
        types = tuple(t.step() for t in input_types(graph, node))
        keys = {name: f"{owner}.{name}" for name in op.params(*types)}
        steps.append(Step(node, op, sources, types, keys, borrows, geometry=op.geometry(*types)))
    types = {n: graph.nodes[n]["type"] for n in order}
    loops = _loops(graph.subgraph(needed), steps, states)
    return Plan(graph, inputs, steps, params, losses, types, states, loops)


def _schedule(graph: nx.DiGraph) -> list[str]:
    """A topological order of one step in which each recurrence's nodes are contiguous.

    The strongly connected components of the graph with its delay edges are the
    recurrences; ordering the components first lets an executor run each one as a
    loop over time, and everything between them once for all steps.
    """
    step_order = {n: i for i, n in enumerate(nx.topological_sort(forward_view(graph)))}
    components = nx.condensation(graph)
    order = []
    for component in nx.lexicographical_topological_sort(
            components, key=lambda c: min(step_order[n] for n in components.nodes[c]["members"])):
        order += sorted(components.nodes[component]["members"], key=step_order.__getitem__)
    return order


def _state(graph: nx.DiGraph, node: str) -> State:
    data = graph.nodes[node]
    (source, delay), *start = data["inputs"]
    first = first_state_node(graph, data["state"])  # holds the learned initial value
    param = f"{first}.init" if data["state"].init == "learned" else None
    return State(node, source, delay, data["state"].init, param,
                 start[0][0] if start else None)


def _loops(graph: nx.DiGraph, steps: list[Step], states: dict[str, State]) -> list[Loop]:
    by_node = {s.node: s for s in steps}
    loops = []
    for component in nx.strongly_connected_components(graph):
        if len(component) == 1:
            continue
        members = [s for s in steps if s.node in component]
        loop_states = tuple(states[n] for n in sorted(component) if n in states)
        loops.append(Loop(members[0].node, tuple(members), loop_states))
    loops.sort(key=lambda loop: steps.index(by_node[loop.steps[0].node]))
    return loops
