"""The reference interpreter: the plan run as plainly as possible.

No buffer reuse, no fusion, no flat parameter vector: every value and gradient is
kept in a dict and gradients are summed into new arrays. It is the oracle the
optimised executors are tested against, so it stays short enough to read at once.
"""
from __future__ import annotations

import numpy as np

from netdsl.ops.base import Ctx
from netdsl.runtime.plan import Plan

__all__ = ["interpret"]


def interpret(plan: Plan, params: dict, batch: dict, losses: tuple[str, ...] | None = None,
              training: bool = True, rng=None, buffers: dict | None = None, xp=np):
    """One forward and backward pass.

    Parameters
    ----------
    params : dict
        Parameter key -> array.
    batch : dict
        Input and target name -> array, batch axis first.
    losses : tuple of str, optional
        The losses to differentiate (default all), summed.
    buffers : dict, optional
        Node -> persistent state (batchnorm running statistics), updated in training.

    Returns
    -------
    values : dict
        Every node's output.
    grads : dict
        Parameter key -> dL/dparam for the parameters the losses reach.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    buffers = {} if buffers is None else buffers
    size = len(next(iter(batch.values())))
    values = {name: batch[name] for name in plan.inputs}
    ctxs = {}
    for step in plan.steps:
        ctx = ctxs[step.node] = Ctx(xp, training, rng, buffers.setdefault(step.node, {}), size)
        kwargs = {name: params[key] for name, key in step.params.items()}
        kwargs.update({kw: ctxs[node].saved[saved] for kw, (node, saved) in step.borrows.items()})
        values[step.node] = step.op.forward(ctx, *(values[s] for s in step.inputs), **kwargs)
    backward = plan.backward(losses)
    value_grads = {seed: xp.ones((), dtype=values[seed].dtype) for seed in backward.seeds}
    grads: dict = {}
    for node in backward.order:
        if node not in value_grads:
            continue  # no loss depends on it through a differentiable path
        step = plan.step_of(node)
        input_grads, param_grads = step.op.backward(ctxs[node], value_grads[node])
        for target, grad in zip(backward.grad_inputs[node], input_grads):
            if target is not None and grad is not None:
                value_grads[target] = value_grads[target] + grad if target in value_grads else grad
        for name, grad in param_grads.items():
            key = step.params[name]
            if key in backward.params:
                grads[key] = grads[key] + grad if key in grads else grad
    return values, grads
