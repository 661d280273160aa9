"""Pooling over spatial dims, its global forms, and the upsampling that undoes it."""
from __future__ import annotations

import math

from netdsl.errors import ShapeError
from netdsl.ops.base import Arg, Op, boolean, choice, ints, natural, optional, register
from netdsl.ops.common import expect_float, expect_spatial, fmt
from netdsl.ops.conv import check_output, per_dim
from netdsl.types import TensorType


def pooled_size(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooling length: windows counted with floor, or ceil when asked."""
    out = (n + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    # in ceil mode the last window must start inside the input or its left padding
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


class _Pool(Op):
    """A k-window reduction slid with a stride over [C,L] or [C,H,W]."""

    args = (
        Arg("kernel", ints()),
        Arg("stride", optional(ints()), None),
        Arg("pad", ints(natural), 0),
        Arg("ceil", boolean, False),
    )

    def windows(self, x: TensorType):
        """Kernel, stride (the kernel when not given) and pad, one value per spatial dim."""
        stride = self.kernel if self.stride is None else self.stride
        return per_dim(self, x, kernel=self.kernel, stride=stride, pad=self.pad)

    def shape(self, x: TensorType) -> TensorType:
        expect_spatial(self, x)
        k, s, p = self.windows(x)
        # PyTorch's limit: a window must never lie wholly in the padding
        if any(pi > ki // 2 for pi, ki in zip(p, k)):
            raise ShapeError(f"{self.name} pad {fmt(p)} is more than half the kernel {fmt(k)}")
        out = tuple(map(pooled_size, x.dims[1:], k, s, p, [self.ceil] * len(k)))
        check_output(self, x, out, kernel=k, stride=s, pad=p)
        return x.with_dims((x.dims[0], *out))

    def flops(self, y, x) -> int:
        (k, _, _) = self.windows(x)
        return math.prod(k) * y.size  # one compare or add per window element


@register("maxpool")
class MaxPool(_Pool):
    r"""$y_{c,i} = \max_{j \in \mathrm{window}(i)} x_{c,j}$"""


@register("avgpool")
class AvgPool(_Pool):
    r"""$y_{c,i} = \frac{1}{|w|} \sum_{j \in \mathrm{window}(i)} x_{c,j}$"""

    keeps = ()  # the gradient spreads evenly: only shapes are needed


class _GlobalPool(Op):
    """Reduce every spatial position of each channel to one number."""

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        if x.rank < 2:
            raise ShapeError(f"{self.name} expects [C,...] with spatial dims but got {x}")
        return x.with_dims(x.dims[:1])

    def flops(self, y, x) -> int:
        return x.size


@register("global_avgpool", "gap")
class GlobalAvgPool(_GlobalPool):
    r"""$y_c = \frac{1}{|S|} \sum_{s \in S} x_{c,s}$"""

    keeps = ()


@register("global_maxpool")
class GlobalMaxPool(_GlobalPool):
    r"""$y_c = \max_{s \in S} x_{c,s}$"""


@register("maxunpool")
class MaxUnpool(Op):
    r"""$y_{c,\arg\max(i)} = x_{c,i}$, zeros elsewhere (argmax from the maxpool of `pooled`)"""

    arity = 2
    args = _Pool.args[:3]
    keeps = ("pooled",)  # the maxpool's argmax travels with its output

    def shape(self, x: TensorType, pooled: TensorType) -> TensorType:
        expect_spatial(self, x)
        if x.dims != pooled.dims:
            raise ShapeError(
                f"maxunpool expects x with the shape of pooled {fmt(pooled.dims)} "
                f"but got {fmt(x.dims)}",
                "unpool a tensor shaped like the maxpool output whose argmax it reuses",
            )
        stride = self.kernel if self.stride is None else self.stride
        k, s, p = per_dim(self, x, kernel=self.kernel, stride=stride, pad=self.pad)
        out = tuple((n - 1) * si - 2 * pi + ki for n, ki, si, pi in zip(x.dims[1:], k, s, p))
        check_output(self, x, out, kernel=k, stride=s, pad=p)
        return x.with_dims((x.dims[0], *out))

    def flops(self, y, x, pooled) -> int:
        return 0  # a scatter


@register("upsample")
class Upsample(Op):
    r"""$y_{c,i} = x_{c,\lfloor i/s \rfloor}$ (nearest), or only where $s \mid i$ (bed of nails)"""

    args = (Arg("scale", ints(), 2), Arg("mode", choice("nearest", "bed_of_nails"), "nearest"))
    keeps = ()

    def shape(self, x: TensorType) -> TensorType:
        expect_spatial(self, x)
        (s,) = per_dim(self, x, scale=self.scale)
        return x.with_dims((x.dims[0], *(n * si for n, si in zip(x.dims[1:], s))))

    def flops(self, y, x) -> int:
        return 0  # copies only
