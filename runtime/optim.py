"""Optimisers over one flat parameter vector, plus gradient penalties and clipping.

The executor keeps every parameter of a network as a view into one flat array, so an
update is a handful of whole-vector calls with `out=` and no loop over parameters.
The code is written against `xp`, the array module of the parameters (numpy or cupy).

Every optimiser is a configuration of one general elementwise rule (`Rule`); the
settings and their meaning are those of torch.optim, whose results they reproduce.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import numpy

from netdsl.lower.codegen import run_program, update_program, update_scalars
from netdsl.runtime.cuda.launch import on_gpu

__all__ = ["Rule", "Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "OPTIMIZERS",
           "make_optimizer", "penalize", "clip_grad_norm", "check_number", "check_integer"]


def _array_module(x):
    """numpy, or cupy for a cupy array; cupy is imported only when one is passed."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy
    return numpy


def check_number(where: str, key: str, value: Any, test: Callable[[float], bool],
                 expected: str) -> float:
    """`value` as a float if it is a finite real number passing `test`, else ValueError.

    The message names the setting: "adam: beta1 must be in [0, 1), got 1.5".
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and test(float(value))):
        raise ValueError(f"{where}: {key} must be {expected}, got {value!r}")
    return float(value)


def check_integer(where: str, key: str, value: Any, low: int) -> int:
    """`value` as an int if it is a whole number >= low (2.0 counts), else ValueError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value == int(value) and value >= low):
        raise ValueError(f"{where}: {key} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _nonnegative(where, key, value):
    return check_number(where, key, value, lambda x: x >= 0, ">= 0")


def _fraction(where, key, value):
    return check_number(where, key, value, lambda x: 0 <= x < 1, "in [0, 1)")


def _flag(where, key, value):
    if value not in (True, False):  # also admits 0 and 1
        raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
    return bool(value)


# how each setting is checked; every optimiser setting appears here
_CHECKS = {"lr": _nonnegative, "momentum": _nonnegative, "weight_decay": _nonnegative,
           "eps": _nonnegative, "alpha": _fraction, "beta1": _fraction, "beta2": _fraction,
           "nesterov": _flag}


@dataclass(frozen=True)
class Rule:
    """The general elementwise update; each optimiser below is a configuration of it.

    With g the gradient, p the parameters, t the step count from 1 and lr the
    (scheduled) learning rate, one step is

        g <- g + weight_decay * p                  L2 weight decay
        m <- beta1 * m + (1 - beta1) * g           first moment, if beta1 > 0 (else m = g)
        v <- rho * v + square_weight * g^2         second moment, if rho is not None
        u <- m' / (sqrt(v') + eps)                 u = m' without a second moment
        b <- momentum * b + u                      heavy-ball momentum, if momentum > 0,
        u <- u + momentum * b  (nesterov)  or  b     applied to the preconditioned step
        p <- p - lr * u

    where m' = m / (1 - beta1^t) and v' = v / (1 - rho^t) with `bias_correction`, else
    m' = m and v' = v. Stages that are switched off keep no state.
    """

    weight_decay: float = 0.0
    beta1: float = 0.0
    rho: float | None = None
    square_weight: float = 1.0
    bias_correction: bool = False
    eps: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False


class Optimizer:
    """Updates a flat float vector `params` in place by its subclass's `Rule`.

    A subclass sets `name`, `defaults` (each setting with its default) and
    `configure(**settings) -> Rule`. `settings["lr"]` is the base learning rate, kept
    as `self.lr` for the schedule; `step` takes the current one. State is allocated
    once, here, with `xp.zeros_like(params)`.
    """

    name = "optimizer"
    defaults: dict[str, Any] = {}

    def __init__(self, params, xp=None, **settings):
        if params.ndim != 1 or params.dtype.kind != "f":
            raise ValueError(f"{self.name}: params must be one flat float vector, "
                             f"got shape {params.shape} and dtype {params.dtype}")
        self.xp = xp or _array_module(params)
        self.params = params
        self.settings = self._checked(settings)
        self.lr = self.settings["lr"]
        self.rule = self.configure(**{k: v for k, v in self.settings.items() if k != "lr"})
        self.t = 0
        self.state = self._allocate()

    def configure(self, **settings) -> Rule:
        raise NotImplementedError(f"{type(self).__name__} does not configure a Rule")

    def _checked(self, given: dict) -> dict:
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name} has no setting '{unknown[0]}'; "
                             f"settings: {', '.join(self.defaults)}")
        settings = {**self.defaults, **given}
        return {key: _CHECKS[key](self.name, key, value) for key, value in settings.items()}

    def _allocate(self) -> dict:
        rule, zeros = self.rule, lambda: self.xp.zeros_like(self.params)
        state = {}
        if rule.beta1:
            state["first_moment"] = zeros()
        if rule.rho is not None:
            state["second_moment"] = zeros()
        if rule.momentum:
            state["momentum_buffer"] = zeros()
        # scratch for weight_decay * p, the denominator and nesterov's momentum * b,
        # which cannot all be computed in the gradient's own storage
        needs_scratch = rule.weight_decay or rule.rho is not None or rule.nesterov
        self._scratch = zeros() if needs_scratch else None
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
        _nonnegative(self.name, "lr", lr)
        self.t += 1
        if on_gpu(self.xp):   # the whole update as one generated kernel
            self._update_kernel(grads, lr)
            return
        if self.rule.weight_decay:
            self.xp.multiply(self.params, self.rule.weight_decay, out=self._scratch)
            grads += self._scratch
        u = self._momentum(self._precondition(grads))
        self.xp.multiply(u, lr, out=grads)  # u may be the momentum buffer: scale a copy
        self.params -= grads

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


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as torch.optim.SGD (dampening 0).

    Nesterov momentum (Sutskever et al. 2013) takes PyTorch's form u = g + momentum * b.
    """

    name = "sgd"
    defaults = {"lr": 1e-3, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}

    def configure(self, momentum, nesterov, weight_decay) -> Rule:
        if nesterov and not momentum:
            raise ValueError("sgd: nesterov=true needs momentum > 0")
        return Rule(weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


class Adagrad(Optimizer):
    """Adagrad (Duchi, Hazan & Singer 2011): divide by the root of the summed squares.

    As torch.optim.Adagrad with initial_accumulator_value=0 and lr_decay=0.
    """

    name = "adagrad"
    defaults = {"lr": 1e-2, "eps": 1e-10, "weight_decay": 0.0}

    def configure(self, eps, weight_decay) -> Rule:
        return Rule(weight_decay=weight_decay, rho=1.0, square_weight=1.0, eps=eps)


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton 2012): divide by the root of a moving mean of squares.

    As torch.optim.RMSprop, non-centred; momentum acts on the divided step.
    """

    name = "rmsprop"
    defaults = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0}

    def configure(self, alpha, eps, momentum, weight_decay) -> Rule:
        return Rule(weight_decay=weight_decay, rho=alpha, square_weight=1 - alpha, eps=eps,
                    momentum=momentum)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", ICLR).

    Bias-corrected moving means of the gradient and its square; as torch.optim.Adam,
    with weight_decay added to the gradient (L2, not AdamW's decoupled decay).
    """

    name = "adam"
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}

    def configure(self, beta1, beta2, eps, weight_decay) -> Rule:
        return Rule(weight_decay=weight_decay, beta1=beta1, rho=beta2, square_weight=1 - beta2,
                    bias_correction=True, eps=eps)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, Adagrad, RMSprop, Adam)}


def make_optimizer(name: str, settings: dict[str, Any], params, xp=None) -> Optimizer:
    """The optimiser a train clause names, e.g. ("sgd", {"lr": 0.1, "momentum": 0.9})."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, xp=xp, **settings)


def penalize(params, grads, l1: float, l2: float) -> None:
    """Add the gradient of l1 * ||p||_1 + l2 / 2 * ||p||_2^2 to grads in place.

    The L2 term is halved so that its gradient is l2 * p, the convention of
    weight_decay (and of torch); the L1 term adds l1 * sign(p), which is 0 at p = 0.
    """
    l1 = _nonnegative("penalize", "l1", l1)
    l2 = _nonnegative("penalize", "l2", l2)
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
