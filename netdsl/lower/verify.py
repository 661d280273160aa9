"""The invariants the executors rely on, checked between lowering passes.

`verify_plan` checks a plan (and, given one, its schedule, and the plan the last pass
started from):

- every value is defined before it is read, and named once;
- every step's parameters, slices and borrowed arrays exist;
- every loop's steps are steps of the plan, in one stretch, and every state it carries
  is typed like the value it delays;
- every value a schedule frees is read by no later step, and no output is freed;
- every fused chain equals the steps it replaced: the same ops, wired to the same
  values, and an in-place follower overwrites a value nothing else reads.

`lower(..., verify=True)` runs it after every pass (the tests do, on every spec).
"""
from __future__ import annotations

from netdsl.lower.fuse import FusedChain
from netdsl.lower.plan import Plan
from netdsl.lower.schedule import LoopSegment, Schedule

__all__ = ["PlanError", "verify_plan"]


class PlanError(AssertionError):
    """A lowering pass broke an invariant: a bug in the pass, never in the spec."""


def verify_plan(plan: Plan, schedule: Schedule | None = None, before: Plan | None = None
                ) -> None:
    """Raise PlanError naming the first broken invariant."""
    _defined_before_use(plan)
    _loops_typed(plan)
    if schedule is not None:
        _frees_dead(plan, schedule)
    if before is not None:
        _fusion_faithful(plan, before)


def _fail(message: str) -> None:
    raise PlanError(message)


def _defined_before_use(plan: Plan) -> None:
    defined = set(plan.inputs) | set(plan.states)
    for step in plan.steps:
        if step.node in defined:
            _fail(f"{step.node} is defined twice")
        missing = [s for s in step.inputs if s not in defined]
        if missing:
            _fail(f"{step.node} reads {missing[0]} before it is defined")
        if len(step.input_types) != len(step.inputs):
            _fail(f"{step.node} has {len(step.inputs)} inputs but {len(step.input_types)} types")
        for name, key in step.params.items():
            if key not in plan.params:
                _fail(f"{step.node} reads the unknown parameter {key}")
        for name in step.slices:
            if name not in step.params:
                _fail(f"{step.node} slices {name}, which it does not read")
        for kw, (node, _) in step.borrows.items():
            if node not in defined:
                _fail(f"{step.node} borrows from {node}, which has not run")
        if step.node not in plan.types:
            _fail(f"{step.node} has no type")
        defined.add(step.node)
    for name, node in plan.losses.items():
        if node not in defined:
            _fail(f"loss {name} is the undefined value {node}")


def _loops_typed(plan: Plan) -> None:
    order = {s.node: i for i, s in enumerate(plan.steps)}
    for loop in plan.loops:
        at = [order.get(s.node) for s in loop.steps]
        if None in at:
            _fail(f"loop {loop.name} runs a step the plan does not have")
        if at != list(range(at[0], at[0] + len(at))):
            _fail(f"loop {loop.name}'s steps are not one stretch of the plan")
        members = {s.node for s in loop.steps}
        for state in loop.states:
            if state.source not in members:
                _fail(f"state {state.node} delays {state.source}, which its loop does not make")
            carried, source = plan.types.get(state.node), plan.types.get(state.source)
            if carried is None or source is None or carried.dims != source.dims \
                    or carried.dtype != source.dtype:
                _fail(f"state {state.node} is typed {carried} but carries {source}")


def _frees_dead(plan: Plan, schedule: Schedule) -> None:
    freed: set[str] = set()
    for segment in schedule.segments:
        if isinstance(segment, LoopSegment):
            reads = [{r.ref for route in segment.routes for r in route if isinstance(r.ref, str)}
                     | {s.start for s in segment.loop.states if s.start is not None}]
            frees = [segment.frees]
        else:
            reads = [set(step.inputs) for step in segment.steps]
            frees = segment.frees
        for read, free in zip(reads, frees):
            dead = read & freed
            if dead:
                _fail(f"{sorted(dead)[0]} is read after it was freed")
            freed |= set(free)
    kept = freed & schedule.outputs
    if kept:
        _fail(f"the output {sorted(kept)[0]} is freed")


def _fusion_faithful(plan: Plan, before: Plan) -> None:
    readers: dict[str, int] = {}
    for step in before.steps:
        for source in step.inputs:
            readers[source] = readers.get(source, 0) + 1
    for step in plan.steps:
        if isinstance(step.op, FusedChain):
            _chain_equals_steps(step, before)
        elif step.in_place:
            source = step.inputs[0]
            if readers.get(source) != 1 or source in before.losses.values():
                _fail(f"{step.node} overwrites {source}, which is read elsewhere")


def _chain_equals_steps(step, before: Plan) -> None:
    chain, nodes = step.op.chain, step.op.nodes
    if nodes[-1] != step.node:
        _fail(f"fused step {step.node} is not named after its last op {nodes[-1]}")
    for m, (node, op, wires) in enumerate(zip(nodes, chain.ops, chain.wiring)):
        original = before.step_of(node)
        if original.op is not op:
            _fail(f"fused step {step.node} runs another op than {node}")
        wired = tuple(nodes[m - 1] if w < 0 else step.inputs[w] for w in wires)
        if wired != original.inputs:
            _fail(f"fused step {step.node} feeds {node} {wired}, not {original.inputs}")
