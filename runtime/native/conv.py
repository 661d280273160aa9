"""Convolutions on the native target: compiled C kernels, chosen per layer by timing.

While an executor of the native target runs a pass (`in_use`), ops.convolve's `conv_nd`
and `conv_nd_backward` for NumPy come here. A 1-D or 2-D convolution without groups,
in float32 or float64, runs one of:

- forward: `numpy` (ops.convolve's im2col and GEMM), `gemm` (netdsl.lower.native_conv's
  columns in C and one GEMM per image, written straight into y), `direct` (no
  columns; see lower/native_conv.py) or, for a 2-D 3x3 kernel at stride 1 and
  dilation 1, `winograd` (F(2x2, 3x3): 16 GEMMs over transformed tiles);
- backward: `numpy`, `gemm` (the columns in C, the weight gradient's GEMM per image
  summed in place, the input gradient's GEMM and col2im in C), `direct` (the weight
  gradient without columns, and at stride 1 the input gradient as the direct forward
  kernel on gy with the weight flipped; col2im's at other strides) or, where the
  Winograd forward fits and so does dx's geometry (pads up to 2), `winograd` (dx as
  the Winograd forward on gy with the weight flipped, dweight as sixteen GEMMs in the
  transformed domain, taken back by G^T . G).

A convolution the lowering joined to the elementwise chain after it (lower.conv_chain)
comes through `conv_nd_then` and `conv_nd_then_backward`: the chosen kernel's library
built with the chain applied where it writes y, and backward a pass taking gy back
through the chain and summing the bias's gradient (`chain_gradient`) before the kernel.

Which one is timed once per layer shape (and dtype and threads): a few runs of each
candidate on the real arrays, the fastest kept, in memory and in a JSON file beside the
compiled kernels (`choices.json`, through runtime.native.choice_file; the key holds a
hash of the kernels' source, so that new kernels are timed again). Every compiled
kernel runs over a slab of the batch, the slabs on the host's threads at once (runtime.native.slabs: Python threads, ctypes releasing the GIL; with
NETDSL_C_SLABS=1, one call hands them to the generated C's pool). Any
other case (groups, rank 3, mixed dtypes, no compiler) returns NotImplemented, and the
NumPy code runs.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import hashlib
import threading
import time
from functools import lru_cache

import numpy as np

from netdsl.lower import native_conv as native_conv_lowering
from netdsl.lower.native_conv import (FUNCTIONS, GEOMETRY, WINOGRAD_FUNCTIONS, Chained,
                                      conv_module, direct_kernel, direct_scratch, gemm_scratch,
                                      geometry_sizes, weight_grad_scratch,
                                      winograd_fits, winograd_grad_scratch, winograd_module,
                                      winograd_chunk_rows, winograd_scratch)
from netdsl.ops import convolve, parallel
from netdsl.ops.windows import Geometry
from netdsl.runtime.host import host_threads, one_blas_thread, slabs_per_thread
from netdsl.runtime.native.blas import gemm
from netdsl.runtime.native.choice_file import ChoiceFile, fastest
# the layout pass reads its measured costs where executors load (registered on import)
from netdsl.runtime import layout_costs  # noqa: F401
from netdsl.runtime.native.slabs import Scratch, run_slabs
from netdsl.runtime.native.toolchain import NativeUnavailable, build, vector_bytes
from netdsl.switches import flag

__all__ = ["in_use", "active", "chain_gradient", "chain_masking", "covered", "forward", "backward", "choose",
           "choices", "FORWARD", "BACKWARD", "layers", "report", "CHOICES_FILE"]

FORWARD = ("numpy", "gemm", "direct", "winograd")
BACKWARD = ("numpy", "gemm", "direct", "winograd")
CHOICES_FILE = "choices.json"

# runs of each candidate timed when a layer is first seen (the fastest counts): the
# first run of a kernel also faults its scratch in, which later steps do not pay
TIMED_RUNS = 3

_active = contextvars.ContextVar("native_convolutions", default=False)
# key -> {"forward": name, "backward": name}, this process's and the file's
CHOICES = ChoiceFile(CHOICES_FILE, lambda v: isinstance(v, dict)
                     and v.get("forward") in FORWARD and v.get("backward") in BACKWARD)
# seconds spent timing candidates in this process, for the compile report
timing_seconds = [0.0]


@contextlib.contextmanager
def in_use(active: bool = True):
    """Within it, NumPy convolutions run this module's kernels (an executor's pass on the
    native target); elsewhere, as on the host target, ops.convolve's code."""
    token = _active.set(active)
    try:
        yield
    finally:
        _active.reset(token)


def active() -> bool:
    """Whether an executor of the native target is running a pass (`in_use`): its
    compiled kernels (these, and runtime.native.pooling's) take the NumPy routines."""
    return _active.get()


@lru_cache(maxsize=None)
def _library(dtype: str, chain: Chained | None = None):
    """(the loaded kernels, the GEMM's address) for `dtype`, their forwards applying
    `chain` to each output; NativeUnavailable when there is no compiler or no CBLAS."""
    address, integer, symbol = gemm(dtype)
    library = build(conv_module(dtype, integer, symbol, chain))
    p, size = ctypes.c_void_p, [ctypes.c_longlong] * (2 + len(GEOMETRY))
    for name in FUNCTIONS:
        function = getattr(library, name)
        function.restype = None
        arrays = 5 if name.startswith("conv_forward") else 7
        function.argtypes = [p] * (1 + arrays) + size
    if chain is not None:
        function = library.conv_chain_gradient
        function.restype, function.argtypes = None, [p] * 4 + [ctypes.c_longlong] * 5
    return library, address


@lru_cache(maxsize=None)
def _winograd_library(dtype: str, chain: Chained | None = None):
    """(the loaded Winograd kernels, the GEMM's address) for `dtype`, the forward
    applying `chain`; NativeUnavailable as _library."""
    address, integer, symbol = gemm(dtype)
    library = build(winograd_module(dtype, integer, symbol, chain))
    p, size = ctypes.c_void_p, ctypes.c_longlong
    arguments = {"conv_winograd_weights": [p, p, size, size],   # w, U, O, C
                 "conv_winograd_weights_back": [p, p, size, size],   # dU, dw, O, C
                 "conv_forward_winograd": [p] * 6 + [size] * (3 + len(GEOMETRY)),
                 "conv_weight_grad_winograd": [p] * 6 + [size] * (3 + len(GEOMETRY))}
    for name in WINOGRAD_FUNCTIONS:
        function = getattr(library, name)
        function.restype, function.argtypes = None, arguments[name]
    return library, address


def covered(x, weight, geometry: Geometry, groups: int) -> bool:
    """Whether the compiled kernels cover this convolution: rank 1 or 2, no groups,
    float32 or float64 alike, arrays of the geometry's sizes."""
    return (groups == 1 and x.ndim in (3, 4) and x.dtype == weight.dtype
            and x.dtype in (np.float32, np.float64) and len(geometry.kernel) == x.ndim - 2
            and tuple(x.shape[2:]) == tuple(geometry.spatial)   # the kernels read by these
            and tuple(weight.shape[2:]) == tuple(geometry.kernel)
            and weight.shape[1] == x.shape[1])


def _sizes(x, weight, g: Geometry) -> tuple[int, ...]:
    """GEOMETRY's values; rank 1 as rank 2 with a height of one."""
    return geometry_sizes(x.shape[1], weight.shape[0], g)


def _direct_fits(g: Geometry) -> bool:
    """The direct kernels run at any stride and dilation, with no negative pads."""
    return all(lo >= 0 for lo, _ in g.pads)


# The direct kernels work on blocks of 64-byte vectors. Where the compiler splits those
# (no AVX-512) they took 10-20 times gemm's time on every layer of W6, were chosen for
# none of 749 layer shapes timed on such a CPU, and timing them cost seconds on a
# layer's first step: there they are not candidates (NETDSL_CONV_DIRECT_TIMED=1: they
# are, as before).
DIRECT_TIMED_ANYWHERE = flag("NETDSL_CONV_DIRECT_TIMED", False)


def _direct_timed(g: Geometry) -> bool:
    """Whether `choose` times the direct kernels on a layer of geometry `g`."""
    return _direct_fits(g) and (DIRECT_TIMED_ANYWHERE or vector_bytes() >= 64)


def _winograd_fits(g: Geometry) -> bool:
    """The Winograd kernel runs 2-D 3x3 kernels at stride 1 and dilation 1, pads not
    negative."""
    return winograd_fits(g.kernel, g.stride, g.dilation, [lo for lo, _ in g.pads])


def _winograd_backward_fits(g: Geometry) -> bool:
    """dx by the Winograd forward: where it fits, and dx's pads on gy (2 less the
    layer's) are not negative."""
    return _winograd_fits(g) and _input_grad_geometry(g) is not None


def forward(kind: str, x, weight, bias, geometry: Geometry, kernel: str | None = None,
            chain: Chained | None = None, out=None):
    """y of conv_nd through the compiled kernel `kind` ("gemm", "direct" or "winograd";
    the direct kernel of lower.native_conv.direct_kernel unless `kernel` names one), with
    `chain` applied to each output as the kernel writes it; into `out` where given (a
    contiguous array of y's shape and dtype)."""
    if kind == "winograd":
        return _winograd_forward(x, weight, bias, geometry, chain, out=out)
    library, address = _library(str(x.dtype), chain)
    sizes = _sizes(x, weight, geometry)
    dtype = str(x.dtype)
    if kind == "direct":
        kernel = kernel or direct_kernel(dtype, sizes)
        scratch = direct_scratch(dtype, sizes, kernel)
    else:
        kernel, scratch = "conv_forward_gemm", gemm_scratch(sizes)
    function = getattr(library, kernel)
    o, kh, kw = sizes[3], sizes[4], sizes[5]
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    bias = None if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    y = _output(out, (x.shape[0], o) + tuple(geometry.out), x.dtype)

    pointers = (address, x.ctypes.data, weight.ctypes.data,
                None if bias is None else bias.ctypes.data, y.ctypes.data,
                Scratch("scratch", scratch, x.dtype))

    def plan(part: slice):
        return [(function, (*pointers, part.start, part.stop, *sizes))], None

    run_slabs(plan, x.shape[0], x.nbytes * kh * kw)
    return y


def _winograd_forward(x, weight, bias, geometry: Geometry, chain: Chained | None = None,
                      transformed=None, out=None):
    """y by Winograd F(2x2, 3x3): the weight's transform once (or `transformed`, the
    weight's U made before, the weight None), then each slab of the batch in chunks of
    tile rows (lower.native_conv.winograd_chunk_rows)."""
    dtype = str(x.dtype)
    library, address = _winograd_library(dtype, chain)
    if transformed is None:
        transformed = _winograd_weights(weight)
    o = transformed.shape[1]
    sizes = geometry_sizes(x.shape[1], o, geometry)
    x = np.ascontiguousarray(x)
    bias = None if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    y = _output(out, (x.shape[0], o) + tuple(geometry.out), x.dtype)

    function = library.conv_forward_winograd
    pointers = (address, x.ctypes.data, transformed.ctypes.data,
                None if bias is None else bias.ctypes.data, y.ctypes.data)

    def plan(part: slice):
        rows = winograd_chunk_rows(sizes, x.itemsize, part.stop - part.start,
                                   _slabs_running())
        scratch = Scratch("scratch", winograd_scratch(dtype, sizes, rows), x.dtype)
        return [(function, (*pointers, scratch, part.start, part.stop, rows, *sizes))], None

    with _winograd_slabs():
        run_slabs(plan, x.shape[0], x.nbytes * 9)
    return y


def _output(out, shape: tuple, dtype):
    """y's array: `out` where the caller placed it, else a new one."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    assert out.shape == shape and out.dtype == dtype and out.flags.c_contiguous
    return out


def _into(y, out):
    """y in `out` where the caller placed it (a y the timing of a choice made)."""
    if out is None or y is out:
        return y
    out[...] = y
    return out


def _winograd_slabs():
    """A Winograd call's split: one slab per thread where
    lower.native_conv.WINOGRAD_SLAB_A_THREAD, else the host's."""
    if native_conv_lowering.WINOGRAD_SLAB_A_THREAD:
        return slabs_per_thread(1)
    return contextlib.nullcontext()


def _winograd_weights(weight):
    """U (16, O, C) = G g G^T of each 3x3 kernel g of weight (O, C, 3, 3)."""
    weight = np.ascontiguousarray(weight)
    o, c = weight.shape[:2]
    library, _ = _winograd_library(str(weight.dtype))
    transformed = np.empty((16, o, c), dtype=weight.dtype)
    library.conv_winograd_weights(weight.ctypes.data, transformed.ctypes.data, o, c)
    return transformed


class _InOrder:
    """Slabs' partial sums (arrays) added up in the slabs' order as soon as every slab
    before one is in: the same additions in the same order as summing them after all
    are done (the same bits), but a slab's partials are dropped once added, so that
    fewer are held at once."""

    def __init__(self):
        self.total, self._next, self._waiting = None, 0, {}
        self._lock = threading.Lock()

    def add(self, part: slice, partials: tuple) -> None:
        with self._lock:
            self._waiting[part.start] = (part.stop, partials)
            while self._next in self._waiting:
                self._next, more = self._waiting.pop(self._next)
                if self.total is None:
                    self.total = more
                else:
                    for into, value in zip(self.total, more):
                        into += value


def _slabs_running() -> int:
    """How many slabs run at once beside the calling one, itself included: the host
    shares parallel.CHUNK_BYTES among them (parallel.chunk_budget)."""
    return max(1, parallel.CHUNK_BYTES // parallel.chunk_budget(np))


# Winograd F(2x2, 3x3)'s G: a kernel's transform is G g G^T, its gradient's G^T u G
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _winograd_weight_grad(gy, x, weight, geometry: Geometry, bias_grad: bool = True,
                          masking=None):
    """(dweight, dbias) by Winograd F(2x2, 3x3): each slab sums its images' gradient in
    the transformed domain (16, O, C) and its bias gradient (unless not `bias_grad`:
    then dbias is zeros; `masking`, as backward's, makes it); the slabs' sums are added
    and taken back by G^T . G."""
    dtype = str(x.dtype)
    library, address = _winograd_library(dtype)
    sizes = _sizes(x, weight, geometry)
    c, o = sizes[0], sizes[3]
    folding = _InOrder() if native_conv_lowering.WINOGRAD_SHARE else None

    function = library.conv_weight_grad_winograd
    arrays = (address, gy.ctypes.data, x.ctypes.data)

    def plan(part: slice):
        transformed = np.zeros((4, 4, o, c), dtype=x.dtype)
        calls, dbias = [], np.zeros(o, dtype=x.dtype)
        if masking is not None:   # gy's images through the chain first, their bias sums
            mask, dbias = masking(part)
            calls.append(mask)
        rows = winograd_chunk_rows(sizes, x.itemsize, part.stop - part.start,
                                   _slabs_running())
        calls.append((function, (
            *arrays, transformed.ctypes.data,
            dbias.ctypes.data if bias_grad and masking is None else None,
            Scratch("scratch", winograd_grad_scratch(dtype, sizes, rows), x.dtype),
            part.start, part.stop, rows, *sizes)))
        return calls, (transformed, dbias)

    def fold(part: slice, partials: tuple):
        folding.add(part, partials)

    with _winograd_slabs():
        partials = run_slabs(plan, x.shape[0], 2 * x.nbytes * 9,
                             None if folding is None else fold)
    if folding is not None:
        partials = [folding.total]
    transformed, dbias = partials[0]
    for more, more_dbias in partials[1:]:
        transformed += more
        dbias += more_dbias
    if native_conv_lowering.WINOGRAD_BACK_IN_C:
        dweight = np.empty(weight.shape, dtype=x.dtype)
        library.conv_winograd_weights_back(transformed.ctypes.data, dweight.ctypes.data,
                                           o, c)
        return dweight, dbias
    g = _WINOGRAD_G.astype(x.dtype)
    dweight = np.einsum("ir,ijoc,js->ocrs", g, transformed, g, optimize=True)
    return np.ascontiguousarray(dweight), dbias


def _winograd_backward(gy, x, weight, geometry: Geometry, need_dx: bool, dbias=None,
                       masking=None):
    """(dx, dweight, dbias) by Winograd F(2x2, 3x3): dx as the forward on gy with the
    weight flipped (_input_grad_geometry), dweight and dbias by _winograd_weight_grad
    (dbias as given, where it is); dx after them with `masking` (on gy as the slabs
    left it) and with lower.native_conv.WINOGRAD_LEAN, before them otherwise."""
    gy, x = np.ascontiguousarray(gy, dtype=x.dtype), np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    lean = native_conv_lowering.WINOGRAD_LEAN

    def input_grad():
        if lean:   # the flipped weight dropped before the slabs: U alone is kept
            return _winograd_forward(gy, None, None, _input_grad_geometry(geometry),
                                     transformed=_winograd_weights(_flipped(weight)))
        return forward("winograd", gy, _flipped(weight), None, _input_grad_geometry(geometry))

    # dx before the weight gradient (the old order), or after it (lean: dx is not held
    # beside the slabs' chunks and partials; with masking, on gy as the slabs left it)
    dx = input_grad() if need_dx and masking is None and not lean else None
    dweight, summed = _winograd_weight_grad(gy, x, weight, geometry, dbias is None,
                                            masking)
    if need_dx and dx is None:
        dx = input_grad()
    return dx, dweight, summed if dbias is None else dbias


def _input_grad_geometry(geometry: Geometry) -> Geometry | None:
    """At stride 1, dx of a convolution is the convolution of gy, padded by the kernel's
    reach less the pad, with the weight flipped and its channels swapped: its geometry
    over gy, or None where that pad would be negative (a pad past the kernel's reach)."""
    g = geometry
    if any(s != 1 for s in g.stride):
        return None
    pads = [(d * (k - 1) - lo, d * (k - 1) - hi)
            for d, k, (lo, hi) in zip(g.dilation, g.kernel, g.pads)]
    if any(lo < 0 for lo, _ in pads):
        return None
    return Geometry(g.out, g.kernel, g.stride, g.dilation, tuple(pads), g.spatial)


def _flipped(weight):
    """weight (O, C, *k) as (C, O, *k), each kernel turned end to end."""
    flipped = weight.swapaxes(0, 1)[(slice(None),) * 2 + (slice(None, None, -1),)
                                    * (weight.ndim - 2)]
    return np.ascontiguousarray(flipped)


def backward(gy, x, weight, geometry: Geometry, need_dx: bool = True, kind: str = "gemm",
             dbias=None, masking=None):
    """(dx, dweight, dbias) of conv_nd through the compiled kernels; each slab of the
    batch sums its images' weight and bias gradients, and the slabs' sums are added up.
    `kind` "gemm": columns and a GEMM per image for dweight, col2im of the column
    gradients for dx; "direct": the direct weight gradient, and at stride 1 dx by the
    direct forward kernel on gy (unless its pads would be past the kernel's reach;
    there, and at other strides, dx by col2im as "gemm"); "winograd" (where
    _winograd_backward_fits): see _winograd_backward. A `dbias` given (the chain's
    gradient pass summed it) is returned as the bias gradient, and not summed again.
    `masking` (chain_masking's): each slab first writes its images of gy through it, and
    their bias gradient is its sums, so that the kernels read them from the cache; dx by
    a forward on gy then runs after the slabs."""
    if kind == "winograd":
        return _winograd_backward(gy, x, weight, geometry, need_dx, dbias, masking)
    bias_grad = dbias is None and masking is None
    library, address = _library(str(x.dtype))
    sizes = _sizes(x, weight, geometry)
    o, kh, kw = sizes[3], sizes[4], sizes[5]
    gy, x = np.ascontiguousarray(gy, dtype=x.dtype), np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    direct = kind == "direct"
    dx_direct = need_dx and direct and _input_grad_geometry(geometry) is not None
    col2im = need_dx and not dx_direct
    dx = None
    if dx_direct and masking is None:
        dx = forward("direct", gy, _flipped(weight), None, _input_grad_geometry(geometry))
    elif col2im:
        dx = np.empty(x.shape, dtype=x.dtype)
    columns = gemm_scratch(sizes)   # conv_backward_gemm's scratch: an image's columns
    # the direct weight gradient sums over a chunk of images in one call (its scratch
    # holds each padded): a small image's few positions would not fill its loops
    per_image = weight_grad_scratch(str(x.dtype), sizes)

    pointers = (address, gy.ctypes.data, x.ctypes.data, weight.ctypes.data)
    dx_pointer = dx.ctypes.data if col2im else None

    def plan(part: slice):
        dweight = np.zeros(weight.shape, dtype=x.dtype)
        calls, dbias = [], np.zeros(o, dtype=x.dtype)
        if masking is not None:   # gy's images through the chain first, their bias sums
            mask, dbias = masking(part)
            calls.append(mask)
        dbias_pointer = dbias.ctypes.data if bias_grad else None
        if direct:
            n = part.stop - part.start
            chunks = parallel.batch_chunks(np, n, per_image * x.itemsize)
            buffer = Scratch("chunk", weight_grad_scratch(str(x.dtype), sizes,
                                                          chunks[0].stop), x.dtype)
            calls += [(library.conv_weight_grad_direct,
                       (*pointers, None, dweight.ctypes.data, dbias_pointer, buffer,
                        part.start + chunk.start, part.start + chunk.stop, *sizes))
                      for chunk in chunks]
        if col2im or not direct:   # dx by col2im, and dweight by GEMM unless done above
            calls.append((library.conv_backward_gemm,
                          (*pointers, dx_pointer, None if direct else dweight.ctypes.data,
                           dbias_pointer, Scratch("columns", columns, x.dtype), part.start,
                           part.stop, *sizes)))
        return calls, (dweight, dbias)

    dweight, summed = _summed(run_slabs(plan, x.shape[0], 2 * x.nbytes * kh * kw))
    if dx_direct and masking is not None:   # on gy as the slabs left it
        dx = forward("direct", gy, _flipped(weight), None, _input_grad_geometry(geometry))
    return dx, dweight, summed if dbias is None else dbias


def _summed(partials: list) -> tuple:
    """The slabs' (dweight, dbias) added up into the first's arrays; the others are
    freed on return (a dx made after the slabs has only the sums beside it)."""
    dweight, dbias = partials[0]
    for more_dweight, more_dbias in partials[1:]:
        dweight += more_dweight
        dbias += more_dbias
    return dweight, dbias


def chain_gradient(y, gy, chain: Chained, into=None):
    """(g, dbias): the gradient of `chain`'s output gy taken back through the chain to
    the convolution's output, from the chain's output y, written into `into` (which may
    be gy itself) or a new array, and its sums per channel (the bias's gradient), in
    one pass (conv_chain_gradient) over slabs of the batch on the host's threads."""
    g, masking = chain_masking(y, gy, chain, into)

    def plan(part: slice):
        mask, dbias = masking(part)
        return [mask], dbias

    partials = run_slabs(plan, y.shape[0], 3 * y.nbytes)
    dbias = partials[0]
    for more in partials[1:]:
        dbias += more
    return g, dbias


def chain_masking(y, gy, chain: Chained, into=None):
    """(g, masking): the array chain_gradient writes (`into`, or a new one), and the pass
    over a slice of its images: masking(part) is (the call that writes them and sums
    them per channel, the array it sums into), for backward to make in each of its
    slabs before the kernels read those images (runtime.native.slabs)."""
    library, _ = _library(str(y.dtype), chain)
    o = y.shape[1]
    n = y.size // (y.shape[0] * o) if y.size else 0
    if not _images_apart(gy, y):
        gy = np.ascontiguousarray(gy, dtype=y.dtype)
    g = np.empty_like(y) if into is None else into
    images = gy.strides[0] // gy.itemsize

    function = library.conv_chain_gradient
    pointers = (y.ctypes.data, gy.ctypes.data, g.ctypes.data)

    def masking(part: slice):
        dbias = np.zeros(o, dtype=y.dtype)
        return (function, (*pointers, dbias.ctypes.data, part.start, part.stop, o, n,
                           images)), dbias

    return g, masking


def _images_apart(gy, y) -> bool:
    """Whether gy is y's dtype and shape with each image contiguous, the images some whole
    number of elements apart (a slice of a concatenation's gradient along channels)."""
    return (gy.dtype == y.dtype and gy.shape == y.shape and gy.strides[1:] == y.strides[1:]
            and gy.strides[0] > 0 and gy.strides[0] % gy.itemsize == 0
            and y.flags.c_contiguous)


# ---- the choice per layer


@lru_cache(maxsize=None)
def _kernels_version(dtype: str) -> str:
    """A hash of the kernels' source: a choice timed on other kernels is timed again."""
    source = conv_module(dtype, "", "") + winograd_module(dtype, "", "")
    return hashlib.sha256(source.encode()).hexdigest()[:10]


# a layer's choice found from memos of its key and of the choices file's path (True, or
# NETDSL_CONV_CHOICE_MEMO=0: made again at every call, as before): the key's text and
# the cache folder's Path took 50-90 and 60-180 us of Python at each convolution call
# (42 a W3 step), on the step's one thread between the kernels' slabs
CHOICE_MEMO = flag("NETDSL_CONV_CHOICE_MEMO", True)
_keys: dict[tuple, str] = {}


def _key(x, weight, geometry: Geometry, groups: int) -> str:
    threads = host_threads()
    if CHOICE_MEMO:
        known = (x.dtype, x.shape, weight.shape, geometry, groups, threads)
        found = _keys.get(known)
        if found is None:
            found = _keys[known] = _key_text(x, weight, geometry, groups, threads)
        return found
    return _key_text(x, weight, geometry, groups, threads)


def _key_text(x, weight, geometry: Geometry, groups: int, threads: int) -> str:
    g = geometry
    return (f"{x.dtype} x{tuple(x.shape)} w{tuple(weight.shape)} s{g.stride} p{g.pads} "
            f"d{g.dilation} out{g.out} g{groups} t{threads} "
            f"c{_kernels_version(str(x.dtype))}")


def _path():
    return CHOICES.path(CHOICE_MEMO)


def choices() -> dict[str, dict]:
    """The choices known: this process's and those on disk (runtime.native.choice_file)."""
    return CHOICES.choices(CHOICE_MEMO)


def _fastest(candidates: dict) -> tuple[str, object]:
    """(name, result) of the candidate that ran fastest: TIMED_RUNS rounds, each running
    every candidate once, the shortest run of each counting. Time is the process's CPU
    time, all its threads': on a busy machine a run the scheduler pauses is not counted
    longer (the wall clock misjudged ResNet-20's layers at load 3-4), and the candidates
    split the batch over the threads alike."""
    return fastest(candidates, TIMED_RUNS, time.process_time)


def choose(x, weight, bias, geometry: Geometry, groups: int, gy=None, need_dx=True):
    """The layer's choice {"forward": ..., "backward": ...}, timed now on these arrays
    (and on `gy`, or ones, for backward) unless known. Also returns the forward's y when
    it was timed here (else None)."""
    known = choices().get(_key(x, weight, geometry, groups))
    if known is not None:
        return known, None
    began = time.perf_counter()
    forwards = {"numpy": lambda: convolve.conv_nd.generic(np, x, weight, bias, geometry,
                                                         groups),
                "gemm": lambda: forward("gemm", x, weight, bias, geometry)}
    if _direct_timed(geometry):
        forwards["direct"] = lambda: forward("direct", x, weight, bias, geometry)
    if _winograd_fits(geometry):
        forwards["winograd"] = lambda: forward("winograd", x, weight, bias, geometry)
    kind, y = _fastest(forwards)
    if gy is None:
        gy = np.ones((x.shape[0], weight.shape[0], *geometry.out), dtype=x.dtype)
    backwards = {"numpy": lambda: convolve.conv_nd_backward.generic(np, gy, x, weight,
                                                                   geometry, groups, need_dx),
                 "gemm": lambda: backward(gy, x, weight, geometry, need_dx)}
    if _direct_timed(geometry):
        backwards["direct"] = lambda: backward(gy, x, weight, geometry, need_dx, "direct")
    if _winograd_backward_fits(geometry):
        backwards["winograd"] = lambda: backward(gy, x, weight, geometry, need_dx,
                                                 "winograd")
    back, _ = _fastest(backwards)
    choice = {"forward": kind, "backward": back}
    CHOICES.remember(_key(x, weight, geometry, groups), choice)
    timing_seconds[0] += time.perf_counter() - began
    return choice, y


def layers(lowered) -> list[tuple]:
    """(name, channels in, weight shape, geometry) of each convolution a lowering's steps
    run forward without groups (`Op.convolves`)."""
    found = []
    for step in lowered.plan.steps:
        convolution = step.op.convolves(*step.input_types)
        if convolution is None or convolution[1] != 1:
            continue
        x = step.input_types[0]
        # a step that joined ops is named after the last: the convolution is its first
        name = getattr(step.op, "nodes", (step.node,))[0]
        found.append((name, x.dims[0], step.op.params(*step.input_types)["weight"],
                      convolution[0]))
    return found


def report(layers, batch: int, dtype: str = "float32") -> str:
    """One line for `netc compile --target native`: the choice for each convolution
    layer ((name, channels in, weight shape, geometry) of each), timed on random arrays
    at `batch` unless known, and how long the timing took; or why none run compiled."""
    if not layers:
        return ""
    try:
        _library(dtype)
    except NativeUnavailable as exc:
        return f"convolutions: the NumPy path ({exc})"
    rng = np.random.default_rng(0)
    spent, counts, named = timing_seconds[0], {}, []
    with one_blas_thread(np):   # as an executor's pass runs them: the same choices' keys
        for layer in layers:
            named.append(_report_layer(layer, batch, dtype, rng, counts))
    took = timing_seconds[0] - spent
    summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
    how = f"timed in {took:.2f} s" if took else "from the cache"
    return (f"convolutions (forward/backward, batch {batch}): {summary}; {how}\n  "
            + "; ".join(named))


def _report_layer(layer, batch: int, dtype: str, rng, counts: dict) -> str:
    """`name forward/backward` of one layer, its choice made on random arrays if new."""
    name, channels, weight_shape, geometry = layer
    x = rng.standard_normal((batch, channels, *geometry.spatial)).astype(dtype)
    weight = rng.standard_normal(weight_shape).astype(dtype)
    if not covered(x, weight, geometry, 1):
        choice = {"forward": "numpy", "backward": "numpy"}
    else:
        choice, _ = choose(x, weight, None, geometry, 1)
    label = f"{choice['forward']}/{choice['backward']}"
    counts[label] = counts.get(label, 0) + 1
    return f"{name} {label}"


# ---- the seams


@convolve.conv_nd.provide("numpy")
def _conv_nd(xp, x, weight, bias, geometry, groups, out=None):
    if not _active.get() or not covered(x, weight, geometry, groups):
        return NotImplemented
    try:
        choice, y = choose(x, weight, bias, geometry, groups)
    except NativeUnavailable:
        return NotImplemented
    if y is not None:
        return _into(y, out)
    kind = choice["forward"]
    if kind == "numpy":
        return NotImplemented
    return forward(kind, x, weight, bias, geometry, out=out)


@convolve.conv_nd_backward.provide("numpy")
def _conv_nd_backward(xp, gy, x, weight, geometry, groups, need_dx=True):
    if not _active.get() or not covered(x, weight, geometry, groups):
        return NotImplemented
    try:
        choice, _ = choose(x, weight, None, geometry, groups, gy, need_dx)
    except NativeUnavailable:
        return NotImplemented
    kind = choice["backward"]
    if kind == "numpy":
        return NotImplemented
    return backward(gy, x, weight, geometry, need_dx, kind)


@convolve.conv_nd_then.provide("numpy")
def _conv_nd_then(xp, x, weight, bias, geometry, groups, chain, out=None):
    """The chain applied as the chosen kernel writes y (the choice is timed without it:
    each kernel's epilogue costs alike); NumPy's choice, or a y the timing made, gets the
    chain over it after."""
    if not _active.get() or not covered(x, weight, geometry, groups):
        return NotImplemented
    try:
        choice, y = choose(x, weight, bias, geometry, groups)
        if y is None and choice["forward"] != "numpy":
            return forward(choice["forward"], x, weight, bias, geometry,
                           chain=chain.programs, out=out)
    except NativeUnavailable:
        return NotImplemented
    if y is None:
        y = convolve.conv_nd.generic(np, x, weight, bias, geometry, groups, out=out)
    return chain.apply(xp, _into(y, out))


@convolve.conv_nd_then_backward.provide("numpy")
def _conv_nd_then_backward(xp, gy, y, x, weight, geometry, groups, need_dx, chain,
                           gy_owned):
    """gy taken back through the chain and the bias's gradient summed in one pass
    (chain_gradient, over gy where the executor owns it), then the chosen kernel with
    that bias gradient."""
    if not _active.get() or not covered(x, weight, geometry, groups):
        return NotImplemented
    owned = (gy_owned and gy.shape == y.shape and gy.dtype == y.dtype
             and gy.flags.c_contiguous and gy.flags.writeable)
    into = gy if owned else None
    try:
        choice, _ = choose(x, weight, None, geometry, groups, gy, need_dx)
        kind = choice["backward"]
        if kind == "numpy":
            g, dbias = chain_gradient(y, gy, chain.programs, into)
        else:   # each slab's images taken through the chain just before its kernels
            g, masking = chain_masking(y, gy, chain.programs, into)
            return backward(g, x, weight, geometry, need_dx, kind, masking=masking)
    except NativeUnavailable:
        return NotImplemented
    dx, dweight, _ = convolve.conv_nd_backward.generic(np, g, x, weight, geometry, groups,
                                                       need_dx)
    return dx, dweight, dbias
