"""Max-pooling on the GPU: one kernel forward (the max and its index), one backward.

The host path pads, reduces separably and computes indices in several passes,
each a launch on a GPU. Here each output element scans its window once and keeps
the first maximum's flat index in its plane (PyTorch's return_indices; a NaN wins,
as in PyTorch). Backward adds each output's gradient at its index with atomicAdd,
since overlapping windows may pick one cell twice. Rank 1 runs as rank 2 with a
height of one. This module provides ops.pool's `max_pool` and `max_pool_backward` for
CuPy, for ranks 1 and 2.
"""
from __future__ import annotations

from netdsl.lower.cuda import Kernel
from netdsl.ops import pool
from netdsl.runtime.cuda.launch import launch

__all__ = ["KERNELS", "MAXPOOL", "MAXPOOL_BACKWARD", "maxpool", "maxpool_backward"]

_SIZES = ("H", "W", "KH", "KW", "OH", "OW", "SH", "SW", "PH", "PW")
_GEOMETRY = ", ".join(f"const long long {s}" for s in _SIZES)

MAXPOOL = Kernel("maxpool", "const T* __restrict__ x, T* __restrict__ y, "
                 f"int* __restrict__ index, {_GEOMETRY}", """
    // i indexes y (planes, OH, OW)
    const long long ow = i % OW;
    const long long oh = (i / OW) % OH;
    const T* plane = x + (i / (OW * OH)) * H * W;
    T best = 0;
    int arg = -1;  // no cell seen yet (every window holds one: pads are at most half of it)
    for (long long kh = 0; kh < KH; ++kh) {
        const long long h = oh * SH - PH + kh;
        if (h < 0 || h >= H) continue;
        for (long long kw = 0; kw < KW; ++kw) {
            const long long w = ow * SW - PW + kw;
            if (w < 0 || w >= W) continue;
            const T v = plane[h * W + w];
            if (arg < 0 || v > best || v != v) {
                best = v;
                arg = (int)(h * W + w);
            }
        }
    }
    y[i] = best;
    index[i] = arg;
""")

MAXPOOL_BACKWARD = Kernel("maxpool_backward", "const T* __restrict__ gy, "
                          f"const int* __restrict__ index, T* __restrict__ dx, {_GEOMETRY}", """
    // i indexes gy (planes, OH, OW); dx starts at zero
    atomicAdd(dx + (i / (OW * OH)) * H * W + index[i], gy[i]);
""")

KERNELS = (MAXPOOL, MAXPOOL_BACKWARD)


def _sizes(shape, kernel, stride, pad, out) -> dict:
    """The geometry as rank 2 (a rank-1 pooling has a height of one)."""
    if len(shape) == 3:
        shape, kernel, stride, pad, out = ((*shape[:2], 1, shape[2]), (1, *kernel),
                                           (1, *stride), (0, *pad), (1, *out))
    return dict(H=shape[2], W=shape[3], KH=kernel[0], KW=kernel[1], OH=out[0], OW=out[1],
                SH=stride[0], SW=stride[1], PH=pad[0], PW=pad[1])


def _launch(kernel: Kernel, arrays: tuple, n: int, sizes: dict, dtype) -> None:
    launch(kernel, n, (*arrays, *(sizes[s] for s in _SIZES)), dtype)


def maxpool(xp, x, kernel, stride, pad, out):
    """(y, indices) of a max-pooling with windows `kernel`, `stride`, `pad` per dim."""
    x = xp.ascontiguousarray(x)
    y = xp.empty(x.shape[:2] + tuple(out), dtype=x.dtype)
    indices = xp.empty(y.shape, dtype=xp.int32)
    _launch(MAXPOOL, (x, y, indices), y.size, _sizes(x.shape, kernel, stride, pad, out),
            x.dtype)
    return y, indices


def maxpool_backward(xp, gy, indices, x_shape, kernel, stride, pad):
    dx = xp.zeros(x_shape, dtype=gy.dtype)
    sizes = _sizes(x_shape, kernel, stride, pad, gy.shape[2:])
    _launch(MAXPOOL_BACKWARD, (xp.ascontiguousarray(gy), indices, dx), gy.size, sizes,
            gy.dtype)
    return dx


@pool.max_pool.provide("cupy")
def _max_pool(xp, x, g, out=None):
    if len(g.kernel) > 2:
        return NotImplemented
    y, indices = maxpool(xp, x, g.kernel, g.stride, g.lows, g.out)
    if out is None:
        return y, indices
    out[...] = y   # the op's output where the executor placed it
    return out, indices


@pool.max_pool_backward.provide("cupy")
def _max_pool_backward(xp, gy, indices, shape, g):
    if len(g.kernel) > 2:
        return NotImplemented
    return maxpool_backward(xp, gy, indices, shape, g.kernel, g.stride, g.lows)
