"""Pass 4, shapes: give every node a TensorType, or a located error.

Batch and time stay symbolic: per-step ops see the type of one step, and their
result is a sequence when any input is. Errors are collected, and a node whose
input failed is skipped, so independent mistakes are all reported in one run.
"""
from __future__ import annotations

import re
from dataclasses import replace

import networkx as nx

from netdsl.errors import ShapeError, SpecError, SpecErrors
from netdsl.graph import block_path, forward_order
from netdsl.ops.base import positions
from netdsl.types import TensorType

__all__ = ["infer_shapes", "input_types", "verify_shapes"]


def infer_shapes(graph: nx.DiGraph) -> nx.DiGraph:
    """Return a copy of `graph` whose nodes carry `type`.

    Raises
    ------
    SpecError, SpecErrors
        Every shape mismatch, with the span of the layer and what it expected.
    """
    graph = graph.copy()
    errors: list[SpecError] = []
    for node in forward_order(graph):
        data = graph.nodes[node]
        try:
            data["type"] = _node_type(graph, node, data)
        except ShapeError as exc:
            data["type"] = None
            path = block_path(graph, node)
            hint = exc.hint if not path else f"{exc.hint + '; ' if exc.hint else ''}in block {path}"
            errors.append(SpecError(exc.message, data["span"], hint))
    errors += _check_states(graph) + _check_losses(graph) + _check_shared(graph)
    SpecErrors.collect(errors)
    return graph


def input_types(graph: nx.DiGraph, node: str) -> list[TensorType | None]:
    """The types a node receives, in argument order."""
    return [graph.nodes[source].get("type") for source, _ in graph.nodes[node]["inputs"]]


def _node_type(graph: nx.DiGraph, node: str, data) -> TensorType | None:
    if data["kind"] in ("input", "target"):
        return data["declared"]
    if data["kind"] == "state":
        return replace(data["declared"], seq=True)
    inputs = input_types(graph, node)
    if any(t is None for t in inputs):
        return None  # an input already failed and was reported
    op = data["op"]
    if not op.per_step:
        return op.shape(*inputs)
    whole = whole_positions(op)
    seq = any(t.seq for i, t in enumerate(inputs) if i not in whole)
    result = op.shape(*(t if i in whole else t.step() for i, t in enumerate(inputs)))
    return replace(result, seq=True) if seq else result


def whole_positions(op) -> frozenset[int]:
    """The argument positions of the inputs a per-step op reads as whole sequences."""
    return positions(op, op.whole)


def _check_states(graph: nx.DiGraph) -> list[SpecError]:
    errors = []
    for node, data in graph.nodes(data=True):
        if data["kind"] != "state":
            continue
        (value, _), = data["inputs"]
        got = graph.nodes[value].get("type")
        want = data["declared"]
        if got is not None and (got.dims != want.dims or got.dtype != want.dtype):
            errors.append(SpecError(
                f"state '{data['state'].name}' is declared {want.step()} but its new value is "
                f"{got.step()}", graph.nodes[value]["span"],
                f"change the declaration at {data['state'].span} or the value"))
    return errors


def _check_losses(graph: nx.DiGraph) -> list[SpecError]:
    errors = []
    for name, node in graph.graph["losses"].items():
        t = graph.nodes[node].get("type")
        if t is not None and t.dims != ():
            errors.append(SpecError(f"loss '{name}' must be one number, but its value is {t}",
                                    graph.nodes[node]["span"],
                                    "apply a loss function, e.g. cross_entropy(logits, y)"))
    return errors


def _check_shared(graph: nx.DiGraph) -> list[SpecError]:
    """A shared layer must get inputs of the same shape at every use, or its weights would differ."""
    errors = []
    for node, data in graph.nodes(data=True):
        owner = data.get("shares")
        if owner is None or data.get("type") is None or graph.nodes[owner].get("type") is None:
            continue
        mine = data["op"].params(*(t.step() for t in input_types(graph, node)))
        theirs = graph.nodes[owner]["op"].params(*(t.step() for t in input_types(graph, owner)))
        if mine != theirs:
            here, first = (", ".join(map(str, input_types(graph, n))) for n in (node, owner))
            path = block_path(graph, node)
            errors.append(SpecError(
                f"shared layer '{re.sub(r'[.][0-9]+(?=/|$)', '', node)}' gets {here} here "
                f"but {first} at its first use",
                data["span"], f"one set of weights serves every use; the first is at "
                f"{graph.nodes[owner]['span']}{f', in block {path}' if path else ''}"))
    return errors


def verify_shapes(graph: nx.DiGraph) -> None:
    """Every node has a type (the invariant cost, drawing and execution rely on)."""
    missing = [n for n, d in graph.nodes(data=True) if d.get("type") is None]
    if missing:
        raise AssertionError(f"nodes without a type: {missing[:5]}")
