"""Dense layers and embeddings: learned matrices applied to vectors or looked up by index."""
from __future__ import annotations

from netdsl.errors import ShapeError
from netdsl.ops.base import Arg, Op, boolean, optional, positive, register
from netdsl.ops.common import expect_float
from netdsl.types import TensorType


@register("dense")
class Dense(Op):
    r"""$y = W x + b$"""

    args = (Arg("units", positive), Arg("bias", boolean, True))

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        if x.rank != 1:
            raise ShapeError(
                f"dense expects a vector [N] but got {x}",
                "flatten it first: -> flatten -> dense(...)",
            )
        return x.with_dims((self.units,))

    def params(self, x):
        shapes = {"weight": (self.units, x.dims[0])}
        if self.bias:
            shapes["bias"] = (self.units,)
        return shapes

    def flops(self, y, x) -> int:
        return 2 * x.dims[0] * self.units + (self.units if self.bias else 0)


@register("embedding")
class Embedding(Op):
    r"""$y = W_{x}$, row $x$ of a learned $V \times \mathrm{dim}$ table"""

    args = (Arg("dim", positive), Arg("vocab", optional(positive), None))

    def shape(self, x: TensorType) -> TensorType:
        if x.classes is None or x.dtype.startswith("float"):
            raise ShapeError(
                f"embedding expects class indices (class(V)) but got {x}",
                "declare the input as word indices, e.g. `input w : seq class(5000)`",
            )
        if self.vocab is not None and self.vocab < x.classes:
            raise ShapeError(
                f"embedding vocab={self.vocab} is smaller than the input's {x.classes} classes",
                "leave vocab out to take it from the input",
            )
        return TensorType(x.dims + (self.dim,), seq=x.seq)

    def params(self, x):
        return {"weight": (self.vocab or x.classes, self.dim)}

    def flops(self, y, x) -> int:
        return 0  # a row copy, no arithmetic
