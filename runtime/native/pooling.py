"""Max pooling on the native target: compiled C kernels over slabs of planes.

While an executor of the native target runs a pass (runtime.native.conv's `in_use`),
ops.pool's `max_pool` and `max_pool_backward` for NumPy come here. A 1-D or 2-D max
pooling in float32 or float64 runs netdsl.lower.native_window's kernels over the batch's
planes (example x channel), above SPLIT_BYTES split into slabs on the host's threads
(runtime.native.slabs: the generated C's pool, or Python threads). They keep what the
NumPy path keeps, the flat index of each window's first maximum in its plane (int32),
so that a maxunpool borrows them alike, and either path's backward reads the other's.
Any other case (rank 3, other dtypes, no compiler) returns NotImplemented, and the NumPy
code runs.

The forward kernel (a vector of 64, 32 or 16 bytes of windows) is timed on a shape's
first call among those a row's windows fill and the compiler's vectors hold
(`timed_kernels`; NETDSL_POOLING_WIDE_TIMED=1: wider ones too), and the fastest kept
for the process (`TIMED`; NETDSL_POOLING_TIMED=0: the widest that fits, as before):
which wins depends on the machine's vectors.

`COMPILED` off (NETDSL_NATIVE_POOLING=0) sends every call to the NumPy code: the old
path, for comparing.
"""
from __future__ import annotations

import ctypes
import time
from functools import lru_cache

import numpy as np

from netdsl.lower.native_window import (FUNCTIONS, SIZES, fitting_kernels, forward_kernel,
                                        forward_kernels, pool_sizes, pooling_module)
from netdsl.ops import pool
from netdsl.runtime.native import conv, split_above
from netdsl.runtime.native.choice_file import fastest
from netdsl.runtime.native.toolchain import NativeUnavailable, build, vector_bytes
from netdsl.switches import flag

__all__ = ["COMPILED", "TIMED", "WIDE_TIMED_ANYWHERE", "forward", "backward", "covered",
           "timed_kernels"]

# run max pooling's compiled kernels on the native target (False, or
# NETDSL_NATIVE_POOLING=0 in the environment: the NumPy path)
COMPILED = flag("NETDSL_NATIVE_POOLING", True)

# time the forward kernels a row's windows fill on a shape's first call, and keep the
# fastest (False, or NETDSL_POOLING_TIMED=0: the widest that fits, as before). On an
# AVX2 EPYC the 16-byte kernel was the fastest on W2's and W6's poolings, and the
# 64-byte one, which GCC splits without AVX-512, took 6 times as long as it
TIMED = flag("NETDSL_POOLING_TIMED", True)

# the timing leaves out the kernels whose vectors are wider than the compiler's
# (toolchain.vector_bytes; GCC splits them): without AVX-512 the 64-byte kernel took 6
# times the 16-byte one's time on W6's pooling, never the fastest, and its timed runs
# lengthened a shape's first step (NETDSL_POOLING_WIDE_TIMED=1: timed anywhere, as before)
WIDE_TIMED_ANYWHERE = flag("NETDSL_POOLING_WIDE_TIMED", False)

# runs of each forward kernel timed on a shape's first call (the fastest counts), by the
# process's CPU time, as the convolutions' (runtime.native.conv's TIMED_RUNS)
TIMED_RUNS = 3

_DTYPES = (np.float32, np.float64)

# (dtype, SIZES' values) -> the forward kernel timed fastest in this process
_chosen: dict[tuple, str] = {}

# bytes a pooling call must touch (input, output and indices) before its planes are
# split over the host's threads: as for an elementwise chain, a split's hand-over costs
# about what it saves on LeNet's and Inception's pooling (split at 1 MiB, W2's step was
# the shorter in 31 of 100 steps alternating with unsplit, W6's in 5 of 12; docs/cpu.md)
SPLIT_BYTES = 16 << 20


@lru_cache(maxsize=None)
def _library(dtype: str):
    """The loaded pooling kernels for `dtype`; NativeUnavailable without a compiler."""
    library = build(pooling_module(dtype))
    p, size = ctypes.c_void_p, [ctypes.c_longlong] * (2 + len(SIZES))
    for name in FUNCTIONS:
        function = getattr(library, name)
        function.restype, function.argtypes = None, [p] * 3 + size
    return library


def covered(x, geometry) -> bool:
    """Whether the compiled kernels cover this pooling: rank 1 or 2, float32 or float64,
    an input of the geometry's sizes, planes of fewer than 2^31 cells (int32 indices)."""
    return (x.ndim in (3, 4) and x.dtype in _DTYPES and len(geometry.kernel) == x.ndim - 2
            and tuple(x.shape[2:]) == tuple(geometry.spatial)
            and int(np.prod(x.shape[2:])) < 2 ** 31)


def forward(x, geometry, kernel: str | None = None, out=None):
    """(y, indices) of ops.pool.max_pool by the compiled kernel `kernel`, or the one
    timed fastest for this shape (`TIMED`; lower.native_window's forward_kernel
    without); y in `out` where given (contiguous, y's shape and dtype)."""
    x = np.ascontiguousarray(x)
    sizes = pool_sizes(x.shape[2:], geometry)
    dtype = str(x.dtype)
    if kernel is None and TIMED:
        kernel = _chosen.get((dtype, sizes))
        if kernel is None:
            y, indices = _choose(x, geometry, sizes)
            if out is not None:   # a timing run's y, where the caller wants it
                out[...] = y
                y = out
            return y, indices
    kernel = kernel or forward_kernel(dtype, sizes)
    return (_forward(x, geometry, sizes, kernel) if out is None
            else _forward(x, geometry, sizes, kernel, out))


def _choose(x, geometry, sizes):
    """(y, indices) by the kernel that ran fastest on x among those that fit, which is
    kept for the shape: every kernel gives the same bits, so any run's result serves."""
    candidates = {name: (lambda name=name: _forward(x, geometry, sizes, name))
                  for name in timed_kernels(str(x.dtype), sizes)}
    if len(candidates) == 1:
        [(name, run)] = candidates.items()
        result = run()
    else:
        name, result = fastest(candidates, TIMED_RUNS, time.process_time)
    _chosen[(str(x.dtype), sizes)] = name
    return result


def timed_kernels(dtype: str, sizes) -> list[str]:
    """The forward kernels timed on a shape's first call: those a row's windows fill
    (lower.native_window's fitting_kernels) whose vectors the compiler has, unless
    WIDE_TIMED_ANYWHERE; the narrowest that fits where none has."""
    fitting = fitting_kernels(dtype, sizes)
    if WIDE_TIMED_ANYWHERE:
        return fitting
    lanes, width = forward_kernels(dtype), vector_bytes()
    item = np.dtype(dtype).itemsize
    return [name for name in fitting if lanes[name] * item <= width] or fitting[-1:]


def _forward(x, geometry, sizes, kernel: str, out=None):
    """(y, indices) by the forward kernel `kernel`, x contiguous; y into `out` if given."""
    function = getattr(_library(str(x.dtype)), kernel)
    shape = x.shape[:2] + tuple(geometry.out)
    if out is not None:
        assert out.shape == shape and out.dtype == x.dtype and out.flags.c_contiguous
    y = np.empty(shape, dtype=x.dtype) if out is None else out
    indices = np.empty(y.shape, dtype=np.int32)
    planes = x.shape[0] * x.shape[1]

    pointers = (x.ctypes.data, y.ctypes.data, indices.ctypes.data)

    def plan(part: slice):
        return [(function, (*pointers, part.start, part.stop, *sizes))], None

    split_above(SPLIT_BYTES, plan, planes, x.nbytes + y.nbytes + indices.nbytes)
    return y, indices


def backward(gy, indices, shape, geometry):
    """dx of ops.pool.max_pool by the compiled kernel."""
    library = _library(str(gy.dtype))
    gy = np.ascontiguousarray(gy)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    sizes = pool_sizes(shape[2:], geometry)
    dx = np.empty(shape, dtype=gy.dtype)
    planes = shape[0] * shape[1]

    function = library.maxpool_backward
    pointers = (gy.ctypes.data, indices.ctypes.data, dx.ctypes.data)

    def plan(part: slice):
        return [(function, (*pointers, part.start, part.stop, *sizes))], None

    split_above(SPLIT_BYTES, plan, planes, dx.nbytes + gy.nbytes + indices.nbytes)
    return dx


@pool.max_pool.provide("numpy")
def _max_pool(xp, x, geometry, out=None):
    if not (COMPILED and conv.active() and covered(x, geometry)):
        return NotImplemented
    try:
        return forward(x, geometry) if out is None else forward(x, geometry, out=out)
    except NativeUnavailable:
        return NotImplemented


@pool.max_pool_backward.provide("numpy")
def _max_pool_backward(xp, gy, indices, shape, geometry):
    if not (COMPILED and conv.active() and gy.dtype in _DTYPES and len(shape) in (3, 4)
            and len(geometry.kernel) == len(shape) - 2
            and tuple(gy.shape) == tuple(shape[:2]) + tuple(geometry.out)
            and indices.shape == gy.shape):
        return NotImplemented
    try:
        return backward(gy, indices, shape, geometry)
    except NativeUnavailable:
        return NotImplemented
