"""Activations and other pointwise maps: y has x's type."""
from __future__ import annotations

import math

from netdsl.errors import ShapeError
from netdsl.ops import expr as E
from netdsl.ops.base import Arg, Op, integer, number, positive, register
from netdsl.ops.common import FromFormula, Pointwise, expect_float, formula_grads
from netdsl.ops.numeric import constant, sigmoid
from netdsl.ops.parallel import split_pointwise
from netdsl.types import TensorType


@register("sigmoid")
class Sigmoid(Pointwise):
    r"""$y = 1 / (1 + e^{-x})$"""

    keeps = ("y",)  # dy/dx = y (1 - y)
    cost = 4
    fresh = True
    init_scheme = "xavier"
    asymptotes = (0.0, 1.0)

    def forward(self, ctx, x):
        y = sigmoid(ctx.xp, x)
        ctx.save(y=y)
        return y

    def backward(self, ctx, gy):
        return formula_grads(self, ctx, gy), {}

    def formula(self, x):
        return E.sigmoid(x)

    def derivative(self, gy, y, x):
        return (gy * y * (1 - y),)

    def onnx(self, g, step, inputs, params):
        return g.node("Sigmoid", inputs)

    def torch(self, t, step, inputs):
        return f"torch.sigmoid({inputs[0]})"


@register("tanh")
class Tanh(Pointwise):
    r"""$y = \tanh x$"""

    keeps = ("y",)  # dy/dx = 1 - y^2
    cost = 4
    inplace = True
    fresh = True
    init_scheme = "xavier"
    asymptotes = (-1.0, 1.0)

    def forward(self, ctx, x):
        y = ctx.xp.tanh(x, out=ctx.out)
        ctx.save(y=y)
        return y

    def backward(self, ctx, gy):
        return formula_grads(self, ctx, gy), {}

    def formula(self, x):
        return E.tanh(x)

    def derivative(self, gy, y, x):
        return (gy * (1 - y * y),)

    def onnx(self, g, step, inputs, params):
        return g.node("Tanh", inputs)

    def torch(self, t, step, inputs):
        return f"torch.tanh({inputs[0]})"


@register("relu")
class Relu(Pointwise):
    r"""$y = \max(0, x)$"""

    keeps = ("y",)  # the mask y > 0 is all backward needs
    inplace = True
    fresh = True
    fresh_grads = True   # a new array, or gy when it is the executor's to overwrite
    grad_over_gy = True
    init_scheme = "he"
    dead_value = 0.0     # no gradient flows through a unit at 0

    def forward(self, ctx, x):
        xp = ctx.xp
        out = xp.empty(x.shape, dtype=x.dtype) if ctx.out is None else ctx.out
        y = split_pointwise(xp, lambda x, out: xp.maximum(x, 0, out=out), out, x)
        ctx.save(y=y)
        return y

    def backward(self, ctx, gy):
        xp, y = ctx.xp, ctx.saved["y"]
        dtype = xp.result_type(gy.dtype, y.dtype)
        if ctx.gy_owned and gy.shape == y.shape and gy.dtype == dtype:
            dx = gy   # the mask applied in place: no second array of the layer's size
        else:
            dx = xp.empty(y.shape, dtype=dtype)
        gy = gy if gy.shape == y.shape else xp.broadcast_to(gy, y.shape)
        return (split_pointwise(xp, lambda g, y, out: xp.multiply(g, y > 0, out=out), dx,
                                gy, y),), {}

    def formula(self, x):
        return E.where(x < 0, 0, x)  # NaN passes, as NumPy's maximum lets it

    def derivative(self, gy, y, x):
        return (E.where(y > 0, gy, 0),)

    def onnx(self, g, step, inputs, params):
        return g.node("Relu", inputs)

    def torch(self, t, step, inputs):
        return f"torch.relu({inputs[0]})"


@register("leaky_relu")
class LeakyRelu(FromFormula):
    r"""$y = x$ if $x > 0$ else $\mathrm{slope} \cdot x$"""

    args = (Arg("slope", number, 0.01),)
    # keeps x (FromFormula): its sign, not y's, since a negative slope flips y
    cost = 2
    init_scheme = "he"

    def formula(self, x):
        return E.where(x > 0, x, x * self.slope)

    def derivative(self, gy, y, x):
        return (E.where(x > 0, gy, gy * self.slope),)

    def onnx(self, g, step, inputs, params):
        return g.node("LeakyRelu", inputs, alpha=self.slope)

    def torch(self, t, step, inputs):
        return f"F.leaky_relu({inputs[0]}, {self.slope!r})"


@register("prelu")
class Prelu(Pointwise):
    r"""$y = x$ if $x > 0$ else $w_c x$, with one learned slope per channel (or one shared)"""

    args = (Arg("channels", positive, 1),)
    keeps = ("x", "weight")
    cost = 2
    init_scheme = "he"

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

    def init(self, rng, x):
        return {"weight": constant((self.channels,), 0.25)}  # PyTorch's PReLU default

    def slopes(self, x, weight):
        # one slope per channel (array axis 1), or one for all
        return weight.reshape((1, -1) + (1,) * (x.ndim - 2)) if self.channels > 1 else weight

    def forward(self, ctx, x, weight):
        ctx.save(x=x, weight=weight)
        return ctx.xp.where(x > 0, x, x * self.slopes(x, weight))

    def backward(self, ctx, gy):
        xp, x, weight = ctx.xp, ctx.saved["x"], ctx.saved["weight"]
        dx = xp.where(x > 0, gy, gy * self.slopes(x, weight))
        negative = xp.where(x > 0, 0, gy * x)
        if self.channels > 1:
            dweight = negative.sum(axis=(0, *range(2, x.ndim)))
        else:
            dweight = negative.sum().reshape(1)
        return (dx,), {"weight": dweight}

    def onnx(self, g, step, inputs, params):
        rank = step.input_types[0].rank + 1
        slopes = g.per_channel(params["weight"], rank) if self.channels > 1 else params["weight"]
        return g.node("PRelu", [inputs[0], slopes])

    def torch(self, t, step, inputs):
        return f"{t.layer(step, f'nn.PReLU({self.channels}, init=0.25)')}({inputs[0]})"


@register("elu")
class Elu(FromFormula):
    r"""$y = x$ if $x > 0$ else $\alpha (e^x - 1)$"""

    args = (Arg("alpha", number, 1.0),)
    cost = 3
    init_scheme = "he"

    def formula(self, x):
        # expm1 of min(x, 0): accurate near 0, and no overflow on the branch not taken
        return E.where(x > 0, x, self.alpha * E.expm1(E.minimum(x, 0)))

    def derivative(self, gy, y, x):
        return (E.where(x > 0, gy, gy * self.alpha * E.exp(E.minimum(x, 0))),)

    def onnx(self, g, step, inputs, params):
        return g.node("Elu", inputs, alpha=self.alpha)

    def torch(self, t, step, inputs):
        return f"F.elu({inputs[0]}, {self.alpha!r})"


@register("softplus")
class Softplus(Pointwise):
    r"""$y = \log(1 + e^x)$"""

    keeps = ("x",)  # dy/dx = sigmoid(x)
    cost = 3
    fresh = True
    init_scheme = "xavier"

    def forward(self, ctx, x):
        ctx.save(x=x)
        return ctx.xp.logaddexp(0, x)

    def backward(self, ctx, gy):
        return formula_grads(self, ctx, gy), {}

    def formula(self, x):
        return E.softplus(x)

    def derivative(self, gy, y, x):
        return (gy * E.sigmoid(x),)

    # ONNX: its formula, finite for every x (ONNX's Softplus may overflow)

    def torch(self, t, step, inputs):
        return f"F.softplus({inputs[0]})"


@register("gelu")
class Gelu(FromFormula):
    r"""$y = \frac{x}{2} (1 + \tanh(\sqrt{2/\pi}\,(x + 0.044715 x^3)))$, GELU's tanh form"""

    cost = 8
    init_scheme = "he"

    def formula(self, x):
        return 0.5 * x * (1 + E.tanh(_GELU_SCALE * (x + 0.044715 * x * x * x)))

    def derivative(self, gy, y, x):
        t = E.tanh(_GELU_SCALE * (x + 0.044715 * x * x * x))
        slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_SCALE * (1 + 0.134145 * x * x)
        return (gy * slope,)

    # ONNX: its formula (opset 17 has no Gelu)

    def torch(self, t, step, inputs):
        return f'F.gelu({inputs[0]}, approximate="tanh")'


_GELU_SCALE = math.sqrt(2 / math.pi)


class _PassThrough(Pointwise):
    """Forward copies x, so any type (class labels too) may pass."""

    keeps = ()
    cost = 0

    def shape(self, x: TensorType) -> TensorType:
        return x

    def forward(self, ctx, x):
        return x  # no copy: y aliases x

    def backward(self, ctx, gy):
        return (gy,), {}

    def onnx(self, g, step, inputs, params):
        return inputs[0]

    def torch(self, t, step, inputs):
        return inputs[0]


@register("identity")
class Identity(_PassThrough):
    r"""$y = x$"""

    init_transparent = True

    def formula(self, x):
        return x

    def derivative(self, gy, y, x):
        return (gy,)


@register("exp")
class Exp(Pointwise):
    r"""$y = e^x$"""

    keeps = ("y",)  # dy/dx = y
    fresh = True

    def forward(self, ctx, x):
        y = ctx.xp.exp(x)
        ctx.save(y=y)
        return y

    def backward(self, ctx, gy):
        return formula_grads(self, ctx, gy), {}

    def formula(self, x):
        return E.exp(x)

    def derivative(self, gy, y, x):
        return (gy * y,)

    def onnx(self, g, step, inputs, params):
        return g.node("Exp", inputs)

    def torch(self, t, step, inputs):
        return f"torch.exp({inputs[0]})"


@register("log")
class Log(FromFormula):
    r"""$y = \ln x$"""

    # keeps x (FromFormula): dy/dx = 1 / x

    def formula(self, x):
        return E.log(x)

    def derivative(self, gy, y, x):
        return (gy / x,)

    def onnx(self, g, step, inputs, params):
        return g.node("Log", inputs)

    def torch(self, t, step, inputs):
        return f"torch.log({inputs[0]})"


@register("stop_gradient")
class StopGradient(_PassThrough):
    r"""$y = x$, $\partial y / \partial x = 0$"""

    nondifferentiable = ("x",)

    def backward(self, ctx, gy):
        return (None,), {}

    def torch(self, t, step, inputs):
        return f"{inputs[0]}.detach()"


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

    def array_axis(self) -> int:
        # the batch axis comes first: per-example axis a is array axis a + 1
        return self.axis + 1 if self.axis >= 0 else self.axis


@register("softmax")
class Softmax(_Normalised):
    r"""$y_i = e^{x_i} / \sum_j e^{x_j}$"""

    def forward(self, ctx, x):
        xp, axis = ctx.xp, self.array_axis()
        y = xp.exp(x - x.max(axis=axis, keepdims=True))
        y /= y.sum(axis=axis, keepdims=True)
        ctx.save(y=y)
        return y

    def onnx(self, g, step, inputs, params):
        return g.node("Softmax", inputs, axis=self.array_axis())

    def torch(self, t, step, inputs):
        return f"torch.softmax({inputs[0]}, {self.array_axis()})"

    def backward(self, ctx, gy):
        y = ctx.saved["y"]
        gyy = gy * y
        return (gyy - y * gyy.sum(axis=self.array_axis(), keepdims=True),), {}


@register("log_softmax")
class LogSoftmax(_Normalised):
    r"""$y_i = x_i - \log \sum_j e^{x_j}$"""

    def forward(self, ctx, x):
        xp, axis = ctx.xp, self.array_axis()
        shifted = x - x.max(axis=axis, keepdims=True)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.save(y=y)
        return y

    def onnx(self, g, step, inputs, params):
        return g.node("LogSoftmax", inputs, axis=self.array_axis())

    def torch(self, t, step, inputs):
        return f"torch.log_softmax({inputs[0]}, {self.array_axis()})"

    def backward(self, ctx, gy):
        y = ctx.saved["y"]
        return (gy - ctx.xp.exp(y) * gy.sum(axis=self.array_axis(), keepdims=True),), {}
