"""Numeric helpers the op families share: padding, windows, im2col/col2im, normalisation.

Everything here takes the array module `xp` first and works on batched arrays laid out
(B, C, *spatial), so NumPy and CuPy run the same code. No Python loop runs over the
batch or over pixels: only over kernel offsets (kh * kw iterations at most).
"""
from __future__ import annotations

import itertools
import math

import numpy as np  # parameter init only, on the host; kernels use xp

from netdsl.ops.base import expand_to
from netdsl.ops.common import as_tuple

__all__ = [
    "settings", "pad_spatial", "crop_spatial", "window_view", "offsets", "im2col", "col2im",
    "conv_nd", "conv_nd_backward", "conv_transpose_nd", "conv_transpose_nd_backward",
    "pool_pads", "plane_index", "batch_norm", "batch_norm_backward", "sigmoid", "align",
    "unbroadcast", "scatter_add", "fan_in_uniform", "constant", "scalar",
]


def settings(op, rank: int, **values) -> list[tuple[int, ...]]:
    """Per-dimension settings (kernel 3 -> (3, 3)) for `rank` spatial dims."""
    return [expand_to(as_tuple(v), rank, f"{op.name} {name}") for name, v in values.items()]


def scalar(xp, value):
    """A 0-d array (NumPy reductions give scalars; the loss contract wants arrays)."""
    return xp.asarray(value)


# ---- padding and windows


def pad_spatial(xp, x, pads, value=0):
    """x (B, C, *S) with (lo, hi) cells of `value` around each spatial dim; x if none."""
    if not any(lo or hi for lo, hi in pads):
        return x
    spatial = x.shape[2:]
    out = xp.full(x.shape[:2] + tuple(n + lo + hi for n, (lo, hi) in zip(spatial, pads)),
                  value, dtype=x.dtype)
    out[crop_index(pads, spatial)] = x
    return out


def crop_index(pads, spatial) -> tuple:
    """The index of the unpadded region `spatial` inside an array padded by `pads`."""
    inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, spatial))
    return (slice(None), slice(None)) + inner


def crop_spatial(x, pads, spatial):
    """Undo pad_spatial: a view of the `spatial`-sized region (x itself when unpadded)."""
    if not any(lo or hi for lo, hi in pads):
        return x
    return x[crop_index(pads, spatial)]


def window_view(xp, x, kernel, stride, dilation, out):
    """Every window of x (B, C, *S) as a view (B, C, *out, *kernel): no copy.

    The caller guarantees the windows fit: (out - 1) * stride + dilation * (kernel - 1) < S.
    """
    n = len(kernel)
    step = x.strides[2:]
    strides = (x.strides[:2] + tuple(step[i] * stride[i] for i in range(n))
               + tuple(step[i] * dilation[i] for i in range(n)))
    return xp.lib.stride_tricks.as_strided(x, x.shape[:2] + tuple(out) + tuple(kernel), strides)


def offsets(kernel, stride, dilation, out):
    """(number, offset, index) per kernel offset, in row-major order; the index picks, from
    a padded (B, C, *S) array, the cell under that offset of every window: a strided slice."""
    for number, offset in enumerate(itertools.product(*map(range, kernel))):
        index = tuple(slice(o * d, o * d + s * (m - 1) + 1, s)
                      for o, s, d, m in zip(offset, stride, dilation, out))
        yield number, offset, (slice(None), slice(None)) + index


def im2col(xp, x, kernel, stride, dilation, out):
    """Columns of x (B, C, *S) laid out (C, *kernel, B, *out), contiguous: one copy.

    Reshaped to (C * K, B * P) it is the right operand of the convolution GEMM; the
    innermost axis runs along the input's rows, so the copy streams.
    """
    n = len(kernel)
    view = window_view(xp, x, kernel, stride, dilation, out)
    order = (1, *range(2 + n, 2 + 2 * n), 0, *range(2, 2 + n))
    return xp.ascontiguousarray(view.transpose(order))


def col2im(xp, cols, spatial, kernel, stride, dilation, out):
    """Sum columns (C, *kernel, B, *out) back into a zero array (C, B, *spatial).

    Channels stay first, as in the columns, so each of the K strided adds reads and writes
    runs along the same axes; the caller moves the batch axis first in one copy.
    """
    x = xp.zeros(cols.shape[:1] + cols.shape[1 + len(kernel):2 + len(kernel)] + tuple(spatial),
                 dtype=cols.dtype)
    for _, offset, index in offsets(kernel, stride, dilation, out):
        x[index] += cols[(slice(None),) + offset]
    return x


def _to_batch_first(xp, y, bias, shape):
    """(O, B, *out) -> a contiguous (B, O, *out), adding the bias in the same pass."""
    n = y.ndim - 2
    moved = y.transpose(1, 0, *range(2, 2 + n))
    result = xp.empty(shape, dtype=y.dtype)
    if bias is None:
        result[...] = moved
    else:
        xp.add(moved, bias.reshape((1, -1) + (1,) * n), out=result)
    return result


def _groups_of(xp, x, groups):
    """x (B, C, *S) as (G, C/G, B*P): channels leading, for a grouped GEMM."""
    b, c = x.shape[:2]
    n = x.ndim - 2
    moved = xp.ascontiguousarray(x.transpose(1, 0, *range(2, 2 + n)))
    return moved.reshape(groups, c // groups, b * math.prod(x.shape[2:]))


# ---- convolution: im2col and one GEMM per group


def conv_nd(xp, x, weight, bias, stride, pads, dilation, groups):
    """Cross-correlate x (B, C, *S) with weight (O, C/G, *k); pads are (lo, hi) per dim."""
    kernel = weight.shape[2:]
    xpad = pad_spatial(xp, x, pads)
    out = tuple((n - d * (k - 1) - 1) // s + 1
                for n, k, s, d in zip(xpad.shape[2:], kernel, stride, dilation))
    b, o = x.shape[0], weight.shape[0]
    cols = im2col(xp, xpad, kernel, stride, dilation, out)
    cols = cols.reshape(groups, -1, b * math.prod(out))
    y = xp.matmul(weight.reshape(groups, o // groups, -1), cols)  # (G, O/G, B*P)
    return _to_batch_first(xp, y.reshape((o, b) + out), bias, (b, o) + out)


def conv_nd_backward(xp, gy, x, weight, stride, pads, dilation, groups):
    """Gradients (dx, dweight, dbias) of conv_nd; im2col is recomputed from x."""
    kernel, out = weight.shape[2:], gy.shape[2:]
    b, c = x.shape[:2]
    xpad = pad_spatial(xp, x, pads)
    cols = im2col(xp, xpad, kernel, stride, dilation, out)
    cols = cols.reshape(groups, -1, b * math.prod(out))
    gmat = _groups_of(xp, gy, groups)  # (G, O/G, B*P)
    w = weight.reshape(groups, weight.shape[0] // groups, -1)
    dweight = xp.matmul(gmat, cols.transpose(0, 2, 1)).reshape(weight.shape)
    dcols = xp.matmul(w.transpose(0, 2, 1), gmat)  # (G, C/G * K, B*P)
    dxpad = col2im(xp, dcols.reshape((c,) + kernel + (b,) + out), xpad.shape[2:], kernel,
                   stride, dilation, out)
    dx = _to_batch_first(xp, crop_spatial(dxpad, pads, x.shape[2:]), None, x.shape)
    dbias = gy.sum(axis=(0, *range(2, gy.ndim)))
    return dx, dweight, dbias


def conv_transpose_nd(xp, x, weight, bias, stride, pad, output_pad, dilation, groups):
    """The transpose of conv_nd: x (B, C, *S) scattered through weight (C, O/G, *k)."""
    kernel, spatial = weight.shape[2:], x.shape[2:]
    b = x.shape[0]
    o = weight.shape[1] * groups
    xmat = _groups_of(xp, x, groups)  # (G, C/G, B*S)
    w = weight.reshape(groups, weight.shape[0] // groups, -1)
    cols = xp.matmul(w.transpose(0, 2, 1), xmat)  # (G, O/G * K, B*S)
    # the full scatter, plus output_pad zeros on the high side, before cropping pad
    canvas = tuple((n - 1) * s + d * (k - 1) + 1 + op
                   for n, k, s, d, op in zip(spatial, kernel, stride, dilation, output_pad))
    full = col2im(xp, cols.reshape((o,) + kernel + (b,) + spatial), canvas, kernel, stride,
                  dilation, spatial)  # (O, B, *canvas)
    out = tuple(n - 2 * p for n, p in zip(canvas, pad))
    y = crop_spatial(full, [(p, p) for p in pad], out)
    return _to_batch_first(xp, y, bias, (b, o) + out)


def conv_transpose_nd_backward(xp, gy, x, weight, stride, pad, dilation, groups):
    """Gradients (dx, dweight, dbias) of conv_transpose_nd: a convolution of gy."""
    kernel, spatial = weight.shape[2:], x.shape[2:]
    b, c = x.shape[:2]
    gpad = pad_spatial(xp, gy, [(p, p) for p in pad])
    cols = im2col(xp, gpad, kernel, stride, dilation, spatial)
    cols = cols.reshape(groups, -1, b * math.prod(spatial))  # (G, O/G * K, B*S)
    w = weight.reshape(groups, c // groups, -1)
    dx = xp.matmul(w, cols)  # (G, C/G, B*S)
    dx = _to_batch_first(xp, dx.reshape((c, b) + spatial), None, x.shape)
    dweight = xp.matmul(_groups_of(xp, x, groups), cols.transpose(0, 2, 1))
    dbias = gy.sum(axis=(0, *range(2, gy.ndim)))
    return dx, dweight.reshape(weight.shape), dbias


# ---- pooling


def pool_pads(spatial, kernel, stride, pad, out):
    """(lo, hi) per dim so every window fits: hi grows past pad where ceil mode needs it."""
    return [(p, max(0, (m - 1) * s + k - n - p))
            for n, k, s, p, m in zip(spatial, kernel, stride, pad, out)]


def plane_index(xp, indices, plane: int):
    """Indices into each (b, c) plane of `plane` cells, as (int64) indices into the whole array."""
    b, c = indices.shape[:2]
    start = xp.arange(b * c, dtype=xp.int64) * plane
    return indices + start.reshape((b, c) + (1,) * (indices.ndim - 2))


# ---- normalisation


def batch_norm(ctx, x, weight, bias, eps, momentum):
    """Normalise x (B, C, *S) per channel; returns y, xhat and inv_std (1, C, 1...).

    Training uses the batch statistics (biased variance) and folds them into the running
    ones in `ctx.buffers` with PyTorch's momentum and unbiased variance; eval uses the
    running statistics, which start as zeros and ones.
    """
    xp = ctx.xp
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    channels = x.shape[1]
    buffers = ctx.buffers
    if "running_mean" not in buffers:
        buffers["running_mean"] = xp.zeros(channels, dtype=x.dtype)
        buffers["running_var"] = xp.ones(channels, dtype=x.dtype)
    if ctx.training:
        mean = x.mean(axis=axes, keepdims=True)
        xhat = x - mean  # centred now, normalised in place below
        var = (xhat * xhat).mean(axis=axes, keepdims=True)
        n = x.size // channels
        unbiased = var.reshape(channels) * (n / max(n - 1, 1))
        buffers["running_mean"] = (1 - momentum) * buffers["running_mean"] \
            + momentum * mean.reshape(channels)
        buffers["running_var"] = (1 - momentum) * buffers["running_var"] + momentum * unbiased
    else:
        xhat = x - buffers["running_mean"].reshape(shape)
        var = buffers["running_var"].reshape(shape)
    inv_std = 1 / xp.sqrt(var + eps)
    xhat *= inv_std
    y = xhat * weight.reshape(shape)
    y += bias.reshape(shape)
    return y, xhat, inv_std


def batch_norm_backward(gy, xhat, inv_std, weight, batch_stats: bool):
    """Gradients (dx, dweight, dbias) of batch_norm; batch statistics couple the batch."""
    axes = (0, *range(2, gy.ndim))
    shape = (1, -1) + (1,) * (gy.ndim - 2)
    dbias = gy.sum(axis=axes)
    dweight = (gy * xhat).sum(axis=axes)
    scale = weight.reshape(shape) * inv_std
    if not batch_stats:
        return gy * scale, dweight, dbias
    # dx = scale * (gy - mean(gy) - xhat * mean(gy * xhat)), in place after one allocation
    n = gy.size // gy.shape[1]
    dx = xhat * (dweight.reshape(shape) / -n)
    dx += gy
    dx -= dbias.reshape(shape) / n
    dx *= scale
    return dx, dweight, dbias


# ---- pointwise and broadcasting


def sigmoid(xp, x):
    """1 / (1 + e^-x) without overflow: e^-|x| is at most 1."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1, e) / (1 + e)


def align(x, rank: int):
    """x (B, *dims) with ones inserted after the batch axis up to `rank` axes, so NumPy's
    broadcasting aligns per-example dims at the right, as the shape rule does."""
    return x.reshape(x.shape[:1] + (1,) * (rank - x.ndim) + x.shape[1:])


def unbroadcast(g, shape):
    """Sum a gradient g down to an input's `shape` after `align` and broadcasting."""
    aligned = shape[:1] + (1,) * (g.ndim - len(shape)) + tuple(shape[1:])
    axes = tuple(i for i, (m, n) in enumerate(zip(aligned, g.shape)) if m == 1 and n != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def scatter_add(xp, target, index, values):
    """target[index] += values, with repeated indices adding up (CuPy has ufunc.at too)."""
    xp.add.at(target, index, values)
    return target


# ---- initialisation (NumPy: parameters are made once, on the host)


def fan_in_uniform(rng, fan_in: int, shape):
    """PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform, a=sqrt(5))."""
    bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def constant(shape, value: float):
    """A float32 array of one value (batchnorm's ones and zeros, prelu's 0.25)."""
    return np.full(shape, value, dtype=np.float32)
