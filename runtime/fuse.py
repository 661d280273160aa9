"""Pass 8, fuse: chains of elementwise ops that run as one step.

A chain starts at any op and continues through elementwise ops (the `elementwise`
flag of the op library) as long as the value between two members has one reader,
is not an output, and nobody keeps it for backward. Inside a chain no
intermediate value outlives its reader, so:

- the NumPy executor runs each member after the first in place, writing its
  result over the previous member's output (`out=`), and a chain allocates only
  its first output;
- the CuPy executor compiles the elementwise members into one kernel.

The backward of a chain is the same members in reverse order.
"""
from __future__ import annotations

from dataclasses import dataclass

from netdsl.ops.base import input_names
from netdsl.runtime.plan import Plan

__all__ = ["Group", "fuse"]


@dataclass(frozen=True)
class Group:
    """Forward steps (by node) that run as one: `nodes[0]` and its elementwise followers."""

    nodes: tuple[str, ...]

    @property
    def head(self) -> str:
        return self.nodes[0]


def fuse(plan: Plan, outputs: set[str] = frozenset()) -> list[Group]:
    """Partition the plan's forward steps into chains, in schedule order.

    `outputs` are values the caller reads after the step (losses are always outputs).
    """
    readers: dict[str, list] = {}
    for step in plan.steps:
        for source in set(step.inputs):
            readers.setdefault(source, []).append(step)
    outputs = set(outputs) | set(plan.losses.values())
    groups: list[list[str]] = []
    tail: dict[str, int] = {}   # last node of a chain -> its index in groups
    for step in plan.steps:
        source = step.inputs[0] if step.inputs else None
        if source in tail and _joins(plan, step, source, readers, outputs):
            index = tail.pop(source)
            groups[index].append(step.node)
        else:
            index = len(groups)
            groups.append([step.node])
        tail[step.node] = index
    return [Group(tuple(nodes)) for nodes in groups]


def _joins(plan: Plan, step, source: str, readers: dict, outputs: set) -> bool:
    """May `step` run in place over `source`, the output of the chain before it?"""
    if not (step.op.elementwise and step.op.inplace):
        return False
    if source in outputs or len(readers.get(source, ())) != 1 or step.inputs.count(source) != 1:
        return False
    producer = plan.step_of(source)
    if not producer.op.fresh:  # a view of another value must not be overwritten
        return False
    # nobody may keep the value: not its producer (as "y") and not this reader (as an input)
    first_name = input_names(type(step.op))[0]
    kept_by_reader = first_name in step.op.keeps
    kept_by_producer = "y" in producer.op.keeps and "y" not in input_names(type(producer.op))
    return not (kept_by_reader or kept_by_producer)
