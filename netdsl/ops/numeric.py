"""Numeric helpers the op families share: normalisation, pointwise maps, broadcasting,
scatters and parameter initialisation.

Everything here takes the array module `xp` first and works on batched arrays laid out
(B, C, *spatial), so NumPy and CuPy run the same code.
"""
from __future__ import annotations

import math

import numpy as np  # parameter init, and NumPy's own fast paths; the rest uses xp

from netdsl.ops.parallel import slab_map
from netdsl.ops.routines import overridable

__all__ = ["batch_norm", "batch_norm_backward", "channel_sums", "channel_dots", "sigmoid", "align", "unbroadcast",
           "scatter_add", "fan_in_uniform", "constant", "scalar"]


def scalar(xp, value):
    """A 0-d array (NumPy reductions give scalars; the loss contract wants arrays)."""
    return xp.asarray(value)


# ---- normalisation


def channel_sums(xp, x):
    """Per-channel sums of x (B, C, N) in one pass: on the host a GEMV per example (NumPy's
    reduction over axes 0 and 2 runs several times slower); on a GPU the reduction, which
    is one kernel there (a GEMV per example would be a batch of 1-row GEMMs)."""
    if xp is not np:
        return x.sum(axis=(0, 2))
    return xp.matmul(x, xp.ones(x.shape[2], dtype=x.dtype)).sum(axis=0)


def channel_dots(xp, a, b):
    """Per-channel sums of a * b, both (B, C, N), in one pass and without the product (on
    the host; a GPU makes the product and reduces it, two kernels)."""
    if xp is not np:
        return (a * b).sum(axis=(0, 2))
    return xp.matmul(a[:, :, None, :], b[:, :, :, None]).reshape(a.shape[:2]).sum(axis=0)


def _per_channel(v):
    """A (C,) vector broadcast against (B, C, N)."""
    return v.reshape(-1, 1)


@overridable
def batch_norm(xp, x, weight, bias, eps, momentum, buffers: dict, training: bool,
               out=None):
    """Normalise x (B, C, *S) per channel; returns y (in `out` where given: contiguous,
    x's shape and dtype), xhat and inv_std (1, C, 1...).

    Training uses the batch statistics (biased variance, from the centred values) and
    folds them into the running ones in `buffers` with PyTorch's momentum and unbiased
    variance; eval uses the running statistics, which start as zeros and ones. On the
    host each core normalises a slab of the channels.
    """
    b, channels = x.shape[:2]
    if "running_mean" not in buffers:
        buffers["running_mean"] = xp.zeros(channels, dtype=x.dtype)
        buffers["running_var"] = xp.ones(channels, dtype=x.dtype)
    x3 = xp.ascontiguousarray(x).reshape(b, channels, -1)
    n = b * x3.shape[2]
    xhat = xp.empty_like(x3)
    y = xp.empty_like(x3) if out is None else out.reshape(x3.shape)
    mean = xp.empty(channels, dtype=x.dtype)
    var = xp.empty(channels, dtype=x.dtype)
    running_mean, running_var = buffers["running_mean"], buffers["running_var"]

    def normalise(part):
        centred = xhat[:, part]
        if training:
            mean[part] = channel_sums(xp, x3[:, part]) / n
            xp.subtract(x3[:, part], _per_channel(mean[part]), out=centred)
            var[part] = channel_dots(xp, centred, centred) / n
        else:
            xp.subtract(x3[:, part], _per_channel(running_mean[part]), out=centred)
            var[part] = running_var[part]
        centred *= _per_channel(1 / xp.sqrt(var[part] + eps))
        xp.multiply(centred, _per_channel(weight[part]), out=y[:, part])
        y[:, part] += _per_channel(bias[part])

    slab_map(xp, normalise, channels, x3.nbytes)
    if training:
        unbiased = var * (n / max(n - 1, 1))
        buffers["running_mean"] = (1 - momentum) * running_mean + momentum * mean
        buffers["running_var"] = (1 - momentum) * running_var + momentum * unbiased
    inv_std = (1 / xp.sqrt(var + eps)).reshape((1, -1) + (1,) * (x.ndim - 2))
    return y.reshape(x.shape), xhat.reshape(x.shape), inv_std


@overridable
def batch_norm_backward(xp, gy, xhat, inv_std, weight, batch_stats: bool):
    """Gradients (dx, dweight, dbias) of batch_norm; batch statistics couple the batch.

    dx = scale * (gy - mean(gy) - xhat * mean(gy * xhat)), per slab of the channels: two
    reading passes for the sums, then four over dx, which is written once.
    """
    b, channels = gy.shape[:2]
    g3 = xp.ascontiguousarray(gy).reshape(b, channels, -1)
    h3 = xhat.reshape(b, channels, -1)
    n = b * g3.shape[2]
    dx = xp.empty(g3.shape, dtype=xp.result_type(gy.dtype, xhat.dtype))
    dweight = xp.empty(channels, dtype=dx.dtype)
    dbias = xp.empty(channels, dtype=dx.dtype)
    scale = weight * inv_std.reshape(channels)

    def differentiate(part):
        g, h, d = g3[:, part], h3[:, part], dx[:, part]
        dbias[part] = channel_sums(xp, g)
        dweight[part] = channel_dots(xp, g, h)
        if not batch_stats:
            xp.multiply(g, _per_channel(scale[part]), out=d)
            return
        xp.multiply(h, _per_channel(dweight[part] / -n), out=d)
        d += g
        d -= _per_channel(dbias[part] / n)
        d *= _per_channel(scale[part])

    slab_map(xp, differentiate, channels, g3.nbytes)
    return dx.reshape(gy.shape), dweight, dbias


# ---- pointwise and broadcasting


def sigmoid(xp, x):
    """1 / (1 + e^-x) as (1 + tanh(x/2)) / 2: one transcendental pass, no overflow."""
    y = xp.multiply(x, 0.5)
    xp.tanh(y, out=y)
    y *= 0.5
    y += 0.5
    return y


def align(x, rank: int):
    """x (B, *dims) with ones inserted after the batch axis up to `rank` axes, so NumPy's
    broadcasting aligns per-example dims at the right, as the shape rule does."""
    if x.ndim == rank:
        return x
    return x.reshape(x.shape[:1] + (1,) * (rank - x.ndim) + x.shape[1:])


def unbroadcast(g, shape):
    """Sum a gradient g down to an input's `shape` after `align` and broadcasting."""
    if g.shape == shape:
        return g  # nothing was broadcast: the common case, kept cheap for recurrences
    aligned = shape[:1] + (1,) * (g.ndim - len(shape)) + tuple(shape[1:])
    axes = tuple(i for i, (m, n) in enumerate(zip(aligned, g.shape)) if m == 1 and n != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


@overridable
def scatter_add(xp, target, index, values):
    """target[index] += values, with repeated indices adding up: NumPy's and CuPy's
    `add.at` (CuPy's adds atomically, so on a GPU the order of the additions, and the
    last bits of a sum of repeated indices, may differ between runs)."""
    xp.add.at(target, index, values)
    return target


# ---- initialisation (NumPy: parameters are made once, on the host)


# numbers drawn in float64 at a time (2 MiB): a float32 parameter is the only full-size
# array an initialisation makes
DRAW_CHUNK = 1 << 18


def draw_float32(draw, shape, out: np.ndarray | None = None) -> np.ndarray:
    """A float32 array of `shape` (`out` itself where it is a contiguous float32 array of
    that shape) filled by `draw(n)` (a generator's float64 draw of n numbers, perhaps
    scaled) a chunk at a time. A generator draws element after element, so the values are
    those of one draw of the whole, rounded, without its float64 copy."""
    if out is None or out.shape != tuple(shape) or out.dtype != np.float32 \
            or not (out.flags.c_contiguous and out.flags.writeable):
        out = np.empty(shape, dtype=np.float32)
    flat = out.reshape(-1)  # a view: out is contiguous
    for start in range(0, flat.size, DRAW_CHUNK):
        flat[start:start + DRAW_CHUNK] = draw(min(DRAW_CHUNK, flat.size - start))
    return out


def fan_in_uniform(rng, fan_in: int, shape):
    """PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform, a=sqrt(5))."""
    bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
    return draw_float32(lambda n: rng.uniform(-bound, bound, size=n), tuple(shape))


def constant(shape, value: float):
    """A float32 array of one value (batchnorm's ones and zeros, prelu's 0.25)."""
    return np.full(shape, value, dtype=np.float32)

