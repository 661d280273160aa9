"""Arithmetic on tensors: the binary operators with NumPy broadcasting, and scale."""
from __future__ import annotations

from netdsl.errors import ShapeError
from netdsl.ops.base import Arg, Op, number, register
from netdsl.ops.common import Pointwise, expect_float, fmt, formula_grads
from netdsl.ops.expr import Var
from netdsl.ops.layouts import EITHER, NCHW_ONLY
from netdsl.ops.numeric import align, unbroadcast
from netdsl.types import TensorType


def broadcast(a: tuple[int, ...], b: tuple[int, ...], hint: str | None = None):
    """NumPy's rule over dims aligned at the right; a clash names the dim (of the longer)."""
    rank = max(len(a), len(b))
    pa, pb = (1,) * (rank - len(a)) + a, (1,) * (rank - len(b)) + b
    for i, (m, n) in enumerate(zip(pa, pb)):
        if m != n and 1 not in (m, n):
            message = f"cannot broadcast {fmt(a)} with {fmt(b)}: dim {i} is {m} vs {n}"
            raise ShapeError(message, hint)
    return tuple(max(m, n) for m, n in zip(pa, pb))


def _fits(out, a, b):
    """`out` when the broadcast result has its shape (a smaller `a` cannot hold a + b)."""
    if out is None or out.shape != a.shape or b.ndim > a.ndim or \
            any(m != n and m != 1 for m, n in zip(b.shape[::-1], a.shape[::-1])):
        return None
    return out


class _Binary(Op):
    """y = a (op) b element by element, broadcasting like NumPy over per-example dims."""

    arity = 2
    elementwise = True
    mismatch_hint: str | None = None

    def shape(self, a: TensorType, b: TensorType) -> TensorType:
        hint = "arithmetic needs float tensors; class labels are whole numbers"
        expect_float(self, a, hint)
        expect_float(self, b, hint)
        return a.with_dims(broadcast(a.dims, b.dims, self.mismatch_hint))

    def layouts(self, a: TensorType, b: TensorType) -> frozenset[str]:
        # element by element where neither input broadcasts along an axis of the other
        return EITHER if a.dims == b.dims else NCHW_ONLY

    def forward(self, ctx, a, b):
        # per-example dims align at the right, after the batch axis, as in the shape rule
        rank = max(a.ndim, b.ndim)
        ctx.save(a_shape=a.shape, b_shape=b.shape)
        return self.apply(ctx, align(a, rank), align(b, rank))

    def backward(self, ctx, gy):
        da, db = formula_grads(self, ctx, gy)
        return (unbroadcast(da, ctx.saved["a_shape"]), unbroadcast(db, ctx.saved["b_shape"])), {}

    def onnx(self, g, step, inputs, params):
        ranks = [x.rank + 1 for x in step.input_types]
        aligned = [g.align(x, rank, max(ranks)) for x, rank in zip(inputs, ranks)]
        return g.formula(self.formula(Var("a"), Var("b")), dict(zip("ab", aligned)))

    def torch(self, t, step, inputs):
        ranks = [x.rank + 1 for x in step.input_types]
        aligned = [t.align(x, rank, max(ranks)) for x, rank in zip(inputs, ranks)]
        return t.formula(self.formula(Var("a"), Var("b")), dict(zip("ab", aligned)))


@register("add")
class Add(_Binary):
    r"""$y = a + b$"""

    keeps = ()  # the gradient passes through unchanged
    mismatch_hint = (
        "to add tensors of different channels or sizes, project one first: "
        "project(x, channels, stride) or a 1x1 conv"
    )

    inplace = True
    fresh = True
    operator, join = "+", "+"

    def apply(self, ctx, a, b):
        return ctx.xp.add(a, b, out=_fits(ctx.out, a, b))

    def formula(self, a, b):
        return a + b

    def derivative(self, gy, y, a, b):
        return gy, gy


@register("sub")
class Sub(_Binary):
    r"""$y = a - b$"""

    keeps = ()

    inplace = True
    fresh = True
    operator, join = "-", "−"

    def apply(self, ctx, a, b):
        return ctx.xp.subtract(a, b, out=_fits(ctx.out, a, b))

    def formula(self, a, b):
        return a - b

    def derivative(self, gy, y, a, b):
        return gy, -gy


@register("mul")
class Mul(_Binary):
    r"""$y = a \cdot b$"""

    keeps = ("a", "b")
    fresh = True
    operator, join = "*", "×"

    def apply(self, ctx, a, b):
        ctx.save(a=a, b=b)
        return a * b

    def formula(self, a, b):
        return a * b

    def derivative(self, gy, y, a, b):
        return gy * b, gy * a


@register("div")
class Div(_Binary):
    r"""$y = a / b$"""

    keeps = ("b", "y")  # da = gy / b, db = -gy * y / b
    fresh = True
    operator, join = "/", "÷"

    def apply(self, ctx, a, b):
        y = a / b
        ctx.save(b=b, y=y)
        return y

    def formula(self, a, b):
        return a / b

    def derivative(self, gy, y, a, b):
        return gy / b, -(gy / b) * y


@register("scale")
class Scale(Pointwise):
    r"""$y = \mathrm{factor} \cdot x + \mathrm{shift}$"""

    args = (Arg("factor", number, 1.0), Arg("shift", number, 0.0))
    keeps = ()  # the gradient is factor * gy
    cost = 2
    inplace = True
    fresh = True

    def forward(self, ctx, x):
        y = ctx.xp.multiply(x, self.factor, out=ctx.out)
        if self.shift:
            y += self.shift
        return y

    def backward(self, ctx, gy):
        return formula_grads(self, ctx, gy), {}

    def formula(self, x):
        return self.factor * x + self.shift

    def derivative(self, gy, y, x):
        return (gy * self.factor,)

    def onnx(self, g, step, inputs, params):
        y = g.node("Mul", [inputs[0], g.const(self.factor)])
        return g.node("Add", [y, g.const(self.shift)]) if self.shift else y

    def torch(self, t, step, inputs):
        return f"{self.factor!r} * {inputs[0]}" + (f" + {self.shift!r}" if self.shift else "")
