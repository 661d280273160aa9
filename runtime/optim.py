"""Optimisers over one flat parameter vector, plus gradient penalties and clipping.

The executor keeps every parameter of a network as a view into one flat array, so an
update is a handful of whole-vector calls with `out=` and no loop over parameters, or
on a GPU one generated kernel. The code is written against `xp`, the array module of
the parameters (numpy or cupy); what each optimiser computes, its `Rule`, comes from
netdsl.optimizers.
"""
from __future__ import annotations

import math
from typing import Any

import numpy

from netdsl.lower.codegen import run_program, update_program, update_scalars
from netdsl.optimizers import check_integer, check_number, configure, nonnegative
from netdsl.runtime import native
from netdsl.runtime.cuda.launch import on_gpu

__all__ = ["Optimizer", "make_optimizer", "penalize", "clip_grad_norm"]


def _array_module(x):
    """numpy, or cupy for a cupy array; cupy is imported only when one is passed."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy  # a CuPy array came: CuPy is there
        return cupy
    return numpy


class Optimizer:
    """Updates a flat float vector `params` in place by the `Rule` of the optimiser `name`
    (netdsl.optimizers) with `settings`.

    `settings["lr"]` is the base learning rate, kept as `self.lr` for the schedule; `step`
    takes the current one. State is allocated once, here, with `xp.zeros_like(params)`.
    With `native` (the native CPU target) the update is the same generated program as on
    a GPU, compiled to C: one pass over the vectors instead of several NumPy calls.
    """

    def __init__(self, name: str, params, settings: dict[str, Any], xp=None,
                 native: bool = False):
        if params.ndim != 1 or params.dtype.kind != "f":
            raise ValueError(f"{name}: params must be one flat float vector, "
                             f"got shape {params.shape} and dtype {params.dtype}")
        self.name = name
        self.xp = xp or _array_module(params)
        self.params = params
        self.settings, self.rule = configure(name, settings)
        self.lr = self.settings["lr"]
        self.t = 0
        self._native = native and not on_gpu(self.xp) and self._compiled()
        self.state = self._allocate()

    def _allocate(self) -> dict:
        rule, zeros = self.rule, lambda: self.xp.zeros_like(self.params)
        state = {name: zeros() for name in rule.state}
        # scratch for weight_decay * p, the denominator and nesterov's momentum * b,
        # which cannot all be computed in the gradient's own storage
        needs_scratch = rule.weight_decay or rule.rho is not None or rule.nesterov
        self._scratch = zeros() if needs_scratch and not self._native else None
        return state

    @property
    def slots(self) -> int:
        """How many parameter-sized arrays the optimiser keeps (state and scratch)."""
        return len(self.state) + (self._scratch is not None)

    def step(self, grads, lr: float) -> None:
        """Update params in place from `grads` at learning rate `lr`; grads is overwritten."""
        if grads.shape != self.params.shape:
            raise ValueError(f"{self.name}: grads have shape {grads.shape}, "
                             f"params {self.params.shape}")
        nonnegative(self.name, "lr", lr)
        self.t += 1
        if self._native or on_gpu(self.xp):   # the whole update as one generated kernel
            self._update_kernel(grads, lr)
            return
        if self.rule.weight_decay:
            self.xp.multiply(self.params, self.rule.weight_decay, out=self._scratch)
            grads += self._scratch
        u = self._momentum(self._precondition(grads))
        self.xp.multiply(u, lr, out=grads)  # u may be the momentum buffer: scale a copy
        self.params -= grads

    def _compiled(self) -> bool:
        """Whether the update program runs as compiled C here (else NumPy's calls do)."""
        self._program = update_program(self.rule, tuple(self.rule.state))
        try:
            native.prepare([self._program], str(self.params.dtype))
        except native.NativeUnavailable:
            return False
        return True

    def _update_kernel(self, grads, lr: float) -> None:
        """The step of `Rule` over every parameter in one launch (grads is left as is)."""
        if not hasattr(self, "_program"):
            self._program = update_program(self.rule, tuple(self.state))
        run_program(self.xp, self._program, {"params": self.params, "grads": grads, **self.state},
                    update_scalars(self.rule, self.t, lr), str(self.params.dtype))

    def _precondition(self, g):
        """Write u = m' / (sqrt(v') + eps) over g and return it."""
        xp, rule, tmp = self.xp, self.rule, self._scratch
        m, v = self.state.get("first_moment"), self.state.get("second_moment")
        if v is not None:
            xp.multiply(g, g, out=tmp)
            if rule.square_weight != 1:
                tmp *= rule.square_weight
            if rule.rho != 1:
                v *= rule.rho
            v += tmp
        if m is not None:
            m *= rule.beta1
            g *= 1 - rule.beta1  # g is not needed after this: v has used it
            m += g
        numerator = g if m is None else m
        if v is not None:
            xp.sqrt(v, out=tmp)
            if rule.bias_correction:
                tmp /= math.sqrt(1 - rule.rho ** self.t)
            tmp += rule.eps
            xp.divide(numerator, tmp, out=g)
        elif m is not None:
            xp.copyto(g, m)
        if rule.bias_correction and m is not None:
            g /= 1 - rule.beta1 ** self.t
        return g

    def _momentum(self, u):
        """Apply heavy-ball (or Nesterov) momentum to the step u; return the step."""
        b = self.state.get("momentum_buffer")
        if b is None:
            return u
        b *= self.rule.momentum
        b += u
        if not self.rule.nesterov:
            return b
        self.xp.multiply(b, self.rule.momentum, out=self._scratch)
        u += self._scratch
        return u

    def state_dict(self) -> dict[str, Any]:
        """Copies of the state arrays and the step count, under "step"."""
        return {"step": self.t, **{key: array.copy() for key, array in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, into the existing arrays."""
        expected = {"step", *self.state}
        if set(state) != expected:
            raise ValueError(f"{self.name}: state has keys {sorted(state)}, "
                             f"expected {sorted(expected)}")
        for key, array in self.state.items():
            value = self.xp.asarray(state[key])
            if value.shape != array.shape:
                raise ValueError(f"{self.name}: state '{key}' has shape {value.shape}, "
                                 f"expected {array.shape}")
            array[...] = value
        self.t = check_integer(self.name, "step", state["step"], 0)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{type(self).__name__}({settings})"


def make_optimizer(name: str, settings: dict[str, Any], params, xp=None,
                   native: bool = False) -> Optimizer:
    """The optimiser a train clause names, e.g. ("sgd", {"lr": 0.1, "momentum": 0.9}),
    over the flat vector `params` (its update compiled to C with `native`)."""
    return Optimizer(name, params, settings, xp, native)


def penalize(params, grads, l1: float, l2: float) -> None:
    """Add the gradient of l1 * ||p||_1 + l2 / 2 * ||p||_2^2 to grads in place.

    The L2 term is halved so that its gradient is l2 * p, the convention of
    weight_decay (and of torch); the L1 term adds l1 * sign(p), which is 0 at p = 0.
    """
    l1 = nonnegative("penalize", "l1", l1)
    l2 = nonnegative("penalize", "l2", l2)
    if not (l1 or l2):
        return
    xp = _array_module(params)
    tmp = xp.empty_like(params)
    if l1:
        xp.sign(params, out=tmp)
        tmp *= l1
        grads += tmp
    if l2:
        xp.multiply(params, l2, out=tmp)
        grads += tmp


def clip_grad_norm(grads, max_norm: float):
    """Scale grads in place so their 2-norm is at most max_norm; return the norm before.

    As torch.nn.utils.clip_grad_norm_: the scale is max_norm / (norm + 1e-6), capped at 1.
    The norm is a float for NumPy. For CuPy it stays on the device, a 0-d array, and so
    does the scale (grads are multiplied by it, 1 or less): reading the norm back would
    make every training step wait for the GPU.
    """
    max_norm = check_number("clip", "max_norm", max_norm, lambda x: x > 0, "> 0")
    xp = _array_module(grads)
    if xp is not numpy:
        norm = xp.linalg.norm(grads)
        grads *= xp.minimum(max_norm / (norm + 1e-6), 1.0)
        return norm
    norm = float(xp.linalg.norm(grads))
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        grads *= scale
    return norm
