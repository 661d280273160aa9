"""Printers for `netc compile --emit`: each lowering pass's result, one step per line.

`format_pass(lowered, name)` prints one pass by its name (pipeline.PASSES); `format_plan`
is the training step at a glance (chains, backward order, buffers, or a sequence
network's loops), and `format_kernels` the CUDA source the cuda target generates.
"""
from __future__ import annotations

from netdsl.lower.autodiff import Backward
from netdsl.lower.codegen import cuda_source, update_program
from netdsl.lower.fuse import ChannelChain, FusedChain
from netdsl.lower.layout import LaidOut
from netdsl.lower.memory import MemoryPlan
from netdsl.lower.native import c_module
from netdsl.lower.pipeline import Lowered
from netdsl.lower.plan import Plan
from netdsl.lower.schedule import LoopSegment, Schedule
from netdsl.ops.channels import ChannelProgram
from netdsl.report import human

__all__ = ["format_pass", "format_plan", "format_kernels", "format_layout", "host_chains"]


def format_pass(lowered: Lowered, name: str, batch: int = 1) -> str:
    """The result of the pass `name` (build_plan ... codegen)."""
    result = lowered.stages[name]
    if isinstance(result, Plan):
        return _format_steps(result)
    if isinstance(result, LaidOut):
        return format_layout(result) + "\n" + _format_steps(result.plan)
    if isinstance(result, Backward):
        return _format_backward(lowered.plan, result)
    if isinstance(result, Schedule):
        return _format_schedule(result)
    if name == "plan_memory":
        return ("no memory plan: a network with a time axis holds its values per loop"
                if result is None else _format_memory(result.at(batch)))
    return _format_programs(lowered)


def _format_steps(plan: Plan) -> str:
    """`node: type = op(inputs)` per step, loops and states marked."""
    in_loop = {s.node: loop.name for loop in plan.loops for s in loop.steps}
    lines = [f"plan {plan.graph.graph['name']}: {len(plan.steps)} steps, "
             f"{len(plan.loops)} loops, {sum(p.size for p in plan.params.values()):,} "
             "parameters"]
    for step in plan.steps:
        marks = []
        if step.node in in_loop:
            marks.append(f"loop {in_loop[step.node]}")
        if step.in_place:
            marks.append(f"over {step.inputs[0]}")
        if step.slices:
            marks.append("columns of " + ", ".join(step.params[n] for n in step.slices))
        if isinstance(step.op, (FusedChain, ChannelChain)):
            marks.append("kernel " + " -> ".join(step.op.nodes))
        if getattr(step.op, "layout", None):
            marks.append(step.op.layout)
        op = step.op.name
        note = f"  [{'; '.join(marks)}]" if marks else ""
        lines.append(f"{step.node}: {plan.types[step.node]} = {op}({', '.join(step.inputs)})"
                     f"{note}")
    for state in plan.states.values():
        lines.append(f"state {state.node} = {state.source} at t-{state.delay}, "
                     f"initially {state.init}")
    lines += [f"loss {name} = {node}" for name, node in plan.losses.items()]
    return "\n".join(lines)


def format_layout(laid: LaidOut) -> str:
    """Each region of 4-D values and the layout it runs in (netdsl.lower.layout), and the
    layout changes on its edges."""
    lines = [f"layout ({laid.mode}): {len(laid.regions)} region"
             f"{'' if len(laid.regions) == 1 else 's'}"]
    lines += ["  " + region.describe() for region in laid.regions]
    changes = [s for s in laid.plan.steps if getattr(s.op, "perm", None)]
    if changes:
        lines.append("  changes: " + ", ".join(f"{s.node} = {s.op.name}({s.inputs[0]})"
                                               for s in changes))
    return "\n".join(lines)


def _format_backward(plan: Plan, backward: Backward) -> str:
    lines = [f"backward ({len(backward.order)} steps, losses {', '.join(backward.losses)})"]
    for node in backward.order:
        sources = [s for s in backward.grad_inputs[node] if s is not None]
        params = sorted(k.rpartition(".")[2] for k, p in plan.step_of(node).params.items()
                        if p in backward.params)
        grads = ", ".join([f"d{s}" for s in sources] + [f"d{p}" for p in params])
        lines.append(f"  {node}" + (f" -> {grads}" if grads else ""))
    return "\n".join(lines)


def _format_schedule(schedule: Schedule) -> str:
    lines = [f"schedule: {len(schedule.segments)} segments"]
    for segment in schedule.segments:
        if isinstance(segment, LoopSegment):
            states = ", ".join(f"{s.node} <- {s.source}" for s in segment.loop.states)
            lines.append(f"  loop over t ({states}), keeping {', '.join(segment.stored)}:")
            lines += [f"    {s.node} ({s.op.name})" for s in segment.steps]
            if segment.frees:
                lines.append(f"  then free {', '.join(segment.frees)}")
            continue
        lines.append("  once for all time steps:")
        for step, frees in zip(segment.steps, segment.frees):
            freed = f"  free {', '.join(frees)}" if frees else ""
            lines.append(f"    {step.node} ({step.op.name}){freed}")
    return "\n".join(lines)


def _format_memory(memory: MemoryPlan) -> str:
    lines = [f"memory at batch {memory.batch}: {len(memory.buffers)} buffers in "
             f"{len(memory.slots)} slots, {human(memory.slot_bytes, 'B')} "
             f"(unshared {human(memory.unshared_bytes, 'B')})"]
    for b in sorted(memory.buffers, key=lambda b: (b.start, b.name)):
        slot = memory.assignment.get(b.name)
        where = ("lodged  " if slot is None else "arena   " if slot == memory.arena_slot
                 else f"slot {slot:>3}")
        lines.append(f"  {where}  {b.kind:<6} {b.name:<40} "
                     f"{human(b.bytes, 'B'):>10}  steps {b.start}..{b.end}")
    if memory.lodged:
        lines.append("  (lodged: in the gradient vector, where backward writes later "
                     "parameters' gradients)")
    if memory.arena is not None:
        lines.append(f"  (arena: one block of {human(memory.arena.bytes, 'B')} made once per "
                     f"executor, each value at a fixed offset: slot {memory.arena_slot})")
    return "\n".join(lines)


def _format_programs(lowered: Lowered) -> str:
    if not lowered.target.kernels:
        return f"no generated code: the {lowered.target.name} target runs the ops themselves"
    users: dict[str, list[str]] = {}   # each distinct kernel, once, with the runs it serves
    for node, programs in lowered.kernels.items():
        step = lowered.plan.step_of(node)
        for program in programs:
            # an op's per-channel program (batchnorm's) exists only as the native C
            source = (c_module([program], "float32") if isinstance(program, ChannelProgram)
                      else cuda_source(program))
            users.setdefault(source, []).append(" -> ".join(getattr(step.op, "nodes",
                                                                    (node,))))
    return "\n".join(f"// {len(names)} use{'s' if len(names) > 1 else ''}: "
                     f"{', '.join(names)}\n{source}" for source, names in users.items())


def host_chains(plan: Plan) -> list[list[str]]:
    """The host's chains: each step, and after it the followers that run in place over it."""
    chains: list[list[str]] = []
    chain_of: dict[str, list[str]] = {}
    for step in plan.steps:
        chain = chain_of.get(step.inputs[0]) if step.in_place else None
        if chain is None:
            chain = []
            chains.append(chain)
        chain.append(step.node)
        chain_of[step.node] = chain
    return chains


def format_plan(lowered: Lowered, batch: int) -> str:
    """The training step: fused forward chains, autodiff's backward order, buffer slots; for
    a network with a time axis, what runs once and what runs in each loop."""
    plan = lowered.plan
    if plan.sequential:
        return _format_sequence_plan(lowered)
    memory = lowered.memory.at(batch)
    lines = format_layout(lowered.laid_out).split("\n")
    lines.append(f"forward ({len(plan.steps)} steps; a chain runs its followers in place)")
    for chain in host_chains(plan):
        lines.append("  " + " -> ".join(f"{n} ({plan.step_of(n).op.name})" for n in chain))
    lines.append(_format_backward(plan, lowered.backward()))
    lines.append(_format_memory(memory))
    return "\n".join(lines)


def _format_sequence_plan(lowered: Lowered) -> str:
    """A sequence network's step: what runs once over all time steps, and each loop."""
    plan = lowered.plan
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
    backward = lowered.backward()
    lines.append(f"backward through time ({len(backward.order)} steps, losses "
                 f"{', '.join(backward.losses)}); gradients of the states flow to step t-k")
    return "\n".join(lines)


def format_kernels(lowered: Lowered, rule, state: tuple[str, ...], optimizer: str) -> str:
    """The CUDA kernels `--device gpu` generates for a spec: each fused run's forward and
    backward (for the gradients training needs; inside a recurrence they run at every
    time step), and the optimiser's update (`rule` keeping the arrays `state`)."""
    parts = [_format_programs(lowered)] if lowered.kernels else []
    parts.append(f"// {optimizer} over all parameters\n" +
                 cuda_source(update_program(rule, state)))
    return "\n".join(parts).rstrip("\n")
