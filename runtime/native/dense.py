"""Dense layers on the native target: each GEMM chosen per shape, and a layer joined to the
chain after it.

While an executor of the native target runs a pass (runtime.native.conv's `in_use`),
ops.linear's routines come here for float32 or float64 arrays:

- `dense_gemm` (each of a layer's GEMMs: the forward's x W^T, the weight's gradient
  gy^T x, the input's gy W): who multiplies is chosen per shape, layout and thread
  counts (the pass's, which the own GEMM splits over, and BLAS's at the call) by a
  timing at first use (runtime.native.dense_choice): NumPy's BLAS on its threads,
  or the generated C's own GEMM (lower.native_dense), on the calling thread or split
  over the C pool (runtime.native.pool) on two threads or more. NETDSL_DENSE_PICK=0
  leaves every GEMM to NumPy (ops.parallel.matmul), as before the choice;
- a layer the lowering joined to its chain (lower.conv_chain.GEMM_CHAINS,
  NETDSL_NATIVE_DENSE=1): forward, the chosen GEMM writes x W^T, then one compiled pass
  adds the bias and applies the chain in place (`dense_epilogue`); backward, one
  compiled pass takes gy back through the chain from its output (over gy where the
  executor owns it) and sums the bias's gradient (`dense_chain_gradient`), then the
  chosen GEMMs make the weight's gradient (into the gradient vector) and the input's.

Each switch is read once, here or in the lowering, and a value other than 0 or 1 stops
the import (netdsl.switches). NETDSL_DENSE_GEMM, which named who multiplies before the
choice by timing, is gone; setting it is refused with a message saying so.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from functools import lru_cache

import numpy as np

from netdsl.lower.native_conv import Chained
from netdsl.lower.native_dense import gemm_module, passes_module, scratch_elements
from netdsl.ops import linear
from netdsl.runtime.host import blas_threads, host_threads
from netdsl.runtime.native import conv as native_conv
from netdsl.runtime.native import dense_choice, split_gemm
from netdsl.runtime.native.blas import wake
from netdsl.runtime.native.pool import pool_address
from netdsl.runtime.native.toolchain import NativeUnavailable, build
from netdsl.switches import SwitchError, flag

__all__ = ["PICK", "matmul", "product", "key", "epilogue", "gradient", "library",
           "gemm_library", "operands_covered"]

# each dense GEMM chosen per shape by a timing at first use (NETDSL_DENSE_PICK=0: NumPy's)
PICK = flag("NETDSL_DENSE_PICK", True)
if os.environ.get("NETDSL_DENSE_GEMM"):
    raise SwitchError("NETDSL_DENSE_GEMM is gone: a dense layer's GEMM is chosen per shape "
                      "by timing (NETDSL_DENSE_PICK=0 leaves it to NumPy's BLAS)",
                      hint="unset NETDSL_DENSE_GEMM")

_L, _P = ctypes.c_longlong, ctypes.c_void_p


@lru_cache(maxsize=None)
def library(dtype: str, chain: Chained | None = None) -> ctypes.CDLL:
    """The joined layer's passes for `dtype` and `chain`, built or loaded from the cache.
    Raises NativeUnavailable where that fails."""
    lib = build(passes_module(dtype, chain))
    lib.dense_epilogue.restype = None
    lib.dense_epilogue.argtypes = [_P, _L, _L, _L, _P, _P]
    lib.dense_chain_gradient.restype = None
    lib.dense_chain_gradient.argtypes = [_P, _L, _L, _L, _P, _P, _P, _P]
    return lib


@lru_cache(maxsize=None)
def gemm_library(dtype: str) -> ctypes.CDLL:
    """The own GEMM for `dtype`."""
    lib = build(gemm_module(dtype))
    lib.dense_gemm.restype = None
    lib.dense_gemm.argtypes = [_P, _L, _L, _L, _L, _P, _L, _L, _P, _L, _L, _P, _L, _P]
    return lib


# (dtype, the chain's id) -> (the chain, its library): a step's passes find theirs by the
# chain's identity, where library's cache hashes the chain's programs, walking their
# expressions (2 µs a call); the chain held here keeps its id from being reused
_joined: dict[tuple[str, int], tuple] = {}


def _passes(dtype: str, chain: Chained | None) -> ctypes.CDLL:
    held = _joined.get((dtype, id(chain)))
    if held is None or held[0] is not chain:
        held = _joined[(dtype, id(chain))] = (chain, library(dtype, chain))
    return held[1]


_scratch = threading.local()   # per thread: two executors' calls may run at once


def _panels(dtype, k: int, parts: int) -> np.ndarray:
    """Scratch for the packed panels, kept per thread and dtype, grown as needed."""
    dtype = np.dtype(dtype)
    need = scratch_elements(k, parts, dtype.itemsize)
    held = getattr(_scratch, dtype.str, None)
    if held is None or held.size < need:
        held = np.empty(need, dtype)
        setattr(_scratch, dtype.str, held)
    return held


def _pool_and_parts(parts: int) -> tuple[int | None, int]:
    if parts <= 1:
        return None, 1
    return pool_address(), parts


_from_buffer, _addressof = ctypes.c_char.from_buffer, ctypes.addressof


def _address(array) -> int | None:
    """An array's data address (None: none). Through the buffer protocol it takes a third
    of `.ctypes.data`'s time (1 against 3 µs, four to six arrays a call); a transpose's
    view is taken as its transpose, C-contiguous at the same address; a read-only, empty
    or otherwise strided array, which the protocol refuses, the slow way."""
    if array is None:
        return None
    try:
        return _addressof(_from_buffer(array if array.flags.c_contiguous else array.T))
    except (TypeError, ValueError, BufferError):
        return array.ctypes.data


# the dtypes the kernels take, by name: str(dtype) and comparing a dtype with a type
# each cost more than a dictionary's look-up
_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


def matmul(a, b, out, parts: int):
    """a @ b by the own GEMM into `out` (C-contiguous, or None: a new array), in `parts`
    parts (more than one: on the C pool), for 2-D arrays whose rows or columns are
    contiguous (a transpose's view): x W^T, gy^T x and gy W."""
    m, k = a.shape
    n = b.shape[1]
    c = np.empty((m, n), a.dtype) if out is None else out
    item = a.itemsize
    lib = gemm_library(_NAMES[a.dtype])
    pool, parts = _pool_and_parts(parts)
    lib.dense_gemm(pool, parts, m, n, k, _address(a), a.strides[0] // item,
                   a.strides[1] // item, _address(b), b.strides[0] // item,
                   b.strides[1] // item, _address(c), c.strides[0] // item,
                   _address(_panels(a.dtype, k, parts)))
    return c


def gradient(y, gy, chain: Chained | None, into, db, parts: int):
    """gy taken back through the chain from its output y, into `into` (gy itself where the
    caller owns it, else a new array), and the bias's gradient summed over the rows into
    db (None: not wanted)."""
    b, n = y.shape
    g = np.empty_like(y) if into is None else into
    lib = _passes(_NAMES[y.dtype], chain)
    pool, parts = _pool_and_parts(parts)
    lib.dense_chain_gradient(pool, parts, b, n, _address(y), _address(gy), _address(g),
                             _address(db))
    return g


def epilogue(y, bias, chain: Chained | None):
    """y = chain(y + bias) in place (bias None: none), on this thread."""
    b, n = y.shape
    _passes(_NAMES[y.dtype], chain).dense_epilogue(None, 1, b, n, _address(y), _address(bias))
    return y


# ---- which arrays the kernels take


def _covered(*arrays) -> bool:
    """Arrays the passes take: one float dtype, at most 2-D, C-contiguous (None: absent).
    A loop, not all() over a generator: these checks run at every joined call."""
    dtype = None
    for a in arrays:
        if a is None:
            continue
        if not (isinstance(a, np.ndarray) and a.ndim <= 2 and a.flags.c_contiguous):
            return False
        if dtype is None:
            dtype = a.dtype
            if dtype not in _NAMES:
                return False
        elif a.dtype != dtype:
            return False
    return True


def _fits(out, shape, dtype) -> bool:
    return out is None or (isinstance(out, np.ndarray) and out.shape == shape
                           and out.dtype == dtype and out.flags.c_contiguous
                           and out.flags.writeable)


def _strided(a) -> bool:
    """A 2-D operand the own GEMM reads: its rows or its columns contiguous."""
    if not (isinstance(a, np.ndarray) and a.ndim == 2):
        return False
    s0, s1 = a.strides
    return (s1 == a.itemsize and s0 >= 0) or (s0 == a.itemsize and s1 >= 0)


def operands_covered(a, b, out) -> bool:
    """Whether the own GEMM takes a @ b into `out`: 2-D float32 or float64 operands of one
    dtype, each with contiguous rows or columns, none empty, `out` None or C-contiguous."""
    return (_strided(a) and _strided(b) and a.dtype == b.dtype
            and a.dtype in (np.float32, np.float64) and a.shape[1] == b.shape[0]
            and min(a.size, b.size) > 0 and _fits(out, (a.shape[0], b.shape[1]), a.dtype))


# ---- the choice


@lru_cache(maxsize=None)
def _version(dtype: str) -> str:
    """A hash of the own GEMM's source: a choice timed on another GEMM is timed again."""
    return hashlib.sha256(gemm_module(dtype).encode()).hexdigest()[:10]


def _layout(a) -> str:
    return "n" if a.strides[1] == a.itemsize else "t"


def key(a, b, threads: int, blas: int | None = None) -> str:
    """The choice's key of a @ b where the own GEMM splits into `threads` parts and BLAS
    runs on `blas` threads (None: as many as now), what each candidate runs the call on:
    within a pass whose ops split, BLAS runs on one thread whatever the pass's count, and
    a choice timed so is not one for BLAS on two. The key names dtype, M x K x N, each
    operand's layout (n: rows contiguous, t: a transpose's view), both thread counts
    and the own GEMM's hash."""
    if blas is None:
        blas = blas_threads()
    (m, k), n = a.shape, b.shape[1]
    return (f"{a.dtype} {m}x{k}x{n} {_layout(a)}{_layout(b)} t{threads} b{blas} "
            f"c{_version(str(a.dtype))}")


# (shapes, strides and dtypes of a, b and out, threads, BLAS's threads) -> the candidate
# chosen, "numpy"
# for operands the own GEMM does not take: a step's GEMMs find theirs here without
# checking their operands or making the choice's key again (an `out` must then be
# writable, as the executor's are)
_picked: dict[tuple, str] = {}


def product(a, b, out):
    """a @ b into `out` (or a new array) by whichever of NumPy's BLAS and the own GEMM
    (split over the C pool on two threads or more) was timed faster for its key
    (runtime.native.dense_choice); NumPy's for operands the own GEMM does not take and
    where it does not build."""
    threads, blas = host_threads(), blas_threads()
    seen = (a.shape, b.shape, a.strides, b.strides, a.dtype.char, b.dtype.char,
            None if out is None else (type(out), out.shape, out.strides, out.dtype.char),
            threads, blas)
    name = _picked.get(seen)
    if name is None:
        # then the chosen one runs again: its timed runs may have shared `out`
        name = _picked[seen] = _choose(a, b, out, threads, blas)
    if name == "own":
        return matmul(a, b, out, threads)
    return np.matmul(a, b, out=out)


def _choose(a, b, out, threads: int, blas: int) -> str:
    """The candidate for a @ b, as product's."""
    if not operands_covered(a, b, out):
        return "numpy"
    try:
        gemm_library(str(a.dtype))   # built before any timing
    except NativeUnavailable:
        return "numpy"               # and not built again for this layout
    wake()   # with NETDSL_BLAS_WAKE=1: OpenBLAS's one-thread SGEMM at its faster pace
    candidates = {"numpy": lambda: np.matmul(a, b, out=out),
                  "own": lambda: matmul(a, b, out, threads)}
    return dense_choice.choose(key(a, b, threads, blas), candidates)


# ---- the seams


@linear.dense_gemm.provide("numpy")
def _dense_gemm(xp, a, b, out=None):
    if not (PICK and native_conv.active() and isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)) or split_gemm.on_pool():
        return NotImplemented
    return product(a, b, out)


@linear.dense_then.provide("numpy")
def _dense_then(xp, x, weight, bias, chain, out=None):
    if not (native_conv.active() and x.ndim == 2 and _covered(x, weight, bias)
            and _fits(out, (x.shape[0], weight.shape[0]), x.dtype)):
        return NotImplemented
    try:
        y = linear.dense_gemm(xp, x, weight.T, out=out)
        return epilogue(y, bias, chain.programs)
    except NativeUnavailable:
        return NotImplemented


@linear.dense_chain_gradient.provide("numpy")
def _dense_chain_gradient(xp, y, gy, chain, gy_owned, bias_out=None, bias=True):
    if not (native_conv.active() and y.ndim == 2 and _covered(gy, y)
            and gy.shape == y.shape):
        return NotImplemented
    db = None
    if bias:
        db = bias_out if bias_out is not None and _fits(bias_out, y.shape[1:], y.dtype) \
            else np.empty(y.shape[1], y.dtype)
    into = gy if gy_owned and gy.flags.writeable else None
    try:
        return gradient(y, gy, chain.programs, into, db, 1), db
    except NativeUnavailable:
        return NotImplemented
