"""What a checked network costs: parameters, buffers, mult-adds, FLOPs and activation
memory per node, and the same rolled up to blocks (`roll_up`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from netdsl.graph import block_path, forward_view
from netdsl.ops.base import Op
from netdsl.shapes import input_types

__all__ = ["Row", "cost_rows", "roll_up", "param_count", "node_params", "first_state_node"]

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
    mult_adds: int = 0            # as torchinfo counts them (Op.mult_adds), for the batch
    buffers: int = 0              # values kept unlearned (batchnorm's running statistics)
    inputs: tuple[str, ...] = ()  # where its inputs come from (`h@t-1`: a delayed state)
    param_names: tuple[str, ...] = ()  # its parameters' keys, `node.weight`


def node_params(graph: nx.DiGraph, node: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameters a node owns (none when it shares another node's)."""
    return _owned(node, graph.nodes[node], lambda source: graph.nodes[source].get("type"),
                  lambda state: first_state_node(graph, state))


def _owned(node: str, data, type_of, first_of) -> dict[str, tuple[int, ...]]:
    """node_params, given how to find a node's type and a state's first node."""
    if data["kind"] == "state":
        state = data["state"]
        if state.init != "learned":  # only a learned start is a parameter
            return {}
        return {"init": state.type.dims} if first_of(state) == node else {}
    if data["kind"] != "op" or data.get("shares"):
        return {}
    op = data["op"]
    if type(op).params is Op.params:  # an op that learns nothing: no input types to look up
        return {}
    return op.params(*(type_of(source).step() for source, _ in data["inputs"]))


def first_state_node(graph: nx.DiGraph, state) -> str:
    # h[t-1] and h[t-2] delay one state: its learned initial value counts once
    return min(n for n, d in graph.nodes(data=True) if d.get("state") is state)


def cost_rows(graph: nx.DiGraph, batch: int = 1) -> list[Row]:
    """Rows in execution order for a checked graph (each step of a sequence, for recurrences)."""
    rows = []
    for node in nx.topological_sort(forward_view(graph)):
        data = graph.nodes[node]
        out = data["type"]
        owned = node_params(graph, node)
        params = sum(math.prod(shape) for shape in owned.values())
        flops = mult_adds = buffers = 0
        if data["kind"] == "op":
            inputs = [t.step() for t in input_types(graph, node)]
            flops = data["op"].flops(out.step(), *inputs) * batch
            if not data.get("shares"):  # shared weights: counted where they are owned
                mult_adds = data["op"].mult_adds(out.step(), *inputs) * batch
                buffers = sum(math.prod(getattr(v, "shape", ())) for v in
                              data["op"].buffers(*inputs).values())
        op = data["op"].name if data["op"] is not None else data["kind"]
        memory = out.size * _BYTES.get(out.dtype, 4) * batch
        sources = tuple(src if delay == 0 else f"{src}@t-{delay}"
                        for src, delay in data["inputs"])
        rows.append(Row(node, block_path(graph, node), op, str(out), params, flops, memory,
                        mult_adds, buffers, sources, tuple(f"{node}.{k}" for k in owned)))
    return rows


def roll_up(graph: nx.DiGraph, rows: list[Row], depth: int) -> list[Row]:
    """`rows` with the blocks nested `depth` deep (1: the network's own blocks) each
    made one row, as torchinfo's depth does: named by the block's path, its op the
    block's name, its output the last of its nodes', its inputs those from outside it,
    its costs the sums of its nodes'."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        scope = graph.nodes[row.node]["scope"]
        key = "/".join(f.name for f in scope[:depth]) if len(scope) >= depth else row.node
        groups.setdefault(key, []).append(row)
    rolled = []
    for key, members in groups.items():
        if len(members) == 1 and members[0].node == key:
            rolled.append(members[0])
            continue
        frame = graph.nodes[members[0].node]["scope"][depth - 1]
        inside = {r.node for r in members}
        outside = tuple(dict.fromkeys(s for r in members for s in r.inputs
                                      if s.partition("@")[0] not in inside))
        rolled.append(Row(key, "/".join(key.split("/")[:-1]), frame.block, members[-1].type,
                          *(sum(getattr(r, f) for r in members)
                            for f in ("params", "flops", "memory", "mult_adds", "buffers")),
                          outside, tuple(n for r in members for n in r.param_names)))
    return rolled


def param_count(graph: nx.DiGraph) -> int:
    """Total learned parameters of a checked graph, in one pass over its nodes: each
    op class, attributes and input types' count made once (the shapes pass gives equal
    types as one object), each state's first node found once (not once per delay)."""
    attrs = graph._node  # networkx's dict of each node's data: no view per lookup
    counts: dict[tuple, tuple] = {}  # key -> (count, the input types keyed by identity)
    states: dict[int, list] = {}  # a state's nodes, by the state
    total = 0
    base_params = Op.params
    for node, data in attrs.items():
        if data["kind"] != "op":
            if data.get("state") is not None:
                states.setdefault(id(data["state"]), []).append(node)
            continue
        op = data["op"]
        if data.get("shares") or type(op).params is base_params:
            continue
        sources = data["inputs"]
        inputs = [attrs[sources[0][0]]["type"]] if len(sources) == 1 else \
            [attrs[source]["type"] for source, _ in sources]
        same_op = (op, *map(id, inputs))  # the op itself first, as the shapes pass keys it
        found = counts.get(same_op)
        if found is None:
            try:  # the count depends on the op and its input types alone
                key = (type(op), tuple(op.attrs.items()), *map(id, inputs))
                found = counts.get(key)
            except (TypeError, AttributeError):  # attributes that cannot be a key
                found = key = None
            if found is None:
                found = (sum(math.prod(shape) for shape in op.params(*(t.step() for t in inputs)).values()),
                         inputs)
                if key is not None:
                    counts[key] = found
            if key is not None:
                counts[same_op] = found
        total += found[0]
    for nodes in states.values():
        first = min(nodes)
        total += sum(math.prod(shape) for shape in _owned(
            first, attrs[first], lambda source: attrs[source].get("type"), lambda state: first).values())
    return total
