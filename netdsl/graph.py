"""Pass 3, graph: the expanded program as a networkx.DiGraph.

Nodes are values (inputs, targets, states, op results) with their op, span and
block path: a node's data is the program's NodeDef itself. An edge carries a tensor,
with `ports` (the argument positions it feeds) and `delay` (k on the edge into a state
node `h[t-k]`, else 0); edges of equal data share one dict, so edge data is read-only.
"""
from __future__ import annotations

import networkx as nx

from netdsl.errors import SpecError
from netdsl.program import Program, StartFrom, call_notes

# a node's data is its NodeDef and equal edges share their data (True), or every node and
# edge gets a dict of its own, the node's a copy with its inputs as a tuple (False, the
# layout before: kept to compare the two; valid_100k's graph pass 0.54 -> 0.38 CPU s)
SHARED_DATA = True

__all__ = ["build_graph", "graph_and_order", "verify_graph", "forward_view", "forward_order", "block_path"]


def build_graph(program: Program) -> nx.DiGraph:
    """Build the graph of an expanded program and check its invariants.

    Raises
    ------
    SpecError
        When a cycle has no delay on it, naming the nodes on the cycle.
    """
    return graph_and_order(program)[0]


def graph_and_order(program: Program) -> tuple[nx.DiGraph, list[str]]:
    """`build_graph`, and a forward order its check found, which the passes after it
    take rather than walk the graph for it again: the program's own order where each
    node follows its inputs of the same step there (expansion makes them so), else
    `forward_order`'s."""
    graph = nx.DiGraph(name=program.name, losses=dict(program.losses), train=dict(program.train),
                       file=program.file, names=dict(program.names))
    # filled as networkx's own adders fill them (its documented dict-of-dicts), without
    # their checks and copies per node and per edge: they took half of this pass. A node's
    # data is its NodeDef itself, made once by expansion; an edge's data is shared by the
    # edges of equal data (most feed port 0 of the same step): edge data is read, never
    # written, after this pass
    node_data, succ, pred = graph._node, graph._succ, graph._pred
    edges: dict[tuple[int, int], dict] = {}  # (delay, port) -> the data of such an edge
    plain = edges[0, 0] = {"delay": 0, "ports": [0]}  # most edges
    # in one pass: an edge from a node made later (a state's new value) waits in `later`
    # until its source comes, and then comes first among its readers, as it would have in
    # a pass over the edges in the readers' order
    later: dict[str, dict] = {}  # source -> {target: edge}
    in_order = True  # every node so far after its inputs of the same step
    shared = SHARED_DATA
    for target, node in program.nodes.items():
        node_data[target] = node if shared else {**node, "inputs": tuple(node["inputs"])}
        succ[target] = later.pop(target, None) or {}
        into = pred[target] = {}
        inputs = node["inputs"]
        if node["kind"] == "state":
            _check_state_inputs(target, "state", node["state"], inputs, node["span"])
        for port, (source, delay) in enumerate(inputs):
            edge = into.get(source)
            if edge is not None:  # a second port of the same source: an edge of its own data
                edge = into[source] = {"delay": edge["delay"], "ports": [*edge["ports"], port]}
                (succ[source] if source in succ else later[source])[target] = edge
                continue
            edge = (plain if not delay and not port else edges.get((delay, port))) if shared else None
            if edge is None:
                edge = edges[delay, port] = {"delay": delay, "ports": [port]}
            into[source] = edge
            out = succ.get(source)
            if out is None:  # not made yet
                later.setdefault(source, {})[target] = edge
                in_order = in_order and bool(delay)
            else:
                out[target] = edge
                if source == target and not delay:  # a node of its own inputs: a cycle
                    in_order = False
    for source, readers in later.items():  # an edge would add it bare, without its data
        target = next(iter(readers))
        raise SpecError(f"internal: {target} reads the missing node {source}",
                        program.nodes[target].span)
    nx._clear_cache(graph)
    return graph, list(program.nodes) if in_order else forward_order(graph)


def forward_view(graph: nx.DiGraph) -> nx.DiGraph:
    """The graph of one time step: every edge without a delay."""
    return nx.subgraph_view(graph, filter_edge=lambda u, v: graph.edges[u, v]["delay"] == 0)


def forward_order(graph: nx.DiGraph) -> list[str]:
    """The nodes in an order where every node follows its inputs of the same step (edges
    without a delay): one pass over the graph however many delays it has.

    Raises
    ------
    SpecError
        When a cycle has no delay on it, naming the nodes on the cycle.
    """
    waiting = dict.fromkeys(graph, 0)
    readers: dict[str, list[str]] = {}  # of the nodes read at all
    for source, targets in graph.adjacency():
        for target, data in targets.items():
            if not data["delay"]:
                readers.setdefault(source, []).append(target)
                waiting[target] += 1
    return _ordered(graph, waiting, readers)


def _ordered(graph: nx.DiGraph, waiting: dict[str, int], readers: dict[str, list[str]]
             ) -> list[str]:
    """The nodes of `waiting` (each with its count of inputs of the same step) in forward
    order, given each node's readers of the same step: a node is ready once its inputs
    are. `waiting` is spent."""
    order = [node for node, count in waiting.items() if count == 0]
    for node in order:  # grows as nodes become ready
        for reader in readers.get(node, ()):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                order.append(reader)
    if len(order) < len(waiting):
        _cycle_error(graph, {node for node, count in waiting.items() if count > 0})
    return order


def _cycle_error(graph: nx.DiGraph, stuck: set[str]) -> None:
    """Walk back from a node left waiting, along inputs left waiting too (each waits on
    one at least), until a node comes round again: that loop is a cycle without a delay."""
    node = next(node for node in graph if node in stuck)
    seen: dict[str, int] = {}
    path: list[str] = []
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(source for source, _, delay in graph.in_edges(node, data="delay")
                    if not delay and source in stuck)
    names = path[seen[node]:][::-1]
    span = graph.nodes[names[0]]["span"]
    raise SpecError(f"a cycle without a delay: {' -> '.join(names + names[:1])}", span,
                    "a value may depend on its own past only through a state, as h[t-1]",
                    call_notes(graph.nodes[names[0]]["scope"], span))


def block_path(graph: nx.DiGraph, node: str) -> str:
    """The block instances a node sits in, outermost first: 'stage2/basic1'."""
    return "/".join(frame.name for frame in graph.nodes[node]["scope"])


def verify_graph(graph: nx.DiGraph) -> None:
    """Check what later passes rely on: inputs exist, and every cycle passes through a delay."""
    for node, data in graph.nodes(data=True):
        for source, _ in data["inputs"]:
            if source not in graph:
                raise SpecError(f"internal: {node} reads the missing node {source}", data["span"])
        _check_state_inputs(node, data["kind"], data["state"], data["inputs"], data["span"])
    forward_order(graph)


def _check_state_inputs(node: str, kind: str, state, inputs, span) -> None:
    """A state node reads its new value, and the tensor it starts from if it has one."""
    if kind == "state" and len(inputs) != 1 + isinstance(state.init, StartFrom):
        raise SpecError(f"internal: state node {node} has {len(inputs)} inputs", span)
