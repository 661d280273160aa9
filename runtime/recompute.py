"""Gradient checkpointing of a loop, `bptt(checkpoint=k)`: BPTT that keeps states, not steps.

Without it a loop's forward keeps, for every time step, what its backward reads: each
op's saved arrays (or, compiled, each member's values). With it the forward runs the
loop in spans of k steps and keeps only the values read after the loop and, per span,
the values its states read from before its first step (the checkpoint: `delay` rows of
each state). Backward walks the spans in reverse: it reruns each span's forward from its
checkpoint, keeping what its backward needs for those k steps only, then runs BPTT over
it; a gradient that reaches back before the span's first step waits in `Handback` for
the span that computed that value. Memory falls from T steps' worth to k steps' plus
T/k checkpoints; time grows by one more forward.

These helpers are shared by the interpreted loop (runtime.loops) and the compiled one
(runtime.native.loops); both run a span as a loop of its own whose initial values are
the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from netdsl.lower.schedule import MEMBER, SEQ, STATE, LoopSegment
from netdsl.ops.base import Ctx, input_names

__all__ = ["Checkpoints", "Handback", "Remade", "loop_inputs", "span_rows", "spans",
           "span_initials", "advance_tail", "value_before"]


def spans(steps: int, every: int) -> list[tuple[int, int]]:
    """The [start, stop) spans of `every` steps (the last may be shorter)."""
    return [(start, min(start + every, steps)) for start in range(0, steps, every)]


def span_initials(xp, states, initial: dict, tail: dict, start: int) -> dict:
    """What each state reads before step `start`, as `initial_values` gives it for step 0
    (delay rows, oldest first): the loop's initial values before step 0, the source's
    computed values (`tail`, its last rows so far) after."""
    out = {}
    for state in states:
        d = state.delay
        if start == 0:
            out[state.node] = initial[state.node]
        elif start >= d:
            out[state.node] = tail[state.source][-d:]
        else:
            out[state.node] = xp.concatenate([initial[state.node][start:],
                                              tail[state.source][-start:]])
    return out


def value_before(states, initials: dict, start: int) -> dict:
    """Each state source's value at step start - 1, which a padded sequence that has ended
    holds at `start` (none before step 0: a sequence has at least one step)."""
    if start == 0:
        return {}
    return {state.source: initials[state.node][-1] for state in states}


def advance_tail(xp, tail: dict, stored: dict, depth: dict) -> dict:
    """The sources' last rows after a span whose values are `stored` (copies: a span's
    arrays are reused by the next)."""
    out = {}
    for source, rows in depth.items():
        made = stored[source]
        joined = made if source not in tail else xp.concatenate([tail[source], made])
        out[source] = xp.array(joined[-rows:], copy=True)
    return out


@dataclass
class Checkpoints:
    """What a checkpointed forward leaves for its backward: per span (start, stop, each
    state's initial values, the random state it began with), the inputs it read, its
    (T, B) mask of valid steps in a padded batch."""

    spans: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    mask: object = None


class Handback:
    """Gradients of a loop's values at steps before the span whose backward made them,
    held until the backward of the span that computed them: (source, step) -> gradient."""

    def __init__(self):
        self.grads: dict[tuple[str, int], object] = {}

    def give(self, source: str, step: int, grad) -> None:
        key = (source, step)
        self.grads[key] = grad if key not in self.grads else self.grads[key] + grad

    def take(self, source: str, start: int, stop: int):
        """(step - start, gradient) for each gradient of `source` in [start, stop)."""
        found = sorted(key for key in self.grads if key[0] == source and start <= key[1] < stop)
        return [(key[1] - start, self.grads.pop(key)) for key in found]


class Remade:
    """A sequence the loop alone reads, made by a linear map outside it (the input
    projection hoisting takes out of an LSTM): rather than keep it, as large as the
    gates, a span's rows are made again from the inputs the map's backward keeps."""

    def __init__(self, ex, step, inputs: list):
        self.ex, self.step, self.inputs = ex, step, inputs

    def rows(self, start: int, stop: int):
        ex, B = self.ex, self.ex.size
        ctx = Ctx(ex.xp, False, None, {}, (stop - start) * B, ex.dtype)
        ctx.geometry = self.step.geometry
        y = self.step.op.forward(ctx, *(x[start * B:stop * B] for x in self.inputs),
                                 **ex.param_args(self.step))
        return y.reshape((stop - start, B) + y.shape[1:])


def loop_inputs(ex, segment: LoopSegment, values: dict) -> dict:
    """What a loop reads from outside it, for its spans' recomputation: each value, or a
    `Remade` for a sequence that dies with the loop and that a linear map (whose saved
    inputs stay until its own backward, after the loop's) made."""
    out = {}
    for route in segment.routes:
        for r in route:
            if r.kind in (MEMBER, STATE) or r.ref in out:
                continue
            out[r.ref] = (_remade(ex, segment, r.ref) if r.kind == SEQ else None) or values[r.ref]
    return out


def _remade(ex, segment: LoopSegment, ref: str) -> Remade | None:
    step = ex.plan.by_node.get(ref)
    ctx = ex.ctxs.get(ref)
    if (step is None or ref not in segment.frees or not step.op.column_linear
            or ref not in ex.time or not isinstance(ctx, Ctx)):
        return None
    names = input_names(type(step.op))[:len(step.inputs)]
    if any(name not in step.op.keeps or name not in ctx.saved for name in names):
        return None
    return Remade(ex, step, [ctx.saved[name] for name in names])


def span_rows(value, start: int, stop: int):
    """Steps [start, stop) of a loop input `loop_inputs` gave."""
    return value.rows(start, stop) if isinstance(value, Remade) else value[start:stop]
