"""Dense layers joined to the chain after them, on the native target (lower.conv_chain).

While an executor of the native target runs a pass (runtime.native.conv's `in_use`),
ops.linear's `dense_then`, `dense_chain_gradient` and `dense_products` come here for
C-contiguous float32 or float64 arrays:

- forward: NumPy's GEMM (BLAS, on its threads) writes x W^T, then one compiled pass adds
  the bias and applies the chain in place (`dense_epilogue`), where NumPy made a pass
  for the bias and the chain's call another;
- backward: one compiled pass takes gy back through the chain from its output (over gy
  where the executor owns it) and sums the bias's gradient (`dense_chain_gradient`),
  then NumPy's GEMMs make the weight's gradient (into the gradient vector) and the
  input's (ops.linear lets the chain's output go before dx is made).

`GEMM` (NETDSL_DENSE_GEMM) says who multiplies: "blas" (the default), NumPy's BLAS on
its own threads; "own", the generated C's GEMM (lower.native_dense), its parts on the C
pool (runtime.native.pool) over the host's threads; "blas-parts", BLAS on one thread per
part, the parts on the C pool. Either of the last two makes the lowering run the pass
with BLAS on one thread (lower.conv_chain.GEMM_PARTS). "blas" is the default since
OpenBLAS on two threads was the fastest at every one of W1's shapes on the quiet AVX2
machine (benchmarks/dense_gemm_shapes.py, docs/cpu.md). Joining the chains at all is
lower.conv_chain's `GEMM_CHAINS` (NETDSL_NATIVE_DENSE=1; off by default), read from the
same variable as `COMPILED` here.
"""
from __future__ import annotations

import ctypes
import os
import threading
from functools import lru_cache

import numpy as np

from netdsl.lower.native_conv import Chained
from netdsl.lower.native_dense import (blas_parts_module, gemm_module, passes_module,
                                       scratch_elements)
from netdsl.ops import linear
from netdsl.runtime.host import host_threads
from netdsl.runtime.native import conv as native_conv
from netdsl.runtime.native.blas import gemm as blas_gemm
from netdsl.runtime.native.pool import pool_address
from netdsl.runtime.native.toolchain import NativeUnavailable, build

__all__ = ["COMPILED", "GEMM", "forward", "epilogue", "gradient", "matmul", "blas_matmul",
           "library", "gemm_library", "blas_parts_library"]

# a joined dense layer's passes compiled (NETDSL_NATIVE_DENSE=1, as the lowering's join;
# False: NumPy's)
COMPILED = os.environ.get("NETDSL_NATIVE_DENSE", "0") == "1"
# who multiplies: "blas" (NumPy's, on BLAS's threads), "own" (the generated C's GEMM on
# the C pool) or "blas-parts" (BLAS on one thread per part, the parts on the C pool)
GEMM = os.environ.get("NETDSL_DENSE_GEMM", "blas")

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
def gemm_library(dtype: str, chain: Chained | None = None) -> ctypes.CDLL:
    """The own GEMM for `dtype` (with `chain` applied in dense_forward)."""
    lib = build(gemm_module(dtype, chain))
    lib.dense_gemm.restype = None
    lib.dense_gemm.argtypes = [_P, _L, _L, _L, _L, _P, _L, _L, _P, _L, _L, _P, _L, _P]
    lib.dense_forward.restype = None
    lib.dense_forward.argtypes = [_P, _L, _L, _L, _L, _P, _P, _P, ctypes.c_int, _P, _P]
    return lib


@lru_cache(maxsize=None)
def blas_parts_library(dtype: str) -> tuple[ctypes.CDLL, int]:
    """(dense_blas_gemm's library, the CBLAS GEMM's address) for `dtype`."""
    address, index_type, symbol = blas_gemm(dtype)
    lib = build(blas_parts_module(dtype, index_type, symbol))
    lib.dense_blas_gemm.restype = None
    lib.dense_blas_gemm.argtypes = [_P, _L, _P, ctypes.c_int, ctypes.c_int, _L, _L, _L,
                                    _P, _L, _P, _L, _P, _L]
    return lib, address


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


def _address(array) -> int | None:
    return None if array is None else array.ctypes.data


def forward(x, weight, bias, out, parts: int, chain: Chained | None = None):
    """y = x weight^T + bias (and the chain over it) into `out` (or a new array)."""
    b, k = x.shape
    n = weight.shape[0]
    y = np.empty((b, n), x.dtype) if out is None else out
    lib = gemm_library(str(x.dtype), chain)
    pool, parts = _pool_and_parts(parts)
    lib.dense_forward(pool, parts, b, n, k, x.ctypes.data, weight.ctypes.data,
                      _address(bias), int(chain is not None), y.ctypes.data,
                      _panels(x.dtype, k, parts).ctypes.data)
    return y


def matmul(a, b, out, parts: int):
    """a @ b into `out` (or a new array) for 2-D arrays whose last axis is contiguous or
    whose first is (a transpose's view): the weight's gradient gy.T @ x and the input's
    gy @ weight."""
    m, k = a.shape
    n = b.shape[1]
    c = np.empty((m, n), a.dtype) if out is None else out
    item = a.itemsize
    lib = gemm_library(str(a.dtype))
    pool, parts = _pool_and_parts(parts)
    lib.dense_gemm(pool, parts, m, n, k, a.ctypes.data, a.strides[0] // item,
                   a.strides[1] // item, b.ctypes.data, b.strides[0] // item,
                   b.strides[1] // item, c.ctypes.data, c.strides[0] // item,
                   _panels(a.dtype, k, parts).ctypes.data)
    return c


def _operand(array) -> tuple[int, int]:
    """(transposed, leading dimension) of a 2-D operand: C-contiguous rows, or the
    transpose of such an array (a `.T` view)."""
    item = array.itemsize
    if array.strides[1] == item:
        return 0, array.strides[0] // item
    return 1, array.strides[1] // item


def blas_matmul(a, b, out, parts: int):
    """a @ b into `out` (or a new array) by CBLAS's GEMM, one call of its on one thread
    per part, the parts on the C pool; a and b C-contiguous or transposes of such."""
    m, k = a.shape
    n = b.shape[1]
    c = np.empty((m, n), a.dtype) if out is None else out
    lib, address = blas_parts_library(str(a.dtype))
    ta, lda = _operand(a)
    tb, ldb = _operand(b)
    pool, parts = _pool_and_parts(parts)
    lib.dense_blas_gemm(pool, parts, address, ta, tb, m, n, k, a.ctypes.data, lda,
                        b.ctypes.data, ldb, c.ctypes.data, c.strides[0] // c.itemsize)
    return c


def _product(a, b, out):
    """a @ b as GEMM says, over the host's threads."""
    if GEMM == "blas" or host_threads() < 2:
        return np.matmul(a, b, out=out)
    if not _fits(out, (a.shape[0], b.shape[1]), a.dtype):
        out = None
    if GEMM == "own":
        return matmul(a, b, out, host_threads())
    return blas_matmul(a, b, out, host_threads())


def gradient(y, gy, chain: Chained | None, into, db, parts: int):
    """gy taken back through the chain from its output y, into `into` (gy itself where the
    caller owns it, else a new array), and the bias's gradient summed over the rows into
    db (None: not wanted)."""
    b, n = y.shape
    g = np.empty_like(y) if into is None else into
    lib = library(str(y.dtype), chain)
    pool, parts = _pool_and_parts(parts)
    lib.dense_chain_gradient(pool, parts, b, n, y.ctypes.data, gy.ctypes.data,
                             g.ctypes.data, _address(db))
    return g


def epilogue(y, bias, chain: Chained | None):
    """y = chain(y + bias) in place (bias None: none), on this thread."""
    b, n = y.shape
    library(str(y.dtype), chain).dense_epilogue(None, 1, b, n, y.ctypes.data, _address(bias))
    return y


# ---- the seams


def _covered(*arrays) -> bool:
    """Arrays the kernels take: one float dtype, 2-D, C-contiguous (None: absent)."""
    given = [a for a in arrays if a is not None]
    dtype = given[0].dtype
    return all(isinstance(a, np.ndarray) and a.dtype == dtype and a.ndim <= 2
               and a.flags.c_contiguous for a in given) and dtype in (np.float32, np.float64)


def _fits(out, shape, dtype) -> bool:
    return out is None or (isinstance(out, np.ndarray) and out.shape == shape
                           and out.dtype == dtype and out.flags.c_contiguous)


@linear.dense_then.provide("numpy")
def _dense_then(xp, x, weight, bias, chain, out=None):
    if not (COMPILED and native_conv.active() and x.ndim == 2 and _covered(x, weight, bias)
            and _fits(out, (x.shape[0], weight.shape[0]), x.dtype)):
        return NotImplemented
    try:
        if GEMM == "own" and host_threads() > 1:
            return forward(x, weight, bias, out, host_threads(), chain.programs)
        return epilogue(_product(x, weight.T, out), bias, chain.programs)
    except NativeUnavailable:
        return NotImplemented


@linear.dense_chain_gradient.provide("numpy")
def _dense_chain_gradient(xp, y, gy, chain, gy_owned, bias_out=None, bias=True):
    if not (COMPILED and native_conv.active() and y.ndim == 2 and _covered(gy, y)
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


@linear.dense_products.provide("numpy")
def _dense_products(xp, g, x, weight, need_dx, weight_out=None, need_weight=True):
    if GEMM == "blas" or not (native_conv.active() and _covered(g, x, weight)):
        return NotImplemented
    try:
        dweight = _product(g.T, x, weight_out) if need_weight else None
        return (_product(g, weight, None) if need_dx else None), dweight
    except NativeUnavailable:
        return NotImplemented
