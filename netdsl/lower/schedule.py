"""Lowering pass, schedule: a pass over the plan as segments, and what each one frees.

A segment is either straight-line steps, each run once over all time steps (a per-step
op folds time into the batch), or a loop, whose steps run once per time step. A
feed-forward network is one straight segment: the zero-loop case.

For a loop the schedule says where each member's input comes from at step t (`Route`):
another member's value at t, a state (the value it delays, k steps back, or the
initial value), step t of a sequence made outside the loop, or a whole value (a
per-sequence one, or a sequence an op reads whole, as attention's memory). It says
which members' values are kept at every step (those read after the loop, the values
states delay, and the outputs), and how far back each state source is read.

Values are dropped after the last step or segment that reads them; outputs never are.
What an op keeps for its backward it holds in its own context, so training and
evaluation free the same values.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from netdsl.lower.plan import Loop, Plan, State, Step
from netdsl.shapes import whole_positions

__all__ = ["Segment", "LoopSegment", "Schedule", "schedule", "MEMBER", "STATE", "SEQ", "WHOLE"]

# where a loop member's input comes from at step t
MEMBER, STATE, SEQ, WHOLE = "member", "state", "seq", "whole"


@dataclass(frozen=True)
class Segment:
    """Steps outside any loop, in order; `frees[i]` are the values dropped after step i."""

    steps: tuple[Step, ...]
    frees: tuple[tuple[str, ...], ...]


class Route(NamedTuple):
    """Where an input comes from at step t: `ref` is a node, or for a state its State (a
    tuple: a loop unpacks it at every member of every step)."""

    kind: str
    ref: object


@dataclass(frozen=True)
class LoopSegment:
    """A loop's steps and, per step and input, its route; the members kept at every step
    (`stored`); each state source's deepest delay (`depth`); values dropped after it."""

    loop: Loop
    routes: tuple[tuple[Route, ...], ...]
    stored: tuple[str, ...]
    depth: dict[str, int]
    frees: tuple[str, ...]

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.loop.steps


@dataclass(frozen=True)
class Schedule:
    """The segments of a pass that computes `outputs` (and the losses, when asked)."""

    segments: tuple[Segment | LoopSegment, ...]
    outputs: frozenset[str]

    @cached_property
    def steps(self) -> list[Step]:
        return [step for segment in self.segments for step in segment.steps]

    @cached_property
    def host_split(self) -> bool:
        """Whether an op of the pass splits its work over the host's threads."""
        return any(step.op.host_split for step in self.steps)


def schedule(plan: Plan, outputs) -> Schedule:
    """The segments that compute `outputs`, in the plan's order."""
    outputs = frozenset(outputs)
    steps = plan.steps_for(outputs)
    loop_of = {s.node: loop for loop in plan.loops for s in loop.steps}
    groups: list[list[Step] | Loop] = []
    for step in steps:
        loop = loop_of.get(step.node)
        if loop is None:
            if not groups or not isinstance(groups[-1], list):
                groups.append([])
            groups[-1].append(step)
        elif not groups or groups[-1] is not loop:
            groups.append(loop)
    timed = {n for n, t in plan.types.items() if t.seq and n not in plan.losses.values()}
    last = _last_readers(groups)
    segments = []
    for index, group in enumerate(groups):
        if isinstance(group, Loop):
            segments.append(_loop_segment(group, steps, outputs, timed, last, index))
        else:
            segments.append(_straight(group, outputs, last, index))
    return Schedule(tuple(segments), outputs)


def _reads(group) -> list[set[str]]:
    """The values each step of a straight group reads, or (one set) a loop reads from
    outside it."""
    if not isinstance(group, Loop):
        return [set(step.inputs) for step in group]
    inside = {s.node for s in group.steps} | {s.node for s in group.states}
    starts = {s.start for s in group.states if s.start is not None}
    return [({source for step in group.steps for source in step.inputs} | starts) - inside]


def _last_readers(groups) -> dict[str, tuple[int, int]]:
    """Value -> (group, step within it) of its last reader."""
    last = {}
    for g, group in enumerate(groups):
        for i, reads in enumerate(_reads(group)):
            for name in reads:
                last[name] = (g, i)
    return last


def _straight(steps: list[Step], outputs, last, index: int) -> Segment:
    frees: list[list[str]] = [[] for _ in steps]
    for name, (g, i) in last.items():
        if g == index and name not in outputs:
            frees[i].append(name)
    return Segment(tuple(steps), tuple(tuple(names) for names in frees))


def _loop_segment(loop: Loop, steps: list[Step], outputs, timed: set, last, index: int
                  ) -> LoopSegment:
    members = {s.node for s in loop.steps}
    states: dict[str, State] = {s.node: s for s in loop.states}
    routes = []
    for step in loop.steps:
        whole = whole_positions(step.op)
        route = []
        for position, source in enumerate(step.inputs):
            if position in whole:
                route.append(Route(WHOLE, source))  # the whole sequence at every step
            elif source in members:
                route.append(Route(MEMBER, source))
            elif source in states:
                route.append(Route(STATE, states[source]))
            else:
                route.append(Route(SEQ if source in timed else WHOLE, source))
        routes.append(tuple(route))
    read_outside = {s for step in steps if step.node not in members for s in step.inputs}
    sources = {s.source for s in loop.states}
    stored = tuple(s.node for s in loop.steps
                   if s.node in read_outside or s.node in sources or s.node in outputs)
    depth: dict[str, int] = {}
    for state in loop.states:
        depth[state.source] = max(depth.get(state.source, 0), state.delay)
    frees = [name for name, (g, _) in last.items() if g == index and name not in outputs]
    # kept at every step only for the states: not needed once the loop has run
    frees += [name for name in stored if name not in last and name not in outputs]
    return LoopSegment(loop, tuple(routes), stored, depth, tuple(frees))
