"""A pass's GEMMs split over the native target's thread pool, BLAS on one thread a part.

When a network's recurrent loop splits each step over the thread pool
(runtime.native.loops), the executor runs its passes with BLAS held at one thread and
within `gemms_on_pool(parts)`: every GEMM an op issues through ops.parallel.matmul (a
dense layer's, the hoisted input projection's), and the loop's weight gradients, split
over the same pool (netdsl.lower.native_split_gemm). No OpenBLAS worker then runs during
the step, so none spins (about 0.1 s after each GEMM it ran, without yielding) on the
core the pool's worker needs. Outside such a pass NumPy's matmul runs as before.
"""
from __future__ import annotations

import contextlib
import ctypes
from functools import lru_cache

import numpy as np

from netdsl.lower.native_split_gemm import NO_TRANS, TRANS, split_gemm_source
from netdsl.ops import parallel
from netdsl.runtime.host import host_threads
from netdsl.runtime.native.blas import gemm
from netdsl.runtime.native.pool import pool_address
from netdsl.runtime.native.toolchain import NativeUnavailable, build

__all__ = ["gemms_on_pool", "on_pool", "split_matmul", "MIN_MACS"]

# the multiply-adds below which a GEMM runs whole on the calling thread (BLAS on one
# thread): handing parts over costs a few microseconds, a GEMM this small about ten
MIN_MACS = 1 << 18

_parts = None   # inside gemms_on_pool(): the parts each GEMM splits into


@contextlib.contextmanager
def gemms_on_pool(active: bool = True):
    """Within it, GEMMs of ops.parallel.matmul (and split_matmul) split over the thread
    pool, a part per host thread; the caller holds BLAS at one thread (within
    runtime.host.one_blas_thread, whose threads these are). A no-op unless `active`."""
    global _parts
    if not active or _parts is not None:
        yield
        return
    _parts = host_threads()
    try:
        yield
    finally:
        _parts = None


def on_pool() -> bool:
    """Whether a pass runs its GEMMs on the pool (within gemms_on_pool)."""
    return _parts is not None


@lru_cache(maxsize=None)
def _function(dtype: str):
    """`split_gemm` for `dtype`, compiled, with its argument types."""
    address, integer, symbol = gemm(dtype)
    function = build(split_gemm_source(dtype, integer, symbol)).split_gemm
    real = ctypes.c_float if dtype == "float32" else ctypes.c_double
    long = ctypes.c_longlong
    function.restype = None
    function.argtypes = [ctypes.c_void_p, long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                         long, long, long, ctypes.c_void_p, long, ctypes.c_void_p, long,
                         real, ctypes.c_void_p, long]
    return function, address


def _layout(a) -> tuple[int, int] | None:
    """(CBLAS's transpose flag, leading dimension) of a 2-D array whose rows or columns
    are contiguous, as a row-major GEMM reads it; None for any other."""
    rows, columns = a.shape
    s0, s1 = (s // a.itemsize for s in a.strides)
    if s1 == 1 and s0 >= max(columns, 1):
        return NO_TRANS, s0
    if s0 == 1 and s1 >= max(rows, 1):
        return TRANS, s1
    return None


def split_matmul(a, b, out=None):
    """a @ b over the pool's parts, each a one-thread BLAS GEMM, into `out` if given;
    NotImplemented outside gemms_on_pool, for a product below MIN_MACS, and for what the
    GEMM does not take (other ranks or dtypes, strided rows, an out not row-major)."""
    if _parts is None or not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return NotImplemented
    if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.shape[1] != b.shape[0]:
        return NotImplemented
    dtype = str(a.dtype)
    M, K = a.shape
    N = b.shape[1]
    if dtype not in ("float32", "float64") or M * N * K < MIN_MACS or min(M, N, K) < 2:
        return NotImplemented
    left, right = _layout(a), _layout(b)
    if left is None or right is None:
        return NotImplemented
    if out is None:
        out = np.empty((M, N), a.dtype)
    elif (out.shape != (M, N) or out.dtype != a.dtype or out.strides[1] != out.itemsize
          or out.strides[0] < N * out.itemsize or not out.flags.writeable):
        return NotImplemented
    try:
        function, address = _function(dtype)
    except NativeUnavailable:
        return NotImplemented
    function(pool_address(), _parts, address, left[0], right[0], M, N, K, a.ctypes.data,
             left[1], b.ctypes.data, right[1], 0.0, out.ctypes.data,
             out.strides[0] // out.itemsize)
    return out


@parallel.matmul.provide("numpy")
def _matmul(xp, a, b, out=None):
    return split_matmul(a, b, out)
