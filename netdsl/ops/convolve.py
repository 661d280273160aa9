"""Convolution on batched arrays: im2col and one GEMM per chunk of the batch, and the
gradients and transpose that reuse it.

Every routine takes the array module `xp` first and works on (B, C, *spatial) arrays,
so NumPy and CuPy run the same code; on the host each core takes a slab of the batch
(ops.parallel), and a GPU may run its own kernels (netdsl.runtime.cuda provides
`conv_nd` and `conv_nd_backward` for CuPy).
"""
from __future__ import annotations

import math

from netdsl.ops.numeric import channel_sums
from netdsl.ops.parallel import batch_chunks, slab_map
from netdsl.ops.routines import overridable
from netdsl.ops.windows import Geometry, Windows

__all__ = ["im2col", "col2im", "conv_nd", "conv_nd_backward", "conv_nd_then",
           "conv_nd_then_backward", "conv_transpose_nd",
           "conv_transpose_nd_backward", "scratch_per_example"]


def _part(buffer, shape):
    """The start of a flat buffer as a contiguous array of `shape`, a view: one buffer
    serves every chunk, the last, smaller one too."""
    return buffer[:math.prod(shape)].reshape(shape)


def im2col(xp, xpad, win: Windows, cols):
    """Copy the columns of a padded chunk xpad (n, C, *padded) into cols, laid out
    (C, *kernel, n, *grid): a row per window cell, holding that cell at every grid
    position of every example, so that one GEMM covers the chunk. The copy runs along
    the grid's rows (whole planes on a flat grid)."""
    k = len(win.kernel)
    view = win.columns(xp, xpad)  # (n, C, *kernel, *grid)
    cols[...] = view.transpose((1, *range(2, 2 + k), 0, *range(2 + k, view.ndim)))
    return cols


def col2im(win: Windows, cols, dxpad, spread):
    """Add columns laid out as im2col's (C, *kernel, n, *grid) into dxpad (n, C, *padded),
    with `spread`, zeros shaped like dxpad, as scratch: one add per kernel offset, over
    all the windows at once.

    A strided add costs NumPy per row, much more than a strided copy does, so each
    offset's columns are copied to where the windows' first cells lie in `spread`
    (whose other cells stay zero), and then one contiguous run of it (Windows.run) is
    added to the run of dxpad that the offset shifts it to.
    """
    first = (0,) * len(win.kernel)
    head, source = win.cell(spread, first), win.run(spread, first)
    for offset in win.offsets():
        head[...] = cols[(slice(None),) + offset].swapaxes(0, 1)
        win.run(dxpad, offset)[...] += source


@overridable
def conv_nd(xp, x, weight, bias, geometry: Geometry, groups: int, out=None):
    """Cross-correlate x (B, C, *S) with weight (O, C/G, *k) through the windows of
    `geometry` (its stride, (lo, hi) pads, dilation and windows per dim).

    Per chunk of the batch: pad, im2col, one GEMM (G, O/G, C/G * K) @ (G, C/G * K, n * grid)
    whose many columns keep BLAS busy, and one copy of its result (O, n, *grid) to y
    (n, O, *out) that also drops the grid's gaps and adds the bias. A 1x1 kernel over
    the whole input needs no columns: a GEMM per example writes y directly. On the host
    each core convolves a slab of the batch (ops.parallel). y is written into `out`
    where given (contiguous, y's shape and dtype, overlapping no input).
    """
    win = Windows.of(geometry, compact=True)
    x = xp.ascontiguousarray(x)
    b, o = x.shape[0], weight.shape[0]
    dtype = xp.result_type(x.dtype, weight.dtype)
    y = xp.empty((b, o) + win.out, dtype=dtype) if out is None else out
    bias = None if bias is None else bias.reshape((1, o) + (1,) * len(win.out))
    convolve = _slab_convolution(xp, x, weight, win, groups)
    work = x.nbytes * math.prod(win.kernel)  # the im2col columns
    slab_map(xp, lambda part: convolve(x[part], bias, y[part]), b, work)
    return y


@overridable
def conv_nd_then(xp, x, weight, bias, geometry: Geometry, groups: int, chain, out=None):
    """conv_nd, then `chain` over its output: an elementwise map the lowering joined to the
    convolution (`chain.apply(xp, y)` writes it over y). A runtime may apply it where its
    kernels write y, and save the pass. y is written into `out` where given."""
    return chain.apply(xp, conv_nd(xp, x, weight, bias, geometry, groups, out=out))


@overridable
def conv_nd_then_backward(xp, gy, y, x, weight, geometry: Geometry, groups: int,
                          need_dx: bool, chain, gy_owned: bool):
    """(dx, dweight, dbias) of conv_nd_then from its output y and gy: gy taken back
    through the chain (`chain.gradient`, written over gy where the caller owns it), then
    conv_nd_backward. A runtime may sum the bias's gradient in the same pass."""
    g = chain.gradient(xp, y, gy, gy if gy_owned else None)
    return conv_nd_backward(xp, g, x, weight, geometry, groups, need_dx)


def scratch_per_example(geometry: Geometry, channels: int, out_channels: int,
                        itemsize: int = 4) -> tuple[int, int]:
    """What conv_nd's chunks hold per example, in bytes: (its im2col columns, which size the
    chunks, ops.parallel.batch_chunks; the columns and the GEMM's result together). (0, 0)
    for a 1x1 kernel over the whole input, which needs no columns."""
    win = Windows.of(geometry, compact=True)
    if win.pointwise:
        return 0, 0
    columns = channels * math.prod(win.kernel) * win.size * itemsize
    return columns, columns + out_channels * win.size * itemsize


def _slab_convolution(xp, x, weight, win: Windows, groups):
    """convolve(x slab, bias, y slab), which writes conv_nd of the slab into y."""
    o = weight.shape[0]
    w = weight.reshape(groups, o // groups, -1)  # (G, O/G, C/G * K)
    convolve = _pointwise_slab if win.pointwise else _windowed_slab
    return lambda x, bias, y: convolve(xp, x, w, bias, win, groups, y)


def _pointwise_slab(xp, x, w, bias, win: Windows, groups, y):
    """y = conv_nd(x) for a 1x1 kernel over the whole input: x is its own columns."""
    (b, c), o = x.shape[:2], y.shape[1]
    xp.matmul(w, x.reshape(b, groups, c // groups, -1),
              out=y.reshape(b, groups, o // groups, -1))
    if bias is not None:
        y += bias


def _windowed_slab(xp, x, w, bias, win: Windows, groups, y):
    """y = conv_nd(x) for a slab of the batch, a cache-sized chunk at a time."""
    (b, c), o = x.shape[:2], y.shape[1]
    depth = c * math.prod(win.kernel)
    chunks = batch_chunks(xp, b, depth * win.size * x.itemsize)
    size = chunks[0].stop
    pad = win.padder(xp, size, c, x.dtype)
    cols = xp.empty(depth * size * win.size, dtype=x.dtype)
    z = xp.empty(o * size * win.size, dtype=y.dtype)
    for part in chunks:
        n = part.stop - part.start
        x_cols = im2col(xp, pad(x[part]), win, _part(cols, (c, *win.kernel, n, *win.grid)))
        z_n = _part(z, (o, n, *win.grid))
        xp.matmul(w, x_cols.reshape(groups, depth // groups, -1),
                  out=z_n.reshape(groups, o // groups, -1))
        z_n = win.valid(xp, z_n).swapaxes(0, 1)  # (n, O, *out)
        if bias is None:
            y[part] = z_n
        else:
            xp.add(z_n, bias, out=y[part])


def _grid_gradient(xp, gy, win: Windows, o: int, buffer):
    """gy (B, O, *out) -> a function of a chunk giving gy[chunk] laid out like the GEMM's
    result (O, n, *grid), in `buffer`; zero in the grid's gaps, so they add nothing."""
    zeroed = None

    def grid(part):
        nonlocal zeroed
        n = part.stop - part.start
        g = _part(buffer, (o, n, *win.grid))
        if not win.dense and zeroed != n:  # the gaps, once per chunk size
            g.fill(0)
            zeroed = n
        win.valid(xp, g)[...] = gy[part].swapaxes(0, 1)
        return g

    return grid


def _weight_grad(xp, gy, x, weight, win: Windows, groups):
    """dweight of y = conv(x, weight) through `win`: each slab's sum, added up."""
    def slab(part):
        return _weight_grad_slab(xp, gy[part], x[part], weight, win, groups)

    partials = slab_map(xp, slab, x.shape[0], x.nbytes * math.prod(win.kernel))
    dweight = partials[0]
    for partial in partials[1:]:
        dweight += partial
    return dweight


def _weight_grad_slab(xp, gy, x, weight, win: Windows, groups):
    """dweight from a slab of the batch: per chunk, the columns of x again (recomputing
    them is cheaper than keeping them) and one GEMM gy @ cols^T."""
    (b, c), o = x.shape[:2], weight.shape[0]
    dtype = xp.result_type(gy.dtype, x.dtype, weight.dtype)
    if win.pointwise:  # x is its own columns: a GEMM per example, summed
        g = gy.reshape(b, groups, o // groups, -1)
        cols = x.reshape(b, groups, c // groups, -1).swapaxes(-1, -2)
        return xp.matmul(g, cols).sum(axis=0).reshape(weight.shape)
    depth = c * math.prod(win.kernel)
    chunks = batch_chunks(xp, b, depth * win.size * x.itemsize)
    size = chunks[0].stop
    pad = win.padder(xp, size, c, x.dtype)
    cols = xp.empty(depth * size * win.size, dtype=x.dtype)
    grid = _grid_gradient(xp, gy, win, o, xp.empty(o * size * win.size, dtype=dtype))
    dweight = None
    for part in chunks:
        n = part.stop - part.start
        x_cols = im2col(xp, pad(x[part]), win, _part(cols, (c, *win.kernel, n, *win.grid)))
        g = grid(part).reshape(groups, o // groups, -1)
        part_dw = xp.matmul(g, x_cols.reshape(groups, depth // groups, -1).swapaxes(-1, -2))
        if dweight is None:
            dweight = part_dw
        else:
            dweight += part_dw
    return dweight.reshape(weight.shape)


# x channels (per group) from which dx is computed as a convolution, see
# _input_grad_by_conv
MIN_GRAD_CONV_CHANNELS = 16


def _input_grad_by_conv(weight, win: Windows, groups, gy_spatial):
    """(flipped weight (C, O/G, *k), its Windows over gy) when dx of
    y = conv(x, weight) through `win` is a convolution of gy; else None.

    At stride 1 dx is that convolution: gy padded so that every cell of x gets a window,
    the kernel flipped and its in and out channels swapped. im2col and GEMM again, whose
    copies cost NumPy far less than col2im's strided adds. Its GEMM has a row per
    channel of x, though: with few of them (a network's first layers) BLAS runs slowly,
    and col2im is faster. So there, at other strides, and for pads past the kernel's
    reach, col2im adds the column gradients weight^T @ gy back onto each padded chunk.
    """
    n_dims = len(win.kernel)
    reach = [d * (k - 1) for d, k in zip(win.dilation, win.kernel)]
    pads = [(r - lo, n - m + lo)
            for r, (lo, _), n, m in zip(reach, win.pads, win.spatial, gy_spatial)]
    if not (all(s == 1 for s in win.stride) and min(min(p) for p in pads) >= 0
            and weight.shape[1] >= MIN_GRAD_CONV_CHANNELS):
        return None
    o, cg = weight.shape[:2]
    flipped = weight.reshape(groups, o // groups, cg, *win.kernel).swapaxes(1, 2)
    flipped = flipped[(slice(None),) * 3 + (slice(None, None, -1),) * n_dims]
    flipped = flipped.reshape(groups * cg, o // groups, *win.kernel)  # one copy
    return flipped, Windows(gy_spatial, win.kernel, (1,) * n_dims, win.dilation, pads,
                            out=win.spatial, compact=True)


def _input_grad_slab(xp, gy, weight, win: Windows, groups, by_conv, dx):
    """dx of a slab of the batch, as _input_grad_by_conv chose."""
    if by_conv is None:
        _col2im_slab(xp, gy, weight, win, groups, dx)
        return
    flipped, gy_win = by_conv
    _slab_convolution(xp, gy, flipped, gy_win, groups)(gy, None, dx)


def _input_grad(xp, gy, weight, win: Windows, groups, x_shape):
    """dx (x_shape) of y = conv(x, weight) through `win`, a slab per core."""
    by_conv = _input_grad_by_conv(weight, win, groups, gy.shape[2:])
    dx = xp.empty(x_shape, dtype=xp.result_type(gy.dtype, weight.dtype))
    slab_map(xp, lambda part: _input_grad_slab(xp, gy[part], weight, win, groups, by_conv,
                                               dx[part]),
             x_shape[0], dx.nbytes * math.prod(win.kernel))
    return dx


def _col2im_slab(xp, gy, weight, win: Windows, groups, dx):
    """dx of a slab of the batch: per chunk, the column gradients weight^T @ gy, added
    back onto the padded chunk by col2im."""
    (b, c), o = dx.shape[:2], weight.shape[0]
    dtype = dx.dtype
    depth = c * math.prod(win.kernel)
    chunks = batch_chunks(xp, b, depth * win.size * dtype.itemsize)
    size = chunks[0].stop
    cols = xp.empty(depth * size * win.size, dtype=dtype)
    grid = _grid_gradient(xp, gy, win, o, xp.empty(o * size * win.size, dtype=dtype))
    w = weight.reshape(groups, o // groups, -1).swapaxes(-1, -2)  # (G, C/G * K, O/G)
    dxpad = xp.empty((size, c) + win.padded, dtype=dtype) if win.is_padded else None
    spread = xp.zeros((size, c) + win.padded, dtype=dtype)
    for part in chunks:
        n = part.stop - part.start
        dcols = _part(cols, (c, *win.kernel, n, *win.grid))
        xp.matmul(w, grid(part).reshape(groups, o // groups, -1),
                  out=dcols.reshape(groups, depth // groups, -1))
        target = dxpad[:n] if win.is_padded else dx[part]
        target.fill(0)
        col2im(win, dcols, target, spread[:n])
        if win.is_padded:
            dx[part] = target[win.inner]


@overridable
def conv_nd_backward(xp, gy, x, weight, geometry: Geometry, groups: int, need_dx=True):
    """Gradients (dx, dweight, dbias) of conv_nd; dx is None unless `need_dx` (a first
    layer's input needs none). On the host each core takes a slab of the batch: its dx,
    and its sums for dweight and dbias, which are added up."""
    win = Windows.of(geometry, compact=True)
    gy, x = xp.ascontiguousarray(gy), xp.ascontiguousarray(x)
    (b, o), dtype = gy.shape[:2], xp.result_type(gy.dtype, weight.dtype)
    by_conv = _input_grad_by_conv(weight, win, groups, gy.shape[2:]) if need_dx else None
    dx = xp.empty(x.shape, dtype=dtype) if need_dx else None
    planes = gy.reshape(b, o, -1)

    def slab(part):
        if need_dx:
            _input_grad_slab(xp, gy[part], weight, win, groups, by_conv, dx[part])
        return (_weight_grad_slab(xp, gy[part], x[part], weight, win, groups),
                channel_sums(xp, planes[part]))

    partials = slab_map(xp, slab, b, 2 * x.nbytes * math.prod(win.kernel))
    dweight, dbias = partials[0]
    for more_dweight, more_dbias in partials[1:]:
        dweight += more_dweight
        dbias += more_dbias
    return dx, dweight, dbias


def conv_transpose_nd(xp, x, weight, bias, geometry: Geometry, groups: int):
    """The transpose of conv_nd: x (B, C, *S) scattered through weight (C, O/G, *k).

    It is the input gradient, at gy = x, of the convolution of `geometry`, from
    (B, O, *geometry.spatial) to (B, C, *S): one window per cell of x (output_pad may
    leave room for one more, which that convolution does not have).
    """
    win = Windows.of(geometry)
    b, o = x.shape[0], weight.shape[1] * groups
    y = _input_grad(xp, xp.ascontiguousarray(x), weight, win, groups,
                    (b, o) + geometry.spatial)
    if bias is not None:
        y += bias.reshape((1, o) + (1,) * len(geometry.spatial))
    return y


def conv_transpose_nd_backward(xp, gy, x, weight, geometry: Geometry, groups: int):
    """Gradients (dx, dweight, dbias) of conv_transpose_nd: that convolution run forward
    on gy for dx, and its weight gradient with gy as input and x as output gradient."""
    gy, x = xp.ascontiguousarray(gy), xp.ascontiguousarray(x)
    dx = conv_nd(xp, gy, weight, None, geometry, groups)
    dweight = _weight_grad(xp, x, gy, weight, Windows.of(geometry), groups)
    dbias = gy.sum(axis=(0, *range(2, gy.ndim)))
    return dx, dweight, dbias
