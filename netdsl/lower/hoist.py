"""Lowering pass, hoist: take the input projections out of a recurrence.

An LSTM or GRU computes W [x_t, h_{t-1}] + b at every step. Only the h part
depends on the state: split by columns, W [x, h] = W_x x + W_h h, so W_x x_t + b
runs once for all steps (one GEMM over T*B rows, and one for its weight gradient)
and the loop keeps only W_h h_{t-1} and an add. The two new dense steps read
column slices of the original weight (`Step.slices`), so parameters, their
layout and checkpoints are unchanged. The rewrite is exact; it only changes
which work happens per step.
"""
from __future__ import annotations

from dataclasses import replace

from netdsl.lower.plan import Loop, Plan, Step
from netdsl.ops.arith import Add
from netdsl.ops.base import bind

__all__ = ["hoist"]


def hoist(plan: Plan) -> Plan:
    """A plan in which each loop's linear map of a concatenation with outside inputs is
    split (a plan without loops is returned as it is)."""
    if not plan.loops:
        return plan
    steps = list(plan.steps)
    loops, types = [], dict(plan.types)
    readers: dict[str, int] = {}
    for step in steps:
        for source in step.inputs:
            readers[source] = readers.get(source, 0) + 1
    for loop in plan.loops:
        members = list(loop.steps)
        for dense in [s for s in loop.steps if _splittable(s, loop, readers, types)]:
            outside, inside = _rewrite(plan, dense, loop, types)
            concat = next(s for s in members if s.node == dense.inputs[0])
            members.remove(concat)
            at = members.index(dense)
            members[at:at + 1] = inside
            steps.remove(concat)
            at = steps.index(dense)
            steps[at:at + 1] = inside
            # outside steps read only values computed before the loop: put them before it
            first = steps.index(members[0]) if members[0] in steps else at
            steps[first:first] = outside
        loops.append(Loop(loop.name, tuple(members), loop.states))
    return replace(plan, steps=steps, loops=loops, types=types)


def _splittable(step: Step, loop: Loop, readers: dict, types: dict) -> bool:
    """A loop's column-linear step (dense) reading a concatenation of vectors that only it
    reads, with an outside part."""
    if not step.op.column_linear or step.slices:
        return False
    members = {s.node: s for s in loop.steps}
    concat = members.get(step.inputs[0])
    if concat is None or not concat.op.concatenates or readers.get(concat.node) != 1:
        return False
    if any(len(t.dims) != 1 for t in concat.input_types):
        return False
    inside = [i for i, s in enumerate(concat.inputs) if _in_loop(s, loop)]
    outside = [i for i, s in enumerate(concat.inputs) if not _in_loop(s, loop)]
    # the inside parts must be one block of columns: the loop's product reads a view of W
    return bool(outside) and bool(inside) and inside == list(range(inside[0], inside[-1] + 1))


def _in_loop(node: str, loop: Loop) -> bool:
    return any(s.node == node for s in loop.steps) or any(s.node == node for s in loop.states)


def _rewrite(plan: Plan, dense: Step, loop: Loop, types: dict) -> tuple[list[Step], list[Step]]:
    """Outside steps (one dense per outside part, summed) and inside steps (the state's
    product and the add that gives the dense's value under its own name)."""
    concat = next(s for s in loop.steps if s.node == dense.inputs[0])
    weight, bias = dense.params["weight"], dense.params.get("bias")
    columns, start = [], 0
    for t in concat.input_types:
        columns.append(slice(start, start + t.dims[0]))
        start += t.dims[0]
    out_type = plan.types[dense.node]
    outside, partials = [], []
    inside_parts = [i for i, s in enumerate(concat.inputs) if _in_loop(s, loop)]
    for i, source in enumerate(concat.inputs):
        if i in inside_parts:
            continue
        with_bias = bias is not None and not partials
        node = f"{dense.node}/{source}"
        params = {"weight": weight, **({"bias": bias} if with_bias else {})}
        outside.append(Step(node, _with_bias(dense, with_bias), (source,),
                            (concat.input_types[i],), params,
                            slices={"weight": (slice(None), columns[i])}, origin=dense.node))
        types[node] = replace(out_type, seq=plan.types[source].seq)
        partials.append(node)
    while len(partials) > 1:  # several outside parts: their projections add up outside
        a, b = partials.pop(0), partials.pop(0)
        node = f"{dense.node}/{a.rsplit('/', 1)[-1]}+{b.rsplit('/', 1)[-1]}"
        outside.append(Step(node, Add(), (a, b), (out_type.step(), out_type.step()), {},
                            origin=dense.node))
        types[node] = replace(out_type, seq=types[a].seq or types[b].seq)
        partials.insert(0, node)
    inside = []
    sources = tuple(concat.inputs[i] for i in inside_parts)
    if len(sources) > 1:  # several state parts: one concat of them, one product
        node = f"{dense.node}/state"
        inside.append(Step(node, concat.op, sources,
                           tuple(concat.input_types[i] for i in inside_parts), {},
                           origin=concat.node))
        width = sum(concat.input_types[i].dims[0] for i in inside_parts)
        types[node] = replace(out_type, dims=(width,))
        sources = (node,)
    block = slice(columns[inside_parts[0]].start, columns[inside_parts[-1]].stop)
    product = f"{dense.node}/recurrent"
    inside.append(Step(product, _with_bias(dense, False), sources,
                       (types[sources[0]].step(),), {"weight": weight},
                       slices={"weight": (slice(None), block)}, origin=dense.node))
    types[product] = out_type
    inside.append(Step(dense.node, Add(), (partials[0], product),
                       (out_type.step(), out_type.step()), {}))
    return outside, inside


def _with_bias(step: Step, bias: bool):
    """The step's column-linear op with or without its bias, its other attributes kept."""
    return bind(type(step.op), [], {**step.op.attrs, "bias": bias})
