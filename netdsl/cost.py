"""What a checked network costs: parameters, FLOPs and activation memory per node."""
from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from netdsl.graph import block_path, forward_view
from netdsl.shapes import input_types

__all__ = ["Row", "cost_rows", "param_count", "node_params", "first_state_node"]

_BYTES = {"float32": 4, "int64": 8}


@dataclass(frozen=True)
class Row:
    """One line of `netc compile`: a node and what it costs for one batch (one step)."""

    node: str
    path: str
    op: str
    type: str
    params: int
    flops: int
    memory: int  # bytes of the node's output for the batch


def node_params(graph: nx.DiGraph, node: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameters a node owns (none when it shares another node's)."""
    data = graph.nodes[node]
    if data["kind"] == "state":
        state = data["state"]
        first = first_state_node(graph, state)
        return {"init": state.type.dims} if state.init == "learned" and first == node else {}
    if data["kind"] != "op" or data.get("shares"):
        return {}
    return data["op"].params(*(t.step() for t in input_types(graph, node)))


def first_state_node(graph: nx.DiGraph, state) -> str:
    # h[t-1] and h[t-2] delay one state: its learned initial value counts once
    return min(n for n, d in graph.nodes(data=True) if d.get("state") is state)


def cost_rows(graph: nx.DiGraph, batch: int = 1) -> list[Row]:
    """Rows in execution order for a checked graph (each step of a sequence, for recurrences)."""
    rows = []
    for node in nx.topological_sort(forward_view(graph)):
        data = graph.nodes[node]
        out = data["type"]
        params = sum(math.prod(shape) for shape in node_params(graph, node).values())
        flops = 0
        if data["kind"] == "op":
            inputs = [t.step() for t in input_types(graph, node)]
            flops = data["op"].flops(out.step(), *inputs) * batch
        op = data["op"].name if data["op"] is not None else data["kind"]
        memory = out.size * _BYTES.get(out.dtype, 4) * batch
        rows.append(Row(node, block_path(graph, node), op, str(out), params, flops, memory))
    return rows


def param_count(graph: nx.DiGraph) -> int:
    """Total learned parameters of a checked graph."""
    return sum(math.prod(s) for n in graph for s in node_params(graph, n).values())
