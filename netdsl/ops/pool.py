"""Pooling over spatial dims, its global forms, and the upsampling that undoes it."""
from __future__ import annotations

import math

from netdsl.errors import ShapeError
from netdsl.ops.base import (
    Arg, Op, boolean, choice, ints, natural, optional, register,
)
from netdsl.ops.common import expect_float, expect_spatial, fmt, geometry_of
from netdsl.ops.conv import check_output, per_dim
from netdsl.ops.layouts import EITHER, NCHW_ONLY, NHWC, spatial_2d
from netdsl.ops.nhwc import AvgPoolNHWC, GlobalAvgPoolNHWC, MaxPoolNHWC
from netdsl.ops.numeric import scatter_add
from netdsl.ops.parallel import batch_chunks, slab_map
from netdsl.ops.routines import overridable
from netdsl.ops.windows import (
    Geometry, Windows, crop_spatial, offsets, pad_spatial, plane_index, pool_pads, settings,
)
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

    fresh = True
    init_transparent = True

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
        out = self.geometry(x).out
        check_output(self, x, out, kernel=k, stride=s, pad=p)
        return x.with_dims((x.dims[0], *out))

    def geometry(self, x: TensorType) -> Geometry:
        """The windows (PyTorch's count, in ceil mode too) and the padding they need: pad,
        and on the high side more where a ceil-mode window hangs past the end."""
        k, s, p = self.windows(x)
        out = tuple(map(pooled_size, x.dims[1:], k, s, p, [self.ceil] * len(k)))
        return Geometry.of(x.dims[1:], k, s, (1,) * len(k),
                           pool_pads(x.dims[1:], k, s, p, out), out)

    def flops(self, y, x) -> int:
        (k, _, _) = self.windows(x)
        return math.prod(k) * y.size  # one compare or add per window element

    def onnx_pool(self, g, step, x: str, op_type: str, **attrs) -> str:
        """ONNX: the pool over the geometry's windows, padded as it says (a ceil-mode
        window's overhang as padding on the high side)."""
        geo = step.geometry
        return g.node(op_type, [x], kernel_shape=geo.kernel, strides=geo.stride,
                      pads=g.pads(geo), **attrs)

    def torch_pool(self, t, step, x: str, function: str, **extra) -> str:
        """PyTorch: F.max_pool2d and its kin, whose windows this op's are."""
        shape = step.input_types[0]
        k, s, p = self.windows(shape)
        return t.call(f"F.{function}{shape.rank - 1}d", x, k, stride=None if s == k else s,
                      padding=p if any(p) else None, ceil_mode=True if self.ceil else None,
                      **extra)



def window_max(xp, win: Windows, xpad, out=None):
    """The maximum of each window of xpad (B, C, *padded), and the number of the kernel
    offset (row-major) where it first occurs, both (B, C, *out); the maxima in `out`
    where given.

    One pass per kernel offset over all windows at once: on a flat grid (stride 1) over
    one contiguous run of the whole batch, which NumPy loops over fastest. The offset
    numbers are tracked in the narrowest unsigned type, and chosen by arithmetic rather
    than a masked write (several times slower in NumPy): number += better * (n - number)
    wraps around to n exactly where better is set.
    """
    if win.flat:
        cells = (win.run(xpad, offset) for offset in win.offsets())
    else:
        cells = (win.cell(xpad, offset) for offset in win.offsets())
    first = next(cells)
    if out is not None and not win.flat:   # the maxima gathered where they are wanted
        xp.copyto(out, first)
        y = out
    else:
        y = first.copy()  # C order
    count = math.prod(win.kernel)
    number = xp.zeros(y.shape, dtype=xp.uint8 if count <= 256 else xp.uint32)
    better = xp.empty(y.shape, dtype=bool)
    # multiplying by a bool array casts it first; a same-sized unsigned view of it does not
    mask = better.view(xp.uint8) if number.dtype == xp.uint8 else better
    change = xp.empty_like(number)
    for n, cell in enumerate(cells, 1):
        xp.greater(cell, y, out=better)  # strictly: the first maximum wins, as in PyTorch
        xp.maximum(y, cell, out=y)
        xp.subtract(n, number, out=change)
        change *= mask
        number += change
    if win.flat:  # the output positions out of the run
        batch = xpad.shape[:2]
        y = xp.ascontiguousarray(win.valid_run(xp, y, batch))
        number = win.valid_run(xp, number, batch)
        if out is not None:
            out[...] = y
            y = out
    return y, number


# planes that separable_max reduces at a time: its temporaries stay in the core's cache
POOL_CHUNK_BYTES = 1 << 20


def separable_max(xp, win: Windows, xpad, out=None):
    """window_max for stride 1 (a flat grid), one spatial dim at a time: the maximum over
    each row of a window, then over those row maxima down each column, 2 (k - 1) steps
    for a k x k window instead of k * k - 1, on a few planes at a time.

    Each pass reduces the k cells a dim's kernel offsets shift to, over a contiguous run
    of the planes. Picking the first maximum along each dim in turn picks the first in
    row-major order, as window_max does; the offset's number is carried along: a pass
    adds o * (the kernel cells after its dim) to the number found at the winning cell o.
    On the host each core reduces a slab of the planes.
    """
    planes = xpad.shape[0] * xpad.shape[1]
    area = math.prod(win.padded)
    flat = xpad.reshape(planes * area)
    y = (xp.empty((planes,) + win.out, dtype=xpad.dtype) if out is None
         else out.reshape((planes,) + win.out))
    count = math.prod(win.kernel)
    number = xp.empty(y.shape, dtype=xp.uint8 if count <= 256 else xp.uint32)

    def reduce(slab):
        for part in batch_chunks(xp, slab.stop - slab.start, area * xpad.itemsize,
                                 POOL_CHUNK_BYTES):
            part = slice(slab.start + part.start, slab.start + part.stop)
            run = flat[part.start * area:part.stop * area]
            best, numbers = _separable_run(xp, win, run, number.dtype)
            n = part.stop - part.start
            y[part] = win.valid_run(xp, best, (1, n))[0]
            number[part] = win.valid_run(xp, numbers, (1, n))[0]

    slab_map(xp, reduce, planes, xpad.nbytes)
    batch = xpad.shape[:2]
    return (y.reshape(batch + win.out) if out is None else out,
            number.reshape(batch + win.out))


def _separable_run(xp, win: Windows, run, dtype):
    """The maxima and offset numbers of the windows in a run of whole padded planes, laid
    out as the run (a window's result at its first cell)."""
    best, numbers = run, None
    for dim in reversed(range(len(win.kernel))):
        k, pitch = win.kernel[dim], win.pitch[dim]
        below = math.prod(win.kernel[dim + 1:])
        length = len(best) - (k - 1) * pitch
        shifted = [slice(o * pitch, o * pitch + length) for o in range(k)]
        y = best[shifted[0]].copy()
        number = xp.zeros(length, dtype) if numbers is None else numbers[shifted[0]].copy()
        better = xp.empty(length, dtype=bool)
        # multiplying by a bool array casts it first; a same-sized unsigned view does not
        mask = better.view(xp.uint8) if dtype == xp.uint8 else better
        change = xp.empty(length, dtype)
        for o in range(1, k):
            cell = best[shifted[o]]
            xp.greater(cell, y, out=better)  # strictly: the first maximum wins
            xp.maximum(y, cell, out=y)
            if numbers is None:
                xp.subtract(o * below, number, out=change)
            else:
                xp.add(numbers[shifted[o]], o * below, out=change)
                change -= number
            change *= mask  # number += better * (candidate - number), wrapping around
            number += change
        best, numbers = y, number
    return best, numbers


def offset_index(xp, number, kernel, step):
    """The flat plane index (int32) of the kernel offset numbered `number` in row-major
    order, for a plane with row-major strides `step`.

    number = sum of o_i * below_i over the offset's coordinates o_i, with below_i the
    kernel cells after dim i, and the index is the sum of o_i * step_i: number plus
    o_i * (step_i - below_i). Arithmetic on the narrow numbers, where a table lookup
    would first widen all of them to 64-bit indices.
    """
    index = number.astype(xp.int32)
    for i in range(len(kernel) - 1):
        below = math.prod(kernel[i + 1:])
        o = number // below
        if i:
            o %= kernel[i]
        index += xp.multiply(o, step[i] - below, dtype=xp.int32)
    return index


@register("maxpool")
class MaxPool(_Pool):
    r"""$y_{c,i} = \max_{j \in \mathrm{window}(i)} x_{c,j}$"""

    # the argmax of each window as a flat (int32) index into its input plane, the values
    # PyTorch's return_indices gives; a maxunpool of this output borrows them
    keeps = ("indices",)
    host_split = True  # see runtime.host.one_blas_thread
    fresh_grads = True  # dx is made of zeros by every max_pool_backward
    fills_out = True

    def layouts(self, x: TensorType) -> frozenset[str]:
        return EITHER if spatial_2d(x) else NCHW_ONLY

    def in_layout(self, layout: str, *xs: TensorType) -> Op:
        return MaxPoolNHWC(self) if layout == NHWC else self

    def forward(self, ctx, x):
        geometry = geometry_of(self, ctx, x)
        y, indices = max_pool(ctx.xp, x, geometry, out=ctx.out)
        ctx.save(indices=indices, x_shape=x.shape, geometry=geometry)
        return y

    def backward(self, ctx, gy):
        saved = ctx.saved
        return (max_pool_backward(ctx.xp, gy, saved["indices"], saved["x_shape"],
                                  saved["geometry"]),), {}

    def onnx(self, g, step, inputs, params):
        return self.onnx_pool(g, step, inputs[0], "MaxPool")

    def torch(self, t, step, inputs):
        return self.torch_pool(t, step, inputs[0], "max_pool")


@overridable
def max_pool(xp, x, geometry: Geometry, out=None):
    """(y, indices): the maxima of the geometry's windows (in `out` where given:
    contiguous, y's shape and dtype) and the flat index of each one's first maximum in
    its input plane."""
    spatial = x.shape[2:]
    k, s, p, counts = geometry.kernel, geometry.stride, geometry.lows, geometry.out
    win = Windows.of(geometry)
    pads = geometry.pads
    xpad = pad_spatial(xp, xp.ascontiguousarray(x), pads, value=-xp.inf)
    y, number = (separable_max if win.flat else window_max)(xp, win, xpad, out)
    del xpad  # the padded copy, if any: freed before the indices are made
    # the offset's flat index in the plane, plus each window's first cell's
    step = [math.prod(spatial[i + 1:]) for i in range(len(k))]  # row-major plane strides
    first = 0
    for i, (si, pi, m) in enumerate(zip(s, p, counts)):
        start = (xp.arange(m, dtype=xp.int32) * si - pi) * step[i]
        first = first + start.reshape((-1,) + (1,) * (len(k) - 1 - i))
    indices = xp.empty(number.shape, dtype=xp.int32)

    def index(part):  # first is an out-shaped grid, broadcast over batch and channels
        xp.add(offset_index(xp, number[part], k, step), first, out=indices[part])

    slab_map(xp, index, len(indices), indices.nbytes)
    return y, indices


@overridable
def max_pool_backward(xp, gy, indices, shape, geometry: Geometry):
    """dx of max_pool: each output's gradient added at its maximum's index."""
    dx = xp.zeros(shape, dtype=gy.dtype)
    disjoint = all(si >= ki for si, ki in zip(geometry.stride, geometry.kernel))

    def scatter(part):  # the examples of a slab: planes of their own
        target = dx[part].reshape(-1)
        at = plane_index(xp, indices[part], math.prod(shape[2:])).reshape(-1)
        if disjoint:
            target[at] = gy[part].reshape(-1)  # every index is distinct
        else:
            scatter_add(xp, target, at, gy[part].reshape(-1))

    slab_map(xp, scatter, shape[0], dx.nbytes)
    return dx


@register("avgpool")
class AvgPool(_Pool):
    r"""$y_{c,i} = \frac{1}{|w|} \sum_{j \in \mathrm{window}(i)} x_{c,j}$"""

    keeps = ()  # the gradient spreads evenly: only shapes are needed

    def layouts(self, x: TensorType) -> frozenset[str]:
        return EITHER if spatial_2d(x) else NCHW_ONLY

    def in_layout(self, layout: str, *xs: TensorType) -> Op:
        return AvgPoolNHWC(self) if layout == NHWC else self

    def divisor(self, xp, spatial, k, s, p, out, dtype):
        """Cells per window, padding included (PyTorch's count_include_pad), except the part
        of a ceil-mode window that hangs past the padding: a number, or one per window."""
        if all((m - 1) * si + ki <= n + 2 * pi for n, ki, si, pi, m in zip(spatial, k, s, p, out)):
            return math.prod(k)
        count = 1
        for i, (n, ki, si, pi, m) in enumerate(zip(spatial, k, s, p, out)):
            start = xp.arange(m, dtype=dtype) * si - pi
            cells = xp.minimum(start + ki, n + pi) - start
            count = count * cells.reshape((-1,) + (1,) * (len(k) - 1 - i))
        return count

    def forward(self, ctx, x):
        xp, geometry = ctx.xp, geometry_of(self, ctx, x)
        k, s, p, out = geometry.kernel, geometry.stride, geometry.lows, geometry.out
        xpad = pad_spatial(xp, x, geometry.pads)
        y = None
        for _, _, index in offsets(k, s, (1,) * len(k), out):
            if y is None:
                y = xpad[index].copy()
            else:
                y += xpad[index]
        y /= self.divisor(xp, x.shape[2:], k, s, p, out, x.dtype)
        ctx.save(x_shape=x.shape, geometry=geometry)
        return y

    def backward(self, ctx, gy):
        xp, shape, geometry = ctx.xp, ctx.saved["x_shape"], ctx.saved["geometry"]
        k, s, p, out = geometry.kernel, geometry.stride, geometry.lows, geometry.out
        pads = geometry.pads
        g = gy / self.divisor(xp, shape[2:], k, s, p, out, gy.dtype)
        dx = xp.zeros(shape[:2] + tuple(n + lo + hi for n, (lo, hi) in zip(shape[2:], pads)),
                      dtype=gy.dtype)
        disjoint = all(si >= ki for si, ki in zip(s, k))
        for _, _, index in offsets(k, s, (1,) * len(k), out):
            if disjoint:
                dx[index] = g  # each cell lies in one window at most: no read-add
            else:
                dx[index] += g
        return (crop_spatial(dx, pads, shape[2:]),), {}

    def onnx(self, g, step, inputs, params):
        # every cell of the padded windows counted, then the windows that overhang the
        # padding (ceil mode) divided by their own count instead, as forward does
        y = self.onnx_pool(g, step, inputs[0], "AveragePool", count_include_pad=1)
        geo = step.geometry
        cells = self.divisor(g.xp, geo.spatial, geo.kernel, geo.stride, geo.lows, geo.out,
                             g.dtype)
        if getattr(cells, "ndim", 0) == 0:
            return y
        return g.node("Mul", [y, g.const(math.prod(geo.kernel) / cells)])

    def torch(self, t, step, inputs):
        return self.torch_pool(t, step, inputs[0], "avg_pool")  # counts padding, as forward


class _GlobalPool(Op):
    """Reduce every spatial position of each channel to one number."""

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        if x.rank < 2:
            raise ShapeError(f"{self.name} expects [C,...] with spatial dims but got {x}")
        return x.with_dims(x.dims[:1])

    def flops(self, y, x) -> int:
        return x.size

    @staticmethod
    def planes(x):
        """x (B, C, *S) as (B, C, S): each channel's cells in one row."""
        return x.reshape(x.shape[:2] + (-1,))


@register("global_avgpool", "gap")
class GlobalAvgPool(_GlobalPool):
    r"""$y_c = \frac{1}{|S|} \sum_{s \in S} x_{c,s}$"""

    keeps = ()
    fresh = True
    init_transparent = True

    def layouts(self, x: TensorType) -> frozenset[str]:
        # its output (C,) has no layout: a region may end here without a change
        return EITHER if spatial_2d(x) else NCHW_ONLY

    def in_layout(self, layout: str, *xs: TensorType) -> Op:
        return GlobalAvgPoolNHWC(self) if layout == NHWC else self

    def forward(self, ctx, x):
        ctx.save(x_shape=x.shape)
        return self.planes(x).mean(axis=-1)

    def backward(self, ctx, gy):
        shape = ctx.saved["x_shape"]
        dx = ctx.xp.empty(shape, dtype=gy.dtype)
        self.planes(dx)[...] = (gy / math.prod(shape[2:]))[..., None]
        return (dx,), {}

    def onnx(self, g, step, inputs, params):
        axes = list(range(2, step.input_types[0].rank + 1))
        return g.node("ReduceMean", inputs, axes=axes, keepdims=0)

    def torch(self, t, step, inputs):
        return f"{inputs[0]}.flatten(2).mean(-1)"


@register("global_maxpool")
class GlobalMaxPool(_GlobalPool):
    r"""$y_c = \max_{s \in S} x_{c,s}$"""

    keeps = ("indices",)  # the argmax cell of each channel

    def forward(self, ctx, x):
        xp, planes = ctx.xp, self.planes(x)
        indices = planes.argmax(axis=-1)
        ctx.save(indices=indices, x_shape=x.shape)
        return xp.take_along_axis(planes, indices[..., None], axis=-1)[..., 0]

    def backward(self, ctx, gy):
        xp, shape = ctx.xp, ctx.saved["x_shape"]
        dx = xp.zeros(math.prod(shape), dtype=gy.dtype)
        dx[plane_index(xp, ctx.saved["indices"], math.prod(shape[2:])).reshape(-1)] = \
            gy.reshape(-1)
        return (dx.reshape(shape),), {}

    def onnx(self, g, step, inputs, params):
        axes = list(range(2, step.input_types[0].rank + 1))
        return g.node("ReduceMax", inputs, axes=axes, keepdims=0)

    def torch(self, t, step, inputs):
        return f"{inputs[0]}.flatten(2).amax(-1)"


@register("maxunpool")
class MaxUnpool(Op):
    r"""$y_{c,\arg\max(i)} = x_{c,i}$, zeros elsewhere (argmax from the maxpool of `pooled`)"""

    arity = 2
    args = _Pool.args[:3]
    keeps = ("indices",)  # borrowed from the maxpool, see forward
    # forward's `indices` keyword is the saved "indices" of the node that made input `pooled`
    borrows = {"indices": ("pooled", "indices")}
    # the exporters write no maxpool with its indices: what a user would write instead
    nearest = {"ONNX": "MaxUnpool, given the indices a MaxPool with two outputs returns",
               "PyTorch": "nn.MaxUnpool2d, given the indices of "
                          "nn.MaxPool2d(return_indices=True)"}

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

    def forward(self, ctx, x, pooled, indices):
        """Scatter x to where the maxpool that made `pooled` found its maxima.

        `indices` is that maxpool node's `ctx.saved["indices"]` (flat indices into each
        input plane, as PyTorch's return_indices); the executor hands it over as a keyword,
        as `borrows` declares. In eval mode too, it must keep the maxpool's saved indices
        alive until this forward has run. `pooled` itself is not read.
        """
        xp = ctx.xp
        stride = self.kernel if self.stride is None else self.stride
        k, s, p = settings(self, x.ndim - 2, kernel=self.kernel, stride=stride, pad=self.pad)
        out = tuple((n - 1) * si - 2 * pi + ki for n, ki, si, pi in zip(x.shape[2:], k, s, p))
        y = xp.zeros(x.shape[:2] + out, dtype=x.dtype)
        y.reshape(-1)[plane_index(xp, indices, math.prod(out)).reshape(-1)] = x.reshape(-1)
        ctx.save(indices=indices)
        return y

    def backward(self, ctx, gy):
        xp, indices = ctx.xp, ctx.saved["indices"]
        at = plane_index(xp, indices, math.prod(gy.shape[2:]))
        return (gy.reshape(-1)[at.reshape(-1)].reshape(indices.shape), None), {}



@register("upsample")
class Upsample(Op):
    r"""$y_{c,i} = x_{c,\lfloor i/s \rfloor}$ (nearest), or only where $s \mid i$ (bed of nails)"""

    args = (Arg("scale", ints(), 2), Arg("mode", choice("nearest", "bed_of_nails"), "nearest"))
    keeps = ()

    def nails(self, ndim: int):
        """Scale per spatial dim, and the index of each block's top-left cell."""
        (s,) = settings(self, ndim - 2, scale=self.scale)
        return s, (slice(None), slice(None)) + tuple(slice(None, None, si) for si in s)

    def forward(self, ctx, x):
        xp = ctx.xp
        s, top_left = self.nails(x.ndim)
        out = x.shape[:2] + tuple(n * si for n, si in zip(x.shape[2:], s))
        if self.mode == "bed_of_nails":
            y = xp.zeros(out, dtype=x.dtype)
            y[top_left] = x
            return y
        # each cell becomes a block: (B, C, n1, 1, n2, 1) broadcast to (B, C, n1, s1, n2, s2)
        single = x.shape[:2] + tuple(d for n in x.shape[2:] for d in (n, 1))
        blocks = x.shape[:2] + tuple(d for n, si in zip(x.shape[2:], s) for d in (n, si))
        return xp.broadcast_to(x.reshape(single), blocks).reshape(out)  # one copy

    def backward(self, ctx, gy):
        s, top_left = self.nails(gy.ndim)
        if self.mode == "bed_of_nails":
            return (gy[top_left],), {}
        blocks = gy.shape[:2] + tuple(d for n, si in zip(gy.shape[2:], s) for d in (n // si, si))
        return (gy.reshape(blocks).sum(axis=tuple(range(3, len(blocks), 2))),), {}

    def shape(self, x: TensorType) -> TensorType:
        expect_spatial(self, x)
        (s,) = per_dim(self, x, scale=self.scale)
        return x.with_dims((x.dims[0], *(n * si for n, si in zip(x.dims[1:], s))))

    def flops(self, y, x) -> int:
        return 0  # copies only

    def onnx(self, g, step, inputs, params):
        # each cell gets a unit axis after it, which the scale fills (nearest: copies of
        # it; bed of nails: zeros after it), and the pairs of axes are merged again
        x = step.input_types[0]
        (s,) = per_dim(self, x, scale=self.scale)
        spaced = [d for n in x.dims[1:] for d in (n, 1)]
        cells = g.node("Reshape", [inputs[0], g.ints([-1, x.dims[0], *spaced])])
        if self.mode == "nearest":
            blocks = g.node("Expand", [cells, g.ints([1, 1, *(d for si in s for d in (1, si))])])
        else:
            after = [0, 0, *(d for si in s for d in (0, si - 1))]
            blocks = g.node("Pad", [cells, g.ints([0] * len(after) + after)])
        out = self.shape(x).dims
        return g.node("Reshape", [blocks, g.ints([-1, *out])])

    def torch(self, t, step, inputs):
        (s,) = per_dim(self, step.input_types[0], scale=self.scale)
        if self.mode == "bed_of_nails":
            return f"{t.helper('bed_of_nails', BED_OF_NAILS)}({inputs[0]}, {s!r})"
        y = inputs[0]
        for axis, si in enumerate(s, 2):
            y = f"{y}.repeat_interleave({si}, {axis})"
        return y


# the generated PyTorch module's bed-of-nails upsampling
BED_OF_NAILS = '''
def bed_of_nails(x, scale):
    """Each cell at the first corner of a block of zeros `scale` cells wide."""
    y = x.new_zeros(*x.shape[:2], *(n * s for n, s in zip(x.shape[2:], scale)))
    y[(slice(None), slice(None), *(slice(None, None, s) for s in scale))] = x
    return y
'''
