"""The optimisers of the train clause: their settings and the update each one makes.

Every optimiser is a configuration of one general elementwise rule (`Rule`); the
settings and their meaning are those of torch.optim, whose results they reproduce. This
is the language's side: which optimisers and settings exist, their defaults and checks,
and the Rule a train clause configures. netdsl.runtime.optim applies a Rule to arrays.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Rule", "Definition", "SGD", "Adagrad", "RMSprop", "Adam", "OPTIMIZERS", "configure",
           "check_number", "check_integer", "nonnegative"]


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


def nonnegative(where, key, value):
    return check_number(where, key, value, lambda x: x >= 0, ">= 0")


def _fraction(where, key, value):
    return check_number(where, key, value, lambda x: 0 <= x < 1, "in [0, 1)")


def _flag(where, key, value):
    if value not in (True, False):  # also admits 0 and 1
        raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
    return bool(value)


# how each setting is checked; every optimiser setting appears here
_CHECKS = {"lr": nonnegative, "momentum": nonnegative, "weight_decay": nonnegative,
           "eps": nonnegative, "alpha": _fraction, "beta1": _fraction, "beta2": _fraction,
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

    @property
    def state(self) -> tuple[str, ...]:
        """The parameter-sized arrays the rule keeps between steps."""
        return tuple(name for name, kept in (("first_moment", self.beta1),
                                             ("second_moment", self.rho is not None),
                                             ("momentum_buffer", self.momentum)) if kept)


class Definition:
    """An optimiser: its `name`, its settings with their defaults (`defaults`, lr among
    them) and `configure(**settings) -> Rule` for the settings other than lr."""

    name = "optimizer"
    defaults: dict[str, Any] = {}

    def configure(self, **settings) -> Rule:
        raise NotImplementedError(f"{type(self).__name__} does not configure a Rule")

    def checked(self, given: dict) -> dict:
        """The settings, defaults filled in, each checked; ValueError naming a bad one."""
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name} has no setting '{unknown[0]}'; "
                             f"settings: {', '.join(self.defaults)}")
        settings = {**self.defaults, **given}
        return {key: _CHECKS[key](self.name, key, value) for key, value in settings.items()}


class SGD(Definition):
    """Stochastic gradient descent with optional momentum, as torch.optim.SGD (dampening 0).

    Nesterov momentum (Sutskever et al. 2013) takes PyTorch's form u = g + momentum * b.
    """

    name = "sgd"
    defaults = {"lr": 1e-3, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}

    def configure(self, momentum, nesterov, weight_decay) -> Rule:
        if nesterov and not momentum:
            raise ValueError("sgd: nesterov=true needs momentum > 0")
        return Rule(weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


class Adagrad(Definition):
    """Adagrad (Duchi, Hazan & Singer 2011): divide by the root of the summed squares.

    As torch.optim.Adagrad with initial_accumulator_value=0 and lr_decay=0.
    """

    name = "adagrad"
    defaults = {"lr": 1e-2, "eps": 1e-10, "weight_decay": 0.0}

    def configure(self, eps, weight_decay) -> Rule:
        return Rule(weight_decay=weight_decay, rho=1.0, square_weight=1.0, eps=eps)


class RMSprop(Definition):
    """RMSprop (Tieleman & Hinton 2012): divide by the root of a moving mean of squares.

    As torch.optim.RMSprop, non-centred; momentum acts on the divided step.
    """

    name = "rmsprop"
    defaults = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0}

    def configure(self, alpha, eps, momentum, weight_decay) -> Rule:
        return Rule(weight_decay=weight_decay, rho=alpha, square_weight=1 - alpha, eps=eps,
                    momentum=momentum)


class Adam(Definition):
    """Adam (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", ICLR).

    Bias-corrected moving means of the gradient and its square; as torch.optim.Adam,
    with weight_decay added to the gradient (L2, not AdamW's decoupled decay).
    """

    name = "adam"
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}

    def configure(self, beta1, beta2, eps, weight_decay) -> Rule:
        return Rule(weight_decay=weight_decay, beta1=beta1, rho=beta2, square_weight=1 - beta2,
                    bias_correction=True, eps=eps)


OPTIMIZERS: dict[str, Definition] = {d.name: d for d in (SGD(), Adagrad(), RMSprop(), Adam())}


def configure(name: str, settings: dict[str, Any]) -> tuple[dict[str, Any], Rule]:
    """The checked settings (lr included) and the Rule of the optimiser `name`.

    Raises
    ------
    ValueError
        For an unknown optimiser, an unknown setting or a bad value, naming it.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; known: {', '.join(OPTIMIZERS)}")
    definition = OPTIMIZERS[name]
    checked = definition.checked(settings)
    return checked, definition.configure(**{k: v for k, v in checked.items() if k != "lr"})
