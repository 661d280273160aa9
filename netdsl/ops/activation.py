"""Activations and other pointwise maps: y has x's type."""
from __future__ import annotations

from netdsl.errors import ShapeError
from netdsl.ops.base import Arg, Op, integer, number, positive, register
from netdsl.ops.common import Pointwise, expect_float
from netdsl.types import TensorType


@register("sigmoid")
class Sigmoid(Pointwise):
    r"""$y = 1 / (1 + e^{-x})$"""

    keeps = ("y",)  # dy/dx = y (1 - y)
    cost = 4


@register("tanh")
class Tanh(Pointwise):
    r"""$y = \tanh x$"""

    keeps = ("y",)  # dy/dx = 1 - y^2
    cost = 4


@register("relu")
class Relu(Pointwise):
    r"""$y = \max(0, x)$"""

    keeps = ("y",)  # the mask y > 0 is all backward needs


@register("leaky_relu")
class LeakyRelu(Pointwise):
    r"""$y = x$ if $x > 0$ else $\mathrm{slope} \cdot x$"""

    args = (Arg("slope", number, 0.01),)
    cost = 2


@register("prelu")
class Prelu(Pointwise):
    r"""$y = x$ if $x > 0$ else $w_c x$, with one learned slope per channel (or one shared)"""

    args = (Arg("channels", positive, 1),)
    cost = 2

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        if self.channels != 1 and (x.rank == 0 or x.dims[0] != self.channels):
            raise ShapeError(
                f"prelu(channels={self.channels}) needs {self.channels} channels in dim 0 "
                f"but got {x}",
                "use prelu (one shared slope) or prelu(channels=C) with C = dim 0",
            )
        return x

    def params(self, x):
        return {"weight": (self.channels,)}


@register("elu")
class Elu(Pointwise):
    r"""$y = x$ if $x > 0$ else $\alpha (e^x - 1)$"""

    args = (Arg("alpha", number, 1.0),)
    cost = 3


@register("softplus")
class Softplus(Pointwise):
    r"""$y = \log(1 + e^x)$"""

    cost = 3


class _PassThrough(Pointwise):
    """Forward copies x, so any type (class labels too) may pass."""

    keeps = ()
    cost = 0

    def shape(self, x: TensorType) -> TensorType:
        return x


@register("identity")
class Identity(_PassThrough):
    r"""$y = x$"""


@register("exp")
class Exp(Pointwise):
    r"""$y = e^x$"""

    keeps = ("y",)  # dy/dx = y


@register("log")
class Log(Pointwise):
    r"""$y = \ln x$"""


@register("stop_gradient")
class StopGradient(_PassThrough):
    r"""$y = x$, $\partial y / \partial x = 0$"""


class _Normalised(Op):
    """Softmax-like: normalise exponentials along one axis of the per-example dims."""

    args = (Arg("axis", integer, -1),)
    keeps = ("y",)  # both gradients are written in terms of y

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        if not -x.rank <= self.axis < x.rank:
            raise ShapeError(f"{self.name} axis {self.axis} is out of range for {x}")
        return x

    def flops(self, y, x) -> int:
        # exp, running max, sum, subtract, divide: about five per element
        return 5 * y.size


@register("softmax")
class Softmax(_Normalised):
    r"""$y_i = e^{x_i} / \sum_j e^{x_j}$"""


@register("log_softmax")
class LogSoftmax(_Normalised):
    r"""$y_i = x_i - \log \sum_j e^{x_j}$"""
