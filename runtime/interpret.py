"""The reference interpreter: a plan run as plainly as possible, the executors' oracle.

No fusion, no freed values, no flat parameter vector, no views of a sequence: each
value of each time step is its own array, and every op call is written on a tape that
backward replays in reverse (plain reverse-mode differentiation, BPTT included).

Sequence semantics are the language's: an op outside a recurrence reads a sequence's
steps stacked along the batch axis (one call for all steps, so a loss or a batchnorm
sees them all), or whole (a whole-sequence op, attention's memory); inside a recurrence
each step is a call of its own, and a state reads its source k steps back, or its
initial value. Batches are full (no padded sequences).
"""
from __future__ import annotations

import numpy as np

from netdsl.lower.autodiff import autodiff
from netdsl.lower.plan import Plan
from netdsl.ops.base import Ctx
from netdsl.shapes import whole_positions

__all__ = ["interpret"]


def interpret(plan: Plan, params: dict, batch: dict, losses: tuple[str, ...] | None = None,
              training: bool = True, rng=None, buffers: dict | None = None, xp=np):
    """One forward and backward pass.

    Parameters
    ----------
    plan : Plan
        Best the plan `build_plan` made (lower's `built`): one step per node.
    params : dict
        Parameter key -> array.
    batch : dict
        Input and target name -> array, batch axis first, (B, T, ...) for sequences.
    losses : tuple of str, optional
        The losses to differentiate (default all), summed.
    buffers : dict, optional
        Node -> persistent state (batchnorm running statistics), updated in training.

    Returns
    -------
    values : dict
        Every node's output, batch-major.
    grads : dict
        Parameter key -> dL/dparam for the parameters the losses reach.
    """
    run = _Run(plan, params, training, rng or np.random.default_rng(0),
               {} if buffers is None else buffers, xp)
    run.forward(batch)
    backward = autodiff(plan, losses)
    return run.outputs(), run.backward(backward)


class _Run:
    """One pass: values by (node, step) (step None for a value without a time axis), and
    the tape of op calls: (step, ctx, output keys, how they were split, input keys per
    position, how each was gathered)."""

    def __init__(self, plan: Plan, params: dict, training: bool, rng, buffers: dict, xp):
        self.plan, self.params, self.training, self.rng, self.xp = plan, params, training, rng, xp
        self.buffers = buffers
        self.values: dict = {}
        self.tape: list = []
        self.ctxs: dict = {}
        losses = set(plan.losses.values())
        self.timed = {n for n, t in plan.types.items() if t.seq and n not in losses}
        self.steps = 0

    def forward(self, batch: dict) -> None:
        xp, plan = self.xp, self.plan
        for name in plan.inputs:
            array = xp.asarray(batch[name])
            if name in self.timed:
                self.steps = array.shape[1]
                for t in range(self.steps):
                    self.values[(name, t)] = array[:, t]
            else:
                self.values[(name, None)] = array
        self.size = len(next(iter(batch.values())))
        in_loop = {s.node: loop for loop in plan.loops for s in loop.steps}
        done = set()
        for step in plan.steps:
            loop = in_loop.get(step.node)
            if loop is None:
                self.call(step, None)
            elif loop.name not in done:
                done.add(loop.name)
                for t in range(self.steps):
                    for member in loop.steps:
                        self.call(member, t)

    def read(self, node: str, t):
        """The keys of `node` a call at step t reads (a state reads its source's past)."""
        state = self.plan.states.get(node)
        if state is not None:
            back = t - state.delay
            if back >= 0:
                return (state.source, back)
            if state.start is not None:  # a value of this pass: its gradient reaches it
                return (state.start, None)
            key = (state.node, "initial")
            if key not in self.values:
                self.values[key] = self.initial(state)
            return key
        return (node, t if node in self.timed else None)

    def initial(self, state):
        dims = self.plan.types[state.source].dims
        if state.init == "learned":
            return self.xp.broadcast_to(self.params[state.param], (self.size,) + dims)
        value = 0.0 if state.init == "zeros" else float(state.init)
        return self.xp.full((self.size,) + dims, value, dtype=self.params_dtype())

    def params_dtype(self):
        return next(iter(self.params.values())).dtype if self.params else "float64"

    def call(self, step, t) -> None:
        """Run `step` at step t of its loop, or (t None) once over every step."""
        xp, op = self.xp, step.op
        whole = whole_positions(op)
        keys, how = [], []
        for position, source in enumerate(step.inputs):
            every = [(source, u) for u in range(self.steps)]
            if t is not None and position not in whole:
                keys.append([self.read(source, t)])
                how.append("one")
            elif source in self.timed:
                keys.append(every)
                # a whole sequence stacked on a time axis, or the steps along the batch
                how.append("stack" if position in whole or not op.per_step else "concat")
            else:
                keys.append([(source, None)])
                how.append("one")
        folded = "concat" in how
        if folded:  # a per-sequence value is read at every step
            how = ["repeat" if h == "one" else h for h in how]
        xs = [self.gather(k, h) for k, h in zip(keys, how)]
        ctx = Ctx(xp, self.training, self.rng, self.buffers.setdefault(step.node, {}),
                  len(xs[0]) if folded else self.size, str(self.params_dtype()))
        kwargs = {name: self.params[key] for name, key in step.params.items()}
        kwargs.update({kw: self.ctxs[node].saved[saved]
                       for kw, (node, saved) in step.borrows.items()})
        y = op.forward(ctx, *xs, **kwargs)
        self.ctxs[step.node] = ctx
        if t is not None or step.node not in self.timed:
            outs, joined = [(step.node, t)], "one"
            self.values[outs[0]] = y
        else:  # computed for every step at once: split into its steps
            outs = [(step.node, u) for u in range(self.steps)]
            joined = "concat" if folded else "stack"
            parts = xp.split(y, self.steps) if folded else list(y)
            self.values.update(zip(outs, parts))
        self.tape.append((step, ctx, outs, joined, keys, how))

    def gather(self, keys: list, how: str):
        """An input as the op reads it: one value, the steps stacked or along the batch,
        or a per-sequence value repeated for every step."""
        arrays = [self.values[key] for key in keys]
        if how == "stack":
            return self.xp.stack(arrays)
        if how == "concat":
            return self.xp.concatenate(arrays)
        if how == "repeat":
            return self.xp.concatenate(arrays * self.steps)
        return arrays[0]

    def scatter(self, grad, keys: list, how: str) -> list:
        """gather's inverse for a gradient: one part per key (a repeated value's steps add)."""
        if how == "stack":
            return list(grad)
        if how == "concat":
            return self.xp.split(grad, len(keys))
        if how == "repeat":
            return [sum(self.xp.split(grad, self.steps))]
        return [grad]

    def outputs(self) -> dict:
        """Every node's value, (B, T, ...) for a sequence."""
        out = {}
        nodes = {node for node, _ in self.values}
        for node in nodes:
            if node in self.timed and (node, 0) in self.values:
                out[node] = self.xp.stack([self.values[(node, t)] for t in range(self.steps)],
                                          axis=1)
            elif (node, None) in self.values:
                out[node] = self.values[(node, None)]
        return out

    def backward(self, backward) -> dict:
        xp = self.xp
        grads = {(seed, None): xp.ones((), dtype=self.values[(seed, None)].dtype)
                 for seed in backward.seeds}
        wanted = set(backward.order)
        param_grads: dict = {}
        for step, ctx, outs, joined, keys, how in reversed(self.tape):
            if step.node not in wanted or not any(o in grads for o in outs):
                continue
            ys = [grads.pop(o, None) for o in outs]
            shape = self.values[outs[0]].shape
            ys = [xp.zeros(shape, dtype=self.params_dtype()) if y is None else y for y in ys]
            gy = ys[0] if joined == "one" else self.gather_grads(ys, joined)
            ctx.needs_input_grad = tuple(t is not None for t in backward.grad_inputs[step.node])
            input_grads, own = step.op.backward(ctx, gy)
            for target, k, h, grad in zip(backward.grad_inputs[step.node], keys, how,
                                          input_grads):
                if target is None or grad is None:
                    continue
                for key, part in zip(k, self.scatter(grad, k, h)):
                    grads[key] = grads[key] + part if key in grads else part
            for name, grad in own.items():
                key = step.params[name]
                if key in backward.params:
                    param_grads[key] = param_grads[key] + grad if key in param_grads else grad
        for state in self.plan.states.values():
            grad = grads.get((state.node, "initial"))
            if grad is not None and state.param in backward.params:
                total = grad.sum(axis=0)
                key = state.param
                param_grads[key] = param_grads[key] + total if key in param_grads else total
        return param_grads

    def gather_grads(self, ys: list, joined: str):
        """The gradient of a value computed for every step at once, from its steps'."""
        return self.xp.concatenate(ys) if joined == "concat" else self.xp.stack(ys)
