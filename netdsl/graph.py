"""Pass 3, graph: the expanded program as a networkx.DiGraph.

Nodes are values (inputs, targets, states, op results) with their op, span and
block path; an edge carries a tensor, with `ports` (the argument positions it
feeds) and `delay` (k on the edge into a state node `h[t-k]`, else 0).
"""
from __future__ import annotations

import networkx as nx

from netdsl.errors import SpecError
from netdsl.program import Program, StartFrom, call_notes

__all__ = ["build_graph", "verify_graph", "forward_view", "block_path"]


def build_graph(program: Program) -> nx.DiGraph:
    """Build the graph of an expanded program and check its invariants.

    Raises
    ------
    SpecError
        When a cycle has no delay on it, naming the nodes on the cycle.
    """
    graph = nx.DiGraph(name=program.name, losses=dict(program.losses), train=dict(program.train),
                       file=program.file, names=dict(program.names))
    for node in program.nodes.values():
        graph.add_node(node.id, kind=node.kind, op=node.op, span=node.span, scope=node.scope,
                       declared=node.type, state=node.state, shares=node.shares,
                       inputs=tuple(node.inputs))
    for node in program.nodes.values():
        for port, (source, delay) in enumerate(node.inputs):
            if graph.has_edge(source, node.id):
                graph.edges[source, node.id]["ports"].append(port)
            else:
                graph.add_edge(source, node.id, delay=delay, ports=[port])
    verify_graph(graph)
    return graph


def forward_view(graph: nx.DiGraph) -> nx.DiGraph:
    """The graph of one time step: every edge without a delay."""
    return nx.subgraph_view(graph, filter_edge=lambda u, v: graph.edges[u, v]["delay"] == 0)


def block_path(graph: nx.DiGraph, node: str) -> str:
    """The block instances a node sits in, outermost first: 'stage2/basic1'."""
    return "/".join(frame.name for frame in graph.nodes[node]["scope"])


def verify_graph(graph: nx.DiGraph) -> None:
    """Check what later passes rely on: inputs exist, and every cycle passes through a delay."""
    for node, data in graph.nodes(data=True):
        for source, _ in data["inputs"]:
            if source not in graph:
                raise SpecError(f"internal: {node} reads the missing node {source}", data["span"])
        if data["kind"] == "state" and len(data["inputs"]) != 1 + (
                isinstance(data["state"].init, StartFrom)):
            raise SpecError(f"internal: state node {node} has {len(data['inputs'])} inputs", data["span"])
    try:
        cycle = nx.find_cycle(forward_view(graph))
    except nx.NetworkXNoCycle:
        return
    names = [u for u, _ in cycle]
    span = graph.nodes[names[0]]["span"]
    raise SpecError(f"a cycle without a delay: {' -> '.join(names + names[:1])}", span,
                    "a value may depend on its own past only through a state, as h[t-1]",
                    call_notes(graph.nodes[names[0]]["scope"], span))
