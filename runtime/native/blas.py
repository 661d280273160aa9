"""The GEMM of the BLAS NumPy uses, as an address generated C can call; and OpenBLAS's
one-thread SGEMM brought to its pace.

A generated loop multiplies its recurrent matrices through the same BLAS as NumPy, so
a step computes what NumPy would and no second BLAS is loaded. threadpoolctl finds the
library NumPy loaded; its CBLAS GEMM goes by one of a few names, with 64-bit integers
in the ILP64 builds NumPy's wheels ship.

`wake`: OpenBLAS 0.3.31 (NumPy's, on the AVX2 EPYC) ran its one-thread SGEMM about three
times slower in a process that had not yet run a GEMM on two threads (W1's 128x256x256
product 1.9-2.8 ms against 0.55), and at the faster pace for the rest of the process
after one such GEMM; DGEMM hardly changed (docs/cpu.md, "W1's GEMMs on one thread").
Where BLAS runs on one thread of a machine with more cores, `wake` makes one SGEMM on
two threads, once per process, with NETDSL_BLAS_WAKE=1; off by default: across fresh
processes W1's step was shorter with it in only 6 of 8 rounds, within the machine's
spread, and some woken processes still ran at the slow pace.
"""
from __future__ import annotations

import ctypes
import os
from functools import lru_cache

import numpy as np

from netdsl.runtime.native.toolchain import NativeUnavailable
from netdsl.switches import flag

__all__ = ["gemm", "wake", "WAKE"]

# one SGEMM on two threads before the first of a process's one-thread GEMMs that the
# runtime times (True, or NETDSL_BLAS_WAKE=1; off by default, see above)
WAKE = flag("NETDSL_BLAS_WAKE", False)

# CBLAS symbol templates (the precision letter goes in {}), with their integer type
_NAMES = (("scipy_cblas_{}gemm64_", "long long"), ("cblas_{}gemm64_", "long long"),
          ("scipy_cblas_{}gemm", "int"), ("cblas_{}gemm", "int"))


@lru_cache(maxsize=None)
def gemm(dtype: str) -> tuple[int, str, str]:
    """(address, C integer type, symbol) of CBLAS's sgemm or dgemm.

    Raises
    ------
    NativeUnavailable
        When NumPy's BLAS cannot be found or has no CBLAS GEMM.
    """
    from threadpoolctl import threadpool_info  # a dependency; loaded with the native loops

    np.ones(2) @ np.ones(2)   # NumPy loads its BLAS lazily
    letter = {"float32": "s", "float64": "d"}[str(dtype)]
    for pool in threadpool_info():
        if pool.get("user_api") != "blas":
            continue
        try:
            library = ctypes.CDLL(pool["filepath"])
        except OSError:
            continue
        for template, integer in _NAMES:
            symbol = template.format(letter)
            if hasattr(library, symbol):
                address = ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value
                return address, integer, symbol
    raise NativeUnavailable("NumPy's BLAS offers no CBLAS gemm to generated loops")


@lru_cache(maxsize=None)
def wake() -> bool:
    """Once per process: where OpenBLAS runs on one thread and the machine has two cores
    or more, one SGEMM of 128x256 by 256x256 on two of its threads, then its thread count
    as it was. Returns whether it ran."""
    from threadpoolctl import ThreadpoolController  # a dependency; loaded with the loops

    if not WAKE or (os.cpu_count() or 1) < 2:
        return False
    controllers = [c for c in ThreadpoolController().select(internal_api="openblas")
                   .lib_controllers if c.num_threads == 1]
    if not controllers:
        return False
    for c in controllers:
        c.set_num_threads(2)
    try:
        np.ones((128, 256), np.float32) @ np.ones((256, 256), np.float32)
    finally:
        for c in controllers:
            c.set_num_threads(1)
    return True
