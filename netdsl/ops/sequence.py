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

    def step_grad(self, ctx, gy, step):
        """The gradient of a (T, B, *dims) input when only `step` reached the output
        (one step for all examples, or one per example)."""
        dx = ctx.xp.zeros(ctx.saved["x_shape"], dtype=gy.dtype)
        dx[step, ctx.xp.arange(gy.shape[0])] = gy
        return (dx,), {}


@register("last")
class Last(_WholeSequence):
    r"""$y = x_T$"""

    fresh_grads = True   # step_grad's zeros: the gradient's reader may add into it

    keeps = ("last",)  # each example's last real step, when a batch is padded

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x.step()

    def time_steps(self, step, steps):
        return [steps]

    def forward(self, ctx, x):
        # a padded batch: each example's last real step
        last = x.shape[0] - 1 if ctx.lengths is None else ctx.lengths - 1
        ctx.save(x_shape=x.shape, last=last)
        return x[last, ctx.xp.arange(x.shape[1])]

    def backward(self, ctx, gy):
        return self.step_grad(ctx, gy, ctx.saved["last"])

    # exported models read whole sequences: every step is real
    def onnx(self, g, step, inputs, params):
        return g.node("Gather", [inputs[0], g.const(-1)], axis=1)

    def torch(self, t, step, inputs):
        return f"{inputs[0]}[:, -1]"


@register("first")
class First(_WholeSequence):
    r"""$y = x_1$"""

    fresh_grads = True   # step_grad's zeros: the gradient's reader may add into it

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x.step()

    def time_steps(self, step, steps):
        return [1]

    def forward(self, ctx, x):
        ctx.save(x_shape=x.shape)
        return x[0]

    def backward(self, ctx, gy):
        return self.step_grad(ctx, gy, 0)

    def onnx(self, g, step, inputs, params):
        return g.node("Gather", [inputs[0], g.const(0)], axis=1)

    def torch(self, t, step, inputs):
        return f"{inputs[0]}[:, 0]"


@register("reverse")
class Reverse(_WholeSequence):
    r"""$y_t = x_{T + 1 - t}$ (of each sequence's real steps, when a batch is padded)"""

    keeps = ("order",)

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x

    def time_steps(self, step, steps):
        return [steps + 1 - step]

    def forward(self, ctx, x):
        if ctx.lengths is None:
            return x[::-1]  # a view
        ctx.save(order=self.order(ctx.xp, ctx.lengths, x.shape[0]))
        return x[ctx.saved["order"], ctx.xp.arange(x.shape[1])]

    def backward(self, ctx, gy):
        if "order" not in ctx.saved:
            return (gy[::-1],), {}
        # reversing the real steps and keeping the padding in place is its own inverse
        return (gy[ctx.saved["order"], ctx.xp.arange(gy.shape[1])],), {}

    def onnx(self, g, step, inputs, params):
        return g.node("Slice", [inputs[0], g.ints([-1]), g.ints([-2 ** 63]), g.ints([1]),
                                g.ints([-1])])

    def torch(self, t, step, inputs):
        return f"{inputs[0]}.flip(1)"

    @staticmethod
    def order(xp, lengths, steps: int):
        """(T, B) source steps: L-1-t for the L real steps of a sequence, t for its padding."""
        t = xp.arange(steps)[:, None]
        return xp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


@register("mean")
class Mean(_WholeSequence):
    r"""$y = \frac{1}{T} \sum_t x_t$"""

    keeps = ("weights",)  # 1/L on each sequence's L real steps, when a batch is padded

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x.step()

    def forward(self, ctx, x):
        if ctx.lengths is None:
            ctx.save(x_shape=x.shape)
            return x.mean(axis=0)
        xp = ctx.xp
        # a padded batch: the mean of each sequence's real steps
        weights = (xp.arange(x.shape[0])[:, None] < ctx.lengths[None, :]) / ctx.lengths
        weights = weights.astype(x.dtype).reshape(weights.shape + (1,) * (x.ndim - 2))
        ctx.save(x_shape=x.shape, weights=weights)
        return (x * weights).sum(axis=0)

    def backward(self, ctx, gy):
        shape = ctx.saved["x_shape"]
        if "weights" in ctx.saved:
            return (ctx.saved["weights"] * gy,), {}
        # every step contributed 1/T of the mean
        return (ctx.xp.broadcast_to(gy / shape[0], shape),), {}

    def onnx(self, g, step, inputs, params):
        return g.node("ReduceMean", inputs, axes=[1], keepdims=0)

    def torch(self, t, step, inputs):
        return f"{inputs[0]}.mean(1)"
