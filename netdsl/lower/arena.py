"""The arena: one block per executor in which each value whose op writes where it is told
(`Op.fills_out`) has a fixed place, so that a training step allocates nothing for it.

The memory plan gives every buffer of a step an interval (netdsl.lower.memory). The
arena lays out the values that may go there, those the gradient vector may hold
(`MemoryPlan.lodgeable`: made outside loops, never returned by a pass, in a network
with one loss) less those it does hold (`MemoryPlan.lodged`), at element offsets such
that two alive at once never overlap, each aligned to 64 bytes. Offsets are in
elements, so that one layout serves float32 and float64 executors.

A value may be read through a view after its own interval ends: an op that is not
`fresh` (flatten, split, dropout in evaluation) may return its input, and the view's
readers then read the arena's place. A place stays taken until the last of those
readers, not only its value's.

The arena is reserved for the whole step, so memory that the plan's slots shared
between one of its values and a later buffer (a gradient made in backward where a
value had died) could no longer be shared: the memory plan gives the arena only the
slots that hold nothing else (netdsl.lower.memory), so that its peak stays the same.
"""
from __future__ import annotations

from dataclasses import dataclass

from netdsl.lower.plan import Plan

__all__ = ["Arena", "ALIGN", "plan_arena", "slots_arena", "aliases_end", "roots", "viewed"]

# an offset is a multiple of this many elements: 64 bytes of float32, 128 of float64
ALIGN = 16


@dataclass(frozen=True)
class Arena:
    """Element offsets of the values the arena holds at `batch`, and its size."""

    batch: int
    offsets: dict[str, int]     # value -> element offset
    sizes: dict[str, int]       # value -> elements
    intervals: dict[str, tuple[int, int]]  # value -> steps its place is taken
    elements: int

    @property
    def bytes(self) -> int:
        """float32 bytes, as the plan counts."""
        return 4 * self.elements


def roots(plan: Plan) -> dict[str, frozenset]:
    """Per value, the value buffers it may be (a view of): a step whose op is not `fresh`
    may return any of its inputs, or a view of one; a chain's follower (`Step.in_place`)
    is its first step's buffer."""
    found: dict[str, frozenset] = {name: frozenset((name,)) for name in plan.inputs}
    for step in plan.steps:
        if step.in_place:
            found[step.node] = found.get(step.inputs[0], frozenset((step.inputs[0],)))
        elif step.op.fresh:
            found[step.node] = frozenset((step.node,))
        else:
            held = {step.node}
            for source in step.inputs:
                held |= found.get(source, frozenset((source,)))
            found[step.node] = frozenset(held)
    return found


def viewed(plan: Plan, names) -> set[str]:
    """The value buffers that `names` may be, or be views of (`roots`, for a few)."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        step = plan.by_node.get(name)
        if step is not None and (step.in_place or not step.op.fresh):
            todo += step.inputs[:1] if step.in_place else step.inputs
    return found


def aliases_end(plan: Plan, ends: dict[str, int]) -> dict[str, int]:
    """Per value buffer, the last step at which it may be read through itself or a view
    (`roots`); `ends` is each value buffer's interval end."""
    last = dict(ends)
    for node, held in roots(plan).items():
        end = ends.get(node)
        if end is None:
            continue
        for root in held:
            if root in last:
                last[root] = max(last[root], end)
    return last


def plan_arena(plan: Plan, memory, candidates: dict[str, int]) -> Arena:
    """The arena at `memory.batch` for `candidates` (value -> elements per example):
    largest first, each at the lowest aligned offset clear of every placed value whose
    place is taken at the same time."""
    values = {b.name: b for b in memory.buffers if b.kind == "value"}
    last = aliases_end(plan, memory.value_ends())
    intervals = {name: (values[name].start, last[name]) for name in candidates
                 if name in values}
    sizes = {name: candidates[name] * memory.batch for name in intervals}
    placed: list[tuple[int, int, int, int]] = []   # (lo, hi, start, end)
    offsets = {}
    for name in sorted(intervals, key=lambda n: (-sizes[n], intervals[n], n)):
        start, end = intervals[name]
        busy = sorted((lo, hi) for lo, hi, s, e in placed if s <= end and start <= e)
        at = 0
        for lo, hi in busy:
            if at + sizes[name] <= lo:
                break
            at = max(at, -(-hi // ALIGN) * ALIGN)
        offsets[name] = at
        placed.append((at, at + sizes[name], start, end))
    elements = max((hi for _, hi, _, _ in placed), default=0)
    return Arena(memory.batch, offsets, sizes, intervals, elements)


def slots_arena(batch: int, slots: list[tuple[int, dict[str, int]]],
                intervals: dict[str, tuple[int, int]]) -> Arena:
    """The arena as the memory plan's slots end to end: per slot (its elements, its
    values -> elements per example), each value at its slot's aligned start. Values of
    one slot are alive apart."""
    offsets, sizes, at = {}, {}, 0
    for elements, held in slots:
        for name, per_example in held.items():
            offsets[name], sizes[name] = at, per_example * batch
        at = -(-(at + elements) // ALIGN) * ALIGN
    return Arena(batch, offsets, sizes, {n: intervals[n] for n in offsets}, at)
