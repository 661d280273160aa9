"""Printers for `netc compile --emit STAGE`: one node per line, with its shape, in the
language's own syntax (netdsl.spelling): `conv1 = x -> conv(16, 3, pad=1, bias=false)`."""
from __future__ import annotations

import dataclasses

import networkx as nx

from netdsl import ast
from netdsl.graph import forward_view
from netdsl.program import Program
from netdsl.spelling import inputs_call, literal, train_clause
from netdsl.unroll import INIT_KIND, sort_key

__all__ = ["format_ast", "format_program", "format_graph", "format_shapes", "format_unrolled"]


def format_ast(module: ast.Module) -> str:
    """The syntax tree, one node per line, indented by depth, with its line:col."""
    lines: list[str] = []

    def walk(value, depth: int, label: str = "") -> None:
        pad = "  " * depth + (f"{label}: " if label else "")
        if dataclasses.is_dataclass(value):
            fields = [f for f in dataclasses.fields(value) if f.name not in ("span", "name_span", "file")]
            simple = {f.name: getattr(value, f.name) for f in fields if _is_leaf(getattr(value, f.name))}
            where = f"  @{value.span.line}:{value.span.col}" if hasattr(value, "span") else ""
            inner = " ".join(f"{k}={_leaf(v)}" for k, v in simple.items() if v not in (None, (), ""))
            lines.append(f"{pad}{type(value).__name__} {inner}".rstrip() + where)
            for f in fields:
                child = getattr(value, f.name)
                if not _is_leaf(child):
                    walk(child, depth + 1, f.name)
        elif isinstance(value, tuple):
            for item in value:
                walk(item, depth, label)

    for item in module.items:
        walk(item, 0)
    return "\n".join(lines)


def _leaf(value) -> str:
    """A syntax tree's value as the language writes it: names bare, numbers and flags as
    literals (true, [3, 3]), text quoted."""
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    if isinstance(value, str) and value.isidentifier():  # a name, a keyword
        return value
    return literal(value)


def _is_leaf(value) -> bool:
    return not dataclasses.is_dataclass(value) and not (
        isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value))


def _sources(pairs) -> list[str]:
    """Inputs as a spec names them: `h[t-1]` for the value of h one step back."""
    return [src if delay == 0 else f"{src}[t-{delay}]" for src, delay in pairs]


def _declaration(kind: str, name: str, type_, state=None) -> str:
    """`input x : [64]`, `state h : [64] = learned`."""
    init = f" = {state.init}" if state is not None and state.init else ""
    return f"{kind} {state.name if state is not None else name} : {type_}{init}"


def format_program(program: Program) -> str:
    """The expanded program in definition order: a declaration per input, target and
    state, `id = inputs -> op(arguments)` per op (block paths in the ids), the losses
    and the train clause."""
    lines = [f"network {program.name}"]
    for node in program.nodes.values():
        if node.kind == "op":
            shares = f"  # shares the weights of {node.shares}" if node.shares else ""
            lines.append(f"{node.id} = {inputs_call(node.op, _sources(node.inputs))}{shares}")
        else:
            lines.append(_declaration(node.kind, node.id, node.type, node.state))
    lines += [f"loss {name}: {node}" for name, node in program.losses.items()]
    if program.train:
        lines.append(train_clause(program.train))
    return "\n".join(lines)


def format_graph(graph: nx.DiGraph) -> str:
    """Nodes in topological order with their successors; delayed edges marked."""
    lines = [f"graph {graph.graph['name']}: {graph.number_of_nodes()} nodes, "
             f"{graph.number_of_edges()} edges"]
    for node in nx.topological_sort(forward_view(graph)):
        succ = [v if graph.edges[node, v]["delay"] == 0 else f"{v} (delay {graph.edges[node, v]['delay']})"
                for v in graph.successors(node)]
        kind = graph.nodes[node]["op"].name if graph.nodes[node]["op"] else graph.nodes[node]["kind"]
        lines.append(f"{node} [{kind}] -> {', '.join(succ) or '(output)'}")
    return "\n".join(lines)


def format_unrolled(dag: nx.DiGraph) -> str:
    """An unrolled graph (`netdsl.unroll`) as `--emit graph` prints one, step by step,
    then each set of weights once, with the copies that share it."""
    def key(node):
        return sort_key(dag, node)

    steps = dag.graph["steps"]
    lines = [f"unrolled {dag.graph['name']} over {steps} step{'s' if steps > 1 else ''}: "
             f"{dag.number_of_nodes()} nodes, {dag.number_of_edges()} edges"]
    for node in nx.lexicographical_topological_sort(dag, key=key):
        data = dag.nodes[node]
        succ = [v if not dag.edges[node, v]["delay"] else f"{v} (delay {dag.edges[node, v]['delay']})"
                for v in sorted(dag.successors(node), key=key)]
        kind = (f"{INIT_KIND} {data['state'].init}" if data["kind"] == INIT_KIND
                else data["op"].name if data["op"] else data["kind"])
        lines.append(f"{node} [{kind}] {data['type']} -> {', '.join(succ) or '(output)'}")
    return "\n".join(lines + _shared_weights(dag, key))


def _shared_weights(dag: nx.DiGraph, key) -> list[str]:
    """`weights dense2 (weight [64,64]): dense2@1, dense2@2, dense2@3`: each owner once."""
    users: dict[str, list[str]] = {owner: [] for owner in dag.graph["weights"]}
    for node in sorted(dag, key=key):
        owner = dag.nodes[node]["params"]
        if owner is not None:
            users[owner].append(node)
    lines = []
    for owner, nodes in users.items():
        shapes = ", ".join(f"{name} [{','.join(map(str, shape))}]"
                           for name, shape in dag.graph["weights"][owner].items())
        lines.append(f"weights {owner} ({shapes}): {', '.join(nodes)}")
    return lines


def format_shapes(graph: nx.DiGraph) -> str:
    """JAX-style typed lines: `conv1: [16,32,32] = x -> conv(16, 3, pad=1, bias=false)`."""
    lines = []
    for node in nx.topological_sort(forward_view(graph)):
        data = graph.nodes[node]
        if data["kind"] == "op":
            rhs = inputs_call(data["op"], _sources(data["inputs"]))
        else:
            state = data.get("state")
            rhs = data["kind"] + (f" (initially {state.init})" if state is not None else "")
        lines.append(f"{node}: {data['type']} = {rhs}")
    for name, node in graph.graph["losses"].items():
        lines.append(f"loss {name}: {node}")
    return "\n".join(lines)
