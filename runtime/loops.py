"""A loop segment forward and backward: the recurrence step by step, and BPTT.

A loop's steps, lowered once, are replayed T times; each member's inputs come by the
routes of its schedule (lower.schedule). Backward walks the steps in reverse, carrying
each state's gradient to the step it was read from. Truncated BPTT runs a long sequence
in chunks: the executor's `carry` hands the last states of one chunk to the next,
without a gradient, and `reach` stops a state's gradient that many steps back. In a
padded batch a state holds its value past its sequence's end.

These functions run inside an `Executor` pass and use its parameters, buffers,
contexts and gradient bookkeeping.
"""
from __future__ import annotations

from netdsl.lower import Backward, State, Step
from netdsl.lower.schedule import MEMBER, SEQ, STATE, LoopSegment
from netdsl.ops.base import Ctx

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
    """Run the loop over every time step; its stored members join `values`."""
    xp, B = ex.xp, ex.size
    T = ex.time[segment.loop.name] = _length(segment, values)
    lengths, source = loop_lengths(ex, segment)
    mask = None if lengths is None else xp.arange(T)[:, None] < lengths[None, :]  # (T, B)
    holds = set(segment.depth)  # a state's source keeps its value past a sequence's end
    stored = {node: xp.empty((T, B) + ex.plan.types[node].dims, dtype=ex.dtype)
              for node in segment.stored}
    ctxs = {step.node: [] for step in segment.steps}
    initial = {state.node: initial_values(ex, state, carry) for state in segment.loop.states}
    # what each member needs at every step, looked up once
    members = [(step, route, ex.param_args(step), ex.buffers[step.node], ctxs[step.node])
               for step, route in zip(segment.steps, segment.routes)]
    rng, dtype = ex.rng, ex.dtype
    for t in range(T):
        here = {}
        for step, route, kwargs, buffers, made in members:
            xs = []
            for kind, ref in route:
                if kind == MEMBER:
                    xs.append(here[ref])
                elif kind == STATE:
                    back = t - ref.delay
                    xs.append(stored[ref.source][back] if back >= 0
                              else initial[ref.node][back])
                elif kind == SEQ:
                    xs.append(values[ref][t])
                else:
                    xs.append(values[ref])
            ctx = Ctx(xp, training, rng, buffers, B, dtype)
            ctx.geometry = step.geometry
            if step.in_place:
                ctx.out = xs[0]
            y = step.op.forward(ctx, *xs, **kwargs)
            if mask is not None and t > 0 and step.node in holds:
                y = xp.where(_column(mask[t], y.ndim), y, stored[step.node][t - 1])
            here[step.node] = y
            if check_finite:
                ex.check(check_finite, y, step.node, "forward")
            made.append(ctx)
            if step.node in stored:
                stored[step.node][t] = y
    values.update(stored)
    ex.ctxs.update(ctxs)
    if lengths is not None:
        note_lengths(ex, segment, stored, source, mask)
    for source, depth in segment.depth.items():
        ex.carry[source] = stored[source][max(T - depth, 0):] if T >= depth else None


def initial_values(ex, state: State, carry: dict):
    """The values a state reads before step 0, indexed -delay..-1 (from the end)."""
    xp, dims = ex.xp, ex.plan.types[state.source].dims
    carried = carry.get(state.source)
    if carried is not None:
        return carried
    if state.init == "learned":
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
    """BPTT through the loop: gradients of the values it read join `grads`."""
    xp, T = ex.xp, ex.time[segment.loop.name]
    steps = [(step, route) for step, route in zip(segment.steps, segment.routes)
             if step.node in wanted]
    outside = {step.node: grads.pop(step.node) for step, _ in steps if step.node in grads}
    delayed = {source: xp.zeros((T, ex.size) + ex.plan.types[source].dims, ex.dtype)
               for source in segment.depth}
    # per step: gradient arrays added from outside the step, and whether backward
    # leaves its parameter gradients to one call over all steps stacked
    extras = {step.node: [a for a in (outside.get(step.node), delayed.get(step.node))
                          if a is not None] for step, _ in steps}
    needs = {step.node: tuple(x is not None for x in backward.grad_inputs[step.node])
             for step, _ in steps}
    stacked = {step.node: _Stack(step, T) for step, _ in steps
               if step.op.stackable and step.params}
    seq_grads: dict = {}
    init_grads: dict = {}
    init_owned: set = set()
    cut = 0 if ex.reach is None else T - ex.reach
    mask = ex.loop_masks.get(segment.loop.name)
    for t in reversed(range(T)):
        here: dict = {}
        mine: set = set()  # gradients in `here` that this loop allocated and may add into
        for step, route in reversed(steps):
            gy = here.pop(step.node, None)
            for extra in extras[step.node]:
                gy = extra[t] if gy is None else gy + extra[t]
            if gy is None:
                continue
            if mask is not None and t > 0 and step.node in delayed:
                # past a sequence's end the state was held: its gradient goes to step t-1
                # (a zero of gy's own dtype: no promotion, whatever an array module's rule
                # for a Python scalar)
                keep, zero = _column(mask[t], gy.ndim), gy.dtype.type(0)
                delayed[step.node][t - 1] += xp.where(keep, zero, gy)
                gy = xp.where(keep, gy, zero)
            ctx = ex.ctxs[step.node][t]
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
            ctx.needs_input_grad = needs[step.node]
            stack = stacked.get(step.node)
            if stack is not None:
                ctx.needs_param_grads = False
                stack.add(t, ctx, gy)
            input_grads, param_grads = step.op.backward(ctx, gy)
            ctx.saved.clear()
            for (kind, ref), target, grad in zip(route, targets, input_grads):
                if target is None or grad is None:
                    continue
                if check_finite:
                    ex.check(check_finite, grad, step.node, "backward")
                if kind == MEMBER:
                    add_grad(here, mine, ref, grad)
                elif kind == STATE:
                    back = t - ref.delay
                    if back >= cut:
                        delayed[ref.source][back] += grad
                    elif back < 0 and cut <= 0 and ref.param is not None and not ex.carried:
                        add_grad(init_grads, init_owned, ref.param, grad.sum(axis=0))
                elif kind == SEQ:
                    if ref not in seq_grads:
                        seq_grads[ref] = xp.zeros((T,) + grad.shape, dtype=ex.dtype)
                    seq_grads[ref][t] += grad
                else:
                    add_grad(grads, owned, ref, grad)
            ex.store_param_grads(step, param_grads)
    for stack in stacked.values():
        ex.store_param_grads(stack.step, stack.param_grads(xp, ex.param_args(stack.step)))
    for ref, grad in seq_grads.items():
        add_grad(grads, owned, ref, grad)
    for key, grad in init_grads.items():
        ex.store_param_grad(key, grad)


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
