"""Numeric helpers the op families share: padding, windows, im2col/col2im, normalisation.

Everything here takes the array module `xp` first and works on batched arrays laid out
(B, C, *spatial), so NumPy and CuPy run the same code. No Python loop runs over pixels:
only over kernel offsets (kh * kw iterations at most) and, on the host, over a few
chunks of the batch.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np  # parameter init, and telling the host apart; kernels use xp

from netdsl.ops import gpu_conv, gpu_norm
from netdsl.ops.base import expand_to
from netdsl.ops.common import as_tuple
from netdsl.ops.gpu import on_gpu

__all__ = [
    "settings", "pad_spatial", "crop_spatial", "offsets", "Windows", "host_slabs",
    "host_map", "one_blas_thread", "split_pointwise", "batch_chunks", "im2col", "col2im",
    "conv_nd", "conv_nd_backward", "conv_transpose_nd", "conv_transpose_nd_backward",
    "pool_pads", "plane_index", "batch_norm", "batch_norm_backward", "sigmoid", "align",
    "unbroadcast", "scatter_add", "fan_in_uniform", "constant", "scalar", "on_host",
    "to_host", "read_scalars",
]


def settings(op, rank: int, **values) -> list[tuple[int, ...]]:
    """Per-dimension settings (kernel 3 -> (3, 3)) for `rank` spatial dims."""
    return [expand_to(as_tuple(v), rank, f"{op.name} {name}") for name, v in values.items()]


def scalar(xp, value):
    """A 0-d array (NumPy reductions give scalars; the loss contract wants arrays)."""
    return xp.asarray(value)


# ---- host and device


def on_host(xp) -> bool:
    """Whether arrays of `xp` live in host memory, where reading one costs nothing (NumPy),
    rather than on a device, where reading one waits for the device (CuPy)."""
    return xp is np


def to_host(xp, a):
    """An array of `xp` as a NumPy array: copied from the device (`xp.asnumpy`, CuPy's
    `.get()`), or `a` itself on the host. `np.asarray` of a CuPy array raises."""
    if isinstance(a, np.ndarray):
        return a
    asnumpy = getattr(xp, "asnumpy", None)
    return np.asarray(a) if asnumpy is None else asnumpy(a)


def read_scalars(xp, values) -> list[float]:
    """Python floats of many 0-d arrays (losses, counts): on a device in one transfer, so
    the host waits for the device once rather than once per value."""
    values = list(values)
    if on_host(xp) or not values:
        return [float(v) for v in values]
    stacked = xp.stack([xp.asarray(v, dtype=xp.float64).reshape(()) for v in values])
    return [float(v) for v in to_host(xp, stacked)]


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


def offsets(kernel, stride, dilation, out):
    """(number, offset, index) per kernel offset, in row-major order; the index picks, from
    a padded (B, C, *S) array, the cell under that offset of every window: a strided slice."""
    for number, offset in enumerate(itertools.product(*map(range, kernel))):
        index = tuple(slice(o * d, o * d + s * (m - 1) + 1, s)
                      for o, s, d, m in zip(offset, stride, dilation, out))
        yield number, offset, (slice(None), slice(None)) + index


class Windows:
    """The windows a kernel slides over a padded batch (B, C, *padded), and where they lie.

    Every window has a grid position. `cell` gives, for one kernel offset, the cell under
    it at every grid position; `columns` the cells under all offsets at once (the im2col
    view); `run` an offset's cells in the whole batch as one 1-D stretch; `valid` and
    `valid_run` the output positions among the grid's or the run's. All are views.

    NumPy pays per contiguous stretch that an operation loops over (a strided add over
    short rows costs several times a contiguous one), so the layouts keep stretches long.
    With stride 1 the grid is flat: every cell of a padded plane from the first window's
    first cell to the last window's, in row-major order, `span` cells, and the cells
    under an offset are one contiguous stretch of each plane, shifted by the offset. The
    grid positions past the end of an output row (k - 1 per row, where a window would
    wrap around into the next row) hold values nobody reads; gradients put there are
    zeros. Where those would be too many (tiny planes, big kernels), and for other
    strides, the grid is the output itself: one position per window.

    `out` (one window per stride step when not given) may ask for fewer windows, as a
    transposed convolution does when output_pad leaves a last window with no input.

    With `compact` (for a batch that `padder` pads), a flat grid whose rows are padded
    at least as much on the left as on the right shares those pads: each row of the
    padded plane holds the left pad and the row, and the windows at a row's end reach
    into the next row's left pad, zeros as well. That takes (hi of the last dim) cells a
    row off the grid's gaps: 18% of a 3x3 convolution's columns over 8x8 planes were
    gaps, 10% are now.
    """

    def __init__(self, spatial, kernel, stride, dilation, pads, out=None, compact=False):
        self.kernel, self.stride, self.dilation = tuple(kernel), tuple(stride), tuple(dilation)
        self.pads = [tuple(p) for p in pads]
        self.spatial = tuple(spatial)
        self.padded = tuple(n + lo + hi for n, (lo, hi) in zip(spatial, pads))
        if out is None:
            out = ((n - d * (k - 1) - 1) // s + 1
                   for n, k, s, d in zip(self.padded, kernel, stride, dilation))
        self.out = tuple(out)
        # where the input lies in a padded plane
        self.inner = crop_index(self.pads, self.spatial)
        if compact and self._shares_row_pads():
            lo = self.pads[-1][0]
            # a row more at the end holds the last row's right pad
            self.padded = self.padded[:-2] + (self.padded[-2] + 1, self.spatial[-1] + lo)
        # row-major steps of a padded plane, in cells
        self.pitch = tuple(math.prod(self.padded[i + 1:]) for i in range(len(self.padded)))
        self.span = sum((m - 1) * p for m, p in zip(self.out, self.pitch)) + 1
        self.flat = all(s == 1 for s in stride) and self.span <= 2 * math.prod(self.out)
        self.grid = (self.span,) if self.flat else self.out
        # no gaps: the grid holds the output, row-major, and nothing else
        self.dense = math.prod(self.grid) == math.prod(self.out)
        self.is_padded = any(lo or hi for lo, hi in self.pads)
        # a 1x1 kernel at stride 1 over the whole unpadded input: the columns are the input
        self.pointwise = (not self.is_padded and self.flat and self.out == self.padded
                          and all(k == 1 for k in kernel))

    def _shares_row_pads(self) -> bool:
        """Whether the windows' overhang past a row's end fits in the next row's left pad."""
        lo, hi = self.pads[-1]
        return (len(self.spatial) >= 2 and all(s == 1 for s in self.stride)
                and 0 < hi <= lo)

    @property
    def size(self) -> int:
        """Grid positions per plane."""
        return math.prod(self.grid)

    def offsets(self):
        """The kernel offsets, in row-major order (im2col's order of the window cells)."""
        return itertools.product(*map(range, self.kernel))

    def shift(self, offset) -> int:
        """Where the cell under `offset` lies from a window's first cell, in plane cells."""
        return sum(o * d * p for o, d, p in zip(offset, self.dilation, self.pitch))

    def cell(self, xpad, offset):
        """(B, C, *grid): the cell under `offset` at every grid position, a view of xpad."""
        if self.flat:
            start = self.shift(offset)
            return xpad.reshape(xpad.shape[:2] + (-1,))[:, :, start:start + self.span]
        index = tuple(slice(o * d, o * d + s * (m - 1) + 1, s)
                      for o, s, d, m in zip(offset, self.stride, self.dilation, self.out))
        return xpad[(slice(None), slice(None)) + index]

    def run(self, xpad, offset):
        """The cell under `offset` of every window in xpad, with everything between, as
        one contiguous 1-D view: from the first plane's first window to the last plane's
        last window. Each plane's windows lie in it as on the grid (a flat grid is a
        plane's run); the cells between them are gaps, and between two planes lie the
        positions whose windows would straddle both: gaps too."""
        last = sum((m - 1) * s * p for m, s, p in zip(self.out, self.stride, self.pitch))
        length = (xpad.shape[0] * xpad.shape[1] - 1) * math.prod(self.padded) + last + 1
        start = self.shift(offset)
        return xpad.reshape(-1)[start:start + length]

    def valid_run(self, xp, a, batch):
        """(B, C, *out) for batch = (B, C): the output positions of a run-laid array a
        (laid out as `run` gives), a view."""
        step = a.strides[-1]
        plane = math.prod(self.padded) * step
        strides = (batch[1] * plane, plane) + tuple(p * step for p in self.pitch)
        return xp.lib.stride_tricks.as_strided(a, tuple(batch) + self.out, strides)

    def columns(self, xp, xpad):
        """(B, C, *kernel, *grid): every window's cells at every grid position, a view."""
        step = xpad.strides[2:]
        kernel = tuple(st * d for st, d in zip(step, self.dilation))
        if self.flat:
            grid = (xpad.strides[-1],)
        else:
            grid = tuple(st * s for st, s in zip(step, self.stride))
        return xp.lib.stride_tricks.as_strided(
            xpad, xpad.shape[:2] + self.kernel + self.grid, xpad.strides[:2] + kernel + grid)

    def valid(self, xp, a):
        """(B, O, *out): the output positions of a grid-laid array a (B, O, *grid), a view."""
        if self.dense:
            return a.reshape(a.shape[:2] + self.out)
        strides = tuple(p * a.strides[-1] for p in self.pitch)
        return xp.lib.stride_tricks.as_strided(a, a.shape[:2] + self.out, a.strides[:2] + strides)

    def padder(self, xp, chunk: int, channels: int, dtype):
        """pad(x) -> the padded x (n, C, *padded) for n <= chunk examples, written into one
        buffer whose border is zeroed once; x itself when there is no padding."""
        if not self.is_padded:
            return lambda x: x
        buffer = xp.zeros((chunk, channels) + self.padded, dtype=dtype)

        def pad(x):
            target = buffer[:len(x)]
            target[self.inner] = x
            return target

        return pad


# ---- host threads

# NumPy runs an op on one core and BLAS spreads only a GEMM over the others, so the
# copies around a GEMM (padding, im2col, the output's layout) stay serial; and BLAS's
# threads spin waiting for each other while another process holds a core. On the host
# an op may instead split its batch into one slab per core and run the slabs on Python
# threads (NumPy releases the GIL in copies, ufuncs and GEMMs), each with a one-thread
# BLAS meanwhile.

_pool = None     # the worker threads, made on first use
_blas = None     # threadpoolctl's controllers of the loaded BLAS libraries
_running = threading.Lock()  # held while slabs run: a split inside a slab runs serially
_slabs_running = 1  # how many slabs run at once now: they share the chunk budget


def _blas_controllers() -> tuple:
    """threadpoolctl's handles on the loaded BLAS libraries (none without threadpoolctl)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = ()
        else:
            _blas = tuple(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas


# bytes an op must touch before splitting it pays for the threads' hand-over
MIN_SPLIT_BYTES = 1 << 20

_step_threads = None  # inside one_blas_thread(): the threads BLAS had, which ops split over


def host_threads() -> int:
    """The threads an op may split over: those BLAS may use (1 without threadpoolctl)."""
    if _step_threads is not None:
        return _step_threads
    return max((c.num_threads for c in _blas_controllers()), default=1)


@contextlib.contextmanager
def one_blas_thread(xp, active: bool = True):
    """Run a stretch of ops (an executor's pass) with BLAS on one thread, the ops
    splitting their work over the threads BLAS had instead; a no-op unless `active`.
    An executor makes it active where an op splits its work (its class sets
    `host_split`): BLAS's own threads did worse there, since a GEMM of a few MFLOP waits
    for all of them and they spin on after it. With another process on a core,
    ResNet-20's step took a quarter longer than on one thread, and switching BLAS's
    threads for each op that splits cost as much."""
    global _step_threads
    controllers = _blas_controllers() if xp is np and active else ()
    if _step_threads is not None or not controllers:
        yield
        return
    blas_threads = [c.num_threads for c in controllers]
    for c in controllers:
        c.set_num_threads(1)
    _step_threads = max(blas_threads)
    try:
        yield
    finally:
        _step_threads = None
        for c, n in zip(controllers, blas_threads):
            c.set_num_threads(n)


# slabs per thread: a thread that finishes early takes the next slab, so one whose core
# another process holds delays the op by a small slab at most
SLABS_PER_THREAD = 2


def host_slabs(xp, total: int, size: int = MIN_SPLIT_BYTES) -> list[slice]:
    """range(total) in even, contiguous slices, SLABS_PER_THREAD per thread BLAS may use,
    for an op over `size` bytes; a single slice on a GPU, without threadpoolctl, for
    small ops, or inside another split."""
    if xp is not np or size < MIN_SPLIT_BYTES or _running.locked():
        return [slice(0, total)]
    threads = host_threads()
    count = max(1, min(SLABS_PER_THREAD * threads if threads > 1 else 1, total))
    bounds = [total * i // count for i in range(count + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def host_map(xp, fn, total: int, size: int = MIN_SPLIT_BYTES) -> list:
    """[fn(slab) for slab in host_slabs(xp, total, size)], on all threads at once: each
    takes the next slab nobody has started until none is left."""
    global _pool, _slabs_running
    slabs = host_slabs(xp, total, size)
    if len(slabs) == 1:
        return [fn(slabs[0])]
    with _running:
        threads = min(host_threads(), len(slabs))
        _slabs_running = threads
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
        # inside one_blas_thread() BLAS runs on one thread already
        controllers = _blas_controllers() if _step_threads is None else ()
        blas_threads = [c.num_threads for c in controllers]
        for c in controllers:
            c.set_num_threads(1)
        results = [None] * len(slabs)
        claim = itertools.count()  # next() is atomic under the GIL

        def work():
            while (i := next(claim)) < len(slabs):
                results[i] = fn(slabs[i])

        futures = []
        try:
            futures = [_pool.submit(work) for _ in range(threads - 1)]
            work()
            for future in futures:
                future.result()
            return results
        finally:
            wait(futures)
            _slabs_running = 1
            for c, n in zip(controllers, blas_threads):
                c.set_num_threads(n)


def split_pointwise(xp, fn, out, *arrays):
    """fn(*slabs, out=out slab) over slabs of the batch axis of `out` and `arrays`
    (all shaped alike): a large elementwise op on every core. Returns out."""
    if len(host_slabs(xp, len(out), out.nbytes)) == 1:
        return fn(*arrays, out=out)
    host_map(xp, lambda part: fn(*(a[part] for a in arrays), out=out[part]), len(out),
             out.nbytes)
    return out


# ---- convolution: im2col and one GEMM per chunk of the batch

# On the host each thread convolves a chunk of its slab at a time, the im2col columns
# of the chunks of all threads about this many bytes (one example at least): they are
# in the cache when the GEMM reads them (and col2im adds them), and the whole batch's
# columns, k*k times the input, are never held at once. Each chunk costs Python calls
# (col2im makes two per kernel offset) and a GEMM of fewer columns: the layers of
# LeNet-5 and ResNet-20 ran 10-40% slower with 1 MiB chunks, not faster with 8 or 16.
CHUNK_BYTES = 4 << 20

# On a GPU, which wants few, large kernels, a chunk is the whole batch unless its
# columns would pass this: those of a batch of large images (VGG-16's first layers: 3.7
# GB at batch 32) would otherwise take much of the device's memory, and a few chunks
# of 1 GiB keep every kernel large.
DEVICE_CHUNK_BYTES = 1 << 30


def batch_chunks(xp, batch: int, per_example: int, budget: int | None = None) -> list[slice]:
    """Slices of the batch of about budget / per_example examples each, as even as
    possible. The budget is by default CHUNK_BYTES shared by the slabs running at once;
    on a GPU (xp not NumPy) it is DEVICE_CHUNK_BYTES, whatever the caller's (a host
    budget is sized for a core's cache)."""
    if xp is not np:
        budget = DEVICE_CHUNK_BYTES
    else:
        budget = CHUNK_BYTES // _slabs_running if budget is None else budget
    count = -(-batch // max(1, budget // max(per_example, 1)))
    size = -(-batch // count)
    return [slice(b, min(b + size, batch)) for b in range(0, batch, size)]


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


def conv_nd(xp, x, weight, bias, stride, pads, dilation, groups, out=None):
    """Cross-correlate x (B, C, *S) with weight (O, C/G, *k); pads are (lo, hi) per dim,
    `out` the windows per dim (all that fit when not given).

    Per chunk of the batch: pad, im2col, one GEMM (G, O/G, C/G * K) @ (G, C/G * K, n * grid)
    whose many columns keep BLAS busy, and one copy of its result (O, n, *grid) to y
    (n, O, *out) that also drops the grid's gaps and adds the bias. A 1x1 kernel over
    the whole input needs no columns: a GEMM per example writes y directly. On the host
    each core convolves a slab of the batch (host_map).
    """
    if on_gpu(xp) and out is None and gpu_conv.supported(x, weight, groups):
        return gpu_conv.conv2d(xp, x, weight, bias, stride, pads, dilation)
    win = Windows(x.shape[2:], weight.shape[2:], stride, dilation, pads, out, compact=True)
    x = xp.ascontiguousarray(x)
    b, o = x.shape[0], weight.shape[0]
    dtype = xp.result_type(x.dtype, weight.dtype)
    y = xp.empty((b, o) + win.out, dtype=dtype)
    bias = None if bias is None else bias.reshape((1, o) + (1,) * len(win.out))
    convolve = _slab_convolution(xp, x, weight, win, groups)
    work = x.nbytes * math.prod(win.kernel)  # the im2col columns
    host_map(xp, lambda part: convolve(x[part], bias, y[part]), b, work)
    return y


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

    partials = host_map(xp, slab, x.shape[0], x.nbytes * math.prod(win.kernel))
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
    host_map(xp, lambda part: _input_grad_slab(xp, gy[part], weight, win, groups, by_conv,
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


def conv_nd_backward(xp, gy, x, weight, stride, pads, dilation, groups, need_dx=True):
    """Gradients (dx, dweight, dbias) of conv_nd; dx is None unless `need_dx` (a first
    layer's input needs none). On the host each core takes a slab of the batch: its dx,
    and its sums for dweight and dbias, which are added up."""
    if on_gpu(xp) and gpu_conv.supported(x, weight, groups):
        return gpu_conv.conv2d_backward(xp, gy, x, weight, stride, pads, dilation, need_dx)
    win = Windows(x.shape[2:], weight.shape[2:], stride, dilation, pads, compact=True)
    gy, x = xp.ascontiguousarray(gy), xp.ascontiguousarray(x)
    (b, o), dtype = gy.shape[:2], xp.result_type(gy.dtype, weight.dtype)
    by_conv = _input_grad_by_conv(weight, win, groups, gy.shape[2:]) if need_dx else None
    dx = xp.empty(x.shape, dtype=dtype) if need_dx else None
    planes = gy.reshape(b, o, -1)

    def slab(part):
        if need_dx:
            _input_grad_slab(xp, gy[part], weight, win, groups, by_conv, dx[part])
        return (_weight_grad_slab(xp, gy[part], x[part], weight, win, groups),
                _channel_sums(xp, planes[part]))

    partials = host_map(xp, slab, b, 2 * x.nbytes * math.prod(win.kernel))
    dweight, dbias = partials[0]
    for more_dweight, more_dbias in partials[1:]:
        dweight += more_dweight
        dbias += more_dbias
    return dx, dweight, dbias


def conv_transpose_nd(xp, x, weight, bias, stride, pad, output_pad, dilation, groups):
    """The transpose of conv_nd: x (B, C, *S) scattered through weight (C, O/G, *k).

    It is the input gradient, at gy = x, of the convolution from (B, O, *out) to
    (B, C, *S) with this weight: padded by pad, one window per cell of x (output_pad may
    leave room for one more, which that convolution does not have).
    """
    kernel, spatial = weight.shape[2:], x.shape[2:]
    out = tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1
                for n, k, s, p, op, d in zip(spatial, kernel, stride, pad, output_pad, dilation))
    win = Windows(out, kernel, stride, dilation, [(p, p) for p in pad], out=spatial)
    b, o = x.shape[0], weight.shape[1] * groups
    y = _input_grad(xp, xp.ascontiguousarray(x), weight, win, groups, (b, o) + out)
    if bias is not None:
        y += bias.reshape((1, o) + (1,) * len(out))
    return y


def conv_transpose_nd_backward(xp, gy, x, weight, stride, pad, dilation, groups):
    """Gradients (dx, dweight, dbias) of conv_transpose_nd: that convolution run forward
    on gy for dx, and its weight gradient with gy as input and x as output gradient."""
    pads = [(p, p) for p in pad]
    gy, x = xp.ascontiguousarray(gy), xp.ascontiguousarray(x)
    win = Windows(gy.shape[2:], weight.shape[2:], stride, dilation, pads, out=x.shape[2:])
    dx = conv_nd(xp, gy, weight, None, stride, pads, dilation, groups, out=x.shape[2:])
    dweight = _weight_grad(xp, x, gy, weight, win, groups)
    dbias = gy.sum(axis=(0, *range(2, gy.ndim)))
    return dx, dweight, dbias


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


def _channel_sums(xp, x):
    """Per-channel sums of x (B, C, N) in one pass: on the host a GEMV per example (NumPy's
    reduction over axes 0 and 2 runs several times slower); on a GPU the reduction, which
    is one kernel there (a GEMV per example would be a batch of 1-row GEMMs)."""
    if not on_host(xp):
        return x.sum(axis=(0, 2))
    return xp.matmul(x, xp.ones(x.shape[2], dtype=x.dtype)).sum(axis=0)


def _channel_dots(xp, a, b):
    """Per-channel sums of a * b, both (B, C, N), in one pass and without the product (on
    the host; a GPU makes the product and reduces it, two kernels)."""
    if not on_host(xp):
        return (a * b).sum(axis=(0, 2))
    return xp.matmul(a[:, :, None, :], b[:, :, :, None]).reshape(a.shape[:2]).sum(axis=0)


def _per_channel(v):
    """A (C,) vector broadcast against (B, C, N)."""
    return v.reshape(-1, 1)


def batch_norm(ctx, x, weight, bias, eps, momentum):
    """Normalise x (B, C, *S) per channel; returns y, xhat and inv_std (1, C, 1...).

    Training uses the batch statistics (biased variance, from the centred values) and
    folds them into the running ones in `ctx.buffers` with PyTorch's momentum and
    unbiased variance; eval uses the running statistics, which start as zeros and ones.
    On the host each core normalises a slab of the channels.
    """
    xp = ctx.xp
    if on_gpu(xp):
        return gpu_norm.batch_norm(ctx, x, weight, bias, eps, momentum)
    b, channels = x.shape[:2]
    buffers = ctx.buffers
    if "running_mean" not in buffers:
        buffers["running_mean"] = xp.zeros(channels, dtype=x.dtype)
        buffers["running_var"] = xp.ones(channels, dtype=x.dtype)
    x3 = xp.ascontiguousarray(x).reshape(b, channels, -1)
    n = b * x3.shape[2]
    xhat, y = xp.empty_like(x3), xp.empty_like(x3)
    mean = xp.empty(channels, dtype=x.dtype)
    var = xp.empty(channels, dtype=x.dtype)
    running_mean, running_var = buffers["running_mean"], buffers["running_var"]

    def normalise(part):
        centred = xhat[:, part]
        if ctx.training:
            mean[part] = _channel_sums(xp, x3[:, part]) / n
            xp.subtract(x3[:, part], _per_channel(mean[part]), out=centred)
            var[part] = _channel_dots(xp, centred, centred) / n
        else:
            xp.subtract(x3[:, part], _per_channel(running_mean[part]), out=centred)
            var[part] = running_var[part]
        centred *= _per_channel(1 / xp.sqrt(var[part] + eps))
        xp.multiply(centred, _per_channel(weight[part]), out=y[:, part])
        y[:, part] += _per_channel(bias[part])

    host_map(xp, normalise, channels, x3.nbytes)
    if ctx.training:
        unbiased = var * (n / max(n - 1, 1))
        buffers["running_mean"] = (1 - momentum) * running_mean + momentum * mean
        buffers["running_var"] = (1 - momentum) * running_var + momentum * unbiased
    inv_std = (1 / xp.sqrt(var + eps)).reshape((1, -1) + (1,) * (x.ndim - 2))
    return y.reshape(x.shape), xhat.reshape(x.shape), inv_std


def batch_norm_backward(xp, gy, xhat, inv_std, weight, batch_stats: bool):
    """Gradients (dx, dweight, dbias) of batch_norm; batch statistics couple the batch.

    dx = scale * (gy - mean(gy) - xhat * mean(gy * xhat)), per slab of the channels: two
    reading passes for the sums, then four over dx, which is written once.
    """
    if on_gpu(xp):
        return gpu_norm.batch_norm_backward(xp, gy, xhat, inv_std, weight, batch_stats)
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
        dbias[part] = _channel_sums(xp, g)
        dweight[part] = _channel_dots(xp, g, h)
        if not batch_stats:
            xp.multiply(g, _per_channel(scale[part]), out=d)
            return
        xp.multiply(h, _per_channel(dweight[part] / -n), out=d)
        d += g
        d -= _per_channel(dbias[part] / n)
        d *= _per_channel(scale[part])

    host_map(xp, differentiate, channels, g3.nbytes)
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


def scatter_add(xp, target, index, values):
    """target[index] += values, with repeated indices adding up: NumPy's and CuPy's
    `add.at` (CuPy's adds atomically, so on a GPU the order of the additions, and the
    last bits of a sum of repeated indices, may differ between runs); `cupyx.scatter_add`
    where an older CuPy has no `add.at`."""
    at = getattr(xp.add, "at", None)
    if at is None:
        import cupyx

        cupyx.scatter_add(target, index, values)
    else:
        at(target, index, values)
    return target


# ---- initialisation (NumPy: parameters are made once, on the host)


def fan_in_uniform(rng, fan_in: int, shape):
    """PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform, a=sqrt(5))."""
    bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def constant(shape, value: float):
    """A float32 array of one value (batchnorm's ones and zeros, prelu's 0.25)."""
    return np.full(shape, value, dtype=np.float32)
