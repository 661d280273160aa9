"""Where a kernel's windows lie: padding, the grid of windows, pooling's pads.

Everything here takes the array module `xp` first and works on batched arrays laid out
(B, C, *spatial), so NumPy and CuPy run the same code. No Python loop runs over pixels:
only over kernel offsets (kh * kw iterations at most).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from netdsl.ops.base import expand_to
from netdsl.ops.common import as_tuple

__all__ = ["settings", "window_count", "Geometry", "pad_spatial", "crop_index", "crop_spatial",
           "offsets", "Windows", "pool_pads", "plane_index"]


def settings(op, rank: int, **values) -> list[tuple[int, ...]]:
    """Per-dimension settings (kernel 3 -> (3, 3)) for `rank` spatial dims."""
    return [expand_to(as_tuple(v), rank, f"{op.name} {name}") for name, v in values.items()]


def window_count(n: int, k: int, s: int, lo: int, hi: int, d: int = 1) -> int:
    """How many windows of k cells, d apart, fit stride s apart over n cells padded by lo
    and hi: a convolution's output length."""
    return (n + lo + hi - d * (k - 1) - 1) // s + 1


@dataclass(frozen=True)
class Geometry:
    """Where a kernel's windows lie over one example's spatial dims: per dim the input's
    size, the kernel, stride, dilation and (lo, hi) padding, and the windows that run
    (`out`: all that fit, unless an op asks for fewer or more, as a transposed
    convolution's output_pad or pooling's ceil mode do).

    An op's shape rule makes it from the input type (Op.geometry), the planner stores it
    on the step, and forward, backward and a GPU's kernels read it: the output size is
    computed once, here.
    """

    spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    out: tuple[int, ...]

    @classmethod
    def of(cls, spatial, kernel, stride, dilation, pads, out=None) -> "Geometry":
        """The geometry with `out` all the windows that fit, unless given."""
        pads = tuple((int(lo), int(hi)) for lo, hi in pads)
        if out is None:
            out = tuple(window_count(n, k, s, lo, hi, d)
                        for n, k, s, d, (lo, hi) in zip(spatial, kernel, stride, dilation, pads))
        return cls(tuple(spatial), tuple(kernel), tuple(stride), tuple(dilation), pads,
                   tuple(out))

    @property
    def lows(self) -> tuple[int, ...]:
        """The padding before each dim (pooling's `pad`; its hi may grow in ceil mode)."""
        return tuple(lo for lo, _ in self.pads)


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
            out = (window_count(n, k, s, lo, hi, d)
                   for n, k, s, d, (lo, hi) in zip(spatial, kernel, stride, dilation, pads))
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

    @classmethod
    def of(cls, geometry: Geometry, compact: bool = False) -> "Windows":
        """The windows of a geometry over a batch."""
        return cls(geometry.spatial, geometry.kernel, geometry.stride, geometry.dilation,
                   geometry.pads, geometry.out, compact)

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


