"""A loop segment forward and backward: the recurrence step by step, and BPTT.

A loop's steps, lowered once, are replayed T times; each member's inputs come by the
routes of its schedule (lower.schedule). Backward walks the steps in reverse, carrying
each state's gradient to the step it was read from. Truncated BPTT runs a long sequence
in chunks: the executor's `carry` hands the last states of one chunk to the next,
without a gradient, and `reach` stops a state's gradient that many steps back. In a
padded batch a state holds its value past its sequence's end. Under the executor's
`checkpoint` a training pass runs the loop in spans, keeping only their states, and
backward recomputes each span before its BPTT (runtime.recompute).

These functions run inside an `Executor` pass and use its parameters, buffers,
contexts and gradient bookkeeping.
"""
from __future__ import annotations

from netdsl.errors import SpecError
from netdsl.lower import Backward, State, Step
from netdsl.lower.schedule import MEMBER, SEQ, STATE, LoopSegment
from netdsl.ops.base import Ctx
from netdsl.runtime.host import on_host
from netdsl.runtime.recompute import (Checkpoints, Handback, advance_tail, loop_inputs,
                                      span_initials, span_rows, spans, value_before)

__all__ = ["forward_loop", "backward_loop", "add_grad", "initial_values", "loop_lengths",
           "note_lengths"]


def add_grad(grads: dict, owned: set, target: str, grad, fresh: bool = False) -> None:
    """Keep a gradient contribution as its value's gradient, or add it to the one there:
    into it when this pass made that array (`owned`), else into a new one (an op's
    returned gradient may alias another value's). A `fresh` contribution is an array
    nothing else holds: kept, it is owned."""
    if target not in grads:
        grads[target] = grad
        if fresh:
            owned.add(target)
    elif target in owned:
        grads[target] += grad
    else:
        grads[target] = grads[target] + grad
        owned.add(target)


def forward_loop(ex, segment: LoopSegment, values: dict, training: bool, carry: dict,
                 check_finite: bool) -> None:
    """Run the loop over every time step; its stored members join `values`. Under
    `ex.checkpoint` a training pass keeps the states of every k-th step instead of what
    each step's backward reads (runtime.recompute)."""
    xp, B = ex.xp, ex.size
    T = ex.time[segment.loop.name] = _length(segment, values)
    lengths, source = loop_lengths(ex, segment)
    mask = None if lengths is None else xp.arange(T)[:, None] < lengths[None, :]  # (T, B)
    initial = {state.node: initial_values(ex, state, carry, values)
               for state in segment.loop.states}
    every = ex.checkpoint if training else None
    if every is not None and every < T:
        stored, tail = _forward_spans(ex, segment, values, T, initial, mask, every,
                                      check_finite)
    else:
        stored = {node: xp.empty((T, B) + ex.plan.types[node].dims, dtype=ex.dtype)
                  for node in segment.stored}
        ctxs = {step.node: [] for step in segment.steps}
        run_steps(ex, segment, training, values, 0, T, stored, initial, mask, {}, ctxs,
                  check_finite)
        ex.ctxs.update(ctxs)
        tail = {node: stored[node][max(T - depth, 0):] for node, depth in
                segment.depth.items()}
    values.update(stored)
    if lengths is not None:
        note_lengths(ex, segment, stored, source, mask)
    for source, depth in segment.depth.items():
        ex.carry[source] = tail[source] if T >= depth else None


def run_steps(ex, segment: LoopSegment, training: bool, values: dict, start: int, stop: int,
              stored: dict, initial: dict, mask, before: dict, ctxs: dict | None,
              check_finite: bool, origin: int = 0) -> None:
    """Steps [start, stop) of the loop: `stored` and each state's `initial` values are
    those of this span (row 0 is step `start`), `values` the loop's inputs, a sequence's
    row 0 being step `origin`; `before` holds each state source's value at step start - 1
    (for a padded sequence that has ended). Each step's contexts join `ctxs` (None: they
    are dropped)."""
    xp, B, dtype, rng = ex.xp, ex.size, ex.dtype, ex.rng
    observer = ex.observer  # runtime.diagnostics: sees each member's value at every step
    holds = set(segment.depth)  # a state's source keeps its value past a sequence's end
    # what each member needs at every step, looked up once
    members = [(step, route, ex.param_args(step), ex.buffers[step.node],
                None if ctxs is None else ctxs[step.node],
                ex.whole_lengths(step) if ex.lengths else None)
               for step, route in zip(segment.steps, segment.routes)]
    for t in range(stop - start):
        now = start + t
        here = {}
        for step, route, kwargs, buffers, made, whole_lengths in members:
            xs = []
            for kind, ref in route:
                if kind == MEMBER:
                    xs.append(here[ref])
                elif kind == STATE:
                    back = t - ref.delay
                    xs.append(stored[ref.source][back] if back >= 0
                              else initial[ref.node][back])
                elif kind == SEQ:
                    xs.append(values[ref][now - origin])
                else:
                    xs.append(values[ref])
            ctx = Ctx(xp, training, rng, buffers, B, dtype)
            ctx.geometry = step.geometry
            ctx.lengths = whole_lengths  # attention's memory: its padded steps stay unread
            if step.in_place:
                ctx.out = xs[0]
            y = step.op.forward(ctx, *xs, **kwargs)
            ctx.out = None  # the context would hold the array after its value is freed
            if mask is not None and step.node in holds and (t > 0 or step.node in before):
                last = stored[step.node][t - 1] if t > 0 else before[step.node]
                y = xp.where(_column(mask[now], y.ndim), y, last)
            here[step.node] = y
            if observer is not None:
                observer.value(step.node, y)
            if check_finite:
                ex.check(check_finite, y, step.node, "forward")
            if made is not None:
                made.append(ctx)
            if step.node in stored:
                stored[step.node][t] = y


def _forward_spans(ex, segment: LoopSegment, values: dict, T: int, initial: dict, mask,
                   every: int, check_finite: bool) -> tuple[dict, dict]:
    """The checkpointed forward: spans of `every` steps whose contexts are dropped. The
    members read after the loop are kept whole, the others for one span; per span the
    states' initial values are kept for backward (`ex.recompute`). Returns (the members
    read after the loop, the state sources' last rows)."""
    xp, B = ex.xp, ex.size
    _check_replayable(ex, segment)
    after = [n for n in segment.stored if n not in segment.frees]
    dims = {n: ex.plan.types[n].dims for n in segment.stored}
    whole = {n: xp.empty((T, B) + dims[n], dtype=ex.dtype) for n in after}
    scratch = {n: xp.empty((every, B) + dims[n], dtype=ex.dtype)
               for n in segment.stored if n not in whole}
    saved = Checkpoints(inputs=loop_inputs(ex, segment, values), mask=mask)
    tail: dict = {}
    states = segment.loop.states
    for start, stop in spans(T, every):
        initials = span_initials(xp, states, initial, tail, start)
        stored = _span_arrays(whole, scratch, start, stop)
        saved.spans.append((start, stop, initials, ex.rng_state()))
        run_steps(ex, segment, True, values, start, stop, stored, initials, mask,
                  value_before(states, initials, start), None, check_finite)
        tail = advance_tail(xp, tail, stored, segment.depth)
    ex.recompute[segment.loop.name] = saved
    return whole, tail


def _check_replayable(ex, segment: LoopSegment) -> None:
    """A recomputed span draws its masks again from the state the generator had: NumPy's
    can be restored, a GPU's counted stream only at a pass's start."""
    if on_host(ex.xp):
        return
    for step in segment.steps:
        if step.op.draws:
            raise SpecError(f"bptt(checkpoint=...) recomputes the recurrence, but on the GPU "
                            f"'{step.op.name}' inside it would draw other random numbers",
                            ex.plan.graph.nodes.get(step.node, {}).get("span"),
                            "train on the CPU, or remove checkpoint from bptt(...)")


def _span_arrays(whole: dict, scratch: dict, start: int, stop: int) -> dict:
    """A span's rows of the members: views of the whole arrays, or of scratch room."""
    return {**{n: a[start:stop] for n, a in whole.items()},
            **{n: a[:stop - start] for n, a in scratch.items()}}


def _recompute_span(ex, segment: LoopSegment, saved: Checkpoints, start: int, stop: int,
                    initials: dict, rng_state) -> dict:
    """A span's forward again, from its checkpoint, with the random draws it made the
    first time and without counting statistics twice: the contexts its backward reads."""
    xp, B = ex.xp, ex.size
    stored = {n: xp.empty((stop - start, B) + ex.plan.types[n].dims, dtype=ex.dtype)
              for n in segment.stored}
    ctxs = {step.node: [] for step in segment.steps}
    resume, kept = ex.rng_state(), dict(ex.buffers)
    ex.set_rng_state(rng_state)
    observer, ex.observer = ex.observer, None  # the first forward showed it these values
    # running statistics (batchnorm in a step) were updated by the first forward
    for step in segment.steps:
        ex.buffers[step.node] = {k: xp.array(v, copy=True) for k, v in kept[step.node].items()}
    seqs = {r.ref for route in segment.routes for r in route if r.kind == SEQ}
    inputs = {ref: span_rows(value, start, stop) if ref in seqs else value
              for ref, value in saved.inputs.items()}
    try:
        run_steps(ex, segment, True, inputs, start, stop, stored, initials, saved.mask,
                  value_before(segment.loop.states, initials, start), ctxs, False, start)
    finally:
        ex.buffers.update(kept)
        ex.set_rng_state(resume)
        ex.observer = observer
    return ctxs


def initial_values(ex, state: State, carry: dict, values: dict):
    """The values a state reads before step 0, indexed -delay..-1 (from the end)."""
    xp, dims = ex.xp, ex.plan.types[state.source].dims
    carried = carry.get(state.source)
    if carried is not None:
        return carried
    if state.start is not None:  # a value of this pass: `= last(encoded)`
        one = values[state.start]
    elif state.init == "learned":
        one = xp.broadcast_to(ex.params[state.param], (ex.size,) + dims)
    else:
        value = 0.0 if state.init == "zeros" else float(state.init)
        one = xp.full((ex.size,) + dims, value, dtype=ex.dtype)
    return xp.broadcast_to(one, (state.delay,) + one.shape)


def _length(segment: LoopSegment, values: dict) -> int:
    """A recurrence runs for as many steps as the sequences it reads have."""
    for route in segment.routes:
        for r in route:
            if r.kind == SEQ:
                return int(values[r.ref].shape[0])
    raise AssertionError(f"{segment.loop.name}: build_plan lets no loop without a sequence")


def note_lengths(ex, segment: LoopSegment, stored, source: str, mask) -> None:
    """What a loop over a padded batch tells the rest of the pass: the stored members'
    lengths are those of the sequence it read, and its (T, B) mask of valid steps."""
    lengths, host = ex.lengths[source], ex.host_lengths[source]
    ex.lengths.update({node: lengths for node in stored})
    ex.host_lengths.update({node: host for node in stored})
    ex.loop_masks[segment.loop.name] = mask


def loop_lengths(ex, segment: LoopSegment):
    """(valid steps per example, the sequence they are known for) of the sequences a loop
    reads; (None, None) when every step is valid."""
    for route in segment.routes:
        for r in route:
            if r.kind == SEQ and r.ref in ex.lengths:
                return ex.lengths[r.ref], r.ref
    return None, None


def _column(mask, ndim: int):
    """A (B,) mask shaped to broadcast over a (B, ...) value."""
    return mask.reshape(mask.shape + (1,) * (ndim - 1))


def backward_loop(ex, segment: LoopSegment, grads: dict, owned: set, backward: Backward,
                  wanted: set, check_finite: bool) -> None:
    """BPTT through the loop: gradients of the values it read join `grads`. After a
    checkpointed forward each span is recomputed, then differentiated, last span first."""
    T = ex.time[segment.loop.name]
    steps = [(step, route) for step, route in zip(segment.steps, segment.routes)
             if step.node in wanted]
    bptt = _Bptt(ex, segment, steps, backward, check_finite, T, grads, owned)
    outside = {step.node: grads.pop(step.node) for step, _ in steps if step.node in grads}
    saved = ex.recompute.pop(segment.loop.name, None)
    if saved is None:
        bptt.span(0, T, ex.ctxs, outside, ex.loop_masks.get(segment.loop.name), None)
    else:
        handback = Handback()
        for start, stop, initials, rng_state in reversed(saved.spans):
            ctxs = _recompute_span(ex, segment, saved, start, stop, initials, rng_state)
            bptt.span(start, stop, ctxs, {n: g[start:stop] for n, g in outside.items()},
                      saved.mask, handback)
    for ref, grad in bptt.seq_grads.items():
        add_grad(grads, owned, ref, grad)
    for key, grad in bptt.init_grads.items():
        ex.store_param_grad(key, grad)


class _Bptt:
    """BPTT over the spans of one loop, last span first: what the spans share, and the
    gradients of the sequences read and of learned initial states, summed over them."""

    def __init__(self, ex, segment: LoopSegment, steps, backward: Backward, check_finite: bool,
                 T: int, grads: dict, owned: set):
        self.ex, self.segment, self.steps, self.backward = ex, segment, steps, backward
        self.grads, self.owned = grads, owned   # the pass's: whole values read get theirs
        self.check_finite, self.T = check_finite, T
        self.needs = {step.node: tuple(x is not None for x in backward.grad_inputs[step.node])
                      for step, _ in steps}
        self.seq_grads: dict = {}
        self.init_grads: dict = {}
        self.init_owned: set = set()
        self.cut = 0 if ex.reach is None else T - ex.reach

    def span(self, start: int, stop: int, ctxs: dict, outside: dict, mask,
             handback: Handback | None) -> None:
        """BPTT over steps [start, stop), whose contexts are `ctxs` (row 0 is step
        `start`) and whose stored members' gradients from after the loop are `outside`.
        A gradient of a value computed before `start` goes to `handback` (None: the span
        starts at step 0)."""
        ex, segment, backward, steps = self.ex, self.segment, self.backward, self.steps
        xp, n, cut = ex.xp, stop - start, self.cut
        delayed = {source: xp.zeros((n, ex.size) + ex.plan.types[source].dims, ex.dtype)
                   for source in segment.depth}
        if handback is not None:
            for source, rows in delayed.items():
                for row, grad in handback.take(source, start, stop):
                    rows[row] += grad
        # per step: gradient arrays added from outside the step, and whether backward
        # leaves its parameter gradients to one call over all steps stacked
        extras = {step.node: [a for a in (outside.get(step.node), delayed.get(step.node))
                              if a is not None] for step, _ in steps}
        stacked = {step.node: _Stack(step, n) for step, _ in steps
                   if step.op.stackable and step.params}
        for t in reversed(range(n)):
            now = start + t
            here: dict = {}
            mine: set = set()  # gradients in `here` that this loop allocated and may add into
            for step, route in reversed(steps):
                gy = here.pop(step.node, None)
                for extra in extras[step.node]:
                    gy = extra[t] if gy is None else gy + extra[t]
                if gy is None:
                    continue
                if mask is not None and now > 0 and step.node in delayed:
                    # past a sequence's end the state was held: its gradient goes to step t-1
                    # (a zero of gy's own dtype: no promotion, whatever an array module's
                    # rule for a Python scalar)
                    keep, zero = _column(mask[now], gy.ndim), gy.dtype.type(0)
                    held = xp.where(keep, zero, gy)
                    if t > 0:
                        delayed[step.node][t - 1] += held
                    else:
                        handback.give(step.node, now - 1, held)
                    gy = xp.where(keep, gy, zero)
                if ex.observer is not None:  # runtime.diagnostics: this step's share
                    ex.observer.gradient(step.node, gy)
                ctx = ctxs[step.node][t]
                targets = backward.grad_inputs[step.node]
                region = step.op.grad_region(ctx)
                if region is not None and route[0].kind == MEMBER and targets[0] is not None:
                    # the chunks' gradients fill one array instead of one zero array each
                    ref = route[0].ref
                    if ref not in mine:
                        base = xp.zeros(region[0], dtype=ex.dtype)
                        if ref in here:
                            base += here[ref]
                        here[ref] = base
                        mine.add(ref)
                    here[ref][region[1]] += gy
                    continue
                ctx.needs_input_grad = self.needs[step.node]
                stack = stacked.get(step.node)
                if stack is not None:
                    ctx.needs_param_grads = False
                    stack.add(t, ctx, gy)
                input_grads, param_grads = step.op.backward(ctx, gy)
                ctx.saved.clear()
                for (kind, ref), target, grad in zip(route, targets, input_grads):
                    if target is None or grad is None:
                        continue
                    if self.check_finite:
                        ex.check(self.check_finite, grad, step.node, "backward")
                    if kind == MEMBER:
                        add_grad(here, mine, ref, grad)
                    elif kind == STATE:
                        self._to_state(ref, now - ref.delay, grad, delayed, start, handback)
                    elif kind == SEQ:
                        if ref not in self.seq_grads:
                            self.seq_grads[ref] = xp.zeros((self.T,) + grad.shape,
                                                           dtype=ex.dtype)
                        self.seq_grads[ref][now] += grad
                    else:
                        add_grad(self.grads, self.owned, ref, grad)
                ex.store_param_grads(step, param_grads)
        for stack in stacked.values():
            ex.store_param_grads(stack.step, stack.param_grads(xp, ex.param_args(stack.step)))

    def _to_state(self, state: State, back: int, grad, delayed: dict, start: int,
                  handback: Handback | None) -> None:
        """A state's gradient, read at step back + delay: to its source's value at step
        `back` (in this span, or an earlier one's), or to a learned initial value, or to
        the value it started from."""
        if back >= 0 and back >= self.cut:
            if back >= start:
                delayed[state.source][back - start] += grad
            else:
                handback.give(state.source, back, grad)
        elif back < 0 and self.cut <= 0 and state.param is not None and not self.ex.carried:
            add_grad(self.init_grads, self.init_owned, state.param, grad.sum(axis=0))
        elif back < 0 and self.cut <= 0 and state.start is not None and not self.ex.carried:
            add_grad(self.grads, self.owned, state.start, grad)  # into what it started from


class _Stack:
    """A stackable op's saved inputs and output gradients over the steps of a loop, so
    that its parameter gradients come from one backward call over T*B rows."""

    def __init__(self, step: Step, steps: int):
        self.step, self.steps = step, steps
        self.saved: dict = {}
        self.gy = None

    def add(self, t: int, ctx: Ctx, gy) -> None:
        xp = ctx.xp
        if self.gy is None:
            self.gy = xp.zeros((self.steps,) + gy.shape, dtype=gy.dtype)
            self.names = [n for n in self.step.op.keeps if n not in self.step.params]
            self.saved = {n: xp.zeros((self.steps,) + ctx.saved[n].shape, ctx.saved[n].dtype)
                          for n in self.names}
        self.gy[t] = gy
        for name in self.names:
            self.saved[name][t] = ctx.saved[name]

    def param_grads(self, xp, params: dict) -> dict:
        if self.gy is None:
            return {}
        ctx = Ctx(xp)
        ctx.saved = {n: a.reshape((-1,) + a.shape[2:]) for n, a in self.saved.items()}
        ctx.saved.update({n: params[n] for n in self.step.op.keeps if n in params})
        ctx.needs_input_grad = (False,) * len(self.step.inputs)
        _, grads = self.step.op.backward(ctx, self.gy.reshape((-1,) + self.gy.shape[2:]))
        return grads
