"""Pass 4, shapes: give every node a TensorType, or a located error.

Batch and time stay symbolic: per-step ops see the type of one step, and their
result is a sequence when any input is. Errors are collected, and a node whose
input failed is skipped, so independent mistakes are all reported in one run.
"""
from __future__ import annotations

import re
import networkx as nx

from netdsl.errors import ShapeError, SpecError, SpecErrors
from netdsl.graph import forward_order
from netdsl.ops.base import positions
from netdsl.program import call_notes
from netdsl.types import TensorType

__all__ = ["infer_shapes", "typed_graph", "input_types", "node_type", "verify_shapes"]


def infer_shapes(graph: nx.DiGraph) -> nx.DiGraph:
    """Return a copy of `graph` whose nodes carry `type`.

    Raises
    ------
    SpecError, SpecErrors
        Every shape mismatch, with the span of the layer and what it expected.
    """
    graph, errors = typed_graph(graph)
    SpecErrors.collect(errors)
    return graph


def typed_graph(graph: nx.DiGraph, copy: bool = True, order: list[str] | None = None
                ) -> tuple[nx.DiGraph, list[SpecError]]:
    """A copy of `graph` with types where they can be inferred (None elsewhere), and the
    errors, so that passes after this one can still report theirs. `copy=False` types
    `graph` itself, for a caller that keeps no untyped graph (copying a big one costs as
    much as typing it); `order` is a forward order where the caller has one already
    (errors are reported in `forward_order`'s all the same)."""
    graph = graph.copy() if copy else graph
    errors: list[SpecError] = []
    attrs = graph._node  # networkx's dict of each node's data: no view per lookup
    known: dict[tuple, tuple] = {}  # see _node_type
    one_of_each: dict[TensorType, TensorType] = {}
    states, shared = [], []  # checked after typing, without another pass over every node
    failed = []  # the nodes of `errors`
    for node in order if order is not None else forward_order(graph):
        data = attrs[node]
        if data["kind"] == "state":
            states.append(node)
        elif data.get("shares") is not None:
            shared.append(node)
        else:  # _node_type's first look, without its call: an op of one input met before
            sources = data["inputs"]
            if len(sources) == 1:
                found = known.get((data["op"], id(attrs[sources[0][0]].get("type"))))
                if found is not None:
                    data["type"] = found[0]
                    continue
        try:
            data["type"] = _node_type(attrs, data, known, one_of_each)
        except ShapeError as exc:
            data["type"] = None
            errors.append(SpecError(exc.message, data["span"], _same_count_hint(graph, node) or exc.hint,
                                    call_notes(data["scope"], data["span"])))
            failed.append(node)
    if len(failed) > 1 and order is not None:  # reported in forward_order's order, whatever `order` was
        position = {node: i for i, node in enumerate(forward_order(graph))}
        errors = [error for _, error in sorted(zip(map(position.__getitem__, failed), errors),
                                               key=lambda pair: pair[0])]
    errors += (_check_states(graph, _in_graph_order(graph, states)) + _check_losses(graph)
               + _check_shared(graph, _in_graph_order(graph, shared)))
    return graph, errors


def input_types(graph: nx.DiGraph, node: str) -> list[TensorType | None]:
    """The types a node receives, in argument order."""
    return [graph.nodes[source].get("type") for source, _ in graph.nodes[node]["inputs"]]


def _node_type(attrs: dict, data, known: dict, one_of_each: dict) -> TensorType | None:
    """The type of a node, its inputs' types known: `attrs` maps nodes to their data.

    A big network repeats the same layer on the same input type again and again, and an
    op's type depends on nothing else: `known` keeps the result for each op class,
    attributes and input types, so a shape rule runs once for all of them. Inputs are
    keyed by identity: every type given is one object per value (`one_of_each`), so the
    nodes of a chain meet the same input objects, and the inputs are kept beside the
    result, so no key outlives its objects. A rule that fails is not kept: each failing
    node raises its own error."""
    sources = data["inputs"]
    if len(sources) == 1:  # most ops: no comprehension
        inputs = [attrs[sources[0][0]].get("type")]
    else:
        inputs = [attrs[source].get("type") for source, _ in sources]
    op = data["op"]
    values = getattr(op, "attrs", None)
    if values is None:  # an input, a target or a state: its type is declared
        result = node_type(data["kind"], data["declared"], op, inputs)
        return one_of_each.setdefault(result, result)
    # the op itself first: the layers expansion binds alike share one (its SHARE_OPS), a
    # key without their attributes (an op hashes by identity, and the key keeps it)
    same_op = (op, *map(id, inputs))
    found = known.get(same_op)
    if found is not None:
        return found[0]
    try:
        key = (type(op), tuple(values.items()), *map(id, inputs))
        found = known.get(key)
    except TypeError:  # an attribute that cannot be a key (a list): not kept
        return node_type(data["kind"], data["declared"], op, inputs)
    if found is None:
        result = node_type(data["kind"], data["declared"], op, inputs)
        found = known[key] = (one_of_each.setdefault(result, result), inputs)
    known[same_op] = found
    return found[0]


def node_type(kind: str, declared: TensorType | None, op, inputs: list[TensorType | None]
              ) -> TensorType | None:
    """The type of one node from its inputs' types (None when one of them failed);
    expansion asks it too, to read a tensor's dimensions (`x.channels`).

    Raises
    ------
    ShapeError
        When the op does not take inputs of these types.
    """
    if kind == "input" or kind == "target":
        return declared
    if kind == "state":
        return declared.with_seq()
    for t in inputs:  # by identity: `None in inputs` would call TensorType.__eq__ on each
        if t is None:
            return None  # an input already failed and was reported
    if not op.per_step:
        return op.shape(*inputs)
    sequences = tuple([t.seq for t in inputs])  # lists, not generators: one per node
    refused = op.over_time(sequences)
    if refused is not None:
        raise ShapeError(*refused)
    if not op.whole:  # every input read step by step, the common case
        result = op.shape(*[t.step() for t in inputs])
        return result.with_seq() if any(sequences) else result
    whole = whole_positions(op)
    seq = any(t.seq for i, t in enumerate(inputs) if i not in whole)
    result = op.shape(*(t if i in whole else t.step() for i, t in enumerate(inputs)))
    return result.with_seq() if seq else result


def _same_count_hint(graph: nx.DiGraph, node: str) -> str | None:
    """Inputs that hold the same number of elements in different shapes: a reshape is missing."""
    types = [t for t in input_types(graph, node) if t is not None]
    for a in types:
        for b in types:
            if a.dims != b.dims and _count(a) == _count(b):
                return (f"{a.step()} and {b.step()} hold the same number of elements: reshape one "
                        f"to the other's shape (x -> reshape({', '.join(map(str, b.dims))})) or "
                        "flatten both")
    return None


def _count(t: TensorType) -> int:
    count = 1
    for dim in t.dims:
        count *= dim
    return count


def whole_positions(op) -> frozenset[int]:
    """The argument positions of the inputs a per-step op reads as whole sequences."""
    return positions(op, op.whole)


def _in_graph_order(graph: nx.DiGraph, nodes: list[str]) -> list[str]:
    """Some of the graph's nodes in its own order, as errors about them are reported."""
    if len(nodes) < 2:
        return nodes
    position = {node: i for i, node in enumerate(graph)}
    return sorted(nodes, key=position.__getitem__)


def _check_states(graph: nx.DiGraph, states: list[str]) -> list[SpecError]:
    errors = []
    for node in states:
        data = graph.nodes[node]
        (value, _), *start = data["inputs"]
        got = graph.nodes[value].get("type")
        want = data["declared"]
        if start:
            errors += _check_start(graph, data, start[0][0])
        if got is not None and (got.dims != want.dims or got.dtype != want.dtype):
            reshape = (f"; the value holds as many elements: -> reshape({', '.join(map(str, want.dims))})"
                       if got.dims != want.dims and _count(got) == _count(want) else "")
            errors.append(SpecError(
                f"state '{data['state'].name}' is declared {want.step()} but its new value is "
                f"{got.step()}", graph.nodes[value]["span"],
                f"change the declaration at {data['state'].span} or the value{reshape}",
                call_notes(graph.nodes[value]["scope"], graph.nodes[value]["span"])))
    return errors


def _check_start(graph: nx.DiGraph, data, start: str) -> list[SpecError]:
    """A state that starts from a tensor: one value per example, of the state's shape."""
    got, want, decl = graph.nodes[start].get("type"), data["declared"], data["state"]
    if got is None or (not got.seq and got.dims == want.dims and got.dtype == want.dtype):
        return []
    if got.seq:
        return [SpecError(f"state '{decl.name}' starts from one value per example, but "
                          f"'{decl.init}' is the sequence {got}", decl.span,
                          f"take one step of it, e.g. = last({decl.init})")]
    return [SpecError(f"state '{decl.name}' is declared {want.step()} but starts from "
                      f"'{decl.init}', which is {got}", decl.span,
                      f"project it to the state's size, e.g. = dense({decl.init}, "
                      f"{want.dims[0] if want.dims else 1})")]


def _check_losses(graph: nx.DiGraph) -> list[SpecError]:
    errors = []
    for name, node in graph.graph["losses"].items():
        t = graph.nodes[node].get("type")
        if t is not None and t.dims != ():
            errors.append(SpecError(f"loss '{name}' must be one number, but its value is {t}",
                                    graph.nodes[node]["span"],
                                    "apply a loss function, e.g. cross_entropy(logits, y)"))
    return errors


def _check_shared(graph: nx.DiGraph, shared: list[str]) -> list[SpecError]:
    """A shared layer must get inputs of the same shape at every use, or its weights would
    differ; `shared` are the nodes that share another's parameters."""
    errors = []
    for node in shared:
        data = graph.nodes[node]
        owner = data["shares"]
        if data.get("type") is None or graph.nodes[owner].get("type") is None:
            continue
        mine = data["op"].params(*(t.step() for t in input_types(graph, node)))
        theirs = graph.nodes[owner]["op"].params(*(t.step() for t in input_types(graph, owner)))
        if mine != theirs:
            here, first = (", ".join(map(str, input_types(graph, n))) for n in (node, owner))
            errors.append(SpecError(
                f"shared layer '{_shared_name(graph, node)}' gets {here} here but {first} at its "
                "first use", data["span"],
                f"one set of weights serves every use; the first is at {graph.nodes[owner]['span']}",
                call_notes(data["scope"], data["span"])))
    return errors


def _shared_name(graph: nx.DiGraph, node: str) -> str:
    """The name a spec gives a shared layer: `E`, or `se/dense1` for a layer of a shared block;
    the block instances around it are named by the error's notes."""
    outer = [frame.name for frame in graph.nodes[node]["scope"]]
    local = node.split("/")[len(outer):] if node.split("/")[:len(outer)] == outer else node.split("/")
    shared = [f.name for f in graph.nodes[node]["scope"] if re.fullmatch(r".+[.][0-9]+", f.name)]
    return re.sub(r"[.][0-9]+(?=/|$)", "", "/".join(local)) if not shared else shared[-1].split(".")[0]


def verify_shapes(graph: nx.DiGraph) -> None:
    """Every node has a type (the invariant cost, drawing and execution rely on)."""
    missing = [n for n, d in graph.nodes(data=True) if d.get("type") is None]
    if missing:
        raise AssertionError(f"nodes without a type: {missing[:5]}")
