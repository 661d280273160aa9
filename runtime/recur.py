"""The sequence executor: a plan whose values have a time axis, with backpropagation through time.

A sequence value is held time-major, (T, B, *dims), so step t of it is one
contiguous (B, *dims) block. What does not depend on a recurrent state runs once
for all steps: a per-step op folds time into the batch, (T*B, *dims), so the input
projections W x_t of every step are one GEMM and their weight gradients another.
Only a recurrence (plan.Loop) runs step by step: its ops, compiled into the plan
once, are replayed T times, and its backward walks the steps in reverse, carrying
each state's gradient to the step it was read from (BPTT). Truncated BPTT runs a
long sequence in chunks: `carry` hands the last states of one chunk to the next,
without a gradient. A batch may pad sequences of different lengths (`NAME.lengths`):
a state then holds its value past its sequence's end, a loss leaves the padded rows
out, and whole-sequence ops read `ctx.lengths`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netdsl.ops.base import Ctx
from netdsl.ops.kernels import to_host
from netdsl.runtime.execute import Executor, NonFinite
from netdsl.runtime.fused import kernel_plan
from netdsl.runtime.hoist import hoist
from netdsl.runtime.plan import Backward, Loop, Plan, State, Step
from netdsl.shapes import whole_positions

__all__ = ["SequenceExecutor"]

# where a loop member's input comes from at step t
_MEMBER, _STATE, _SEQ, _WHOLE = range(4)


@dataclass(frozen=True)
class _LoopRun:
    """A loop compiled for one set of kept values: input routes and the members to store."""

    loop: Loop
    routes: tuple[tuple[tuple[int, object], ...], ...]  # per step, per input: (kind, ref)
    stored: tuple[str, ...]   # members whose value at every step is kept as a (T, B, ...) array
    depth: dict               # state source -> the most steps back any state reads it


class SequenceExecutor(Executor):
    """Runs sequence networks; the same parameters, buffers and state as Executor.

    It runs the hoisted plan (runtime.hoist); `backward` takes the Backward of the plan
    it was given, which has the same losses and parameters. After a forward pass `carry`
    holds, per state source, its values at the last steps (as many as the longest delay
    reads), ready to start the next chunk of a sequence.
    """

    def __init__(self, plan: Plan, params: dict, seed: int = 0, xp=np, dtype: str = "float32",
                 order=None, fused: bool = False):
        super().__init__(hoist(plan), params, seed, xp, dtype, order)
        # with `fused`, elementwise chains run as generated kernels (runtime.fused), inside
        # loops too; the plan is rewritten per set of values asked for, from this one
        self.fused, self.hoisted = fused, self.plan
        self._views: dict[frozenset, tuple] = {}
        # values with a time axis; a loss over a sequence is one number all the same
        losses = set(plan.losses.values())
        self._timed = {n for n, t in self.plan.types.items() if t.seq and n not in losses}
        self._view(self.plan)
        self._time: dict[str, int] = {}  # node or loop -> the steps it ran over
        self._segments: dict[frozenset, list] = {}
        self._last: list = []  # the segments the last forward ran, which backward reverses
        self.carry: dict | None = None
        # truncated BPTT's k2: a state's gradient reaches only the chunk's last `reach` steps
        self.reach: int | None = None

    # ---- forward

    def forward(self, batch: dict, training: bool, keep=(), check_finite: bool = False,
                losses: bool = True, carry: dict | None = None) -> dict:
        """Run the network over whole sequences; see Executor.forward.

        `batch` arrays are batch-major, (B, T, ...) for sequences, and so are the kept
        values returned. `carry` (a previous forward's `self.carry`) replaces the states'
        initial values, as truncated BPTT's next chunk does.
        """
        self._begin_pass()
        keep = frozenset(keep) | (frozenset(self.hoisted.losses.values()) if losses
                                  else frozenset())
        if self.fused:
            if keep not in self._views:
                self._views[keep] = kernel_plan(self.hoisted, set(keep))
            self._view(self._views[keep])
        plan = self.plan
        segments = self._last = self._segments_for(keep)
        values = {name: self._time_major(batch[name], name) for name in plan.inputs if name in batch}
        self.size = self._extent(values)
        self._time = {}
        # valid steps per example, per sequence value: from `NAME.lengths` in the batch,
        # passed on to what is computed from it; absent when every sequence is full. The
        # host keeps a copy, from which the rows a loss keeps are found without reading
        # the device
        self._host_lengths = {name: to_host(self.xp, batch[f"{name}.lengths"])
                              for name in values if f"{name}.lengths" in batch}
        self._lengths = {name: self.xp.asarray(lengths)
                         for name, lengths in self._host_lengths.items()}
        self._valid, self._loop_mask = {}, {}  # loss -> its real rows; loop -> (T, B) mask
        self.ctxs, self._carried = {}, carry is not None
        self.carry = {}
        for segment in segments:
            if isinstance(segment, _LoopRun):
                self._forward_loop(segment, values, training, carry or {}, check_finite)
            else:
                values[segment.node] = self._forward_step(segment, values, training, check_finite)
        return {name: self._batch_major(values[name], name) for name in keep}

    def _view(self, plan: Plan) -> None:
        """Run `plan` (the hoisted plan, or its rewrite with fused kernels)."""
        self.plan = plan
        self._loop_of = {s.node: loop for loop in plan.loops for s in loop.steps}
        # per step, the input positions read as whole sequences (attention's memory)
        self._whole = {s.node: whole_positions(s.op) for s in plan.steps}

    def _segments_for(self, keep: frozenset) -> list:
        if keep not in self._segments:
            segments, seen = [], set()
            steps = self.plan.steps_for(keep)
            for step in steps:
                loop = self._loop_of.get(step.node)
                if loop is None:
                    segments.append(step)
                elif loop.name not in seen:
                    seen.add(loop.name)
                    segments.append(self._compile_loop(loop, steps, keep))
            self._segments[keep] = segments
        return self._segments[keep]

    def _compile_loop(self, loop: Loop, steps: list[Step], keep: frozenset) -> _LoopRun:
        members = {s.node for s in loop.steps}
        states = {s.node: s for s in loop.states}
        routes = []
        for step in loop.steps:
            route = []
            for position, source in enumerate(step.inputs):
                if position in self._whole[step.node]:
                    route.append((_WHOLE, source))  # the whole sequence at every step
                elif source in members:
                    route.append((_MEMBER, source))
                elif source in states:
                    route.append((_STATE, states[source]))
                else:
                    route.append((_SEQ if source in self._timed else _WHOLE, source))
            routes.append(tuple(route))
        read_outside = {s for step in steps if step.node not in members for s in step.inputs}
        sources = {s.source for s in loop.states}
        stored = tuple(s.node for s in loop.steps
                       if s.node in read_outside or s.node in sources or s.node in keep)
        depth: dict[str, int] = {}
        for state in loop.states:
            depth[state.source] = max(depth.get(state.source, 0), state.delay)
        return _LoopRun(loop, tuple(routes), stored, depth)

    def _forward_step(self, step: Step, values: dict, training: bool, check_finite: bool):
        """An op outside any recurrence: per-step ops see time folded into the batch."""
        xp, timed, whole = self.xp, self._timed, self._whole[step.node]
        xs = [values[s] for s in step.inputs]
        steps = [x.shape[0] for i, (x, s) in enumerate(zip(xs, step.inputs))
                 if s in timed and i not in whole]
        folded = step.op.per_step and bool(steps)
        if folded:
            T = self._time[step.node] = steps[0]
            xs = [x if i in whole else self._fold(x, s in timed, T)
                  for i, (x, s) in enumerate(zip(xs, step.inputs))]
        source = self._lengths_of(step)
        lengths = None if source is None else self._lengths[source]
        if folded and lengths is not None and step.op.is_loss:
            # a loss averages over the real steps only: padded rows are left out. Their
            # indices come from the host's lengths: a boolean mask would make the device
            # count them before it could index, and the host wait for that count
            host = self._host_lengths[source]
            rows = np.flatnonzero((np.arange(T)[:, None] < host[None, :]).reshape(-1))
            valid = xp.asarray(rows)
            self._valid[step.node] = (valid, T * len(host))
            xs = [x[valid] for x in xs]
        batch = len(xs[0]) if folded else self.size
        ctx = self.ctxs[step.node] = Ctx(xp, training, self.rng, self.buffers[step.node], batch,
                                         self.dtype)
        ctx.lengths = lengths if not step.op.per_step else None
        kwargs = self._param_args(step)
        for kw, (node, saved) in step.borrows.items():
            kwargs[kw] = self.ctxs[node].saved[saved]
        y = step.op.forward(ctx, *xs, **kwargs)
        if lengths is not None and step.node in timed:
            self._lengths[step.node] = lengths
            self._host_lengths[step.node] = self._host_lengths[source]
        if folded and step.node in timed:
            y = y.reshape((T, self.size) + y.shape[1:])
        self._check(check_finite, y, step.node, "forward")
        return y

    def _forward_loop(self, run: _LoopRun, values: dict, training: bool, carry: dict,
                      check_finite: bool) -> None:
        xp, B = self.xp, self.size
        T = self._time[run.loop.name] = self._loop_length(run, values)
        lengths = self._loop_lengths(run)
        mask = None if lengths is None else self._mask(lengths, T)  # (T, B)
        holds = set(run.depth)  # a state's source keeps its value past a sequence's end
        stored = {node: xp.empty((T, B) + self.plan.types[node].dims, dtype=self.dtype)
                  for node in run.stored}
        ctxs = {step.node: [] for step in run.loop.steps}
        initial = {state.node: self._initial(state, carry) for state in run.loop.states}
        params = [self._param_args(step) for step in run.loop.steps]
        for t in range(T):
            here = {}
            for step, route, kwargs in zip(run.loop.steps, run.routes, params):
                xs = []
                for kind, ref in route:
                    if kind == _MEMBER:
                        xs.append(here[ref])
                    elif kind == _STATE:
                        back = t - ref.delay
                        xs.append(stored[ref.source][back] if back >= 0
                                  else initial[ref.node][back])
                    elif kind == _SEQ:
                        xs.append(values[ref][t])
                    else:
                        xs.append(values[ref])
                ctx = Ctx(xp, training, self.rng, self.buffers[step.node], B, self.dtype)
                y = step.op.forward(ctx, *xs, **kwargs)
                if mask is not None and t > 0 and step.node in holds:
                    y = xp.where(_column(mask[t], y.ndim), y, stored[step.node][t - 1])
                here[step.node] = y
                self._check(check_finite, y, step.node, "forward")
                ctxs[step.node].append(ctx)
                if step.node in stored:
                    stored[step.node][t] = y
        values.update(stored)
        self.ctxs.update(ctxs)
        if lengths is not None:
            host = self._host_lengths[self._loop_lengths(run, source=True)]
            self._lengths.update({node: lengths for node in stored})
            self._host_lengths.update({node: host for node in stored})
            self._loop_mask[run.loop.name] = mask
        for source, depth in run.depth.items():
            self.carry[source] = stored[source][max(T - depth, 0):] if T >= depth else None

    def _initial(self, state: State, carry: dict):
        """The values a state reads before step 0, indexed -delay..-1 (from the end)."""
        xp, dims = self.xp, self.plan.types[state.source].dims
        carried = carry.get(state.source)
        if carried is not None:
            return carried
        if state.init == "learned":
            one = xp.broadcast_to(self.params[state.param], (self.size,) + dims)
        else:
            value = 0.0 if state.init == "zeros" else float(state.init)
            one = xp.full((self.size,) + dims, value, dtype=self.dtype)
        return xp.broadcast_to(one, (state.delay,) + one.shape)

    # ---- backward

    def backward(self, backward: Backward, check_finite: bool = False) -> None:
        """Fill `grads` for `backward.params` from the last training forward (BPTT)."""
        xp = self.xp
        backward = self.plan.backward(backward.losses, backward.params)  # of the hoisted plan
        self.flat_grads[...] = 0
        grads = {seed: xp.ones((), dtype=self.dtype) for seed in backward.seeds}
        wanted = set(backward.order)
        for segment in reversed(self._last):
            if isinstance(segment, _LoopRun):
                self._backward_loop(segment, grads, backward, wanted, check_finite)
                continue
            gy = grads.pop(segment.node, None)
            if gy is None or segment.node not in wanted:
                continue
            self._backward_step(segment, gy, grads, backward, check_finite)

    def _backward_step(self, step: Step, gy, grads: dict, backward: Backward, check_finite: bool):
        timed, whole = self._timed, self._whole[step.node]
        ctx = self.ctxs[step.node]
        targets = backward.grad_inputs[step.node]
        folded = step.node in self._time
        if folded and step.node in timed:
            gy = gy.reshape((-1,) + gy.shape[2:])
        ctx.needs_input_grad = tuple(t is not None for t in targets)
        input_grads, param_grads = step.op.backward(ctx, gy)
        ctx.saved.clear()
        valid = self._valid.get(step.node)
        for position, (source, target, grad) in enumerate(zip(step.inputs, targets, input_grads)):
            if target is None or grad is None:
                continue
            if valid is not None:  # padded rows had no say in the loss: zero gradient
                rows, total = valid
                full = self.xp.zeros((total,) + grad.shape[1:], dtype=grad.dtype)
                full[rows] = grad
                grad = full
            if folded and position not in whole:
                grad = grad.reshape((self._time[step.node], self.size) + grad.shape[1:])
                if source not in timed:  # a per-sequence value broadcast over the steps
                    grad = grad.sum(axis=0)
            self._check(check_finite, grad, step.node, "backward")
            _accumulate(grads, target, grad)
        self._add_param_grads(step, param_grads)

    def _backward_loop(self, run: _LoopRun, grads: dict, backward: Backward, wanted: set,
                       check_finite: bool) -> None:
        xp, T = self.xp, self._time[run.loop.name]
        steps = [(step, route) for step, route in zip(run.loop.steps, run.routes)
                 if step.node in wanted]
        outside = {step.node: grads.pop(step.node) for step, _ in steps if step.node in grads}
        delayed = {source: xp.zeros((T, self.size) + self.plan.types[source].dims, self.dtype)
                   for source in run.depth}
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
        cut = 0 if self.reach is None else T - self.reach
        mask = self._loop_mask.get(run.loop.name)
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
                    # (a zero of gy's own dtype: no promotion, whatever an array module's
                    # rule for a Python scalar)
                    keep, zero = _column(mask[t], gy.ndim), gy.dtype.type(0)
                    delayed[step.node][t - 1] += xp.where(keep, zero, gy)
                    gy = xp.where(keep, gy, zero)
                ctx = self.ctxs[step.node][t]
                targets = backward.grad_inputs[step.node]
                region = step.op.grad_region(ctx)
                if region is not None and route[0][0] == _MEMBER and targets[0] is not None:
                    # the chunks' gradients fill one array instead of one zero array each
                    ref = route[0][1]
                    if ref not in mine:
                        base = xp.zeros(region[0], dtype=self.dtype)
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
                    self._check(check_finite, grad, step.node, "backward")
                    if kind == _MEMBER:
                        if ref in mine:
                            here[ref] += grad
                        else:
                            _accumulate(here, ref, grad)
                    elif kind == _STATE:
                        back = t - ref.delay
                        if back >= cut:
                            delayed[ref.source][back] += grad
                        elif back < 0 and cut <= 0 and ref.param is not None and not self._carried:
                            _accumulate(init_grads, ref.param, grad.sum(axis=0))
                    elif kind == _SEQ:
                        if ref not in seq_grads:
                            seq_grads[ref] = xp.zeros((T,) + grad.shape, dtype=self.dtype)
                        seq_grads[ref][t] += grad
                    else:
                        _accumulate(grads, ref, grad)
                self._add_param_grads(step, param_grads)
        for node, stack in stacked.items():
            self._add_param_grads(stack.step, stack.param_grads(xp, self._param_args(stack.step)))
        for ref, grad in seq_grads.items():
            _accumulate(grads, ref, grad)
        for key, grad in init_grads.items():
            self.grads[key] += grad

    def _param_args(self, step: Step) -> dict:
        args = {name: self.params[key] for name, key in step.params.items()}
        for name, index in step.slices.items():
            # a contiguous copy: NumPy's matmul leaves BLAS for a column block of a matrix
            # (60x slower here), and a step's copy is cheap next to T products
            args[name] = self.xp.ascontiguousarray(args[name][index])
        return args

    def _add_param_grads(self, step: Step, param_grads: dict) -> None:
        for name, grad in param_grads.items():
            index = step.slices.get(name)
            if index is None:
                self.grads[step.params[name]] += grad
            else:
                self.grads[step.params[name]][index] += grad

    # ---- layout

    def _time_major(self, array, name: str):
        x = self._as_input(array, name)
        return self.xp.ascontiguousarray(x.swapaxes(0, 1)) if name in self._timed else x

    def _batch_major(self, value, name: str):
        return value.swapaxes(0, 1) if name in self._timed else value

    def _extent(self, values: dict) -> int:
        """The number of examples in a batch (sequences of one batch may differ in length)."""
        for name, value in values.items():
            return int(value.shape[1] if name in self._timed else value.shape[0])
        raise ValueError("a batch needs at least one input")

    def _lengths_of(self, step: Step) -> str | None:
        """The sequence a step reads whose valid steps per example are known (None: all
        are valid); its lengths are `_lengths[name]`, on the host `_host_lengths[name]`."""
        for position, source in enumerate(step.inputs):
            if source in self._lengths and position not in self._whole[step.node]:
                return source
        return None

    def _loop_lengths(self, run: _LoopRun, source: bool = False):
        """The valid steps per example of the sequences a loop reads (None: all are
        valid), or with `source` the name of the sequence they are known for."""
        for route in run.routes:
            for kind, ref in route:
                if kind == _SEQ and ref in self._lengths:
                    return ref if source else self._lengths[ref]
        return None

    def _mask(self, lengths, steps: int):
        """(T, B): whether step t of example b is real, not padding."""
        return self.xp.arange(steps)[:, None] < lengths[None, :]

    def _loop_length(self, run: _LoopRun, values: dict) -> int:
        """A recurrence runs for as many steps as the sequences it reads have."""
        for route in run.routes:
            for kind, ref in route:
                if kind == _SEQ:
                    return int(values[ref].shape[0])
        raise AssertionError(f"{run.loop.name}: plan.build_plan lets no loop without a sequence")

    def _fold(self, x, seq: bool, steps: int):
        """(T, B, ...) -> (T*B, ...); a per-sequence (B, ...) value is repeated at every step."""
        if not seq:
            x = self.xp.broadcast_to(x, (steps,) + x.shape)
        return x.reshape((-1,) + x.shape[2:])

    def _check(self, check_finite: bool, array, node: str, phase: str) -> None:
        if check_finite and array.dtype.kind == "f" and not bool(self.xp.isfinite(array).all()):
            raise NonFinite(node, phase)


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


def _column(mask, ndim: int):
    """A (B,) mask shaped to broadcast over a (B, ...) value."""
    return mask.reshape(mask.shape + (1,) * (ndim - 1))


def _accumulate(grads: dict, target: str, grad) -> None:
    """Sum a gradient contribution into `grads`, never writing into an op's returned array."""
    grads[target] = grad if target not in grads else grads[target] + grad
