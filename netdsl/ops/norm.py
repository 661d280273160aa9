"""Normalisation and training-time noise: batchnorm, layernorm, dropout, gaussian_noise."""
from __future__ import annotations

from netdsl.errors import ShapeError
from netdsl.ops.base import Arg, Op, number, probability, register
from netdsl.ops.common import Pointwise, expect_float
from netdsl.types import TensorType


def nonnegative(value) -> float:
    value = number(value)
    if value < 0:
        raise ValueError(f"expects a number >= 0, got {value:g}")
    return value


def fraction(value) -> float:
    value = number(value)
    if not 0 <= value <= 1:
        raise ValueError(f"expects a number in [0, 1], got {value:g}")
    return value


@register("batchnorm")
class BatchNorm(Op):
    r"""$y = \gamma_c (x - \mu_c) / \sqrt{\sigma_c^2 + \epsilon} + \beta_c$ over batch and space"""

    args = (Arg("eps", nonnegative, 1e-5), Arg("momentum", fraction, 0.1))

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        if x.rank == 0:
            raise ShapeError(f"batchnorm expects channels in dim 0, [C] or [C,...], but got {x}")
        return x

    def params(self, x):
        # running mean and variance are statistics, not learned parameters
        return {"weight": x.dims[:1], "bias": x.dims[:1]}

    def flops(self, y, x) -> int:
        return 4 * y.size  # statistics, then subtract, scale and shift


@register("layernorm")
class LayerNorm(Op):
    r"""$y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta$ over the last dim"""

    args = (Arg("eps", nonnegative, 1e-5),)

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        if x.rank == 0:
            raise ShapeError(f"layernorm expects at least one dim but got {x}")
        return x

    def params(self, x):
        return {"weight": x.dims[-1:], "bias": x.dims[-1:]}

    def flops(self, y, x) -> int:
        return 5 * y.size  # mean, variance, subtract, scale and shift


@register("dropout")
class Dropout(Pointwise):
    r"""$y = m \odot x / (1 - p)$, $m_i \sim \mathrm{Bernoulli}(1 - p)$ in training; else $y = x$"""

    args = (Arg("p", probability, 0.5),)
    keeps = ("mask",)  # backward needs the sampled mask, neither x nor y
    cost = 2


@register("gaussian_noise")
class GaussianNoise(Pointwise):
    r"""$y = x + \epsilon$, $\epsilon \sim N(0, \mathrm{std}^2)$ in training; else $y = x$"""

    args = (Arg("std", nonnegative),)
    keeps = ()  # the gradient passes through unchanged
