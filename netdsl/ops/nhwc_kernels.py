"""Kernels of 4-D values laid out NHWC (batch, height, width, channels), in NumPy's calls.

A convolution's columns are (positions, kernel cells x channels): each position's
window is KH runs of KW*C consecutive numbers of the padded image, copied as they lie,
and its output row is one GEMM row, already in NHWC order: no transpose of the result.
A 1x1 convolution at stride 1 without padding is one GEMM over the whole batch,
(N*H*W, C) @ (C, O). Batchnorm reduces over (N, H, W): the rows of an (N*H*W, C) array.
The weights stay in PyTorch's (O, C, KH, KW) layout; their (O, KH*KW*C) view is made at
each call (a small copy beside the GEMMs).
"""
from __future__ import annotations

import math

from netdsl.ops.parallel import chunk_budget, slab_map
from netdsl.ops.windows import Geometry

__all__ = ["conv2d", "conv2d_backward", "batch_norm", "batch_norm_backward", "max_pool",
           "max_pool_backward", "sum_pool", "sum_pool_backward", "padded_extent"]


def padded_extent(g: Geometry) -> tuple[tuple[int, int], ...]:
    """Per spatial dim (cells padded before, cells after) that the windows reach: the
    high side is what the last window needs (pooling's ceil mode may reach further than
    its pad, a convolution's last window may stop short of it; negative: cells cut)."""
    pads = []
    for n, k, s, d, lo, m in zip(g.spatial, g.kernel, g.stride, g.dilation, g.lows, g.out):
        needed = (m - 1) * s + (k - 1) * d + 1
        pads.append((lo, needed - n - lo))
    return tuple(pads)


def _pad(xp, x, g: Geometry, value=0.0):
    """x (N, H, W, C) padded (or cut) to the extent its windows read."""
    (top, bottom), (left, right) = padded_extent(g)
    if top == bottom == left == right == 0:
        return x
    n, h, w, c = x.shape
    out = xp.full((n, top + h + bottom, left + w + right, c), value, dtype=x.dtype)
    rows, cols = min(h, h + bottom), min(w, w + right)
    out[:, top:top + rows, left:left + cols] = x[:, :rows, :cols]
    return out


def _windows(xp, xpad, g: Geometry):
    """A view (N, OH, OW, KH, KW, C) of every window of the padded images."""
    sn, sh, sw, sc = xpad.strides
    (oh, ow), (kh, kw) = g.out, g.kernel
    (th, tw), (dh, dw) = g.stride, g.dilation
    return xp.lib.stride_tricks.as_strided(
        xpad, (xpad.shape[0], oh, ow, kh, kw, xpad.shape[3]),
        (sn, sh * th, sw * tw, sh * dh, sw * dw, sc), writeable=False)


def _pointwise(g: Geometry) -> bool:
    """A 1x1 kernel without padding: the columns are the (strided) input itself."""
    return g.kernel == (1, 1) and all(p == (0, 0) for p in g.pads)


def _chunk(xp, x, g: Geometry) -> int:
    """Images per chunk of columns: about chunk_budget's bytes of them, one at least."""
    per_image = math.prod(g.out) * math.prod(g.kernel) * x.shape[3] * x.itemsize
    return max(1, chunk_budget(xp) // max(per_image, 1))


def _sampled(xp, x, g: Geometry):
    """The input rows a 1x1 kernel reads, as (positions, C)."""
    (th, tw), (oh, ow) = g.stride, g.out
    if (th, tw) != (1, 1) or x.shape[1:3] != (oh, ow):
        x = xp.ascontiguousarray(x[:, :(oh - 1) * th + 1:th, :(ow - 1) * tw + 1:tw])
    return x.reshape(-1, x.shape[3])


def _columns(xp, x, g: Geometry):
    """The chunk's columns (images * OH * OW, KH * KW * C), one copy of its windows."""
    cols = _windows(xp, _pad(xp, x, g), g)
    return xp.ascontiguousarray(cols).reshape(cols.shape[0] * math.prod(g.out), -1)


def conv2d(xp, x, weight, bias, g: Geometry):
    """y (N, OH, OW, O) of x (N, H, W, C) and weight (O, C, KH, KW): the batch in slabs
    on the runtime's threads (ops.parallel), each slab's chunks one GEMM each."""
    n, out = x.shape[0], weight.shape[0]
    oh, ow = g.out
    y = xp.empty((n, oh, ow, out), dtype=x.dtype)
    wt = weight.transpose(0, 2, 3, 1).reshape(out, -1).T   # (KH*KW*C, O), a view
    pointwise, step = _pointwise(g), _chunk(xp, x, g)

    def slab(part):
        for start in range(part.start, part.stop, step if not pointwise else n):
            chunk = slice(start, min(part.stop, start + step) if not pointwise else part.stop)
            cols = _sampled(xp, x[chunk], g) if pointwise else _columns(xp, x[chunk], g)
            target = y[chunk].reshape(cols.shape[0], out)
            xp.matmul(cols, wt, out=target)
            if bias is not None:
                target += bias

    slab_map(xp, slab, n, x.nbytes + y.nbytes)
    return y


def conv2d_backward(xp, gy, x, weight, g: Geometry, needs_dx: bool = True):
    """(dx or None, dweight, dbias) of conv2d, given gy (N, OH, OW, O): each slab sums
    its weight gradient as cols^T @ gy (the long axis inner, as BLAS runs it fastest)
    and adds its columns' gradient onto its images' dx."""
    n, out = x.shape[0], weight.shape[0]
    (kh, kw), (oh, ow) = g.kernel, g.out
    (th, tw), (dh, dw) = g.stride, g.dilation
    dbias = gy.reshape(-1, out).sum(axis=0)
    wm = weight.transpose(0, 2, 3, 1).reshape(out, -1)
    pointwise, step = _pointwise(g), _chunk(xp, x, g)
    (top, bottom), (left, right) = padded_extent(g)
    h, w = x.shape[1:3]
    dx = None
    if needs_dx:
        dx = xp.zeros_like(x) if pointwise else None
        dxpad = None if pointwise else xp.zeros(
            (n, top + h + max(bottom, 0), left + w + max(right, 0), x.shape[3]), dtype=x.dtype)

    def slab(part):
        dwt = None
        for start in range(part.start, part.stop, step if not pointwise else n):
            chunk = slice(start, min(part.stop, start + step) if not pointwise else part.stop)
            cols = _sampled(xp, x[chunk], g) if pointwise else _columns(xp, x[chunk], g)
            gp = gy[chunk].reshape(cols.shape[0], out)
            made = cols.T @ gp
            dwt = made if dwt is None else dwt.__iadd__(made)
            if not needs_dx:
                continue
            dcols = gp @ wm
            images = chunk.stop - chunk.start
            if pointwise:
                dx[chunk, :(oh - 1) * th + 1:th, :(ow - 1) * tw + 1:tw] = \
                    dcols.reshape(images, oh, ow, -1)
                continue
            dcols = dcols.reshape(images, oh, ow, kh, kw, -1)
            target = dxpad[chunk]
            for i in range(kh):
                for j in range(kw):
                    target[:, i * dh:i * dh + (oh - 1) * th + 1:th,
                           j * dw:j * dw + (ow - 1) * tw + 1:tw] += dcols[:, :, :, i, j]
        return dwt

    partial = slab_map(xp, slab, n, x.nbytes + gy.nbytes)
    dwt = partial[0]
    for more in partial[1:]:
        dwt += more
    dweight = xp.ascontiguousarray(dwt.T.reshape(out, kh, kw, -1).transpose(0, 3, 1, 2))
    if needs_dx and not pointwise:
        dx = xp.ascontiguousarray(dxpad[:, top:top + h, left:left + w])
    return dx, dweight, dbias


def _column_sums(xp, rows):
    """Each column's sum of an (M, C) array: ones @ rows, one pass through BLAS (its
    blocked sums; NumPy's axis-0 sum in double precision takes several times longer)."""
    return xp.ones(rows.shape[0], dtype=rows.dtype) @ rows


def batch_norm(xp, x, weight, bias, eps: float, momentum: float, buffers: dict,
               training: bool):
    """(y, xhat, inv_std) of x (N, H, W, C), statistics over (N, H, W); the running
    statistics in `buffers` as PyTorch folds them in (unbiased variance)."""
    channels = x.shape[-1]
    rows = x.reshape(-1, channels)
    if "running_mean" not in buffers:
        buffers["running_mean"] = xp.zeros(channels, dtype=x.dtype)
        buffers["running_var"] = xp.ones(channels, dtype=x.dtype)
    if training:
        count = rows.shape[0]
        mean = _column_sums(xp, rows) / count
        centred = rows - mean
        var = _column_sums(xp, centred * centred) / count
        buffers["running_mean"] = ((1 - momentum) * buffers["running_mean"]
                                   + momentum * mean).astype(x.dtype)
        buffers["running_var"] = ((1 - momentum) * buffers["running_var"]
                                  + momentum * var * (count / max(count - 1, 1))
                                  ).astype(x.dtype)
    else:
        mean, var = buffers["running_mean"], buffers["running_var"]
        centred = rows - mean
    inv_std = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
    xhat = centred
    xhat *= inv_std
    y = xhat * weight
    y += bias
    return y.reshape(x.shape), xhat.reshape(x.shape), inv_std


def batch_norm_backward(xp, gy, xhat, inv_std, weight, batch_stats: bool):
    """(dx, dweight, dbias) of batch_norm, given gy (N, H, W, C)."""
    channels = gy.shape[-1]
    g2, h2 = gy.reshape(-1, channels), xhat.reshape(-1, channels)
    dbias = _column_sums(xp, g2)
    dweight = _column_sums(xp, g2 * h2)
    scale = (weight * inv_std).astype(gy.dtype)
    if batch_stats:
        count = g2.shape[0]
        dx = h2 * (-dweight / count)
        dx += g2
        dx -= dbias / count
        dx *= scale
    else:
        dx = scale * g2
    return dx.reshape(gy.shape), dweight, dbias


def _cells(g: Geometry):
    """(index, the slices of the padded images that each window's cell (i, j) reads)."""
    (kh, kw), (oh, ow) = g.kernel, g.out
    (th, tw), (dh, dw) = g.stride, g.dilation
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, (slice(None), slice(i * dh, i * dh + (oh - 1) * th + 1, th),
                               slice(j * dw, j * dw + (ow - 1) * tw + 1, tw))


def max_pool(xp, x, g: Geometry):
    """(y, indices): the max of each window, and the window cell (kh * KW + kw) it is
    (the first of equal ones), a running max over the cells' shifted views."""
    xpad = _pad(xp, x, g, -xp.inf)
    cells = _cells(g)
    _, first = next(cells)
    y = xpad[first].copy()
    count = math.prod(g.kernel)
    indices = xp.zeros(y.shape, dtype=xp.uint8 if count <= 256 else xp.int32)
    better = xp.empty(y.shape, dtype=bool)
    step = xp.empty_like(indices)
    for index, at in cells:
        cell = xpad[at]
        xp.greater(cell, y, out=better)
        xp.maximum(cell, y, out=y)
        # indices = where(better, index, indices) as arithmetic: a masked copy (copyto's
        # where=) took 12 times as long here
        xp.subtract(indices.dtype.type(index), indices, out=step)
        xp.multiply(step, better, out=step)
        indices += step
    return y, indices


def max_pool_backward(xp, gy, indices, shape, g: Geometry):
    """dx (N, H, W, C) of max_pool: each window's gradient to its max cell."""
    (top, bottom), (left, right) = padded_extent(g)
    n, h, w, c = shape
    dx = xp.zeros((n, top + h + max(bottom, 0), left + w + max(right, 0), c), dtype=gy.dtype)
    picked = xp.empty_like(gy)
    chosen = xp.empty(gy.shape, dtype=bool)
    for index, at in _cells(g):
        xp.equal(indices, index, out=chosen)
        xp.multiply(gy, chosen, out=picked)
        dx[at] += picked
    return xp.ascontiguousarray(dx[:, top:top + h, left:left + w])


def sum_pool(xp, x, g: Geometry):
    """The sum of each window (zero padding)."""
    cells = _windows(xp, _pad(xp, x, g), g)
    return cells.sum(axis=(3, 4))


def sum_pool_backward(xp, gy, shape, g: Geometry):
    """dx (N, H, W, C) of sum_pool: each window's gradient to each of its cells."""
    (kh, kw), (oh, ow) = g.kernel, g.out
    (th, tw), (dh, dw) = g.stride, g.dilation
    (top, bottom), (left, right) = padded_extent(g)
    n, h, w, c = shape
    dx = xp.zeros((n, top + h + max(bottom, 0), left + w + max(right, 0), c), dtype=gy.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, i * dh:i * dh + (oh - 1) * th + 1:th,
               j * dw:j * dw + (ow - 1) * tw + 1:tw] += gy
    return xp.ascontiguousarray(dx[:, top:top + h, left:left + w])
