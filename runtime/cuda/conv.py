"""Convolution on the GPU: one im2col kernel, cuBLAS, one col2im kernel.

CuPy 14 has no cuDNN, and the host path's im2col (a copy per kernel offset) would
be k*k launches on a GPU. Here the columns of a whole batch come from one kernel,
the product is one batched GEMM whose result is already (B, O, H', W'), and the
input gradient gathers each pixel's column entries in one kernel, without atomics.
Convolutions of rank 1 run as rank 2 with a height of one.

The kernels are grid-stride loops over every output element, like the generated
elementwise kernels, so the same source also runs on the CPU in the tests. This module
provides ops.convolve's `conv_nd` and `conv_nd_backward` for CuPy.
"""
from __future__ import annotations

from netdsl.lower.cuda import Kernel
from netdsl.ops import convolve
from netdsl.ops.windows import Geometry
from netdsl.runtime.cuda.launch import launch

__all__ = ["KERNELS", "IM2COL", "COL2IM", "conv2d", "conv2d_backward", "supported"]

_SIZES = ("B", "C", "H", "W", "KH", "KW", "OH", "OW", "SH", "SW", "PH", "PW", "DH", "DW")
_PARAMS = ("const T* __restrict__ in, T* __restrict__ out, "
           + ", ".join(f"const long long {s}" for s in _SIZES))

IM2COL = Kernel("im2col", _PARAMS, """
    // i indexes cols (B, C, KH, KW, OH, OW): one column entry per thread
    long long r = i;
    const long long ow = r % OW; r /= OW;
    const long long oh = r % OH; r /= OH;
    const long long kw = r % KW; r /= KW;
    const long long kh = r % KH; r /= KH;
    const long long c = r % C;
    const long long b = r / C;
    const long long h = oh * SH - PH + kh * DH;
    const long long w = ow * SW - PW + kw * DW;
    out[i] = (h >= 0 && h < H && w >= 0 && w < W) ? in[((b * C + c) * H + h) * W + w] : (T)0;
""")

COL2IM = Kernel("col2im", _PARAMS, """
    // i indexes x (B, C, H, W): the sum of the column entries that read this pixel
    long long r = i;
    const long long w = r % W; r /= W;
    const long long h = r % H; r /= H;
    const long long c = r % C;
    const long long b = r / C;
    T sum = 0;
    for (long long kh = 0; kh < KH; ++kh) {
        const long long th = h + PH - kh * DH;
        if (th < 0 || th % SH != 0 || th / SH >= OH) continue;
        for (long long kw = 0; kw < KW; ++kw) {
            const long long tw = w + PW - kw * DW;
            if (tw < 0 || tw % SW != 0 || tw / SW >= OW) continue;
            sum += in[((((b * C + c) * KH + kh) * KW + kw) * OH + th / SH) * OW + tw / SW];
        }
    }
    out[i] = sum;
""")

KERNELS = (IM2COL, COL2IM)


def supported(x, weight, groups: int) -> bool:
    """Ranks 1 and 2 without groups (the others take the generic path)."""
    return groups == 1 and x.ndim in (3, 4)


def _launch(kernel: Kernel, source, out, sizes: dict) -> None:
    """`kernel` from `source` to `out`, one thread per element of `out`."""
    launch(kernel, out.size, (source, out, *(sizes[s] for s in _SIZES)), out.dtype)


def _as_2d(x, weight, g: Geometry):
    """Rank-1 arguments as rank 2 with a height of one."""
    if x.ndim == 4:
        return x, weight, g
    return (x[:, :, None, :], weight[:, :, None, :],
            Geometry((1, *g.spatial), (1, *g.kernel), (1, *g.stride), (1, *g.dilation),
                     ((0, 0), *g.pads), (1, *g.out)))


def _sizes(x, g: Geometry) -> dict:
    """The kernels' sizes: the batch's, and the geometry's (its windows, `out`, included:
    fewer than fit when a transposed convolution asks for them)."""
    (b, c, h, w), (kh, kw), (oh, ow) = x.shape, g.kernel, g.out
    (sh, sw), (dh, dw), (ph, pw) = g.stride, g.dilation, g.lows
    return dict(B=b, C=c, H=h, W=w, KH=kh, KW=kw, OH=oh, OW=ow, SH=sh, SW=sw,
                PH=ph, PW=pw, DH=dh, DW=dw)


def _pointwise(s: dict) -> bool:
    """A 1x1 kernel with stride 1 and no padding: the input is its own columns."""
    return (s["KH"], s["KW"], s["SH"], s["SW"], s["OH"], s["OW"]) == (1, 1, 1, 1, s["H"], s["W"])


def _columns(xp, x, s: dict):
    """(B, C*KH*KW, OH*OW)."""
    if _pointwise(s):
        return x.reshape(s["B"], s["C"], s["H"] * s["W"])
    cols = xp.empty((s["B"], s["C"] * s["KH"] * s["KW"], s["OH"] * s["OW"]), dtype=x.dtype)
    _launch(IM2COL, xp.ascontiguousarray(x), cols, s)
    return cols


def conv2d(xp, x, weight, bias, geometry: Geometry):
    """y (B, O, *out) of a cross-correlation, as ops.convolve.conv_nd computes it."""
    rank = x.ndim - 2
    x, weight, geometry = _as_2d(x, weight, geometry)
    s = _sizes(x, geometry)
    o = weight.shape[0]
    y = xp.matmul(weight.reshape(o, -1), _columns(xp, x, s))   # (B, O, OH*OW)
    if bias is not None:
        y += bias.reshape(1, o, 1)
    return y.reshape((s["B"], o) + ((s["OH"], s["OW"]) if rank == 2 else (s["OW"],)))


def conv2d_backward(xp, gy, x, weight, geometry: Geometry, need_dx=True):
    """(dx, dweight, dbias) of conv2d; the columns are made again, not kept."""
    shape, wshape = x.shape, weight.shape
    x, weight, geometry = _as_2d(x, weight, geometry)
    s = _sizes(x, geometry)
    o = weight.shape[0]
    grid = xp.ascontiguousarray(gy).reshape(s["B"], o, s["OH"] * s["OW"])
    cols = _columns(xp, x, s)
    dweight = xp.matmul(grid, cols.transpose(0, 2, 1)).sum(axis=0).reshape(wshape)
    dbias = grid.sum(axis=(0, 2))
    dx = None
    if need_dx:
        dcols = xp.matmul(weight.reshape(o, -1).T, grid)          # (B, C*KH*KW, OH*OW)
        if _pointwise(s):
            dx = dcols.reshape(shape)
        else:
            dx = xp.empty(x.shape, dtype=dcols.dtype)
            _launch(COL2IM, dcols, dx, s)
            dx = dx.reshape(shape)
    return dx, dweight, dbias


@convolve.conv_nd.provide("cupy")
def _conv_nd(xp, x, weight, bias, geometry, groups, out=None):
    if not supported(x, weight, groups):
        return NotImplemented
    y = conv2d(xp, x, weight, bias, geometry)
    if out is None:
        return y
    out[...] = y   # the op's output where the executor placed it
    return out


@convolve.conv_nd_backward.provide("cupy")
def _conv_nd_backward(xp, gy, x, weight, geometry, groups, need_dx=True):
    if not supported(x, weight, groups):
        return NotImplemented
    return conv2d_backward(xp, gy, x, weight, geometry, need_dx)
