"""Source ops: tensors made from nothing but their arguments."""
from __future__ import annotations

from netdsl.ops.base import Arg, Op, ints, register
from netdsl.types import TensorType


@register("normal")
class Normal(Op):
    r"""$y \sim N(0, I)$ with per-example dims `dims`"""

    draws = True
    arity = 0
    args = (Arg("dims", ints()),)
    keeps = ()

    def shape(self) -> TensorType:
        return TensorType(self.dims)

    def flops(self, y) -> int:
        return y.size  # one draw per element

    def forward(self, ctx):
        # no input to take the batch size from: the executor sets ctx.batch
        return ctx.rng.standard_normal((ctx.batch, *self.dims), dtype=ctx.dtype)

    def backward(self, ctx, gy):
        return (), {}

    # an exported model takes the draws as an input, so its outputs can be reproduced
    def onnx(self, g, step, inputs, params):
        return g.feed(step.node)

    def torch(self, t, step, inputs):
        return t.feed(step.node)
