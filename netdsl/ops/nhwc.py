"""Ops that run in NHWC (ops.layouts): the layout pass (netdsl.lower.layout) puts them in
place of an op of a region it lays out NHWC, and `Relayout` on the edges of the region.

Each variant wraps the op it stands for: the types, parameters, initialisation, buffers
and geometry stay that op's (a value's type is its NCHW shape, whatever its layout), and
only forward and backward differ: their arrays are (N, H, W, C), through the kernels
of ops.nhwc_kernels, on every target. They state no per-channel programs and take no
chain: the native target runs them through NumPy's BLAS.
"""
from __future__ import annotations

import itertools
import math

from netdsl.ops import nhwc_kernels as kernels
from netdsl.ops.base import Op
from netdsl.ops.layouts import NHWC, TO_NCHW, TO_NHWC, channel_axis
from netdsl.ops.parallel import CHUNK_BYTES
from netdsl.types import TensorType

__all__ = ["Relayout", "InNHWC", "ConvNHWC", "ProjectNHWC", "BatchNormNHWC", "MaxPoolNHWC",
           "AvgPoolNHWC", "ConcatNHWC", "GlobalAvgPoolNHWC"]


class Relayout(Op):
    """A value's array from one layout to the other: NCHW -> NHWC (`to`="NHWC") or back.
    Its gradient is the inverse permutation."""

    keeps = ()
    fresh = True
    fresh_grads = True

    def __init__(self, to: str):
        super().__init__(to=to)
        self.name = "to_nhwc" if to == NHWC else "to_nchw"
        self.perm = TO_NHWC if to == NHWC else TO_NCHW
        self.back = TO_NCHW if to == NHWC else TO_NHWC

    def shape(self, x):
        return x   # the type is the value's NCHW shape in either layout

    def flops(self, y, x) -> int:
        return 0

    def forward(self, ctx, x):
        return ctx.xp.ascontiguousarray(x.transpose(self.perm))

    def backward(self, ctx, gy):
        return (ctx.xp.ascontiguousarray(gy.transpose(self.back)),), {}


class InNHWC(Op):
    """An op's NHWC variant: everything but forward and backward is the wrapped op's."""

    fresh = True
    layout = NHWC

    def __init__(self, inner: Op):
        super().__init__(**inner.attrs)
        self.inner = inner
        self.name = inner.name

    def shape(self, *xs):
        return self.inner.shape(*xs)

    def params(self, *xs):
        return self.inner.params(*xs)

    def buffers(self, *xs):
        return self.inner.buffers(*xs)

    def init(self, rng, *xs):
        return self.inner.init(rng, *xs)

    def fans(self, weight):
        return self.inner.fans(weight)

    def geometry(self, *xs):
        return self.inner.geometry(*xs)

    def flops(self, y, *xs) -> int:
        return self.inner.flops(y, *xs)

    def mult_adds(self, y, *xs) -> int:
        return self.inner.mult_adds(y, *xs)

    def layouts(self, *xs):
        return self.inner.layouts(*xs)

    def geometry_of(self, ctx, x):
        """The step's geometry, or (called alone) the wrapped op's for x's NCHW type."""
        if ctx.geometry is not None:
            return ctx.geometry
        return self.inner.geometry(TensorType((x.shape[3], x.shape[1], x.shape[2])))

    def __repr__(self) -> str:
        return f"{self.inner!r} [NHWC]"


def _scratch(geometry, channels: int, itemsize: int = 4) -> tuple[int, int]:
    """A chunk's columns, per example (ops.nhwc_kernels' chunks are CHUNK_BYTES)."""
    if geometry is None or (geometry.kernel == (1,) * len(geometry.kernel)
                            and all(p == (0, 0) for p in geometry.pads)):
        return 0, 0
    per = math.prod(geometry.out) * math.prod(geometry.kernel) * channels * itemsize
    return per, min(per, CHUNK_BYTES) if per else 0


class ConvNHWC(InNHWC):
    """conv2d on (N, H, W, C): im2col with columns (OH*OW, KH*KW*C) and one GEMM a chunk
    of images; a 1x1 kernel without padding one GEMM over the whole batch."""

    keeps = ("x", "weight")
    host_split = True   # its slabs on the host's threads, BLAS on one (runtime.host)

    def scratch(self, x):
        return _scratch(self.inner.geometry(x), x.dims[0])

    def forward(self, ctx, x, weight, bias=None):
        geometry = self.geometry_of(ctx, x)
        ctx.save(x=x, weight=weight, geometry=geometry)
        return kernels.conv2d(ctx.xp, x, weight, bias, geometry)

    def backward(self, ctx, gy):
        saved = ctx.saved
        dx, dweight, dbias = kernels.conv2d_backward(ctx.xp, gy, saved["x"], saved["weight"],
                                                     saved["geometry"], ctx.needs(0))
        grads = {"weight": dweight}
        if self.inner.bias:
            grads["bias"] = dbias
        return (dx,), grads


class BatchNormNHWC(InNHWC):
    """batchnorm on (N, H, W, C): the statistics of each channel over its (N, H, W) rows."""

    keeps = ("xhat", "inv_std", "weight")

    def forward(self, ctx, x, weight, bias):
        y, xhat, inv_std = kernels.batch_norm(ctx.xp, x, weight, bias, self.inner.eps,
                                              self.inner.momentum, ctx.buffers, ctx.training)
        ctx.save(xhat=xhat, inv_std=inv_std, weight=weight, batch_stats=ctx.training)
        return y

    def backward(self, ctx, gy):
        saved = ctx.saved
        dx, dweight, dbias = kernels.batch_norm_backward(
            ctx.xp, gy, saved["xhat"], saved["inv_std"], saved["weight"], saved["batch_stats"])
        return (dx,), {"weight": dweight, "bias": dbias}


class ProjectNHWC(InNHWC):
    """project on (N, H, W, C) where the shapes differ: the 1x1 convolution at its stride
    (one GEMM over the batch's sampled positions), then batchnorm, both NHWC's."""

    keeps = ("x", "weight", "xhat", "inv_std", "bn_weight")
    host_split = True

    def scratch(self, x):
        return 0, 0

    def forward(self, ctx, x, weight=None, bn_weight=None, bn_bias=None):
        if weight is None:
            return x
        geometry = self.geometry_of(ctx, x)
        z = kernels.conv2d(ctx.xp, x, weight, None, geometry)
        y, xhat, inv_std = kernels.batch_norm(ctx.xp, z, bn_weight, bn_bias, self.inner.eps,
                                              self.inner.momentum, ctx.buffers, ctx.training)
        ctx.save(x=x, weight=weight, xhat=xhat, inv_std=inv_std, bn_weight=bn_weight,
                 batch_stats=ctx.training, geometry=geometry)
        return y

    def backward(self, ctx, gy):
        saved = ctx.saved
        if "x" not in saved:
            return (gy,), {}
        dz, dgamma, dbeta = kernels.batch_norm_backward(
            ctx.xp, gy, saved["xhat"], saved["inv_std"], saved["bn_weight"],
            saved["batch_stats"])
        dx, dweight, _ = kernels.conv2d_backward(ctx.xp, dz, saved["x"], saved["weight"],
                                                 saved["geometry"], ctx.needs(0))
        return (dx,), {"weight": dweight, "bn_weight": dgamma, "bn_bias": dbeta}


class MaxPoolNHWC(InNHWC):
    """max pooling on (N, H, W, C); keeps each window's argmax cell."""

    keeps = ("indices",)
    fresh_grads = True

    def forward(self, ctx, x):
        geometry = self.geometry_of(ctx, x)
        y, indices = kernels.max_pool(ctx.xp, x, geometry)
        ctx.save(indices=indices, x_shape=x.shape, geometry=geometry)
        return y

    def backward(self, ctx, gy):
        saved = ctx.saved
        return (kernels.max_pool_backward(ctx.xp, gy, saved["indices"], saved["x_shape"],
                                          saved["geometry"]),), {}


class AvgPoolNHWC(InNHWC):
    """average pooling on (N, H, W, C), each window divided by the count the NCHW op's
    `divisor` gives (padding counted, as PyTorch's default)."""

    keeps = ()
    fresh_grads = True

    def _divisor(self, xp, shape, geometry, dtype):
        g = geometry
        d = self.inner.divisor(xp, shape[1:3], g.kernel, g.stride, g.lows, g.out, dtype)
        return d[..., None] if getattr(d, "ndim", 0) else d

    def forward(self, ctx, x):
        geometry = self.geometry_of(ctx, x)
        ctx.save(x_shape=x.shape, geometry=geometry)
        y = kernels.sum_pool(ctx.xp, x, geometry)
        y /= self._divisor(ctx.xp, x.shape, geometry, x.dtype)
        return y

    def backward(self, ctx, gy):
        shape, geometry = ctx.saved["x_shape"], ctx.saved["geometry"]
        g = gy / self._divisor(ctx.xp, shape, geometry, gy.dtype)
        return (kernels.sum_pool_backward(ctx.xp, g, shape, geometry),), {}


class ConcatNHWC(InNHWC):
    """concat of NHWC arrays: the per-example axis mapped to its NHWC place (channels
    last)."""

    keeps = ()

    def _axis(self, ndim: int) -> int:
        return channel_axis(self.inner.axis % (ndim - 1), NHWC)

    def forward(self, ctx, *xs):
        axis = self._axis(xs[0].ndim)
        ctx.save(sizes=[x.shape[axis] for x in xs])
        return ctx.xp.concatenate(xs, axis=axis)

    def backward(self, ctx, gy):
        axis = self._axis(gy.ndim)
        bounds = list(itertools.accumulate(ctx.saved["sizes"]))[:-1]
        return tuple(ctx.xp.split(gy, bounds, axis=axis)), {}


class GlobalAvgPoolNHWC(InNHWC):
    """global average pooling of (N, H, W, C) to (N, C): the output has no layout."""

    keeps = ()

    def forward(self, ctx, x):
        ctx.save(x_shape=x.shape)
        return x.reshape(x.shape[0], -1, x.shape[3]).mean(axis=1)

    def backward(self, ctx, gy):
        shape = ctx.saved["x_shape"]
        dx = ctx.xp.empty(shape, dtype=gy.dtype)
        dx[...] = (gy / (shape[1] * shape[2]))[:, None, None, :]
        return (dx,), {}

