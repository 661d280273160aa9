"""Whole-sequence ops: they see every time step of a seq at once."""
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


@register("last")
class Last(_WholeSequence):
    r"""$y = x_T$"""

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x.step()


@register("first")
class First(_WholeSequence):
    r"""$y = x_1$"""

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x.step()


@register("reverse")
class Reverse(_WholeSequence):
    r"""$y_t = x_{T + 1 - t}$"""

    def shape(self, x: TensorType) -> TensorType:
        self.expect_seq(x)
        return x
