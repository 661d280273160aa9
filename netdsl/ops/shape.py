"""Ops that move elements without arithmetic: flatten, reshape, concat, split, crop."""
from __future__ import annotations

import itertools
import math

from netdsl.errors import ShapeError
from netdsl.ops.base import Arg, ArgError, Op, integer, ints, natural, positive, register
from netdsl.ops.common import fmt
from netdsl.ops.layouts import EITHER, NCHW_ONLY, NHWC, spatial_2d
from netdsl.ops.nhwc import ConcatNHWC
from netdsl.types import TensorType


def sizes(value) -> tuple[int, ...]:
    """Target dims for reshape: positive sizes and at most one -1 (inferred)."""
    dims = ints(integer)(value)
    if any(d < 1 and d != -1 for d in dims) or dims.count(-1) > 1:
        raise ValueError(f"expects sizes > 0 with at most one -1, got {fmt(dims)}")
    return dims


def normal_axis(op: Op, axis: int, x: TensorType) -> int:
    """A possibly negative axis as an index into x's per-example dims."""
    if not -x.rank <= axis < x.rank:
        raise ShapeError(f"{op.name} axis {axis} is out of range for {x}")
    return axis % x.rank


def array_axis(axis: int, ndim: int) -> int:
    """A per-example axis as an axis of the batched array (the batch axis comes first)."""
    return axis % (ndim - 1) + 1


class _Movement(Op):
    keeps = ()  # backward only rearranges the gradient

    def flops(self, y, *xs) -> int:
        return 0

    def backward(self, ctx, gy):
        # flatten and reshape: back to the input's shape (a view when gy is contiguous)
        return (gy.reshape(ctx.saved["x_shape"]),), {}


@register("flatten")
class Flatten(_Movement):
    r"""$y = \mathrm{vec}(x)$, all per-example dims as one"""

    def shape(self, x: TensorType) -> TensorType:
        return x.with_dims((x.size,))

    def forward(self, ctx, x):
        ctx.save(x_shape=x.shape)
        return x.reshape(x.shape[0], -1)

    def onnx(self, g, step, inputs, params):
        return g.node("Flatten", inputs, axis=1)

    def torch(self, t, step, inputs):
        return f"{inputs[0]}.flatten(1)"


@register("reshape")
class Reshape(_Movement):
    r"""$y = x$ viewed with dims `dims` (one -1 is inferred)"""

    args = (Arg("dims", sizes),)

    def shape(self, x: TensorType) -> TensorType:
        known = math.prod(d for d in self.dims if d != -1)
        fits = x.size % known == 0 if -1 in self.dims else x.size == known
        if not fits:
            raise ShapeError(
                f"reshape cannot make {fmt(self.dims)} from {x}: {x.size} elements "
                f"{'are not a multiple of' if -1 in self.dims else 'vs'} {known}"
            )
        return x.with_dims(x.size // known if d == -1 else d for d in self.dims)

    def forward(self, ctx, x):
        ctx.save(x_shape=x.shape)
        return x.reshape((x.shape[0],) + self.dims)

    def onnx(self, g, step, inputs, params):
        dims = self.shape(step.input_types[0]).dims
        return g.node("Reshape", [inputs[0], g.ints([-1, *dims])])

    def torch(self, t, step, inputs):
        dims = self.shape(step.input_types[0]).dims
        return f"{inputs[0]}.reshape(-1, {', '.join(map(str, dims))})"


@register("concat")
class Concat(_Movement):
    r"""$y = [x_1; x_2; \dots]$ along `axis`"""

    arity = (1, None)
    args = (Arg("axis", integer, 0),)
    fresh = True
    init_transparent = False
    concatenates = True
    join = "concat"

    def shape(self, *xs: TensorType) -> TensorType:
        first = xs[0]
        axis = normal_axis(self, self.axis, first)
        for i, x in enumerate(xs):
            if (x.dtype, x.classes) != (first.dtype, first.classes):
                raise ShapeError(
                    f"concat inputs differ in type: input 0 is {first}, input {i} is {x}"
                )

        def others(x: TensorType):
            return (x.rank, x.dims[:axis] + x.dims[axis + 1:])

        bad = [i for i, x in enumerate(xs) if others(x) != others(first)]
        if bad:
            seen = ", ".join(f"input {i} is {fmt(xs[i].dims)}" for i in bad)
            raise ShapeError(
                f"concat along axis {self.axis} needs the other dims to agree: "
                f"input 0 is {fmt(first.dims)} but {seen}",
                "crop or pool the larger inputs to match, e.g. crop(x, like)",
            )
        total = sum(x.dims[axis] for x in xs)
        return first.with_dims(first.dims[:axis] + (total,) + first.dims[axis + 1:])

    def layouts(self, *xs: TensorType) -> frozenset[str]:
        # along any axis, mapped to its place in the layout (channels last in NHWC)
        return EITHER if all(map(spatial_2d, xs)) else NCHW_ONLY

    def in_layout(self, layout: str, *xs: TensorType) -> Op:
        return ConcatNHWC(self) if layout == NHWC else self

    def forward(self, ctx, *xs):
        axis = array_axis(self.axis, xs[0].ndim)
        ctx.save(sizes=[x.shape[axis] for x in xs])
        return ctx.xp.concatenate(xs, axis=axis)

    def backward(self, ctx, gy):
        axis = array_axis(self.axis, gy.ndim)
        bounds = list(itertools.accumulate(ctx.saved["sizes"]))[:-1]
        return tuple(ctx.xp.split(gy, bounds, axis=axis)), {}

    def onnx(self, g, step, inputs, params):
        rank = step.input_types[0].rank + 1
        return g.node("Concat", inputs, axis=array_axis(self.axis, rank))

    def torch(self, t, step, inputs):
        rank = step.input_types[0].rank + 1
        return f"torch.cat([{', '.join(inputs)}], {array_axis(self.axis, rank)})"


@register("split")
class Split(_Movement):
    r"""$y = $ chunk `index` of `parts` equal chunks of $x$ along `axis`"""

    args = (Arg("parts", positive), Arg("axis", integer, 0), Arg("index", natural, 0))
    multi_output = True
    init_transparent = False

    def __init__(self, **attrs):
        super().__init__(**attrs)
        if self.index >= self.parts:
            raise ArgError(f"split index={self.index} must be below parts={self.parts}", "index")

    def shape(self, x: TensorType) -> TensorType:
        axis = normal_axis(self, self.axis, x)
        n = x.dims[axis]
        if n % self.parts:
            raise ShapeError(
                f"split cannot cut dim {self.axis} of {x} (size {n}) into {self.parts} equal parts"
            )
        return x.with_dims(x.dims[:axis] + (n // self.parts,) + x.dims[axis + 1:])

    def chunk(self, shape) -> tuple:
        """The index of chunk `index` in a batch of `shape`."""
        axis = array_axis(self.axis, len(shape))
        size = shape[axis] // self.parts
        return (slice(None),) * axis + (slice(self.index * size, (self.index + 1) * size),)

    def forward(self, ctx, x):
        ctx.save(x_shape=x.shape)
        return x[self.chunk(x.shape)]  # a view

    def grad_region(self, ctx):
        return ctx.saved["x_shape"], self.chunk(ctx.saved["x_shape"])

    def column_block(self, width: int) -> int | None:
        return self.index * (width // self.parts) if self.axis in (0, -1) else None

    def backward(self, ctx, gy):
        # the other chunks' gradients come through their own split nodes; the executor sums
        shape = ctx.saved["x_shape"]
        dx = ctx.xp.zeros(shape, dtype=gy.dtype)
        dx[self.chunk(shape)] = gy
        return (dx,), {}

    def onnx(self, g, step, inputs, params):
        return slice_onnx(g, inputs[0], self.chunk((1, *step.input_types[0].dims)))

    def torch(self, t, step, inputs):
        return slice_torch(inputs[0], self.chunk((1, *step.input_types[0].dims)))


@register("crop")
class Crop(_Movement):
    r"""$y = x$ centre-cropped to the spatial size of `like`"""

    arity = 2
    nondifferentiable = ("like",)  # only its size is read
    init_transparent = False
    join = "crop"

    def shape(self, x: TensorType, like: TensorType) -> TensorType:
        if x.rank != like.rank or x.rank < 2:
            raise ShapeError(
                f"crop expects x and like of one rank [C,...] but got {x} and {like}"
            )
        for i in range(1, x.rank):
            if like.dims[i] > x.dims[i]:
                raise ShapeError(
                    f"crop cannot centre-crop {fmt(x.dims)} to the larger {fmt(like.dims)}: "
                    f"dim {i} is {x.dims[i]} < {like.dims[i]}",
                    "crop the larger tensor to the smaller: crop(big, small)",
                )
        return x.with_dims(x.dims[:1] + like.dims[1:])

    @staticmethod
    def window(shape, like_shape) -> tuple:
        """The centred index: (n - m) // 2 cells off the low side of each spatial dim."""
        return (slice(None), slice(None)) + tuple(
            slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(shape[2:], like_shape[2:]))

    def forward(self, ctx, x, like):
        index = self.window(x.shape, like.shape)
        ctx.save(x_shape=x.shape, index=index)
        return x[index]  # a view

    def backward(self, ctx, gy):
        dx = ctx.xp.zeros(ctx.saved["x_shape"], dtype=gy.dtype)
        dx[ctx.saved["index"]] = gy
        return (dx, None), {}  # like gives only its size

    def onnx(self, g, step, inputs, params):
        x, like = ((1, *t.dims) for t in step.input_types)
        return slice_onnx(g, inputs[0], self.window(x, like))

    def torch(self, t, step, inputs):
        x, like = ((1, *t.dims) for t in step.input_types)
        return slice_torch(inputs[0], self.window(x, like))


def slice_onnx(g, x: str, index: tuple) -> str:
    """ONNX: x[index], an index of slices (steps of 1) along the axes after the batch."""
    axes = [i for i, part in enumerate(index) if part != slice(None)]
    return g.node("Slice", [x, g.ints(index[i].start for i in axes),
                            g.ints(index[i].stop for i in axes), g.ints(axes)])


def slice_torch(x: str, index: tuple) -> str:
    """PyTorch: x[index] as Python writes it, `x[:, :, 2:30, 2:30]`."""
    parts = [":" if part == slice(None) else f"{part.start}:{part.stop}" for part in index]
    while parts[-1] == ":":
        parts.pop()
    return f"{x}[{', '.join(parts)}]"
