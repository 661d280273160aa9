"""Printers for `netc compile --emit STAGE`: one node per line, with its shape."""
from __future__ import annotations

import dataclasses

import networkx as nx

from netdsl import ast
from netdsl.graph import forward_view
from netdsl.program import Program

__all__ = ["format_ast", "format_program", "format_graph", "format_shapes", "format_plan",
           "format_kernels", "format_unrolled"]


def format_ast(module: ast.Module) -> str:
    """The syntax tree, one node per line, indented by depth, with its line:col."""
    lines: list[str] = []

    def walk(value, depth: int, label: str = "") -> None:
        pad = "  " * depth + (f"{label}: " if label else "")
        if dataclasses.is_dataclass(value):
            fields = [f for f in dataclasses.fields(value) if f.name not in ("span", "name_span", "file")]
            simple = {f.name: getattr(value, f.name) for f in fields if _is_leaf(getattr(value, f.name))}
            where = f"  @{value.span.line}:{value.span.col}" if hasattr(value, "span") else ""
            inner = " ".join(f"{k}={v!r}" for k, v in simple.items() if v not in (None, (), ""))
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


def _is_leaf(value) -> bool:
    return not dataclasses.is_dataclass(value) and not (
        isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value))


def _inputs(pairs) -> str:
    return ", ".join(src if delay == 0 else f"{src}@t-{delay}" for src, delay in pairs)


def format_program(program: Program) -> str:
    """The expanded program: `id = op(inputs; attrs)` in definition order."""
    lines = [f"network {program.name}"]
    for node in program.nodes.values():
        if node.kind == "op":
            shares = f"  shares {node.shares}" if node.shares else ""
            lines.append(f"{node.id} = {node.op.name}({_inputs(node.inputs)}{_attrs(node.op)}){shares}")
        else:
            lines.append(f"{node.id} = {node.kind} {node.type}" + (
                f" <- {_inputs(node.inputs)}" if node.inputs else ""))
    lines += [f"loss {name} = {node}" for name, node in program.losses.items()]
    if program.train:
        lines.append("train " + ", ".join(f"{k}={v}" for k, v in program.train.items()))
    return "\n".join(lines)


def _attrs(op) -> str:
    return "".join(f"; {k}={v!r}" for k, v in op.attrs.items()) if op.attrs else ""


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
    from netdsl.unroll import INIT_KIND, sort_key

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
    """JAX-style typed lines: `conv1: [16,32,32] = conv(x; channels=16, ...)`."""
    lines = []
    for node in nx.topological_sort(forward_view(graph)):
        data = graph.nodes[node]
        if data["kind"] == "op":
            rhs = f"{data['op'].name}({_inputs(data['inputs'])}{_attrs(data['op'])})"
        else:
            rhs = data["kind"] + (f" <- {_inputs(data['inputs'])}" if data["inputs"] else "")
        lines.append(f"{node}: {data['type']} = {rhs}")
    for name, node in graph.graph["losses"].items():
        lines.append(f"loss {name} = {node}")
    return "\n".join(lines)


def _format_sequence_plan(plan) -> str:
    """A sequence network's step: what runs once over all time steps, and each loop."""
    from netdsl.runtime.hoist import hoist

    plan = hoist(plan)
    in_loop = {s.node: loop for loop in plan.loops for s in loop.steps}
    lines = [f"forward ({len(plan.steps)} steps; a loop runs once per time step, the rest once "
             "for all steps)"]
    shown = set()
    for step in plan.steps:
        loop = in_loop.get(step.node)
        if loop is None:
            part = " [columns of the weight]" if step.slices else ""
            lines.append(f"  {step.node} ({step.op.name}){part}")
        elif loop.name not in shown:
            shown.add(loop.name)
            states = ", ".join(f"{s.node} <- {s.source}" for s in loop.states)
            lines.append(f"  loop over t ({states}):")
            lines += [f"    {s.node} ({s.op.name})" for s in loop.steps]
    backward = plan.backward()
    lines.append(f"backward through time ({len(backward.order)} steps, losses "
                 f"{', '.join(backward.losses)}); gradients of the states flow to step t-k")
    return "\n".join(lines)


def format_kernels(graph: nx.DiGraph, optimizer: str, settings: dict) -> str:
    """The CUDA kernels `--device gpu` generates for a spec: each fused chain's forward
    and backward (for the gradients training needs; inside a recurrence they run at
    every time step), and the optimiser's update."""
    import numpy as np

    from netdsl.runtime.fused import FusedChain, kernel_plan
    from netdsl.runtime.hoist import hoist
    from netdsl.runtime.kernelgen import chain_backward, chain_forward, cuda_source, update_program
    from netdsl.runtime.optim import make_optimizer
    from netdsl.runtime.plan import build_plan

    plan = build_plan(graph)
    if plan.sequential:  # the plan the sequence executor runs
        plan = hoist(plan)
    fused = kernel_plan(plan, set(plan.losses.values()))
    backward = fused.backward()
    users: dict[str, list[str]] = {}   # each distinct kernel, once, with the chains it runs
    for step in fused.steps:
        if not isinstance(step.op, FusedChain):
            continue
        chain = step.op.chain
        programs = [chain_forward(chain)]
        if step.node in backward.grad_inputs:
            needs = tuple(t is not None for t in backward.grad_inputs[step.node])
            programs.append(chain_backward(chain, needs))
        for program in programs:
            users.setdefault(cuda_source(program), []).append(" -> ".join(step.op.nodes))
    parts = [f"// {len(names)} use{'s' if len(names) > 1 else ''}: {', '.join(names)}\n{source}"
             for source, names in users.items()]
    rule = make_optimizer(optimizer, settings, np.zeros(1, np.float32))
    parts.append(f"// {optimizer} over all parameters\n" +
                 cuda_source(update_program(rule.rule, tuple(rule.state))))
    return "\n".join(parts).rstrip("\n")


def format_plan(graph: nx.DiGraph, batch: int) -> str:
    """The training step: fused forward chains, autodiff's backward order, buffer slots."""
    from netdsl.report import human
    from netdsl.runtime.fuse import fuse
    from netdsl.runtime.memory import plan_memory
    from netdsl.runtime.plan import build_plan

    plan = build_plan(graph)
    if plan.sequential:
        return _format_sequence_plan(plan)
    backward = plan.backward()
    memory = plan_memory(plan, backward, batch)
    lines = [f"forward ({len(plan.steps)} steps; a chain runs its followers in place)"]
    for group in fuse(plan):
        ops = " -> ".join(f"{n} ({plan.step_of(n).op.name})" for n in group.nodes)
        lines.append(f"  {ops}")
    lines.append(f"backward ({len(backward.order)} steps, losses {', '.join(backward.losses)})")
    for node in backward.order:
        sources = [s for s in backward.grad_inputs[node] if s is not None]
        params = sorted(k.rpartition(".")[2] for k, p in plan.step_of(node).params.items()
                        if p in backward.params)
        grads = ", ".join([f"d{s}" for s in sources] + [f"d{p}" for p in params])
        lines.append(f"  {node}" + (f" -> {grads}" if grads else ""))
    lines.append(f"memory at batch {batch}: {len(memory.buffers)} buffers in "
                 f"{len(memory.slots)} slots, {human(memory.slot_bytes, 'B')} "
                 f"(unshared {human(memory.unshared_bytes, 'B')})")
    for b in sorted(memory.buffers, key=lambda b: (b.start, b.name)):
        lines.append(f"  slot {memory.assignment[b.name]:>3}  {b.kind:<6} {b.name:<40} "
                     f"{human(b.bytes, 'B'):>10}  steps {b.start}..{b.end}")
    return "\n".join(lines)
