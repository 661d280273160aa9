"""Unroll a checked recurrent graph over T time steps: a DAG with one copy per step.

The result is for reading and drawing (`netc draw --unroll`, `netc compile --emit
unrolled`); training runs the recurrence as a loop and never builds it.

Names: a sequence value `v` becomes `v@1` .. `v@T`, steps counted from 1 as in x_1 .. x_T.
A state node is copied too: `h[t-k]@t` reads `h@(t-k)`, the value it delays, and at
steps t <= k it reads `h@0`, the state's declared initial value (zeros, a number or
learned; `cell1/h@0` inside block instance cell1; h[t-1] and h[t-2] share it).
Every sequence value is copied per step, whether or not it depends on a state, so each
step reads as one column. Values that are not sequences (the result of `last` or
`first`, a read-out of it) keep their name and appear once, and so does a loss over a
sequence, which averages its steps into one number. `last` reads step T, `first` step 1,
a loss every step, and `reverse` at step t reads step T + 1 - t.

Nodes carry `origin` (the node copied), `step` (t; 0 for an initial value; None for a
value that appears once), `order` (the origin's place in a topological order of the step
graph), the type of one step, and `params`: the node whose parameters a copy uses, the
same at every step, so each set of shared weights is named once; the graph's `weights`
maps each such node to its parameters' shapes. Edges carry `ports` and `delay` (k on
the edge from `h@(t-k)` into `h[t-k]@t`, else 0).
"""
from __future__ import annotations

import networkx as nx

from netdsl.cost import first_state_node, node_params
from netdsl.errors import SpecError
from netdsl.graph import forward_view

__all__ = ["unroll", "sort_key", "INIT_KIND"]

INIT_KIND = "init"  # the kind of an initial-value node `h@0`


def unroll(graph: nx.DiGraph, steps: int) -> nx.DiGraph:
    """The typed graph `graph` (from `infer_shapes`) unrolled over `steps` time steps.

    One pass over the graph: each node is copied once per step (or once), and each edge
    once per step it links; the front end does not run again.

    Raises
    ------
    SpecError
        When `steps` is not a whole number of at least 1, or the network has no state.

    Example
    -------
    >>> dag = unroll(check_file("specs/elman.net").graph, 3)  # doctest: +SKIP
    >>> sorted(n for n in dag if dag.nodes[n]["origin"] == "h")  # doctest: +SKIP
    ['h@1', 'h@2', 'h@3']
    """
    _check_steps(graph, steps)
    order = {node: i for i, node in enumerate(nx.topological_sort(forward_view(graph)))}
    timed = _timed_nodes(graph)
    owners = {node: _param_owner(graph, node) for node in order}
    dag = nx.DiGraph(**graph.graph, steps=steps, weights=_weight_shapes(graph, owners))
    inits = _add_initial_values(dag, graph, order)
    for node in order:
        attrs = _copy_attrs(graph, node, order, owners[node])
        dag.add_nodes_from((_name(node, step, timed), {**attrs, "step": step})
                           for step in _steps_of(node, timed, steps))
    for node in order:
        reads = _Reads(graph, node, timed, steps, inits.get(node))
        dag.add_edges_from(edge for step in _steps_of(node, timed, steps)
                           for edge in reads.edges_into(step))
    return dag


def sort_key(dag: nx.DiGraph, node: str) -> tuple:
    """Step first, then the original topological order: step 1's values, then step 2's."""
    data = dag.nodes[node]
    return (data["step"] or 0, data["order"])


def _check_steps(graph: nx.DiGraph, steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SpecError(f"cannot unroll over {steps!r} steps: expected a whole number of at least 1",
                        None, "for example --unroll 3")
    if not any(kind == "state" for _, kind in graph.nodes(data="kind")):
        where = graph.graph.get("file") or graph.graph["name"]
        raise SpecError(f"nothing to unroll: {where} has no recurrent state", None,
                        "unrolling shows a recurrence step by step: declare a state "
                        "(state h : [n]) and read it as h[t-1], or leave out the unrolling")


def _timed_nodes(graph: nx.DiGraph) -> set[str]:
    """Nodes copied once per step: sequences, except losses (one number per sequence)."""
    losses = set(graph.graph["losses"].values())
    return {n for n, t in graph.nodes(data="type") if t is not None and t.seq and n not in losses}


def _steps_of(node: str, timed: set[str], steps: int):
    return range(1, steps + 1) if node in timed else (None,)


def _name(node: str, step: int | None, timed: set[str]) -> str:
    return f"{node}@{step}" if step is not None and node in timed else node


def _initial_name(state_node: str, state) -> str:
    """`cell1/h[t-2]` -> `cell1/h@0`: the state's name with its block prefix, at step 0."""
    prefix = state_node[:state_node.rindex("[t-")][:-len(state.name)]
    return f"{prefix}{state.name}@0"


def _add_initial_values(dag: nx.DiGraph, graph: nx.DiGraph, order: dict) -> dict[str, str]:
    """One `h@0` per declared state (h[t-1] and h[t-2] share it); state node -> its name."""
    inits: dict[str, str] = {}
    for node, data in graph.nodes(data=True):
        if data["kind"] != "state":
            continue
        state = data["state"]
        inits[node] = _initial_name(node, state)
        if inits[node] not in dag:
            owner = first_state_node(graph, state)  # holds a learned initial value
            dag.add_node(inits[node], kind=INIT_KIND, op=None, span=state.span,
                         scope=data["scope"], state=state, shares=None, type=state.type.step(),
                         origin=owner, step=0, order=order[owner],
                         params=owner if state.init == "learned" else None)
        for start, _ in data["inputs"][1:]:  # `= last(encoded)`: h@0 is that value
            dag.add_edge(start, inits[node], ports=[0], delay=0)
    return inits


def _copy_attrs(graph: nx.DiGraph, node: str, order: dict, owner: str | None) -> dict:
    """The attributes every copy of `node` shares; `step` and `type` are added per copy."""
    data = graph.nodes[node]
    attrs = {k: v for k, v in data.items() if k != "inputs"}  # edges say what a copy reads
    # one step's type; a loss over a sequence is one number, `[]`, too
    return {**attrs, "type": data["type"].step(), "origin": node, "order": order[node],
            "params": owner}


def _weight_shapes(graph: nx.DiGraph, owners: dict) -> dict[str, dict]:
    """Each owner of weights -> its parameters' shapes: {'dense2': {'weight': (64, 64)}}."""
    owning = [n if graph.nodes[n]["kind"] == "state" else owner  # a learned initial value
              for n, owner in owners.items()]
    shapes = {owner: node_params(graph, owner) for owner in dict.fromkeys(owning) if owner}
    return {owner: params for owner, params in shapes.items() if params}  # in step order


def _param_owner(graph: nx.DiGraph, node: str) -> str | None:
    """The node whose weights `node` uses: itself, the instance it shares, or none."""
    data = graph.nodes[node]
    if data["kind"] != "op":
        return None  # a state's learned initial value belongs to its `h@0`
    owner = data.get("shares") or node
    return owner if node_params(graph, owner) else None


class _Reads:
    """The edges into each copy of one node, its in-edges looked up once for every step."""

    def __init__(self, graph: nx.DiGraph, node: str, timed: set[str], steps: int,
                 init: str | None):
        self.node, self.timed, self.steps, self.init = node, timed, steps, init
        self.op = graph.nodes[node]["op"]
        # a state's copies read its source's past; the value it starts from feeds its h@0
        self.inputs = [(u, data["delay"], data["ports"]) for u, _, data in graph.in_edges(node, data=True)
                       if init is None or data["delay"]]

    def edges_into(self, step: int | None):
        target = _name(self.node, step, self.timed)
        for source, delay, ports in self.inputs:
            for name, kept in self._sources(source, delay, step):
                yield name, target, {"ports": list(ports), "delay": kept}

    def _sources(self, source: str, delay: int, step: int | None) -> list[tuple[str, int]]:
        """(copy of `source`, its delay) for each copy the node's copy at `step` reads."""
        if self.init is not None:  # a state h[t-k]: h at t-k, or the initial value while t <= k
            if step is None or step <= delay:
                return [(self.init, 0)]
            return [(_name(source, step - delay, self.timed), delay)]
        return [(_name(source, s, self.timed), 0) for s in self._source_steps(source, step)]

    def _source_steps(self, source: str, step: int | None) -> list:
        """The steps of `source` read at `step` (None: its only copy)."""
        if source not in self.timed:
            return [None]
        if self.op is None:  # a state's read of its value is handled by _sources
            return [step] if step is not None else list(range(1, self.steps + 1))
        return self.op.time_steps(step, self.steps)
