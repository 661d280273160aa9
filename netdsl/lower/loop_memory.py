"""What a loop's forward keeps for its backward, with and without `bptt(checkpoint=k)`.

Without checkpointing a training pass keeps, at every time step, each value a member's
backward reads (a dense layer's input, a sigmoid's output, a saved mask) and the members
stored for later (the loop's outputs and the values its states read). With it, it keeps
the outputs read after the loop for every step, each state's delayed values once per
span of k steps (the checkpoint), and, while backward recomputes a span, that span's k
steps of everything (runtime.recompute). The sequences a loop reads are its inputs,
counted by whoever made them, so neither figure holds them.

The figures are numbers per example; `LoopMemory.stored` turns them into bytes.
`recurrence_figures` gives them for every loop of a lowering (a compiled loop keeps what
its kernel keeps), and `outside_sequence_numbers` the sequence values the steps outside
the loops make (an input projection hoisted out of a recurrence, a per-step output layer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from netdsl.lower.schedule import MEMBER, STATE, LoopSegment
from netdsl.lower.memory import SMALL_SAVED
from netdsl.lower.native_loop import loop_kernel
from netdsl.ops.base import input_names

__all__ = ["LoopMemory", "loop_memory", "recurrence_figures", "outside_sequence_numbers"]


@dataclass(frozen=True)
class LoopMemory:
    """Per example: the numbers a loop keeps per step (`kept`), of them those read after
    the loop (`read_after`), and the numbers of one checkpoint (`checkpoint`)."""

    loop: str
    kept: int
    read_after: int
    checkpoint: int

    def stored(self, steps: int, batch: int, itemsize: int = 4, every: int | None = None
               ) -> int:
        """Bytes kept from the forward of `steps` steps for backward, at most at once:
        every step's, or with checkpoints every `every` steps those, the outputs and one
        span recomputed."""
        if every is None or every >= steps:
            numbers = self.kept * steps
        else:
            numbers = (self.read_after * steps + self.checkpoint * math.ceil(steps / every)
                       + self.kept * every)
        return numbers * batch * itemsize


def loop_memory(segment: LoopSegment, types: dict, kept: frozenset | None = None
                ) -> LoopMemory:
    """A loop's figures; `kept` names the members a compiled loop keeps at every step
    (netdsl.lower.native_loop's LoopKernel.kept), else they come from the ops' `keeps`."""
    numbers = ({node: types[node].size for node in kept} if kept is not None
               else _kept_by_ops(segment, types))
    after = [n for n in segment.stored if n not in segment.frees]
    checkpoint = sum(s.delay * types[s.source].size for s in segment.loop.states)
    return LoopMemory(segment.loop.name, sum(numbers.values()),
                      sum(types[n].size for n in after), checkpoint)


def _kept_by_ops(segment: LoopSegment, types: dict) -> dict[str, int]:
    """Value -> its numbers: the values a member's backward reads (each once, however
    many read it) and the stored members; an op's own saved array (a mask) counts as
    large as its output."""
    kept = {node: types[node].size for node in segment.stored}
    for step, route in zip(segment.steps, segment.routes):
        names = input_names(type(step.op))
        for name, r in zip(names, route):
            if name in step.op.keeps and r.kind in (MEMBER, STATE):
                node = r.ref if r.kind == MEMBER else r.ref.source
                kept[node] = types[node].size
        if "y" in step.op.keeps and "y" not in names:
            kept[step.node] = types[step.node].size
        for name in step.op.keeps:
            if name not in names and name != "y" and name not in step.params \
                    and name not in SMALL_SAVED:
                kept[f"{step.node}:{name}"] = types[step.node].size
    return kept


def recurrence_figures(lowered) -> list[tuple[LoopSegment, LoopMemory]]:
    """Each loop of `lowered`'s (a pipeline.Lowered) training pass with its figures."""
    backward = lowered.backward()
    return [(segment, loop_memory(segment, lowered.plan.types,
                                  _compiled_kept(lowered, segment, backward)))
            for segment in lowered.schedule.segments if isinstance(segment, LoopSegment)]


def outside_sequence_numbers(lowered) -> int:
    """Per example and time step, the numbers of the sequence values that the steps
    outside the loops of `lowered`'s training pass make."""
    types = lowered.plan.types
    return sum(types[step.node].size for segment in lowered.schedule.segments
               if not isinstance(segment, LoopSegment)
               for step in segment.steps if types[step.node].seq)


def _compiled_kept(lowered, segment: LoopSegment, backward) -> frozenset | None:
    """The members a compiled loop keeps at every step, or None (the NumPy loop's ops say)."""
    if lowered.target.name != "native":
        return None
    needs = {s.node: tuple(x is not None for x in backward.grad_inputs[s.node])
             for s in segment.steps if s.node in backward.grad_inputs}
    kernel = loop_kernel(segment, lowered.plan.types, "float32", needs, "long long", "gemm")
    return None if kernel is None else kernel.kept
