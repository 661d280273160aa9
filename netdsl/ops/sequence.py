"""Whole-sequence ops: they see every time step of a seq at once, time-major (T, B, *dims)."""
from __future__ import annotations

from netdsl.errors import ShapeError
from netdsl.ops.base import Op, register
from netdsl.types import TensorType


class _WholeSequence(Op):
    per_step = False
    keeps = ()  # backward only routes the gradient back to its steps

    def expect_seq(self, x: TensorType) -> None:
        if not x.seq:
            raise ShapeError(f"{self.name} expects a sequence (seq[...]) but got {x}")

    def flops(self, y, x) -> int:
        return 0

    def step_grad(self, ctx, gy, step: int):
        """The gradient of a (T, B, *dims) input when only `step` reached the output."""
        dx = ctx.xp.zeros(ctx.saved["x_shape"], dtype=gy.dtype)
        dx[step] = gy
        return (dx,), {}


@register("last")
class Last(_WholeSequence):
    r"""$y = x_T$"""

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x.step()

    def forward(self, ctx, x):
        ctx.save(x_shape=x.shape)
        return x[-1]

    def backward(self, ctx, gy):
        return self.step_grad(ctx, gy, -1)


@register("first")
class First(_WholeSequence):
    r"""$y = x_1$"""

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x.step()

    def forward(self, ctx, x):
        ctx.save(x_shape=x.shape)
        return x[0]

    def backward(self, ctx, gy):
        return self.step_grad(ctx, gy, 0)


@register("reverse")
class Reverse(_WholeSequence):
    r"""$y_t = x_{T + 1 - t}$"""

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x

    def forward(self, ctx, x):
        return x[::-1]  # a view

    def backward(self, ctx, gy):
        return (gy[::-1],), {}


@register("mean")
class Mean(_WholeSequence):
    r"""$y = \frac{1}{T} \sum_t x_t$"""

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x.step()

    def forward(self, ctx, x):
        ctx.save(x_shape=x.shape)
        return x.mean(axis=0)

    def backward(self, ctx, gy):
        shape = ctx.saved["x_shape"]
        # every step contributed 1/T of the mean
        return (ctx.xp.broadcast_to(gy / shape[0], shape),), {}
